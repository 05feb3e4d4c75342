//! Dropped guards and `with_lock`: locks are released however the holder
//! leaves.

use std::time::Duration;

use distlock::{LockBackend, LockError, Locker, Release};
use tokio::time::Instant;

use crate::counting::Counted;
use crate::support::{
    assert_within, client, drop_bound, expire, free_within, is_held, locker, ttl,
};
use crate::{unique_name, Harness};

/// A guard dropped without `release` is released in the background,
/// promptly (well under its 30 s TTL).
pub async fn dropped_guard_released_promptly<H: Harness>(h: &H) {
    let a = locker(h).await;
    let b = locker(h).await;
    let name = unique_name("dropped");
    let guard = a
        .try_lock_with(&name, |_| ttl(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("free");
    let lease = guard.lease();
    let dropped_at = Instant::now();
    drop(guard);
    let freed = free_within(&b, &name, dropped_at, drop_bound(h)).await;
    let freed = freed.expect("a dropped guard's lock is released in the background");
    assert_within("background release", freed, drop_bound(h));
    assert!(
        !lease.is_lost(),
        "a dropped guard's lease is ended, not lost"
    );
    let again = b.try_lock(&name).await.unwrap();
    assert!(again.is_some(), "the dropped lock can be taken");
}

/// `with_lock` runs the closure under the lock (nobody else can take it
/// meanwhile), passes the lease, returns the closure's value and releases.
pub async fn with_lock_runs_under_lock_and_releases<H: Harness>(h: &H) {
    let a = locker(h).await;
    let b = locker(h).await;
    let name = unique_name("with-lock");
    let fencing = a.backend().capabilities().fencing;
    let (b_ref, name_ref) = (&b, name.as_str());
    let value = a
        .with_lock_with(
            &name,
            |_| ttl(Duration::from_secs(30)),
            move |lease| async move {
                assert_eq!(lease.name(), name_ref);
                assert!(!lease.is_lost(), "the lease is valid inside");
                assert!(is_held(b_ref, name_ref).await, "held inside the closure");
                let other = b_ref.try_lock(name_ref).await.unwrap();
                assert!(other.is_none(), "nobody else can take it inside");
                if fencing {
                    let info = b_ref.inspect(name_ref).await.unwrap();
                    assert_eq!(info.last_fence, Some(lease.fence()));
                }
                42
            },
        )
        .await
        .expect("with_lock");
    assert_eq!(value, 42, "with_lock returns the closure's value");
    assert!(!is_held(&b, &name).await, "released after the closure");
    let again = b.try_lock(&name).await.unwrap();
    assert!(again.is_some(), "the lock can be taken after with_lock");
    assert_eq!(again.unwrap().release().await.unwrap(), Release::Released);
}

/// A panic inside `with_lock` still releases the lock (in the background,
/// within the drop bound).
pub async fn with_lock_releases_on_panic<H: Harness>(h: &H) {
    let a = locker(h).await;
    let b = locker(h).await;
    let name = unique_name("with-lock-panic");
    let task = {
        let name = name.clone();
        tokio::spawn(async move {
            a.with_lock_with(
                &name,
                |_| ttl(Duration::from_secs(30)),
                |_| async {
                    panic!("conformance: a deliberate panic inside with_lock");
                },
            )
            .await
        })
    };
    let joined = task.await;
    let panicked_at = Instant::now();
    assert!(
        joined.as_ref().is_err_and(|e| e.is_panic()),
        "the closure's panic reaches the caller"
    );
    let freed = free_within(&b, &name, panicked_at, drop_bound(h)).await;
    assert!(
        freed.is_some(),
        "a panic inside with_lock left the lock held"
    );
    assert!(b.try_lock(&name).await.unwrap().is_some());
}

/// A `release()` whose future is dropped before it finishes (the caller
/// was cancelled) still releases the lock, in the background.
pub async fn cancelled_release_still_releases<H: Harness>(h: &H) {
    // A slow release request, so the cancellation lands before it is done.
    let a = Locker::new(Counted::with_delay(client(h).await, Duration::from_millis(20)).backend);
    let b = locker(h).await;
    let name = unique_name("cancelled-release");
    let guard = a
        .try_lock_with(&name, |_| ttl(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("free");
    let cancelled_at = Instant::now();
    let _ = tokio::time::timeout(Duration::ZERO, guard.release()).await;
    let freed = free_within(&b, &name, cancelled_at, drop_bound(h)).await;
    assert!(freed.is_some(), "a cancelled release left the lock held");
}

/// `with_lock` reports `NotHeld` when the lease was taken away while the
/// closure ran (the work ran, but exclusion was not guaranteed), and the
/// new holder keeps the lock.
pub async fn with_lock_reports_lost_lease<H: Harness>(h: &H) {
    let client = client(h).await;
    let a = Locker::new(client.clone());
    let b = locker(h).await;
    let name = unique_name("with-lock-lost");
    let key = a.key(&name).unwrap();
    let thief = std::sync::Mutex::new(None);
    let (b_ref, name_ref, client_ref, thief_ref) = (&b, name.as_str(), &client, &thief);
    let result = a
        .with_lock_with(
            &name,
            |_| ttl(Duration::from_secs(30)),
            |_| async move {
                expire(h, client_ref, &key).await;
                let taken = b_ref.try_lock(name_ref).await.unwrap();
                *thief_ref.lock().unwrap() = Some(taken.expect("the lock was taken away"));
            },
        )
        .await;
    match result {
        Err(LockError::NotHeld { name: reported }) => {
            assert_eq!(reported, name, "NotHeld names the lock")
        }
        other => panic!("with_lock after losing the lock: {other:?}"),
    }
    assert!(is_held(&b, &name).await, "the new holder keeps the lock");
    let thief = thief.into_inner().unwrap().expect("taken");
    assert_eq!(
        thief.release().await.unwrap(),
        Release::Released,
        "with_lock's guard ending must not release the new holder's lock"
    );
}
