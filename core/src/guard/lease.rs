//! The state a guard shares with its [`Lease`] clones and its renewal task,
//! and the one extend round trip that keeps that state on the safe side.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backend::{Extend, LockBackend};
use crate::error::BackendError;
use crate::key::LockKey;
use crate::options::LockOptions;
use crate::token::LockToken;

/// The lease is (as far as we know) ours.
const HELD: u8 = 0;
/// The lock was found taken away, or the deadline passed.
const LOST: u8 = 1;
/// The owner released or dropped the guard.
const ENDED: u8 = 2;

/// How a lease ended; see [`Lease::ended`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LeaseEnd {
    /// The lease was lost while the guard still wanted it: its validity
    /// deadline passed, or the backend said the lock was no longer ours.
    /// Exclusion is not guaranteed after this point.
    Lost,
    /// The guard ended it first: [`LockGuard::release`](crate::LockGuard::release)
    /// was called, the guard was dropped (also during a panic or a
    /// cancellation; the release then runs in the background), or
    /// [`Locker::with_lock`](crate::Locker::with_lock) returned.
    Released,
}

/// The two deadlines of a lease, on tokio's monotonic clock.
#[derive(Clone, Copy)]
struct Deadlines {
    /// Until when the lease is certainly ours (the safe, early side).
    valid_until: Instant,
    /// The latest moment the backend may still hold the lease for us (the
    /// late side): how long a release is worth retrying.
    held_at_most: Instant,
}

/// State shared by a guard, its [`Lease`] clones and its renewal task.
pub(crate) struct LeaseState {
    key: LockKey,
    fence: u64,
    deadlines: Mutex<Deadlines>,
    /// HELD, then LOST or ENDED; never changes after that.
    status: AtomicU8,
    /// Woken when `status` leaves HELD or `valid_until` moves.
    changed: Notify,
    /// Held across one extend call and the update of the deadlines, so a
    /// manual `extend` and the renewal task never overlap: the deadline
    /// applied last belongs to the extend the server ran last.
    pub(crate) extending: tokio::sync::Mutex<()>,
}

impl LeaseState {
    /// The state of a lease acquired by a request sent at `sent_at` whose
    /// answer arrived just now.
    pub(crate) fn new(key: LockKey, fence: u64, sent_at: Instant, ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            key,
            fence,
            deadlines: Mutex::new(Deadlines {
                valid_until: deadline(sent_at, ttl),
                held_at_most: Instant::now() + ttl,
            }),
            status: AtomicU8::new(HELD),
            changed: Notify::new(),
            extending: tokio::sync::Mutex::new(()),
        })
    }

    pub(crate) fn key(&self) -> &LockKey {
        &self.key
    }

    fn status(&self) -> u8 {
        self.status.load(Ordering::Acquire)
    }

    /// Moves from HELD to `to`; later moves are ignored.
    fn settle(&self, to: u8) {
        if self
            .status
            .compare_exchange(HELD, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            if to == LOST {
                crate::telemetry::lease_lost(&self.key, self.fence);
            }
            self.changed.notify_waiters();
        }
    }

    fn deadlines(&self) -> std::sync::MutexGuard<'_, Deadlines> {
        self.deadlines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn valid_until(&self) -> Instant {
        self.deadlines().valid_until
    }

    /// The latest moment the backend may still hold this lease: a release
    /// is pointless after it.
    pub(crate) fn held_at_most(&self) -> Instant {
        self.deadlines().held_at_most
    }

    /// Moves the validity deadline (earlier or later) while the lease is
    /// held, and wakes [`Lease::lost`] waiters so they wait for the new one.
    fn set_valid_until(&self, at: Instant) {
        if self.status() != HELD {
            return;
        }
        self.deadlines().valid_until = at;
        self.changed.notify_waiters();
    }

    /// Moves the validity deadline to `at` if that is earlier.
    fn lower_valid_until(&self, at: Instant) {
        if self.status() != HELD {
            return;
        }
        let mut d = self.deadlines();
        if at < d.valid_until {
            d.valid_until = at;
            drop(d);
            self.changed.notify_waiters();
        }
    }

    fn raise_held_at_most(&self, at: Instant) {
        let mut d = self.deadlines();
        d.held_at_most = d.held_at_most.max(at);
    }

    pub(crate) fn mark_lost(&self) {
        self.settle(LOST);
    }

    pub(crate) fn mark_ended(&self) {
        self.settle(ENDED);
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.expire_if_due();
        self.status() == LOST
    }

    pub(crate) fn is_held(&self) -> bool {
        self.expire_if_due();
        self.status() == HELD
    }

    /// Counts a lease whose deadline passed as lost.
    fn expire_if_due(&self) {
        if self.status() == HELD && Instant::now() >= self.valid_until() {
            self.mark_lost();
        }
    }

    /// One extend round trip to `ttl`, safe whatever happens to it.
    ///
    /// The outcome of a request that was sent but not answered (cancelled,
    /// timed out, failed) is unknown: the server may have applied it. So
    /// the validity deadline becomes the earlier of the old one and the one
    /// `ttl` gives from now *before* the request leaves (a dropped future
    /// has already lowered it), and moves later only on a confirmed
    /// [`Extend::Extended`]. Every backend error counts as unknown, since
    /// the error kinds do not tell whether the request reached the server;
    /// for a lengthening extend this changes nothing, for a shortening one
    /// it keeps the shorter deadline. [`Extend::NotHeld`] marks the lease
    /// lost.
    ///
    /// Not covered: a request abandoned here that the server applies only
    /// *after* a later, confirmed extend (possible only if the two travel on
    /// different connections, e.g. after the backend replaced a timed-out
    /// one). The guard then counts on the later extend's lease while the
    /// server keeps the abandoned one's; fencing tokens still protect the
    /// resource.
    ///
    /// The caller holds [`LeaseState::extending`].
    pub(crate) async fn extend(
        &self,
        backend: &dyn LockBackend,
        token: &LockToken,
        ttl: Duration,
        renewal: bool,
    ) -> Result<Extend, BackendError> {
        let sent_at = Instant::now();
        let new_deadline = deadline(sent_at, ttl);
        self.lower_valid_until(new_deadline);
        let _in_flight = InFlight { state: self, ttl };
        let call = backend.extend(&self.key, token, ttl);
        let outcome = if renewal {
            crate::telemetry::renewal(&self.key, self.fence, call).await
        } else {
            crate::telemetry::extend(&self.key, self.fence, call).await
        };
        match &outcome {
            Ok(Extend::Extended) => self.set_valid_until(new_deadline),
            Ok(Extend::NotHeld) => self.mark_lost(),
            Err(_) => {}
        }
        outcome
    }
}

/// While an extend is in flight, and when it ends in any way (answer,
/// error, cancellation), the backend may hold the lease until `ttl` after
/// that moment.
struct InFlight<'a> {
    state: &'a LeaseState,
    ttl: Duration,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.state.raise_held_at_most(Instant::now() + self.ttl);
    }
}

/// The validity deadline of a lease requested at `sent_at` for `ttl`.
pub(crate) fn deadline(sent_at: Instant, ttl: Duration) -> Instant {
    sent_at + ttl.saturating_sub(LockOptions::drift(ttl))
}

/// A read-only view of a held lease, cheap to clone and `'static`, for code
/// inside the critical section (see [`Locker::with_lock`](crate::Locker::with_lock)).
///
/// Check [`Lease::is_held`] before an irreversible step, race long work
/// against [`Lease::ended`] (or [`Lease::lost`]), and pass [`Lease::fence`]
/// to the protected resource so it can reject a stale holder.
///
/// A lease outlives its guard: once the guard is released or dropped (or
/// `with_lock` returned), the lease reports not held, zero remaining, and
/// [`Lease::ended`] completes with [`LeaseEnd::Released`].
#[derive(Clone)]
pub struct Lease {
    pub(crate) state: Arc<LeaseState>,
}

impl Lease {
    /// The lock name.
    pub fn name(&self) -> &str {
        self.state.key.name()
    }

    /// The fencing token of this acquisition: strictly greater than every
    /// earlier acquisition's of this name (on backends with
    /// [`Capabilities::fencing`](crate::Capabilities)). Send it with every
    /// write to the protected resource, and have the resource refuse tokens
    /// lower than the highest it has seen.
    pub fn fence(&self) -> u64 {
        self.state.fence
    }

    /// The instant, on tokio's monotonic clock, until which the lease is
    /// certainly ours while its guard holds it: the time the acquire (or
    /// last confirmed extend) request was *sent*, plus the TTL, minus a
    /// drift allowance ([`LockOptions::drift`]). An extend whose outcome is
    /// unknown (cancelled, timed out, failed) moves it to the earlier of the
    /// old deadline and the one the new TTL would give.
    ///
    /// Once the guard has ended this is the last deadline it had; use
    /// [`Lease::is_held`] or [`Lease::remaining`] to ask whether the lock is
    /// still ours.
    pub fn valid_until(&self) -> Instant {
        self.state.valid_until()
    }

    /// How much of the lease is certainly left: zero once it is not held
    /// ([`Lease::is_held`]).
    pub fn remaining(&self) -> Duration {
        if !self.is_held() {
            return Duration::ZERO;
        }
        self.valid_until().saturating_duration_since(Instant::now())
    }

    /// True while the lock is certainly ours: the guard still holds it (not
    /// released, dropped or ended by `with_lock`), it was not found lost,
    /// and the validity deadline has not passed. While this is true no
    /// other client holds the lock (see the README's safety model).
    pub fn is_held(&self) -> bool {
        self.state.is_held()
    }

    /// True once the lease is known **lost**: renewal or an extend found the
    /// lock taken away, or the validity deadline passed while the guard
    /// still held it. False after a normal release or drop (the lease
    /// ended, it was not lost): use [`Lease::is_held`] to ask "is the lock
    /// still mine".
    pub fn is_lost(&self) -> bool {
        self.state.is_lost()
    }

    /// Completes when the lease is lost (see [`Lease::is_lost`]), at the
    /// latest at the validity deadline if no renewal moved it. Never
    /// completes if the guard is released or dropped first: to wait for
    /// either, use [`Lease::ended`]. Cancel safe.
    pub async fn lost(&self) {
        if self.ended().await == LeaseEnd::Released {
            std::future::pending::<()>().await;
        }
    }

    /// Completes when the lease stops being held, one way or the other, and
    /// says how: [`LeaseEnd::Lost`] (deadline passed or lock taken away
    /// while the guard held it) or [`LeaseEnd::Released`] (the guard was
    /// released, dropped, or its `with_lock` returned). Completes at once if
    /// the lease already ended. Cancel safe.
    ///
    /// ```
    /// use distlock::{LeaseEnd, Locker};
    /// use distlock_memory::MemoryBackend;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), distlock::LockError> {
    /// let locker = Locker::new(MemoryBackend::new());
    /// let guard = locker.try_lock("job").await?.expect("free");
    /// let lease = guard.lease();
    /// let watcher = tokio::spawn(async move { lease.ended().await });
    /// guard.release().await?;
    /// assert_eq!(watcher.await.unwrap(), LeaseEnd::Released);
    /// # Ok(()) }
    /// ```
    pub async fn ended(&self) -> LeaseEnd {
        let state = &self.state;
        loop {
            let changed = state.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            state.expire_if_due();
            match state.status() {
                LOST => return LeaseEnd::Lost,
                ENDED => return LeaseEnd::Released,
                _ => {}
            }
            let deadline = state.valid_until();
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("name", &self.name())
            .field("fence", &self.fence())
            .field("held", &self.is_held())
            .field("remaining", &self.remaining())
            .field("lost", &self.is_lost())
            .finish()
    }
}
