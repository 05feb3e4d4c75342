//! Why fencing tokens matter: a holder pauses past its lease, another
//! client takes the lock, and the paused holder's late write is refused by
//! the resource because its fencing token is lower.
//!
//! ```text
//! cargo run -p distlock-examples --bin fenced                                  # in memory
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p distlock-examples --bin fenced  # on Redis
//! ```
//!
//! The resource is `distlock_conformance::fenced::FencedResource`: it
//! accepts a write only with a fencing token at least as high as the highest
//! it has accepted. A real store does the same with one condition, e.g.
//! `UPDATE … SET …, fence = $token WHERE id = $id AND fence <= $token`.

use std::error::Error;
use std::time::Duration;

use distlock::{LockBackend, Locker, Release};
use distlock_conformance::fenced::FencedResource;
use distlock_memory::MemoryBackend;
use distlock_redis::{RedisBackend, RedisConfig};

type BoxError = Box<dyn Error + Send + Sync>;

/// The lease of the first holder; its pause lasts twice as long.
const TTL: Duration = Duration::from_millis(500);

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.trim().is_empty() => {
            let config = RedisConfig::new(url);
            println!("backend: Redis at {config}");
            run(Locker::new(RedisBackend::from_config(&config)?)).await
        }
        _ => {
            println!("backend: in-memory (set REDIS_URL to use Redis)");
            run(Locker::new(MemoryBackend::new())).await
        }
    }
}

async fn run<B: LockBackend>(locker: Locker<B>) -> Result<(), BoxError> {
    let locker = locker.with_prefix("example-fenced")?;
    let name = "account:42";
    let account = FencedResource::new();

    // A takes the lock and writes, sending its fencing token along.
    let a = locker.lock_with(name, |o| o.with_ttl(TTL)).await?;
    account.write(a.fence(), "balance 100, written by A")?;
    println!(
        "A holds {name:?} with fencing token {} and writes: balance 100",
        a.fence()
    );

    // B waits for the lock meanwhile.
    let b_task = {
        let (locker, account) = (locker.clone(), account.clone());
        tokio::spawn(async move {
            let wait = Duration::from_secs(10);
            let b = locker
                .lock_with(name, |o| o.with_wait_timeout(wait))
                .await?;
            println!(
                "B gets the lock once A's lease ran out, fencing token {}, and writes: balance 250",
                b.fence()
            );
            account.write(b.fence(), "balance 250, written by B")?;
            Ok::<_, BoxError>(b)
        })
    };

    // A pauses (GC, swapping, a stopped VM) for longer than its lease.
    println!("A pauses for {:?}, longer than its {TTL:?} lease", TTL * 2);
    tokio::time::sleep(TTL * 2).await;
    let b = b_task.await??;

    // A wakes up and writes with what it knew before the pause.
    match account.write(a.fence(), "balance 90, written by A after its pause") {
        Err(stale) => println!("A's late write is refused: {stale}"),
        Ok(()) => return Err("the stale write was accepted".into()),
    }
    println!(
        "A's guard agrees: still valid = {}; its release says {:?}",
        a.is_valid(),
        a.release().await?
    );
    let info = locker.inspect(name).await?;
    println!(
        "B still holds the lock: {} (last fencing token {:?})",
        info.held, info.last_fence
    );
    let released = b.release().await?;
    assert_eq!(released, Release::Released);
    println!(
        "final value: {:?} ({} writes accepted, {} refused)",
        account.value().unwrap_or_default(),
        account.accepted_writes(),
        account.rejected_writes()
    );
    Ok(())
}
