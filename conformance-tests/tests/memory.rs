//! The conformance suite against the in-memory backend, on a paused clock.

use distlock::LockKey;
use distlock_conformance::{BoxError, CapabilityReport, Harness, SetupError};
use distlock_memory::MemoryBackend;

/// Every client shares one store, as clients of one server would.
struct MemoryHarness {
    store: MemoryBackend,
}

#[distlock_conformance::async_trait]
impl Harness for MemoryHarness {
    type Backend = MemoryBackend;
    const PAUSED_CLOCK: bool = true;

    async fn setup() -> Result<Self, SetupError> {
        Ok(MemoryHarness {
            store: MemoryBackend::new(),
        })
    }

    async fn client(&self) -> Result<MemoryBackend, BoxError> {
        Ok(self.store.clone())
    }

    async fn expire_now(&self, client: &MemoryBackend, key: &LockKey) -> Result<(), BoxError> {
        client.expire_now(key);
        Ok(())
    }

    fn registered_waiters(&self, client: &MemoryBackend) -> Option<usize> {
        Some(client.registered_waiters())
    }

    async fn unreachable_client(&self) -> Result<Option<MemoryBackend>, BoxError> {
        // Another store with its fault switch on: the shared one stays up
        // for the cases running in parallel.
        let down = MemoryBackend::new();
        down.set_unavailable(true);
        Ok(Some(down))
    }
}

distlock_conformance::suite!(MemoryHarness);

/// Our own harness provides every hook and the memory backend every
/// capability the suite gates on: nothing may be skipped.
#[tokio::test(start_paused = true)]
async fn memory_harness_skips_nothing() {
    let h = MemoryHarness::setup().await.unwrap();
    let report = CapabilityReport::of(&h).await.unwrap();
    assert!(report.is_consistent(), "{report}");
    assert!(report.skipped.is_empty(), "{report}");
}
