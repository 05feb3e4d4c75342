//! Issue 10, kind 2: the caller's wait deadline bounds the whole `lock`
//! call, whatever a backend call in flight is doing. Each bounded case
//! failed before the fix (the call returned when the stalled backend call
//! did, a second or more late).

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use distlock::{BackendErrorKind, LockError, LockOptions, Locker};
use distlock_memory::MemoryBackend;
use support::Faulty;
use tokio::time::Instant;

fn wait(w: Duration) -> LockOptions {
    LockOptions::default()
        .with_ttl(Duration::from_secs(10))
        .with_wait_timeout(w)
}

const BUDGET: Duration = Duration::from_millis(300);

async fn timed_lock(locker: &Locker<Faulty>, opts: &LockOptions) -> (Duration, LockError) {
    let start = Instant::now();
    let err = locker.lock_with("k", |_| opts.clone()).await.unwrap_err();
    (start.elapsed(), err)
}

/// Holds "k" through another client of `store`, then has a waiter over
/// `faulty` (a client of the same store) wait for it with [`BUDGET`]: the
/// call must end with `TimedOut` exactly at the deadline.
async fn waits_out_the_budget(store: MemoryBackend, faulty: Faulty) {
    let _held = Locker::new(store.clone())
        .try_lock("k")
        .await
        .unwrap()
        .unwrap();
    let w = Locker::new(Faulty {
        inner: store,
        ..faulty
    });
    let (took, err) = timed_lock(&w, &wait(BUDGET)).await;
    assert!(matches!(err, LockError::TimedOut { .. }), "{err:?}");
    assert_eq!(took, BUDGET, "the call ended {took:?} after it began");
}

/// The input: the lock is held elsewhere and every acquire attempt
/// stalls for 1 s (as during `DEBUG SLEEP 1`).
#[tokio::test(start_paused = true)]
async fn a_stalled_attempt_ends_at_the_wait_deadline() {
    let faulty = Faulty {
        acquire_stall: Duration::from_secs(1),
        ..Faulty::default()
    };
    waits_out_the_budget(MemoryBackend::new(), faulty).await;
}

/// Both rules at the deadline (merge of issues 10 and 13): a waiter that
/// saw a transient error and whose next attempt is then cut off at the
/// deadline answers with that error (the store's trouble), not `TimedOut`.
/// Without an earlier error the cut-off is `TimedOut` (above).
#[tokio::test(start_paused = true)]
async fn a_cut_off_after_a_transient_error_returns_that_error() {
    let faulty = Faulty {
        acquire_stall: Duration::from_secs(1),
        ..Faulty::default()
    };
    faulty.fail_acquires.store(1, Ordering::SeqCst);
    let acquires = faulty.acquires.clone();
    let w = Locker::new(faulty);
    let opts = wait(BUDGET).with_retry(Duration::from_millis(1), Duration::from_millis(1));
    let (took, err) = timed_lock(&w, &opts).await;
    assert_eq!(
        err.backend_error().map(|e| e.kind()),
        Some(BackendErrorKind::Unavailable),
        "{err:?}"
    );
    // The second attempt began and was cut off at the deadline.
    assert_eq!(acquires.load(Ordering::SeqCst), 2);
    assert_eq!(took, BUDGET, "the call ended {took:?} after it began");
}

/// The subscription a waiter makes before it sleeps stalls.
#[tokio::test(start_paused = true)]
async fn a_stalled_subscription_ends_at_the_wait_deadline() {
    let faulty = Faulty {
        watch_stall: Duration::from_millis(1500),
        ..Faulty::default()
    };
    waits_out_the_budget(MemoryBackend::new(), faulty).await;
}

/// An acquisition answered after the deadline is given back: the caller got
/// `TimedOut`, so nobody holds the lock.
#[tokio::test(start_paused = true)]
async fn an_acquisition_cut_at_the_deadline_is_given_back() {
    let store = MemoryBackend::new();
    let w = Locker::new(Faulty {
        inner: store.clone(),
        acquire_delay: Duration::from_secs(1),
        ..Faulty::default()
    });
    let (took, err) = timed_lock(&w, &wait(BUDGET)).await;
    assert!(matches!(err, LockError::TimedOut { .. }), "{err:?}");
    assert_eq!(took, BUDGET);
    w.flush().await;
    let info = Locker::new(store).inspect("k").await.unwrap();
    assert!(
        !info.held,
        "the acquisition in flight was not given back: {info:?}"
    );
}

/// A zero wait still makes its one attempt in full (bounded by the
/// backend's own timeouts), and gets the lock if it is free.
#[tokio::test(start_paused = true)]
async fn a_zero_wait_makes_one_whole_attempt() {
    let store = MemoryBackend::new();
    let w = Locker::new(Faulty {
        inner: store.clone(),
        acquire_stall: Duration::from_secs(1),
        ..Faulty::default()
    });
    let start = Instant::now();
    let g = w
        .lock_with("k", |_| wait(Duration::ZERO).clone())
        .await
        .expect("free");
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    let (_, err) = timed_lock(&w, &wait(Duration::ZERO)).await;
    assert!(matches!(err, LockError::TimedOut { .. }), "held: {err:?}");
    g.release().await.unwrap();
}

/// `with_lock` is bounded the same way.
#[tokio::test(start_paused = true)]
async fn with_lock_ends_at_the_wait_deadline() {
    let store = MemoryBackend::new();
    let _held = Locker::new(store.clone())
        .try_lock("k")
        .await
        .unwrap()
        .unwrap();
    let w = Locker::new(Faulty {
        inner: store.clone(),
        acquire_stall: Duration::from_secs(3),
        ..Faulty::default()
    });
    let start = Instant::now();
    let result = w.with_lock_with("k", |_| wait(BUDGET), |_| async {}).await;
    assert!(
        matches!(result, Err(LockError::TimedOut { .. })),
        "{result:?}"
    );
    assert_eq!(start.elapsed(), BUDGET);
}
