//! The topology launchers of the test kit: real Sentinel groups and
//! clusters form, fail over and move slots.

use std::time::Duration;

use distlock_redis::testkit::{RedisCluster, SentinelGroup};

fn get(url: &str, key: &str) -> Option<String> {
    let mut con = distlock_redis::redis::Client::open(url)
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap();
    distlock_redis::redis::cmd("GET")
        .arg(key)
        .query(&mut con)
        .unwrap()
}

#[test]
fn a_sentinel_group_fails_over_after_a_kill_and_on_request() {
    let group = SentinelGroup::start();
    let first = group.primary_url();
    assert_eq!(first, group.node_urls()[0]);
    let (_, killed) = group.kill_primary();
    let second = group.wait_for_new_primary(&killed, Duration::from_secs(60));
    assert_ne!(second, first);
    let old = group.failover();
    assert_eq!(old, second);
    let third = group.wait_for_new_primary(&second, Duration::from_secs(60));
    assert_ne!(third, second);
}

#[test]
fn a_cluster_forms_moves_a_slot_and_fails_over() {
    let cluster = RedisCluster::start();
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3, "{primaries:?}");
    let key = "kit{slot-test}";
    let slot = cluster.key_slot(key);
    let owner = cluster.primary_of_slot(slot);
    let mut con = distlock_redis::redis::Client::open(owner.url.as_str())
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap();
    let _: () = distlock_redis::redis::cmd("SET")
        .arg(key)
        .arg("v")
        .query(&mut con)
        .unwrap();
    let target = primaries.iter().find(|p| p.id != owner.id).unwrap();
    cluster.migrate_slot(slot, &target.url);
    assert_eq!(cluster.primary_of_slot(slot).id, target.id);
    assert_eq!(get(&target.url, key).as_deref(), Some("v"));

    let promoted = cluster.failover(&target.url);
    let now = cluster.wait_for_new_primary(slot, &target.url, Duration::from_secs(60));
    assert_eq!(now, promoted);
    assert_eq!(get(&now, key).as_deref(), Some("v"));

    cluster.kill_node(&now);
    let after_kill = cluster.wait_for_new_primary(slot, &now, Duration::from_secs(60));
    assert_ne!(after_kill, now);
}
