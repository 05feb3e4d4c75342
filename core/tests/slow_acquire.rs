//! An acquisition answered only after its lease could have run out is not
//! handed to the caller as a guard: the lock is given back and the caller
//! gets a typed timeout error.

mod support;

use std::time::Duration;

use distlock::{BackendErrorKind, LockError, LockOptions, Locker};
use distlock_memory::MemoryBackend;
use support::Faulty;

#[tokio::test(start_paused = true)]
async fn an_acquire_answered_after_the_lease_ran_out_is_given_back() {
    let store = MemoryBackend::new();
    let ttl = Duration::from_secs(1);
    let opts = LockOptions::default().with_ttl(ttl);
    // The answer arrives after the TTL minus the drift allowance.
    let slow = Locker::new(Faulty {
        inner: store.clone(),
        acquire_delay: Duration::from_millis(995),
        ..Faulty::default()
    });
    let observer = Locker::new(store.clone());

    let err = slow
        .try_lock_with("report", |_| opts.clone())
        .await
        .unwrap_err();
    match &err {
        LockError::Backend(e) => {
            assert_eq!(e.kind(), BackendErrorKind::Timeout, "{err}");
            assert!(e.is_transient());
            assert!(err.to_string().contains("given back"), "{err}");
        }
        other => panic!("expected a backend timeout, got {other:?}"),
    }
    // Given back at once (the lease itself still had ~5 ms to run).
    tokio::time::sleep(Duration::from_millis(1)).await;
    let info = observer.inspect("report").await.unwrap();
    assert!(
        !info.held,
        "the late acquisition was not released: {info:?}"
    );

    // A slow answer that still leaves some lease is a normal guard.
    let quick_enough = Locker::new(Faulty {
        inner: store.clone(),
        acquire_delay: Duration::from_millis(900),
        ..Faulty::default()
    });
    let guard = quick_enough
        .try_lock_with("report", |_| opts.clone())
        .await
        .unwrap()
        .expect("free");
    assert!(guard.is_valid());
    guard.release().await.unwrap();
}
