//! The distlock conformance suite against Redis (the shared test server).

use std::time::Duration;

use distlock_conformance::Harness;
use distlock_redis::redis;
use distlock_redis::testkit::RedisServer;
use distlock_redis::{LockKey, RedisBackend};

/// Every client is a new backend with its own pool and subscriber, on the
/// one shared server.
struct RedisHarness;

#[distlock_conformance::async_trait]
impl Harness for RedisHarness {
    type Backend = RedisBackend;

    async fn client(&self) -> RedisBackend {
        RedisBackend::from_url(RedisServer::shared().url()).expect("a valid test URL")
    }

    async fn expire_now(&self, client: &RedisBackend, key: &LockKey) {
        let keys = client.keys(key);
        let mut conn = redis::Client::open(RedisServer::shared().url())
            .expect("a valid test URL")
            .get_multiplexed_async_connection()
            .await
            .expect("connecting to the test server");
        // Behind the holder's back, without a release notification.
        let _: i64 = redis::cmd("DEL")
            .arg(&keys.lock)
            .arg(&keys.owner)
            .query_async(&mut conn)
            .await
            .expect("DEL");
    }

    fn registered_waiters(&self, client: &RedisBackend) -> Option<usize> {
        Some(client.registered_waiters())
    }

    fn timing_slack(&self) -> Duration {
        Duration::from_millis(400)
    }
}

distlock_conformance::suite!(RedisHarness);
