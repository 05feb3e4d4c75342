//! The conformance suite against a quorum of three in-memory members, on a
//! paused clock.

use distlock::{LockKey, Quorum};
use distlock_conformance::{BoxError, Harness, SetupError};
use distlock_memory::MemoryBackend;

/// Three independent stores; every client is a new quorum over them, as
/// clients of three servers would be.
struct QuorumHarness {
    stores: Vec<MemoryBackend>,
}

#[distlock_conformance::async_trait]
impl Harness for QuorumHarness {
    type Backend = Quorum;
    const PAUSED_CLOCK: bool = true;

    async fn setup() -> Result<Self, SetupError> {
        Ok(QuorumHarness {
            stores: vec![
                MemoryBackend::new(),
                MemoryBackend::new(),
                MemoryBackend::new(),
            ],
        })
    }

    async fn client(&self) -> Result<Quorum, BoxError> {
        Ok(Quorum::new(self.stores.iter().cloned())?)
    }

    async fn expire_now(&self, _client: &Quorum, key: &LockKey) -> Result<(), BoxError> {
        for store in &self.stores {
            store.expire_now(key);
        }
        Ok(())
    }

    fn registered_waiters(&self, client: &Quorum) -> Option<usize> {
        Some(client.registered_waiters())
    }

    async fn unreachable_client(&self) -> Result<Option<Quorum>, BoxError> {
        // Three other stores with their fault switches on.
        let down: Vec<MemoryBackend> = (0..3)
            .map(|_| {
                let store = MemoryBackend::new();
                store.set_unavailable(true);
                store
            })
            .collect();
        Ok(Some(Quorum::new(down)?))
    }
}

distlock_conformance::suite!(QuorumHarness);
