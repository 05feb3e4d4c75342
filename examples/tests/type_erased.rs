//! A locker whose backend is chosen at run time (`Locker<Arc<dyn
//! LockBackend>>`) still gets release notifications, in memory and on a
//! real Redis: a waiter whose polling would retry only after a minute gets
//! the lock right after the holder releases it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use distlock::{LockBackend, LockOptions, Locker};
use distlock_memory::MemoryBackend;
use distlock_redis::testkit::RedisServer;
use distlock_redis::RedisBackend;

/// The waiter's polling interval: far longer than a notified handoff takes.
const POLL: Duration = Duration::from_secs(60);

/// How many waiters of the waiting client are registered for releases.
type Registered = Box<dyn Fn() -> usize + Send>;

/// Two clients of one store, as two processes would have, chosen at run
/// time, and a probe of the waiting client's registered waiters.
fn clients(kind: &str) -> (Arc<dyn LockBackend>, Arc<dyn LockBackend>, Registered) {
    match kind {
        "memory" => {
            let store = MemoryBackend::new();
            let probe = store.clone();
            (
                Arc::new(store.clone()),
                Arc::new(store),
                Box::new(move || probe.registered_waiters()),
            )
        }
        _ => {
            let url = RedisServer::shared().url();
            let waiting = RedisBackend::from_url(url).unwrap();
            let probe = waiting.clone();
            (
                Arc::new(RedisBackend::from_url(url).unwrap()),
                Arc::new(waiting),
                Box::new(move || probe.registered_waiters()),
            )
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_erased_locker_is_woken_by_releases() {
    for kind in ["memory", "redis"] {
        let (holder_backend, waiter_backend, registered) = clients(kind);
        assert!(waiter_backend.capabilities().release_notify, "{kind}");
        let opts = LockOptions::default()
            .with_ttl(Duration::from_secs(120))
            .with_wait_timeout(Duration::from_secs(300))
            .with_retry(POLL, POLL);
        let prefix = format!("type-erased-{}", std::process::id());
        let holder: Locker<Arc<dyn LockBackend>> = Locker::new(holder_backend)
            .with_prefix(prefix.clone())
            .unwrap()
            .with_defaults(opts.clone())
            .unwrap();
        let waiter: Locker<Arc<dyn LockBackend>> = Locker::new(waiter_backend)
            .with_prefix(prefix)
            .unwrap()
            .with_defaults(opts)
            .unwrap();

        let held = holder.try_lock("k").await.unwrap().expect("free");
        let task = {
            let waiter = waiter.clone();
            tokio::spawn(async move {
                let guard = waiter.lock("k").await.unwrap();
                let got = Instant::now();
                guard.release().await.unwrap();
                got
            })
        };
        // The waiter has tried once and registered for the release.
        while registered() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let released = Instant::now();
        held.release().await.unwrap();
        let got = task.await.unwrap();
        let handoff = got.duration_since(released);
        println!("{kind}: handoff after {handoff:?}");
        // Polling would have taken a minute; a notified handoff takes a few
        // round trips. The bound is generous for a loaded machine.
        assert!(handoff < POLL / 3, "{kind}: handoff took {handoff:?}");
    }
}
