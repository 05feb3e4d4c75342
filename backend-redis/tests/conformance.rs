//! The distlock conformance suite against Redis (the shared test server).

use std::time::Duration;

use distlock_conformance::{BoxError, Harness, SetupError};
use distlock_redis::testkit::{self, RedisServer};
use distlock_redis::{LockKey, RedisBackend};

/// Every client is a new backend with its own pool and subscriber, on the
/// one shared server.
struct RedisHarness {
    url: String,
}

#[distlock_conformance::async_trait]
impl Harness for RedisHarness {
    type Backend = RedisBackend;

    async fn setup() -> Result<Self, SetupError> {
        // Starting the shared server blocks (container or process start).
        let url = tokio::task::spawn_blocking(|| RedisServer::shared().url().to_owned())
            .await
            .map_err(SetupError::failed)?;
        Ok(Self { url })
    }

    async fn client(&self) -> Result<RedisBackend, BoxError> {
        Ok(RedisBackend::from_url(&self.url)?)
    }

    async fn expire_now(&self, client: &RedisBackend, key: &LockKey) -> Result<(), BoxError> {
        Ok(testkit::delete_lock(&self.url, &client.keys(key)).await?)
    }

    fn registered_waiters(&self, client: &RedisBackend) -> Option<usize> {
        Some(client.registered_waiters())
    }

    async fn unreachable_client(&self) -> Result<Option<RedisBackend>, BoxError> {
        // (The shared server stays up for the cases running in parallel.)
        let port = testkit::closed_loopback_port()?;
        Ok(Some(RedisBackend::from_url(&format!(
            "redis://127.0.0.1:{port}"
        ))?))
    }

    fn timing_slack(&self) -> Duration {
        Duration::from_millis(400)
    }
}

distlock_conformance::suite!(RedisHarness);
