//! The distlock conformance suite against quorums of real Redis servers:
//! three servers, five servers, two live servers plus one address where
//! nothing listens (listed last, and listed first, where it would be the
//! gate of contended keys until its first failure moves the role on),
//! and three servers without the line of waiters (the
//! quorum's waiters then watch every member's release events, as over
//! backends that have no line). Every case must pass on each.

use std::sync::OnceLock;
use std::time::Duration;

use distlock::Quorum;
use distlock_conformance::{BoxError, Harness, SetupError};
use distlock_redis::testkit::{self, ProcessOptions, RedisServer};
use distlock_redis::{LockKey, RedisBackend, RedisConfig};

/// Five dedicated `redis-server` processes shared by every test of this
/// binary (the three-server quorum uses the first three).
fn servers() -> &'static [RedisServer] {
    static SERVERS: OnceLock<Vec<RedisServer>> = OnceLock::new();
    SERVERS.get_or_init(|| {
        (0..5)
            .map(|_| RedisServer::start_process(ProcessOptions::new()))
            .collect()
    })
}

/// A loopback address where nothing listens: connections are refused.
const UNREACHABLE: &str = "redis://127.0.0.1:1";

/// A quorum of `LIVE` servers, plus the unreachable address if `DOWN`
/// (first in the member list if `DOWN_FIRST`, else last); members keep the
/// line of waiters if `LINE`.
struct QuorumHarness<
    const LIVE: usize,
    const DOWN: bool,
    const LINE: bool = true,
    const DOWN_FIRST: bool = false,
>;

impl<const LIVE: usize, const DOWN: bool, const LINE: bool, const DOWN_FIRST: bool>
    QuorumHarness<LIVE, DOWN, LINE, DOWN_FIRST>
{
    fn urls(&self) -> Vec<String> {
        let mut urls: Vec<String> = servers()[..LIVE]
            .iter()
            .map(|s| s.url().to_owned())
            .collect();
        if DOWN {
            let at = if DOWN_FIRST { 0 } else { urls.len() };
            urls.insert(at, UNREACHABLE.to_owned());
        }
        urls
    }
}

#[distlock_conformance::async_trait]
impl<const LIVE: usize, const DOWN: bool, const LINE: bool, const DOWN_FIRST: bool> Harness
    for QuorumHarness<LIVE, DOWN, LINE, DOWN_FIRST>
{
    type Backend = Quorum;

    async fn setup() -> Result<Self, SetupError> {
        // Starting the servers blocks (process starts).
        tokio::task::spawn_blocking(|| servers().len())
            .await
            .map_err(SetupError::failed)?;
        Ok(Self)
    }

    async fn client(&self) -> Result<Quorum, BoxError> {
        let members = self
            .urls()
            .iter()
            .map(|url| RedisBackend::from_config(&RedisConfig::new(url).with_waiter_queue(LINE)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Quorum::new(members)?)
    }

    async fn expire_now(&self, _client: &Quorum, key: &LockKey) -> Result<(), BoxError> {
        // Behind the holder's back, on every live server.
        let keys = RedisBackend::from_url(UNREACHABLE)?.keys(key);
        for server in &servers()[..LIVE] {
            testkit::delete_lock(server.url(), &keys).await?;
        }
        Ok(())
    }

    fn registered_waiters(&self, client: &Quorum) -> Option<usize> {
        Some(client.registered_waiters())
    }

    async fn unreachable_client(&self) -> Result<Option<Quorum>, BoxError> {
        // Every member at an address where nothing listens (distinct ports,
        // so the quorum accepts them as distinct servers).
        let members = (1..=3)
            .map(|port| RedisBackend::from_url(&format!("redis://127.0.0.1:{port}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Quorum::new(members)?))
    }

    fn timing_slack(&self) -> Duration {
        Duration::from_millis(400)
    }
}

mod three {
    use super::*;
    distlock_conformance::suite!(QuorumHarness<3, false>);
}

mod five {
    use super::*;
    distlock_conformance::suite!(QuorumHarness<5, false>);
}

mod two_live_one_unreachable {
    use super::*;
    distlock_conformance::suite!(QuorumHarness<2, true>);
}

mod one_unreachable_then_two_live {
    use super::*;
    distlock_conformance::suite!(QuorumHarness<2, true, true, true>);
}

mod three_without_line {
    use super::*;
    distlock_conformance::suite!(QuorumHarness<3, false, false>);
}
