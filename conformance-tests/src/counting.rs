//! Counting and slowing down calls, as [`Hooks`] of a [`Wrapped`] backend.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use distlock::{Acquire, BackendError, Extend, LockBackend, LockKey, LockToken, Release, Waiter};

use crate::wrapper::{Hooks, Wrapped};

/// Counts the calls that could change lock state. Optionally makes them
/// slow, so that a caller's cancellation lands in the middle of them on
/// every backend.
#[derive(Default)]
pub(crate) struct Counting {
    acquires: AtomicUsize,
    /// Acquire calls answered `Held`.
    held: AtomicUsize,
    changes: AtomicUsize,
    delay: Duration,
}

/// A backend wrapped with [`Counting`], and the counters to read.
pub(crate) struct Counted<B> {
    pub(crate) backend: Wrapped<B>,
    counts: Arc<Counting>,
}

impl<B: LockBackend> Counted<B> {
    /// `inner` with counted calls.
    pub(crate) fn new(inner: B) -> Self {
        Self::with_delay(inner, Duration::ZERO)
    }

    /// `inner` with counted calls; every acquire reply comes `delay`
    /// late (after the backend acted, like a slow network) and every
    /// `release` request `delay` late (before the backend acts).
    pub(crate) fn with_delay(inner: B, delay: Duration) -> Self {
        let counts = Arc::new(Counting {
            delay,
            ..Counting::default()
        });
        let backend = Wrapped::with_shared(inner, counts.clone());
        Self { backend, counts }
    }

    /// Another client, `inner`, wrapped with the same counters (several
    /// clients counted together).
    pub(crate) fn also(&self, inner: B) -> Wrapped<B> {
        Wrapped::with_shared(inner, self.counts.clone())
    }

    /// How many acquire calls (`try_acquire` and `try_acquire_queued`)
    /// were made.
    pub(crate) fn acquires(&self) -> usize {
        self.counts.acquires.load(Ordering::SeqCst)
    }

    /// How many acquire calls were answered [`Acquire::Held`].
    pub(crate) fn held(&self) -> usize {
        self.counts.held.load(Ordering::SeqCst)
    }

    /// How many acquire (both kinds), `extend` and `release` calls were
    /// made.
    pub(crate) fn calls(&self) -> usize {
        self.counts.changes.load(Ordering::SeqCst)
    }
}

impl Counting {
    fn count_held(&self, outcome: &Result<Acquire, BackendError>) {
        if matches!(outcome, Ok(Acquire::Held { .. })) {
            self.held.fetch_add(1, Ordering::SeqCst);
        }
    }

    async fn pause(&self) {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
    }
}

#[async_trait]
impl<B: LockBackend> Hooks<B> for Counting {
    async fn try_acquire(
        &self,
        inner: &B,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
    ) -> Result<Acquire, BackendError> {
        self.acquires.fetch_add(1, Ordering::SeqCst);
        self.changes.fetch_add(1, Ordering::SeqCst);
        let outcome = inner.try_acquire(key, token, ttl, owner).await;
        self.count_held(&outcome);
        self.pause().await;
        outcome
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
        self.acquires.fetch_add(1, Ordering::SeqCst);
        self.changes.fetch_add(1, Ordering::SeqCst);
        let outcome = inner
            .try_acquire_queued(key, token, ttl, owner, waiter)
            .await;
        self.count_held(&outcome);
        self.pause().await;
        outcome
    }

    async fn extend(
        &self,
        inner: &B,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
    ) -> Result<Extend, BackendError> {
        self.changes.fetch_add(1, Ordering::SeqCst);
        inner.extend(key, token, ttl).await
    }

    async fn release(
        &self,
        inner: &B,
        key: &LockKey,
        token: &LockToken,
    ) -> Result<Release, BackendError> {
        self.changes.fetch_add(1, Ordering::SeqCst);
        self.pause().await;
        inner.release(key, token).await
    }
}
