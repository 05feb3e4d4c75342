//! The contract between [`Locker`](crate::Locker) and a storage backend.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::BackendError;
use crate::key::LockKey;
use crate::notify::ReleaseWatch;
use crate::token::LockToken;

/// A store that every machine can reach and that can hold leases.
///
/// Implement this to add a backend; then run the conformance suite
/// (`distlock-conformance`) against it. Every method must be safe to call
/// concurrently, and each should finish within a bounded time (backends own
/// their network timeouts). The trait is object safe: `Arc<dyn LockBackend>`
/// works.
///
/// The rules, checked by the conformance suite:
/// - A lease is identified by its key and its [`LockToken`]. Only the holder of
///   the token may extend or release it; everything else reports "not held"
///   and changes nothing.
/// - A lease expires `ttl` after it was taken or last extended, by the
///   backend's clock.
/// - With [`Capabilities::fencing`], every successful acquisition of a key
///   returns a fencing token strictly greater than every earlier one for that
///   key, across expiry, takeover and release. Release never resets it.
///   Fencing tokens are at most [`MAX_FENCE`] (`i64::MAX`).
/// - Keys are at most [`MAX_ENCODED_KEY_LEN`](crate::MAX_ENCODED_KEY_LEN)
///   bytes encoded; a store with smaller limits keys by
///   [`LockKey::digest`].
///
/// The backend guide in the `distlock-conformance` crate documentation
/// (module `guide`) shows cleanup-safe fencing designs for SQL and
/// key-value stores, the error-kind mapping and the test harness.
#[async_trait]
pub trait LockBackend: Send + Sync + 'static {
    /// What this backend offers.
    fn capabilities(&self) -> Capabilities;

    /// Takes `key` for `token` for `ttl` if nobody holds it.
    ///
    /// A key held by anyone, including the same process, is
    /// [`Acquire::Held`], not an error. `owner` is a non-secret label shown
    /// by [`inspect`](LockBackend::inspect).
    async fn try_acquire(
        &self,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
    ) -> Result<Acquire, BackendError>;

    /// Sets the remaining lease of `key` to `ttl` from now, only if `token`
    /// still holds it. Retrying an extend is harmless.
    async fn extend(
        &self,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
    ) -> Result<Extend, BackendError>;

    /// Frees `key`, only if `token` still holds it. Never frees a lock that
    /// another token holds. Retrying a release is harmless.
    async fn release(&self, key: &LockKey, token: &LockToken) -> Result<Release, BackendError>;

    /// Reads the state of `key` for debugging and tests. Never returns the
    /// holder's token.
    async fn inspect(&self, key: &LockKey) -> Result<LockInfo, BackendError>;

    /// Registers interest in the next release of `key`.
    ///
    /// Backends with [`Capabilities::release_notify`] return a
    /// [`ReleaseWatch`] from their [`ReleaseHub`](crate::ReleaseHub); the
    /// registration must be in place when this returns, so a release that
    /// happens afterwards is not missed. The default returns `None`, and
    /// waiters then poll with backoff.
    async fn watch(&self, key: &LockKey) -> Result<Option<ReleaseWatch>, BackendError> {
        let _ = key;
        Ok(None)
    }
}

/// The highest fencing token a backend may hand out: `i64::MAX`
/// (9,223,372,036,854,775,807).
///
/// Fencing tokens are `u64` in the API, but a backend must keep them at or
/// below this bound, so that every token fits a signed 64-bit column (SQL
/// `bigint`), a JSON number parsed as `i64`, and a Lua/Redis integer. The
/// conformance suite checks it. A counter that starts at 1 never gets near
/// it; one seeded from a clock in microseconds (as `distlock-redis` does)
/// reaches it in about 290,000 years. Protected resources can store a token
/// in a `bigint` with a plain cast (`fence as i64`), and compare as numbers.
pub const MAX_FENCE: u64 = i64::MAX as u64;

/// The outcome of [`LockBackend::try_acquire`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquire {
    /// The lease is ours.
    Acquired {
        /// The fencing token of this acquisition (0 if the backend has no
        /// [`Capabilities::fencing`]); at most [`MAX_FENCE`].
        fence: u64,
    },
    /// Someone holds the key.
    Held {
        /// The holder's remaining lease, if the backend can tell cheaply.
        ///
        /// `None` is always allowed: a store where the remaining time costs
        /// another query (an SQL upsert that returns no row when it did not
        /// take the lock) may leave it out. The [`Locker`](crate::Locker)
        /// uses it only to avoid sleeping past the holder's lease while
        /// waiting; without it, waiters follow their backoff.
        remaining: Option<Duration>,
    },
}

/// The outcome of [`LockBackend::extend`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extend {
    /// The lease now ends `ttl` from the moment of the call.
    Extended,
    /// The token no longer holds the key (expired, released, or taken over).
    NotHeld,
}

/// The outcome of a release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// The lease was ours and is gone now.
    Released,
    /// The lease was no longer ours (expired or taken over); nothing changed.
    NotHeld,
}

/// The state of a key as [`LockBackend::inspect`] sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockInfo {
    /// Whether somebody holds the key now.
    pub held: bool,
    /// The holder's owner label, if held and the holder gave one.
    pub owner: Option<String>,
    /// The holder's remaining lease, if held.
    pub remaining: Option<Duration>,
    /// The fencing token of the latest acquisition of this key, if the
    /// backend still knows it.
    pub last_fence: Option<u64>,
}

impl LockInfo {
    /// A free key, with the last fencing token if known.
    pub fn free(last_fence: Option<u64>) -> Self {
        Self {
            last_fence,
            ..Self::default()
        }
    }

    /// A held key.
    pub fn held(
        owner: Option<String>,
        remaining: Option<Duration>,
        last_fence: Option<u64>,
    ) -> Self {
        Self {
            held: true,
            owner,
            remaining,
            last_fence,
        }
    }
}

/// What a backend offers. Applications can refuse a backend that lacks
/// something they need; the conformance suite runs the cases each capability
/// enables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Acquisitions return strictly increasing fencing tokens per key.
    pub fencing: bool,
    /// Waiters are woken by releases ([`LockBackend::watch`]) instead of
    /// only polling.
    pub release_notify: bool,
    /// Locks are visible to other processes and machines (false for an
    /// in-process store).
    pub distributed: bool,
    /// Expiry follows tokio's clock, so `tokio::time::pause()` and
    /// `advance()` drive it (true for an in-memory store).
    pub tokio_clock: bool,
}

impl Capabilities {
    /// No capabilities; add them with the `with_*` methods.
    pub const fn none() -> Self {
        Self {
            fencing: false,
            release_notify: false,
            distributed: false,
            tokio_clock: false,
        }
    }

    /// Sets [`fencing`](Capabilities::fencing).
    pub const fn with_fencing(mut self, on: bool) -> Self {
        self.fencing = on;
        self
    }

    /// Sets [`release_notify`](Capabilities::release_notify).
    pub const fn with_release_notify(mut self, on: bool) -> Self {
        self.release_notify = on;
        self
    }

    /// Sets [`distributed`](Capabilities::distributed).
    pub const fn with_distributed(mut self, on: bool) -> Self {
        self.distributed = on;
        self
    }

    /// Sets [`tokio_clock`](Capabilities::tokio_clock).
    pub const fn with_tokio_clock(mut self, on: bool) -> Self {
        self.tokio_clock = on;
        self
    }
}
