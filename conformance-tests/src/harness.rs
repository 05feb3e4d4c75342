//! What a backend provides to run the suite.

use std::time::Duration;

use async_trait::async_trait;
use distlock::{LockBackend, LockKey};

/// Connects the suite to one backend. Implement it in your backend's tests
/// and pass a value to [`suite!`](crate::suite).
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// The backend under test.
    type Backend: LockBackend + Clone;

    /// A new, independent client of the one shared store (its own
    /// connections), made inside the test's runtime. Locks taken through one
    /// client must be visible to every other.
    async fn client(&self) -> Self::Backend;

    /// Test hook: ends the current lease on `key` behind its holder's back
    /// (as if it had expired, or an operator had deleted it), without
    /// notifying anyone.
    async fn expire_now(&self, client: &Self::Backend, key: &LockKey);

    /// How many waiters `client` has registered for release notifications,
    /// if the backend can tell. Used to check that cancelled waiters leave
    /// nothing behind.
    fn registered_waiters(&self, client: &Self::Backend) -> Option<usize> {
        let _ = client;
        None
    }

    /// Run each case with tokio's clock paused (auto-advancing). Only for
    /// backends whose expiry follows tokio's clock
    /// ([`Capabilities::tokio_clock`](distlock::Capabilities)).
    fn paused_clock(&self) -> bool {
        false
    }

    /// Slack allowed on top of every timing bound the suite checks, for
    /// network round trips and a busy machine. Default 250 ms.
    fn timing_slack(&self) -> Duration {
        Duration::from_millis(250)
    }
}
