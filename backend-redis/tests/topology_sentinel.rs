//! Redis Sentinel behaviour beyond the conformance suite: failover while a
//! lock is held and waited on, replica acknowledgement, and bad
//! configuration (real processes: 1 primary, 2 replicas, 3 sentinels).

use std::time::Duration;

use distlock_redis::testkit::{self, RedisCluster, RedisServer, SentinelGroup};
use distlock_redis::{redis, Acquire, LockBackend};
use distlock_redis::{
    BackendErrorKind, LockError, LockKey, LockOptions, LockToken, Locker, RedisBackend,
    RedisConfig, ReplicaAck,
};
use tokio::time::Instant;

fn config(group: &SentinelGroup) -> RedisConfig {
    RedisConfig::new("redis://primary").with_sentinel(group.master_name(), group.sentinel_urls())
}

fn kind(e: &LockError) -> Option<BackendErrorKind> {
    match e {
        LockError::Backend(b) => Some(b.kind()),
        _ => None,
    }
}

/// SIGKILL of the primary while a lock (acquired with replica
/// acknowledgement) is held and another backend waits for it: the waiter
/// acquires after the failover, not before the holder's lease ends, with a
/// higher fencing token; the holder can extend on the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_primary_while_held_and_waited() {
    let group = SentinelGroup::start();
    let ttl = Duration::from_secs(8);
    let opts = LockOptions::default()
        .with_ttl(ttl)
        .with_retry(Duration::from_millis(50), Duration::from_millis(300))
        .with_wait_timeout(Duration::from_secs(60));
    let holder = Locker::new(
        RedisBackend::from_config(&config(&group).with_replica_ack(ReplicaAck::new(1))).unwrap(),
    )
    .with_defaults(opts.clone())
    .unwrap();
    let waiting = RedisBackend::from_config(&config(&group)).unwrap();
    let waiter = Locker::new(waiting.clone()).with_defaults(opts).unwrap();
    let mut held = holder.lock("sentinel-kill").await.unwrap();
    let task = tokio::spawn(async move {
        // Waiting surfaces backend errors: retry the transient ones (the
        // failover), as an application would.
        loop {
            match waiter.lock("sentinel-kill").await {
                Ok(g) => return Ok::<_, LockError>((Instant::now(), g.fence())),
                Err(e) if kind(&e).is_some_and(BackendErrorKind::is_transient) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while waiting.subscribed_channels() == 0 {
        assert!(Instant::now() < deadline, "the waiter never subscribed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed_at = Instant::now();
    let (_, old) = tokio::task::block_in_place(|| group.kill_primary());
    tokio::task::block_in_place(|| group.wait_for_new_primary(&old, Duration::from_secs(60)));
    let promoted_after = killed_at.elapsed();
    // The first operation that succeeds on the new primary.
    let extended = loop {
        match held.extend(ttl).await {
            Err(e) if kind(&e).is_some_and(BackendErrorKind::is_transient) => {
                assert!(killed_at.elapsed() < Duration::from_secs(60), "{e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => break other,
        }
    };
    let available_after = killed_at.elapsed();
    let lease_end = held.valid_until();
    assert!(
        extended.is_ok(),
        "the acknowledged lock was lost: {extended:?}"
    );
    let first = held.fence();
    let released_at = Instant::now();
    held.release().await.unwrap();
    let (acquired_at, fence) = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the waiter was not woken after the failover")
        .unwrap()
        .unwrap();
    eprintln!(
        "FIGURE sentinel SIGKILL: sentinels name a new primary after {promoted_after:?}; \
         the holder's extend succeeds after {available_after:?}; the waiter acquires \
         {:?} after the release",
        acquired_at.duration_since(released_at)
    );
    assert!(fence > first, "fences went backwards");
    // Woken by the release, not by the lease running out.
    assert!(
        acquired_at < lease_end,
        "the waiter was not woken by the release"
    );
}

/// SIGKILL of the primary while a lock is held and a waiter of another
/// backend is in the line of waiters: the line may be lost with the
/// primary (it replicates asynchronously), but the waiter keeps its place
/// by calling (joining the new primary's line) and acquires after the
/// holder's release with a higher fence, before the holder's lease would
/// have ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_in_line_acquires_after_a_failover() {
    use distlock_redis::{Release, Waiter, WaiterId, WAITER_LEASE};

    let group = SentinelGroup::start();
    let ttl = Duration::from_secs(8);
    let holder =
        RedisBackend::from_config(&config(&group).with_replica_ack(ReplicaAck::new(1))).unwrap();
    let waiting = RedisBackend::from_config(&config(&group)).unwrap();
    assert!(waiting.capabilities().waiter_queue);
    let key = LockKey::new("sentinel", "line").unwrap();
    let h = LockToken::generate();
    let Acquire::Acquired { fence: first } = holder.try_acquire(&key, &h, ttl, None).await.unwrap()
    else {
        panic!("held");
    };
    let task = {
        let (b, key) = (waiting.clone(), key.clone());
        tokio::spawn(async move {
            let (token, w) = (
                LockToken::generate(),
                Waiter::new(WaiterId::generate(), WAITER_LEASE),
            );
            let mut watch = b.watch_queued(&key, &w).await.unwrap().unwrap();
            loop {
                match b.try_acquire_queued(&key, &token, ttl, None, &w).await {
                    Ok(Acquire::Acquired { fence }) => {
                        let at = Instant::now();
                        assert_eq!(b.release(&key, &token).await.unwrap(), Release::Released);
                        return (at, fence);
                    }
                    Ok(Acquire::Held { remaining }) => {
                        let wait = remaining.map_or(WAITER_LEASE / 3, |r| {
                            (r + Duration::from_millis(1)).min(WAITER_LEASE / 3)
                        });
                        tokio::select! {
                            () = watch.released() => {}
                            () = tokio::time::sleep(wait) => {}
                        }
                    }
                    Err(e) if e.kind().is_transient() => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while waiting.subscribed_channels() == 0 {
        assert!(Instant::now() < deadline, "the waiter never subscribed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed_at = Instant::now();
    let (_, old) = tokio::task::block_in_place(|| group.kill_primary());
    tokio::task::block_in_place(|| group.wait_for_new_primary(&old, Duration::from_secs(60)));
    let extended = loop {
        match holder.extend(&key, &h, ttl).await {
            Err(e) if e.kind().is_transient() => {
                assert!(killed_at.elapsed() < Duration::from_secs(60), "{e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => break other,
        }
    };
    let lease_end = Instant::now() + ttl;
    assert_eq!(extended.unwrap(), distlock_redis::Extend::Extended);
    let released_at = Instant::now();
    assert_eq!(holder.release(&key, &h).await.unwrap(), Release::Released);
    let (acquired_at, fence) = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the waiter in line did not acquire after the failover")
        .unwrap();
    eprintln!(
        "FIGURE sentinel line: the waiter in line acquires {:?} after the release",
        acquired_at.duration_since(released_at)
    );
    assert!(fence > first, "fences went backwards");
    assert!(acquired_at < lease_end, "not woken before the lease's end");
}

/// `SENTINEL FAILOVER` (clean): a held lock survives (replicated before the
/// switch) and the next acquisition gets a higher fence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_sentinel_failover_keeps_the_lock() {
    let group = SentinelGroup::start();
    let locker = Locker::new(RedisBackend::from_config(&config(&group)).unwrap())
        .with_defaults(LockOptions::default().with_ttl(Duration::from_secs(20)))
        .unwrap();
    let mut held = locker.lock("sentinel-clean").await.unwrap();
    let started = Instant::now();
    let old = tokio::task::block_in_place(|| group.failover());
    tokio::task::block_in_place(|| group.wait_for_new_primary(&old, Duration::from_secs(60)));
    let extended = loop {
        match held.extend(Duration::from_secs(20)).await {
            Err(e) if kind(&e).is_some_and(BackendErrorKind::is_transient) => {
                assert!(started.elapsed() < Duration::from_secs(60), "{e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => break other,
        }
    };
    eprintln!(
        "FIGURE sentinel SENTINEL FAILOVER: the holder's extend succeeds {:?} after the request",
        started.elapsed()
    );
    extended.unwrap();
    let first = held.fence();
    held.release().await.unwrap();
    let next = locker.lock("sentinel-clean").await.unwrap();
    assert!(next.fence() > first);
}

/// A failover whose old primary stays up and reachable by the
/// application, but is cut off from the sentinels (here its ACL refuses
/// their commands, as a partition would): the sentinels promote a replica
/// and cannot demote the old primary, so calls there never fail. A backend
/// connected before the failover must move to the new primary within
/// about a second (`RECHECK_EVERY`), not go on taking locks on the old one
/// while other clients take them on the new one (found in review: two
/// holders of one lock ten seconds after the failover).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_leaves_an_old_primary_the_sentinels_no_longer_name() {
    let group = SentinelGroup::start();
    let old = group.primary_url();
    let before = RedisBackend::from_config(&config(&group)).unwrap();
    let warm = LockKey::new("recheck", "warm").unwrap();
    before.inspect(&warm).await.unwrap();
    let mut admin = redis::Client::open(old.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("-ping")
        .arg("-info")
        .arg("-replicaof")
        .arg("-slaveof")
        .arg("-client")
        .arg("-config")
        .arg("-role")
        .query_async(&mut admin)
        .await
        .unwrap();
    let new =
        tokio::task::block_in_place(|| group.wait_for_new_primary(&old, Duration::from_secs(60)));
    assert_ne!(new, old);
    // Two periods: the next call after the first asks the sentinels.
    tokio::time::sleep(Duration::from_secs(2)).await;
    before.inspect(&warm).await.unwrap();
    let key = LockKey::new("recheck", "split-brain").unwrap();
    let token = LockToken::generate();
    let got = before
        .try_acquire(&key, &token, Duration::from_secs(30), None)
        .await
        .unwrap();
    assert!(matches!(got, Acquire::Acquired { .. }), "{got:?}");
    let lock = before.keys(&key).lock;
    let on_old: Option<String> = redis::cmd("GET")
        .arg(&lock)
        .query_async(&mut admin)
        .await
        .unwrap();
    let mut on_new_primary = redis::Client::open(new.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let on_new: Option<String> = redis::cmd("GET")
        .arg(&lock)
        .query_async(&mut on_new_primary)
        .await
        .unwrap();
    assert!(
        on_old.is_none() && on_new.is_some(),
        "the backend connected before the failover took the lock on the old primary \
         {old} (key there: {on_old:?}), not on the new one {new} ({on_new:?})"
    );
    let after = RedisBackend::from_config(&config(&group)).unwrap();
    let other = after
        .try_acquire(&key, &LockToken::generate(), Duration::from_secs(30), None)
        .await
        .unwrap();
    assert!(
        matches!(other, Acquire::Held { .. }),
        "a backend started after the failover: {other:?}"
    );
}

/// More replicas required than exist: the acquisition is given back and
/// the error names the kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_replica_acknowledgements_give_the_lock_back() {
    let group = SentinelGroup::start();
    let ack = ReplicaAck::new(3).with_timeout(Duration::from_millis(300));
    let backend = RedisBackend::from_config(&config(&group).with_replica_ack(ack)).unwrap();
    let key = LockKey::new("", "ack-3").unwrap();
    let err = backend
        .try_acquire(&key, &LockToken::generate(), Duration::from_secs(30), None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), BackendErrorKind::ReplicationIncomplete, "{err}");
    assert!(
        !backend.inspect(&key).await.unwrap().held,
        "the lock was not given back"
    );
    let two =
        RedisBackend::from_config(&config(&group).with_replica_ack(ReplicaAck::new(2))).unwrap();
    let got = two
        .try_acquire(&key, &LockToken::generate(), Duration::from_secs(30), None)
        .await
        .unwrap();
    assert!(matches!(got, Acquire::Acquired { .. }), "{got:?}");
}

/// Replica acknowledgement on the single-server path (the group's primary
/// used as one server): `WAIT` pipelined after the script, also when the
/// script cache was emptied (`EVAL` + `WAIT`); too few acknowledgements
/// give the acquisition back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_acknowledgement_on_the_single_server_path() {
    let group = SentinelGroup::start();
    let url = group.primary_url();
    let flush = || {
        let mut con = distlock_redis::redis::Client::open(url.as_str())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap();
        let () = distlock_redis::redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query(&mut con)
            .unwrap();
    };
    let ttl = Duration::from_secs(30);
    let acked =
        RedisBackend::from_config(&RedisConfig::new(&url).with_replica_ack(ReplicaAck::new(2)))
            .unwrap();
    assert_eq!(acked.topology_name(), "single");
    let key = LockKey::new("", "single-ack").unwrap();
    let token = LockToken::generate();
    flush();
    let got = acked.try_acquire(&key, &token, ttl, None).await.unwrap();
    assert!(matches!(got, Acquire::Acquired { .. }), "{got:?}");
    flush();
    assert_eq!(
        acked.extend(&key, &token, ttl).await.unwrap(),
        distlock_redis::Extend::Extended
    );
    acked.release(&key, &token).await.unwrap();

    // More replicas required than exist: given back. The second `WAIT` is
    // longer than the command timeout and still answered (the client's
    // response timeout covers both). Found in review: the client cut that
    // call at the command timeout, a `Timeout` of unknown outcome that left
    // the lock held.
    flush();
    for (wait, command_timeout) in [(300, 2000), (1500, 1000)] {
        let ack = ReplicaAck::new(3).with_timeout(Duration::from_millis(wait));
        let too_many = RedisBackend::from_config(
            &RedisConfig::new(&url)
                .with_command_timeout(Duration::from_millis(command_timeout))
                .with_replica_ack(ack),
        )
        .unwrap();
        let err = too_many
            .try_acquire(&key, &LockToken::generate(), ttl, None)
            .await
            .unwrap_err();
        assert_eq!(
            err.kind(),
            BackendErrorKind::ReplicationIncomplete,
            "WAIT {wait} ms, command timeout {command_timeout} ms: {err}"
        );
        assert!(
            !acked.inspect(&key).await.unwrap().held,
            "the lock was not given back"
        );
    }
}

/// Bad configurations fail with typed errors within the timeouts and leave
/// nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configurations_are_typed_errors_within_the_timeouts() {
    let group = SentinelGroup::start();
    let key = LockKey::new("", "bad-config").unwrap();
    let token = LockToken::generate();
    let ttl = Duration::from_secs(5);
    let timeout = Duration::from_millis(800);
    let attempt = |config: RedisConfig| {
        let (key, token) = (key.clone(), token.clone());
        async move {
            let backend = RedisBackend::from_config(
                &config
                    .with_connect_timeout(timeout)
                    .with_command_timeout(timeout),
            )
            .unwrap();
            let started = Instant::now();
            let err = backend
                .try_acquire(&key, &token, ttl, None)
                .await
                .unwrap_err();
            assert!(
                started.elapsed() < timeout * 4,
                "{:?}: {err}",
                started.elapsed()
            );
            err.kind()
        }
    };
    // Unknown master name.
    let unknown =
        RedisConfig::new("redis://primary").with_sentinel("no-such-master", group.sentinel_urls());
    assert_eq!(attempt(unknown).await, BackendErrorKind::Config);
    // No reachable sentinel.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nobody = RedisConfig::new("redis://primary")
        .with_sentinel(group.master_name(), [format!("redis://127.0.0.1:{port}")]);
    assert_eq!(attempt(nobody).await, BackendErrorKind::Unavailable);
    // Sentinel config pointed at a plain server.
    let plain = RedisServer::start_process(Default::default());
    let not_sentinel = RedisConfig::new("redis://primary")
        .with_sentinel(group.master_name(), [plain.url().to_owned()]);
    assert!(attempt(not_sentinel).await != BackendErrorKind::Other);
    // Cluster config pointed at a single server.
    let single_as_cluster = RedisConfig::new(plain.url()).with_cluster(Vec::<String>::new());
    assert_eq!(attempt(single_as_cluster).await, BackendErrorKind::Config);
    // Cluster config pointed at a sentinel.
    let sentinel_as_cluster =
        RedisConfig::new(group.sentinel_urls()[0].clone()).with_cluster(Vec::<String>::new());
    assert!(attempt(sentinel_as_cluster).await != BackendErrorKind::Other);
    // Single config pointed at a cluster node: keys of other nodes' slots.
    let cluster = RedisCluster::start();
    let backend = RedisBackend::from_url(&cluster.node_urls()[0]).unwrap();
    let mut kinds = std::collections::HashSet::new();
    for i in 0..16 {
        let key = LockKey::new("", format!("misrouted-{i}")).unwrap();
        if let Err(e) = backend.try_acquire(&key, &token, ttl, None).await {
            kinds.insert(e.kind());
        }
    }
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [BackendErrorKind::Config]
    );
    // Nothing left behind on the real primary.
    let good = RedisBackend::from_config(&config(&group)).unwrap();
    assert!(!good.inspect(&key).await.unwrap().held);
    // from_pool is for single servers.
    let pool = distlock_redis::deadpool_redis::Config::from_url(plain.url())
        .create_pool(Some(distlock_redis::deadpool_redis::Runtime::Tokio1))
        .unwrap();
    let refused = RedisBackend::from_pool(pool, &config(&group)).unwrap_err();
    assert_eq!(refused.kind(), BackendErrorKind::Config);
}

/// Issue 10 kind 3 on the Sentinel path: the backend's connection to the
/// primary dies while it is idle (`CLIENT KILL`, as a restart of the
/// primary does to it); the next call of each kind must not fail on the
/// dead connection: it looks the primary up again and sends the call once
/// more. (Before, the first call failed with `Unavailable`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_primary_connection_is_not_handed_to_the_next_call() {
    let group = SentinelGroup::start();
    let primary = tokio::task::block_in_place(|| group.primary_url());
    let backend = RedisBackend::from_config(&config(&group)).unwrap();
    let key = LockKey::new("sentinel", "dropped").unwrap();
    let ttl = Duration::from_secs(30);
    for op in ["acquire", "extend", "release", "inspect"] {
        // Warm: the connection is open.
        backend.inspect(&key).await.unwrap();
        let token = LockToken::generate();
        if op != "acquire" {
            let got = backend.try_acquire(&key, &token, ttl, None).await.unwrap();
            assert!(matches!(got, Acquire::Acquired { .. }), "{got:?}");
        }
        let killed = testkit::kill_client_connections(&primary).await.unwrap();
        assert!(killed >= 1, "{op}: the backend's connection was not found");
        // Let the client see the closed socket, as after an idle restart.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let first = testkit::holder_call(&backend, op, &key, &token, ttl).await;
        first.unwrap_or_else(|e| panic!("the first {op} after the connection died failed: {e}"));
        backend.release(&key, &token).await.unwrap();
    }
}
