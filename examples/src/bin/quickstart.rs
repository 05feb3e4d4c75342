//! Several workers contend for one lock; each prints when it gets it and its
//! fencing token.
//!
//! ```text
//! cargo run -p distlock-examples --bin quickstart
//! ```
//!
//! Runs in memory with nothing installed.

use std::time::Duration;

use distlock::{LockBackend, LockOptions, Locker};
use distlock_memory::MemoryBackend;

const WORKERS: usize = 4;
const ROUNDS: usize = 3;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("backend: in-memory");
    run(Locker::new(MemoryBackend::new())).await
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
