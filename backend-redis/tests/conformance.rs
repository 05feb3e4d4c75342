//! The distlock conformance suite against Redis (the shared test server).

use std::time::Duration;

use distlock_conformance::{BoxError, Harness, SetupError};
use distlock_redis::redis;
use distlock_redis::testkit::RedisServer;
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
        let keys = client.keys(key);
        let mut conn = redis::Client::open(self.url.as_str())?
            .get_multiplexed_async_connection()
            .await?;
        // Behind the holder's back, without a release notification.
        let _: i64 = redis::cmd("DEL")
            .arg(&keys.lock)
            .arg(&keys.owner)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    fn registered_waiters(&self, client: &RedisBackend) -> Option<usize> {
        Some(client.registered_waiters())
    }

    async fn unreachable_client(&self) -> Result<Option<RedisBackend>, BoxError> {
        // A loopback port that nothing listens on: bound, then closed. (The
        // shared server stays up for the cases running in parallel.)
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        Ok(Some(RedisBackend::from_url(&format!(
            "redis://127.0.0.1:{port}"
        ))?))
    }

    fn timing_slack(&self) -> Duration {
        Duration::from_millis(400)
    }
}

distlock_conformance::suite!(RedisHarness);
