//! Helpers shared by the scenarios.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::Harness;

/// Builds the runtime one test runs on: current-thread with a paused clock
/// for [`Harness::paused_clock`] backends, otherwise multi-threaded.
pub fn runtime<H: Harness>(harness: &H) -> tokio::runtime::Runtime {
    let mut builder = if harness.paused_clock() {
        let mut b = tokio::runtime::Builder::new_current_thread();
        b.start_paused(true);
        b
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    };
    builder
        .enable_all()
        .build()
        .expect("building a tokio runtime")
}

/// A lock name no other case, test binary or run uses.
pub fn unique_name(case: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(
        "conformance:{case}:{}:{n}:{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}
