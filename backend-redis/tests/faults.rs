//! Faults against a real Redis server (issue #6): each test injects one
//! fault and asserts what the user of distlock sees: the error kind, the
//! lost-lock signal, fencing order, bounded call times, and that the same
//! client works again once the fault is gone.
//!
//! Tests that stop, restart or pause Redis get a dedicated server from
//! `RedisServer::start()` (a container of `DISTLOCK_REDIS_IMAGE` or a
//! `redis-server` process). Every wait is wrapped in `tokio::time::timeout`,
//! so a hang fails the test instead of stalling it.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use distlock_conformance::fenced::{FencedResource, StaleFence};
use distlock_redis::deadpool_redis;
use distlock_redis::redis::{self, aio::MultiplexedConnection};
use distlock_redis::testkit::{self, RedisServer};
use distlock_redis::{
    BackendError, BackendErrorKind, LockBackend, LockError, LockKey, LockOptions, LockToken,
    Locker, RedisBackend, RedisConfig, Release,
};
use tokio::time::Instant;

/// The lease of locks that must not expire during a test.
const TTL: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const COMMAND_TIMEOUT: Duration = Duration::from_millis(500);
const POOL_WAIT_TIMEOUT: Duration = Duration::from_millis(300);
/// Slack on top of a configured bound, for a noisy machine.
const MARGIN: Duration = Duration::from_millis(1500);
/// The wait timeout of waiters in these tests.
const WAIT: Duration = Duration::from_secs(1);
/// No single step of a test may take longer than this: a hang fails.
const HANG: Duration = Duration::from_secs(30);

/// The documented bound of one backend call: pool wait + connect + command.
fn call_bound() -> Duration {
    POOL_WAIT_TIMEOUT + CONNECT_TIMEOUT + COMMAND_TIMEOUT
}

fn fault_config(url: &str) -> RedisConfig {
    RedisConfig::new(url)
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_command_timeout(COMMAND_TIMEOUT)
        .with_pool_wait_timeout(POOL_WAIT_TIMEOUT)
}

fn unique(case: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "fault:{case}:{}:{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn opts(ttl: Duration) -> LockOptions {
    LockOptions::default()
        .with_ttl(ttl)
        .with_wait_timeout(Duration::ZERO)
}

/// A runtime for one test. Tests that own a server build it themselves, so
/// the server (and the runtime inside a container handle) is dropped after
/// the runtime, outside any async context, even when the test fails.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Waits until `url` answers `PING` again (within [`HANG`]).
async fn wait_until_ready(url: &str) {
    testkit::wait_until_ready(url, HANG, Duration::from_millis(50))
        .await
        .unwrap();
}

/// Runs blocking server control (Docker or signals) without stalling the
/// runtime's other tasks (renewal, subscriber).
fn control<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Awaits `f`, failing the test if it takes longer than [`HANG`].
async fn no_hang<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(HANG, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what} hung for {HANG:?}"),
    }
}

async fn admin(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn backend_kind(err: &LockError) -> Option<BackendErrorKind> {
    err.backend_error().map(BackendError::kind)
}

/// Case 1. Redis restarts (without persistence) while locks are held: the
/// renewal finds the lock gone and fires the lost signal before the local
/// deadline; `extend` and `release` say not-held; the same client acquires
/// again. The fencing counter is gone with the data, but restarts from the
/// server clock, so fences keep increasing and a fenced resource accepts the
/// new holder.
#[test]
fn fault_redis_restarted_while_held_fires_lost_signal() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let backend = RedisBackend::from_config(&fault_config(server.url())).unwrap();
        let locker = Locker::new(backend.clone()).with_prefix("faults").unwrap();
        let name = unique("restart");
        let resource = FencedResource::new();

        // Three earlier acquisitions: the counter starts from the server
        // clock in microseconds, then counts up by one.
        let mut first = None;
        for n in 0..3 {
            let g = locker
                .try_lock_with(&name, |_| opts(TTL))
                .await
                .unwrap()
                .unwrap();
            let first = *first.get_or_insert(g.fence());
            assert_eq!(g.fence(), first + n);
            g.release().await.unwrap();
        }
        let first = first.unwrap();
        assert!(
            first > 1_600_000_000_000_000,
            "not a microsecond clock: {first}"
        );
        let ttl = Duration::from_secs(8);
        let renewing = locker
            .lock_with(&name, |_| opts(ttl).with_auto_renew(true))
            .await
            .unwrap();
        let fence_before = renewing.fence();
        assert_eq!(fence_before, first + 3);
        resource.write(fence_before, "before the restart").unwrap();
        let plain_name = unique("restart-plain");
        let mut plain = locker.lock_with(&plain_name, |_| opts(ttl)).await.unwrap();
        let lease = renewing.lease();
        // Another client of the same server, idle after eight concurrent
        // calls: they shared one connection (issue 10, kind 4).
        let idle = RedisBackend::from_config(&fault_config(server.url())).unwrap();
        let probe = locker.key(&name).unwrap();
        let warm: Vec<_> = (0..8)
            .map(|_| {
                let (idle, probe) = (idle.clone(), probe.clone());
                tokio::spawn(async move { idle.inspect(&probe).await.map(|_| ()) })
            })
            .collect();
        for w in warm {
            w.await.unwrap().unwrap();
        }
        let idle_connections = idle.pool_status().size;
        assert_eq!(idle_connections, 1, "{:?}", idle.pool_status());

        let stopped_at = Instant::now();
        control(|| {
            server.stop();
            server.restart();
        });
        let restarted_at = Instant::now();
        println!(
            "restart ({}) took {:?}",
            server.kind(),
            restarted_at - stopped_at
        );

        no_hang("the lost signal", lease.lost()).await;
        let lost_at = Instant::now();
        println!(
            "lost fired {:?} after Redis was back; {:?} before the local deadline",
            lost_at - restarted_at,
            lease.valid_until().saturating_duration_since(lost_at)
        );
        assert!(lease.is_lost() && !renewing.is_valid());
        assert!(
            lost_at < lease.valid_until(),
            "the renewal must find the lock gone, not just wait for the deadline"
        );

        // The renewed guard knows it is lost; the plain one learns it from Redis.
        let mut renewing = renewing;
        let err = renewing.extend(ttl).await.unwrap_err();
        assert!(matches!(err, LockError::NotHeld { .. }), "{err:?}");
        let err = no_hang("extend", plain.extend(ttl)).await.unwrap_err();
        assert!(matches!(err, LockError::NotHeld { .. }), "{err:?}");
        assert!(plain.lease().is_lost());
        assert_eq!(renewing.release().await.unwrap(), Release::NotHeld);
        assert_eq!(plain.release().await.unwrap(), Release::NotHeld);

        // The other client: its first call finds the dead connection,
        // reconnects and sends the call again (issue 10, kind 3): no call
        // fails.
        wait_until_ready(server.url()).await;
        let mut failures = Vec::new();
        for _ in 0..4 {
            if let Err(e) = no_hang("inspect", idle.inspect(&probe)).await {
                assert_eq!(e.kind(), BackendErrorKind::Unavailable, "{e}");
                failures.push(e.to_string());
            }
        }
        println!(
            "idle client: {} of 4 calls failed after the restart: {failures:?}",
            failures.len()
        );
        assert!(failures.is_empty(), "{failures:?}");

        // The same client acquires again. The fence counter was lost with
        // the data, but restarts from the server clock (microseconds), so
        // fences still increase across the restart.
        let again = no_hang("acquire", locker.try_lock_with(&name, |_| opts(TTL)))
            .await
            .unwrap()
            .expect("free after the restart");
        let fence_after = again.fence();
        println!("fence before the restart {fence_before}, after {fence_after}");
        assert!(
            fence_after > fence_before,
            "fences went backwards across a restart: {fence_before} -> {fence_after}"
        );
        assert_eq!(
            locker.inspect(&name).await.unwrap().last_fence,
            Some(fence_after)
        );
        // So a fenced resource accepts the legitimate new holder, and still
        // refuses the holder from before the restart.
        assert_eq!(resource.write(fence_after, "after the restart"), Ok(()));
        assert_eq!(
            resource.write(fence_before, "stale holder"),
            Err(StaleFence {
                presented: fence_before,
                highest: fence_after
            })
        );
        assert_eq!(again.release().await.unwrap(), Release::Released);
    });
}

/// Case 2. Redis is frozen (SIGSTOP / `docker pause`) for longer than the
/// command timeout: every call returns `Timeout` within the sum of the pool
/// wait, connect and command timeouts; a renewing lease whose deadline passes during the
/// pause reports lost at its deadline; after unpausing the same client
/// works and fences keep increasing.
#[test]
fn fault_redis_paused_calls_time_out_within_bound() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let backend = RedisBackend::from_config(&fault_config(server.url())).unwrap();
        let locker = Locker::new(backend.clone()).with_prefix("faults").unwrap();
        let held_name = unique("pause-held");
        let mut held = locker.lock_with(&held_name, |_| opts(TTL)).await.unwrap();
        let short_name = unique("pause-short");
        let short_ttl = Duration::from_millis(1200);
        let renewing = locker
            .lock_with(&short_name, |_| opts(short_ttl).with_auto_renew(true))
            .await
            .unwrap();
        let short_fence = renewing.fence();
        let short_lease = renewing.lease();

        control(|| server.pause());
        let paused_at = Instant::now();

        // Calls of every kind at once, on pooled and on new connections.
        let k = LockKey::new("faults", unique("pause-raw")).unwrap();
        let t = LockToken::generate();
        let timed = |f: std::pin::Pin<
            Box<dyn Future<Output = Option<BackendErrorKind>> + Send>,
        >| async move {
            let started = Instant::now();
            let kind = no_hang("a call to a paused Redis", f).await;
            (kind, started.elapsed())
        };
        let (b1, b2, b3, l1, l2) = (
            backend.clone(),
            backend.clone(),
            backend.clone(),
            locker.clone(),
            locker.clone(),
        );
        let (k1, k2, k3, t1, t2) = (k.clone(), k.clone(), k.clone(), t.clone(), t.clone());
        let wait_name = unique("pause-wait");
        let calls: Vec<(&str, _)> = vec![
            (
                "try_acquire",
                timed(Box::pin(async move {
                    b1.try_acquire(&k1, &t1, TTL, None)
                        .await
                        .err()
                        .map(|e| e.kind())
                })),
            ),
            (
                "release",
                timed(Box::pin(async move {
                    b2.release(&k2, &t2).await.err().map(|e| e.kind())
                })),
            ),
            (
                "inspect",
                timed(Box::pin(async move {
                    b3.inspect(&k3).await.err().map(|e| e.kind())
                })),
            ),
            (
                "Locker::try_lock",
                timed(Box::pin(async move {
                    l1.try_lock(unique("pause-try"))
                        .await
                        .err()
                        .as_ref()
                        .and_then(backend_kind)
                })),
            ),
            (
                "Locker::lock (wait 1 s)",
                timed(Box::pin(async move {
                    let o = LockOptions::default().with_wait_timeout(WAIT);
                    l2.lock_with(&wait_name, |_| o.clone())
                        .await
                        .err()
                        .as_ref()
                        .and_then(backend_kind)
                })),
            ),
        ];
        let names: Vec<&str> = calls.iter().map(|(n, _)| *n).collect();
        let handles: Vec<_> = calls.into_iter().map(|(_, f)| tokio::spawn(f)).collect();
        let extend_started = Instant::now();
        let extend = no_hang("extend on a paused Redis", held.extend(TTL)).await;
        let extend_took = extend_started.elapsed();
        let mut outcomes = vec![(
            "LockGuard::extend",
            extend.err().as_ref().and_then(backend_kind),
            extend_took,
        )];
        for (name, handle) in names.into_iter().zip(handles) {
            let (kind, took) = handle.await.unwrap();
            outcomes.push((name, kind, took));
        }
        for (name, kind, took) in &outcomes {
            // A waiter retries transient errors until its wait deadline
            // (issue 10), then the attempt in flight ends within the bound.
            let limit = call_bound()
                + MARGIN
                + if name.starts_with("Locker::lock ") {
                    WAIT
                } else {
                    Duration::ZERO
                };
            println!("paused Redis: {name} -> {kind:?} after {took:?} (limit {limit:?})");
            assert_eq!(*kind, Some(BackendErrorKind::Timeout), "{name}");
            assert!(kind.unwrap().is_transient());
            assert!(*took < limit, "{name} took {took:?}");
        }

        // The renewing lease cannot be renewed: lost fires at its deadline.
        no_hang("the lost signal", short_lease.lost()).await;
        let late = Instant::now().saturating_duration_since(short_lease.valid_until());
        println!("renewing lease lost {late:?} after its deadline, while Redis was paused");
        assert!(late < MARGIN, "{late:?}");

        // Keep the pause well past the short lease's server-side TTL.
        tokio::time::sleep_until(paused_at + short_ttl + Duration::from_millis(500)).await;
        control(|| server.unpause());
        println!("Redis paused for {:?}", paused_at.elapsed());

        // The same client works again at once.
        no_hang("extend after unpause", held.extend(TTL))
            .await
            .unwrap();
        assert_eq!(
            no_hang("release", renewing.release()).await.unwrap(),
            Release::NotHeld
        );
        let again = no_hang("acquire", locker.try_lock_with(&short_name, |_| opts(TTL)))
            .await
            .unwrap()
            .expect("the expired lock is free");
        println!(
            "fence before the pause {short_fence}, after {}",
            again.fence()
        );
        assert_eq!(again.fence(), short_fence + 1, "a pause keeps the counter");
        assert_eq!(again.release().await.unwrap(), Release::Released);
        assert_eq!(held.release().await.unwrap(), Release::Released);
    });
}

/// Case 3. The holder stops (a stop-the-world pause: its runtime's only
/// thread blocks, so its renewal task is frozen too) past its TTL. Another
/// client acquires with a higher fence and writes; the holder wakes and
/// writes with its old fence: the fenced resource refuses it, and the
/// holder's release cannot free the new holder's lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_holder_paused_past_ttl_stale_write_rejected_by_fence() {
    let url = RedisServer::shared().url().to_owned();
    let name = unique("paused-holder");
    let resource: FencedResource<&'static str> = FencedResource::new();
    let ttl = Duration::from_millis(1000);
    let (acquired_tx, acquired_rx) = tokio::sync::oneshot::channel();
    let (wake_tx, wake_rx) = std::sync::mpsc::channel::<()>();

    let holder = {
        let (url, name, resource) = (url.clone(), name.clone(), resource.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let locker = Locker::new(RedisBackend::from_config(&fault_config(&url)).unwrap())
                    .with_prefix("faults")
                    .unwrap();
                let guard = locker
                    .lock_with(&name, |_| opts(ttl).with_auto_renew(true))
                    .await
                    .unwrap();
                resource
                    .write(guard.fence(), "A: before the pause")
                    .unwrap();
                acquired_tx.send(guard.fence()).unwrap();
                // The pause: this thread, and with it the renewal task, stops.
                let paused = std::time::Instant::now();
                let _ = wake_rx.recv_timeout(HANG);
                let paused_for = paused.elapsed();
                // A wakes up and writes as if it still held the lock.
                let stale_write = resource.write(guard.fence(), "A: after the pause");
                let lost = guard.lease().is_lost();
                let release = guard.release().await.map_err(|e| e.to_string());
                (paused_for, stale_write, lost, release)
            })
        })
    };

    let fence_a = no_hang("the holder's acquisition", acquired_rx)
        .await
        .unwrap();
    let started = Instant::now();
    let b = Locker::new(RedisBackend::from_config(&fault_config(&url)).unwrap())
        .with_prefix("faults")
        .unwrap();
    let wait = opts(TTL).with_wait_timeout(Duration::from_secs(10));
    let guard_b = no_hang("B's acquisition", b.lock_with(&name, |_| wait.clone()))
        .await
        .unwrap();
    let waited = started.elapsed();
    let fence_b = guard_b.fence();
    println!("B waited {waited:?}; fence A {fence_a}, fence B {fence_b}");
    assert!(fence_b > fence_a, "{fence_b} <= {fence_a}");
    resource.write(fence_b, "B: after taking over").unwrap();

    wake_tx.send(()).unwrap();
    let (paused_for, stale_write, lost, release) = no_hang(
        "the holder thread",
        tokio::task::spawn_blocking(move || holder.join().unwrap()),
    )
    .await
    .unwrap();
    println!("A paused {paused_for:?}; its write: {stale_write:?}");
    assert_eq!(
        stale_write,
        Err(StaleFence {
            presented: fence_a,
            highest: fence_b
        })
    );
    assert!(lost, "after the pause A's lease reports lost");
    assert_eq!(release, Ok(Release::NotHeld));
    assert_eq!(resource.value(), Some("B: after taking over"));
    assert_eq!(
        (resource.accepted_writes(), resource.rejected_writes()),
        (2, 1)
    );
    // A's release did not touch B's lock.
    let info = b.inspect(&name).await.unwrap();
    assert!(info.held && guard_b.is_valid());
    assert_eq!(info.last_fence, Some(fence_b));
    assert_eq!(guard_b.release().await.unwrap(), Release::Released);
}

/// Set in the child process of the SIGSTOP test: `URL NAME TTL_MS`.
const HOLDER_ENV: &str = "DISTLOCK_FAULT_HOLDER";
const HOLDER_TEST: &str = "fault_holder_process_sigstopped_past_ttl_stale_write_rejected_by_fence";

/// Sends `kill -SIGNAL pid`; whether it worked.
fn signal(pid: u32, signal: &str) -> bool {
    std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success())
}

/// Resumes and kills the holder process if the test ends early.
struct HolderProcess(std::process::Child);

impl Drop for HolderProcess {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            signal(self.0.id(), "CONT");
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Case 3 with a real process pause. The holder is a child process (this
/// test binary, re-run as the holder): it acquires with renewal on, is
/// stopped with SIGSTOP past its TTL, and after SIGCONT sends its write with
/// the fence it had. Another client acquired meanwhile with a higher fence;
/// the fenced resource refuses the late write, the holder's lease reports
/// lost and its release cannot free the new holder's lock.
#[cfg(unix)]
#[test]
fn fault_holder_process_sigstopped_past_ttl_stale_write_rejected_by_fence() {
    if let Ok(spec) = std::env::var(HOLDER_ENV) {
        return holder_process(&spec);
    }
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};

    let url = RedisServer::shared().url().to_owned();
    let name = unique("sigstopped-holder");
    let ttl = Duration::from_millis(1000);
    let mut child = HolderProcess(
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", HOLDER_TEST, "--nocapture", "--test-threads", "1"])
            .env(HOLDER_ENV, format!("{url} {name} {}", ttl.as_millis()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    let mut to_holder = child.0.stdin.take().unwrap();
    let from_holder = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from_holder).lines().map_while(Result::ok) {
            // libtest prints `test NAME ... ` before the first report.
            if let Some((_, report)) = line.split_once("holder: ") {
                if tx.send(report.to_owned()).is_err() {
                    break;
                }
            }
        }
    });
    let report = |what: &str| -> String {
        rx.recv_timeout(HANG)
            .unwrap_or_else(|_| panic!("the holder process did not report {what}"))
    };

    // The resource (this process) receives the holder's writes.
    let resource = FencedResource::new();
    let fence_a: u64 = report("its acquisition")
        .strip_prefix("acquired ")
        .and_then(|f| f.parse().ok())
        .expect("acquired FENCE");
    resource.write(fence_a, "A: before the pause").unwrap();

    assert!(signal(pid, "STOP"), "kill -STOP {pid}");
    let rt = runtime();
    let stopped_at = Instant::now();
    let b = Locker::new(RedisBackend::from_config(&fault_config(&url)).unwrap())
        .with_prefix("faults")
        .unwrap();
    let wait = opts(TTL).with_wait_timeout(Duration::from_secs(10));
    let guard_b = rt
        .block_on(async { no_hang("B's acquisition", b.lock_with(&name, |_| wait.clone())).await })
        .unwrap();
    let fence_b = guard_b.fence();
    println!(
        "B acquired {:?} after SIGSTOP; fence A {fence_a}, fence B {fence_b}",
        stopped_at.elapsed()
    );
    assert!(fence_b > fence_a, "{fence_b} <= {fence_a}");
    resource.write(fence_b, "B: after taking over").unwrap();

    assert!(signal(pid, "CONT"), "kill -CONT {pid}");
    writeln!(to_holder, "write").unwrap();
    let late = report("its late write");
    println!("holder after SIGCONT: {late}");
    assert_eq!(late, format!("write {fence_a}, lease lost: true"));
    assert_eq!(
        resource.write(fence_a, "A: after the pause"),
        Err(StaleFence {
            presented: fence_a,
            highest: fence_b
        })
    );
    assert_eq!(report("its release"), "release NotHeld");
    let status = child.0.wait().unwrap();
    assert!(status.success(), "the holder process failed: {status}");

    assert_eq!(resource.value(), Some("B: after taking over"));
    rt.block_on(async {
        let info = b.inspect(&name).await.unwrap();
        assert!(info.held && guard_b.is_valid());
        assert_eq!(info.last_fence, Some(fence_b));
        assert_eq!(guard_b.release().await.unwrap(), Release::Released);
    });
}

/// The holder side of the SIGSTOP test, run in the child process.
fn holder_process(spec: &str) {
    let mut parts = spec.split(' ');
    let (url, name) = (parts.next().unwrap(), parts.next().unwrap());
    let ttl = Duration::from_millis(parts.next().unwrap().parse().unwrap());
    runtime().block_on(async {
        let locker = Locker::new(RedisBackend::from_config(&fault_config(url)).unwrap())
            .with_prefix("faults")
            .unwrap();
        let guard = locker
            .lock_with(name, |_| opts(ttl).with_auto_renew(true))
            .await
            .unwrap();
        println!("holder: acquired {}", guard.fence());
        // Renewal runs until the parent stops this process.
        let mut line = String::new();
        tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line))
            .await
            .unwrap()
            .unwrap();
        // Resumed: a careless holder writes with the fence it had.
        println!(
            "holder: write {}, lease lost: {}",
            guard.fence(),
            guard.lease().is_lost()
        );
        println!("holder: release {:?}", guard.release().await.unwrap());
    });
}

/// Case 4. The script cache is flushed and every client connection is
/// killed (`CLIENT KILL TYPE normal`, then `TYPE pubsub`) while tasks lock
/// and unlock: a flush costs no error at all; a kill fails at most the calls
/// in flight on the killed connections (transient `Unavailable`), the pool
/// and the release subscriber reconnect by themselves, and every task
/// finishes its work with the same client.
#[test]
fn fault_script_flush_and_client_kill_recovered() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let config = fault_config(server.url()).with_pool_size(4);
        let backend = RedisBackend::from_config(&config).unwrap();
        let locker = Locker::new(backend.clone()).with_prefix("faults").unwrap();
        let mut admin = admin(server.url()).await;
        let name = unique("flush-kill");

        // Phase 1: SCRIPT FLUSH mid-run costs nothing.
        let workload = |rounds: usize| {
            let tasks: Vec<_> = (0..4)
                .map(|_| {
                    let locker = locker.clone();
                    let name = name.clone();
                    tokio::spawn(async move {
                        let wait = opts(TTL).with_wait_timeout(Duration::from_secs(10));
                        let (mut done, mut errors) = (0, Vec::new());
                        while done < rounds {
                            let step = async {
                                let mut g = locker.lock_with(&name, |_| wait.clone()).await?;
                                g.extend(TTL).await?;
                                assert!(locker.inspect(&name).await?.held);
                                g.release().await
                            };
                            match step.await {
                                Ok(Release::Released) => done += 1,
                                Ok(Release::NotHeld) => panic!("a lock was lost"),
                                Err(e) => errors.push(e),
                            }
                            assert!(errors.len() <= rounds, "no recovery: {errors:?}");
                        }
                        errors
                    })
                })
                .collect();
            async move {
                let mut errors = Vec::new();
                for t in tasks {
                    errors.extend(no_hang("a worker", t).await.unwrap());
                }
                errors
            }
        };
        let flushing = workload(40);
        for _ in 0..5 {
            let _: () = redis::cmd("SCRIPT")
                .arg("FLUSH")
                .query_async(&mut admin)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let errors = flushing.await;
        assert!(errors.is_empty(), "SCRIPT FLUSH caused errors: {errors:?}");

        // Phase 2: kill every normal client connection, three times, mid-run.
        let killing = workload(60);
        let mut killed_total = 0;
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(30)).await;
            let killed: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("normal")
                .arg("SKIPME")
                .arg("yes")
                .query_async(&mut admin)
                .await
                .unwrap();
            killed_total += killed;
        }
        let errors = killing.await;
        println!(
            "CLIENT KILL: {killed_total} connections killed; {} calls failed: {:?}",
            errors.len(),
            errors.iter().map(ToString::to_string).collect::<Vec<_>>()
        );
        assert!(killed_total >= 1);
        for e in &errors {
            assert_eq!(backend_kind(e), Some(BackendErrorKind::Unavailable), "{e}");
            assert!(e.is_transient());
        }
        // Each killed connection fails at most the one call that finds it dead.
        assert!(
            errors.len() as i64 <= killed_total,
            "{} failures for {killed_total} killed connections",
            errors.len()
        );
        // After the kills, no call fails.
        let errors = workload(10).await;
        assert!(errors.is_empty(), "after the kills: {errors:?}");

        // The release subscriber reconnects after its connection is killed.
        let holder = locker
            .try_lock_with(&name, |_| opts(TTL))
            .await
            .unwrap()
            .unwrap();
        let k = locker.key(&name).unwrap();
        let mut watch = backend.watch(&k).await.unwrap().expect("release_notify");
        assert!(backend.release_subscriber_connected());
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut admin)
            .await
            .unwrap();
        assert_eq!(killed, 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let subscribers: Vec<(String, i64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(backend.release_channel(&k))
                .query_async(&mut admin)
                .await
                .unwrap();
            if subscribers[0].1 == 1 && backend.release_subscriber_connected() {
                break;
            }
            assert!(Instant::now() < deadline, "the subscriber did not return");
        }
        // The reconnect wakes each waiter once (a release may have been
        // missed); after that, the real release must arrive.
        no_hang("the wake-up after the reconnect", watch.released()).await;
        assert_eq!(holder.release().await.unwrap(), Release::Released);
        no_hang("the release notification", watch.released()).await;
    });
}

/// Case 5. Every pooled connection is busy: callers wait the pool's wait
/// timeout and get `PoolExhausted` (transient), then work once a connection
/// is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_pool_exhausted_gives_clear_error() {
    let url = RedisServer::shared().url();
    for pool_wait in [Some(POOL_WAIT_TIMEOUT), None] {
        // An application's pool of one connection, with or without its own
        // wait timeout; the backend's bound applies on top.
        let mut pool_config = deadpool_redis::Config::from_url(url);
        let mut pool_settings = deadpool_redis::PoolConfig::new(1);
        pool_settings.timeouts.wait = pool_wait;
        pool_config.pool = Some(pool_settings);
        let pool = pool_config
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .unwrap();
        let backend = RedisBackend::from_pool(pool.clone(), &fault_config(url)).unwrap();
        let locker = Locker::new(backend.clone()).with_prefix("faults").unwrap();
        let name = unique("pool");
        // The pool works, then the application takes its only connection.
        locker
            .try_lock(&name)
            .await
            .unwrap()
            .unwrap()
            .release()
            .await
            .unwrap();
        let taken = pool.get().await.unwrap();

        let limit = POOL_WAIT_TIMEOUT + CONNECT_TIMEOUT + MARGIN;
        let k = locker.key(&name).unwrap();
        let started = Instant::now();
        let raw = no_hang(
            "try_acquire",
            backend.try_acquire(&k, &LockToken::generate(), TTL, None),
        )
        .await
        .unwrap_err();
        let took = started.elapsed();
        println!("pool wait {pool_wait:?}: {raw} after {took:?}");
        assert_eq!(raw.kind(), BackendErrorKind::PoolExhausted, "{raw}");
        assert!(raw.is_transient());
        assert!(took >= POOL_WAIT_TIMEOUT && took < limit, "{took:?}");

        let started = Instant::now();
        let err = no_hang("try_lock", locker.try_lock(&name))
            .await
            .unwrap_err();
        assert_eq!(backend_kind(&err), Some(BackendErrorKind::PoolExhausted));
        assert!(err.is_transient(), "{err}");
        assert!(err.to_string().contains("pool"), "{err}");
        assert!(started.elapsed() < limit);

        // A connection comes back: the same client works.
        drop(taken);
        let g = locker.try_lock(&name).await.unwrap().expect("free");
        assert_eq!(g.release().await.unwrap(), Release::Released);
    }
}

/// Case 6. Redis is down when the application starts: building the backend
/// succeeds (it connects lazily), the first call fails fast with a clear
/// transient `Unavailable` error naming the operation, `Locker::lock` does
/// not wait out its wait timeout retrying, and once Redis is up the same
/// client works.
#[test]
fn fault_unreachable_at_startup_gives_clear_error() {
    let server = RedisServer::start();
    runtime().block_on(async {
        control(|| server.stop());
        let limit = call_bound() + MARGIN;

        // Over plain TCP and TLS, to a port nobody listens on.
        for url in [
            server.url().to_owned(),
            server.url().replace("redis://", "rediss://"),
        ] {
            let backend = RedisBackend::from_config(&fault_config(&url)).unwrap();
            let locker = Locker::new(backend.clone()).with_prefix("faults").unwrap();
            let name = unique("unreachable");
            let k = locker.key(&name).unwrap();

            let started = Instant::now();
            let err = no_hang(
                "try_acquire",
                backend.try_acquire(&k, &LockToken::generate(), TTL, None),
            )
            .await
            .unwrap_err();
            let took = started.elapsed();
            println!("{url}: {err} after {took:?}");
            assert_eq!(err.kind(), BackendErrorKind::Unavailable, "{err}");
            assert!(err.is_transient());
            assert!(err.to_string().contains("acquire"), "{err}");
            // Names the server that refused: host and port.
            let host_port = url.rsplit("://").next().unwrap().trim_end_matches('/');
            let host_port = host_port.split('/').next().unwrap();
            assert!(
                err.to_string().contains(host_port),
                "{err} lacks {host_port}"
            );
            assert!(took < limit, "{took:?}");

            let started = Instant::now();
            let wait = LockOptions::default().with_wait_timeout(WAIT);
            let err = no_hang("lock", locker.lock_with(&name, |_| wait.clone()))
                .await
                .unwrap_err();
            let took = started.elapsed();
            println!("{url}: Locker::lock -> {err} after {took:?}");
            assert_eq!(backend_kind(&err), Some(BackendErrorKind::Unavailable));
            assert!(err.is_transient());
            // A waiter keeps trying until its wait deadline (issue 10, kind
            // 3), then reports the last error.
            assert!(took >= WAIT, "{took:?}: gave up before the wait timeout");
            assert!(took < WAIT + limit, "{took:?}");

            // Waiting for releases registers anyway (waiters poll), in bounded time.
            let started = Instant::now();
            assert!(no_hang("watch", backend.watch(&k)).await.unwrap().is_some());
            assert!(started.elapsed() < limit);
            assert!(!backend.release_subscriber_connected());
        }

        // A backend built while Redis was down works once Redis is up.
        let backend = RedisBackend::from_config(&fault_config(server.url())).unwrap();
        let locker = Locker::new(backend).with_prefix("faults").unwrap();
        let name = unique("late-start");
        let err = locker.try_lock(&name).await.unwrap_err();
        assert_eq!(backend_kind(&err), Some(BackendErrorKind::Unavailable));
        control(|| server.restart());
        wait_until_ready(server.url()).await;
        let g = no_hang("acquire after start-up", locker.try_lock(&name))
            .await
            .unwrap()
            .expect("free");
        assert!(g.fence() > 1_600_000_000_000_000, "{}", g.fence());
        assert_eq!(g.release().await.unwrap(), Release::Released);

        // A URL that cannot work is a configuration error at construction.
        for bad in ["http://127.0.0.1:6379", "redis://[::1", ""] {
            let err = RedisBackend::from_url(bad).unwrap_err();
            assert_eq!(err.kind(), BackendErrorKind::Config, "{bad:?}: {err}");
            assert!(!err.is_transient());
        }
    });
}
