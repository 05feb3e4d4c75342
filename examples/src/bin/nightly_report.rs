//! "Run tonight's report once": a cron-style job that builds the report for
//! a date at most once, however often it is started, on however many
//! machines.
//!
//! ```text
//! cargo run -p distlock-examples --bin nightly_report -- 2026-11-30           # in memory, 2 runs
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p distlock-examples --bin nightly_report -- 2026-11-30 1
//! ```
//!
//! Arguments: `[DATE] [RUNS] [KEEP_SECS]`. The job runs `RUNS` times in this
//! process (default 2, like cron starting it twice; start the program again
//! for another process): the first run builds the report, later runs find
//! it done and skip. `KEEP_SECS` (default 86 400, a day) is how long the
//! lock is kept after success.
//!
//! The recipe (see the README): the lock name is keyed by the date
//! (`report:2026-11-30`); while the report is built the lease is short and
//! renewed, so a crashed run frees it within seconds for a retry; after
//! success the guard is kept (`keep_for`) instead of released, so later
//! runs that day find it held. The owner label (`hostname:pid`) tells who
//! ran it.

use std::time::Duration;

use distlock::{LockBackend, LockOptions, Locker, TryLock};
use distlock_memory::MemoryBackend;
use distlock_redis::RedisBackend;

type Error = Box<dyn std::error::Error>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let date = args.first().cloned().unwrap_or_else(|| "2026-11-30".into());
    let runs: usize = args.get(1).map_or(Ok(2), |a| a.parse())?;
    let keep = Duration::from_secs(args.get(2).map_or(Ok(86_400), |a| a.parse())?);
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.trim().is_empty() => {
            println!("backend: Redis (REDIS_URL)");
            let backend = RedisBackend::from_url(&url)?;
            for run in 1..=runs {
                job(backend.clone(), &date, keep, run).await?;
            }
        }
        _ => {
            println!("backend: in-memory (set REDIS_URL to use Redis)");
            let backend = MemoryBackend::new();
            for run in 1..=runs {
                job(backend.clone(), &date, keep, run).await?;
            }
        }
    }
    Ok(())
}

/// One start of the job, as cron would run it: its own locker, generic over
/// the backend.
async fn job<B: LockBackend>(
    backend: B,
    date: &str,
    keep: Duration,
    run: usize,
) -> Result<(), Error> {
    let locker = Locker::new(backend)
        .with_prefix("example-report")?
        .with_defaults(
            LockOptions::default()
                .with_ttl(Duration::from_secs(10))
                .with_auto_renew(true)
                .with_owner_host_pid(),
        )?;
    let name = format!("report:{date}");
    match locker.try_lock_or_holder(&name, |o| o).await? {
        TryLock::Held(holder) => {
            // Who has it: the owner label (a second round trip).
            let owner = locker.inspect(&name).await?.owner;
            println!(
                "run {run}: the report for {date} is done or running (held by {}, for {:?} more); skipping",
                owner.as_deref().unwrap_or("an unlabelled owner"),
                Duration::from_secs(holder.remaining.unwrap_or_default().as_secs()),
            );
        }
        TryLock::Acquired(guard) => {
            match build_report(date).await {
                Ok(rows) => {
                    // Keep the lock to the end of the day: later runs skip.
                    guard.keep_for(keep).await?;
                    let owner = locker.defaults().owner.clone().unwrap_or_default();
                    println!(
                        "run {run}: built the report for {date} ({rows} rows) as {owner}; \
                         kept the lock for {keep:?}"
                    );
                }
                Err(e) => {
                    // Release, so that a retry can build it.
                    guard.release().await?;
                    println!("run {run}: the report for {date} failed ({e}); released for a retry");
                }
            }
        }
    }
    Ok(())
}

/// The report itself (pretend).
async fn build_report(date: &str) -> Result<usize, std::io::Error> {
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(date.len() * 100)
}
