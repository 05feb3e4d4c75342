//! Several OS processes increment one Redis counter with a non-atomic
//! read–modify–write (`GET`, pause, `SET`) under a distlock lock. Without the
//! lock, updates would be lost; with it, the final count is exact.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379/0 cargo run -p distlock-examples --bin counter -- [PROCESSES] [ITERATIONS]
//! ```
//!
//! The parent starts `PROCESSES` (default 4) copies of itself, each taking the
//! lock `ITERATIONS` (default 50) times, waits for them, and prints the final
//! count against the expected one. It exits with status 1 when they differ.
//! The counter key is `distlock-example:counter` (deleted at the start).

use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use distlock::{LockOptions, Locker};
use distlock_redis::redis::{self, AsyncCommands};
use distlock_redis::RedisBackend;

const COUNTER_KEY: &str = "distlock-example:counter";
const LOCK_NAME: &str = "counter-example";
/// Bound on every direct Redis call of this example.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on the whole run of one child process.
const CHILD_DEADLINE: Duration = Duration::from_secs(300);

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Ok(url) = std::env::var("REDIS_URL") else {
        eprintln!(
            "set REDIS_URL, e.g. `REDIS_URL=redis://127.0.0.1:6379/0 \
             cargo run -p distlock-examples --bin counter`"
        );
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = if args.first().map(String::as_str) == Some("--child") {
        let id = args.get(1).cloned().unwrap_or_default();
        let iterations = parse(args.get(2), 50);
        runtime.block_on(child(&url, &id, iterations))
    } else {
        let processes = parse(args.first(), 4);
        let iterations = parse(args.get(1), 50);
        runtime.block_on(parent(&url, processes, iterations))
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse(arg: Option<&String>, default: u64) -> u64 {
    arg.and_then(|a| a.parse().ok()).unwrap_or(default)
}

async fn connect(url: &str) -> Result<redis::aio::MultiplexedConnection, Error> {
    let client = redis::Client::open(url)?;
    Ok(tokio::time::timeout(CALL_TIMEOUT, client.get_multiplexed_async_connection()).await??)
}

async fn parent(url: &str, processes: u64, iterations: u64) -> Result<bool, Error> {
    let mut redis = connect(url).await?;
    let _: () = tokio::time::timeout(CALL_TIMEOUT, redis.del(COUNTER_KEY)).await??;

    println!("{processes} processes x {iterations} increments of {COUNTER_KEY}");
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for id in 0..processes {
        let child = tokio::process::Command::from({
            let mut c = Command::new(&exe);
            c.args(["--child", &id.to_string(), &iterations.to_string()])
                .env("REDIS_URL", url)
                .stdin(Stdio::null());
            c
        })
        .kill_on_drop(true)
        .spawn()?;
        children.push(child);
    }
    let mut all_ok = true;
    for (id, mut child) in children.into_iter().enumerate() {
        match tokio::time::timeout(CHILD_DEADLINE, child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => {
                eprintln!("process {id} failed: {status}");
                all_ok = false;
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                eprintln!("process {id} did not finish within {CHILD_DEADLINE:?}; killing it");
                let _ = child.kill().await;
                all_ok = false;
            }
        }
    }

    let count: Option<u64> = tokio::time::timeout(CALL_TIMEOUT, redis.get(COUNTER_KEY)).await??;
    let count = count.unwrap_or(0);
    let expected = processes * iterations;
    println!("final count: {count}, expected: {expected}");
    if count == expected && all_ok {
        println!("OK: no update was lost");
        Ok(true)
    } else {
        println!("MISMATCH: {} updates lost", expected.saturating_sub(count));
        Ok(false)
    }
}

async fn child(url: &str, id: &str, iterations: u64) -> Result<bool, Error> {
    let locker = Locker::new(RedisBackend::from_url(url)?).with_defaults(
        LockOptions::default()
            .with_ttl(Duration::from_secs(10))
            .with_wait_timeout(Duration::from_secs(60))
            .with_owner(format!("counter-example process {id}")),
    )?;
    let redis = connect(url).await?;
    let (mut first, mut last) = (None, 0);
    for _ in 0..iterations {
        let mut redis = redis.clone();
        let fence = locker
            .with_lock(LOCK_NAME, |lease| async move {
                // The non-atomic read–modify–write the lock protects.
                let value: Option<u64> =
                    tokio::time::timeout(CALL_TIMEOUT, redis.get(COUNTER_KEY)).await??;
                tokio::time::sleep(Duration::from_millis(1)).await;
                let _: () = tokio::time::timeout(
                    CALL_TIMEOUT,
                    redis.set(COUNTER_KEY, value.unwrap_or(0) + 1),
                )
                .await??;
                Ok::<_, Error>(lease.fence())
            })
            .await??;
        first.get_or_insert(fence);
        last = fence;
    }
    println!(
        "process {id}: {iterations} increments, fencing tokens {}..={last}",
        first.unwrap_or(0)
    );
    Ok(true)
}
