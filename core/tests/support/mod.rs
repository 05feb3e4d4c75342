//! A memory backend with injectable faults, shared by the core tests.
#![allow(dead_code)] // each test binary uses some of the faults

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use distlock::{
    async_trait, Acquire, BackendError, BackendErrorKind, Capabilities, Extend, LockBackend,
    LockInfo, LockKey, LockToken, Release, ReleaseWatch,
};
use distlock_memory::MemoryBackend;

/// Forwards to `inner`, except:
/// - the next `fail_acquires` acquires fail with `Unavailable` at once;
/// - `try_acquire` waits `acquire_stall` before doing anything (a stalled
///   server) and answers `acquire_delay` after doing its work (a slow
///   reply); `watch` waits `watch_stall` first;
/// - `extend`/`release` fail with `Unavailable` (nothing applied) while
///   `down` is set, and the next `fail_releases` releases fail the same way;
///   releases fail with `Permission` while `forbid_releases` is set;
/// - `extend` is applied `extend_delay` after the call, by a detached task
///   (the request is on the wire: dropping the call does not stop it);
/// - the next `extend_unknown` extends are applied and then answered with a
///   `Timeout` error (the reply was lost).
#[derive(Default)]
pub struct Faulty {
    pub inner: MemoryBackend,
    pub acquire_delay: Duration,
    pub acquire_stall: Duration,
    pub watch_stall: Duration,
    pub down: Arc<AtomicBool>,
    pub fail_releases: Arc<AtomicUsize>,
    pub extend_delay: Duration,
    pub extend_unknown: Arc<AtomicUsize>,
    /// While set, releases fail with `Permission` (a permanent error).
    pub forbid_releases: Arc<AtomicBool>,
    /// Counts release calls.
    pub releases: Arc<AtomicUsize>,
    /// The next this many acquires fail at once with `Unavailable` (before
    /// any stall).
    pub fail_acquires: Arc<AtomicUsize>,
    /// Counts acquire calls.
    pub acquires: Arc<AtomicUsize>,
}

impl Faulty {
    fn check_up(&self) -> Result<(), BackendError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(BackendError::new(BackendErrorKind::Unavailable, "down"));
        }
        Ok(())
    }
}

/// Takes one from `n` if it is above zero.
fn take_one(n: &AtomicUsize) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        .is_ok()
}

#[async_trait]
impl LockBackend for Faulty {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn try_acquire(
        &self,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
    ) -> Result<Acquire, BackendError> {
        self.acquires.fetch_add(1, Ordering::SeqCst);
        if take_one(&self.fail_acquires) {
            return Err(BackendError::new(BackendErrorKind::Unavailable, "refused"));
        }
        if !self.acquire_stall.is_zero() {
            tokio::time::sleep(self.acquire_stall).await;
        }
        let outcome = self.inner.try_acquire(key, token, ttl, owner).await;
        if !self.acquire_delay.is_zero() {
            tokio::time::sleep(self.acquire_delay).await;
        }
        outcome
    }
    async fn extend(
        &self,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
    ) -> Result<Extend, BackendError> {
        self.check_up()?;
        if !self.extend_delay.is_zero() {
            let (inner, key, token, delay) = (
                self.inner.clone(),
                key.clone(),
                token.clone(),
                self.extend_delay,
            );
            let applied = tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                inner.extend(&key, &token, ttl).await
            });
            return applied.await.expect("extend task");
        }
        let outcome = self.inner.extend(key, token, ttl).await;
        if take_one(&self.extend_unknown) {
            return Err(BackendError::new(BackendErrorKind::Timeout, "reply lost"));
        }
        outcome
    }
    async fn release(&self, key: &LockKey, token: &LockToken) -> Result<Release, BackendError> {
        self.releases.fetch_add(1, Ordering::SeqCst);
        self.check_up()?;
        if self.forbid_releases.load(Ordering::SeqCst) {
            return Err(BackendError::new(BackendErrorKind::Permission, "NOPERM"));
        }
        if take_one(&self.fail_releases) {
            return Err(BackendError::new(BackendErrorKind::Unavailable, "refused"));
        }
        self.inner.release(key, token).await
    }
    async fn inspect(&self, key: &LockKey) -> Result<LockInfo, BackendError> {
        self.inner.inspect(key).await
    }
    async fn watch(&self, key: &LockKey) -> Result<Option<ReleaseWatch>, BackendError> {
        if !self.watch_stall.is_zero() {
            tokio::time::sleep(self.watch_stall).await;
        }
        self.inner.watch(key).await
    }
}
