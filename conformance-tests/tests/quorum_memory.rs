//! The conformance suite against a quorum of three in-memory members, on a
//! paused clock.

use distlock::{LockKey, Quorum};
use distlock_conformance::Harness;
use distlock_memory::MemoryBackend;

/// Three independent stores; every client is a new quorum over them, as
/// clients of three servers would be.
struct QuorumHarness {
    stores: Vec<MemoryBackend>,
}

#[distlock_conformance::async_trait]
impl Harness for QuorumHarness {
    type Backend = Quorum;

    async fn client(&self) -> Quorum {
        Quorum::new(self.stores.iter().cloned()).expect("three distinct stores")
    }

    async fn expire_now(&self, _client: &Quorum, key: &LockKey) {
        for store in &self.stores {
            store.expire_now(key);
        }
    }

    fn registered_waiters(&self, client: &Quorum) -> Option<usize> {
        Some(client.registered_waiters())
    }

    fn paused_clock(&self) -> bool {
        true
    }
}

distlock_conformance::suite!(QuorumHarness {
    stores: vec![
        MemoryBackend::new(),
        MemoryBackend::new(),
        MemoryBackend::new()
    ]
});
