//! Redis Cluster behaviour beyond the conformance suite: routing of every
//! name, sharded release notifications, resharding and failover while a
//! lock is held (real processes: 3 primaries + 3 replicas).

use std::collections::HashSet;
use std::time::Duration;

use distlock_redis::testkit::RedisCluster;
use distlock_redis::{redis, LockOptions, Locker, RedisBackend, RedisConfig, ReplicaAck};
use tokio::time::Instant;

fn backend(cluster: &RedisCluster) -> RedisBackend {
    let nodes = cluster.node_urls();
    RedisBackend::from_config(&RedisConfig::new(nodes[0].clone()).with_cluster(nodes[1..].to_vec()))
        .unwrap()
}

fn get(url: &str, key: &str) -> Option<String> {
    let mut con = redis::Client::open(url)
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap();
    redis::cmd("GET").arg(key).query(&mut con).unwrap()
}

/// Every name routes: names spread over all three primaries, and names
/// with odd braces never give CROSSSLOT or unrouted errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_spread_over_all_primaries_and_odd_braces_route() {
    let cluster = RedisCluster::start();
    let backend = backend(&cluster);
    let locker = Locker::new(backend.clone());
    let mut names: Vec<String> = (0..48).map(|i| format!("spread-{i}")).collect();
    for odd in [
        "{", "}", "a}b{c}", "{}", "{{}}", "x{}y", "}{", "{a}{b}", "a{b",
    ] {
        names.push(odd.to_owned());
    }
    let mut primaries = HashSet::new();
    for name in &names {
        let guard = locker
            .try_lock(name)
            .await
            .unwrap_or_else(|e| panic!("{name:?}: {e}"))
            .unwrap_or_else(|| panic!("{name:?} is held"));
        let key = locker.key(name).unwrap();
        let info = locker.inspect(name).await.unwrap();
        assert!(info.held, "{name:?}");
        let lock_key = backend.keys(&key).lock;
        let slot = cluster.key_slot(&lock_key);
        assert_eq!(
            slot,
            cluster.key_slot(&backend.keys(&key).fence),
            "{name:?}"
        );
        assert_eq!(
            slot,
            cluster.key_slot(&backend.release_channel(&key)),
            "{name:?}"
        );
        primaries.insert(cluster.primary_of_slot(slot).id);
        guard
            .release()
            .await
            .unwrap_or_else(|e| panic!("{name:?}: {e}"));
    }
    assert_eq!(primaries.len(), 3, "the names did not reach every primary");
}

/// The line of waiters on every primary: for names spread over the three
/// primaries, a release by one backend hands the lock to a waiter of
/// another (its line keys and grant channel in the lock's slot), the grant
/// arrives through sharded pub/sub (the waiter's own calls would be 60 s
/// apart), and the claim answers the handover's fence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_reaches_a_waiter_of_another_backend_on_every_primary() {
    use distlock_redis::{Acquire, LockBackend, LockKey, LockToken, Release, Waiter, WaiterId};

    let cluster = RedisCluster::start();
    let (holder, queued) = (backend(&cluster), backend(&cluster));
    assert!(queued.capabilities().waiter_queue);
    let ttl = Duration::from_secs(30);
    let mut primaries = HashSet::new();
    for i in 0..12 {
        let key = LockKey::new("queue", format!("handover-{i}")).unwrap();
        let keys = holder.keys(&key);
        let slot = cluster.key_slot(&keys.lock);
        for other in [
            keys.waiters.clone(),
            keys.leases.clone(),
            queued.grant_channel(&key),
        ] {
            assert_eq!(cluster.key_slot(&other), slot, "{other}");
        }
        primaries.insert(cluster.primary_of_slot(slot).id);
        let (h, q) = (LockToken::generate(), LockToken::generate());
        let w = Waiter::new(WaiterId::generate(), Duration::from_secs(120));
        let Acquire::Acquired { fence } = holder.try_acquire(&key, &h, ttl, None).await.unwrap()
        else {
            panic!("{key:?} is held");
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
            .unwrap_or_else(|_| panic!("the grant of {key:?} did not arrive"));
        let claimed = queued
            .try_acquire_queued(&key, &q, ttl, None, &w)
            .await
            .unwrap();
        assert_eq!(claimed, Acquire::Acquired { fence: fence + 1 });
        assert_eq!(queued.release(&key, &q).await.unwrap(), Release::Released);
    }
    assert_eq!(primaries.len(), 3, "the names did not reach every primary");
}

/// A release reaches a waiter of another backend through sharded pub/sub
/// (`SPUBLISH` from the release script, `SSUBSCRIBE` on the subscriber):
/// without the line of waiters the waiter's retries are 10 s apart, so
/// only the release channel's message wakes it. In the line (the default)
/// the message is the grant on the waiter's backend channel; a waiter in
/// line also calls every 167 ms, so there the test checks that the grant
/// channel is subscribed on the slot's primary, and the cluster handover
/// test above that a grant arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_wakes_a_waiter_through_sharded_pubsub() {
    let cluster = RedisCluster::start();
    for queue in [true, false] {
        sharded_wake(&cluster, queue).await;
    }
}

async fn sharded_wake(cluster: &RedisCluster, queue: bool) {
    let name = format!("sharded-wake-{queue}");
    let holder = Locker::new(backend(cluster));
    let nodes = cluster.node_urls();
    let waiting = RedisBackend::from_config(
        &RedisConfig::new(nodes[0].clone())
            .with_cluster(nodes[1..].to_vec())
            .with_waiter_queue(queue),
    )
    .unwrap();
    let opts = LockOptions::default()
        .with_retry(Duration::from_secs(10), Duration::from_secs(10))
        .with_wait_timeout(Duration::from_secs(30));
    let waiter = Locker::new(waiting.clone()).with_defaults(opts).unwrap();
    let held = holder.lock(&name).await.unwrap();
    let task = {
        let name = name.clone();
        tokio::spawn(async move { waiter.lock(&name).await.map(|g| g.fence()) })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while waiting.subscribed_channels() == 0 {
        assert!(Instant::now() < deadline, "the waiter never subscribed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let key = holder.key(&name).unwrap();
    let channel = if queue {
        waiting.grant_channel(&key)
    } else {
        waiting.release_channel(&key)
    };
    let primary = cluster.primary_of_slot(cluster.key_slot(&channel));
    let (_, subscribers): (String, i64) = redis::cmd("PUBSUB")
        .arg("SHARDNUMSUB")
        .arg(&channel)
        .query(
            &mut redis::Client::open(primary.url.as_str())
                .unwrap()
                .get_connection()
                .unwrap(),
        )
        .unwrap();
    assert_eq!(
        subscribers, 1,
        "no sharded subscriber of {channel} on the slot's primary"
    );
    let first = held.fence();
    held.release().await.unwrap();
    let fence = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the release message did not wake the waiter")
        .unwrap()
        .unwrap();
    assert!(fence > first);
}

/// Moving the slot of a held, auto-renewed lock to another primary: the
/// lock stays held (renewals follow the slot), and a waiter that waited
/// across the move is woken by the release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lock_follows_its_slot_to_another_primary() {
    let cluster = RedisCluster::start();
    let ttl = Duration::from_millis(1200);
    let holder = Locker::new(backend(&cluster))
        .with_defaults(LockOptions::default().with_ttl(ttl).with_auto_renew(true))
        .unwrap();
    let waiting = backend(&cluster);
    let waiter = Locker::new(waiting.clone())
        .with_defaults(
            LockOptions::default()
                .with_retry(Duration::from_secs(10), Duration::from_secs(10))
                .with_wait_timeout(Duration::from_secs(60)),
        )
        .unwrap();
    let held = holder.lock("reshard").await.unwrap();
    let key = holder.key("reshard").unwrap();
    let lock_key = waiting.keys(&key).lock;
    let slot = cluster.key_slot(&lock_key);
    let source = cluster.primary_of_slot(slot);
    let task = tokio::spawn(async move { waiter.lock("reshard").await.map(|g| g.fence()) });
    let deadline = Instant::now() + Duration::from_secs(10);
    while waiting.subscribed_channels() == 0 {
        assert!(Instant::now() < deadline, "the waiter never subscribed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let target = cluster
        .primaries()
        .into_iter()
        .find(|p| p.id != source.id)
        .unwrap();
    let migrate = {
        let target = target.url.clone();
        let cluster = &cluster;
        move || cluster.migrate_slot(slot, &target)
    };
    tokio::task::block_in_place(migrate);
    assert_eq!(cluster.primary_of_slot(slot).id, target.id);
    // Several TTLs: only renewals on the new primary keep it.
    tokio::time::sleep(ttl * 3).await;
    assert!(held.is_valid(), "the lease was lost after the slot moved");
    assert!(
        get(&target.url, &lock_key).is_some(),
        "the lock is not on the new primary"
    );
    assert!(!task.is_finished(), "the waiter got a held lock");
    let first = held.fence();
    held.release().await.unwrap();
    let fence = tokio::time::timeout(Duration::from_secs(8), task)
        .await
        .expect("the waiter was not woken after the slot moved")
        .unwrap()
        .unwrap();
    assert!(fence > first);
}

/// Kill (SIGKILL) the primary serving a lock acquired with replica
/// acknowledgement: measures how long until the slot answers again and
/// until the lock is granted again, what the holder's extend reports, and
/// checks that it is not granted twice (the acknowledged write survives
/// the promotion) and that fencing tokens keep increasing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_primary_of_a_held_lock() {
    let cluster = RedisCluster::start();
    let ttl = Duration::from_secs(10);
    let opts = LockOptions::default()
        .with_ttl(ttl)
        .with_retry(Duration::from_millis(50), Duration::from_millis(200))
        .with_wait_timeout(Duration::from_secs(60));
    let nodes = cluster.node_urls();
    let acked = RedisConfig::new(nodes[0].clone())
        .with_cluster(nodes[1..].to_vec())
        .with_replica_ack(ReplicaAck::new(1));
    let holder = Locker::new(RedisBackend::from_config(&acked).unwrap())
        .with_defaults(opts.clone())
        .unwrap();
    let other = Locker::new(backend(&cluster)).with_defaults(opts).unwrap();
    let mut held = holder.lock("failover{f}").await.unwrap();
    let key = holder.key("failover{f}").unwrap();
    let slot = cluster.key_slot(&holder.backend().keys(&key).lock);
    let primary = cluster.primary_of_slot(slot);
    let killed_at = Instant::now();
    cluster.kill_node(&primary.url);
    // The slot answers again once the replica is promoted.
    while other.inspect("failover{f}").await.is_err() {
        assert!(
            killed_at.elapsed() < Duration::from_secs(60),
            "the slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let unavailable_for = killed_at.elapsed();
    let during = held.extend(ttl).await;
    let lease_end = held.valid_until();
    let second = other.lock("failover{f}").await.unwrap();
    let granted_after = killed_at.elapsed();
    eprintln!(
        "FIGURE cluster SIGKILL: new acquisition in the slot after {unavailable_for:?}; \
         the held lock granted again after {granted_after:?} (ttl {ttl:?}); \
         holder's extend after the failover: {during:?}"
    );
    assert!(second.fence() > held.fence(), "fences went backwards");
    assert!(
        Instant::now() >= lease_end,
        "granted twice: the acknowledged lease was still valid"
    );
    // Extended on the promoted replica; with the old primary dead it has
    // no replica of its own, so the acknowledgement is reported missing.
    match &during {
        Ok(()) => {}
        Err(distlock_redis::LockError::Backend(e))
            if e.kind() == distlock_redis::BackendErrorKind::ReplicationIncomplete => {}
        Err(e) => panic!("the acknowledged lock was lost: {e}"),
    }
    second.release().await.unwrap();
}

/// A clean `CLUSTER FAILOVER` (the replica catches up before it takes
/// over): the held lock survives, the holder extends it on the new
/// primary, and the next acquisition gets a higher fence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_cluster_failover_keeps_the_lock() {
    let cluster = RedisCluster::start();
    let ttl = Duration::from_secs(20);
    let locker = Locker::new(backend(&cluster))
        .with_defaults(LockOptions::default().with_ttl(ttl))
        .unwrap();
    let mut held = locker.lock("clean-failover").await.unwrap();
    let key = locker.key("clean-failover").unwrap();
    let slot = cluster.key_slot(&locker.backend().keys(&key).lock);
    let primary = cluster.primary_of_slot(slot);
    let started = Instant::now();
    tokio::task::block_in_place(|| {
        cluster.failover(&primary.url);
        cluster.wait_for_new_primary(slot, &primary.url, Duration::from_secs(60));
    });
    let extended = loop {
        match held.extend(ttl).await {
            Err(distlock_redis::LockError::Backend(e)) if e.kind().is_transient() => {
                assert!(started.elapsed() < Duration::from_secs(60), "{e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => break other,
        }
    };
    eprintln!(
        "FIGURE cluster CLUSTER FAILOVER: the holder's extend succeeds {:?} after the request",
        started.elapsed()
    );
    extended.unwrap();
    let first = held.fence();
    held.release().await.unwrap();
    let next = locker.lock("clean-failover").await.unwrap();
    assert!(next.fence() > first);
}

/// Issue 10 kind 3 on the Cluster path: the backend's connections to the
/// lock's primary die while it is idle (`CLIENT KILL`, as a restart of
/// the node does to them); the next call of each kind must not fail on a
/// dead connection (the cluster client reconnects and resends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_node_connection_is_not_handed_to_the_next_call() {
    use distlock_redis::{Acquire, LockBackend, LockKey, LockToken};
    let cluster = RedisCluster::start();
    let backend = backend(&cluster);
    let key = LockKey::new("cluster", "dropped").unwrap();
    let lock_key = backend.keys(&key).lock;
    let primary =
        tokio::task::block_in_place(|| cluster.primary_of_slot(cluster.key_slot(&lock_key)).url);
    let ttl = Duration::from_secs(30);
    for op in ["acquire", "extend", "release", "inspect"] {
        // Warm: the connections are open.
        backend.inspect(&key).await.unwrap();
        let token = LockToken::generate();
        if op != "acquire" {
            let got = backend.try_acquire(&key, &token, ttl, None).await.unwrap();
            assert!(matches!(got, Acquire::Acquired { .. }), "{got:?}");
        }
        let killed = distlock_redis::testkit::kill_client_connections(&primary)
            .await
            .unwrap();
        assert!(killed >= 1, "{op}: the backend's connection was not found");
        // Let the client see the closed socket, as after an idle restart.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let first = distlock_redis::testkit::holder_call(&backend, op, &key, &token, ttl).await;
        first.unwrap_or_else(|e| panic!("the first {op} after the connection died failed: {e}"));
        backend.release(&key, &token).await.unwrap();
    }
}

/// Subscribers of the shard channel on the node at `url` (0 if it does not
/// answer: a killed node).
fn shard_subscribers(url: &str, channel: &str) -> i64 {
    let answer = redis::Client::open(url).and_then(|client| {
        let mut con = client.get_connection_with_timeout(Duration::from_secs(5))?;
        redis::cmd("PUBSUB")
            .arg("SHARDNUMSUB")
            .arg(channel)
            .query::<(String, i64)>(&mut con)
    });
    answer.map_or(0, |(_, n)| n)
}

/// Subscribers of the shard channel on every live node of the cluster (a
/// subscription on a replica of the slot's primary hears its `SPUBLISH`es
/// too: Redis propagates them within the shard).
fn shard_subscribers_anywhere(cluster: &RedisCluster, channel: &str) -> i64 {
    cluster
        .nodes()
        .iter()
        .map(|node| shard_subscribers(&node.url, channel))
        .sum()
}

#[derive(Clone, Copy, Debug)]
enum SlotMove {
    Reshard,
    CleanFailover,
    Kill,
}

/// A waiter watches a lock held by another backend; the lock's slot then
/// moves to another primary; the holder releases. The waiter hears the
/// release on its watch (its polling is not involved: the test waits on
/// the watch only).
async fn release_heard_after(cluster: &RedisCluster, mv: SlotMove) {
    use distlock_redis::{Acquire, LockBackend, LockKey, LockToken, Release};
    let (holder, waiting) = (backend(cluster), backend(cluster));
    let key = LockKey::new("moves", format!("watched-{mv:?}")).unwrap();
    let token = LockToken::generate();
    let got = holder
        .try_acquire(&key, &token, Duration::from_secs(60), None)
        .await
        .unwrap();
    assert!(matches!(got, Acquire::Acquired { .. }), "{got:?}");
    let mut watch = waiting.watch(&key).await.unwrap().unwrap();
    let channel = waiting.release_channel(&key);
    let slot = cluster.key_slot(&channel);
    let source = cluster.primary_of_slot(slot);
    assert_eq!(shard_subscribers(&source.url, &channel), 1);
    tokio::task::block_in_place(|| match mv {
        SlotMove::Reshard => {
            let target = cluster
                .primaries()
                .into_iter()
                .find(|p| p.id != source.id)
                .unwrap();
            cluster.migrate_slot(slot, &target.url);
        }
        SlotMove::CleanFailover => {
            cluster.failover(&source.url);
            cluster.wait_for_new_primary(slot, &source.url, Duration::from_secs(60));
        }
        SlotMove::Kill => {
            cluster.kill_node(&source.url);
            cluster.wait_for_new_primary(slot, &source.url, Duration::from_secs(60));
        }
    });
    // Subscribed again in the slot's shard (the subscriber reconnects with
    // a backoff of at most 5 s).
    let deadline = Instant::now() + Duration::from_secs(15);
    while shard_subscribers_anywhere(cluster, &channel) < 1 {
        assert!(
            Instant::now() < deadline,
            "{mv:?}: nobody subscribed to {channel} on any node after the slot moved"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Releases are heard again: three in a row, each within a second. (A
    // release published while the cluster still settles can be lost by
    // Redis itself, and a reconnect wakes every waiter once; neither gives
    // three in a row. Without the subscription following the slot, none is
    // heard.)
    let mut token = token;
    let (mut in_a_row, mut rounds) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while in_a_row < 3 {
        assert!(
            Instant::now() < deadline,
            "{mv:?}: releases not heard three times in a row within 30 s \
             ({rounds} releases); the waiter would sleep until its poll"
        );
        if rounds > 0 {
            token = LockToken::generate();
            let got = holder
                .try_acquire(&key, &token, Duration::from_secs(60), None)
                .await;
            if !matches!(got, Ok(Acquire::Acquired { .. })) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        }
        rounds += 1;
        // Drop a wake-up already stored (a reconnect wakes every waiter).
        let _ = tokio::time::timeout(Duration::from_millis(20), watch.released()).await;
        let released = loop {
            match holder.release(&key, &token).await {
                Err(e) if e.kind().is_transient() => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => break other.unwrap(),
            }
        };
        assert_eq!(released, Release::Released);
        let heard = tokio::time::timeout(Duration::from_secs(1), watch.released()).await;
        in_a_row = if heard.is_ok() { in_a_row + 1 } else { 0 };
    }
}

/// The release subscription follows the lock's slot when it moves:
/// resharding, a clean `CLUSTER FAILOVER`, SIGKILL of the slot's primary.
/// Found in review: the `redis` crate does not re-subscribe a shard channel
/// the server dropped (slot moved) or that was on a node connection that
/// broke, and distlock believed it still subscribed, so releases went
/// unheard for good and waiters fell back to polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_release_subscription_follows_its_slot() {
    let cluster = RedisCluster::start();
    for mv in [SlotMove::Reshard, SlotMove::CleanFailover, SlotMove::Kill] {
        release_heard_after(&cluster, mv).await;
    }
}
