//! Unit tests of code that takes locks, on the memory backend under tokio's
//! paused clock: leases run out, renewals happen and waits time out without
//! any real waiting, and every run gives the same result.
//!
//! Needs tokio's `test-util` feature (`tokio = { version = "1", features =
//! ["macros", "rt", "time", "test-util"] }` in `[dev-dependencies]`).
//! Under `start_paused = true`, time jumps ahead whenever every task waits
//! on a timer; `tokio::time::advance` jumps explicitly (timers due in
//! between fire afterwards, in one go; to let periodic work such as renewal
//! run on its way, `sleep` instead).

use std::time::Duration;

use distlock::{LockError, LockOptions, Locker, Release, TryLock};
use distlock_memory::MemoryBackend;
use tokio::time::Instant;

fn locker() -> Locker<MemoryBackend> {
    Locker::new(MemoryBackend::new())
        .with_defaults(
            LockOptions::default()
                .with_ttl(Duration::from_secs(30))
                .with_owner("test-worker"),
        )
        .unwrap()
}

/// A crashed holder's lock frees itself after its TTL; its late release
/// frees nothing, and the next holder's fencing token is higher.
#[tokio::test(start_paused = true)]
async fn a_crashed_holders_lock_frees_itself_after_its_ttl() {
    let locker = locker();
    let crashed = locker.try_lock("job").await.unwrap().unwrap();
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(locker.try_lock("job").await.unwrap().is_none(), "not yet");
    tokio::time::advance(Duration::from_secs(2)).await;
    let next = locker
        .try_lock("job")
        .await
        .unwrap()
        .expect("the lease ran out");
    assert!(next.fence() > crashed.fence());
    assert!(crashed.lease().is_lost());
    assert_eq!(crashed.release().await.unwrap(), Release::NotHeld);
    assert!(
        locker.inspect("job").await.unwrap().held,
        "the new holder keeps it"
    );
}

/// Renewal keeps a lease alive through long work; once the lock is taken
/// away the lost signal fires and the work can stop.
#[tokio::test(start_paused = true)]
async fn renewal_keeps_long_work_covered_and_the_lost_signal_stops_it() {
    let locker = locker();
    let guard = locker
        .lock_with("reindex", |o| o.with_auto_renew(true))
        .await
        .unwrap();
    // Ten minutes of work under a 30 s lease.
    let worked = tokio::select! {
        _ = guard.lost() => false,
        _ = tokio::time::sleep(Duration::from_secs(600)) => true,
    };
    assert!(worked, "renewal kept the lease");
    assert!(guard.is_valid());

    // The lock is taken away behind the holder's back (an operator, a
    // backend failover): the next renewal finds out.
    let key = locker.key("reindex").unwrap();
    assert!(locker.backend().expire_now(&key));
    let start = Instant::now();
    guard.lost().await;
    assert!(
        start.elapsed() <= Duration::from_secs(10),
        "within a renewal period"
    );
    assert_eq!(guard.release().await.unwrap(), Release::NotHeld);
}

/// A wait for a held lock ends exactly at its wait timeout, and a waiter
/// gets the lock as soon as the holder lets it go.
#[tokio::test(start_paused = true)]
async fn waits_end_at_their_timeout_or_at_the_release() {
    let locker = locker();
    let held = locker.try_lock("report").await.unwrap().unwrap();
    let start = Instant::now();
    let err = locker
        .lock_with("report", |o| o.with_wait_timeout(Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::TimedOut { .. }), "{err:?}");
    assert_eq!(start.elapsed(), Duration::from_secs(5));

    let waiter = {
        let locker = locker.clone();
        tokio::spawn(async move { locker.lock("report").await.map(|g| (g, Instant::now())) })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let released = Instant::now();
    held.release().await.unwrap();
    let (guard, got) = waiter.await.unwrap().unwrap();
    assert_eq!(got, released, "woken by the release, not by a retry timer");
    guard.release().await.unwrap();
}

/// The holder's remaining lease, as a busy try-lock reports it.
#[tokio::test(start_paused = true)]
async fn a_busy_lock_tells_how_long_it_stays_busy() {
    let locker = locker();
    let _held = locker.try_lock("nightly").await.unwrap().unwrap();
    tokio::time::advance(Duration::from_secs(10)).await;
    let TryLock::Held(holder) = locker.try_lock_or_holder("nightly", |o| o).await.unwrap() else {
        panic!("the lock is held");
    };
    assert_eq!(holder.remaining, Some(Duration::from_secs(20)));
    let info = locker.inspect("nightly").await.unwrap();
    assert_eq!(info.owner.as_deref(), Some("test-worker"));
}

/// The run-once recipe: a report kept after success is not run again that
/// day; a failed one is released for a retry.
#[tokio::test(start_paused = true)]
async fn a_report_runs_once_per_day() {
    let locker = locker();
    let day = Duration::from_secs(24 * 3600);
    let mut built = 0;
    // Started every hour: the first run fails, the second builds it.
    for fails in [true, false, false, false] {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let Some(guard) = locker.try_lock("report:2026-11-30").await.unwrap() else {
            continue;
        };
        if fails {
            guard.release().await.unwrap();
        } else {
            built += 1;
            guard.keep_for(day).await.unwrap();
        }
    }
    assert_eq!(
        built, 1,
        "the failed run was retried once, then the report was done"
    );
    assert!(locker
        .try_lock("report:2026-12-01")
        .await
        .unwrap()
        .is_some());
}
