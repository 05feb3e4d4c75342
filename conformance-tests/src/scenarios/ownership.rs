//! Ownership: only the holder's token may extend or release a lock.

use std::time::Duration;

use distlock::{
    Acquire, Extend, LockBackend, LockError, LockToken, Release, Waiter, WaiterId, WAITER_LEASE,
};

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

    // The same at the backend itself: the guard above already knew its
    // lease was over and reports NotHeld whatever the backend says, so ask
    // the backend directly about a token whose lease ran out.
    let backend = a.backend();
    let key = a.key(&name).unwrap();
    let old = LockToken::generate();
    let got = backend.try_acquire(&key, &old, t, None).await.unwrap();
    assert!(
        matches!(got, Acquire::Acquired { .. }),
        "free again: {got:?}"
    );
    tokio::time::sleep(t + h.timing_slack()).await;
    let newer = b
        .try_lock_with(&name, |_| ttl(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("the backend-level lease ran out, so B acquires");
    assert_eq!(
        backend.release(&key, &old).await.unwrap(),
        Release::NotHeld,
        "the backend's release of a lease that ran out (and was taken over) reports NotHeld"
    );
    assert_eq!(newer.release().await.unwrap(), Release::Released);
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

/// `try_acquire` with the token that already holds the key (an acquire
/// sent again because its answer was lost, or the plain claim of a lock a
/// line of waiters handed over to that token) answers
/// [`Acquire::Acquired`] with the hold's fencing token (not below it: a
/// quorum may answer a higher one), and
/// renews the lease to the new TTL from now: the caller counts a lease of
/// that TTL from its send time, so the backend must not keep a shorter
/// one. Any other token still gets [`Acquire::Held`].
///
/// With [`Capabilities::waiter_queue`](distlock::Capabilities), the same
/// for a hold handed over through the line (whose lease is only the
/// waiter's claim window until claimed): a quorum asks a member whose
/// line it once joined with plain calls when that member is no longer its
/// gate.
pub async fn acquire_by_the_holding_token_renews_its_lease<H: Harness>(h: &H) {
    let l = locker(h).await;
    let backend = l.backend();
    let name = unique_name("resend");
    let key = l.key(&name).unwrap();
    let (mine, other) = (LockToken::generate(), LockToken::generate());
    let (short, long) = (Duration::from_secs(2), Duration::from_secs(20));
    let first = match backend
        .try_acquire(&key, &mine, short, Some("first"))
        .await
        .unwrap()
    {
        Acquire::Acquired { fence } => fence,
        held => panic!("a free key: {held:?}"),
    };
    let again = backend
        .try_acquire(&key, &mine, long, Some("again"))
        .await
        .unwrap();
    // The same fencing token from one store; a quorum may answer a higher
    // one (a member that answered the first call late counts now, and the
    // quorum's token is the highest of its majority), never a lower one.
    assert!(
        matches!(again, Acquire::Acquired { fence } if fence >= first),
        "the holding token acquires again, its fencing token not below the first ({first}): {again:?}"
    );
    let info = l.inspect(&name).await.unwrap();
    if let Some(remaining) = info.remaining {
        assert!(
            remaining > short,
            "the repeated acquire renewed the lease to {long:?}; {remaining:?} left"
        );
    }
    assert_eq!(
        info.owner.as_deref(),
        Some("again"),
        "the repeated acquire renewed the owner label"
    );
    // A repeat with a shorter TTL (a late copy after a longer extend)
    // never shortens the lease.
    let late = backend
        .try_acquire(&key, &mine, Duration::from_millis(100), Some("again"))
        .await
        .unwrap();
    assert!(matches!(late, Acquire::Acquired { .. }), "{late:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        is_held(&l, &name).await,
        "a repeat with a shorter TTL shortened the lease"
    );
    assert!(
        matches!(
            backend.try_acquire(&key, &other, long, None).await.unwrap(),
            Acquire::Held { .. }
        ),
        "another token is still refused"
    );
    assert_eq!(
        backend.release(&key, &mine).await.unwrap(),
        Release::Released
    );
    if !backend.capabilities().waiter_queue {
        return;
    }

    // A handover through the line, claimed by a plain call.
    let holder = match backend.try_acquire(&key, &other, long, None).await.unwrap() {
        Acquire::Acquired { .. } => other,
        held => panic!("released, so free: {held:?}"),
    };
    let waiter = Waiter::new(WaiterId::generate(), WAITER_LEASE);
    let queued = backend
        .try_acquire_queued(&key, &mine, long, None, &waiter)
        .await
        .unwrap();
    assert!(matches!(queued, Acquire::Held { .. }), "{queued:?}");
    assert_eq!(
        backend.release(&key, &holder).await.unwrap(),
        Release::Released
    );
    let claimed = backend.try_acquire(&key, &mine, long, None).await.unwrap();
    assert!(
        matches!(claimed, Acquire::Acquired { .. }),
        "the release handed the lock to the first waiter in line: {claimed:?}"
    );
    let remaining = l.inspect(&name).await.unwrap().remaining;
    if let Some(remaining) = remaining {
        assert!(
            remaining > WAITER_LEASE * 2,
            "the claim renewed the lease to {long:?}, not the claim window; {remaining:?} left"
        );
    }
    // A late copy of an earlier queued call of the same wait (its answer
    // timed out, the wait went on with the same token) never shortens the
    // lease either.
    let late = backend
        .try_acquire_queued(&key, &mine, Duration::from_millis(100), None, &waiter)
        .await
        .unwrap();
    assert!(matches!(late, Acquire::Acquired { .. }), "{late:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        is_held(&l, &name).await,
        "a queued repeat with a shorter TTL shortened the lease"
    );
    assert_eq!(
        backend.release(&key, &mine).await.unwrap(),
        Release::Released
    );
}
