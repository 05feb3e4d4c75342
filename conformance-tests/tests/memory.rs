//! The conformance suite against the in-memory backend, on a paused clock.

use distlock::LockKey;
use distlock_conformance::Harness;
use distlock_memory::MemoryBackend;

/// Every client shares one store, as clients of one server would.
struct MemoryHarness {
    store: MemoryBackend,
}

#[distlock_conformance::async_trait]
impl Harness for MemoryHarness {
    type Backend = MemoryBackend;

    async fn client(&self) -> MemoryBackend {
        self.store.clone()
    }

    async fn expire_now(&self, client: &MemoryBackend, key: &LockKey) {
        client.expire_now(key);
    }

    fn registered_waiters(&self, client: &MemoryBackend) -> Option<usize> {
        Some(client.registered_waiters())
    }

    fn paused_clock(&self) -> bool {
        true
    }
}

distlock_conformance::suite!(MemoryHarness {
    store: MemoryBackend::new()
});
