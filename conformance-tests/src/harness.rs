//! What a backend provides to run the suite.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use distlock::{LockBackend, LockKey};

/// A boxed error, as harness hooks and the stress drivers return it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connects the suite to one backend. Implement it in your backend's tests
/// and name the type in [`suite!`](crate::suite).
///
/// Every case builds its own tokio runtime (see [`Harness::PAUSED_CLOCK`]),
/// then calls [`Harness::setup`] inside it, so setup may connect
/// asynchronously. Hooks return errors instead of panicking; the suite turns
/// an error into a test failure that names the hook.
///
/// **Cleanup.** Each case drops its harness value when it ends (also when
/// it fails), inside the case's runtime: remove what [`Harness::setup`]
/// created (a scratch database file, a schema, a container) in a `Drop`
/// implementation, or a full run leaves one per case behind.
#[async_trait]
pub trait Harness: Sized + Send + Sync + 'static {
    /// The backend under test.
    type Backend: LockBackend + Clone;

    /// Run each case on a current-thread runtime with tokio's clock paused
    /// (auto-advancing), instead of a two-worker runtime in real time.
    ///
    /// Only for backends whose expiry follows tokio's clock: every case
    /// fails if this is set and the backend's
    /// [`Capabilities::tokio_clock`](distlock::Capabilities) is not.
    const PAUSED_CLOCK: bool = false;

    /// Builds the harness, inside the runtime of the case about to run
    /// (once per case). Connect to the store, read its address from the
    /// environment, start a test server.
    ///
    /// Return [`SetupError::skip`] to skip the case, with a reason printed
    /// to the terminal, when the store is deliberately not there (for
    /// example no `DATABASE_URL` on a developer machine): the author's
    /// choice, and CI can forbid it with `DISTLOCK_CONFORMANCE_NO_SKIP=1`.
    /// Any other error fails the case with its message.
    async fn setup() -> Result<Self, SetupError>;

    /// A new, independent client of the one shared store (its own
    /// connections). Locks taken through one client must be visible to
    /// every other.
    async fn client(&self) -> Result<Self::Backend, BoxError>;

    /// Test hook: ends the current lease on `key` behind its holder's back
    /// (as if it had expired, or an operator had deleted it), without
    /// notifying anyone. Doing nothing when nobody holds `key` is fine.
    async fn expire_now(&self, client: &Self::Backend, key: &LockKey) -> Result<(), BoxError>;

    /// How many waiters `client` has registered for release notifications
    /// (for a backend with a [`ReleaseHub`](distlock::ReleaseHub):
    /// [`ReleaseHub::watcher_count`](distlock::ReleaseHub::watcher_count)).
    /// Used to check that cancelled waiters leave nothing behind.
    ///
    /// Required when the backend claims
    /// [`release_notify`](distlock::Capabilities::release_notify): the case
    /// that needs it fails, not skips, when it returns `None`.
    fn registered_waiters(&self, client: &Self::Backend) -> Option<usize> {
        let _ = client;
        None
    }

    /// Optional test hook: a client whose store cannot be reached (for a
    /// network store, a client pointed at a closed port; for an in-process
    /// store, a fault switch). The suite checks that every call through it
    /// fails promptly with a transient error kind. `Ok(None)` (the default)
    /// skips that case, visibly.
    async fn unreachable_client(&self) -> Result<Option<Self::Backend>, BoxError> {
        Ok(None)
    }

    /// Slack allowed on top of every timing bound the suite checks, for
    /// network round trips and a busy machine. Default 250 ms.
    fn timing_slack(&self) -> Duration {
        Duration::from_millis(250)
    }
}

/// Why [`Harness::setup`] did not produce a harness.
#[derive(Debug)]
pub enum SetupError {
    /// Skip the case (printed to the terminal with this reason).
    Skip(String),
    /// Setup failed: the case fails with this error.
    Failed(BoxError),
}

impl SetupError {
    /// Skip the case, for `reason` (say what is missing and how to run it).
    pub fn skip(reason: impl Into<String>) -> Self {
        SetupError::Skip(reason.into())
    }

    /// Setup failed with `error`.
    pub fn failed(error: impl Into<BoxError>) -> Self {
        SetupError::Failed(error.into())
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for SetupError {
    fn from(error: E) -> Self {
        SetupError::Failed(Box::new(error))
    }
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupError::Skip(reason) => write!(f, "skipped: {reason}"),
            SetupError::Failed(error) => write!(f, "harness setup failed: {error}"),
        }
    }
}
