//! The distlock conformance suite over a Redis Cluster (three primaries,
//! three replicas; real processes).

use std::sync::OnceLock;
use std::time::Duration;

use distlock_conformance::Harness;
use distlock_redis::redis;
use distlock_redis::testkit::RedisCluster;
use distlock_redis::{LockKey, RedisBackend, RedisConfig};

fn cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(RedisCluster::start)
}

struct ClusterHarness;

#[distlock_conformance::async_trait]
impl Harness for ClusterHarness {
    type Backend = RedisBackend;

    async fn client(&self) -> RedisBackend {
        let nodes = cluster().node_urls();
        let config = RedisConfig::new(nodes[0].clone()).with_cluster(nodes[1..].to_vec());
        RedisBackend::from_config(&config).expect("a valid Cluster config")
    }

    async fn expire_now(&self, client: &RedisBackend, key: &LockKey) {
        let keys = client.keys(key);
        let slot = cluster().key_slot(&keys.lock);
        let primary = cluster().primary_of_slot(slot);
        let mut conn = redis::Client::open(primary.url)
            .expect("a valid URL")
            .get_multiplexed_async_connection()
            .await
            .expect("connecting to the slot's primary");
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

distlock_conformance::suite!(ClusterHarness);
