//! Hooks whose calls stall, so that every backend can be checked against a
//! server that stops answering for a while.

use std::time::Duration;

use async_trait::async_trait;
use distlock::{Acquire, BackendError, LockBackend, LockKey, LockToken, ReleaseWatch, Waiter};

use crate::wrapper::Hooks;

/// Both acquire calls (`try_acquire`, `try_acquire_queued`) wait
/// `before_acquire` before they forward (a request stuck on its way) and
/// `after_acquire` after the backend acted (a reply stuck on its way back);
/// both watches wait `before_watch` before they register. Everything else
/// forwards at once.
#[derive(Clone, Copy, Default)]
pub(crate) struct Stalls {
    pub(crate) before_acquire: Duration,
    pub(crate) after_acquire: Duration,
    pub(crate) before_watch: Duration,
}

async fn stall(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

#[async_trait]
impl<B: LockBackend> Hooks<B> for Stalls {
    async fn try_acquire(
        &self,
        inner: &B,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
    ) -> Result<Acquire, BackendError> {
        stall(self.before_acquire).await;
        let outcome = inner.try_acquire(key, token, ttl, owner).await;
        stall(self.after_acquire).await;
        outcome
    }

    async fn watch(&self, inner: &B, key: &LockKey) -> Result<Option<ReleaseWatch>, BackendError> {
        stall(self.before_watch).await;
        inner.watch(key).await
    }

    async fn try_acquire_queued(
        &self,
        inner: &B,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
        waiter: &Waiter,
    ) -> Result<Acquire, BackendError> {
        stall(self.before_acquire).await;
        let outcome = inner
            .try_acquire_queued(key, token, ttl, owner, waiter)
            .await;
        stall(self.after_acquire).await;
        outcome
    }

    async fn watch_queued(
        &self,
        inner: &B,
        key: &LockKey,
        waiter: &Waiter,
    ) -> Result<Option<ReleaseWatch>, BackendError> {
        stall(self.before_watch).await;
        inner.watch_queued(key, waiter).await
    }
}
