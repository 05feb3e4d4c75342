//! The distlock conformance suite over a Redis Cluster (three primaries,
//! three replicas; real processes shared by every case).

use std::sync::OnceLock;
use std::time::Duration;

use distlock_conformance::{BoxError, Harness, SetupError};
use distlock_redis::testkit::{self, RedisCluster};
use distlock_redis::{LockKey, RedisBackend, RedisConfig};

fn cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(RedisCluster::start)
}

/// Every client is a new backend (own cluster connection and subscriber).
struct ClusterHarness {
    config: RedisConfig,
}

#[distlock_conformance::async_trait]
impl Harness for ClusterHarness {
    type Backend = RedisBackend;

    async fn setup() -> Result<Self, SetupError> {
        // Starting the cluster blocks (processes, `redis-cli --cluster create`).
        let nodes = tokio::task::spawn_blocking(|| cluster().node_urls())
            .await
            .map_err(SetupError::failed)?;
        let config = RedisConfig::new(nodes[0].clone()).with_cluster(nodes[1..].to_vec());
        Ok(Self { config })
    }

    async fn client(&self) -> Result<RedisBackend, BoxError> {
        Ok(RedisBackend::from_config(&self.config)?)
    }

    async fn expire_now(&self, client: &RedisBackend, key: &LockKey) -> Result<(), BoxError> {
        let keys = client.keys(key);
        let lock_key = keys.lock.clone();
        // The slot's primary, asked of the cluster (blocking calls).
        let primary = tokio::task::spawn_blocking(move || {
            let c = cluster();
            c.primary_of_slot(c.key_slot(&lock_key)).url
        })
        .await?;
        Ok(testkit::delete_lock(&primary, &keys).await?)
    }

    fn registered_waiters(&self, client: &RedisBackend) -> Option<usize> {
        Some(client.registered_waiters())
    }

    async fn unreachable_client(&self) -> Result<Option<RedisBackend>, BoxError> {
        // A seed at a loopback port nothing listens on.
        let port = testkit::closed_loopback_port()?;
        let config = RedisConfig::new(format!("redis://127.0.0.1:{port}"))
            .with_cluster(Vec::<String>::new());
        Ok(Some(RedisBackend::from_config(&config)?))
    }

    fn timing_slack(&self) -> Duration {
        Duration::from_millis(400)
    }
}

distlock_conformance::suite!(ClusterHarness);
