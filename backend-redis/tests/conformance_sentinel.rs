//! The distlock conformance suite over a Redis Sentinel group (one primary,
//! two replicas, three sentinels; real processes shared by every case).

use std::sync::OnceLock;
use std::time::Duration;

use distlock_conformance::{BoxError, Harness, SetupError};
use distlock_redis::testkit::{self, SentinelGroup};
use distlock_redis::{LockKey, RedisBackend, RedisConfig};

fn group() -> &'static SentinelGroup {
    static GROUP: OnceLock<SentinelGroup> = OnceLock::new();
    GROUP.get_or_init(SentinelGroup::start)
}

/// Every client is a new backend (own connection and subscriber) that
/// finds the primary through the sentinels.
struct SentinelHarness {
    config: RedisConfig,
    primary: String,
}

#[distlock_conformance::async_trait]
impl Harness for SentinelHarness {
    type Backend = RedisBackend;

    async fn setup() -> Result<Self, SetupError> {
        // Starting the group blocks (processes, sentinels finding each other).
        let (config, primary) = tokio::task::spawn_blocking(|| {
            let g = group();
            (
                RedisConfig::new("redis://primary")
                    .with_sentinel(g.master_name(), g.sentinel_urls()),
                g.primary_url(),
            )
        })
        .await
        .map_err(SetupError::failed)?;
        Ok(Self { config, primary })
    }

    async fn client(&self) -> Result<RedisBackend, BoxError> {
        Ok(RedisBackend::from_config(&self.config)?)
    }

    async fn expire_now(&self, client: &RedisBackend, key: &LockKey) -> Result<(), BoxError> {
        Ok(testkit::delete_lock(&self.primary, &client.keys(key)).await?)
    }

    fn registered_waiters(&self, client: &RedisBackend) -> Option<usize> {
        Some(client.registered_waiters())
    }

    async fn unreachable_client(&self) -> Result<Option<RedisBackend>, BoxError> {
        // Sentinels at a loopback port nothing listens on.
        let port = testkit::closed_loopback_port()?;
        let config = RedisConfig::new("redis://primary")
            .with_sentinel(testkit::MASTER_NAME, [format!("redis://127.0.0.1:{port}")]);
        Ok(Some(RedisBackend::from_config(&config)?))
    }

    fn timing_slack(&self) -> Duration {
        Duration::from_millis(400)
    }
}

distlock_conformance::suite!(SentinelHarness);
