//! A backend wrapper that counts calls, to check what reaches the backend.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use distlock::{
    Acquire, BackendError, Capabilities, Extend, LockBackend, LockInfo, LockKey, LockToken,
    RaiseFence, Release, ReleaseWatch,
};

/// Wraps a backend and counts the calls that could change lock state.
/// Optionally makes calls slow, so that a caller's cancellation lands in
/// the middle of them on every backend.
#[derive(Clone)]
pub(crate) struct Counting<B> {
    inner: B,
    acquires: Arc<AtomicUsize>,
    changes: Arc<AtomicUsize>,
    delay: Duration,
}

impl<B: LockBackend> Counting<B> {
    pub(crate) fn new(inner: B) -> Self {
        Self {
            inner,
            acquires: Arc::default(),
            changes: Arc::default(),
            delay: Duration::ZERO,
        }
    }

    /// Makes every `try_acquire` reply `delay` late (after the backend
    /// acted, like a slow network) and every `release` request `delay` late
    /// (before the backend acts).
    pub(crate) fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    async fn pause(&self) {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
    }

    /// How many `try_acquire` calls were made.
    pub(crate) fn acquires(&self) -> usize {
        self.acquires.load(Ordering::SeqCst)
    }

    /// How many `try_acquire`, `extend` and `release` calls were made.
    pub(crate) fn calls(&self) -> usize {
        self.changes.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl<B: LockBackend> LockBackend for Counting<B> {
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
        self.changes.fetch_add(1, Ordering::SeqCst);
        let outcome = self.inner.try_acquire(key, token, ttl, owner).await;
        self.pause().await;
        outcome
    }

    async fn extend(
        &self,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
    ) -> Result<Extend, BackendError> {
        self.changes.fetch_add(1, Ordering::SeqCst);
        self.inner.extend(key, token, ttl).await
    }

    async fn release(&self, key: &LockKey, token: &LockToken) -> Result<Release, BackendError> {
        self.changes.fetch_add(1, Ordering::SeqCst);
        self.pause().await;
        self.inner.release(key, token).await
    }

    async fn inspect(&self, key: &LockKey) -> Result<LockInfo, BackendError> {
        self.inner.inspect(key).await
    }

    async fn watch(&self, key: &LockKey) -> Result<Option<ReleaseWatch>, BackendError> {
        self.inner.watch(key).await
    }

    async fn raise_fence(
        &self,
        key: &LockKey,
        token: &LockToken,
        at_least: u64,
    ) -> Result<RaiseFence, BackendError> {
        self.inner.raise_fence(key, token, at_least).await
    }

    fn identity(&self) -> Option<String> {
        self.inner.identity()
    }
}
