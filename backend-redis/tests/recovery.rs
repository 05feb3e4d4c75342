//! The Redis-backend kinds of issue 10 against real Redis servers: after a
//! restart no call gets the dead connection (3), one connection however many
//! callers (4), the script cache may vanish at any moment (5), a lock key
//! without expiry is an error and fence counters have a chosen retention
//! (6), passing server states are transient (7), and cancellation and
//! release ordering (10).
//!
//! Every test owns a `redis-server` process (`RedisServer::start_process`),
//! because it restarts it, changes its configuration, counts its clients or
//! flushes its script cache. Every wait is bounded by `no_hang`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use distlock_redis::redis::{self, aio::MultiplexedConnection, AsyncCommands};
use distlock_redis::testkit::{self, ProcessOptions, RedisServer};
use distlock_redis::{
    Acquire, BackendErrorKind, LockBackend, LockError, LockKey, LockOptions, LockToken, Locker,
    RedisBackend, RedisConfig, Release, Waiter, WaiterId,
};
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(30);
/// No single step of a test may take longer than this: a hang fails.
const HANG: Duration = Duration::from_secs(30);

fn server() -> RedisServer {
    RedisServer::start_process(ProcessOptions::new())
}

fn config(url: &str) -> RedisConfig {
    RedisConfig::new(url)
        .with_connect_timeout(Duration::from_millis(500))
        .with_command_timeout(Duration::from_secs(1))
        .with_pool_wait_timeout(Duration::from_millis(500))
}

fn backend(url: &str) -> RedisBackend {
    RedisBackend::from_config(&config(url)).unwrap()
}

fn unique(case: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "recovery:{case}:{}:{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn key(case: &str) -> LockKey {
    LockKey::new("recovery", unique(case)).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn no_hang<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(HANG, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what} hung for {HANG:?}"),
    }
}

async fn admin(url: &str) -> MultiplexedConnection {
    let mut c = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg("test-admin")
        .query_async(&mut c)
        .await
        .unwrap();
    c
}

/// Waits until `url` answers `PING` again (within [`HANG`]).
async fn wait_until_ready(url: &str) {
    testkit::wait_until_ready(url, HANG, Duration::from_millis(20))
        .await
        .unwrap();
}

fn kind(e: &LockError) -> Option<BackendErrorKind> {
    e.backend_error().map(|b| b.kind())
}

/// Kind 3: the backend is idle, Redis restarts (about 25 ms down); the
/// next call must not fail on the dead shared connection (it detects it,
/// reconnects and sends the call again), and the script cache of the new
/// server is empty (as after a failover to a server that never saw the
/// scripts): no call fails either.
#[test]
fn an_idle_backend_survives_a_restart() {
    let server = server();
    runtime().block_on(async {
        let b = backend(server.url());
        let k = key("restart-idle");
        for op in ["acquire", "extend", "release", "inspect"] {
            // Warm: the shared connection is open and the scripts cached.
            b.inspect(&k).await.unwrap();
            let token = LockToken::generate();
            if op != "acquire" {
                assert!(matches!(
                    b.try_acquire(&k, &token, TTL, None).await.unwrap(),
                    Acquire::Acquired { .. }
                ));
            }
            tokio::task::block_in_place(|| {
                server.stop();
                std::thread::sleep(Duration::from_millis(25));
                server.restart();
            });
            no_hang("restart", wait_until_ready(server.url())).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            if op != "acquire" {
                // As with persistence: the lock survived the restart.
                let mut admin = admin(server.url()).await;
                let () = redis::cmd("SET")
                    .arg(b.keys(&k).lock)
                    .arg(token.as_hex())
                    .arg("PX")
                    .arg(30_000)
                    .query_async(&mut admin)
                    .await
                    .unwrap();
            }
            let first = match op {
                "acquire" => b
                    .try_acquire(&k, &token, TTL, None)
                    .await
                    .map(|a| assert!(matches!(a, Acquire::Acquired { .. }), "{a:?}")),
                "extend" => b
                    .extend(&k, &token, TTL)
                    .await
                    .map(|e| assert_eq!(e, distlock_redis::Extend::Extended)),
                "release" => b
                    .release(&k, &token)
                    .await
                    .map(|r| assert_eq!(r, Release::Released)),
                _ => b.inspect(&k).await.map(drop),
            };
            first.unwrap_or_else(|e| panic!("the first {op} after the restart failed: {e}"));
            b.release(&k, &token).await.unwrap();
        }
    });
}

/// Kind 3: a waiter with time left keeps waiting across a restart (the
/// calls while Redis is down fail transiently and are retried) and takes
/// the lock once Redis is back (the restart dropped the holder's lock).
#[test]
fn a_waiter_keeps_waiting_across_a_restart() {
    let server = server();
    runtime().block_on(async {
        let holder = Locker::new(backend(server.url()));
        let waiter = Locker::new(backend(server.url()));
        let name = unique("restart-wait");
        let _held = holder
            .try_lock_with(&name, |_| LockOptions::default().with_ttl(TTL))
            .await
            .unwrap()
            .unwrap();
        let opts = LockOptions::default()
            .with_ttl(TTL)
            .with_retry(Duration::from_millis(20), Duration::from_millis(200))
            .with_wait_timeout(Duration::from_secs(20));
        let waiting = {
            let (w, n) = (waiter.clone(), name.clone());
            tokio::spawn(async move { w.lock_with(&n, |_| opts.clone()).await })
        };
        // The waiter has subscribed and is waiting.
        let wb = waiter.backend().clone();
        no_hang("the waiter's subscription", async {
            while wb.subscribed_channels() == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        tokio::task::block_in_place(|| {
            server.stop();
            std::thread::sleep(Duration::from_millis(25));
            server.restart();
        });
        let guard = no_hang("the waiter", waiting)
            .await
            .unwrap()
            .expect("the waiter acquires after the restart instead of failing");
        assert!(guard.is_valid());
        guard.release().await.unwrap();
    });
}

/// The backend's connections on `admin`'s server: every client but the
/// admin itself.
async fn clients(admin: &mut MultiplexedConnection) -> Vec<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(admin)
        .await
        .unwrap();
    list.lines()
        .filter(|l| !l.contains("name=test-admin"))
        .map(str::to_owned)
        .collect()
}

/// Kind 4: opening the shared connection happens once and others wait for
/// it; 32 concurrent calls on a new backend, and again after it sat idle
/// past the idle check, use one connection (CLIENT LIST).
#[test]
fn concurrent_callers_share_one_connection_cold_and_after_idle() {
    let server = server();
    runtime().block_on(async {
        let mut admin = admin(server.url()).await;
        let b = backend(server.url());
        let burst = || {
            let tasks: Vec<_> = (0..32)
                .map(|i| {
                    let b = b.clone();
                    tokio::spawn(async move {
                        let k = LockKey::new("recovery", format!("conn-{i}")).unwrap();
                        b.inspect(&k).await.unwrap();
                    })
                })
                .collect();
            async move {
                for t in tasks {
                    no_hang("inspect", t).await.unwrap();
                }
            }
        };
        burst().await;
        let cold = clients(&mut admin).await;
        assert_eq!(cold.len(), 1, "a new backend opened {cold:#?}");
        assert_eq!(b.pool_status().size, 1, "{:?}", b.pool_status());

        tokio::time::sleep(distlock_redis::CHECK_IDLE_AFTER + Duration::from_millis(500)).await;
        burst().await;
        let idle = clients(&mut admin).await;
        assert_eq!(idle.len(), 1, "after idling the backend holds {idle:#?}");
        assert_eq!(b.pool_status().size, 1, "{:?}", b.pool_status());
    });
}

/// Kind 5: `SCRIPT FLUSH` in a tight loop from another connection while
/// operations run: no call fails (a `NOSCRIPT` answer is followed by `EVAL`
/// with the body, so no flush can come between loading and running).
#[test]
fn operations_survive_script_flushes_in_a_tight_loop() {
    let server = server();
    runtime().block_on(async {
        let b = backend(server.url());
        let mut admin = admin(server.url()).await;
        let stop = Arc::new(AtomicBool::new(false));
        let flusher = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut flushes = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let () = redis::cmd("SCRIPT")
                        .arg("FLUSH")
                        .query_async(&mut admin)
                        .await
                        .unwrap();
                    flushes += 1;
                }
                flushes
            })
        };
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(async move {
                    let k = key("flush");
                    for _ in 0..150 {
                        let t = LockToken::generate();
                        let got = b.try_acquire(&k, &t, TTL, Some("w")).await?;
                        assert!(matches!(got, Acquire::Acquired { .. }), "{got:?}");
                        b.extend(&k, &t, TTL).await?;
                        assert!(b.inspect(&k).await?.held);
                        assert_eq!(b.release(&k, &t).await?, Release::Released);
                    }
                    Ok::<_, distlock_redis::BackendError>(())
                })
            })
            .collect();
        for w in workers {
            no_hang("a worker", w)
                .await
                .unwrap()
                .expect("no call fails while scripts are flushed");
        }
        stop.store(true, Ordering::Relaxed);
        let flushes = no_hang("the flusher", flusher).await.unwrap();
        println!("{flushes} SCRIPT FLUSHes during 2400 calls");
        assert!(flushes > 10, "only {flushes} flushes");
    });
}

/// Kind 7: a script running past `busy-reply-threshold` makes Redis answer
/// `BUSY`: a transient `Unavailable`, and a waiter with time left keeps
/// waiting and acquires after `SCRIPT KILL`.
#[test]
fn busy_is_transient_and_waiters_wait_through_it() {
    let server = server();
    runtime().block_on(async {
        let b = backend(server.url());
        let locker = Locker::new(b.clone());
        let mut admin = admin(server.url()).await;
        b.inspect(&key("warm")).await.unwrap();
        let () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("busy-reply-threshold")
            .arg(50)
            .query_async(&mut admin)
            .await
            .unwrap();
        // Kills the looping script however this test ends (a failed
        // assertion must not leave a server that ignores its shutdown).
        let _kill = KillScriptOnDrop(server.url().to_owned());
        // A client whose script loops until killed.
        let url = server.url().to_owned();
        let looping = tokio::spawn(async move {
            let mut c = redis::Client::open(url.as_str())
                .unwrap()
                .get_multiplexed_async_connection_with_config(
                    &redis::AsyncConnectionConfig::new().set_response_timeout(None),
                )
                .await
                .unwrap();
            let _: Result<redis::Value, _> = redis::cmd("EVAL")
                .arg("while true do end")
                .arg(0)
                .query_async(&mut c)
                .await;
        });
        no_hang("BUSY", async {
            loop {
                let r: Result<String, _> = redis::cmd("PING").query_async(&mut admin).await;
                if r.as_ref().is_err_and(|e| e.code() == Some("BUSY")) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;

        let name = unique("busy");
        let err = locker.try_lock(&name).await.unwrap_err();
        assert_eq!(kind(&err), Some(BackendErrorKind::Unavailable), "{err}");
        assert!(err.is_transient());
        assert!(err.to_string().contains("BUSY"), "{err}");

        let waiting = {
            let (l, n) = (locker.clone(), name.clone());
            let opts = LockOptions::default()
                .with_ttl(TTL)
                .with_retry(Duration::from_millis(10), Duration::from_millis(100))
                .with_wait_timeout(Duration::from_secs(20));
            tokio::spawn(async move { l.lock_with(&n, |_| opts.clone()).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "the waiter gave up during BUSY");
        let () = redis::cmd("SCRIPT")
            .arg("KILL")
            .query_async(&mut admin)
            .await
            .unwrap();
        let guard = no_hang("the waiter", waiting)
            .await
            .unwrap()
            .expect("the waiter acquires after SCRIPT KILL");
        guard.release().await.unwrap();
        no_hang("the looping client", looping).await.unwrap();
    });
}

/// Sends `SCRIPT KILL` (over a blocking connection) when dropped.
struct KillScriptOnDrop(String);

impl Drop for KillScriptOnDrop {
    fn drop(&mut self) {
        let url = self.0.clone();
        // On its own thread: this may run inside the runtime.
        let _ = std::thread::spawn(move || {
            if let Ok(mut c) = redis::Client::open(url.as_str()).and_then(|c| c.get_connection()) {
                let _: Result<(), _> = redis::cmd("SCRIPT").arg("KILL").query(&mut c);
            }
        })
        .join();
    }
}

/// Kind 7: writes refused for a passing reason (`min-replicas-to-write`
/// without replicas: `NOREPLICAS`; `maxmemory` reached: `OOM`) are
/// transient `Unavailable` errors, and the backend works once they pass.
#[test]
fn noreplicas_and_oom_are_transient() {
    let server = server();
    runtime().block_on(async {
        let b = backend(server.url());
        let locker = Locker::new(b.clone());
        let mut admin = admin(server.url()).await;
        for (setting, on, off, code) in [
            ("min-replicas-to-write", "1", "0", "NOREPLICAS"),
            ("maxmemory", "1", "0", "OOM"),
        ] {
            let set = |value: &str| {
                let mut cmd = redis::cmd("CONFIG");
                cmd.arg("SET").arg(setting).arg(value);
                cmd
            };
            let () = set(on).query_async(&mut admin).await.unwrap();
            let err = locker.try_lock(unique("refused")).await.unwrap_err();
            assert_eq!(kind(&err), Some(BackendErrorKind::Unavailable), "{err}");
            assert!(err.is_transient(), "{err}");
            assert!(err.to_string().contains(code), "{err}");
            let () = set(off).query_async(&mut admin).await.unwrap();
            let guard = locker.try_lock(unique("refused")).await.unwrap().unwrap();
            guard.release().await.unwrap();
        }
    });
}

/// Kind 6: a lock key without an expiry was not written by distlock: a
/// typed `WrongType` error naming the key, not a lock held forever.
#[test]
fn a_lock_key_without_expiry_is_a_typed_error() {
    let server = server();
    runtime().block_on(async {
        let b = backend(server.url());
        let mut admin = admin(server.url()).await;
        let k = key("no-expiry");
        let lock_key = b.keys(&k).lock;
        let () = admin.set(&lock_key, "foreign").await.unwrap();
        let token = LockToken::generate();
        let errors = [
            b.try_acquire(&k, &token, TTL, None).await.map(drop),
            b.extend(&k, &token, TTL).await.map(drop),
            b.inspect(&k).await.map(drop),
        ];
        for e in errors {
            let e = e.expect_err("a key without expiry is refused");
            assert_eq!(e.kind(), BackendErrorKind::WrongType, "{e}");
            assert!(e.to_string().contains(&lock_key), "{e}");
            assert!(e.to_string().contains("no expiry"), "{e}");
        }
        // Nothing was changed.
        let value: String = admin.get(&lock_key).await.unwrap();
        assert_eq!(value, "foreign");
        let ttl: i64 = admin.pttl(&lock_key).await.unwrap();
        assert_eq!(ttl, -1);
    });
}

/// Kind 6: the fencing counter lives `fence_retention` after the name's
/// last acquire (refreshed by every acquire), then restarts from the server
/// clock above every earlier fence.
#[test]
fn fence_counters_follow_the_retention_setting() {
    let server = server();
    runtime().block_on(async {
        let retention = Duration::from_secs(1);
        let b = RedisBackend::from_config(&config(server.url()).with_fence_retention(retention))
            .unwrap();
        let mut admin = admin(server.url()).await;
        let k = key("retention");
        let fence_key = b.keys(&k).fence;
        let mut fences = Vec::new();
        for round in 0..3 {
            let t = LockToken::generate();
            let Acquire::Acquired { fence } = b.try_acquire(&k, &t, TTL, None).await.unwrap()
            else {
                panic!("not acquired")
            };
            let pttl: i64 = admin.pttl(&fence_key).await.unwrap();
            assert!(pttl > 0 && pttl <= 1000, "fence PTTL {pttl}");
            b.release(&k, &t).await.unwrap();
            fences.push(fence);
            if round == 1 {
                no_hang("the counter's expiry", async {
                    while admin.exists::<_, bool>(&fence_key).await.unwrap() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                })
                .await;
            }
        }
        assert_eq!(fences[1], fences[0] + 1, "{fences:?}");
        assert!(fences[2] > fences[1], "{fences:?}");
    });
}

/// Kind 6: the state names leave in Redis after one lock and release each:
/// only the fencing counter (no lock, owner or tombstone key), and the
/// bytes per name `MEMORY USAGE` and `INFO memory` report. Run with
/// `DISTLOCK_STATE_NAMES=100000` for the README's figure.
#[test]
fn state_left_per_name_is_one_bounded_counter() {
    let names: usize = std::env::var("DISTLOCK_STATE_NAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let server = server();
    runtime().block_on(async {
        let b = backend(server.url());
        let mut admin = admin(server.url()).await;
        let used = |info: String| -> i64 {
            info.lines()
                .find_map(|l| l.strip_prefix("used_memory:"))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut admin)
            .await
            .unwrap();
        let before = used(info);
        let k0 = LockKey::new("orders", "order-0").unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|w| {
                let b = b.clone();
                tokio::spawn(async move {
                    for i in (w..names).step_by(8) {
                        let k = LockKey::new("orders", format!("order-{i}")).unwrap();
                        let t = LockToken::generate();
                        b.try_acquire(&k, &t, TTL, None).await.unwrap();
                        assert_eq!(b.release(&k, &t).await.unwrap(), Release::Released);
                    }
                })
            })
            .collect();
        for t in tasks {
            no_hang("locking every name", t).await.unwrap();
        }
        // The `released` tombstones go within seconds; then one key (the
        // fence counter) per name is left.
        no_hang("the tombstones' expiry", async {
            loop {
                let keys: i64 = redis::cmd("DBSIZE").query_async(&mut admin).await.unwrap();
                assert!(keys as usize >= names, "{keys} keys for {names} names");
                if keys as usize == names {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut admin)
            .await
            .unwrap();
        let after = used(info);
        let fence_key = b.keys(&k0).fence;
        let usage: i64 = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&fence_key)
            .query_async(&mut admin)
            .await
            .unwrap();
        let per_name = (after - before) as f64 / names as f64;
        println!(
            "{names} names: used_memory +{} bytes ({per_name:.0} bytes per name); \
             MEMORY USAGE of one counter ({fence_key}): {usage} bytes",
            after - before
        );
        assert!(usage < 200, "{usage}");
        assert!(admin.pttl::<_, i64>(&fence_key).await.unwrap() > 0);
    });
}

/// Kind 10, first bullet: an acquire that reaches Redis after the release
/// of its own token (it was cancelled in flight, its connection discarded,
/// and the background release went out on a fresh connection and ran
/// first) must not take the lock. Sent in exactly that order here.
#[test]
fn a_late_acquire_after_its_release_does_not_take_the_lock() {
    let server = server();
    runtime().block_on(async {
        let b = backend(server.url());
        let k = key("late-acquire");
        let token = LockToken::generate();
        // The background release runs first: nothing held by this token.
        assert_eq!(b.release(&k, &token).await.unwrap(), Release::NotHeld);
        // Then the cancelled acquire arrives.
        let late = b.try_acquire(&k, &token, TTL, None).await;
        assert!(
            !matches!(late, Ok(Acquire::Acquired { .. })),
            "the late acquire took the lock: {late:?}"
        );
        assert!(!b.inspect(&k).await.unwrap().held);
        let other = LockToken::generate();
        assert!(matches!(
            b.try_acquire(&k, &other, TTL, None).await.unwrap(),
            Acquire::Acquired { .. }
        ));
        // The tombstone is in the lock's hash slot and expires.
        let mut admin = admin(server.url()).await;
        let tombstone = b.keys(&k).tombstone(&token);
        assert!(tombstone.contains(&format!("{{{}}}", unique_tag(&k))));
        let pttl: i64 = admin.pttl(&tombstone).await.unwrap();
        assert!(
            pttl > 0 && pttl <= distlock_redis::RELEASE_TOMBSTONE_TTL.as_millis() as i64,
            "{pttl}"
        );
    });
}

fn unique_tag(k: &LockKey) -> String {
    let e = k.encoded();
    let start = e.find('{').unwrap() + 1;
    let end = e[start..].find('}').unwrap() + start;
    e[start..end].to_owned()
}

/// Kind 3: the same acquire sent twice (its connection dropped before the
/// answer, and the backend sent it again) answers "acquired" with the same
/// fence the second time; extend and inspect are plain repeats.
#[test]
fn every_script_is_safe_to_send_twice() {
    let server = server();
    runtime().block_on(async {
        let b = backend(server.url());
        let k = key("twice");
        let t = LockToken::generate();
        let first = b.try_acquire(&k, &t, TTL, Some("me")).await.unwrap();
        let second = b.try_acquire(&k, &t, TTL, Some("me")).await.unwrap();
        assert!(matches!(first, Acquire::Acquired { .. }), "{first:?}");
        assert_eq!(first, second);
        let info = b.inspect(&k).await.unwrap();
        assert_eq!(info.owner.as_deref(), Some("me"));
        assert!(matches!(
            b.try_acquire(&k, &LockToken::generate(), TTL, None)
                .await
                .unwrap(),
            Acquire::Held { .. }
        ));
        assert_eq!(b.release(&k, &t).await.unwrap(), Release::Released);
        // A second release says "not held" (the trait's contract); the
        // backend therefore reports a *repeated* release that finds the
        // lock gone as an unknown outcome, not as NotHeld.
        assert_eq!(b.release(&k, &t).await.unwrap(), Release::NotHeld);
        assert!(!b.inspect(&k).await.unwrap().held);
        // A released token can never acquire again (its tombstone).
        assert!(b.try_acquire(&k, &t, TTL, None).await.is_err());

        // The line of waiters: a queued call sent twice keeps one place; a
        // handing release sent twice finds the lock handed on (not held by
        // its token) and leaves the handover alone (the backend reports
        // such a repeat as an unknown outcome); a claim sent twice answers
        // the same fence and only sets the TTL again.
        let mut admin = admin(server.url()).await;
        let keys = b.keys(&k);
        let holder = LockToken::generate();
        let f0 = match b.try_acquire(&k, &holder, TTL, None).await.unwrap() {
            Acquire::Acquired { fence } => fence,
            other => panic!("{other:?}"),
        };
        let (q, w) = (
            LockToken::generate(),
            Waiter::new(WaiterId::generate(), Duration::from_secs(10)),
        );
        for _ in 0..2 {
            let joined = b.try_acquire_queued(&k, &q, TTL, None, &w).await.unwrap();
            assert!(matches!(joined, Acquire::Held { .. }), "{joined:?}");
        }
        let places: i64 = admin.zcard(&keys.waiters).await.unwrap();
        assert_eq!(places, 1);
        assert_eq!(b.release(&k, &holder).await.unwrap(), Release::Released);
        assert_eq!(b.release(&k, &holder).await.unwrap(), Release::NotHeld);
        let value: Option<String> = admin.get(&keys.lock).await.unwrap();
        assert_eq!(
            value.as_deref(),
            Some(q.as_hex()),
            "the repeat undid the handover"
        );
        let first = b.try_acquire_queued(&k, &q, TTL, None, &w).await.unwrap();
        let second = b.try_acquire_queued(&k, &q, TTL, None, &w).await.unwrap();
        assert_eq!(first, Acquire::Acquired { fence: f0 + 1 });
        assert_eq!(first, second);
        assert_eq!(b.release(&k, &q).await.unwrap(), Release::Released);
        assert_eq!(b.release(&k, &q).await.unwrap(), Release::NotHeld);
        assert!(!b.inspect(&k).await.unwrap().held);
    });
}

/// Kind 10, second bullet: a release by one `Locker` wakes waiters of
/// another `Locker` on the same backend through the in-process hub, not
/// only through the pub/sub message. The ACL user here may not `SUBSCRIBE`,
/// so no message ever arrives, and the waiter's retry is far away: only the
/// hub can wake it in time.
#[test]
fn a_release_wakes_waiters_of_another_locker_on_the_same_backend() {
    let server =
        RedisServer::start_process(ProcessOptions::new().args(["--requirepass", "admin-pw"]));
    runtime().block_on(async {
        let admin_url = server
            .url()
            .replace("redis://", "redis://default:admin-pw@");
        let mut admin = admin(&admin_url).await;
        let () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg("nosub")
            .arg("reset")
            .arg("on")
            .arg(">nosub-pw")
            .arg("~distlock:*")
            .arg("&distlock:*")
            .arg("+@all")
            .arg("-subscribe")
            .arg("-psubscribe")
            .arg("-ssubscribe")
            .query_async(&mut admin)
            .await
            .unwrap();
        let url = server.url().replace("redis://", "redis://nosub:nosub-pw@");
        let b = backend(&url);
        let a = Locker::new(b.clone());
        let w = Locker::new(b.clone());
        let name = unique("hub");
        let held = a.try_lock(&name).await.unwrap().unwrap();
        let opts = LockOptions::default()
            .with_ttl(TTL)
            .with_retry(Duration::from_secs(20), Duration::from_secs(20))
            .with_wait_timeout(Duration::from_secs(25));
        let waiting = {
            let (w, n) = (w.clone(), name.clone());
            tokio::spawn(async move {
                let guard = w.lock_with(&n, |_| opts.clone()).await;
                (Instant::now(), guard)
            })
        };
        no_hang("the waiter's registration", async {
            while b.registered_waiters() == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        // Past the waiter's immediate retry after registering.
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Nobody listens on the release channel: no message can wake it.
        let channel = b.release_channel(&a.key(&name).unwrap());
        let numsub: (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&channel)
            .query_async(&mut admin)
            .await
            .unwrap();
        assert_eq!(numsub.1, 0, "{numsub:?}");
        let released_at = Instant::now();
        held.release().await.unwrap();
        let (acquired_at, guard) = no_hang("the waiter", waiting).await.unwrap();
        let guard = guard.unwrap();
        let latency = acquired_at - released_at;
        assert!(
            latency < Duration::from_secs(10),
            "the waiter was not woken by the release ({latency:?})"
        );
        guard.release().await.unwrap();
    });
}
