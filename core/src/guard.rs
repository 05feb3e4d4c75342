//! The guard that represents a held lock, and the lease view shared with
//! code inside the critical section.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backend::{Extend, LockBackend, Release};
use crate::error::LockError;
use crate::key::LockKey;
use crate::options::{validate_ttl, LockOptions, MIN_TTL};
use crate::releaser::{PendingRelease, Releaser};
use crate::telemetry;
use crate::token::LockToken;

/// The lease is (as far as we know) ours.
const HELD: u8 = 0;
/// The lock was found taken away, or the deadline passed.
const LOST: u8 = 1;
/// The owner released or dropped the guard.
const ENDED: u8 = 2;

/// State shared by a guard, its [`Lease`] clones and its renewal task.
struct LeaseState {
    key: LockKey,
    fence: u64,
    valid_until: Mutex<Instant>,
    /// HELD, then LOST or ENDED; never changes after that.
    status: AtomicU8,
    /// Woken when `status` leaves HELD or `valid_until` moves.
    changed: Notify,
    /// Held across one extend call and the update of `valid_until`, so a
    /// manual `extend` and the renewal task never overlap: the deadline
    /// applied last belongs to the extend the server ran last.
    extending: tokio::sync::Mutex<()>,
}

impl LeaseState {
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
                telemetry::lease_lost(&self.key, self.fence);
            }
            self.changed.notify_waiters();
        }
    }

    fn valid_until(&self) -> Instant {
        *self
            .valid_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves the deadline (earlier or later) while the lease is held, and
    /// wakes [`Lease::lost`] waiters so they wait for the new one.
    fn set_valid_until(&self, at: Instant) {
        if self.status() != HELD {
            return;
        }
        *self
            .valid_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = at;
        self.changed.notify_waiters();
    }

    fn mark_lost(&self) {
        self.settle(LOST);
    }
}

/// A read-only view of a held lease, cheap to clone and `'static`, for code
/// inside the critical section (see [`Locker::with_lock`](crate::Locker::with_lock)).
///
/// Check [`Lease::is_lost`] before an irreversible step, race long work
/// against [`Lease::lost`], and pass [`Lease::fence`] to the protected
/// resource so it can reject a stale holder.
#[derive(Clone)]
pub struct Lease {
    state: Arc<LeaseState>,
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
    /// certainly ours: the time the acquire (or last successful extend)
    /// request was *sent*, plus the TTL, minus a drift allowance
    /// ([`LockOptions::drift`]).
    pub fn valid_until(&self) -> Instant {
        self.state.valid_until()
    }

    /// How much of the lease is certainly left (zero once it may be gone).
    pub fn remaining(&self) -> Duration {
        self.valid_until().saturating_duration_since(Instant::now())
    }

    /// True once the lease is known lost: renewal found the lock taken away,
    /// or the validity deadline passed. Always false after a normal release.
    pub fn is_lost(&self) -> bool {
        match self.state.status() {
            HELD if Instant::now() >= self.valid_until() => {
                self.state.mark_lost();
                self.state.status() == LOST
            }
            status => status == LOST,
        }
    }

    /// Completes when the lease is lost (see [`Lease::is_lost`]), at the
    /// latest at the validity deadline if no renewal moved it. Never
    /// completes if the guard is released or dropped first. Cancel safe.
    pub async fn lost(&self) {
        loop {
            let changed = self.state.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.state.status() {
                LOST => return,
                ENDED => return std::future::pending().await,
                _ => {}
            }
            let deadline = self.valid_until();
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(deadline) => {
                    if Instant::now() >= self.valid_until() {
                        self.state.mark_lost();
                    }
                }
            }
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("name", &self.name())
            .field("fence", &self.fence())
            .field("remaining", &self.remaining())
            .field("lost", &self.is_lost())
            .finish()
    }
}

/// A held lock.
///
/// # Releasing
///
/// - [`LockGuard::release`] frees the lock now and tells whether it was still
///   ours. Prefer it: it reports errors.
/// - **Dropping** the guard without `release` hands the release to the
///   [`Locker`](crate::Locker)'s single background task without blocking.
///   The lock is freed about one backend round trip later while the runtime
///   keeps running. If the runtime is shutting down (for example the guard
///   is dropped at the very end of `main`), or the backend cannot be
///   reached, nothing releases it and the lock frees itself when its lease
///   runs out: **at worst after the TTL** (from the last extend).
/// - A guard dropped during a panic is released the same way.
///
/// Renewal (with [`LockOptions::auto_renew`]) stops as soon as the guard is
/// released or dropped.
#[must_use = "dropping the guard releases the lock"]
pub struct LockGuard {
    lease: Lease,
    token: LockToken,
    backend: Arc<dyn LockBackend>,
    releaser: Releaser,
    renewal: Option<tokio::task::JoinHandle<()>>,
    finished: bool,
    held: telemetry::Held,
}

impl LockGuard {
    pub(crate) fn new(
        key: LockKey,
        token: LockToken,
        fence: u64,
        sent_at: Instant,
        opts: &LockOptions,
        backend: Arc<dyn LockBackend>,
        releaser: Releaser,
    ) -> Self {
        let state = Arc::new(LeaseState {
            key,
            fence,
            valid_until: Mutex::new(deadline(sent_at, opts.ttl)),
            status: AtomicU8::new(HELD),
            changed: Notify::new(),
            extending: tokio::sync::Mutex::new(()),
        });
        releaser.ensure_started();
        let renewal = opts.auto_renew.then(|| {
            tokio::spawn(renew(
                backend.clone(),
                state.clone(),
                token.clone(),
                opts.ttl,
                opts.max_hold.map(|m| sent_at + m),
            ))
        });
        Self {
            lease: Lease { state },
            token,
            backend,
            releaser,
            renewal,
            finished: false,
            held: telemetry::Held::start(),
        }
    }

    /// The lock name.
    pub fn name(&self) -> &str {
        self.lease.name()
    }

    /// The fencing token; see [`Lease::fence`].
    pub fn fence(&self) -> u64 {
        self.lease.fence()
    }

    /// The validity deadline; see [`Lease::valid_until`].
    pub fn valid_until(&self) -> Instant {
        self.lease.valid_until()
    }

    /// True while the lease is certainly ours (not lost, deadline not passed).
    pub fn is_valid(&self) -> bool {
        !self.lease.is_lost()
    }

    /// A `'static` view of the lease to hand to the critical section.
    pub fn lease(&self) -> Lease {
        self.lease.clone()
    }

    /// Completes when the lease is lost; see [`Lease::lost`].
    pub async fn lost(&self) {
        self.lease.lost().await
    }

    /// Sets the lease to end `ttl` from now, if it is still ours.
    ///
    /// Returns [`LockError::NotHeld`] if the lock expired or was taken over
    /// (the guard then counts as lost), [`LockError::InvalidTtl`] for a bad
    /// TTL (nothing is sent), and a backend error if the backend failed (the
    /// old deadline stays).
    pub async fn extend(&mut self, ttl: Duration) -> Result<(), LockError> {
        validate_ttl(ttl)?;
        let state = self.lease.state.clone();
        let _one_at_a_time = state.extending.lock().await;
        if state.status() == LOST {
            return Err(self.not_held());
        }
        let sent_at = Instant::now();
        match telemetry::extend(
            &state.key,
            state.fence,
            self.backend.extend(&state.key, &self.token, ttl),
        )
        .await?
        {
            Extend::Extended => {
                state.set_valid_until(deadline(sent_at, ttl));
                Ok(())
            }
            Extend::NotHeld => {
                state.mark_lost();
                Err(self.not_held())
            }
        }
    }

    /// Frees the lock now and says whether it was still ours
    /// ([`Release::NotHeld`] means the lease had expired or been taken over,
    /// so exclusion was not guaranteed until the end).
    ///
    /// If the backend fails, the error is returned and the release is retried
    /// in the background; at worst the lease runs out. Cancelling this future
    /// also leaves the release to the background task.
    pub async fn release(mut self) -> Result<Release, LockError> {
        self.finish();
        let state = &self.lease.state;
        let pending = PendingRelease::arm(&self.releaser, &state.key, &self.token);
        let outcome = telemetry::release(
            &state.key,
            false,
            self.backend.release(&state.key, &self.token),
        )
        .await?;
        pending.disarm();
        Ok(outcome)
    }

    fn not_held(&self) -> LockError {
        LockError::NotHeld {
            name: self.name().to_owned(),
        }
    }

    /// Stops renewal and marks the lease ended; returns whether it was
    /// already finished.
    fn finish(&mut self) -> bool {
        if std::mem::replace(&mut self.finished, true) {
            return true;
        }
        self.lease.state.settle(ENDED);
        self.held.end(&self.lease.state.key);
        if let Some(task) = self.renewal.take() {
            task.abort();
        }
        false
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if !self.finish() {
            self.releaser
                .submit(self.lease.state.key.clone(), self.token.clone());
        }
    }
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("name", &self.name())
            .field("fence", &self.fence())
            .field("token", &self.token)
            .field("valid_until", &self.valid_until())
            .finish()
    }
}

pub(crate) fn deadline(sent_at: Instant, ttl: Duration) -> Instant {
    sent_at + ttl.saturating_sub(LockOptions::drift(ttl))
}

/// The watchdog: extends the lease every third of its TTL until the guard
/// ends, the lock is found lost, or `stop_at` (from `max_hold`) is reached.
async fn renew(
    backend: Arc<dyn LockBackend>,
    state: Arc<LeaseState>,
    token: LockToken,
    ttl: Duration,
    stop_at: Option<Instant>,
) {
    let period = ttl / 3;
    let mut wait = period;
    loop {
        tokio::time::sleep(wait).await;
        let _one_at_a_time = state.extending.lock().await;
        if state.status() != HELD {
            return;
        }
        let sent_at = Instant::now();
        let valid_until = state.valid_until();
        if sent_at >= valid_until {
            state.mark_lost();
            return;
        }
        let mut next_ttl = ttl;
        if let Some(stop_at) = stop_at {
            let left = stop_at.saturating_duration_since(sent_at);
            if left < MIN_TTL {
                return;
            }
            next_ttl = next_ttl.min(left);
        }
        let call = telemetry::renewal(
            &state.key,
            state.fence,
            backend.extend(&state.key, &token, next_ttl),
        );
        match tokio::time::timeout_at(valid_until, call).await {
            Ok(Ok(Extend::Extended)) => {
                state.set_valid_until(deadline(sent_at, next_ttl));
                wait = period;
            }
            Ok(Ok(Extend::NotHeld)) | Err(_) => {
                state.mark_lost();
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(key = %state.key, error = %e, "lease renewal failed; retrying");
                let left = valid_until.saturating_duration_since(Instant::now());
                wait = (period / 4).min(left).max(Duration::from_millis(1));
            }
        }
    }
}
