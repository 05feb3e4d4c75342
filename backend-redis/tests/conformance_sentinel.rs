//! The distlock conformance suite over a Redis Sentinel group (one primary,
//! two replicas, three sentinels; real processes).

use std::sync::OnceLock;
use std::time::Duration;

use distlock_conformance::Harness;
use distlock_redis::redis;
use distlock_redis::testkit::SentinelGroup;
use distlock_redis::{LockKey, RedisBackend, RedisConfig};

fn group() -> &'static SentinelGroup {
    static GROUP: OnceLock<SentinelGroup> = OnceLock::new();
    GROUP.get_or_init(SentinelGroup::start)
}

struct SentinelHarness;

#[distlock_conformance::async_trait]
impl Harness for SentinelHarness {
    type Backend = RedisBackend;

    async fn client(&self) -> RedisBackend {
        let g = group();
        let config =
            RedisConfig::new("redis://primary").with_sentinel(g.master_name(), g.sentinel_urls());
        RedisBackend::from_config(&config).expect("a valid Sentinel config")
    }

    async fn expire_now(&self, client: &RedisBackend, key: &LockKey) {
        let keys = client.keys(key);
        let mut conn = redis::Client::open(group().primary_url())
            .expect("a valid URL")
            .get_multiplexed_async_connection()
            .await
            .expect("connecting to the primary");
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

distlock_conformance::suite!(SentinelHarness);
