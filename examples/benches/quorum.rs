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

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use distlock::{LockGuard, LockOptions, Locker, Quorum};
use distlock_redis::testkit::{ProcessOptions, RedisServer};
use distlock_redis::RedisBackend;

// The quorum tables print no attempts per acquisition (one member's
// `SET` count would not be the whole story).
#[allow(dead_code)]
#[path = "common/procs.rs"]
mod procs;
#[path = "common/settings.rs"]
mod settings;

/// The lease both implementations ask for.
const TTL: Duration = Duration::from_secs(30);
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

impl procs::Contender for Client {
    type Held = Held;

    async fn acquire(&self, name: &str) -> Held {
        Client::acquire(self, name).await
    }

    async fn release(&self, held: Held) {
        Client::release(self, held).await
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
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

/// A child process of a contended scenario (see `common/procs.rs`).
fn child(args: &procs::ChildArgs) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = Client::new(Impl::parse(&args.which), &args.urls);
    rt.block_on(procs::child(&client, args));
}

fn main() {
    if let Some(args) = procs::ChildArgs::from_env(CHILD_ENV) {
        child(&args);
        return;
    }
    let settings = settings::Settings::from_env(Duration::from_secs(2));
    let secs = settings.secs;
    let wanted = |s: &str| settings.wanted(s);

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

    // One row per implementation: cycles per second and the ratio to rslock.
    let throughput = |title: &str, tag: &str, many: bool| {
        println!("## {title}");
        println!();
        println!("| impl | cycles/s | ÷ rslock |");
        println!("|---|---|---|");
        let r: Vec<f64> = Impl::ALL
            .iter()
            .map(|&w| {
                rt.block_on(async {
                    let c = Client::new(w, &urls);
                    let name = format!("qbench:{run}:{tag}:{}", w.arg());
                    if many {
                        many_keys(&c, &name, secs).await
                    } else {
                        uncontended(&c, &name, secs).await
                    }
                })
            })
            .collect();
        for (w, x) in Impl::ALL.iter().zip(&r) {
            println!("| {} | {:.0} | {} |", w.label(), x, ratio(*x, r[1]));
        }
        println!();
    };
    if wanted("uncontended") {
        throughput("uncontended: one task, lock + release one name", "u", false);
    }
    for n in [4usize, 16] {
        let scenario = format!("contended{n}");
        if !wanted(&scenario) {
            continue;
        }
        println!("## {scenario}: {n} OS processes wait for one name (GET, 1 ms, SET; 1 ms pause after release)");
        println!();
        println!("| impl | acq/s | held | mean gap | p50 gap | round trip (p50) | fewest/most | longest wait | lost updates |");
        println!("|---|---|---|---|---|---|---|---|---|");
        for w in Impl::ALL {
            let c = rt.block_on(procs::run(&procs::Run {
                marker: CHILD_ENV,
                which: w.arg(),
                urls: &urls,
                name: format!("qbench:{run}:contended{n}:{}", w.arg()),
                procs: n,
                secs,
            }));
            println!(
                "| {} | {:.0} | {:.0} % | {} | {} | {} | {}/{} | {:.0} ms | {} |",
                w.label(),
                c.per_sec,
                c.held_share * 100.0,
                us(c.mean_gap),
                us(c.p50_gap),
                us(c.rtt_p50),
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
        throughput(
            &format!("manykeys: {MANY_KEYS_TASKS} tasks, each its own name"),
            "m",
            true,
        );
    }
    drop(servers);
}
