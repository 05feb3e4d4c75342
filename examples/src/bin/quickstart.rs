//! Several workers contend for one lock; each prints when it gets it and its
//! fencing token.
//!
//! ```text
//! cargo run -p distlock-examples --bin quickstart
//! ```
//!
//! Runs in memory with nothing installed. With `REDIS_URL` set (for example
//! `REDIS_URL=redis://127.0.0.1:6379/0`) the same code runs against Redis:
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379/0 cargo run -p distlock-examples --bin quickstart
//! ```

use std::time::Duration;

use distlock::{LockBackend, LockOptions, Locker};
use distlock_memory::MemoryBackend;
use distlock_redis::RedisBackend;

const WORKERS: usize = 4;
const ROUNDS: usize = 3;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.trim().is_empty() => {
            // The URL may hold a password: print only the backend kind.
            println!("backend: Redis (REDIS_URL)");
            run(Locker::new(RedisBackend::from_url(&url)?)).await
        }
        _ => {
            println!("backend: in-memory (set REDIS_URL to use Redis)");
            run(Locker::new(MemoryBackend::new())).await
        }
    }
}

async fn run<B: LockBackend>(locker: Locker<B>) -> Result<(), Box<dyn std::error::Error>> {
    let locker = locker.with_defaults(
        LockOptions::default()
            .with_ttl(Duration::from_secs(5))
            .with_wait_timeout(Duration::from_secs(10)),
    )?;
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let locker = locker.clone();
        workers.push(tokio::spawn(async move {
            for round in 0..ROUNDS {
                locker
                    .with_lock("quickstart:report", |lease| async move {
                        println!(
                            "worker {worker} holds the lock (round {round}, fencing token {})",
                            lease.fence()
                        );
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    })
                    .await?;
            }
            Ok::<_, distlock::LockError>(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    println!(
        "done: {} critical sections, never two at once",
        WORKERS * ROUNDS
    );
    Ok(())
}
