//! A backend wrapper whose calls stall, so that every backend can be
//! checked against a server that stops answering for a while.

use std::time::Duration;

use async_trait::async_trait;
use distlock::{
    Acquire, BackendError, Capabilities, Extend, LockBackend, LockInfo, LockKey, LockToken,
    Release, ReleaseWatch,
};

/// Forwards to `inner`; `try_acquire` waits `before_acquire` before it
/// forwards (a request stuck on its way) and `after_acquire` after the
/// backend acted (a reply stuck on its way back); `watch` waits
/// `before_watch` before it registers.
#[derive(Clone)]
pub(crate) struct Stalling<B> {
    pub(crate) inner: B,
    pub(crate) before_acquire: Duration,
    pub(crate) after_acquire: Duration,
    pub(crate) before_watch: Duration,
}

impl<B> Stalling<B> {
    pub(crate) fn new(inner: B) -> Self {
        Self {
            inner,
            before_acquire: Duration::ZERO,
            after_acquire: Duration::ZERO,
            before_watch: Duration::ZERO,
        }
    }
}

async fn stall(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

#[async_trait]
impl<B: LockBackend> LockBackend for Stalling<B> {
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
        stall(self.before_acquire).await;
        let outcome = self.inner.try_acquire(key, token, ttl, owner).await;
        stall(self.after_acquire).await;
        outcome
    }

    async fn extend(
        &self,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
    ) -> Result<Extend, BackendError> {
        self.inner.extend(key, token, ttl).await
    }

    async fn release(&self, key: &LockKey, token: &LockToken) -> Result<Release, BackendError> {
        self.inner.release(key, token).await
    }

    async fn inspect(&self, key: &LockKey) -> Result<LockInfo, BackendError> {
        self.inner.inspect(key).await
    }

    async fn watch(&self, key: &LockKey) -> Result<Option<ReleaseWatch>, BackendError> {
        stall(self.before_watch).await;
        self.inner.watch(key).await
    }
}
