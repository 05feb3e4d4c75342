//! Helpers shared by the line-of-waiters tests (`waiter_queue.rs`,
//! `waiter_queue_locker.rs`): an admin connection and reads of the line's
//! keys.

#![allow(dead_code)]

use std::time::Duration;

use distlock_redis::redis::{self, aio::MultiplexedConnection};

/// A plain connection for reading and writing keys directly.
pub async fn admin(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// `f`, or a panic naming `what` after 20 s.
pub async fn no_hang<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"))
}

pub async fn zcard(admin: &mut MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("ZCARD")
        .arg(key)
        .query_async(admin)
        .await
        .unwrap()
}

pub async fn exists(admin: &mut MultiplexedConnection, keys: &[&str]) -> i64 {
    redis::cmd("EXISTS")
        .arg(keys)
        .query_async(admin)
        .await
        .unwrap()
}

pub async fn get(admin: &mut MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query_async(admin).await.unwrap()
}

/// Waits (up to `within`) until the line `waiters` has `n` waiters.
pub async fn line_reaches(
    admin: &mut MultiplexedConnection,
    waiters: &str,
    n: i64,
    within: Duration,
) {
    tokio::time::timeout(within, async {
        while zcard(admin, waiters).await != n {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the line never reached {n} waiters"));
}
