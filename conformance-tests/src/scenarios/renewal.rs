//! Automatic renewal, the lost-lock signal and `max_hold`.

use std::time::Duration;

use distlock::{LockError, LockOptions, Locker, Release};
use futures::FutureExt;
use tokio::time::Instant;

use crate::counting::Counted;
use crate::support::{
    assert_within, client, drop_bound, expire, free_within, is_held, locker, renew_ttl, short_ttl,
    ttl,
};
use crate::{unique_name, Harness};

/// Options with `ttl` and auto-renewal on.
fn renewing(t: Duration) -> LockOptions {
    ttl(t).with_auto_renew(true)
}

/// With `auto_renew`, a lock stays held across more than three TTLs (no
/// other client can take it); after release it is free and renewal stops.
pub async fn auto_renew_keeps_lock_across_ttls<H: Harness>(h: &H) {
    let counting = Counted::new(client(h).await);
    let a = Locker::new(counting.backend.clone());
    let b = locker(h).await;
    let name = unique_name("renew");
    let t = renew_ttl(h);
    let start = Instant::now();
    let guard = a
        .try_lock_with(&name, &renewing(t))
        .await
        .unwrap()
        .expect("free");
    while start.elapsed() < t * 3 + t / 2 {
        tokio::time::sleep(t / 4).await;
        assert!(
            b.try_lock(&name).await.unwrap().is_none(),
            "a renewed lock was taken {:?} after acquisition (TTL {t:?})",
            start.elapsed()
        );
    }
    assert!(guard.is_valid(), "renewal keeps the guard valid");
    assert_eq!(guard.release().await.unwrap(), Release::Released);
    assert!(!is_held(&b, &name).await, "free after release");
    let calls = counting.calls();
    tokio::time::sleep(t * 2).await;
    assert_eq!(counting.calls(), calls, "renewal went on after release");
    assert!(!is_held(&b, &name).await, "still free after release");
}

/// Dropping a renewing guard stops its renewal, and the lock frees within
/// the drop bound and stays free.
pub async fn renewal_stops_when_guard_dropped<H: Harness>(h: &H) {
    let counting = Counted::new(client(h).await);
    let a = Locker::new(counting.backend.clone());
    let b = locker(h).await;
    let name = unique_name("renew-drop");
    let t = renew_ttl(h);
    let guard = a
        .try_lock_with(&name, &renewing(t))
        .await
        .unwrap()
        .expect("free");
    tokio::time::sleep(t + t / 2).await;
    assert!(is_held(&b, &name).await, "renewed past its first TTL");
    let dropped_at = Instant::now();
    drop(guard);
    let freed = free_within(&b, &name, dropped_at, drop_bound(h)).await;
    assert!(
        freed.is_some(),
        "a dropped renewing guard's lock stays held"
    );
    // The background release was counted before the lock showed as free.
    let calls = counting.calls();
    tokio::time::sleep(t * 2).await;
    assert_eq!(counting.calls(), calls, "renewal went on after drop");
    assert!(!is_held(&b, &name).await, "still free after drop");
}

/// When the lock is taken away behind a renewing holder's back, the lost
/// signal fires at the next renewal (within a third of the TTL plus slack,
/// before the lease's own deadline); the guard then can neither extend nor
/// release.
pub async fn lost_fires_when_lock_taken_away<H: Harness>(h: &H) {
    let client = client(h).await;
    let a = Locker::new(client.clone());
    let name = unique_name("lost");
    let t = Duration::from_secs(1).max(h.timing_slack() * 3);
    let mut guard = a
        .try_lock_with(&name, &renewing(t))
        .await
        .unwrap()
        .expect("free");
    let lease = guard.lease();
    tokio::time::sleep(t / 2).await;
    assert!(!lease.is_lost(), "renewal keeps the lease");

    expire(h, &client, &a.key(&name).unwrap()).await;
    let taken_at = Instant::now();
    let deadline = guard.valid_until();
    let bound = t / 3 + h.timing_slack();
    tokio::time::timeout(bound, guard.lost())
        .await
        .expect("the lost signal fires when renewal finds the lock gone");
    assert_within("lost signal", taken_at.elapsed(), bound);
    assert!(
        Instant::now() < deadline,
        "the signal came from the lease deadline, not from renewal noticing"
    );
    assert!(
        lease.is_lost() && !guard.is_valid(),
        "is_lost after the signal"
    );
    assert!(
        lease.lost().now_or_never().is_some(),
        "a lost() awaited after the loss completes at once"
    );
    let extended = guard.extend(t).await;
    assert!(
        matches!(extended, Err(LockError::NotHeld { .. })),
        "extend after loss: {extended:?}"
    );
    assert_eq!(guard.release().await.unwrap(), Release::NotHeld);
}

/// The lost signal does not fire after a normal release or drop, even
/// long after the lease would have ended.
pub async fn lost_does_not_fire_on_release<H: Harness>(h: &H) {
    let a = locker(h).await;
    let released_name = unique_name("not-lost-release");
    let dropped_name = unique_name("not-lost-drop");
    let t = renew_ttl(h);
    let released = a
        .try_lock_with(&released_name, &renewing(t))
        .await
        .unwrap()
        .expect("free");
    let dropped = a
        .try_lock_with(&dropped_name, &renewing(t))
        .await
        .unwrap()
        .expect("free");
    let (lease1, lease2) = (released.lease(), dropped.lease());
    assert_eq!(released.release().await.unwrap(), Release::Released);
    drop(dropped);
    let (fired1, fired2) = tokio::join!(
        tokio::time::timeout(t * 2, lease1.lost()),
        tokio::time::timeout(t * 2, lease2.lost()),
    );
    assert!(fired1.is_err(), "lost() fired after a normal release");
    assert!(fired2.is_err(), "lost() fired after a drop");
    assert!(
        !lease1.is_lost() && !lease2.is_lost(),
        "is_lost after release"
    );
}

/// Without renewal, the lost signal fires at the guard's validity deadline
/// (not before, at most the slack after), which is never later than the
/// TTL after the request; an extend moves the deadline.
pub async fn lost_fires_at_deadline_without_renewal<H: Harness>(h: &H) {
    let a = locker(h).await;
    let name = unique_name("deadline");
    let extended_name = unique_name("deadline-extended");
    let (t, slack) = (short_ttl(h), h.timing_slack());
    let guard = a
        .try_lock_with(&name, &ttl(t))
        .await
        .unwrap()
        .expect("free");
    let mut extended = a
        .try_lock_with(&extended_name, &ttl(t))
        .await
        .unwrap()
        .expect("free");
    let valid_until = guard.valid_until();
    assert!(
        valid_until <= Instant::now() + t,
        "the deadline must not be later than the TTL from the request"
    );
    tokio::time::sleep(t / 4).await;
    extended.extend(t * 3).await.expect("extend while held");

    let lease = guard.lease();
    tokio::time::timeout_at(valid_until + slack, lease.lost())
        .await
        .expect("the lost signal fires by the validity deadline");
    assert!(
        Instant::now() >= valid_until,
        "lost() fired before the deadline"
    );
    assert!(lease.is_lost() && !guard.is_valid());
    assert!(
        extended.is_valid() && !extended.lease().is_lost(),
        "the extended lease is not lost at the original deadline"
    );
    assert_eq!(extended.release().await.unwrap(), Release::Released);
}

/// With `auto_renew` and `max_hold` of two TTLs, renewal stops: the lock
/// is free by `max_hold` + TTL + slack, and the lost signal fires.
pub async fn max_hold_stops_renewal<H: Harness>(h: &H) {
    let a = locker(h).await;
    let b = locker(h).await;
    let name = unique_name("max-hold");
    let (t, slack) = (renew_ttl(h), h.timing_slack());
    let max_hold = t * 2;
    let start = Instant::now();
    let guard = a
        .try_lock_with(&name, &renewing(t).with_max_hold(Some(max_hold)))
        .await
        .unwrap()
        .expect("free");
    tokio::time::sleep_until(start + t + t / 2).await;
    assert!(is_held(&b, &name).await, "renewed past its first TTL");

    let limit = max_hold + t + slack;
    let freed = free_within(&b, &name, start, limit).await;
    assert!(
        freed.is_some(),
        "still held {limit:?} after a max_hold of {max_hold:?}"
    );
    tokio::time::timeout_at(start + limit, guard.lost())
        .await
        .expect("the lost signal fires once renewal stopped");
    assert_eq!(guard.release().await.unwrap(), Release::NotHeld);
}
