//! Behaviour only a real Redis server shows: foreign key types, a server
//! that accepts connections and never answers, round trips, pub/sub
//! wake-ups, the key layout.
//!
//! Runs against `distlock_redis::testkit::RedisServer` (never a mock).
//! Injected faults (restart, pause, script flush, killed connections, an
//! exhausted pool, Redis down at start-up) are in `tests/faults.rs`.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use distlock_redis::redis::{self, aio::MultiplexedConnection, AsyncCommands};
use distlock_redis::testkit::RedisServer;
use distlock_redis::{
    Acquire, BackendErrorKind, Extend, LockBackend, LockError, LockKey, LockOptions, LockToken,
    Locker, RedisBackend, RedisConfig, Release,
};

fn unique(case: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "redis-only:{case}:{}:{}:{nanos:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn key(case: &str) -> LockKey {
    LockKey::new("tests", unique(case)).unwrap()
}

fn backend_at(url: &str) -> RedisBackend {
    RedisBackend::from_url(url).unwrap()
}

async fn raw(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

const TTL: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_another_type_is_wrong_type_naming_the_key() {
    let url = RedisServer::shared().url();
    let b = backend_at(url);
    let mut admin = raw(url).await;
    let t = LockToken::generate();

    // The lock key itself is a hash.
    let k = key("wrongtype");
    let lock_key = b.keys(&k).lock;
    let _: () = admin.hset(&lock_key, "f", "v").await.unwrap();
    let errors = [
        b.try_acquire(&k, &t, TTL, None).await.unwrap_err(),
        b.extend(&k, &t, TTL).await.unwrap_err(),
        b.release(&k, &t).await.unwrap_err(),
        b.inspect(&k).await.unwrap_err(),
    ];
    for e in errors {
        assert_eq!(e.kind(), BackendErrorKind::WrongType, "{e}");
        assert!(!e.is_transient());
        assert!(e.to_string().contains(&lock_key), "{e}");
        println!("{e}");
    }
    let locker = Locker::new(b.clone()).with_prefix("tests").unwrap();
    let err = locker.try_lock(k.name()).await;
    assert!(
        matches!(&err, Err(LockError::Backend(e)) if e.kind() == BackendErrorKind::WrongType),
        "{err:?}"
    );

    // The fence key is a list: the acquisition is refused and undone.
    let k = key("wrongtype-fence");
    let keys = b.keys(&k);
    let _: () = admin.rpush(&keys.fence, "x").await.unwrap();
    let e = b.try_acquire(&k, &t, TTL, None).await.unwrap_err();
    assert_eq!(e.kind(), BackendErrorKind::WrongType, "{e}");
    assert!(e.to_string().contains(&keys.fence), "{e}");
    let exists: bool = admin.exists(&keys.lock).await.unwrap();
    assert!(
        !exists,
        "a failed acquisition must not leave the lock taken"
    );
}

fn short_timeouts(url: &str) -> RedisConfig {
    RedisConfig::new(url)
        .with_connect_timeout(Duration::from_millis(300))
        .with_command_timeout(Duration::from_millis(300))
        .with_pool_wait_timeout(Duration::from_millis(200))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_server_times_out_within_the_bound() {
    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn);
        }
    });
    let b =
        RedisBackend::from_config(&short_timeouts(&format!("redis://127.0.0.1:{port}"))).unwrap();
    let k = key("hang");
    let t = LockToken::generate();
    let bound = Duration::from_millis(300 + 300 + 200 + 500);
    for _ in 0..2 {
        let started = Instant::now();
        let e = b.try_acquire(&k, &t, TTL, None).await.unwrap_err();
        let took = started.elapsed();
        println!("hanging server: {e} after {took:?}");
        assert_eq!(e.kind(), BackendErrorKind::Timeout, "{e}");
        assert!(took < bound, "{took:?}");
    }
    let started = Instant::now();
    let locker = Locker::new(b);
    let err = locker.try_lock(k.name()).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(started.elapsed() < bound);
}

/// `INFO commandstats` as command → calls.
async fn command_calls(conn: &mut MultiplexedConnection) -> BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("cmdstat_")?;
            let (name, stats) = rest.split_once(':')?;
            let calls = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

#[test]
fn every_operation_is_one_evalsha() {
    // A dedicated server, so that no other test's commands are counted.
    let server = RedisServer::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let b = backend_at(server.url());
        let mut admin = raw(server.url()).await;
        let k = key("round-trips");
        // Warm up: load the scripts and open the pooled connection.
        let t = LockToken::generate();
        b.try_acquire(&k, &t, TTL, Some("warm-up")).await.unwrap();
        b.extend(&k, &t, TTL).await.unwrap();
        b.inspect(&k).await.unwrap();
        b.release(&k, &t).await.unwrap();

        const N: u64 = 200;
        let mut per_op = Vec::new();
        for (op, expected_evalsha) in [
            ("acquire", N),
            ("extend", N),
            ("release", N),
            ("inspect", N),
        ] {
            let tokens: Vec<LockToken> = (0..N).map(|_| LockToken::generate()).collect();
            let keys: Vec<LockKey> = (0..N).map(|_| key("rt")).collect();
            // Set up state outside the measured window.
            if op == "extend" || op == "release" {
                for (k, t) in keys.iter().zip(&tokens) {
                    b.try_acquire(k, t, TTL, Some("me")).await.unwrap();
                }
            }
            let before = command_calls(&mut admin).await;
            let started = Instant::now();
            for (k, t) in keys.iter().zip(&tokens) {
                match op {
                    "acquire" => {
                        b.try_acquire(k, t, TTL, Some("me")).await.unwrap();
                    }
                    "extend" => {
                        assert_eq!(b.extend(k, t, TTL).await.unwrap(), Extend::Extended);
                    }
                    "release" => {
                        assert_eq!(b.release(k, t).await.unwrap(), Release::Released);
                    }
                    _ => {
                        b.inspect(k).await.unwrap();
                    }
                }
            }
            let took = started.elapsed();
            let after = command_calls(&mut admin).await;
            let delta: BTreeMap<String, u64> = after
                .iter()
                .map(|(name, calls)| (name.clone(), calls - before.get(name).copied().unwrap_or(0)))
                .filter(|(name, d)| *d > 0 && name != "info")
                .collect();
            println!(
                "{op}: {N} calls in {took:?} ({:?} each); server commands: {delta:?}",
                took / N as u32
            );
            assert_eq!(
                delta.get("evalsha").copied(),
                Some(expected_evalsha),
                "{op}: {delta:?}"
            );
            for extra in ["eval", "ping", "unwatch", "script", "multi", "exec"] {
                assert_eq!(delta.get(extra), None, "{op}: {delta:?}");
            }
            per_op.push((op, delta));
        }
        // The commands a client sends are the ones a script cannot call.
        let _ = per_op;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_wakes_a_waiter_on_another_client() {
    let url = RedisServer::shared().url();
    let holder = backend_at(url);
    let waiter = backend_at(url);
    let k = key("pubsub");
    let t = LockToken::generate();
    assert!(matches!(
        holder.try_acquire(&k, &t, TTL, None).await.unwrap(),
        Acquire::Acquired { .. }
    ));

    // The watch is registered and the subscription live when watch returns.
    let mut watch = waiter.watch(&k).await.unwrap().expect("release_notify");
    assert!(waiter.release_subscriber_connected());
    assert_eq!(waiter.registered_waiters(), 1);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), watch.released())
            .await
            .is_err(),
        "woken without a release"
    );
    let released_at = Instant::now();
    assert_eq!(holder.release(&k, &t).await.unwrap(), Release::Released);
    tokio::time::timeout(Duration::from_secs(2), watch.released())
        .await
        .expect("the release notification arrived");
    println!("notified {:?} after the release", released_at.elapsed());
    drop(watch);
    assert_eq!(waiter.registered_waiters(), 0);

    // Through the Locker: a waiter whose backoff is long is woken by the
    // release, not by polling.
    let name = unique("pubsub-locker");
    let a = Locker::new(holder.clone());
    let b = Locker::new(waiter.clone());
    let guard = a.try_lock(&name).await.unwrap().expect("free");
    let opts = LockOptions::default()
        .with_wait_timeout(Duration::from_secs(20))
        .with_retry(Duration::from_secs(10), Duration::from_secs(10));
    let waiting = tokio::spawn(async move {
        let guard = b.lock_with(&name, |_| opts.clone()).await.unwrap();
        (Instant::now(), guard)
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while waiter.registered_waiters() == 0 {
        assert!(Instant::now() < deadline, "the waiter never registered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Let the waiter's immediate retry after registering pass.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let released_at = Instant::now();
    assert_eq!(guard.release().await.unwrap(), Release::Released);
    let (acquired_at, guard) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiter was woken")
        .unwrap();
    let latency = acquired_at - released_at;
    println!("waiter acquired {latency:?} after the release");
    assert!(latency < Duration::from_secs(2), "{latency:?}");
    guard.release().await.unwrap();
    assert_eq!(waiter.registered_waiters(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_labels_fences_and_key_layout_on_the_server() {
    let url = RedisServer::shared().url();
    let b = backend_at(url);
    let mut admin = raw(url).await;
    let k = key("layout");
    let keys = b.keys(&k);
    assert_eq!(keys.lock, format!("distlock:{}", k.encoded()));
    let t = LockToken::generate();
    let Acquire::Acquired { fence } = b
        .try_acquire(&k, &t, Duration::from_secs(10), Some("worker-7"))
        .await
        .unwrap()
    else {
        panic!("not acquired")
    };
    let stored: String = admin.get(&keys.lock).await.unwrap();
    assert_eq!(stored, t.as_hex());
    let owner: String = admin.get(&keys.owner).await.unwrap();
    assert_eq!(owner, "worker-7");
    // The fence key lives a day (the default fence_retention) after the
    // name's last acquire (then restarts from the server clock, still
    // higher), so names used once do not stay forever.
    let fence_ttl: i64 = admin.pttl(&keys.fence).await.unwrap();
    assert!(
        fence_ttl > 86_000_000 && fence_ttl <= 86_400_000,
        "fence key PTTL {fence_ttl}"
    );
    let first_fence: u64 = admin.get(&keys.fence).await.unwrap();
    assert_eq!(first_fence, fence);
    let info = b.inspect(&k).await.unwrap();
    assert_eq!(info.owner.as_deref(), Some("worker-7"));
    assert_eq!(info.last_fence, Some(fence));
    assert!(info.remaining.unwrap() <= Duration::from_secs(10));

    assert_eq!(
        b.extend(&k, &t, Duration::from_secs(60)).await.unwrap(),
        Extend::Extended
    );
    let owner_ttl: i64 = admin.pttl(&keys.owner).await.unwrap();
    assert!(
        owner_ttl > 10_000,
        "the owner key is extended with the lock"
    );

    let other = LockToken::generate();
    assert_eq!(b.release(&k, &other).await.unwrap(), Release::NotHeld);
    assert_eq!(b.release(&k, &t).await.unwrap(), Release::Released);
    let left: i64 = admin.exists(&[&keys.lock, &keys.owner]).await.unwrap();
    assert_eq!(left, 0);
    let info = b.inspect(&k).await.unwrap();
    assert!(!info.held);
    assert_eq!(info.last_fence, Some(fence));
}

/// The fencing counter starts from the server clock (µs) whenever it is
/// missing (first use, its expiry after fence_retention, data loss), so fences handed out
/// after it vanished are still above every earlier one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_fence_counter_restarts_above_every_earlier_fence() {
    let url = RedisServer::shared().url();
    let b = backend_at(url);
    let mut admin = raw(url).await;
    let k = key("fence-restart");
    let keys = b.keys(&k);
    let mut fences = Vec::new();
    for round in 0..4 {
        if round == 2 {
            // As if the counter expired or Redis lost its data.
            let _: () = admin.del(&keys.fence).await.unwrap();
        }
        let t = LockToken::generate();
        let Acquire::Acquired { fence } = b
            .try_acquire(&k, &t, Duration::from_secs(10), None)
            .await
            .unwrap()
        else {
            panic!("not acquired")
        };
        assert_eq!(b.release(&k, &t).await.unwrap(), Release::Released);
        fences.push(fence);
    }
    println!("fences {fences:?}");
    assert!(fences[0] > 1_600_000_000_000_000, "not µs since the epoch");
    assert_eq!(fences[1], fences[0] + 1);
    assert!(fences[2] > fences[1], "{fences:?}");
    assert_eq!(fences[3], fences[2] + 1);
}
