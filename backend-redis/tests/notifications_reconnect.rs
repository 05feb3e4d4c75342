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
