//! Edge cases of leases and the background release task, found in review:
//! each test failed before its fix.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use distlock::{LockError, LockOptions, Locker};
use distlock_memory::MemoryBackend;
use support::Faulty;

/// A shorter extend moves the deadline earlier: a task already awaiting
/// `lost()` must fire by the new deadline, not sleep until the old one.
#[tokio::test(start_paused = true)]
async fn lost_fires_by_a_deadline_moved_earlier() {
    let locker = Locker::new(MemoryBackend::new());
    let opts = LockOptions::default().with_ttl(Duration::from_secs(30));
    let mut guard = locker
        .try_lock_with("s", |_| opts.clone())
        .await
        .unwrap()
        .unwrap();
    let lease = guard.lease();
    let waiter = tokio::spawn(async move { lease.lost().await });
    tokio::task::yield_now().await;
    guard.extend(Duration::from_millis(100)).await.unwrap();
    let new_deadline = guard.valid_until();
    tokio::time::sleep_until(new_deadline + Duration::from_millis(1)).await;
    tokio::task::yield_now().await;
    assert!(
        waiter.is_finished(),
        "lost() had not fired 1 ms after the moved deadline"
    );
    assert!(!guard.is_valid());
    // And the backend agrees: the lock is free for someone else soon after.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(locker.try_lock("s").await.unwrap().is_some());
}

/// A `Locker` used on a second runtime after the first shut down (a static
/// locker across `#[tokio::test]`s, a runtime per call) still releases
/// dropped guards in the background.
#[test]
fn dropped_guards_are_released_on_a_later_runtime() {
    let locker = Locker::new(MemoryBackend::new());
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    first.block_on(async {
        drop(locker.try_lock("a").await.unwrap().unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(locker.try_lock("a").await.unwrap().is_some());
    });
    drop(first);
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    second.block_on(async {
        drop(locker.try_lock("b").await.unwrap().unwrap());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            locker.try_lock("b").await.unwrap().is_some(),
            "the dropped guard was never released"
        );
    });
}

/// `auto_renew` needs a runtime for its renewal task: outside one the call
/// is refused before the backend is asked, so no lock is left without a
/// guard.
#[test]
fn auto_renew_outside_a_runtime_is_refused_and_takes_nothing() {
    let locker = Locker::new(MemoryBackend::new());
    let opts = LockOptions::default().with_auto_renew(true);
    let result = futures::executor::block_on(locker.try_lock_with("x", |_| opts.clone()));
    assert!(
        matches!(result, Err(LockError::InvalidOptions(ref why)) if why.contains("runtime")),
        "{result:?}"
    );
    let info = futures::executor::block_on(locker.inspect("x")).unwrap();
    assert!(!info.held, "{info:?}");
    // Without renewal, no runtime is needed for one attempt.
    let plain = futures::executor::block_on(locker.try_lock("x")).unwrap();
    assert!(plain.is_some());
}

/// The backend becomes unreachable inside `with_lock`: renewal fails, the
/// deadline passes, and the release fails too. The result must say the
/// lease was lost, not `Ok`.
#[tokio::test(start_paused = true)]
async fn with_lock_reports_not_held_when_lost_and_release_fails() {
    let down = Arc::new(AtomicBool::new(false));
    let locker = Locker::new(Faulty {
        down: down.clone(),
        ..Faulty::default()
    });
    let opts = LockOptions::default()
        .with_ttl(Duration::from_secs(3))
        .with_auto_renew(true);
    let result = locker
        .with_lock_with(
            "w",
            |_| opts.clone(),
            |lease| async move {
                down.store(true, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(10)).await;
                lease.is_lost()
            },
        )
        .await;
    assert!(
        matches!(result, Err(LockError::NotHeld { .. })),
        "a lost lease was reported as {result:?}"
    );
}
