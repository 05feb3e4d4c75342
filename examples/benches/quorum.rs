//! Quorum figures for BENCHMARKS.md: distlock's `Quorum` over three Redis
//! servers next to rslock 0.10 (Redlock) over the same three servers, side
//! by side in one run.
//!
//! ```text
//! DISTLOCK_BENCH_SECS=2 cargo bench -p distlock-examples --bench quorum
//! ```
//!
//! The three servers are dedicated `redis-server` processes
//! (`distlock_redis::testkit::RedisServer::start_process`), stopped at the
//! end. Scenarios:
//! - `uncontended`: one task, lock + release one name in a loop.
//! - `contended4`, `contended16`: 4 or 16 separate OS processes (this
//!   binary re-run in child mode) wait for one name; each hold does a
//!   non-atomic read-modify-write of a counter on the first server (GET,
//!   1 ms sleep, SET) and pauses 1 ms after releasing.
//! - `manykeys`: 64 tasks of one process, each locking its own name.
//!
//! Environment: `DISTLOCK_BENCH_SECS` (seconds per scenario and
//! implementation, default 2; fractions allowed) and `DISTLOCK_BENCH_ONLY`
//! (comma-separated scenario filter). Fails if a contended run loses a
//! counter update.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use distlock::{LockGuard, LockOptions, Locker, Quorum};
use distlock_redis::redis::{self, aio::MultiplexedConnection, AsyncCommands};
use distlock_redis::testkit::{ProcessOptions, RedisServer};
use distlock_redis::RedisBackend;

/// The lease both implementations ask for.
const TTL: Duration = Duration::from_secs(30);
/// The critical section's sleep and the pause after releasing (contended).
const WORK: Duration = Duration::from_millis(1);
/// Tasks of the many-keys scenario.
const MANY_KEYS_TASKS: usize = 64;

const CHILD_ENV: &str = "DISTLOCK_QBENCH_CHILD";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Impl {
    Distlock,
    Rslock,
}

impl Impl {
    const ALL: [Impl; 2] = [Impl::Distlock, Impl::Rslock];

    fn label(self) -> &'static str {
        match self {
            Impl::Distlock => "distlock Quorum",
            Impl::Rslock => "rslock",
        }
    }

    fn parse(s: &str) -> Impl {
        match s {
            "distlock" => Impl::Distlock,
            _ => Impl::Rslock,
        }
    }

    fn arg(self) -> &'static str {
        match self {
            Impl::Distlock => "distlock",
            Impl::Rslock => "rslock",
        }
    }
}

#[derive(Clone)]
enum Client {
    Distlock(Locker<Quorum>),
    Rslock(rslock::LockManager),
}

enum Held {
    Distlock(LockGuard),
    Rslock(rslock::Lock),
}

impl Client {
    fn new(which: Impl, urls: &[String]) -> Client {
        match which {
            Impl::Distlock => {
                let members: Vec<RedisBackend> = urls
                    .iter()
                    .map(|u| RedisBackend::from_url(u).expect("backend"))
                    .collect();
                let defaults = LockOptions::default()
                    .with_ttl(TTL)
                    .with_wait_timeout(Duration::from_secs(600));
                Client::Distlock(
                    Locker::new(Quorum::new(members).expect("quorum"))
                        .with_defaults(defaults)
                        .expect("options"),
                )
            }
            Impl::Rslock => Client::Rslock(rslock::LockManager::new(urls.to_vec())),
        }
    }

    /// Waits for the lock.
    async fn acquire(&self, name: &str) -> Held {
        match self {
            Client::Distlock(l) => Held::Distlock(l.lock(name).await.expect("lock")),
            Client::Rslock(lm) => {
                Held::Rslock(lm.acquire_no_guard(name, TTL).await.expect("acquire"))
            }
        }
    }

    async fn release(&self, held: Held) {
        match (self, held) {
            (Client::Distlock(_), Held::Distlock(g)) => {
                assert_eq!(
                    g.release().await.expect("release"),
                    distlock::Release::Released
                );
            }
            (Client::Rslock(lm), Held::Rslock(lock)) => lm.unlock(&lock).await,
            _ => unreachable!(),
        }
    }
}

async fn connect(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

// ---------------------------------------------------------------- child

/// One contending process: waits until `start_ns`, then locks, updates the
/// counter and releases until `end_ns`; prints one line per hold:
/// `hold ACQUIRED_NS RELEASED_NS WAIT_NS`.
fn child(which: Impl) {
    let urls: Vec<String> = std::env::var("QB_URLS")
        .unwrap()
        .split(',')
        .map(str::to_owned)
        .collect();
    let name = std::env::var("QB_NAME").unwrap();
    let start_ns: u128 = std::env::var("QB_START").unwrap().parse().unwrap();
    let end_ns: u128 = std::env::var("QB_END").unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = Client::new(which, &urls);
        let mut data = connect(&urls[0]).await;
        let counter = format!("{name}:counter");
        // Warm up (connections, scripts) before the common start.
        let held = client.acquire(&name).await;
        client.release(held).await;
        let wait = Duration::from_nanos(start_ns.saturating_sub(now_ns()) as u64);
        tokio::time::sleep(wait).await;
        let mut out = String::new();
        while now_ns() < end_ns {
            let asked = Instant::now();
            let held = client.acquire(&name).await;
            let acquired = now_ns();
            let waited = asked.elapsed();
            let n: i64 = data.get(&counter).await.unwrap_or(0);
            tokio::time::sleep(WORK).await;
            let _: () = data.set(&counter, n + 1).await.expect("SET");
            let released = now_ns();
            client.release(held).await;
            out.push_str(&format!(
                "hold {acquired} {released} {}\n",
                waited.as_nanos()
            ));
            tokio::time::sleep(WORK).await;
        }
        print!("{out}");
    });
}

// ---------------------------------------------------------------- parent

struct Contended {
    acquisitions: usize,
    per_sec: f64,
    held_share: f64,
    mean_gap: Duration,
    fewest: usize,
    most: usize,
    longest_wait: Duration,
    lost_updates: i64,
}

fn contended(which: Impl, urls: &[String], procs: usize, secs: Duration, run: &str) -> Contended {
    let name = format!("qbench:{run}:contended{procs}:{}", which.arg());
    let counter = format!("{name}:counter");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut admin = connect(&urls[0]).await;
        let _: () = admin.set(&counter, 0i64).await.unwrap();
    });
    // Children start together, after time to start and warm up.
    let start = now_ns() + 2_000_000_000 + procs as u128 * 100_000_000;
    let end = start + secs.as_nanos();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..procs)
        .map(|_| {
            Command::new(&exe)
                .env(CHILD_ENV, which.arg())
                .env("QB_URLS", urls.join(","))
                .env("QB_NAME", &name)
                .env("QB_START", start.to_string())
                .env("QB_END", end.to_string())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn a child")
        })
        .collect();
    let mut holds: Vec<(u128, u128)> = Vec::new();
    let mut per_proc = Vec::new();
    let mut longest_wait = Duration::ZERO;
    for mut c in children {
        let out = c.stdout.take().unwrap();
        let mut n = 0;
        for line in BufReader::new(out).lines() {
            let line = line.unwrap();
            let f: Vec<u128> = line
                .split_whitespace()
                .skip(1)
                .map(|x| x.parse().unwrap())
                .collect();
            holds.push((f[0], f[1]));
            longest_wait = longest_wait.max(Duration::from_nanos(f[2] as u64));
            n += 1;
        }
        assert!(c.wait().unwrap().success(), "a child failed");
        per_proc.push(n);
    }
    let counted: i64 = rt.block_on(async {
        let mut admin = connect(&urls[0]).await;
        admin.get(&counter).await.unwrap()
    });
    holds.sort_unstable();
    let wall = Duration::from_nanos((holds.last().map_or(end, |h| h.1.max(end)) - start) as u64);
    let held: u128 = holds.iter().map(|h| h.1 - h.0).sum();
    let gaps: Vec<u128> = holds
        .windows(2)
        .map(|w| w[1].0.saturating_sub(w[0].1))
        .collect();
    let mean_gap = if gaps.is_empty() {
        Duration::ZERO
    } else {
        Duration::from_nanos((gaps.iter().sum::<u128>() / gaps.len() as u128) as u64)
    };
    Contended {
        acquisitions: holds.len(),
        per_sec: holds.len() as f64 / wall.as_secs_f64(),
        held_share: held as f64 / wall.as_nanos() as f64,
        mean_gap,
        fewest: per_proc.iter().copied().min().unwrap_or(0),
        most: per_proc.iter().copied().max().unwrap_or(0),
        longest_wait,
        lost_updates: holds.len() as i64 - counted,
    }
}

/// Lock + release one name in a loop for `secs`: cycles per second.
async fn uncontended(client: &Client, name: &str, secs: Duration) -> f64 {
    let held = client.acquire(name).await;
    client.release(held).await;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < secs {
        let held = client.acquire(name).await;
        client.release(held).await;
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// 64 tasks, each lock + release its own name: cycles per second.
async fn many_keys(client: &Client, prefix: &str, secs: Duration) -> f64 {
    let start = Instant::now();
    let handles: Vec<_> = (0..MANY_KEYS_TASKS)
        .map(|t| {
            let client = client.clone();
            let name = format!("{prefix}:{t}");
            tokio::spawn(async move {
                let mut n = 0u64;
                while start.elapsed() < secs {
                    let held = client.acquire(&name).await;
                    client.release(held).await;
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

fn ratio(x: f64, base: f64) -> String {
    if base > 0.0 {
        format!("{:.2}", x / base)
    } else {
        "-".to_owned()
    }
}

fn main() {
    if let Ok(which) = std::env::var(CHILD_ENV) {
        child(Impl::parse(&which));
        return;
    }
    let secs = std::env::var("DISTLOCK_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(2));
    let only: Option<Vec<String>> = std::env::var("DISTLOCK_BENCH_ONLY")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.split(',').map(|p| p.trim().to_owned()).collect());
    let wanted = |s: &str| only.as_ref().is_none_or(|o| o.iter().any(|p| p == s));

    let servers: Vec<RedisServer> = (0..3)
        .map(|_| RedisServer::start_process(ProcessOptions::new()))
        .collect();
    let urls: Vec<String> = servers.iter().map(|s| s.url().to_owned()).collect();
    let run = format!("{}", now_ns() / 1_000_000);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .unwrap();
    println!("# distlock Quorum vs rslock over the same 3 Redis servers");
    println!(
        "3 `redis-server` processes on loopback, {cores} cores, {:.1} s per scenario and implementation",
        secs.as_secs_f64()
    );
    println!();

    if wanted("uncontended") {
        println!("## uncontended: one task, lock + release one name");
        println!();
        println!("| impl | cycles/s | ÷ rslock |");
        println!("|---|---|---|");
        let r: Vec<f64> = Impl::ALL
            .iter()
            .map(|&w| {
                rt.block_on(async {
                    let c = Client::new(w, &urls);
                    uncontended(&c, &format!("qbench:{run}:u:{}", w.arg()), secs).await
                })
            })
            .collect();
        for (w, x) in Impl::ALL.iter().zip(&r) {
            println!("| {} | {:.0} | {} |", w.label(), x, ratio(*x, r[1]));
        }
        println!();
    }
    for procs in [4usize, 16] {
        let scenario = format!("contended{procs}");
        if !wanted(&scenario) {
            continue;
        }
        println!("## {scenario}: {procs} OS processes wait for one name (GET, 1 ms, SET; 1 ms pause after release)");
        println!();
        println!("| impl | acq/s | held | mean gap | fewest/most | longest wait | lost updates |");
        println!("|---|---|---|---|---|---|---|");
        for w in Impl::ALL {
            let c = contended(w, &urls, procs, secs, &run);
            println!(
                "| {} | {:.0} | {:.0} % | {} | {}/{} | {:.0} ms | {} |",
                w.label(),
                c.per_sec,
                c.held_share * 100.0,
                us(c.mean_gap),
                c.fewest,
                c.most,
                c.longest_wait.as_secs_f64() * 1e3,
                c.lost_updates
            );
            assert!(c.acquisitions > 0);
            assert_eq!(c.lost_updates, 0, "{}: lost counter updates", w.label());
        }
        println!();
    }
    if wanted("manykeys") {
        println!("## manykeys: {MANY_KEYS_TASKS} tasks, each its own name");
        println!();
        println!("| impl | cycles/s | ÷ rslock |");
        println!("|---|---|---|");
        let r: Vec<f64> = Impl::ALL
            .iter()
            .map(|&w| {
                rt.block_on(async {
                    let c = Client::new(w, &urls);
                    many_keys(&c, &format!("qbench:{run}:m:{}", w.arg()), secs).await
                })
            })
            .collect();
        for (w, x) in Impl::ALL.iter().zip(&r) {
            println!("| {} | {:.0} | {} |", w.label(), x, ratio(*x, r[1]));
        }
        println!();
    }
    drop(servers);
}
