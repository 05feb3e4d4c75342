//! The conformance suite against a quorum of one in-memory member, on a
//! paused clock: a one-member quorum passes every call through, the line
//! of waiters (`try_acquire_queued`, `watch_queued`) included.

use distlock::{LockKey, Quorum};
use distlock_conformance::{BoxError, CapabilityReport, Harness, SetupError};
use distlock_memory::MemoryBackend;

/// One store; every client is a new one-member quorum over it.
struct SingleHarness {
    store: MemoryBackend,
}

#[distlock_conformance::async_trait]
impl Harness for SingleHarness {
    type Backend = Quorum;
    const PAUSED_CLOCK: bool = true;

    async fn setup() -> Result<Self, SetupError> {
        Ok(SingleHarness {
            store: MemoryBackend::new(),
        })
    }

    async fn client(&self) -> Result<Quorum, BoxError> {
        Ok(Quorum::new([self.store.clone()])?)
    }

    async fn expire_now(&self, _client: &Quorum, key: &LockKey) -> Result<(), BoxError> {
        self.store.expire_now(key);
        Ok(())
    }

    fn registered_waiters(&self, client: &Quorum) -> Option<usize> {
        Some(client.registered_waiters())
    }

    async fn unreachable_client(&self) -> Result<Option<Quorum>, BoxError> {
        let down = MemoryBackend::new();
        down.set_unavailable(true);
        Ok(Some(Quorum::new([down])?))
    }
}

distlock_conformance::suite!(SingleHarness);

/// The pass-through keeps the member's line of waiters.
#[tokio::test(start_paused = true)]
async fn a_one_member_quorum_has_the_members_line() {
    let h = SingleHarness::setup().await.unwrap();
    let report = CapabilityReport::of(&h).await.unwrap();
    assert!(report.is_consistent(), "{report}");
    assert!(report.capabilities.waiter_queue, "{report}");
}
