//! Issue 10, kinds 1 and 2, against a real Redis: a server stall
//! (`DEBUG SLEEP` from another connection) while an extend is in flight, or
//! while a caller waits for a lock.
//!
//! Each test gets its own `redis-server` process with the `DEBUG` command
//! enabled (`--enable-debug-command yes`). Waits are event-based: the end
//! of the stall is the moment the `DEBUG SLEEP` reply arrives, and every
//! await is bounded so that a hang fails the test.

use std::future::Future;
use std::time::Duration;

use distlock_redis::redis::{self, aio::MultiplexedConnection};
use distlock_redis::testkit::{ProcessOptions, RedisServer};
use distlock_redis::{LockError, LockOptions, Locker, RedisBackend, RedisConfig};
use tokio::time::Instant;

/// No single step of a test may take longer than this: a hang fails.
const HANG: Duration = Duration::from_secs(30);

fn server() -> RedisServer {
    RedisServer::start_process(ProcessOptions::new().args(["--enable-debug-command", "yes"]))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn locker(url: &str) -> Locker<RedisBackend> {
    let config = RedisConfig::new(url).with_command_timeout(Duration::from_millis(500));
    Locker::new(RedisBackend::from_config(&config).unwrap())
}

fn ttl(t: Duration) -> LockOptions {
    LockOptions::default()
        .with_ttl(t)
        .with_wait_timeout(Duration::ZERO)
}

/// A plain connection without a response timeout (a `DEBUG SLEEP` reply
/// comes when the stall ends).
async fn connection(url: &str) -> MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap()
}

async fn no_hang<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(HANG, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what} hung for {HANG:?}"),
    }
}

/// Starts `DEBUG SLEEP seconds` on its own connection and returns once the
/// server is stalled (a `PING` from a third connection goes unanswered for
/// 50 ms). The handle completes when the stall is over.
async fn stall(url: &str, seconds: f64) -> tokio::task::JoinHandle<()> {
    let mut admin = connection(url).await;
    let mut probe = connection(url).await;
    let sleeping = tokio::spawn(async move {
        let _: () = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(seconds)
            .query_async(&mut admin)
            .await
            .expect("DEBUG SLEEP (is the debug command enabled?)");
    });
    no_hang("waiting for the stall to begin", async {
        loop {
            let cmd = redis::cmd("PING");
            let ping = cmd.query_async::<String>(&mut probe);
            if tokio::time::timeout(Duration::from_millis(50), ping)
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    sleeping
}

/// Tries to take `name` through `locker` until it succeeds (the lease of
/// the other holder ended), for up to [`HANG`].
async fn take_when_free(locker: &Locker<RedisBackend>, name: &str) -> distlock::LockGuard {
    no_hang("waiting for the lease to end", async {
        loop {
            if let Some(g) = locker.try_lock(name).await.unwrap() {
                return g;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// The input: `timeout(20 ms, g.extend(1 s))` during `DEBUG SLEEP`
/// is dropped while the server still applies `PEXPIRE 1000` after the
/// stall. Once that lease ended, B takes the lock, and the guard must not
/// claim it. Before the fix the guard said valid with about 28 s left.
#[test]
fn a_cancelled_extend_during_a_stall_leaves_the_guard_on_the_safe_side() {
    let server = server();
    runtime().block_on(async {
        let (a, b) = (locker(server.url()), locker(server.url()));
        let mut g = a
            .try_lock_with("k", |_| ttl(Duration::from_secs(30)).clone())
            .await
            .unwrap()
            .expect("free");
        // Load the extend script, so that the call in the stall is one
        // EVALSHA the server runs when the stall ends.
        g.extend(Duration::from_secs(30)).await.unwrap();
        let stalled = stall(server.url(), 0.3).await;
        let cut =
            tokio::time::timeout(Duration::from_millis(20), g.extend(Duration::from_secs(1))).await;
        assert!(
            cut.is_err(),
            "the server answered during its stall: {cut:?}"
        );
        no_hang("the stall", stalled).await.unwrap();
        let taken = take_when_free(&b, "k").await;
        assert!(
            !g.is_valid(),
            "two holders: B holds the lock and the guard claims {:?} more",
            g.lease().remaining()
        );
        taken.release().await.unwrap();
    });
}

/// The second input: during `DEBUG SLEEP 3`, `g.extend(1 s)` ends
/// with a backend timeout while the server applies it after the stall.
#[test]
fn an_extend_that_timed_out_during_a_stall_leaves_the_guard_on_the_safe_side() {
    let server = server();
    runtime().block_on(async {
        let (a, b) = (locker(server.url()), locker(server.url()));
        let mut g = a
            .try_lock_with("k", |_| ttl(Duration::from_secs(30)).clone())
            .await
            .unwrap()
            .expect("free");
        // Load the extend script, so that the call in the stall is one
        // EVALSHA the server runs when the stall ends.
        g.extend(Duration::from_secs(30)).await.unwrap();
        let stalled = stall(server.url(), 3.0).await;
        let result = no_hang("extend", g.extend(Duration::from_secs(1))).await;
        assert!(
            matches!(result, Err(LockError::Backend(ref e)) if e.is_transient()),
            "{result:?}"
        );
        no_hang("the stall", stalled).await.unwrap();
        let taken = take_when_free(&b, "k").await;
        assert!(
            !g.is_valid(),
            "two holders: B holds the lock and the guard claims {:?} more",
            g.lease().remaining()
        );
        taken.release().await.unwrap();
    });
}

/// The kind 2 input: "k" is held elsewhere; a client starts
/// `DEBUG SLEEP` 2 ms after a waiter with a 300 ms budget began. The waiter
/// gets `TimedOut` (not a backend error), and gets it before the stall
/// ends. Before the fix it returned after 1004 ms (and with `DEBUG SLEEP 3`
/// a backend timeout after 2004 ms).
#[test]
fn a_waiter_gets_timed_out_at_its_deadline_during_a_stall() {
    let server = server();
    runtime().block_on(async {
        let (holder, waiter) = (locker(server.url()), locker(server.url()));
        let held = holder.try_lock("k").await.unwrap().expect("free");
        for seconds in [1.0, 3.0] {
            let budget = Duration::from_millis(300);
            let opts = LockOptions::default().with_wait_timeout(budget);
            let start = Instant::now();
            let w = waiter.clone();
            let mut wait = tokio::spawn(async move { w.lock_with("k", |_| opts.clone()).await });
            tokio::time::sleep(Duration::from_millis(2)).await;
            let mut admin = connection(server.url()).await;
            let mut stalled = tokio::spawn(async move {
                let _: () = redis::cmd("DEBUG")
                    .arg("SLEEP")
                    .arg(seconds)
                    .query_async(&mut admin)
                    .await
                    .unwrap();
            });
            let result = tokio::select! {
                result = &mut wait => result.unwrap(),
                _ = &mut stalled => panic!("DEBUG SLEEP {seconds} ended before the waiter with a {budget:?} budget"),
            };
            let took = start.elapsed();
            assert!(
                matches!(result, Err(LockError::TimedOut { .. })),
                "DEBUG SLEEP {seconds}: {result:?} after {took:?}"
            );
            assert!(took >= budget, "gave up after {took:?}");
            no_hang("the stall", stalled).await.unwrap();
        }
        held.release().await.unwrap();
    });
}
