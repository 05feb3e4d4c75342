//! The minimal ACLs the README gives for the Sentinel and Cluster
//! topologies are enough: a restricted user acquires, releases, and wakes a
//! waiter of another backend through the release channel.

use std::time::Duration;

use distlock_redis::testkit::{RedisCluster, SentinelGroup};
use distlock_redis::{
    redis, Acquire, LockBackend, LockOptions, LockToken, Locker, RedisBackend, RedisConfig,
    Release, Waiter, WaiterId,
};

/// The single-server ACL of `RedisConfig`'s docs (default prefix).
const SINGLE: &str = "+evalsha +eval +get +set +del +incr +time +pttl +pexpire +type \
                      +publish +subscribe +unsubscribe +ping +unwatch \
                      +zadd +zrem +zrange +hset +hget +hdel";
/// The Cluster ACL of the README: sharded pub/sub instead of plain, the
/// slot map and the version check.
const CLUSTER: &str = "+evalsha +eval +get +set +del +incr +time +pttl +pexpire +type \
                       +spublish +ssubscribe +sunsubscribe +ping +cluster|slots +command|info \
                       +asking +wait +zadd +zrem +zrange +hset +hget +hdel";

fn set_user(url: &str, commands: &str) {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER")
        .arg("locker")
        .arg("reset")
        .arg("on")
        .arg(">pw")
        .arg("~distlock:*")
        .arg("&distlock:*")
        .arg("-@all");
    for c in commands.split_whitespace() {
        cmd.arg(c);
    }
    let mut con = redis::Client::open(url)
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap();
    let () = cmd.query(&mut con).unwrap();
}

/// Empties the script cache of a node (as a restart or a failover to a
/// node that never ran the scripts does).
fn flush_scripts(url: &str) {
    let mut con = redis::Client::open(url)
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap();
    let () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut con).unwrap();
}

async fn exercise(config: RedisConfig) {
    let holder = Locker::new(RedisBackend::from_config(&config).unwrap());
    let waiter = Locker::new(RedisBackend::from_config(&config).unwrap())
        .with_defaults(
            LockOptions::default()
                .with_retry(Duration::from_secs(10), Duration::from_secs(10))
                .with_wait_timeout(Duration::from_secs(30)),
        )
        .unwrap();
    let held = holder.lock("acl").await.unwrap();
    let backend = waiter.backend().clone();
    let task = tokio::spawn(async move { waiter.lock("acl").await.map(|g| g.fence()) });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while backend.subscribed_channels() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the waiter never subscribed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let first = held.fence();
    held.release().await.unwrap();
    let fence = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the release did not wake the waiter")
        .unwrap()
        .unwrap();
    assert!(fence > first);

    // The line of waiters: a handover from one backend to a waiter of
    // another, woken by its grant (its own calls are 60 s apart).
    let holder = RedisBackend::from_config(&config).unwrap();
    let queued = RedisBackend::from_config(&config).unwrap();
    assert!(queued.capabilities().waiter_queue);
    let key = distlock_redis::LockKey::new("", "acl-queue").unwrap();
    let (h, q) = (LockToken::generate(), LockToken::generate());
    let ttl = Duration::from_secs(30);
    let w = Waiter::new(WaiterId::generate(), Duration::from_secs(120));
    let Acquire::Acquired { fence: before } =
        holder.try_acquire(&key, &h, ttl, None).await.unwrap()
    else {
        panic!("acl-queue is held");
    };
    let mut watch = queued.watch_queued(&key, &w).await.unwrap().unwrap();
    let joined = queued
        .try_acquire_queued(&key, &q, ttl, None, &w)
        .await
        .unwrap();
    assert!(matches!(joined, Acquire::Held { .. }), "{joined:?}");
    assert_eq!(holder.release(&key, &h).await.unwrap(), Release::Released);
    tokio::time::timeout(Duration::from_secs(10), watch.released())
        .await
        .expect("the grant did not wake the waiter");
    let claimed = queued
        .try_acquire_queued(&key, &q, ttl, None, &w)
        .await
        .unwrap();
    assert_eq!(claimed, Acquire::Acquired { fence: before + 1 });
    assert_eq!(queued.release(&key, &q).await.unwrap(), Release::Released);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_minimal_cluster_acl_suffices() {
    let cluster = RedisCluster::start();
    for url in cluster.node_urls() {
        set_user(&url, CLUSTER);
    }
    let nodes: Vec<String> = cluster.node_urls();
    let with_user = |u: &str| u.replace("redis://", "redis://locker:pw@");
    let config = RedisConfig::new(with_user(&nodes[0]))
        .with_cluster(nodes[1..].iter().map(|u| with_user(u)))
        .with_replica_ack(distlock_redis::ReplicaAck::new(1));
    exercise(config.clone()).await;
    // An emptied script cache on every node: the calls (with `WAIT`
    // pipelined after them) fall back to EVAL, which this ACL allows
    // (there is no SCRIPT LOAD in it).
    for url in cluster.node_urls() {
        flush_scripts(&url);
    }
    exercise(config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_minimal_sentinel_acl_suffices() {
    let group = SentinelGroup::start();
    for url in group.node_urls() {
        // The primary check of the Sentinel lookup: ROLE.
        set_user(&url, &format!("{SINGLE} +role"));
    }
    let config = RedisConfig::new("redis://locker:pw@primary")
        .with_sentinel(group.master_name(), group.sentinel_urls());
    exercise(config.clone()).await;
    for url in group.node_urls() {
        flush_scripts(&url);
    }
    exercise(config).await;
}
