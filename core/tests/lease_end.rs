//! Issue 10 kind 9 / issue 11 item 6: a lease never claims a lock its guard
//! no longer holds, and one awaitable reports loss or end. Each case failed
//! (or did not compile: `is_held`/`ended` are new) before the fix: the
//! lease said not lost with 9.9 s remaining and `lost()` never completed.

use std::time::Duration;

use distlock::{Lease, LeaseEnd, LockOptions, Locker, Release};
use distlock_memory::MemoryBackend;
use futures::FutureExt;

fn assert_ended(lease: &Lease, how: &str) {
    assert!(!lease.is_held(), "{how}: the lease still claims the lock");
    assert_eq!(lease.remaining(), Duration::ZERO, "{how}: remaining");
    assert_eq!(
        lease.ended().now_or_never(),
        Some(LeaseEnd::Released),
        "{how}: ended() must complete with Released"
    );
    assert!(!lease.is_lost(), "{how}: an end is not a loss");
}

/// The issue's input: a worker holds `guard.lease()`; the owner task is
/// aborted (its guard dropped); another client acquires 1 ms later.
#[tokio::test(start_paused = true)]
async fn a_lease_whose_owner_task_was_aborted_is_not_held() {
    let store = MemoryBackend::new();
    let a = Locker::new(store.clone());
    let b = Locker::new(store.clone());
    let opts = LockOptions::default().with_ttl(Duration::from_secs(10));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let owner = tokio::spawn(async move {
        let guard = a
            .try_lock_with("k", |_| opts.clone())
            .await
            .unwrap()
            .unwrap();
        tx.send(guard.lease()).unwrap();
        std::future::pending::<()>().await;
        drop(guard);
    });
    let lease = rx.await.unwrap();
    assert!(lease.is_held());
    let watcher = tokio::spawn({
        let lease = lease.clone();
        async move { lease.ended().await }
    });
    owner.abort();
    let _ = owner.await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(
        b.try_lock("k").await.unwrap().is_some(),
        "released in the background"
    );
    assert_ended(&lease, "aborted owner");
    assert_eq!(watcher.await.unwrap(), LeaseEnd::Released);
}

/// `with_lock` returning ends the lease it handed out; so do release, drop
/// and a panic inside `with_lock`.
#[tokio::test(start_paused = true)]
async fn every_way_of_ending_a_guard_ends_its_lease() {
    let l = Locker::new(MemoryBackend::new());
    let kept = l
        .with_lock("w", |lease| async move { lease })
        .await
        .unwrap();
    assert_ended(&kept, "with_lock returned");

    let g = l.try_lock("r").await.unwrap().unwrap();
    let lease = g.lease();
    assert_eq!(g.release().await.unwrap(), Release::Released);
    assert_ended(&lease, "release");

    let g = l.try_lock("d").await.unwrap().unwrap();
    let lease = g.lease();
    drop(g);
    assert_ended(&lease, "drop");

    let (tx, rx) = std::sync::mpsc::channel();
    let l2 = l.clone();
    let panicked = tokio::spawn(async move {
        l2.with_lock("p", |lease| async move {
            tx.send(lease).unwrap();
            panic!("work failed");
        })
        .await
    })
    .await;
    assert!(panicked.is_err());
    assert_ended(&rx.recv().unwrap(), "panic in with_lock");
}

/// A lease whose deadline passed reports `Lost` through `ended()`, and
/// `lost()` keeps meaning loss: it fires for a loss, never for an end.
#[tokio::test(start_paused = true)]
async fn ended_reports_a_loss_and_lost_only_fires_for_loss() {
    let l = Locker::new(MemoryBackend::new());
    let opts = LockOptions::default().with_ttl(Duration::from_millis(500));
    let g = l
        .try_lock_with("x", |_| opts.clone())
        .await
        .unwrap()
        .unwrap();
    let lease = g.lease();
    assert_eq!(lease.ended().await, LeaseEnd::Lost);
    assert!(lease.is_lost() && !lease.is_held());
    assert!(lease.lost().now_or_never().is_some());
    assert_eq!(g.release().await.unwrap(), Release::NotHeld);

    let g = l.try_lock("y").await.unwrap().unwrap();
    let lease = g.lease();
    g.release().await.unwrap();
    let fired = tokio::time::timeout(Duration::from_secs(60), lease.lost()).await;
    assert!(fired.is_err(), "lost() fired after a normal release");
}

/// Issue 11 item 8: with `max_hold` 600 ms the lost signal fired at 598 ms
/// while `release()` still returned `Released`. Now release agrees with the
/// signal: once the guard counts the lease as lost, release says `NotHeld`.
#[tokio::test(start_paused = true)]
async fn release_after_max_hold_agrees_with_the_lost_signal() {
    let l = Locker::new(MemoryBackend::new());
    let opts = LockOptions::default()
        .with_ttl(Duration::from_millis(300))
        .with_auto_renew(true)
        .with_max_hold(Duration::from_millis(600));
    let start = tokio::time::Instant::now();
    let g = l
        .try_lock_with("m", |_| opts.clone())
        .await
        .unwrap()
        .unwrap();
    g.lost().await;
    let at = start.elapsed();
    assert!(at <= Duration::from_millis(600), "lost at {at:?}");
    assert_eq!(
        g.release().await.unwrap(),
        Release::NotHeld,
        "lost at {at:?}"
    );
}

/// Renewal never shortens a longer lease set by a manual extend: it waits
/// until what is left falls to its TTL. Found by a newcomer's trial: an
/// auto-renewing guard's `extend(60 s)` was put back to the 1 s TTL by the
/// next renewal, and `keep_for(5 s)` raced by a renewal on another worker
/// thread kept only the TTL (16 of 400 runs on Redis).
#[tokio::test(start_paused = true)]
async fn renewal_never_shortens_a_longer_manual_extend() {
    let store = distlock_memory::MemoryBackend::new();
    let locker = distlock::Locker::new(store.clone());
    let mut guard = locker
        .lock_with("long", |o| {
            o.with_ttl(std::time::Duration::from_secs(3))
                .with_auto_renew(true)
        })
        .await
        .unwrap();
    guard
        .extend(std::time::Duration::from_secs(60))
        .await
        .unwrap();
    // Ten renewal periods later the manual lease still stands.
    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    let left = locker.inspect("long").await.unwrap().remaining.unwrap();
    assert!(
        left > std::time::Duration::from_secs(45),
        "renewal shortened the 60 s lease to {left:?}"
    );
    assert!(guard.lease().remaining() > std::time::Duration::from_secs(45));
    // Once what is left falls to the TTL, renewal takes over again.
    tokio::time::sleep(std::time::Duration::from_secs(55)).await;
    assert!(guard.is_valid(), "renewed past the manual lease");
    let left = locker.inspect("long").await.unwrap().remaining.unwrap();
    assert!(left <= std::time::Duration::from_secs(3), "{left:?}");
    guard.release().await.unwrap();
}

/// ...and a later manual extend that shortens the lease again hands it
/// back to renewal within a renewal period (renewal looks every period
/// while it skips, without a call).
#[tokio::test(start_paused = true)]
async fn renewal_resumes_after_a_manual_extend_shortens_the_lease() {
    use std::time::Duration;
    let locker = distlock::Locker::new(distlock_memory::MemoryBackend::new());
    let mut guard = locker
        .lock_with("short-again", |o| {
            o.with_ttl(Duration::from_secs(3)).with_auto_renew(true)
        })
        .await
        .unwrap();
    guard.extend(Duration::from_secs(60)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    guard.extend(Duration::from_secs(2)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(guard.is_valid(), "renewal took the lease over again");
    assert!(locker.inspect("short-again").await.unwrap().held);
    guard.release().await.unwrap();
}
