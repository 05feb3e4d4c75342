//! Helpers shared by the release-notification test binaries.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use distlock_redis::redis::{self, aio::MultiplexedConnection};
use distlock_redis::LockKey;

/// The TTL of locks these tests take.
pub const TTL: Duration = Duration::from_secs(30);

/// A lock key unique to this process and call.
pub fn key(case: &str) -> LockKey {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "notifications:{case}:{}:{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    LockKey::new("tests", name).unwrap()
}

/// A plain connection for inspecting the server.
pub async fn raw(url: &str) -> MultiplexedConnection {
    let client = redis::Client::open(url).unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .expect("connect in time")
    .unwrap()
}

/// `PUBSUB NUMSUB channel`: how many connections listen to `channel`.
pub async fn listeners(conn: &mut MultiplexedConnection, channel: &str) -> u64 {
    let reply: (String, u64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(conn)
        .await
        .unwrap();
    reply.1
}

/// Polls `check` until it holds (10 s at most).
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
