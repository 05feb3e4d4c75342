//! Issue 10, kind 7 (second half), against a real Redis: a guard dropped
//! while Redis answers `BUSY` (a script that runs too long) is released
//! once the script is killed, instead of after one failed attempt leaving
//! the lock held until its TTL.

use std::time::Duration;

use distlock_redis::redis::{self, aio::MultiplexedConnection};
use distlock_redis::testkit::{ProcessOptions, RedisServer};
use distlock_redis::{LockOptions, Locker, RedisBackend, RedisConfig};
use tokio::time::Instant;

/// No single step of a test may take longer than this: a hang fails.
const HANG: Duration = Duration::from_secs(30);

async fn connection(url: &str) -> MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap()
}

/// The input: `busy-reply-threshold 50`, `EVAL "while true do end"`
/// from another client, a guard dropped during `BUSY`, `SCRIPT KILL` 32 ms
/// later. The lease is 30 s; the lock must be free well before (before the
/// fix the release tried once, got `BUSY`, and gave up).
#[test]
fn a_guard_dropped_during_busy_is_released_after_script_kill() {
    let server =
        RedisServer::start_process(ProcessOptions::new().args(["--busy-reply-threshold", "50"]));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let config =
            RedisConfig::new(server.url()).with_command_timeout(Duration::from_millis(500));
        let locker = Locker::new(RedisBackend::from_config(&config).unwrap());
        let observer = Locker::new(RedisBackend::from_url(server.url()).unwrap());
        let ttl = Duration::from_secs(30);
        let opts = LockOptions::default().with_ttl(ttl);
        let guard = locker
            .try_lock_with("k", |_| opts.clone())
            .await
            .unwrap()
            .expect("free");
        // Load the release script before the server gets busy.
        drop(locker.try_lock("warm").await.unwrap().unwrap());
        locker.flush().await;

        let mut script = connection(server.url()).await;
        let busy = tokio::spawn(async move {
            let _: Result<(), _> = redis::cmd("EVAL")
                .arg("while true do end")
                .arg(0)
                .query_async(&mut script)
                .await;
        });
        let mut probe = connection(server.url()).await;
        tokio::time::timeout(HANG, async {
            loop {
                let cmd = redis::cmd("PING");
                match cmd.query_async::<String>(&mut probe).await {
                    Err(e) if e.to_string().contains("BUSY") => return,
                    _ => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        })
        .await
        .expect("the server never answered BUSY");

        let dropped_at = Instant::now();
        drop(guard);
        tokio::time::sleep(Duration::from_millis(32)).await;
        let _: () = redis::cmd("SCRIPT")
            .arg("KILL")
            .query_async(&mut probe)
            .await
            .expect("SCRIPT KILL");
        tokio::time::timeout(HANG, busy).await.unwrap().unwrap();

        // Event-based: poll until free; the bound is far below the TTL.
        let bound = ttl / 3;
        loop {
            if !observer.inspect("k").await.unwrap().held {
                break;
            }
            assert!(
                dropped_at.elapsed() < bound,
                "still held {bound:?} after the drop (TTL {ttl:?}): the background release gave up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!("freed {:?} after the drop", dropped_at.elapsed());
    });
    drop(rt);
}
