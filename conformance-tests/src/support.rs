//! Helpers shared by the scenarios.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use distlock::{LockBackend, LockKey, LockOptions, Locker};
use tokio::time::Instant;

pub(crate) use crate::runner::{client, skip, skipped_for};
use crate::Harness;

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

/// The short TTL most timing cases use: at least 500 ms and at least twice
/// the harness's [`timing_slack`](Harness::timing_slack), so that "still
/// held shortly before expiry" and "free shortly after" can both be checked.
pub fn short_ttl<H: Harness>(h: &H) -> Duration {
    Duration::from_millis(500).max(h.timing_slack() * 2)
}

/// The TTL of the renewal cases: at least 300 ms and at least three slacks, so
/// that a renewal every third of it survives a busy machine, while three
/// TTLs still pass quickly in real time.
pub fn renew_ttl<H: Harness>(h: &H) -> Duration {
    // Renewal runs every TTL/3; a TTL of three slacks lets the renewal task
    // stall for two slacks (a loaded CI machine) before the lease is lost.
    Duration::from_millis(300).max(h.timing_slack() * 3)
}

/// How long a dropped guard may take to be released in the background: one
/// second plus the slack (the documented bound is "one round trip later").
pub fn drop_bound<H: Harness>(h: &H) -> Duration {
    Duration::from_secs(1) + h.timing_slack()
}

/// A locker over a new client of the harness.
pub(crate) async fn locker<H: Harness>(h: &H) -> Locker<H::Backend> {
    Locker::new(client(h).await)
}

/// [`Harness::expire_now`]; panics with the hook's error.
pub(crate) async fn expire<H: Harness>(h: &H, client: &H::Backend, key: &LockKey) {
    h.expire_now(client, key)
        .await
        .unwrap_or_else(|e| panic!("Harness::expire_now failed: {e}"));
}

/// Options with the given TTL and otherwise defaults.
pub(crate) fn ttl(ttl: Duration) -> LockOptions {
    LockOptions::default().with_ttl(ttl)
}

/// Whether `name` is held, by the backend's own account.
pub(crate) async fn is_held<B: LockBackend>(l: &Locker<B>, name: &str) -> bool {
    l.inspect(name).await.expect("inspect").held
}

/// Polls `inspect` until `name` is free, for at most `limit` after `from`.
/// Returns how long after `from` it was first seen free, or `None` if it
/// stayed held.
pub(crate) async fn free_within<B: LockBackend>(
    l: &Locker<B>,
    name: &str,
    from: Instant,
    limit: Duration,
) -> Option<Duration> {
    loop {
        if !is_held(l, name).await {
            return Some(from.elapsed());
        }
        if from.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Asserts that a timing observation is no later than `bound`.
#[track_caller]
pub(crate) fn assert_within(what: &str, took: Duration, bound: Duration) {
    assert!(
        took <= bound,
        "{what}: took {took:?}, more than the bound {bound:?}"
    );
}
