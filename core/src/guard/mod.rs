//! The guard that represents a held lock, and the lease view shared with
//! code inside the critical section.

mod lease;
mod renew;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::{Extend, LockBackend, Release};
use crate::error::LockError;
use crate::key::LockKey;
use crate::options::{validate_ttl, LockOptions};
use crate::releaser::{PendingRelease, Releaser};
use crate::token::LockToken;

pub(crate) use lease::deadline;
use lease::LeaseState;
pub use lease::{Lease, LeaseEnd};

/// A held lock.
///
/// # Releasing
///
/// - [`LockGuard::release`] frees the lock now and tells whether it was still
///   ours. Prefer it: it reports errors.
/// - **Dropping** the guard without `release` hands the release to the
///   [`Locker`](crate::Locker)'s background releases without blocking: it
///   runs as a task on the runtime of the code that dropped the guard,
///   about one backend round trip later while that runtime keeps running,
///   and backend failures (except permanent ones such as a missing
///   permission) are retried with backoff for as long as the lease could
///   still be held. A release that could not run (the
///   guard was dropped outside a runtime, or its runtime shut down first) is
///   picked up by the next call of the `Locker` inside a runtime, and
///   [`Locker::flush`](crate::Locker::flush) waits for all of them (call it
///   at the end of `main` or of a test). Otherwise the lock frees itself
///   when its lease runs out: **at worst after the TTL** (from the last
///   extend).
/// - A guard dropped during a panic is released the same way.
///
/// Once the guard is released or dropped, every [`Lease`] of it reports the
/// lock as not held ([`Lease::is_held`]) and [`Lease::ended`] completes.
/// Renewal (with [`LockOptions::auto_renew`]) stops at the same moment.
#[must_use = "dropping the guard releases the lock"]
pub struct LockGuard {
    lease: Lease,
    token: LockToken,
    backend: Arc<dyn LockBackend>,
    releaser: Releaser,
    renewal: Option<tokio::task::JoinHandle<()>>,
    finished: bool,
    held: crate::telemetry::Held,
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
        let held = crate::telemetry::Held::start(&key);
        let state = LeaseState::new(key, fence, sent_at, opts.ttl);
        let renewal = opts.auto_renew.then(|| {
            tokio::spawn(renew::renew(
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
            held,
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

    /// How much of the lease is certainly left; see [`Lease::remaining`].
    pub fn remaining(&self) -> Duration {
        self.lease.remaining()
    }

    /// True while the lease is certainly ours (not lost, deadline not
    /// passed); see [`Lease::is_held`].
    pub fn is_valid(&self) -> bool {
        self.lease.is_held()
    }

    /// True once the lease is known lost (taken away, or its deadline
    /// passed while held); see [`Lease::is_lost`]. Not the opposite of
    /// [`is_valid`](LockGuard::is_valid): a lease that ended normally is
    /// neither.
    pub fn is_lost(&self) -> bool {
        self.lease.is_lost()
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
    /// TTL (nothing is sent), and a backend error if the backend failed.
    ///
    /// When the outcome is unknown (a backend error, or this future is
    /// dropped while the request is in flight, e.g. by a
    /// `tokio::time::timeout`), the server may or may not have applied the
    /// new TTL, so the guard keeps the **earlier** of its old deadline and
    /// the one `ttl` gives (from the moment the request was sent): a
    /// lengthening extend keeps the old deadline, a shortening one lowers
    /// it. The deadline moves later only when the backend confirms.
    pub async fn extend(&mut self, ttl: Duration) -> Result<(), LockError> {
        validate_ttl(ttl)?;
        let state = self.lease.state.clone();
        let _one_at_a_time = state.extending.lock().await;
        if state.is_lost() {
            return Err(self.not_held());
        }
        match state
            .extend(self.backend.as_ref(), &self.token, ttl, false)
            .await?
        {
            // Confirmed, but too late to count on: the new lease could
            // already have ended when the answer came (found in review:
            // this returned `Ok` while the lease was lost), as an acquire
            // answered that late gives no guard.
            Extend::Extended if !state.is_held() => Err(self.not_held()),
            Extend::Extended => Ok(()),
            Extend::NotHeld => Err(self.not_held()),
        }
    }

    /// Frees the lock now and says whether it was still ours.
    ///
    /// [`Release::NotHeld`] means exclusion was not guaranteed until the
    /// end: the backend no longer had the lease (expired or taken over), or
    /// the guard had already counted it as lost ([`Lease::is_lost`], e.g.
    /// its validity deadline passed a moment before the server's expiry, or
    /// `max_hold` ended renewal), in which case the key is still deleted if
    /// the backend had it.
    ///
    /// If the backend fails, the error is returned and the release is retried
    /// in the background; at worst the lease runs out. Cancelling this future
    /// also leaves the release to the background.
    pub async fn release(mut self) -> Result<Release, LockError> {
        let was_lost = self.lease.is_lost();
        self.finish();
        let state = self.lease.state.clone();
        let pending = PendingRelease::arm_release(
            &self.releaser,
            state.key(),
            &self.token,
            state.held_at_most(),
        );
        let outcome = crate::telemetry::release(
            state.key(),
            false,
            self.backend.release(state.key(), &self.token),
        )
        .await?;
        pending.disarm();
        Ok(if was_lost { Release::NotHeld } else { outcome })
    }

    /// Ends the guard **without releasing**: the lock stays held until its
    /// lease runs out, so nobody (this process included) takes it before
    /// then. Renewal stops, and the guard's [`Lease`] reports the lease as
    /// ended ([`Lease::is_held`] is false: this process no longer counts on
    /// it). For "run once per period": see [`LockGuard::keep_for`].
    pub fn keep(mut self) {
        // Finished: the drop that follows queues no release.
        self.finish();
    }

    /// Sets the lease to end `ttl` from now (like [`LockGuard::extend`]),
    /// then ends the guard without releasing ([`LockGuard::keep`]): the lock
    /// stays held for `ttl` (at most [`MAX_TTL`](crate::MAX_TTL)), so a
    /// later run within that time finds it held.
    ///
    /// The recipe for "run tonight's report once": lock a name keyed by the
    /// date (`report:2026-11-30`) with a short, renewed lease while the work
    /// runs, so a crashed run frees it quickly for a retry; after success,
    /// `keep_for` a TTL that covers the rest of the day.
    ///
    /// Errors as [`LockError::NotHeld`]/backend errors of
    /// [`LockGuard::extend`]; then the guard is dropped and released in the
    /// background, so a later run may do the work again.
    pub async fn keep_for(mut self, ttl: Duration) -> Result<(), LockError> {
        // Renewal stops first: one running on another worker thread between
        // this extend and `keep` would otherwise set its own TTL over a
        // shorter `ttl` (found in review).
        if let Some(task) = self.renewal.take() {
            task.abort();
        }
        self.extend(ttl).await?;
        self.keep();
        Ok(())
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
        self.lease.state.mark_ended();
        self.held.end();
        if let Some(task) = self.renewal.take() {
            task.abort();
        }
        false
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if !self.finish() {
            let state = &self.lease.state;
            self.releaser.submit(
                state.key().clone(),
                self.token.clone(),
                state.held_at_most(),
            );
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
