//! Release notifications over real Redis: one channel per lock name,
//! subscribed only while this process waits for that name. (Re-subscribing
//! after the connection is killed is in `notifications_reconnect.rs`: it
//! kills every pub/sub connection of its server, so it has a server of its
//! own.)

mod notify_support;

use std::time::Duration;

use distlock_redis::testkit::RedisServer;
use distlock_redis::{Acquire, LockBackend, LockToken, RedisBackend, Release};
use notify_support::{eventually, key, listeners, raw, TTL};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_lock_has_its_own_channel_subscribed_only_while_waited_for() {
    let url = RedisServer::shared().url();
    let waiter = RedisBackend::from_url(url).unwrap();
    let mut conn = raw(url).await;
    let (a, b) = (key("a"), key("b"));
    let (chan_a, chan_b) = (waiter.release_channel(&a), waiter.release_channel(&b));
    assert_eq!(chan_a, format!("{}:released", waiter.keys(&a).lock));
    assert_ne!(chan_a, chan_b);

    // Nobody waits: nothing is subscribed.
    assert_eq!(listeners(&mut conn, &chan_a).await, 0);
    let watch_a = waiter.watch(&a).await.unwrap().expect("release_notify");
    // Subscribed before watch returns, and only to a's channel.
    assert_eq!(listeners(&mut conn, &chan_a).await, 1);
    assert_eq!(listeners(&mut conn, &chan_b).await, 0);
    assert_eq!(waiter.subscribed_channels(), 1);

    // A second watcher of the same name shares the subscription.
    let watch_a2 = waiter.watch(&a).await.unwrap().expect("release_notify");
    assert_eq!(listeners(&mut conn, &chan_a).await, 1);
    drop(watch_a);
    drop(watch_a2);

    // The last waiter left: the channel is dropped (within about a second).
    eventually("a's channel is unsubscribed", async || {
        waiter.subscribed_channels() == 0 && listeners(&mut conn, &chan_a).await == 0
    })
    .await;
    assert_eq!(waiter.registered_waiters(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_of_other_locks_do_not_wake_a_waiter() {
    let url = RedisServer::shared().url();
    let holder = RedisBackend::from_url(url).unwrap();
    let waiter = RedisBackend::from_url(url).unwrap();
    let (a, b) = (key("wanted"), key("other"));
    let (ta, tb) = (LockToken::generate(), LockToken::generate());
    for (k, t) in [(&a, &ta), (&b, &tb)] {
        assert!(matches!(
            holder.try_acquire(k, t, TTL, None).await.unwrap(),
            Acquire::Acquired { .. }
        ));
    }
    let mut watch = waiter.watch(&a).await.unwrap().expect("release_notify");
    assert_eq!(holder.release(&b, &tb).await.unwrap(), Release::Released);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), watch.released())
            .await
            .is_err(),
        "woken by the release of another lock"
    );
    assert_eq!(holder.release(&a, &ta).await.unwrap(), Release::Released);
    tokio::time::timeout(Duration::from_secs(2), watch.released())
        .await
        .expect("woken by the release of the lock it waits for");
}
