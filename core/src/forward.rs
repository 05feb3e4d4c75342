//! `LockBackend` for smart pointers, so a backend chosen at run time works:
//! `Locker<Arc<dyn LockBackend>>` or `Locker<Box<dyn LockBackend>>`.
//!
//! Every method is forwarded, the optional ones included (`watch`,
//! `capabilities`, `give_back`, ...): a wrapper that kept the trait's
//! default `watch` would compile and silently lose release notifications,
//! and one that kept the default `give_back` would give tokens back without
//! the backend's protection against late copies.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::backend::{Acquire, Capabilities, Extend, LockBackend, LockInfo, Release};
use crate::error::BackendError;
use crate::key::LockKey;
use crate::notify::ReleaseWatch;
use crate::token::LockToken;

macro_rules! forward_lock_backend {
    ($pointer:ident) => {
        /// Forwards every method to the pointed-to backend.
        #[async_trait]
        impl<T: LockBackend + ?Sized> LockBackend for $pointer<T> {
            fn capabilities(&self) -> Capabilities {
                (**self).capabilities()
            }

            async fn try_acquire(
                &self,
                key: &LockKey,
                token: &LockToken,
                ttl: Duration,
                owner: Option<&str>,
            ) -> Result<Acquire, BackendError> {
                (**self).try_acquire(key, token, ttl, owner).await
            }

            async fn extend(
                &self,
                key: &LockKey,
                token: &LockToken,
                ttl: Duration,
            ) -> Result<Extend, BackendError> {
                (**self).extend(key, token, ttl).await
            }

            async fn release(
                &self,
                key: &LockKey,
                token: &LockToken,
            ) -> Result<Release, BackendError> {
                (**self).release(key, token).await
            }

            async fn give_back(
                &self,
                key: &LockKey,
                token: &LockToken,
            ) -> Result<Release, BackendError> {
                (**self).give_back(key, token).await
            }

            async fn inspect(&self, key: &LockKey) -> Result<LockInfo, BackendError> {
                (**self).inspect(key).await
            }

            async fn watch(&self, key: &LockKey) -> Result<Option<ReleaseWatch>, BackendError> {
                (**self).watch(key).await
            }

            async fn raise_fence(
                &self,
                key: &LockKey,
                token: &LockToken,
                at_least: u64,
            ) -> Result<crate::RaiseFence, BackendError> {
                (**self).raise_fence(key, token, at_least).await
            }

            fn identity(&self) -> Option<String> {
                (**self).identity()
            }

            async fn try_acquire_queued(
                &self,
                key: &LockKey,
                token: &LockToken,
                ttl: Duration,
                owner: Option<&str>,
                waiter: &crate::Waiter,
            ) -> Result<Acquire, BackendError> {
                (**self)
                    .try_acquire_queued(key, token, ttl, owner, waiter)
                    .await
            }

            async fn watch_queued(
                &self,
                key: &LockKey,
                waiter: &crate::Waiter,
            ) -> Result<Option<ReleaseWatch>, BackendError> {
                (**self).watch_queued(key, waiter).await
            }
        }
    };
}

forward_lock_backend!(Arc);
forward_lock_backend!(Box);
