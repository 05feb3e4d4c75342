//! The distlock conformance suite against quorums of real Redis servers:
//! three servers, five servers, and two live servers plus one address
//! where nothing listens. Every case must pass on each.

use std::sync::OnceLock;
use std::time::Duration;

use distlock::Quorum;
use distlock_conformance::Harness;
use distlock_redis::redis;
use distlock_redis::testkit::{ProcessOptions, RedisServer};
use distlock_redis::{LockKey, RedisBackend};

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

/// A quorum of `live` servers, plus the unreachable address if `down`.
struct QuorumHarness {
    live: usize,
    down: bool,
}

impl QuorumHarness {
    fn urls(&self) -> Vec<String> {
        let mut urls: Vec<String> = servers()[..self.live]
            .iter()
            .map(|s| s.url().to_owned())
            .collect();
        if self.down {
            urls.push(UNREACHABLE.to_owned());
        }
        urls
    }
}

#[distlock_conformance::async_trait]
impl Harness for QuorumHarness {
    type Backend = Quorum;

    async fn client(&self) -> Quorum {
        let members = self
            .urls()
            .iter()
            .map(|url| RedisBackend::from_url(url).expect("a valid test URL"))
            .collect::<Vec<_>>();
        Quorum::new(members).expect("distinct servers")
    }

    async fn expire_now(&self, _client: &Quorum, key: &LockKey) {
        // Behind the holder's back, on every live server.
        let keys = RedisBackend::from_url(UNREACHABLE).unwrap().keys(key);
        for server in &servers()[..self.live] {
            let mut conn = redis::Client::open(server.url())
                .expect("a valid test URL")
                .get_multiplexed_async_connection()
                .await
                .expect("connecting to a test server");
            let _: i64 = redis::cmd("DEL")
                .arg(&keys.lock)
                .arg(&keys.owner)
                .query_async(&mut conn)
                .await
                .expect("DEL");
        }
    }

    fn registered_waiters(&self, client: &Quorum) -> Option<usize> {
        Some(client.registered_waiters())
    }

    fn timing_slack(&self) -> Duration {
        Duration::from_millis(400)
    }
}

mod three {
    use super::*;
    distlock_conformance::suite!(QuorumHarness {
        live: 3,
        down: false
    });
}

mod five {
    use super::*;
    distlock_conformance::suite!(QuorumHarness {
        live: 5,
        down: false
    });
}

mod two_live_one_unreachable {
    use super::*;
    distlock_conformance::suite!(QuorumHarness {
        live: 2,
        down: true
    });
}
