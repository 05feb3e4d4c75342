//! Issue 10, kind 8, against a real Redis: after `fork()`, parent and child
//! never share a lock token, so the parent's stale guard cannot extend or
//! release the lock the child took after the parent's lease expired.
//!
//! A real fork (the `fork` crate's safe wrapper), made before any runtime
//! or connection of the test exists; each process then builds its own
//! current-thread runtime on the forking thread, whose random state the
//! child inherited.
#![cfg(unix)]

use std::io::{Read, Write};
use std::time::Duration;

use distlock_redis::testkit::RedisServer;
use distlock_redis::{LockError, LockOptions, LockToken, Locker, RedisBackend, Release};
use fork::{fork, Fork};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The input: the parent takes "x" (TTL 300 ms); after it expired
/// the child takes "x"; the parent's stale guard then tries extend and
/// release. Before the fix both drew the same token, and the stale guard's
/// release deleted the child's lock (the issue saw extend -> Ok and
/// release -> Released; the guard now refuses to extend a lease it counts
/// as lost and reports NotHeld, but it still sends the release, so the
/// check that matters is that the child's lock survives).
#[test]
fn a_forked_childs_lock_is_safe_from_the_parents_stale_guard() {
    let server = RedisServer::start();
    let url = server.url().to_owned();
    // Any earlier draw on this thread (an earlier lock).
    let _earlier = LockToken::generate();
    let (mut reader, mut writer) = std::io::pipe().expect("pipe");
    match fork().expect("fork") {
        Fork::Child => {
            drop(reader);
            let took = runtime().block_on(async {
                tokio::time::sleep(Duration::from_millis(600)).await;
                let locker = Locker::new(RedisBackend::from_url(&url).ok()?);
                let opts = LockOptions::default().with_ttl(Duration::from_secs(30));
                let guard = locker.try_lock_with("x", |_| opts.clone()).await.ok()??;
                // Keep the lock held after this process ends.
                std::mem::forget(guard);
                Some(())
            });
            let _ = writer.write_all(if took.is_some() { b"took" } else { b"fail" });
            drop(writer);
            std::process::exit(0);
        }
        Fork::Parent(_) => {
            drop(writer);
            runtime().block_on(async {
                let locker = Locker::new(RedisBackend::from_url(&url).unwrap());
                let opts = LockOptions::default().with_ttl(Duration::from_millis(300));
                let mut stale = locker
                    .try_lock_with("x", |_| opts.clone())
                    .await
                    .unwrap()
                    .expect("free");
                let mut answer = String::new();
                // Blocks this (only) thread until the child wrote and exited.
                reader.read_to_string(&mut answer).expect("read pipe");
                assert_eq!(answer, "took", "the child could not take the lock");
                let extended = stale.extend(Duration::from_secs(60)).await;
                assert!(
                    matches!(extended, Err(LockError::NotHeld { .. })),
                    "the parent's stale guard extended the child's lock: {extended:?}"
                );
                assert_eq!(
                    stale.release().await.unwrap(),
                    Release::NotHeld,
                    "the parent's stale guard released the child's lock"
                );
                assert!(
                    locker.inspect("x").await.unwrap().held,
                    "the child's lock is gone"
                );
            });
        }
    }
}
