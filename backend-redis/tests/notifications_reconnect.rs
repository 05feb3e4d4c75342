//! The release subscriber re-subscribes after its connection is killed.
//! A test binary of its own: it kills every pub/sub connection of its
//! (shared-per-binary) server.

mod notify_support;

use std::time::{Duration, Instant};

use distlock_redis::redis;
use distlock_redis::testkit::RedisServer;
use distlock_redis::{Acquire, LockBackend, LockToken, RedisBackend, Release};
use notify_support::{eventually, key, listeners, raw, TTL};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_subscriber_connection_resubscribes_and_wakes_waiters() {
    let url = RedisServer::shared().url();
    let holder = RedisBackend::from_url(url).unwrap();
    let waiter = RedisBackend::from_url(url).unwrap();
    let mut conn = raw(url).await;
    let k = key("killed");
    let channel = waiter.release_channel(&k);
    let t = LockToken::generate();
    assert!(matches!(
        holder.try_acquire(&k, &t, TTL, None).await.unwrap(),
        Acquire::Acquired { .. }
    ));
    let mut watch = waiter.watch(&k).await.unwrap().expect("release_notify");
    assert_eq!(listeners(&mut conn, &channel).await, 1);

    // Drop every pub/sub connection on the server (this test's is among them).
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(killed >= 1, "killed {killed} pub/sub connections");

    // After the reconnect the waiter gets one wake-up (a release may have
    // been missed meanwhile), and the channel is subscribed again.
    tokio::time::timeout(Duration::from_secs(5), watch.released())
        .await
        .expect("woken after the reconnect");
    eventually("the channel is subscribed again", async || {
        listeners(&mut conn, &channel).await == 1
    })
    .await;
    assert!(waiter.release_subscriber_connected());

    // And real releases are delivered on the new connection (no wake-up is
    // stored from the reconnect that could stand in for it).
    assert!(
        futures::FutureExt::now_or_never(watch.released()).is_none(),
        "a stale wake-up is pending"
    );
    let released_at = Instant::now();
    assert_eq!(holder.release(&k, &t).await.unwrap(), Release::Released);
    tokio::time::timeout(Duration::from_secs(2), watch.released())
        .await
        .expect("release delivered after the reconnect");
    println!("notified {:?} after the release", released_at.elapsed());
}

/// A server that refuses subscriptions for now (`BUSY`: another
/// application's script runs past `busy-reply-threshold`) is not asked in a
/// tight loop: the subscriber backs off between new connections. Found in
/// review: 3,681 connections in about 3.5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_server_is_not_reconnected_to_in_a_tight_loop() {
    use distlock_redis::testkit::ProcessOptions;
    use distlock_redis::RedisConfig;
    let server = RedisServer::start_process(ProcessOptions::new());
    let url = server.url().to_owned();
    let connections = || -> u64 {
        let mut c = redis::Client::open(url.as_str())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap();
        let info: String = redis::cmd("INFO").arg("stats").query(&mut c).unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let mut admin = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap();
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("busy-reply-threshold")
        .arg("100")
        .query(&mut admin)
        .unwrap();
    let waiting = RedisBackend::from_config(&RedisConfig::new(&url)).unwrap();
    let _first = waiting.watch(&key("busy-a")).await.unwrap().unwrap();
    let before = tokio::task::block_in_place(connections);
    let busy_url = url.clone();
    let script = std::thread::spawn(move || {
        let mut c = redis::Client::open(busy_url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        let _: redis::RedisResult<()> = redis::cmd("EVAL")
            .arg("while true do end")
            .arg(0)
            .query(&mut c);
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A new watch makes the subscriber subscribe now, while busy.
    let _ = tokio::time::timeout(Duration::from_secs(3), waiting.watch(&key("busy-b"))).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let () = redis::cmd("SCRIPT")
        .arg("KILL")
        .query(&mut admin)
        .unwrap_or(());
    script.join().unwrap();
    let opened = tokio::task::block_in_place(connections) - before;
    assert!(
        opened < 50,
        "{opened} connections in about 5 s while the server answered BUSY"
    );
}
