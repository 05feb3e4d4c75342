//! Quorum locks over independent backends (the Redlock idea), with fencing
//! tokens that stay strictly increasing.
//!
//! See [`Quorum`].

mod acquire;
mod calls;
mod config;
mod contention;
mod fencing;
mod give_back;
mod holds;
mod ops;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use config::{QuorumConfig, QuorumError, QuorumMember, DEFAULT_MEMBER_TIMEOUT};

use crate::backend::{Acquire, Capabilities, Extend, LockBackend, LockInfo, RaiseFence, Release};
use crate::error::BackendError;
use crate::key::LockKey;
use crate::notify::ReleaseWatch;
use crate::token::LockToken;

/// A lock backend that holds a lock when a **majority** of independent
/// member backends hold it: the quorum (Redlock) scheme, over any mix of
/// backends, with fencing tokens that strictly increase.
///
/// Build it from the members and hand it to a [`Locker`](crate::Locker)
/// like any backend:
///
/// ```
/// use std::time::Duration;
/// use distlock::{Locker, LockOptions, Quorum};
/// use distlock_memory::MemoryBackend; // in production: RedisBackend::from_url(...) per server
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), distlock::LockError> {
/// let members = vec![MemoryBackend::new(), MemoryBackend::new(), MemoryBackend::new()];
/// let locker = Locker::new(Quorum::new(members)?);
///
/// let guard = locker.lock("nightly-report").await?;
/// let fence = guard.fence(); // strictly increasing, whichever majority granted it
/// guard.release().await?;
/// assert!(locker.lock("nightly-report").await?.fence() > fence);
/// # Ok(()) }
/// ```
///
/// # How each operation works
///
/// With `n` members the majority is `n / 2 + 1`. Every operation calls all
/// members at once with the same token; each member call is bounded by the
/// member timeout ([`QuorumConfig::member_timeout`]), so a member that is
/// down, slow or failing counts against the majority but never delays the
/// call past that bound. An operation ends as soon as its outcome is
/// decided; the member calls still in flight then finish in the background
/// (for a successful acquire, a late hold is ours and is covered by every
/// later extend and release; an acquire that fails after its majority, on
/// the fencing token or the validity check, gives late holds back too).
///
/// - [`try_acquire`](LockBackend::try_acquire): acquired when a majority
///   acquired **and** the time spent leaves a positive validity (TTL minus
///   the elapsed time minus the drift allowance of
///   [`LockOptions::drift`](crate::LockOptions::drift), the rule the
///   guard's deadline follows). Otherwise every partial hold is given back
///   at once (concurrently, each within the member timeout), and the answer
///   is [`Acquire::Held`] if members reported the key held, or an error if
///   a majority of members failed (or no member reported it held), or a
///   [`Timeout`](crate::BackendErrorKind::Timeout) error if the majority
///   came too late. A split vote (racers each got some members, nobody a
///   majority) is retried once, member by member in list order, where the
///   winner of the first member has priority: simultaneous `try_acquire`s
///   still have a winner. While a key is **contended** (a member answered
///   "held" to an acquisition of it that asked every member, within the
///   last second; the gate's own answers do not prolong it, so a stale hold
///   left on the gate alone delays a free majority by a second at most), an
///   acquisition
///   first asks one **gate** member alone (the first member in list order
///   that has not failed an acquisition within the last 10 s): if the gate
///   is held, the answer is [`Acquire::Held`] without calling the others
///   (no partial holds, nothing to give back, no release events that wake
///   other waiters for nothing); if it acquired the gate, it asks the
///   others and retries the ones still held a few times (a few
///   milliseconds) before giving everything back. Processes that list the
///   members in the same order share the gate, so they no longer split the
///   vote; list them in the same order everywhere (another order is safe,
///   only slower under contention). A waiting `lock()` whose members keep a
///   line of waiters asks the gate first for its whole wait (see
///   [`Quorum::try_acquire_queued`]).
///
///   Giving back to members that failed or had not answered yet runs in
///   the background. A `lock()` retries with the same token, and a repeated
///   acquire of that token on a member acquires again, so a give-back
///   landing after the next attempt would delete that attempt's hold. So
///   the next acquisition of the same key and token first waits for those
///   give-backs (each call bounded by the member timeout), and a member
///   whose give-back failed (it may still land, later than any bound) does
///   not count toward the majority of later acquisitions or extensions of
///   that token; it may still be acquired there, but the majority must come
///   from the other members. A fresh token (every `try_lock`) waits for
///   nothing.
///
///   The `remaining` of a [`Acquire::Held`] answer is the shortest a
///   holding member reported, or the gate's alone when only the gate was
///   asked; after an extend that a member missed, that member's lease can
///   be the older, longer one (a waiter then relies on release events and
///   its backoff rather than on that figure).
///
///   A repeated acquire by a token that already holds the key through this
///   quorum (the trait's rule: the same hold, renewed) never gives
///   anything back: [`Acquire::Acquired`] with the hold's fencing token if
///   a majority renewed it, else a transient error with the hold left as
///   it was (found by a differential test: with one member down, the
///   holder's repeat gave its majority back under its guard).
/// - [`extend`](LockBackend::extend): [`Extend::Extended`] if a majority
///   of the members that count for the token (see the give-back rule
///   above) extended, otherwise [`Extend::NotHeld`] (the guard then treats the
///   lease as lost), even when failed members might still hold it; an
///   error only when no member answered at all (an outage the guard
///   retries until its deadline).
/// - [`release`](LockBackend::release): [`Release::Released`] if a
///   majority released and the gate member of contended keys (the first
///   member that has not failed lately) answered, each within the member
///   timeout; same rules otherwise (holds left on failed members expire
///   with their TTL; a failed release is not retried). The slower members'
///   answers finish in the background, so a token released through a
///   quorum is not to be used again for that key (its release could still
///   land on a member after the new acquisition); the `Locker` draws a new
///   token for every acquisition.
/// - [`inspect`](LockBackend::inspect): the majority view (held if a
///   majority holds it; the remaining lease a majority still has; the
///   highest fencing token a majority reached; the owner label most
///   holding members report, "no label" included). Held only when a
///   majority of all members report it held: a member that does not answer
///   counts as not holding, so with members silent a held lock can show
///   as free (an error instead would fail every `inspect` during a
///   minority outage whenever the others disagree). An error if fewer than
///   a majority answered.
/// - [`watch`](LockBackend::watch): release notifications from a
///   **majority** of members (each less than a second after the one
///   before; while the key is contended, the gate member's among them, or
///   else after a quiet second) wake one of the quorum's watchers. A
///   release frees a majority; a single member's release is usually a
///   failed attempt's give-back, and waking on it would start a storm of
///   useless retries while the holder keeps the lock. Members without
///   notifications are polled by the waiter's backoff. A waiting `lock()`
///   over members that keep a line of waiters is woken by the gate's
///   handover instead (see [`Quorum::watch_queued`]).
/// - [`capabilities`](LockBackend::capabilities): what **all** members
///   offer; `fencing` needs every member to have fencing and (with more
///   than one member) [`raise_fence`](LockBackend::raise_fence). A quorum
///   of several members does not itself offer `raise_fence` (quorums do
///   not nest).
///
/// # Fencing tokens
///
/// Each member counts on its own, so the quorum hands out the highest
/// token among the acquiring majority, after raising the other members of
/// that majority to it ([`LockBackend::raise_fence`]). Two majorities
/// always share a member, so the next acquisition sees a greater counter
/// on at least one member and its token is greater, whichever members were
/// down for either acquisition. A quorum whose members cannot raise
/// reports `fencing: false` and hands out 0 (or refuses to be built, with
/// [`QuorumConfig::require_fencing`]).
///
/// # Members
///
/// Use an odd number of members (3 or 5): an even number tolerates no more
/// failures than the odd number below it (4 members need 3, like 5). One
/// member is allowed and then behaves exactly as that member (calls pass
/// straight through, without the member timeout). Every member must be an
/// independent server: [`Quorum::new`] refuses the same instance twice and
/// two members that report the same [`LockBackend::identity`] (the Redis
/// backend reports its server address; the memory backend its store), but
/// it cannot see that two different addresses reach one server (a host
/// name and its IP address, a proxy); that is the caller's duty.
///
/// # What a majority does not buy
///
/// A member that restarts without persistence forgets its holds, so a
/// second client can then win a majority while the first still believes it
/// holds the lock; clock jumps on a member end its leases early. Fencing
/// tokens still let the protected resource reject the stale holder; see
/// the README's safety model.
#[derive(Clone)]
pub struct Quorum {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    members: Vec<Arc<dyn LockBackend>>,
    majority: usize,
    member_timeout: Duration,
    /// Every member has fencing, and raise_fence if more than one.
    fencing: bool,
    capabilities: Capabilities,
    watches: watch::Watches,
    /// Contended keys and failing members: how acquisitions are gated.
    contention: contention::Contention,
    /// Give-backs of partial holds that later attempts of the same token
    /// must wait for or not count on.
    give_backs: give_back::GiveBacks,
    /// The holds this quorum reported, for repeated acquires by their
    /// tokens.
    holds: holds::Holds,
}

impl Inner {
    /// The bound of one member call of acquire or extend with `ttl`: the
    /// member timeout (the validity check after acquiring and the guard's
    /// deadline make long calls safe; a bound tied to the TTL counted live
    /// members as failed on short leases under load).
    fn call_limit(&self, ttl: Duration) -> Duration {
        let _ = ttl;
        self.member_timeout
    }
}

impl Quorum {
    /// A quorum of `members` with the default [`QuorumConfig`].
    ///
    /// # Errors
    /// [`QuorumError::NoMembers`] for an empty list,
    /// [`QuorumError::DuplicateMember`] for the same instance twice or two
    /// members with the same [`LockBackend::identity`].
    pub fn new<I>(members: I) -> Result<Self, QuorumError>
    where
        I: IntoIterator,
        I::Item: QuorumMember,
    {
        Self::with_config(members, QuorumConfig::default())
    }

    /// A quorum of `members` with other settings.
    ///
    /// # Errors
    /// As [`Quorum::new`], plus [`QuorumError::InvalidConfig`] for a zero
    /// member timeout and [`QuorumError::NoFencing`] when
    /// [`QuorumConfig::require_fencing`] is set and a member cannot take
    /// part in fencing.
    pub fn with_config<I>(members: I, config: QuorumConfig) -> Result<Self, QuorumError>
    where
        I: IntoIterator,
        I::Item: QuorumMember,
    {
        let members: Vec<Arc<dyn LockBackend>> =
            members.into_iter().map(QuorumMember::into_member).collect();
        config::validate(&members, &config)?;
        let all = |f: fn(&Capabilities) -> bool| members.iter().all(|m| f(&m.capabilities()));
        let fencing = all(|c| c.fencing) && (members.len() == 1 || all(|c| c.raise_fence));
        let capabilities = match members.as_slice() {
            // Calls pass straight through to the one member.
            [only] => only.capabilities(),
            _ => Capabilities::none()
                .with_fencing(fencing)
                .with_release_notify(all(|c| c.release_notify))
                .with_distributed(all(|c| c.distributed))
                .with_tokio_clock(all(|c| c.tokio_clock))
                // Waiters line up on the gate member (see `acquire`).
                .with_waiter_queue(all(|c| c.waiter_queue)),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                majority: members.len() / 2 + 1,
                contention: contention::Contention::new(members.len()),
                members,
                member_timeout: config.member_timeout,
                fencing,
                capabilities,
                watches: watch::Watches::default(),
                give_backs: give_back::GiveBacks::default(),
                holds: holds::Holds::default(),
            }),
        })
    }

    /// The members, in the order given.
    pub fn members(&self) -> &[Arc<dyn LockBackend>] {
        &self.inner.members
    }

    /// How many members must agree: `members / 2 + 1`.
    pub fn majority(&self) -> usize {
        self.inner.majority
    }

    /// The bound on one member call (see [`QuorumConfig::member_timeout`]).
    pub fn member_timeout(&self) -> Duration {
        self.inner.member_timeout
    }

    /// How many waiters of this quorum are registered for release
    /// notifications (for tests: cancelled waiters must leave none behind).
    pub fn registered_waiters(&self) -> usize {
        self.inner.watches.hub.watcher_count()
    }

    /// The single member, when there is only one (calls pass through).
    fn single(&self) -> Option<&Arc<dyn LockBackend>> {
        match self.inner.members.as_slice() {
            [only] => Some(only),
            _ => None,
        }
    }
}

impl std::fmt::Debug for Quorum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let identities: Vec<String> = self
            .inner
            .members
            .iter()
            .map(|m| m.identity().unwrap_or_else(|| "?".to_owned()))
            .collect();
        f.debug_struct("Quorum")
            .field("members", &identities)
            .field("majority", &self.inner.majority)
            .field("member_timeout", &self.inner.member_timeout)
            .finish()
    }
}

#[async_trait]
impl LockBackend for Quorum {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities
    }

    async fn try_acquire(
        &self,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
    ) -> Result<Acquire, BackendError> {
        if let Some(only) = self.single() {
            return only.try_acquire(key, token, ttl, owner).await;
        }
        acquire::acquire(&self.inner, key, token, ttl, owner).await
    }

    async fn extend(
        &self,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
    ) -> Result<Extend, BackendError> {
        if let Some(only) = self.single() {
            return only.extend(key, token, ttl).await;
        }
        ops::extend(&self.inner, key, token, ttl).await
    }

    async fn release(&self, key: &LockKey, token: &LockToken) -> Result<Release, BackendError> {
        if let Some(only) = self.single() {
            return only.release(key, token).await;
        }
        ops::release(&self.inner, key, token, false).await
    }

    /// [`release`](LockBackend::release) through every member's
    /// [`give_back`](LockBackend::give_back).
    async fn give_back(&self, key: &LockKey, token: &LockToken) -> Result<Release, BackendError> {
        if let Some(only) = self.single() {
            return only.give_back(key, token).await;
        }
        ops::release(&self.inner, key, token, true).await
    }

    async fn inspect(&self, key: &LockKey) -> Result<LockInfo, BackendError> {
        if let Some(only) = self.single() {
            return only.inspect(key).await;
        }
        ops::inspect(&self.inner, key).await
    }

    /// With one member, that member's. With several, a watch woken by
    /// release notifications from a majority of members (see
    /// [`Quorum`]) when **every** member sends them (the
    /// quorum's [`Capabilities::release_notify`]); otherwise `None`, and a
    /// waiting [`Locker`](crate::Locker) polls with its backoff (found by a
    /// backend author's trial: a watch came back while the capability said
    /// there was none).
    async fn watch(&self, key: &LockKey) -> Result<Option<ReleaseWatch>, BackendError> {
        if let Some(only) = self.single() {
            return only.watch(key).await;
        }
        if !self.inner.capabilities.release_notify {
            return Ok(None);
        }
        watch::watch(&self.inner, key).await
    }

    /// With one member, that member's; otherwise unsupported (a quorum is
    /// not meant to be a member of another quorum).
    async fn raise_fence(
        &self,
        key: &LockKey,
        token: &LockToken,
        at_least: u64,
    ) -> Result<RaiseFence, BackendError> {
        match self.single() {
            Some(only) => only.raise_fence(key, token, at_least).await,
            None => Ok(RaiseFence::Unsupported),
        }
    }

    /// With one member, that member's. With several, the line of waiters
    /// is the **gate member's** (lines on every member would order racing
    /// waiters differently and split the vote): the call goes to the gate
    /// first (the first member that has not failed lately), as a queued
    /// call when the gate keeps a line, so waiters take their turns on the
    /// gate first come, first served, and a release hands the gate to the
    /// next waiter, which then acquires the other members. A waiter that
    /// finds the gate held stops there, except when no round that asked
    /// every member has seen the key held within the last second: then it
    /// asks the others too (keeping its place on the gate), so a stale hold
    /// left on the gate alone cannot hide a free majority for longer than
    /// that. With every member failed lately, this is
    /// [`LockBackend::try_acquire`]. The majority rule, validity and
    /// fencing are the same on every path.
    async fn try_acquire_queued(
        &self,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
        waiter: &crate::Waiter,
    ) -> Result<Acquire, BackendError> {
        match self.single() {
            Some(only) => {
                only.try_acquire_queued(key, token, ttl, owner, waiter)
                    .await
            }
            // Not every member keeps a line: no line at all (a gate that
            // kept one would hand the key to a waiter the other members
            // know nothing of).
            None if !self.inner.capabilities.waiter_queue => {
                acquire::acquire(&self.inner, key, token, ttl, owner).await
            }
            None => {
                acquire::acquire_queued(&self.inner, key, token, ttl, owner, Some(waiter)).await
            }
        }
    }

    /// With one member, that member's. With several, when the gate member
    /// (the same one [`Quorum::try_acquire_queued`] asks first) keeps a
    /// line: the gate member's own `watch_queued`, so a waiter wakes when
    /// the gate is handed to it (or released with nobody in line) and not
    /// on every member's release, which would wake every waiter of every
    /// process. Otherwise (or if that registration fails), and always when
    /// not every member keeps a line (the quorum's
    /// [`Capabilities::waiter_queue`]), [`LockBackend::watch`].
    async fn watch_queued(
        &self,
        key: &LockKey,
        waiter: &crate::Waiter,
    ) -> Result<Option<ReleaseWatch>, BackendError> {
        if let Some(only) = self.single() {
            return only.watch_queued(key, waiter).await;
        }
        if !self.inner.capabilities.waiter_queue {
            return self.watch(key).await;
        }
        if let Some(g) = self.inner.contention.gate_member() {
            let gate = &self.inner.members[g];
            if gate.capabilities().waiter_queue {
                let limit = self.inner.member_timeout;
                if let Ok(Ok(Some(watch))) =
                    tokio::time::timeout(limit, gate.watch_queued(key, waiter)).await
                {
                    return Ok(Some(watch));
                }
            }
        }
        self.watch(key).await
    }
}
