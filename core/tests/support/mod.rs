//! A memory backend with injectable faults, shared by the core tests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use distlock::{
    async_trait, Acquire, BackendError, BackendErrorKind, Capabilities, Extend, LockBackend,
    LockInfo, LockKey, LockToken, Release,
};
use distlock_memory::MemoryBackend;

/// Forwards to `inner`, except: `try_acquire` answers `acquire_delay` after
/// doing its work (a slow reply), and `extend`/`release` fail with
/// `Unavailable` while `down` is set.
#[derive(Default)]
pub struct Faulty {
    pub inner: MemoryBackend,
    pub acquire_delay: Duration,
    pub down: Arc<AtomicBool>,
}

impl Faulty {
    fn check_up(&self) -> Result<(), BackendError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(BackendError::new(BackendErrorKind::Unavailable, "down"));
        }
        Ok(())
    }
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
        self.inner.extend(key, token, ttl).await
    }
    async fn release(&self, key: &LockKey, token: &LockToken) -> Result<Release, BackendError> {
        self.check_up()?;
        self.inner.release(key, token).await
    }
    async fn inspect(&self, key: &LockKey) -> Result<LockInfo, BackendError> {
        self.inner.inspect(key).await
    }
}
