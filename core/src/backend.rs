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
/// their network timeouts). The trait is object safe, and implemented for
/// `Arc<T>` and `Box<T>` with every method forwarded, so a backend chosen at
/// run time works: `Locker<Arc<dyn LockBackend>>`. A wrapper of your own
/// must forward [`watch`](LockBackend::watch) too, or its waiters lose
/// release notifications and fall back to polling.
///
/// The rules, checked by the conformance suite:
/// - A lease is identified by its key and its [`LockToken`]. Only the holder of
///   the token may extend or release it; everything else reports "not held"
///   and changes no lease. (One allowance: a release that finds `token` not
///   holding the key may remember `token` for a while and refuse its later
///   acquires, with an error [marked](BackendError::with_needs_new_token)
///   to need a new token, as [`give_back`](LockBackend::give_back) must: a
///   networked backend cannot tell a stray release from the give-back of an
///   acquire still on its way. The Redis backend does; the `Locker` never
///   reuses a token after releasing it.)
/// - A lease expires `ttl` after it was taken or last extended, by the
///   backend's clock. TTLs (and [`Waiter::lease`]) from 1 ms to
///   [`MAX_TTL`](crate::MAX_TTL) must work; a backend may refuse others with
///   a `Config` error (the `Locker` never sends them).
/// - With [`Capabilities::fencing`], every successful acquisition of a key
///   returns a fencing token strictly greater than every earlier one for that
///   key, across expiry, takeover and release. Release never resets it.
///   Fencing tokens are at most [`MAX_FENCE`] (`i64::MAX`): once a key's
///   counter is there, its acquisitions fail (an error, never a smaller or
///   repeated token). A store with one counter for every key (as
///   `distlock-memory`) then fails them for every key.
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
    ///
    /// The one exception is `token` itself: a key that `token` already
    /// holds (the same acquire sent again after its answer was lost, or a
    /// lock that a line of waiters handed over to `token`) answers
    /// [`Acquire::Acquired`] with that hold's fencing token (no new one is
    /// drawn; a [`Quorum`](crate::Quorum) may answer a higher one, when a
    /// member that answered the first call late counts now), and renews
    /// the lease to `ttl` from now (never shortening a longer one) and the
    /// label to `owner`: the caller counts a lease of `ttl` from its send
    /// time, so a shorter one left on the backend would end before the
    /// caller believes it does. Checked by the conformance case
    /// `acquire_by_the_holding_token_renews_its_lease`.
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

    /// Gives `token` back after an acquisition call whose outcome is
    /// unknown: cancelled in flight, timed out, or followed by further calls
    /// with a new token. As [`release`](LockBackend::release), and
    /// additionally **no call with `token` that reaches the store later may
    /// acquire `key` or join its line**: a copy of a call delayed in the
    /// network (a timed-out request still in a socket buffer) must not take
    /// a lock nobody will ever release, whether or not the key was held by
    /// `token` when this ran.
    ///
    /// The [`Locker`](crate::Locker) calls it for every token of an
    /// acquisition that ended without a guard, and for the token a waiting
    /// `lock()` stops using after a call timed out (it goes on with a new
    /// one). A guard's release, whose token saw every call answered, uses
    /// [`release`](LockBackend::release).
    ///
    /// The default calls [`release`](LockBackend::release): right for a
    /// store whose calls act at once and cannot arrive late (an in-process
    /// map behind a lock, as `distlock-memory`). A backend whose calls can
    /// still act after the caller gave up on them should remember a
    /// given-back token for longer than any call can be delayed: a
    /// networked store, and also an embedded one driven through
    /// `spawn_blocking` or a thread pool (a cancelled call keeps running
    /// there and may land after the give-back). The Redis backend leaves a
    /// tombstone for 60 s, which its acquire scripts honour; an acquire
    /// refused that way is best answered with an error marked
    /// [`needs_new_token`](BackendError::needs_new_token).
    async fn give_back(&self, key: &LockKey, token: &LockToken) -> Result<Release, BackendError> {
        self.release(key, token).await
    }

    /// Reads the state of `key` for debugging and tests. Never returns the
    /// holder's token.
    async fn inspect(&self, key: &LockKey) -> Result<LockInfo, BackendError>;

    /// Registers interest in the next release of `key`.
    ///
    /// Backends with [`Capabilities::release_notify`] return a
    /// [`ReleaseWatch`] from their [`ReleaseHub`](crate::ReleaseHub); the
    /// registration must be in place when this returns, so a release that
    /// happens afterwards is not missed. Every release of `key` through any
    /// client of the same store (another process, another backend value in
    /// this process) must wake it, not only this value's own releases:
    /// the conformance cases release through a second client. The default
    /// returns `None`, and waiters then poll with backoff.
    async fn watch(&self, key: &LockKey) -> Result<Option<ReleaseWatch>, BackendError> {
        let _ = key;
        Ok(None)
    }

    /// Raises the fencing counter of `key` to at least `at_least`, only
    /// while `token` holds `key` (optional; for [`Quorum`](crate::Quorum)).
    ///
    /// A quorum takes one lock on several independent backends; each hands
    /// out its own fencing token. The quorum gives the application the
    /// highest of them and raises the others to it, so that the next
    /// acquisition (whose majority shares at least one member with this
    /// one) sees a higher number on at least one member. The rules, checked
    /// by the conformance case `raise_fence_lifts_the_counter`:
    /// - Only while `token` holds `key`: otherwise [`RaiseFence::NotHeld`]
    ///   and nothing changes. (So a raise can never land after the next
    ///   holder's acquisition on this backend.)
    /// - Afterwards the hold's fencing token is `max(its token, at_least)`:
    ///   [`inspect`](LockBackend::inspect) reports it as `last_fence`, the
    ///   call returns it in [`RaiseFence::Raised`], and every later
    ///   acquisition of `key` returns a strictly greater one. The counter
    ///   never goes down.
    /// - `at_least` above [`MAX_FENCE`] is refused with a `Config` error,
    ///   whether or not `token` holds `key`.
    /// - Retrying is harmless.
    ///
    /// Backends that implement it set [`Capabilities::raise_fence`]. The
    /// default answers [`RaiseFence::Unsupported`] and changes nothing. A
    /// wrapper that forwards [`capabilities`](LockBackend::capabilities) to
    /// another backend must forward this method (and
    /// [`identity`](LockBackend::identity)) too.
    async fn raise_fence(
        &self,
        key: &LockKey,
        token: &LockToken,
        at_least: u64,
    ) -> Result<RaiseFence, BackendError> {
        let _ = (key, token, at_least);
        Ok(RaiseFence::Unsupported)
    }

    /// A stable name of the server this backend talks to (for example
    /// `redis://host:6379`), or `None` if it cannot tell (the default).
    ///
    /// [`Quorum::new`](crate::Quorum::new) refuses two members with the
    /// same identity: one server counted twice would let a single failure
    /// take out two votes. Return the same string for every client of one
    /// server, and never include secrets (passwords, tokens).
    fn identity(&self) -> Option<String> {
        None
    }

    /// [`try_acquire`](LockBackend::try_acquire) for a `lock()` call that
    /// keeps waiting, on a backend that keeps a line of waiters
    /// ([`Capabilities::waiter_queue`]).
    ///
    /// The [`Locker`](crate::Locker) sends the same `token` and `waiter` on
    /// every call of one waiting `lock()` and makes at most one such call
    /// per key at a time in a process. The rules, checked by the
    /// conformance case `queued_waiters_make_one_attempt_per_release`:
    /// - `key` held by `token` (handed over to this waiter by a release, or
    ///   a repeated call): the lease is now `ttl` from now, the waiter leaves
    ///   the line, and the answer is [`Acquire::Acquired`] with the fencing
    ///   token of this hold (the handover already counted it; a claim does
    ///   not take a new one).
    /// - held by another token: join the line at its tail (or, already in
    ///   line, keep the place) for `waiter.lease`; [`Acquire::Held`].
    /// - free, and `waiter` first among the live waiters (or nobody in
    ///   line): take it as `try_acquire` would and leave the line.
    /// - free, another live waiter first: hand the key to that waiter (see
    ///   below), join the line, [`Acquire::Held`].
    ///
    /// **Handover.** A release (of a held key) with a live waiter in line
    /// does not free the key: it sets it to the first live waiter's token
    /// for a short claim window (the waiter's `lease`), counts a new fencing
    /// token, and wakes only that waiter's [`watch_queued`]. The waiter then
    /// claims it with this call. A waiter whose place lapses (no call within
    /// its `lease`) leaves the line; a lapsed handover frees the key.
    /// [`release`](LockBackend::release) of a `token` that does not hold the
    /// key removes it from the line (how a cancelled waiter leaves).
    ///
    /// Retrying is harmless. The default (for backends without a line)
    /// calls [`try_acquire`](LockBackend::try_acquire).
    ///
    /// [`watch_queued`]: LockBackend::watch_queued
    async fn try_acquire_queued(
        &self,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
        waiter: &Waiter,
    ) -> Result<Acquire, BackendError> {
        let _ = waiter;
        self.try_acquire(key, token, ttl, owner).await
    }

    /// [`watch`](LockBackend::watch) for a waiter in line: woken when `key`
    /// is handed over to `waiter`, on a release of `key` that handed it to
    /// nobody, and after the backend may have missed events (a reconnect).
    /// The registration must be in place when this returns. The default
    /// calls [`watch`](LockBackend::watch).
    async fn watch_queued(
        &self,
        key: &LockKey,
        waiter: &Waiter,
    ) -> Result<Option<ReleaseWatch>, BackendError> {
        let _ = waiter;
        self.watch(key).await
    }
}

/// How long a place in a backend's line of waiters lasts after the
/// waiter's last call: 500 ms. A waiter that crashed, was cut off or
/// stopped calling is out of line this long after its last call, and a
/// handover to it lapses after as long again.
///
/// The [`Locker`](crate::Locker) calls again at least every third of it,
/// and uses the line only for TTLs of at least this much (a shorter lease
/// would end inside a claim window).
pub const WAITER_LEASE: Duration = Duration::from_millis(500);

/// Names one waiting `lock()` call in a backend's line of waiters
/// ([`LockBackend::try_acquire_queued`]): random and not secret (a backend
/// may publish it to address the waiter's wake-up).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct WaiterId(u64);

impl WaiterId {
    /// Draws a new random id from the operating system's random source, as
    /// [`LockToken::generate`] does (so forked processes never share one).
    pub fn generate() -> Self {
        let mut bytes = [0u8; 8];
        match getrandom::fill(&mut bytes) {
            Ok(()) => Self(u64::from_le_bytes(bytes)),
            Err(_) => Self(rand::random::<u64>()),
        }
    }

    /// An id from a known value (tests, and backends reading it back).
    pub const fn from_u64(value: u64) -> Self {
        Self(value)
    }

    /// The id as a number.
    pub const fn to_u64(self) -> u64 {
        self.0
    }

    /// The id as 16 lowercase hex digits.
    pub fn as_hex(self) -> String {
        format!("{:016x}", self.0)
    }

    /// Parses [`WaiterId::as_hex`]'s form (exactly 16 hex digits, either
    /// case); `None` for anything else.
    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(hex, 16).ok().map(Self)
    }
}

impl std::fmt::Debug for WaiterId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WaiterId({:016x})", self.0)
    }
}

/// One waiting `lock()` call, as a backend's line of waiters sees it
/// ([`LockBackend::try_acquire_queued`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Waiter {
    /// Which call this is; the same on every call of one `lock()`.
    pub id: WaiterId,
    /// How long the place in line lasts after this call, and how long a
    /// handover to this waiter waits for its claim ([`WAITER_LEASE`]).
    pub lease: Duration,
}

impl Waiter {
    /// A waiter with a place lasting `lease` after each call.
    pub fn new(id: WaiterId, lease: Duration) -> Self {
        Self { id, lease }
    }
}

/// The outcome of [`LockBackend::raise_fence`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RaiseFence {
    /// The hold's fencing token is now `fence` (at least the requested
    /// value); later acquisitions of the key get greater ones.
    Raised {
        /// The hold's fencing token after the raise.
        fence: u64,
    },
    /// The token no longer holds the key; nothing changed.
    NotHeld,
    /// The backend cannot raise fencing counters (the trait's default).
    Unsupported,
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
    /// [`LockBackend::raise_fence`] is implemented, so a
    /// [`Quorum`](crate::Quorum) of such backends keeps fencing tokens
    /// strictly increasing.
    pub raise_fence: bool,
    /// The backend keeps a first-come-first-served line of waiters per key
    /// and hands a released lock to the first of them
    /// ([`LockBackend::try_acquire_queued`]): one acquisition attempt per
    /// release, across processes.
    pub waiter_queue: bool,
}

impl Capabilities {
    /// No capabilities; add them with the `with_*` methods.
    pub const fn none() -> Self {
        Self {
            fencing: false,
            release_notify: false,
            distributed: false,
            tokio_clock: false,
            raise_fence: false,
            waiter_queue: false,
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

    /// Sets [`raise_fence`](Capabilities::raise_fence).
    pub const fn with_raise_fence(mut self, on: bool) -> Self {
        self.raise_fence = on;
        self
    }

    /// Sets [`waiter_queue`](Capabilities::waiter_queue).
    pub const fn with_waiter_queue(mut self, on: bool) -> Self {
        self.waiter_queue = on;
        self
    }
}
