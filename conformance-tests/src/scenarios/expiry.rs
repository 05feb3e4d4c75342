//! Expiry and extension of leases.

use std::time::Duration;

use distlock::{Acquire, Extend, LockBackend, LockError, LockToken, Release};
use tokio::time::Instant;

use crate::support::{assert_within, free_within, is_held, locker, short_ttl, ttl};
use crate::{unique_name, Harness};

/// A lock nobody extends becomes free after its TTL (plus slack), and is
/// still held shortly before.
pub async fn lock_expires_after_ttl_not_before<H: Harness>(h: &H) {
    let a = locker(h).await;
    let b = locker(h).await;
    let name = unique_name("expires");
    let (t, slack) = (short_ttl(h), h.timing_slack());
    let before = Instant::now();
    let guard = a
        .try_lock_with(&name, |_| ttl(t))
        .await
        .unwrap()
        .expect("free");
    let acquired = Instant::now();

    tokio::time::sleep_until(before + t - slack / 2).await;
    assert!(
        is_held(&b, &name).await,
        "the lock must still be held {:?} before its TTL of {t:?} ends",
        slack / 2
    );
    assert!(b.try_lock(&name).await.unwrap().is_none(), "still held");

    let freed = free_within(&b, &name, acquired, t + slack).await;
    let freed = freed.unwrap_or_else(|| panic!("not free {:?} after the TTL {t:?}", t + slack));
    assert_within("expiry after the TTL", freed, t + slack);
    let taken = b.try_lock(&name).await.unwrap();
    assert!(taken.is_some(), "an expired lock can be taken");
    drop(guard);
}

/// Extending really extends: the lock is still held after the original TTL
/// would have run out, and `inspect` reports about the new TTL.
pub async fn extend_really_extends<H: Harness>(h: &H) {
    let a = locker(h).await;
    let b = locker(h).await;
    let name = unique_name("extend");
    let (t, slack) = (short_ttl(h), h.timing_slack());
    let longer = t * 3;
    let start = Instant::now();
    let mut guard = a
        .try_lock_with(&name, |_| ttl(t))
        .await
        .unwrap()
        .expect("free");

    tokio::time::sleep(t / 2).await;
    guard.extend(longer).await.expect("extend while held");
    let remaining = b
        .inspect(&name)
        .await
        .unwrap()
        .remaining
        .expect("a held lock reports its remaining lease");
    assert!(
        remaining <= longer && remaining + slack >= longer,
        "remaining lease {remaining:?} after extending to {longer:?}"
    );

    tokio::time::sleep_until(start + t + slack).await;
    assert!(
        is_held(&b, &name).await,
        "still held after the original TTL {t:?}"
    );
    assert!(b.try_lock(&name).await.unwrap().is_none());
    assert!(
        guard.is_valid(),
        "the guard's deadline moved with the extend"
    );
    assert_eq!(guard.release().await.unwrap(), Release::Released);
}

/// Extending a lease that ran out reports not held, through the guard and
/// through the backend, and does not bring the lock back.
pub async fn extend_after_expiry_is_not_held<H: Harness>(h: &H) {
    let a = locker(h).await;
    let b = locker(h).await;
    let by_guard = unique_name("extend-expired-guard");
    let by_backend = unique_name("extend-expired-backend");
    let (t, slack) = (short_ttl(h), h.timing_slack());
    let mut guard = a
        .try_lock_with(&by_guard, |_| ttl(t))
        .await
        .unwrap()
        .expect("free");
    let key = a.key(&by_backend).unwrap();
    let token = LockToken::generate();
    let got = a
        .backend()
        .try_acquire(&key, &token, t, None)
        .await
        .unwrap();
    assert!(matches!(got, Acquire::Acquired { .. }), "free: {got:?}");

    tokio::time::sleep(t + slack).await;
    let extended = guard.extend(Duration::from_secs(10)).await;
    assert!(
        matches!(extended, Err(LockError::NotHeld { .. })),
        "extending an expired guard: {extended:?}"
    );
    assert!(!guard.is_valid(), "an expired guard is not valid");
    assert_eq!(
        a.backend()
            .extend(&key, &token, Duration::from_secs(10))
            .await
            .unwrap(),
        Extend::NotHeld,
        "extending an expired lease through the backend"
    );
    assert_eq!(
        a.backend().release(&key, &token).await.unwrap(),
        Release::NotHeld,
        "releasing a lease that ran out (nobody took the lock since) through the backend: \
         the token no longer holds it"
    );
    for name in [&by_guard, &by_backend] {
        assert!(!is_held(&b, name).await, "an extend revived {name}");
        assert!(b.try_lock(name).await.unwrap().is_some());
    }
    assert_eq!(guard.release().await.unwrap(), Release::NotHeld);
}
