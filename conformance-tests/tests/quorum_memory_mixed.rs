//! The conformance suite against a quorum of three in-memory members, one
//! of which (listed first, so it is the gate) sends no release
//! notifications and keeps no line of waiters, as a third-party backend
//! without them would: the quorum then offers neither (its capabilities
//! are what every member offers), and must behave as a backend without
//! them. On a paused clock.
//!
//! Found by a backend author's trial: such a quorum still returned a watch
//! while reporting `release_notify: false`, and failed two cases.

use std::sync::Arc;
use std::time::Duration;

use distlock::{
    Acquire, BackendError, Capabilities, LockBackend, LockKey, LockToken, Quorum, ReleaseWatch,
    Waiter,
};
use distlock_conformance::wrapper::{Hooks, Wrapped};
use distlock_conformance::{BoxError, Harness, SetupError};
use distlock_memory::MemoryBackend;

/// Hides the memory backend's release notifications and line of waiters.
struct Plain;

#[distlock_conformance::async_trait]
impl Hooks<MemoryBackend> for Plain {
    fn capabilities(&self, inner: &MemoryBackend) -> Capabilities {
        inner
            .capabilities()
            .with_release_notify(false)
            .with_waiter_queue(false)
    }

    async fn watch(
        &self,
        _inner: &MemoryBackend,
        _key: &LockKey,
    ) -> Result<Option<ReleaseWatch>, BackendError> {
        Ok(None)
    }

    async fn try_acquire_queued(
        &self,
        inner: &MemoryBackend,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
        _waiter: &Waiter,
    ) -> Result<Acquire, BackendError> {
        inner.try_acquire(key, token, ttl, owner).await
    }

    async fn watch_queued(
        &self,
        _inner: &MemoryBackend,
        _key: &LockKey,
        _waiter: &Waiter,
    ) -> Result<Option<ReleaseWatch>, BackendError> {
        Ok(None)
    }
}

struct MixedQuorumHarness {
    stores: Vec<MemoryBackend>,
    plain: Arc<dyn Hooks<MemoryBackend>>,
}

impl MixedQuorumHarness {
    fn members(&self, stores: &[MemoryBackend]) -> Vec<Arc<dyn LockBackend>> {
        let first: Arc<dyn LockBackend> =
            Arc::new(Wrapped::with_shared(stores[0].clone(), self.plain.clone()));
        let mut members = vec![first];
        for store in &stores[1..] {
            members.push(Arc::new(store.clone()));
        }
        members
    }
}

#[distlock_conformance::async_trait]
impl Harness for MixedQuorumHarness {
    type Backend = Quorum;
    const PAUSED_CLOCK: bool = true;

    async fn setup() -> Result<Self, SetupError> {
        Ok(MixedQuorumHarness {
            stores: (0..3).map(|_| MemoryBackend::new()).collect(),
            plain: Arc::new(Plain),
        })
    }

    async fn client(&self) -> Result<Quorum, BoxError> {
        Ok(Quorum::new(self.members(&self.stores))?)
    }

    async fn expire_now(&self, _client: &Quorum, key: &LockKey) -> Result<(), BoxError> {
        for store in &self.stores {
            store.expire_now(key);
        }
        Ok(())
    }

    async fn unreachable_client(&self) -> Result<Option<Quorum>, BoxError> {
        let down: Vec<MemoryBackend> = (0..3)
            .map(|_| {
                let store = MemoryBackend::new();
                store.set_unavailable(true);
                store
            })
            .collect();
        Ok(Some(Quorum::new(self.members(&down))?))
    }
}

distlock_conformance::suite!(MixedQuorumHarness);
