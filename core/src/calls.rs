//! The per-call API of [`Locker`]: options that start from the locker's
//! defaults, the try-lock that reports the holder, and running work under a
//! lock (plain, fallible, and with the "lease held" outcome).

use std::future::Future;
use std::time::Duration;

use crate::backend::{LockBackend, Release};
use crate::error::LockError;
use crate::guard::{Lease, LockGuard};
use crate::locker::Locker;
use crate::options::LockOptions;

/// The outcome of [`Locker::try_lock_or_holder`]: the lock, or what the
/// backend said about the current holder.
#[derive(Debug)]
#[must_use = "an acquired lock is released when this is dropped"]
pub enum TryLock {
    /// The lock was free and is ours now.
    Acquired(LockGuard),
    /// Somebody (maybe a task of this process) holds the lock.
    Held(Holder),
}

impl TryLock {
    /// The guard, if the lock was acquired.
    pub fn guard(self) -> Option<LockGuard> {
        match self {
            TryLock::Acquired(guard) => Some(guard),
            TryLock::Held(_) => None,
        }
    }
}

/// What the acquisition attempt learnt about the holder of a busy lock, in
/// the same round trip (no second call that could race with the holder).
///
/// The owner label is not included: the backends' acquire reply does not
/// carry it. Use [`Locker::inspect`] for it (a second round trip).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Holder {
    /// The lock name.
    pub name: String,
    /// The holder's remaining lease when the backend answered, if the
    /// backend reports it (the memory and Redis backends do).
    pub remaining: Option<Duration>,
}

/// The result of work run under a lock by [`Locker::guarded`], together with
/// whether the lease was still held when the work ended.
#[derive(Debug)]
#[must_use = "check `lease_held` before trusting that the work ran alone"]
pub struct Guarded<T> {
    /// What the work returned.
    pub value: T,
    /// True if the lease was still ours when the work finished: no other
    /// holder could have taken the lock while it ran. False if it was lost
    /// (renewal found it taken, its validity deadline passed, or the release
    /// found it gone): the work ran, but maybe not alone until its end.
    pub lease_held: bool,
    /// The lock name.
    pub name: String,
}

impl<T> Guarded<T> {
    /// `Ok(value)` if the lease was held to the end, else
    /// [`LockError::NotHeld`] (the value is dropped).
    pub fn into_result(self) -> Result<T, LockError> {
        if self.lease_held {
            Ok(self.value)
        } else {
            Err(LockError::NotHeld { name: self.name })
        }
    }
}

impl<B: LockBackend> Locker<B> {
    /// The options one `*_with` call uses: this locker's
    /// [defaults](Locker::defaults) with `configure` applied.
    ///
    /// ```
    /// use std::time::Duration;
    /// use distlock::{LockOptions, Locker};
    /// use distlock_memory::MemoryBackend;
    ///
    /// # fn main() -> Result<(), distlock::LockError> {
    /// let locker = Locker::new(MemoryBackend::new())
    ///     .with_defaults(LockOptions::default().with_owner("report-worker-3"))?;
    /// let once = locker.options(|o| o.with_wait_timeout(Duration::ZERO));
    /// assert_eq!(once.owner.as_deref(), Some("report-worker-3")); // kept
    /// assert_eq!(once.wait_timeout, Duration::ZERO);
    /// # Ok(()) }
    /// ```
    pub fn options(&self, configure: impl FnOnce(LockOptions) -> LockOptions) -> LockOptions {
        configure(self.defaults().clone())
    }

    /// [`Locker::try_lock`] with options changed for this call only.
    /// `configure` receives this locker's defaults and returns the options to
    /// use, so owner, TTL and renewal settings you do not touch stay as the
    /// locker has them:
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use distlock::{LockOptions, Locker};
    /// # use distlock_memory::MemoryBackend;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), distlock::LockError> {
    /// # let locker = Locker::new(MemoryBackend::new());
    /// let guard = locker
    ///     .try_lock_with("invoice:42", |o| o.with_ttl(Duration::from_secs(5)))
    ///     .await?;
    /// # drop(guard); Ok(()) }
    /// ```
    ///
    /// To ignore the defaults, return complete options: `|_| my_options.clone()`.
    #[must_use = "an acquired lock is released as soon as the guard is dropped"]
    pub async fn try_lock_with(
        &self,
        name: impl AsRef<[u8]>,
        configure: impl FnOnce(LockOptions) -> LockOptions,
    ) -> Result<Option<LockGuard>, LockError> {
        self.try_lock_opts(name, &self.options(configure)).await
    }

    /// [`Locker::lock`] with options changed for this call only; see
    /// [`Locker::try_lock_with`] for how `configure` works.
    pub async fn lock_with(
        &self,
        name: impl AsRef<[u8]>,
        configure: impl FnOnce(LockOptions) -> LockOptions,
    ) -> Result<LockGuard, LockError> {
        self.lock_opts(name, &self.options(configure)).await
    }

    /// One attempt, like [`Locker::try_lock_with`], that reports what the
    /// backend said about the holder when the lock is busy (from the same
    /// round trip). Use `|o| o` for the defaults.
    ///
    /// ```
    /// use distlock::{Locker, TryLock};
    /// use distlock_memory::MemoryBackend;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), distlock::LockError> {
    /// let locker = Locker::new(MemoryBackend::new());
    /// let _held = locker.lock("nightly-report").await?;
    /// match locker.try_lock_or_holder("nightly-report", |o| o).await? {
    ///     TryLock::Acquired(_guard) => unreachable!("held above"),
    ///     TryLock::Held(holder) => println!("busy for {:?} more", holder.remaining),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn try_lock_or_holder(
        &self,
        name: impl AsRef<[u8]>,
        configure: impl FnOnce(LockOptions) -> LockOptions,
    ) -> Result<TryLock, LockError> {
        let opts = self.options(configure);
        opts.validate()?;
        let key = self.key(name)?;
        let attempt = crate::telemetry::acquire(&key, false, self.attempt(&key, &opts));
        Ok(match attempt.await? {
            Ok(guard) => TryLock::Acquired(guard),
            Err(remaining) => TryLock::Held(Holder {
                name: key.name().to_owned(),
                remaining,
            }),
        })
    }

    /// Runs `f` while holding the lock (waiting as [`Locker::lock`] does),
    /// then releases it, also when `f` panics (the guard is dropped while
    /// unwinding and released in the background).
    ///
    /// `f` gets a [`Lease`] to check for loss and to read the fencing token.
    /// If the lock turned out to be lost when `f` finished, the result is
    /// [`LockError::NotHeld`]: `f` ran, but exclusion was not guaranteed
    /// until its end ([`Locker::guarded`] returns `f`'s value in that case
    /// too). For work that returns a `Result`, see [`Locker::try_with_lock`].
    pub async fn with_lock<F, Fut, T>(&self, name: impl AsRef<[u8]>, f: F) -> Result<T, LockError>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = T>,
    {
        self.guarded_with(name, |o| o, f).await?.into_result()
    }

    /// [`Locker::with_lock`] with options changed for this call only (see
    /// [`Locker::try_lock_with`]).
    pub async fn with_lock_with<F, Fut, T>(
        &self,
        name: impl AsRef<[u8]>,
        configure: impl FnOnce(LockOptions) -> LockOptions,
        f: F,
    ) -> Result<T, LockError>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = T>,
    {
        self.guarded_with(name, configure, f).await?.into_result()
    }

    /// [`Locker::with_lock`] for work that can fail: one `Result` with your
    /// error type, which must convert from [`LockError`] (waiting as
    /// [`Locker::lock`] does).
    ///
    /// Returns `f`'s error if `f` failed, else [`LockError::NotHeld`]
    /// (converted) if the lease was lost before `f` finished, else `f`'s
    /// value. Failing to take the lock is the [`LockError`], converted.
    ///
    /// ```
    /// use distlock::{LockError, Locker};
    /// use distlock_memory::MemoryBackend;
    ///
    /// #[derive(Debug)]
    /// enum JobError { Lock(LockError), Payment(String) }
    /// impl From<LockError> for JobError {
    ///     fn from(e: LockError) -> Self { JobError::Lock(e) }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), JobError> {
    /// let locker = Locker::new(MemoryBackend::new());
    /// let receipt = locker
    ///     .try_with_lock("charge:order-1234", |lease| async move {
    ///         if lease.fence() == 0 {
    ///             return Err(JobError::Payment("declined".into()));
    ///         }
    ///         Ok(format!("charged with fence {}", lease.fence()))
    ///     })
    ///     .await?;
    /// # assert!(receipt.starts_with("charged")); Ok(()) }
    /// ```
    pub async fn try_with_lock<F, Fut, T, E>(&self, name: impl AsRef<[u8]>, f: F) -> Result<T, E>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<LockError>,
    {
        self.try_with_lock_with(name, |o| o, f).await
    }

    /// [`Locker::try_with_lock`] with options changed for this call only (see
    /// [`Locker::try_lock_with`]).
    pub async fn try_with_lock_with<F, Fut, T, E>(
        &self,
        name: impl AsRef<[u8]>,
        configure: impl FnOnce(LockOptions) -> LockOptions,
        f: F,
    ) -> Result<T, E>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<LockError>,
    {
        let done = self.guarded_with(name, configure, f).await?;
        match done.value {
            Err(e) => Err(e),
            Ok(_) if !done.lease_held => Err(LockError::NotHeld { name: done.name }.into()),
            Ok(value) => Ok(value),
        }
    }

    /// Runs `f` under the lock like [`Locker::with_lock`], and returns its
    /// value **together with** whether the lease was held until `f`
    /// finished, so partial progress can be reported when the lease was
    /// lost. Errors only if the lock could not be taken.
    ///
    /// ```
    /// use distlock::Locker;
    /// use distlock_memory::MemoryBackend;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), distlock::LockError> {
    /// let locker = Locker::new(MemoryBackend::new());
    /// let done = locker.guarded("reindex", |_lease| async { 42 /* rows done */ }).await?;
    /// if !done.lease_held {
    ///     eprintln!("lease lost after {} rows; another worker may have run too", done.value);
    /// }
    /// # assert!(done.lease_held); Ok(()) }
    /// ```
    pub async fn guarded<F, Fut, T>(
        &self,
        name: impl AsRef<[u8]>,
        f: F,
    ) -> Result<Guarded<T>, LockError>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = T>,
    {
        self.guarded_with(name, |o| o, f).await
    }

    /// [`Locker::guarded`] with options changed for this call only (see
    /// [`Locker::try_lock_with`]).
    pub async fn guarded_with<F, Fut, T>(
        &self,
        name: impl AsRef<[u8]>,
        configure: impl FnOnce(LockOptions) -> LockOptions,
        f: F,
    ) -> Result<Guarded<T>, LockError>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = T>,
    {
        let guard = self.lock_opts(name, &self.options(configure)).await?;
        let lease = guard.lease();
        let value = f(lease.clone()).await;
        let name = guard.name().to_owned();
        // Lost before the work ended (renewal found it gone, or the deadline
        // passed): exclusion was not guaranteed, whatever release says.
        let lost = lease.is_lost();
        let lease_held = match guard.release().await {
            Ok(Release::Released) => !lost,
            Ok(Release::NotHeld) => false,
            Err(e) => {
                if !lost {
                    // The release is retried in the background; the work is
                    // done and the lease was valid until it ended.
                    tracing::warn!(lock = %lease.state.key(), error = %e, "release after the work failed");
                }
                !lost
            }
        };
        Ok(Guarded {
            value,
            lease_held,
            name,
        })
    }
}
