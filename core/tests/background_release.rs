//! Background releases (issue 10 kinds 7 and 10, issue 11 item 3): a
//! dropped guard's release keeps retrying transient failures while the
//! lease could be held, runs on the runtime that dropped the guard, is not
//! lost when a runtime shuts down, and `Locker::flush` waits for it.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use distlock::{LockOptions, Locker};
use distlock_memory::MemoryBackend;
use support::Faulty;
use tokio::runtime::{Builder, Runtime};

fn current_thread() -> Runtime {
    Builder::new_current_thread().enable_all().build().unwrap()
}

fn multi_thread() -> Runtime {
    Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Polls (on the caller's runtime) until `name` is free, for up to `limit`.
async fn freed_within(locker: &Locker<MemoryBackend>, name: &str, limit: Duration) -> bool {
    let end = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < end {
        if !locker.inspect(name).await.unwrap().held {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// The input, on the memory backend: the backend refuses releases
/// for a while (as Redis answers BUSY until SCRIPT KILL); the dropped
/// guard's release keeps trying and frees the lock long before its TTL.
/// Before the fix it tried three times in 150 ms and gave up.
#[tokio::test(start_paused = true)]
async fn a_dropped_guards_release_retries_transient_failures() {
    let store = MemoryBackend::new();
    let faulty = Faulty {
        inner: store.clone(),
        ..Faulty::default()
    };
    let (fail, calls) = (faulty.fail_releases.clone(), faulty.releases.clone());
    let a = Locker::new(faulty);
    let observer = Locker::new(store);
    let opts = LockOptions::default().with_ttl(Duration::from_secs(5));
    let g = a
        .try_lock_with("k", |_| opts.clone())
        .await
        .unwrap()
        .expect("free");
    fail.store(8, Ordering::SeqCst);
    drop(g);
    assert!(
        freed_within(&observer, "k", Duration::from_secs(4)).await,
        "still held after {} release attempts",
        calls.load(Ordering::SeqCst)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 9, "8 refusals, then success");
}

/// Retrying is bounded by how long the lease could still be held (plus a
/// grace): a backend that stays down gets no attempts after that.
#[tokio::test(start_paused = true)]
async fn retrying_stops_when_the_lease_could_have_ended() {
    let faulty = Faulty::default();
    let (down, calls) = (faulty.down.clone(), faulty.releases.clone());
    let a = Locker::new(faulty);
    let opts = LockOptions::default().with_ttl(Duration::from_secs(2));
    let g = a
        .try_lock_with("k", |_| opts.clone())
        .await
        .unwrap()
        .expect("free");
    down.store(true, Ordering::SeqCst);
    drop(g);
    // flush returns once the job gave up: TTL + grace.
    let start = tokio::time::Instant::now();
    a.flush().await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took <= Duration::from_secs(4),
        "flush returned after {took:?}"
    );
    let attempts = calls.load(Ordering::SeqCst);
    assert!(attempts > 3, "only {attempts} attempts");
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        attempts,
        "retried past the lease"
    );
}

/// An error no retry can fix (here a missing permission) ends the job
/// after one attempt.
#[tokio::test(start_paused = true)]
async fn a_permanent_error_is_not_retried() {
    let faulty = Faulty::default();
    let (forbid, calls) = (faulty.forbid_releases.clone(), faulty.releases.clone());
    let a = Locker::new(faulty);
    let g = a.try_lock("k").await.unwrap().expect("free");
    forbid.store(true, Ordering::SeqCst);
    drop(g);
    a.flush().await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// Issue 10 kind 10, third bullet: the locker was first used on an idle
/// current-thread runtime; a guard dropped on another runtime is released
/// there, not queued behind the idle one. Before the fix the release waited
/// for the first runtime to run again.
#[test]
fn a_release_runs_on_the_runtime_that_dropped_the_guard() {
    let locker = Locker::new(MemoryBackend::new());
    let first = current_thread();
    first.block_on(async {
        drop(locker.try_lock("warm-up").await.unwrap().unwrap());
        locker.flush().await;
    });
    // `first` stays alive but idle from here on.
    let second = multi_thread();
    second.block_on(async {
        drop(locker.try_lock("k").await.unwrap().unwrap());
        assert!(
            freed_within(&locker, "k", Duration::from_secs(5)).await,
            "the release waited for the idle first runtime"
        );
    });
    drop(first);
}

/// A runtime shuts down with a release queued (a current-thread runtime
/// whose `block_on` returned right after the drop): the release is picked
/// up by the next call on another runtime. Before the fix it was lost and
/// the lock stayed held for its TTL.
#[test]
fn a_release_queued_on_a_runtime_that_shut_down_is_not_lost() {
    let locker = Locker::new(MemoryBackend::new());
    let first = current_thread();
    first.block_on(async {
        drop(locker.try_lock("k").await.unwrap().unwrap());
    });
    drop(first);
    let second = multi_thread();
    second.block_on(async {
        // Any call of the locker inside a runtime adopts the release.
        assert!(locker.try_lock("other").await.unwrap().is_some());
        assert!(
            freed_within(&locker, "k", Duration::from_secs(5)).await,
            "the queued release was lost with its runtime"
        );
    });
}

/// Issue 11 item 3: a guard dropped at the end of a runtime (the end of
/// `main` or of a test) is released when the program calls `flush` before
/// it ends, on a current-thread and on a multi-thread runtime.
#[test]
fn flush_at_the_end_of_a_runtime_leaves_the_lock_free() {
    for (flavor, rt) in [
        ("current-thread", current_thread()),
        ("multi-thread", multi_thread()),
    ] {
        let locker = Locker::new(MemoryBackend::new());
        rt.block_on(async {
            let _guard = locker.try_lock("report").await.unwrap().expect("free");
            let _other = locker.lock("other").await.unwrap();
            // both guards are dropped here, at the end of the "program"
        });
        rt.block_on(locker.flush());
        drop(rt);
        let info = futures::executor::block_on(locker.inspect("report")).unwrap();
        assert!(!info.held, "{flavor}: still held after flush: {info:?}");
        let info = futures::executor::block_on(locker.inspect("other")).unwrap();
        assert!(!info.held, "{flavor}: still held after flush: {info:?}");
    }
}

/// `flush` also runs releases submitted outside any runtime (a guard
/// dropped after `block_on` returned).
#[test]
fn flush_runs_releases_dropped_outside_a_runtime() {
    let locker = Locker::new(MemoryBackend::new());
    let rt = current_thread();
    let guard = rt.block_on(locker.try_lock("k")).unwrap().expect("free");
    drop(guard); // no runtime here
    rt.block_on(locker.flush());
    let info = futures::executor::block_on(locker.inspect("k")).unwrap();
    assert!(!info.held, "{info:?}");
}
