//! One backend wrapper for fault injection and call counting.
//!
//! [`Wrapped`] puts a [`Hooks`] value between a [`Locker`](distlock::Locker)
//! and a backend. Every hook method receives the inner backend and the
//! call's arguments; the provided methods simply forward, so a hook
//! overrides only the calls it changes. The suite uses it to count what
//! reaches a backend, to slow replies down, and (in its self-test) to build
//! deliberately broken backends that the suite must catch. Backend authors
//! can use it the same way in their own tests.
//!
//! ```
//! use std::time::Duration;
//! use distlock::{BackendError, LockBackend, LockKey, LockToken, Locker, Release};
//! use distlock_conformance::wrapper::{Hooks, Wrapped};
//! use distlock_memory::MemoryBackend;
//!
//! /// A broken backend: release reports success even when it did nothing.
//! struct ReleaseAlwaysSucceeds;
//!
//! #[distlock_conformance::async_trait]
//! impl<B: LockBackend> Hooks<B> for ReleaseAlwaysSucceeds {
//!     async fn release(
//!         &self,
//!         inner: &B,
//!         key: &LockKey,
//!         token: &LockToken,
//!     ) -> Result<Release, BackendError> {
//!         inner.release(key, token).await?;
//!         Ok(Release::Released)
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let broken = Wrapped::new(MemoryBackend::new(), ReleaseAlwaysSucceeds);
//! let guard = Locker::new(broken).try_lock("job").await.unwrap().unwrap();
//! assert_eq!(guard.release().await.unwrap(), Release::Released);
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use distlock::{
    Acquire, BackendError, Capabilities, Extend, LockBackend, LockInfo, LockKey, LockToken,
    Release, ReleaseWatch, Waiter,
};

/// What a [`Wrapped`] backend does on each call. Every method defaults to
/// forwarding the call to `inner` unchanged.
#[async_trait]
pub trait Hooks<B: LockBackend>: Send + Sync + 'static {
    /// The capabilities the wrapped backend reports (default: `inner`'s).
    ///
    /// Hooks that change [`try_acquire`](Hooks::try_acquire) or
    /// [`watch`](Hooks::watch) must change the queued variants
    /// ([`try_acquire_queued`](Hooks::try_acquire_queued),
    /// [`watch_queued`](Hooks::watch_queued)) the same way, or report
    /// [`waiter_queue: false`](Capabilities::waiter_queue) here: a
    /// [`Locker`](distlock::Locker) waits through the queued variants on a
    /// backend with a line of waiters, and would go around the hook.
    fn capabilities(&self, inner: &B) -> Capabilities {
        inner.capabilities()
    }

    /// [`LockBackend::try_acquire`].
    async fn try_acquire(
        &self,
        inner: &B,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
    ) -> Result<Acquire, BackendError> {
        inner.try_acquire(key, token, ttl, owner).await
    }

    /// [`LockBackend::extend`].
    async fn extend(
        &self,
        inner: &B,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
    ) -> Result<Extend, BackendError> {
        inner.extend(key, token, ttl).await
    }

    /// [`LockBackend::release`].
    async fn release(
        &self,
        inner: &B,
        key: &LockKey,
        token: &LockToken,
    ) -> Result<Release, BackendError> {
        inner.release(key, token).await
    }

    /// [`LockBackend::inspect`].
    async fn inspect(&self, inner: &B, key: &LockKey) -> Result<LockInfo, BackendError> {
        inner.inspect(key).await
    }

    /// [`LockBackend::watch`].
    async fn watch(&self, inner: &B, key: &LockKey) -> Result<Option<ReleaseWatch>, BackendError> {
        inner.watch(key).await
    }

    /// [`LockBackend::try_acquire_queued`].
    async fn try_acquire_queued(
        &self,
        inner: &B,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
        waiter: &Waiter,
    ) -> Result<Acquire, BackendError> {
        inner
            .try_acquire_queued(key, token, ttl, owner, waiter)
            .await
    }

    /// [`LockBackend::watch_queued`].
    async fn watch_queued(
        &self,
        inner: &B,
        key: &LockKey,
        waiter: &Waiter,
    ) -> Result<Option<ReleaseWatch>, BackendError> {
        inner.watch_queued(key, waiter).await
    }
}

/// A backend `B` with [`Hooks`] around every call. Clones share the hooks
/// (and whatever state they keep).
pub struct Wrapped<B> {
    inner: B,
    hooks: Arc<dyn Hooks<B>>,
}

impl<B: LockBackend> Wrapped<B> {
    /// Wraps `inner` with `hooks`.
    pub fn new(inner: B, hooks: impl Hooks<B>) -> Self {
        Self {
            inner,
            hooks: Arc::new(hooks),
        }
    }

    /// Wraps `inner` with hooks already shared elsewhere (to read their
    /// state, such as counters, from the test).
    pub fn with_shared(inner: B, hooks: Arc<dyn Hooks<B>>) -> Self {
        Self { inner, hooks }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }
}

impl<B: Clone> Clone for Wrapped<B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            hooks: self.hooks.clone(),
        }
    }
}

#[async_trait]
impl<B: LockBackend> LockBackend for Wrapped<B> {
    fn capabilities(&self) -> Capabilities {
        self.hooks.capabilities(&self.inner)
    }

    async fn try_acquire(
        &self,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
    ) -> Result<Acquire, BackendError> {
        self.hooks
            .try_acquire(&self.inner, key, token, ttl, owner)
            .await
    }

    async fn extend(
        &self,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
    ) -> Result<Extend, BackendError> {
        self.hooks.extend(&self.inner, key, token, ttl).await
    }

    async fn release(&self, key: &LockKey, token: &LockToken) -> Result<Release, BackendError> {
        self.hooks.release(&self.inner, key, token).await
    }

    async fn inspect(&self, key: &LockKey) -> Result<LockInfo, BackendError> {
        self.hooks.inspect(&self.inner, key).await
    }

    async fn watch(&self, key: &LockKey) -> Result<Option<ReleaseWatch>, BackendError> {
        self.hooks.watch(&self.inner, key).await
    }

    async fn try_acquire_queued(
        &self,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
        waiter: &Waiter,
    ) -> Result<Acquire, BackendError> {
        self.hooks
            .try_acquire_queued(&self.inner, key, token, ttl, owner, waiter)
            .await
    }

    async fn watch_queued(
        &self,
        key: &LockKey,
        waiter: &Waiter,
    ) -> Result<Option<ReleaseWatch>, BackendError> {
        self.hooks.watch_queued(&self.inner, key, waiter).await
    }

    // Not hooked: forwarded as they are, so a wrapped backend can still be
    // a quorum member.
    async fn give_back(&self, key: &LockKey, token: &LockToken) -> Result<Release, BackendError> {
        self.inner.give_back(key, token).await
    }

    async fn raise_fence(
        &self,
        key: &LockKey,
        token: &LockToken,
        at_least: u64,
    ) -> Result<distlock::RaiseFence, BackendError> {
        self.inner.raise_fence(key, token, at_least).await
    }

    fn identity(&self) -> Option<String> {
        self.inner.identity()
    }
}
