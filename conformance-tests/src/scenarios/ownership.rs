//! Ownership: only the holder's token may extend or release a lock.

use std::time::Duration;

use distlock::{Acquire, Extend, LockBackend, LockError, LockToken, Release};

use crate::support::{is_held, locker, short_ttl, ttl};
use crate::{unique_name, Harness};

/// Release and extend with a wrong token change nothing and report not
/// held; the real holder still holds, with its lease unchanged.
pub async fn wrong_token_changes_nothing<H: Harness>(h: &H) {
    let holder = locker(h).await;
    let other = locker(h).await;
    let name = unique_name("wrong-token");
    let lease = Duration::from_secs(5);
    let guard = holder
        .try_lock_with(&name, |_| ttl(lease))
        .await
        .unwrap()
        .expect("free");
    let key = other.key(&name).unwrap();
    let wrong = LockToken::generate();
    let backend = other.backend();

    assert_eq!(
        backend.release(&key, &wrong).await.unwrap(),
        Release::NotHeld,
        "a release with a wrong token reports NotHeld"
    );
    assert_eq!(
        backend
            .extend(&key, &wrong, Duration::from_secs(60))
            .await
            .unwrap(),
        Extend::NotHeld,
        "an extend with a wrong token reports NotHeld"
    );
    let info = other.inspect(&name).await.unwrap();
    assert!(info.held, "the holder still holds after a wrong release");
    if let Some(remaining) = info.remaining {
        assert!(
            remaining <= lease,
            "a wrong-token extend lengthened the lease to {remaining:?}"
        );
    }
    assert!(
        other.try_lock(&name).await.unwrap().is_none(),
        "another client still cannot take it"
    );
    assert_eq!(guard.release().await.unwrap(), Release::Released);
}

/// A stale guard (its TTL ran out and another client took the lock) can
/// neither extend nor release the new holder's lock.
pub async fn stale_guard_cannot_touch_new_holder<H: Harness>(h: &H) {
    let a = locker(h).await;
    let b = locker(h).await;
    let c = locker(h).await;
    let name = unique_name("stale-guard");
    let t = short_ttl(h);
    let mut stale = a
        .try_lock_with(&name, |_| ttl(t))
        .await
        .unwrap()
        .expect("free");
    tokio::time::sleep(t + h.timing_slack()).await;
    let fresh = b
        .try_lock_with(&name, |_| ttl(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("the first lease ran out, so B acquires");

    let extended = stale.extend(Duration::from_secs(10)).await;
    assert!(
        matches!(extended, Err(LockError::NotHeld { .. })),
        "a stale extend must fail with NotHeld: {extended:?}"
    );
    assert_eq!(
        stale.release().await.unwrap(),
        Release::NotHeld,
        "a stale release reports NotHeld"
    );
    assert!(is_held(&c, &name).await, "B still holds after A's release");
    assert!(
        c.try_lock(&name).await.unwrap().is_none(),
        "A's release must not free B's lock"
    );
    assert_eq!(fresh.release().await.unwrap(), Release::Released);
}

/// Releasing twice is harmless: the second release reports not held, and a
/// repeated release never frees a later holder's lock.
pub async fn double_release_is_harmless<H: Harness>(h: &H) {
    let a = locker(h).await;
    let b = locker(h).await;
    let name = unique_name("double-release");
    let key = a.key(&name).unwrap();
    let (first, second) = (LockToken::generate(), LockToken::generate());
    let lease = Duration::from_secs(10);

    let got = a
        .backend()
        .try_acquire(&key, &first, lease, None)
        .await
        .unwrap();
    assert!(matches!(got, Acquire::Acquired { .. }), "free: {got:?}");
    assert_eq!(
        a.backend().release(&key, &first).await.unwrap(),
        Release::Released
    );
    assert_eq!(
        a.backend().release(&key, &first).await.unwrap(),
        Release::NotHeld,
        "the second release reports NotHeld"
    );
    assert!(!is_held(&b, &name).await, "released");

    let got = b
        .backend()
        .try_acquire(&key, &second, lease, None)
        .await
        .unwrap();
    assert!(matches!(got, Acquire::Acquired { .. }), "free: {got:?}");
    assert_eq!(
        a.backend().release(&key, &first).await.unwrap(),
        Release::NotHeld,
        "a third release reports NotHeld"
    );
    assert!(is_held(&a, &name).await, "the later holder is unaffected");
    assert_eq!(
        b.backend().release(&key, &second).await.unwrap(),
        Release::Released
    );
}
