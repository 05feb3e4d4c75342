//! The application-facing entry point.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::{Acquire, LockBackend, LockInfo, Waiter, WaiterId, WAITER_LEASE};
use crate::error::{BackendError, BackendErrorKind, LockError};
use crate::guard::LockGuard;
use crate::key::LockKey;
use crate::options::LockOptions;
use crate::releaser::{PendingRelease, Releaser};
use crate::token::LockToken;
use crate::wait::{refresh_period, registered, retry_while_waiting, within, Backoff, Turn, Turns};

/// Takes named locks through a backend. Cheap to clone; clones share the
/// backend, the background releases and the queue of local waiters.
///
/// Every lock name lives in the locker's namespace ([`Locker::with_prefix`]):
/// lockers with different prefixes never share a lock, even on one backend.
///
/// ```
/// use distlock::Locker;
/// use distlock_memory::MemoryBackend;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), distlock::LockError> {
/// let locker = Locker::new(MemoryBackend::new()).with_prefix("billing")?;
///
/// let guard = locker.try_lock("invoice:42").await?.expect("nobody holds it yet");
/// assert!(locker.try_lock("invoice:42").await?.is_none(), "held: not an error");
/// println!("fencing token {}", guard.fence());
/// guard.release().await?;
///
/// let total = locker.with_lock("nightly-report", |lease| async move {
///     // ... work that must not run twice at once; pass lease.fence() along ...
///     lease.fence()
/// }).await?;
/// assert!(total > 0);
/// # Ok(()) }
/// ```
pub struct Locker<B: LockBackend> {
    inner: Arc<Inner<B>>,
}

struct Inner<B> {
    backend: Arc<B>,
    dyn_backend: Arc<dyn LockBackend>,
    prefix: String,
    defaults: LockOptions,
    releaser: Releaser,
    turns: Arc<Turns>,
}

impl<B: LockBackend> Clone for Locker<B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<B: LockBackend> std::fmt::Debug for Locker<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locker")
            .field("prefix", &self.inner.prefix)
            .field("defaults", &self.inner.defaults)
            .finish_non_exhaustive()
    }
}

impl<B: LockBackend> Locker<B> {
    /// A locker with no prefix and default [`LockOptions`].
    pub fn new(backend: B) -> Self {
        Self::build(Arc::new(backend), String::new(), LockOptions::default())
    }

    /// A locker over a backend that is shared with other code.
    pub fn from_arc(backend: Arc<B>) -> Self {
        Self::build(backend, String::new(), LockOptions::default())
    }

    fn build(backend: Arc<B>, prefix: String, defaults: LockOptions) -> Self {
        let dyn_backend: Arc<dyn LockBackend> = backend.clone();
        Self {
            inner: Arc::new(Inner {
                releaser: Releaser::new(dyn_backend.clone()),
                backend,
                dyn_backend,
                prefix,
                defaults,
                turns: Arc::default(),
            }),
        }
    }

    /// The same backend with names in the namespace `prefix` (at most
    /// [`MAX_PREFIX_LEN`](crate::MAX_PREFIX_LEN) bytes, no NUL). The new
    /// locker shares this one's background releases and waiter queues.
    pub fn with_prefix(self, prefix: impl Into<String>) -> Result<Self, LockError> {
        let prefix = prefix.into();
        LockKey::validate_prefix(&prefix)?;
        Ok(self.derive(prefix, self.inner.defaults.clone()))
    }

    /// The same backend and prefix with other default options (validated).
    /// The new locker shares this one's background releases and waiter
    /// queues.
    pub fn with_defaults(self, defaults: LockOptions) -> Result<Self, LockError> {
        defaults.validate()?;
        Ok(self.derive(self.inner.prefix.clone(), defaults))
    }

    fn derive(&self, prefix: String, defaults: LockOptions) -> Self {
        let inner = &self.inner;
        Self {
            inner: Arc::new(Inner {
                backend: inner.backend.clone(),
                dyn_backend: inner.dyn_backend.clone(),
                prefix,
                defaults,
                releaser: inner.releaser.clone(),
                turns: inner.turns.clone(),
            }),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.inner.backend
    }

    /// The namespace prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The default options of every call without `_with`.
    pub fn defaults(&self) -> &LockOptions {
        &self.inner.defaults
    }

    /// The backend key for `name` in this locker's namespace.
    pub fn key(&self, name: impl AsRef<[u8]>) -> Result<LockKey, LockError> {
        LockKey::new(&self.inner.prefix, name)
    }

    /// One attempt with the default options: `Ok(Some(guard))` if the lock
    /// was free, `Ok(None)` if somebody holds it (including this process).
    /// [`Locker::try_lock_with`] changes options for one call;
    /// [`Locker::try_lock_or_holder`] also tells how long the holder keeps it.
    ///
    /// Bind the guard (`let Some(guard) = locker.try_lock(name).await? else
    /// { ... }`): `locker.try_lock(name).await?;` alone compiles without a
    /// warning (the `?` uses the result) and releases the lock it took at
    /// once.
    #[must_use = "an acquired lock is released as soon as the guard is dropped"]
    pub async fn try_lock(&self, name: impl AsRef<[u8]>) -> Result<Option<LockGuard>, LockError> {
        self.try_lock_opts(name, &self.inner.defaults).await
    }

    /// [`Locker::try_lock`] with complete options (already merged).
    pub(crate) async fn try_lock_opts(
        &self,
        name: impl AsRef<[u8]>,
        opts: &LockOptions,
    ) -> Result<Option<LockGuard>, LockError> {
        opts.validate()?;
        let key = self.key(name)?;
        match crate::telemetry::acquire(&key, false, self.attempt(&key, opts)).await? {
            Ok(guard) => Ok(Some(guard)),
            Err(_) => Ok(None),
        }
    }

    /// Waits for the lock with the default options, up to their
    /// `wait_timeout`, then gives up with [`LockError::TimedOut`].
    ///
    /// The wait deadline bounds the whole call: a backend call in flight at
    /// the deadline (an acquire attempt, the release subscription) is
    /// abandoned and the call returns `TimedOut` (plus scheduling noise),
    /// however long the backend would still take. A zero `wait_timeout`
    /// makes one attempt, bounded by the backend's own timeouts.
    ///
    /// Waiting is event-driven where the backend notifies releases
    /// ([`Capabilities::release_notify`](crate::Capabilities)); between
    /// events, and on other backends, it retries with exponential backoff and
    /// full jitter, never sleeping past the holder's remaining lease. Tasks
    /// of one `Locker` waiting for the same name queue first-come
    /// first-served, and only the first of them queries the backend.
    ///
    /// On a backend with a line of waiters
    /// ([`Capabilities::waiter_queue`](crate::Capabilities)), a wait with a
    /// non-zero `wait_timeout` and a TTL of at least [`WAITER_LEASE`]
    /// takes a place in that line (first come, first served across
    /// processes): a release hands the lock straight to the first waiter,
    /// which claims it with one call. While in line the call is repeated
    /// at least every third of [`WAITER_LEASE`] to keep the place, and
    /// `retry_min`/`retry_max` pace only retries after transient errors.
    ///
    /// Cancel safe: dropping the future at any point leaves no lock held (an
    /// acquisition that was in flight is released in the background) and no
    /// waiter registered. A place in the backend's line is given up in the
    /// background too (a lock already handed to the call is passed on);
    /// [`Locker::flush`] waits for it. Until then, or until the place
    /// lapses ([`WAITER_LEASE`] after the last call), a release may hand
    /// the lock to the cancelled call for a moment.
    ///
    /// A transient backend error ([`LockError::is_transient`]: the server
    /// restarting or busy, a timeout) does not end the wait: the attempt is
    /// repeated with the same backoff until the wait deadline; when the
    /// deadline passes after such an error (while waiting it out, or
    /// cutting off the next attempt), that error is the answer, not
    /// `TimedOut` (which stays the answer for a call cut off at the deadline
    /// without a transient error before it). Other errors are returned at
    /// once.
    ///
    /// An acquisition whose answer arrives after its lease could already
    /// have run out (the backend took longer than the TTL minus the drift
    /// allowance) is given back at once and reported as a
    /// [`BackendErrorKind::Timeout`] error, never as a guard that is invalid
    /// from birth. The same holds for [`Locker::try_lock`].
    pub async fn lock(&self, name: impl AsRef<[u8]>) -> Result<LockGuard, LockError> {
        self.lock_opts(name, &self.inner.defaults).await
    }

    /// [`Locker::lock`] with complete options (already merged).
    pub(crate) async fn lock_opts(
        &self,
        name: impl AsRef<[u8]>,
        opts: &LockOptions,
    ) -> Result<LockGuard, LockError> {
        opts.validate()?;
        let key = self.key(name)?;
        crate::telemetry::acquire(&key, true, self.wait_for(&key, opts)).await
    }

    /// The wait of [`Locker::lock_with`], with validated options.
    async fn wait_for(&self, key: &LockKey, opts: &LockOptions) -> Result<LockGuard, LockError> {
        let started = Instant::now();
        let deadline = started + opts.wait_timeout;
        let timed_out = || LockError::TimedOut {
            name: key.name().to_owned(),
            waited: started.elapsed(),
        };

        // Every backend call below ends at the wait deadline, whatever the
        // backend is doing (both calls are cancel safe: an acquisition in
        // flight is given back in the background). A zero wait makes its
        // one attempt in full, bounded by the backend's own timeouts.
        let bound = (!opts.wait_timeout.is_zero()).then_some(deadline);

        let turn = self.inner.turns.enter(key.encoded());
        let turn = tokio::time::timeout_at(deadline, turn)
            .await
            .map_err(|_| timed_out())?;
        if self.inner.backend.capabilities().waiter_queue
            && !opts.wait_timeout.is_zero()
            && opts.ttl >= WAITER_LEASE
        {
            return self.wait_queued(key, opts, &turn, deadline).await;
        }
        let mut watch = None;
        if turn.waited() {
            // A task of this process went first and most likely holds the
            // lock now: register before the first attempt, so that a failed
            // attempt needs no immediate retry (one round trip less per
            // handoff between tasks of one process).
            watch = registered(key, bound, self.inner.backend.watch(key), timed_out).await?;
        }
        let mut backoff = Backoff::new(opts.retry_min, opts.retry_max);
        // The last transient error of an attempt, while no later attempt
        // has got an answer.
        let mut last_transient = None;
        loop {
            // A call cut off at the deadline is a timeout; a transient
            // error with time left is waited through (with backoff, bounded
            // by the deadline), and the last one is the answer when the
            // deadline passes while sleeping it off.
            let Some(attempt) = within(bound, self.attempt(key, opts)).await else {
                // Cut off at the deadline: after a transient error the
                // store's trouble is the better answer than the timeout.
                return Err(last_transient.take().unwrap_or_else(timed_out));
            };
            let remaining = match attempt {
                Ok(Ok(guard)) => return Ok(guard),
                Ok(Err(remaining)) => {
                    last_transient = None;
                    remaining
                }
                Err(e) if retry_while_waiting(&e) && Instant::now() < deadline => {
                    crate::telemetry::wait_error(key, &e, true);
                    let wake_at = deadline.min(Instant::now() + backoff.next_delay());
                    tokio::time::sleep_until(wake_at).await;
                    if Instant::now() >= deadline {
                        return Err(e);
                    }
                    last_transient = Some(e);
                    continue;
                }
                Err(e) => {
                    crate::telemetry::wait_error(key, &e, false);
                    return Err(e);
                }
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(timed_out());
            }
            if watch.is_none() {
                // Register before the next attempt so no release is missed;
                // an immediate retry covers a release in between.
                watch = registered(key, bound, self.inner.backend.watch(key), timed_out).await?;
                if watch.is_some() {
                    continue;
                }
            }
            let mut delay = backoff.next_delay();
            if let Some(remaining) = remaining {
                delay = delay.min(remaining.saturating_add(Duration::from_millis(1)));
            }
            let wake_at = deadline.min(now + delay);
            match watch.as_mut() {
                Some(w) => {
                    tokio::select! {
                        _ = w.released() => {}
                        _ = tokio::time::sleep_until(wake_at) => {}
                    }
                }
                None => tokio::time::sleep_until(wake_at).await,
            }
        }
    }

    /// The wait of [`Locker::lock_with`] in a backend's line of waiters
    /// ([`Capabilities::waiter_queue`](crate::Capabilities)), for a
    /// non-zero wait and a TTL of at least [`WAITER_LEASE`]. One token and
    /// one [`WaiterId`] serve every call of this wait, and one ticket gives
    /// the token back in the background
    /// ([`LockBackend::give_back`](crate::LockBackend::give_back)) if the
    /// wait ends without a guard (cancelled, timed out, an error): that
    /// frees a lock handed over to it, or takes the place out of the line.
    /// After a call that timed out (a copy of it may still reach the
    /// store), the token is given back at once and the wait goes on with a
    /// new one: every token of a guard saw all its calls answered.
    async fn wait_queued(
        &self,
        key: &LockKey,
        opts: &LockOptions,
        turn: &Turn,
        deadline: Instant,
    ) -> Result<LockGuard, LockError> {
        let inner = &self.inner;
        let started = deadline - opts.wait_timeout;
        let timed_out = || LockError::TimedOut {
            name: key.name().to_owned(),
            waited: started.elapsed(),
        };
        if opts.auto_renew && tokio::runtime::Handle::try_current().is_err() {
            return Err(LockError::InvalidOptions(
                "auto_renew needs a tokio runtime to renew in; call from inside one".to_owned(),
            ));
        }
        let bound = Some(deadline);
        // Drawn when first needed: an uncontended wait (one plain call that
        // acquires) never needs it.
        let mut waiter: Option<Waiter> = None;
        let new_waiter = || Waiter::new(WaiterId::generate(), WAITER_LEASE);
        let mut token = LockToken::generate();
        // A task of this process went first, or this process was answered
        // `Held` for the key a moment ago: register for the handover and
        // join the line with the first call.
        let hot = turn.contended() || turn.waited();
        let mut watch = None;
        if hot {
            let waiter = waiter.get_or_insert_with(new_waiter);
            watch = registered(
                key,
                bound,
                inner.backend.watch_queued(key, waiter),
                timed_out,
            )
            .await?;
        }
        // Armed for the whole call: from the first request on, the token
        // may hold the lock (taken, or handed over) or a place in line.
        let mut ticket =
            PendingRelease::arm(&inner.releaser, key, &token, Instant::now(), opts.ttl);
        let mut backoff = Backoff::new(opts.retry_min, opts.retry_max);
        let mut last_transient: Option<LockError> = None;
        let mut first = true;
        let mut unknown = false;
        loop {
            inner.releaser.adopt_orphans();
            crate::telemetry::attempted();
            let plain = first && !hot;
            first = false;
            let queued_as = if plain {
                None
            } else {
                Some(&*waiter.get_or_insert_with(new_waiter))
            };
            let sent_at = Instant::now();
            let call = async {
                match queued_as {
                    Some(waiter) => {
                        inner
                            .backend
                            .try_acquire_queued(
                                key,
                                &token,
                                opts.ttl,
                                opts.owner.as_deref(),
                                waiter,
                            )
                            .await
                    }
                    // A cold key: most likely free, so today's attempt
                    // (no line, no subscription).
                    None => {
                        inner
                            .backend
                            .try_acquire(key, &token, opts.ttl, opts.owner.as_deref())
                            .await
                    }
                }
            };
            let Some(outcome) = within(bound, call).await else {
                // Cut off at the deadline (the ticket gives the token back).
                return Err(last_transient.take().unwrap_or_else(timed_out));
            };
            let error = match outcome {
                Ok(Acquire::Acquired { fence }) => {
                    if crate::guard::deadline(sent_at, opts.ttl) > Instant::now() {
                        ticket.disarm();
                        return Ok(self.guard(key, token, fence, sent_at, opts));
                    }
                    // The answer came after the lease could already have
                    // run out: no guard (it would be invalid from birth).
                    // A transient error: the next call with the same token
                    // claims the hold afresh (a new lease from its send
                    // time) if it is still ours, or waits on.
                    LockError::Backend(BackendError::new(
                        BackendErrorKind::Timeout,
                        format!(
                            "acquiring {:?} took {:?}, longer than its TTL allows ({:?})",
                            key.name(),
                            sent_at.elapsed(),
                            opts.ttl
                        ),
                    ))
                }
                Ok(Acquire::Held { remaining }) => {
                    last_transient = None;
                    turn.mark_contended();
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(timed_out());
                    }
                    if watch.is_none() {
                        // Register, then call again at once: the call joins
                        // the line (a cold first call did not), and covers
                        // a handover in between.
                        let waiter = waiter.get_or_insert_with(new_waiter);
                        watch = registered(
                            key,
                            bound,
                            inner.backend.watch_queued(key, waiter),
                            timed_out,
                        )
                        .await?;
                        if watch.is_some() || plain {
                            continue;
                        }
                    }
                    // Call again before the place lapses, and as soon as
                    // the holder's lease (or a handover's claim window)
                    // could have ended.
                    let mut wake_at = deadline.min(sent_at + refresh_period());
                    if let Some(remaining) = remaining {
                        wake_at =
                            wake_at.min(now + remaining.saturating_add(Duration::from_millis(1)));
                    }
                    match watch.as_mut() {
                        Some(w) => {
                            tokio::select! {
                                _ = w.released() => {}
                                _ = tokio::time::sleep_until(wake_at) => {}
                            }
                        }
                        None => tokio::time::sleep_until(wake_at).await,
                    }
                    continue;
                }
                Err(e) => {
                    // A timed-out call may still land; a token the backend
                    // refuses for good cannot win: both go on with a new
                    // token below.
                    unknown = e.kind() == BackendErrorKind::Timeout || e.needs_new_token();
                    LockError::from(e)
                }
            };
            let retrying = retry_while_waiting(&error) && Instant::now() < deadline;
            crate::telemetry::wait_error(key, &error, retrying);
            if !retrying {
                return Err(error);
            }
            if std::mem::take(&mut unknown) {
                // The call timed out: a copy of it may still reach the
                // store, after this wait's guard has released the lock, and
                // take it for a whole TTL. Or the backend refuses this
                // token for good (`BackendError::needs_new_token`). Go on
                // with a new token (and a new place in line); the old one
                // is given back at once, which also refuses such a copy
                // (`LockBackend::give_back`).
                token = LockToken::generate();
                ticket =
                    PendingRelease::arm(&inner.releaser, key, &token, Instant::now(), opts.ttl);
            }
            // Retried (with the same token unless the call timed out or the
            // error needs a new token)
            // before the place in line lapses.
            let delay = backoff.next_delay().min(refresh_period());
            tokio::time::sleep_until(deadline.min(Instant::now() + delay)).await;
            if Instant::now() >= deadline {
                return Err(error);
            }
            last_transient = Some(error);
        }
    }

    /// Waits until every background release submitted before this call
    /// (guards dropped without [`LockGuard::release`], acquisitions
    /// cancelled in flight) has finished or given up.
    ///
    /// Call it before a program or test ends, so that a guard dropped at
    /// the end of `main` frees its lock now instead of at the end of its
    /// TTL. Releases are shared by every clone of this `Locker` and every
    /// locker derived from it. A release that cannot succeed (the backend
    /// is down) is retried until its lease could have ended, so the wait is
    /// bounded by the longest of those leases (plus a second). Cancel safe.
    ///
    /// ```
    /// use distlock::{LockError, Locker};
    /// use distlock_memory::MemoryBackend;
    ///
    /// async fn nightly_report(locker: &Locker<MemoryBackend>) -> Result<(), LockError> {
    ///     let Some(_guard) = locker.try_lock("nightly-report").await? else {
    ///         return Ok(()); // another process runs it
    ///     };
    ///     // ... the report ...
    ///     Ok(()) // `_guard` is dropped here: its release goes to the background
    /// }
    ///
    /// #[tokio::main(flavor = "current_thread")]
    /// async fn main() -> Result<(), LockError> {
    ///     let locker = Locker::new(MemoryBackend::new());
    ///     nightly_report(&locker).await?;
    ///     locker.flush().await; // the lock is free once this returns
    ///     # assert!(!locker.inspect("nightly-report").await?.held);
    ///     Ok(())
    /// }
    /// ```
    pub async fn flush(&self) {
        self.inner.releaser.flush().await
    }

    /// The backend's view of a lock, for debugging.
    pub async fn inspect(&self, name: impl AsRef<[u8]>) -> Result<LockInfo, LockError> {
        let key = self.key(name)?;
        self.inner.releaser.adopt_orphans();
        Ok(self.inner.backend.inspect(&key).await?)
    }

    /// The guard of an acquisition whose request was sent at `sent_at`.
    fn guard(
        &self,
        key: &LockKey,
        token: LockToken,
        fence: u64,
        sent_at: Instant,
        opts: &LockOptions,
    ) -> LockGuard {
        LockGuard::new(
            key.clone(),
            token,
            fence,
            sent_at,
            opts,
            self.inner.dyn_backend.clone(),
            self.inner.releaser.clone(),
        )
    }

    /// One acquisition attempt: the guard, or the holder's remaining lease.
    pub(crate) async fn attempt(
        &self,
        key: &LockKey,
        opts: &LockOptions,
    ) -> Result<Result<LockGuard, Option<Duration>>, LockError> {
        let inner = &self.inner;
        if opts.auto_renew && tokio::runtime::Handle::try_current().is_err() {
            // Refuse before the backend is called: a lock taken now could
            // not be renewed, and no guard could be built for it.
            return Err(LockError::InvalidOptions(
                "auto_renew needs a tokio runtime to renew in; call from inside one".to_owned(),
            ));
        }
        inner.releaser.adopt_orphans();
        crate::telemetry::attempted();
        let token = LockToken::generate();
        let sent_at = Instant::now();
        // If this future is dropped mid-call, or the call fails after the
        // server may have taken the lock, release in the background.
        let pending = PendingRelease::arm(&inner.releaser, key, &token, sent_at, opts.ttl);
        let outcome = inner
            .backend
            .try_acquire(key, &token, opts.ttl, opts.owner.as_deref())
            .await?;
        if matches!(outcome, Acquire::Acquired { .. })
            && crate::guard::deadline(sent_at, opts.ttl) <= Instant::now()
        {
            // The answer came after the lease could already have run out:
            // a guard would be invalid from birth. Give the lock back (the
            // armed `pending` releases it) and report the slow backend.
            return Err(LockError::Backend(BackendError::new(
                BackendErrorKind::Timeout,
                format!(
                    "acquiring {:?} took {:?}, longer than its TTL allows ({:?}); \
                     the lock was given back",
                    key.name(),
                    sent_at.elapsed(),
                    opts.ttl
                ),
            )));
        }
        pending.disarm();
        Ok(match outcome {
            Acquire::Acquired { fence } => Ok(self.guard(key, token, fence, sent_at, opts)),
            Acquire::Held { remaining } => Err(remaining),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use super::*;
    use crate::backend::{Capabilities, Extend, Release};
    use crate::error::BackendError;
    use crate::notify::{ReleaseHub, ReleaseWatch};

    /// One lock in memory that counts acquisition attempts and notifies
    /// releases through a hub.
    #[derive(Default)]
    struct Counting {
        holder: Mutex<Option<LockToken>>,
        hub: ReleaseHub,
        attempts: AtomicUsize,
        /// The next this many attempts fail with `fail_kind`.
        failures: AtomicUsize,
        fail_kind: Mutex<Option<BackendErrorKind>>,
    }

    #[async_trait::async_trait]
    impl LockBackend for Counting {
        fn capabilities(&self) -> Capabilities {
            Capabilities::none().with_release_notify(true)
        }

        async fn try_acquire(
            &self,
            _key: &LockKey,
            token: &LockToken,
            _ttl: Duration,
            _owner: Option<&str>,
        ) -> Result<Acquire, BackendError> {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            let failing = self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if failing {
                let kind = self.fail_kind.lock().unwrap().unwrap();
                return Err(BackendError::new(kind, "injected"));
            }
            let mut holder = self.holder.lock().unwrap();
            if holder.is_some() {
                return Ok(Acquire::Held { remaining: None });
            }
            *holder = Some(token.clone());
            Ok(Acquire::Acquired { fence: 1 })
        }

        async fn extend(
            &self,
            _key: &LockKey,
            token: &LockToken,
            _ttl: Duration,
        ) -> Result<Extend, BackendError> {
            let holder = self.holder.lock().unwrap();
            Ok(if holder.as_ref() == Some(token) {
                Extend::Extended
            } else {
                Extend::NotHeld
            })
        }

        async fn release(&self, key: &LockKey, token: &LockToken) -> Result<Release, BackendError> {
            let mut holder = self.holder.lock().unwrap();
            if holder.as_ref() != Some(token) {
                return Ok(Release::NotHeld);
            }
            *holder = None;
            drop(holder);
            self.hub.notify(key.encoded());
            Ok(Release::Released)
        }

        async fn inspect(&self, _key: &LockKey) -> Result<LockInfo, BackendError> {
            Ok(LockInfo::default())
        }

        async fn watch(&self, key: &LockKey) -> Result<Option<ReleaseWatch>, BackendError> {
            Ok(Some(self.hub.watch(key)))
        }
    }

    /// A task that queued behind a sibling of its process registers for the
    /// release before its first attempt, so a handoff between two tasks of
    /// one process costs one failed attempt, not two.
    #[tokio::test]
    async fn a_task_queued_behind_a_sibling_tries_once_before_waiting() {
        let locker = Locker::new(Counting::default())
            .with_defaults(
                LockOptions::default()
                    // Only release events wake the waiters in this test.
                    .with_retry(Duration::from_secs(60), Duration::from_secs(60))
                    .with_wait_timeout(Duration::from_secs(120)),
            )
            .unwrap();
        let held = locker.try_lock("k").await.unwrap().unwrap();
        let (b, c) = (locker.clone(), locker.clone());
        let first = tokio::spawn(async move { b.lock("k").await.unwrap() });
        let second = tokio::spawn(async move { c.lock("k").await.unwrap() });
        while locker.backend().hub.watcher_count() == 0 {
            tokio::task::yield_now().await;
        }
        // The first waiter tried, registered, tried again; the second waits
        // for its turn without trying.
        assert_eq!(locker.backend().attempts.load(Ordering::SeqCst), 1 + 2);
        held.release().await.unwrap();
        let first = first.await.unwrap();
        // The second now has its turn: one attempt (the sibling holds the
        // lock), then it waits for the release.
        while locker.backend().hub.watcher_count() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(locker.backend().attempts.load(Ordering::SeqCst), 1 + 3 + 1);
        first.release().await.unwrap();
        let second = second.await.unwrap();
        assert_eq!(locker.backend().attempts.load(Ordering::SeqCst), 1 + 3 + 2);
        second.release().await.unwrap();
    }

    fn failing(kind: BackendErrorKind, failures: usize) -> Locker<Counting> {
        let backend = Counting::default();
        backend.failures.store(failures, Ordering::SeqCst);
        *backend.fail_kind.lock().unwrap() = Some(kind);
        Locker::new(backend)
            .with_defaults(
                LockOptions::default()
                    .with_retry(Duration::from_millis(10), Duration::from_millis(100))
                    .with_wait_timeout(Duration::from_secs(10)),
            )
            .unwrap()
    }

    /// Issue 10, kind 3: a waiter with time left keeps waiting through
    /// transient backend errors (a Redis restart, BUSY) and acquires once
    /// the backend answers again.
    #[tokio::test(start_paused = true)]
    async fn a_waiter_keeps_waiting_through_transient_errors() {
        for kind in [
            BackendErrorKind::Unavailable,
            BackendErrorKind::Timeout,
            BackendErrorKind::PoolExhausted,
        ] {
            let locker = failing(kind, 5);
            let started = Instant::now();
            let guard = locker.lock("k").await.unwrap();
            assert_eq!(locker.backend().attempts.load(Ordering::SeqCst), 6);
            assert!(started.elapsed() < Duration::from_secs(10), "{kind:?}");
            guard.release().await.unwrap();
        }
    }

    /// ... but only until the wait deadline, where the last error is the
    /// answer; other errors and `try_lock` end at once.
    #[tokio::test(start_paused = true)]
    async fn waiting_through_errors_ends_at_the_deadline_or_on_a_lasting_error() {
        let locker = failing(BackendErrorKind::Unavailable, usize::MAX);
        let started = Instant::now();
        let err = locker.lock("k").await.unwrap_err();
        assert_eq!(
            err.backend_error().unwrap().kind(),
            BackendErrorKind::Unavailable
        );
        assert_eq!(started.elapsed(), Duration::from_secs(10));

        let locker = failing(BackendErrorKind::Unavailable, 1);
        let err = locker.try_lock("k").await.unwrap_err();
        assert_eq!(
            err.backend_error().unwrap().kind(),
            BackendErrorKind::Unavailable
        );

        let locker = failing(BackendErrorKind::Permission, 1);
        let started = Instant::now();
        let err = locker.lock("k").await.unwrap_err();
        assert_eq!(
            err.backend_error().unwrap().kind(),
            BackendErrorKind::Permission
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(locker.backend().attempts.load(Ordering::SeqCst), 1);
    }

    /// What the fake line saw: one call.
    #[derive(Clone, Debug)]
    struct Call {
        queued: bool,
        token: LockToken,
        waiter: Option<WaiterId>,
        at: Instant,
    }

    #[derive(Default)]
    struct LineState {
        /// The holder's token and the end of its lease.
        holder: Option<(LockToken, Instant)>,
        line: std::collections::VecDeque<(WaiterId, LockToken)>,
        fence: u64,
        calls: Vec<Call>,
        releases: Vec<LockToken>,
        /// The most waiters in line at once.
        longest: usize,
        /// The reply of the next queued call that acquires comes this late.
        slow_acquired: Option<Duration>,
        /// The next this many queued calls fail (transient).
        failures: usize,
    }

    /// A fake backend with a line of waiters (the rules of
    /// `LockBackend::try_acquire_queued`, without lapsing places), that
    /// records every acquire call.
    #[derive(Default)]
    struct Line {
        state: Mutex<LineState>,
        hub: ReleaseHub,
    }

    impl LineState {
        fn live_holder(&mut self, now: Instant) -> Option<&mut (LockToken, Instant)> {
            if self.holder.as_ref().is_some_and(|(_, end)| *end <= now) {
                self.holder = None;
            }
            self.holder.as_mut()
        }

        fn take(&mut self, token: &LockToken, end: Instant) -> Acquire {
            self.fence += 1;
            self.holder = Some((token.clone(), end));
            self.line.retain(|(_, t)| t != token);
            Acquire::Acquired { fence: self.fence }
        }

        /// Hands the key to the first in line; its waiter, to wake.
        fn hand_over(&mut self, now: Instant) -> Option<WaiterId> {
            let (waiter, token) = self.line.pop_front()?;
            self.fence += 1;
            self.holder = Some((token, now + WAITER_LEASE));
            Some(waiter)
        }

        fn calls_of(&self, token: &LockToken) -> Vec<Call> {
            self.calls
                .iter()
                .filter(|c| c.token == *token)
                .cloned()
                .collect()
        }
    }

    impl Line {
        fn state(&self) -> std::sync::MutexGuard<'_, LineState> {
            self.state.lock().unwrap()
        }
    }

    impl Line {
        /// `try_acquire_queued`, at once.
        fn queued_now(
            &self,
            key: &LockKey,
            token: &LockToken,
            ttl: Duration,
            _owner: Option<&str>,
            waiter: &Waiter,
        ) -> Result<Acquire, BackendError> {
            let now = Instant::now();
            let mut st = self.state();
            st.calls.push(Call {
                queued: true,
                token: token.clone(),
                waiter: Some(waiter.id),
                at: now,
            });
            if st.failures > 0 {
                st.failures -= 1;
                return Err(BackendError::new(BackendErrorKind::Unavailable, "injected"));
            }
            let join = |st: &mut LineState| {
                if !st.line.iter().any(|(_, t)| t == token) {
                    st.line.push_back((waiter.id, token.clone()));
                }
                st.longest = st.longest.max(st.line.len());
            };
            match st.live_holder(now) {
                Some((holder, end)) if holder == token => {
                    *end = now + ttl;
                    let fence = st.fence;
                    st.line.retain(|(_, t)| t != token);
                    return Ok(Acquire::Acquired { fence });
                }
                Some((_, end)) => {
                    let remaining = *end - now;
                    join(&mut st);
                    return Ok(Acquire::Held {
                        remaining: Some(remaining),
                    });
                }
                None => {}
            }
            match st.line.front() {
                Some((_, head)) if head != token => {
                    let woken = st.hand_over(now);
                    join(&mut st);
                    drop(st);
                    if let Some(w) = woken {
                        self.hub.notify_waiter(key.encoded(), w);
                    }
                    Ok(Acquire::Held {
                        remaining: Some(WAITER_LEASE),
                    })
                }
                _ => Ok(st.take(token, now + ttl)),
            }
        }
    }

    #[async_trait::async_trait]
    impl LockBackend for Line {
        fn capabilities(&self) -> Capabilities {
            Capabilities::none()
                .with_fencing(true)
                .with_release_notify(true)
                .with_tokio_clock(true)
                .with_waiter_queue(true)
        }

        async fn try_acquire(
            &self,
            _key: &LockKey,
            token: &LockToken,
            ttl: Duration,
            _owner: Option<&str>,
        ) -> Result<Acquire, BackendError> {
            let now = Instant::now();
            let mut st = self.state();
            st.calls.push(Call {
                queued: false,
                token: token.clone(),
                waiter: None,
                at: now,
            });
            if let Some((_, end)) = st.live_holder(now) {
                return Ok(Acquire::Held {
                    remaining: Some(*end - now),
                });
            }
            Ok(st.take(token, now + ttl))
        }

        async fn try_acquire_queued(
            &self,
            key: &LockKey,
            token: &LockToken,
            ttl: Duration,
            owner: Option<&str>,
            waiter: &Waiter,
        ) -> Result<Acquire, BackendError> {
            let outcome = self.queued_now(key, token, ttl, owner, waiter);
            if matches!(outcome, Ok(Acquire::Acquired { .. })) {
                let slow = self.state().slow_acquired.take();
                if let Some(late) = slow {
                    tokio::time::sleep(late).await;
                }
            }
            outcome
        }

        async fn extend(
            &self,
            _key: &LockKey,
            token: &LockToken,
            ttl: Duration,
        ) -> Result<Extend, BackendError> {
            let now = Instant::now();
            let mut st = self.state();
            Ok(match st.live_holder(now) {
                Some((holder, end)) if holder == token => {
                    *end = now + ttl;
                    Extend::Extended
                }
                _ => Extend::NotHeld,
            })
        }

        async fn release(&self, key: &LockKey, token: &LockToken) -> Result<Release, BackendError> {
            let now = Instant::now();
            let mut st = self.state();
            st.releases.push(token.clone());
            if !st.live_holder(now).is_some_and(|(h, _)| h == token) {
                st.line.retain(|(_, t)| t != token);
                return Ok(Release::NotHeld);
            }
            st.holder = None;
            let woken = st.hand_over(now);
            drop(st);
            match woken {
                Some(w) => {
                    self.hub.notify_waiter(key.encoded(), w);
                }
                None => self.hub.notify(key.encoded()),
            }
            Ok(Release::Released)
        }

        async fn inspect(&self, _key: &LockKey) -> Result<LockInfo, BackendError> {
            Ok(LockInfo::default())
        }

        async fn watch(&self, key: &LockKey) -> Result<Option<ReleaseWatch>, BackendError> {
            Ok(Some(self.hub.watch(key)))
        }

        async fn watch_queued(
            &self,
            key: &LockKey,
            waiter: &Waiter,
        ) -> Result<Option<ReleaseWatch>, BackendError> {
            Ok(Some(self.hub.watch_waiter(key, waiter.id)))
        }
    }

    /// Two lockers (separate per-process queues) over one fake line: the
    /// first holds, the second waits. A 30 s TTL, long retries.
    fn line() -> (Arc<Line>, Locker<Line>, Locker<Line>) {
        let backend = Arc::new(Line::default());
        let opts = LockOptions::default()
            .with_ttl(Duration::from_secs(30))
            .with_retry(Duration::from_secs(60), Duration::from_secs(60))
            .with_wait_timeout(Duration::from_secs(60));
        let holder = Locker::from_arc(backend.clone())
            .with_defaults(opts.clone())
            .unwrap();
        let waiter = Locker::from_arc(backend.clone())
            .with_defaults(opts)
            .unwrap();
        (backend, holder, waiter)
    }

    /// Lets the spawned tasks run until `done` holds (a paused clock moves
    /// on only when every task is idle).
    async fn until(backend: &Line, done: impl Fn(&LineState) -> bool) {
        let give_up = Instant::now() + Duration::from_secs(600);
        while !done(&backend.state()) {
            assert!(Instant::now() < give_up, "the condition never held");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Core 1: one `lock()` sends the same token and waiter id on every
    /// call (the cold first call, the join, the refreshes, the claim); the
    /// next `lock()` uses a new pair.
    #[tokio::test(start_paused = true)]
    async fn one_lock_call_keeps_one_token_and_one_waiter_id() {
        let (backend, holder, waiter) = line();
        let held = holder.try_lock("k").await.unwrap().unwrap();
        let first = {
            let waiter = waiter.clone();
            tokio::spawn(async move { waiter.lock("k").await.unwrap() })
        };
        until(&backend, |st| st.line.len() == 1).await;
        tokio::time::sleep(Duration::from_secs(1)).await; // a few refreshes
        held.release().await.unwrap();
        let got = first.await.unwrap();
        let pairs = |st: &LineState, from: usize| {
            let calls = &st.calls[from..];
            let token = calls[0].token.clone();
            assert!(calls.iter().all(|c| c.token == token), "{calls:?}");
            assert!(!calls[0].queued, "a cold key: the first call is plain");
            let ids: std::collections::HashSet<_> = calls.iter().filter_map(|c| c.waiter).collect();
            assert_eq!(ids.len(), 1, "{calls:?}");
            assert!(calls.len() >= 2 + 5, "join, refreshes, claim: {calls:?}");
            (token, *ids.iter().next().unwrap())
        };
        let (g1, w1) = pairs(&backend.state(), 1);
        assert_eq!(backend.state().holder.as_ref().unwrap().0, g1);
        // The next lock() (hot now: it joins with its first call).
        let from = backend.state().calls.len();
        let second = {
            let waiter = waiter.clone();
            tokio::spawn(async move { waiter.lock("k").await.unwrap() })
        };
        until(&backend, |st| st.line.len() == 1).await;
        assert!(
            backend.state().calls[from].queued,
            "a hot key joins at once"
        );
        got.release().await.unwrap();
        let got = second.await.unwrap();
        {
            let st = backend.state();
            let calls = &st.calls[from..];
            assert!(calls.iter().all(|c| c.token == calls[0].token));
            assert!(calls.iter().all(|c| c.waiter == calls[0].waiter));
            assert_ne!(calls[0].token, g1);
            assert_ne!(calls[0].waiter, Some(w1));
        }
        got.release().await.unwrap();
    }

    /// Core 2: three tasks of one locker wait for one key: only the first
    /// of them is in the backend's line at a time, and each gets the lock.
    #[tokio::test(start_paused = true)]
    async fn one_place_in_line_per_process_and_key() {
        let (backend, holder, waiter) = line();
        let held = holder.try_lock("k").await.unwrap().unwrap();
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                let waiter = waiter.clone();
                tokio::spawn(async move {
                    let guard = waiter.lock("k").await.unwrap();
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    guard.release().await.unwrap();
                })
            })
            .collect();
        until(&backend, |st| st.line.len() == 1).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        held.release().await.unwrap();
        for task in tasks {
            task.await.unwrap();
        }
        let st = backend.state();
        assert_eq!(
            st.longest, 1,
            "one waiter of this process in line at a time"
        );
        let ids: std::collections::HashSet<_> = st.calls.iter().filter_map(|c| c.waiter).collect();
        assert_eq!(ids.len(), 3, "one waiter id per lock() call");
        assert!(st.line.is_empty());
    }

    /// Core 3: a `lock()` dropped while in line gives its place back in
    /// the background: after `flush()`, the backend saw `release(key, G)`
    /// for the call's token, the line is empty and nobody watches.
    #[tokio::test(start_paused = true)]
    async fn a_dropped_queued_wait_gives_its_place_back() {
        let (backend, holder, waiter) = line();
        let held = holder.try_lock("k").await.unwrap().unwrap();
        let pending = waiter.lock("k");
        assert!(
            tokio::time::timeout(Duration::from_secs(1), pending)
                .await
                .is_err(),
            "held: still waiting"
        );
        let token = backend.state().calls[1].token.clone();
        assert_eq!(backend.state().line.len(), 1, "in line until the flush");
        waiter.flush().await;
        {
            let st = backend.state();
            assert_eq!(st.releases, vec![token]);
            assert!(st.line.is_empty());
        }
        assert_eq!(backend.hub.watcher_count(), 0);
        held.release().await.unwrap();
        assert!(backend.state().holder.is_none(), "nobody to hand it to");
    }

    /// Core 4: a transient error on a queued call is retried with the same
    /// token (no release in between), and the wait still acquires.
    #[tokio::test(start_paused = true)]
    async fn a_transient_error_in_line_is_retried_with_the_same_token() {
        let (backend, holder, waiter) = line();
        let waiter = waiter
            .with_defaults(
                LockOptions::default()
                    .with_ttl(Duration::from_secs(30))
                    .with_retry(Duration::from_millis(10), Duration::from_millis(50))
                    .with_wait_timeout(Duration::from_secs(60)),
            )
            .unwrap();
        let held = holder.try_lock("k").await.unwrap().unwrap();
        let holder_token = backend.state().calls[0].token.clone();
        backend.state().failures = 3;
        let task = {
            let waiter = waiter.clone();
            tokio::spawn(async move { waiter.lock("k").await.unwrap() })
        };
        until(&backend, |st| st.failures == 0 && st.line.len() == 1).await;
        held.release().await.unwrap();
        let got = task.await.unwrap();
        waiter.flush().await;
        {
            let st = backend.state();
            let token = st.calls[1].token.clone();
            assert!(st.calls[1..].iter().all(|c| c.token == token));
            assert!(st.calls.len() >= 1 + 1 + 3 + 2, "{:?}", st.calls);
            assert_eq!(
                st.releases,
                vec![holder_token],
                "no release of the waiter's token"
            );
            assert_eq!(st.holder.as_ref().unwrap().0, token);
        }
        got.release().await.unwrap();
    }

    /// Core 5: in line behind a long lease, a waiter calls again every
    /// third of the waiter lease (±10 %), so a 2 s wait makes 12 ± 1
    /// refreshing calls; behind a lease ending at 200 ms, a call comes at
    /// 201 ms and takes the lock.
    #[tokio::test(start_paused = true)]
    async fn queued_calls_come_every_third_of_the_lease_and_after_the_holder() {
        let (backend, holder, waiter) = line();
        let key = holder.key("k").unwrap();
        let held = holder.try_lock("k").await.unwrap().unwrap();
        let start = Instant::now();
        let wait = Duration::from_secs(2);
        let result = waiter.lock_with("k", |o| o.with_wait_timeout(wait)).await;
        assert!(
            matches!(result, Err(LockError::TimedOut { .. })),
            "{result:?}"
        );
        assert_eq!(start.elapsed(), wait);
        let r = WAITER_LEASE / 3;
        // tokio's timer fires on whole milliseconds (rounding up).
        let (lo, hi) = (r - r / 10, r + r / 10 + Duration::from_millis(1));
        let token = backend.state().calls[1].token.clone();
        let queued: Vec<Instant> = backend
            .state()
            .calls_of(&token)
            .iter()
            .filter(|c| c.queued)
            .map(|c| c.at)
            .collect();
        assert_eq!(queued[0], start, "joins right after the cold call");
        // A last call at the deadline (it could still claim a handover),
        // as the plain path makes a last attempt there.
        let (last, queued) = queued.split_last().unwrap();
        assert_eq!(*last, start + wait);
        for pair in queued.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap >= lo && gap <= hi,
                "refresh gap {gap:?}: {:?}",
                queued.iter().map(|t| *t - start).collect::<Vec<_>>()
            );
        }
        let last = *queued.last().unwrap();
        assert!(
            start + wait - last < hi,
            "no refresh missed before the deadline"
        );
        // 2 s ÷ (R ± 10 %): 10 to 13 refreshes after the join (12 ± 1 in
        // all but rare draws of the jitter).
        assert!((11..=14).contains(&queued.len()), "{} calls", queued.len());
        waiter.flush().await;
        held.release().await.unwrap();

        // Behind a lease that ends at 200 ms.
        let short = LockToken::generate();
        let got = backend
            .try_acquire(&key, &short, Duration::from_millis(200), None)
            .await
            .unwrap();
        assert!(matches!(got, Acquire::Acquired { .. }));
        let start = Instant::now();
        let guard = waiter.lock("k").await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(201));
        let last = backend.state().calls.last().unwrap().clone();
        assert!(last.queued);
        assert_eq!(last.at - start, Duration::from_millis(201));
        guard.release().await.unwrap();
    }

    /// Core 6 (with `a_task_queued_behind_a_sibling_tries_once_before_waiting`
    /// for backends without the line): a zero wait or a TTL shorter than the
    /// waiter lease keeps the plain path on a backend with a line.
    #[tokio::test(start_paused = true)]
    async fn short_ttls_and_zero_waits_stay_out_of_line() {
        let (backend, holder, waiter) = line();
        let held = holder.try_lock("k").await.unwrap().unwrap();
        let zero = waiter
            .lock_with("k", |o| o.with_wait_timeout(Duration::ZERO))
            .await;
        assert!(matches!(zero, Err(LockError::TimedOut { .. })), "{zero:?}");
        let short = waiter
            .lock_with("k", |o| {
                o.with_ttl(WAITER_LEASE - Duration::from_millis(1))
                    .with_wait_timeout(Duration::from_secs(1))
                    .with_retry(Duration::from_millis(50), Duration::from_millis(100))
            })
            .await;
        assert!(
            matches!(short, Err(LockError::TimedOut { .. })),
            "{short:?}"
        );
        {
            let st = backend.state();
            assert!(st.calls.iter().all(|c| !c.queued), "{:?}", st.calls);
            assert!(st.line.is_empty());
        }
        held.release().await.unwrap();
    }

    /// A claim whose reply arrives after its lease could have ended gives
    /// no guard (invalid from birth); the wait goes on with the same token,
    /// and the guard it returns counts its lease from the send time of the
    /// call that acquired. Nothing is released in between.
    #[tokio::test(start_paused = true)]
    async fn a_late_claim_is_not_a_guard_and_the_wait_goes_on_with_the_same_token() {
        let (backend, holder, waiter) = line();
        let ttl = Duration::from_secs(1);
        let held = holder.try_lock("k").await.unwrap().unwrap();
        backend.state().slow_acquired = Some(ttl);
        let task = {
            let waiter = waiter.clone();
            tokio::spawn(async move { waiter.lock_with("k", |o| o.with_ttl(ttl)).await })
        };
        until(&backend, |st| st.line.len() == 1).await;
        held.release().await.unwrap();
        let guard = task.await.unwrap().unwrap();
        waiter.flush().await;
        {
            let st = backend.state();
            let token = st.calls[1].token.clone();
            assert!(st.calls[1..].iter().all(|c| c.token == token));
            let last = st.calls.last().unwrap();
            assert!(last.queued);
            assert_eq!(
                guard.valid_until(),
                crate::guard::deadline(last.at, ttl),
                "the lease counts from the call that acquired"
            );
            assert!(guard.is_valid());
            assert_eq!(
                st.releases.len(),
                1,
                "only the holder's release: {:?}",
                st.releases
            );
            assert_eq!(st.holder.as_ref().unwrap().0, token);
        }
        guard.release().await.unwrap();
    }
}
