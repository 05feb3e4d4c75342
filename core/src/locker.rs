//! The application-facing entry point.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::{Acquire, LockBackend, LockInfo};
use crate::error::{BackendError, BackendErrorKind, LockError};
use crate::guard::LockGuard;
use crate::key::LockKey;
use crate::options::LockOptions;
use crate::releaser::{PendingRelease, Releaser};
use crate::token::LockToken;
use crate::wait::{retry_while_waiting, within, Backoff, Turns};

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
    /// Cancel safe: dropping the future at any point leaves no lock held (an
    /// acquisition that was in flight is released in the background) and no
    /// waiter registered.
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
        let mut watch = None;
        if turn.waited() {
            // A task of this process went first and most likely holds the
            // lock now: register before the first attempt, so that a failed
            // attempt needs no immediate retry (one round trip less per
            // handoff between tasks of one process).
            watch = within(bound, self.inner.backend.watch(key))
                .await
                .ok_or_else(timed_out)??;
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
                    tracing::debug!(lock = %key.name(), error = %e, "transient error while waiting; retrying");
                    let wake_at = deadline.min(Instant::now() + backoff.next_delay());
                    tokio::time::sleep_until(wake_at).await;
                    if Instant::now() >= deadline {
                        return Err(e);
                    }
                    last_transient = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(timed_out());
            }
            if watch.is_none() {
                // Register before the next attempt so no release is missed;
                // an immediate retry covers a release in between.
                watch = within(bound, self.inner.backend.watch(key))
                    .await
                    .ok_or_else(timed_out)??;
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
            Acquire::Acquired { fence } => Ok(LockGuard::new(
                key.clone(),
                token,
                fence,
                sent_at,
                opts,
                inner.dyn_backend.clone(),
                inner.releaser.clone(),
            )),
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
}
