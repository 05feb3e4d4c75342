//! Redis figures for BENCHMARKS.md: distlock next to the floor (the same work
//! issued directly with the `redis` crate) and next to rslock 0.10, in one run
//! against one Redis server.
//!
//! ```text
//! DISTLOCK_REDIS_IMAGE=distlock-redis:7-local cargo bench -p distlock-examples --bench redis
//! ```
//!
//! Redis comes from `distlock_redis::testkit::RedisServer::shared()`, as in the
//! tests: `DISTLOCK_REDIS_URL` if set, else a container of
//! `DISTLOCK_REDIS_IMAGE`, else `redis-server` from `PATH`.
//!
//! Environment:
//! - `DISTLOCK_BENCH_SECS`: seconds per scenario and implementation (default
//!   3; fractions allowed, e.g. `0.2` for a smoke run).
//! - `DISTLOCK_BENCH_ONLY`: comma-separated scenario filter (`uncontended`,
//!   `contended4`, `contended8`, `contended16`, `contended16shared`,
//!   `manykeys`); default
//!   all. `contended16shared` is the 16-task case with one client for all
//!   tasks (distlock's per-process waiter queue at work).
//!
//! A smoke run for CI (one 250 ms slice per scenario and implementation,
//! about 5 s; fails if a contended run loses a counter update):
//! `DISTLOCK_BENCH_SECS=0.1 cargo bench -p distlock-examples --bench redis`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use distlock_redis::redis::{self, aio::MultiplexedConnection, AsyncCommands};
use distlock_redis::testkit::RedisServer;
use distlock_redis::{LockGuard, LockOptions, Locker, RedisBackend};

/// The lease every implementation asks for.
const TTL: Duration = Duration::from_secs(30);
/// The critical section's sleep and the pause outside it (contended).
const WORK: Duration = Duration::from_millis(1);
/// The floor's retry delay when the lock is held.
const FLOOR_RETRY: Duration = Duration::from_millis(1);
/// Tasks of the many-keys scenario.
const MANY_KEYS_TASKS: usize = 64;

const COMPARE_AND_DELETE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Impl {
    Floor,
    Distlock,
    Rslock,
}

impl Impl {
    const ALL: [Impl; 3] = [Impl::Floor, Impl::Distlock, Impl::Rslock];

    fn label(self) -> &'static str {
        match self {
            Impl::Floor => "floor",
            Impl::Distlock => "distlock",
            Impl::Rslock => "rslock",
        }
    }
}

/// One client of one implementation (a connection, a backend, a manager).
#[derive(Clone)]
enum Client {
    Floor {
        con: MultiplexedConnection,
        script: Arc<redis::Script>,
    },
    Distlock(Locker<RedisBackend>),
    Rslock(rslock::LockManager),
}

/// A held lock of any implementation.
enum Held {
    Floor { key: String, token: String },
    Distlock(LockGuard),
    Rslock(rslock::LockGuard),
}

impl Client {
    async fn new(which: Impl, url: &str) -> Client {
        match which {
            Impl::Floor => Client::Floor {
                con: connect(url).await,
                script: Arc::new(redis::Script::new(COMPARE_AND_DELETE)),
            },
            Impl::Distlock => {
                let backend = RedisBackend::from_url(url).expect("backend");
                let defaults = LockOptions::default()
                    .with_ttl(TTL)
                    .with_wait_timeout(Duration::from_secs(600));
                Client::Distlock(
                    Locker::new(backend)
                        .with_defaults(defaults)
                        .expect("options"),
                )
            }
            Impl::Rslock => Client::Rslock(rslock::LockManager::new(vec![url.to_owned()])),
        }
    }

    /// One attempt on the floor: SET NX PX.
    async fn floor_try(con: &mut MultiplexedConnection, key: &str, token: &str) -> bool {
        let reply: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(TTL.as_millis() as u64)
            .query_async(con)
            .await
            .expect("SET NX");
        reply.is_some()
    }

    /// Takes a lock that should be free (uncontended and many-keys loops).
    async fn lock(&self, name: &str, token: String) -> Held {
        match self {
            Client::Floor { con, .. } => {
                let mut con = con.clone();
                assert!(Self::floor_try(&mut con, name, &token).await, "{name} held");
                Held::Floor {
                    key: name.to_owned(),
                    token,
                }
            }
            Client::Distlock(locker) => Held::Distlock(locker.lock(name).await.expect("lock")),
            Client::Rslock(lm) => {
                let lock = lm.lock(name, TTL).await.expect("rslock lock");
                Held::Rslock(rslock::LockGuard { lock })
            }
        }
    }

    /// Waits for a lock (contended loop).
    async fn acquire(&self, name: &str, token: String) -> Held {
        match self {
            Client::Floor { con, .. } => {
                let mut con = con.clone();
                while !Self::floor_try(&mut con, name, &token).await {
                    tokio::time::sleep(FLOOR_RETRY).await;
                }
                Held::Floor {
                    key: name.to_owned(),
                    token,
                }
            }
            Client::Distlock(locker) => Held::Distlock(locker.lock(name).await.expect("lock")),
            Client::Rslock(lm) => Held::Rslock(lm.acquire(name, TTL).await.expect("acquire")),
        }
    }

    async fn release(&self, held: Held) {
        match (self, held) {
            (Client::Floor { con, script }, Held::Floor { key, token }) => {
                let mut con = con.clone();
                let n: i64 = script
                    .key(&key)
                    .arg(&token)
                    .invoke_async(&mut con)
                    .await
                    .expect("release");
                assert_eq!(n, 1, "floor release of {key} found another holder");
            }
            (Client::Distlock(_), Held::Distlock(guard)) => {
                let outcome = guard.release().await.expect("release");
                assert_eq!(outcome, distlock_redis::Release::Released);
            }
            (Client::Rslock(_), Held::Rslock(guard)) => guard.release().await,
            _ => unreachable!("a lock released through another implementation"),
        }
    }
}

async fn connect(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

// ---------------------------------------------------------------- scenarios
//
// Every scenario runs in slices: floor, distlock, rslock, floor, … each for
// `SLICE`, with the same clients throughout, so the noise of a shared
// machine falls on all three alike.

/// How long each implementation runs before the next one takes over.
const SLICE: Duration = Duration::from_millis(250);

fn slices(total: Duration) -> u32 {
    (total.as_secs_f64() / SLICE.as_secs_f64()).ceil().max(1.0) as u32
}

#[derive(Default)]
struct Uncontended {
    wall: Duration,
    lat: Vec<Duration>,
}

impl Uncontended {
    fn per_sec(&self) -> f64 {
        self.lat.len() as f64 / self.wall.as_secs_f64()
    }
}

async fn uncontended_setup(which: Impl, url: &str, run: &str) -> (Client, String) {
    let client = Client::new(which, url).await;
    let name = format!("bench:{run}:uncontended:{}", which.label());
    // Warm up (connections, script cache).
    for i in 0..50 {
        let held = client.lock(&name, format!("w{i}")).await;
        client.release(held).await;
    }
    (client, name)
}

async fn uncontended_slice(client: &Client, name: &str, len: Duration, acc: &mut Uncontended) {
    let start = Instant::now();
    let mut i = acc.lat.len() as u64;
    while start.elapsed() < len {
        let t0 = Instant::now();
        let held = client.lock(name, format!("t{i}")).await;
        client.release(held).await;
        acc.lat.push(t0.elapsed());
        i += 1;
    }
    acc.wall += start.elapsed();
}

/// One acquisition as a task saw it.
struct Hold {
    /// When the acquire call returned.
    acquired: Instant,
    /// When the release call was issued.
    released: Instant,
}

struct ContendedSetup {
    clients: Vec<(Client, MultiplexedConnection)>,
    name: String,
    counter: String,
}

#[derive(Default)]
struct ContendedAcc {
    wall: Duration,
    held: Duration,
    gaps: Vec<Duration>,
    per_task: Vec<usize>,
    longest_wait: Duration,
    acquisitions: usize,
    sets: i64,
}

struct Contended {
    acquisitions: usize,
    per_sec: f64,
    held_share: f64,
    mean_gap: Duration,
    p50_gap: Duration,
    fewest: usize,
    most: usize,
    longest_wait: Duration,
    lost_updates: i64,
    /// `SET … NX` attempts per acquisition (1.0: no attempt failed). All
    /// three implementations try with one `SET NX` (distlock inside its
    /// acquire script); a stampede of waiters shows here.
    attempts: f64,
}

/// How many `SET` commands Redis ran (also those inside scripts).
async fn set_calls(con: &mut MultiplexedConnection) -> i64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(con)
        .await
        .expect("INFO commandstats");
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_set:calls="))
        .and_then(|v| v.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// `shared`: all tasks use one client (one backend, one connection, one
/// manager) instead of one each.
async fn contended_setup(
    which: Impl,
    url: &str,
    tasks: usize,
    shared: bool,
    run: &str,
) -> ContendedSetup {
    let name = format!("bench:{run}:contended{tasks}:{shared}:{}", which.label());
    let counter = format!("{name}:counter");
    let mut admin = connect(url).await;
    let _: () = admin.set(&counter, 0i64).await.expect("reset counter");
    let mut clients = Vec::new();
    let one = Client::new(which, url).await;
    for _ in 0..tasks {
        let client = if shared {
            one.clone()
        } else {
            Client::new(which, url).await
        };
        let data = connect(url).await;
        // Warm up each client once (connections, script cache).
        let held = client.acquire(&name, "warm".to_owned()).await;
        client.release(held).await;
        clients.push((client, data));
    }
    ContendedSetup {
        clients,
        name,
        counter,
    }
}

async fn contended_slice(
    setup: &ContendedSetup,
    admin: &mut MultiplexedConnection,
    len: Duration,
    acc: &mut ContendedAcc,
) {
    let sets_before = set_calls(admin).await;
    let start = Instant::now();
    let deadline = start + len;
    let handles: Vec<_> = setup
        .clients
        .iter()
        .enumerate()
        .map(|(t, (client, data))| {
            let (client, mut data) = (client.clone(), data.clone());
            let name = setup.name.clone();
            let counter = setup.counter.clone();
            tokio::spawn(async move {
                let mut holds = Vec::new();
                let mut longest_wait = Duration::ZERO;
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let asked = Instant::now();
                    let held = client.acquire(&name, format!("{t}-{i}")).await;
                    let acquired = Instant::now();
                    longest_wait = longest_wait.max(acquired - asked);
                    // The critical section: a non-atomic read-modify-write.
                    let n: i64 = data.get(&counter).await.expect("GET");
                    tokio::time::sleep(WORK).await;
                    let _: () = data.set(&counter, n + 1).await.expect("SET");
                    let released = Instant::now();
                    client.release(held).await;
                    holds.push(Hold { acquired, released });
                    tokio::time::sleep(WORK).await;
                    i += 1;
                }
                (holds, longest_wait)
            })
        })
        .collect();
    let mut all = Vec::new();
    acc.per_task.resize(setup.clients.len(), 0);
    for (t, h) in handles.into_iter().enumerate() {
        let (holds, wait) = h.await.expect("task");
        acc.per_task[t] += holds.len();
        acc.longest_wait = acc.longest_wait.max(wait);
        all.extend(holds);
    }
    acc.wall += start.elapsed();
    acc.sets += set_calls(admin).await - sets_before;
    all.sort_by_key(|h| h.acquired);
    acc.held += all
        .iter()
        .map(|h| h.released - h.acquired)
        .sum::<Duration>();
    acc.gaps.extend(
        all.windows(2)
            .map(|w| w[1].acquired.saturating_duration_since(w[0].released)),
    );
    acc.acquisitions += all.len();
}

async fn contended_finish(
    setup: &ContendedSetup,
    admin: &mut MultiplexedConnection,
    mut acc: ContendedAcc,
) -> Contended {
    let counted: i64 = admin.get(&setup.counter).await.expect("GET counter");
    // The warm-up acquisitions did not count.
    let n = acc.acquisitions;
    let mean_gap = if acc.gaps.is_empty() {
        Duration::ZERO
    } else {
        acc.gaps.iter().sum::<Duration>() / acc.gaps.len() as u32
    };
    acc.gaps.sort_unstable();
    Contended {
        acquisitions: n,
        per_sec: n as f64 / acc.wall.as_secs_f64(),
        held_share: acc.held.as_secs_f64() / acc.wall.as_secs_f64(),
        mean_gap,
        p50_gap: percentile(&acc.gaps, 0.5),
        fewest: acc.per_task.iter().copied().min().unwrap_or(0),
        most: acc.per_task.iter().copied().max().unwrap_or(0),
        longest_wait: acc.longest_wait,
        lost_updates: n as i64 - counted,
        // Minus the critical section's SET of the counter.
        attempts: (acc.sets - n as i64) as f64 / n.max(1) as f64,
    }
}

async fn many_keys_slice(
    client: &Client,
    which: Impl,
    run: &str,
    len: Duration,
) -> (u64, Duration) {
    let start = Instant::now();
    let deadline = start + len;
    let handles: Vec<_> = (0..MANY_KEYS_TASKS)
        .map(|t| {
            let client = client.clone();
            let name = format!("bench:{run}:many:{}:{t}", which.label());
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let held = client.lock(&name, format!("t{n}")).await;
                    client.release(held).await;
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.await.expect("task");
    }
    (total, start.elapsed())
}

// ---------------------------------------------------------------- report

fn ratio(x: f64, base: f64) -> String {
    if base > 0.0 {
        format!("{:.2}", x / base)
    } else {
        "-".to_owned()
    }
}

fn main() {
    let secs = std::env::var("DISTLOCK_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(3));
    let only: Option<Vec<String>> = std::env::var("DISTLOCK_BENCH_ONLY")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.split(',').map(|p| p.trim().to_owned()).collect());
    let wanted = |s: &str| only.as_ref().is_none_or(|o| o.iter().any(|p| p == s));

    let server = RedisServer::shared();
    let url = server.url().to_owned();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .expect("runtime");
    // A per-run tag keeps keys of earlier runs on an external server apart.
    let run = format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );

    rt.block_on(async {
        let mut admin = connect(&url).await;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut admin)
            .await
            .expect("INFO");
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap_or("?")
                .trim()
                .to_owned()
        };
        println!("# distlock Redis benchmark");
        println!(
            "Redis {} ({}), {} cores seen by the client, tokio multi-thread runtime with {} workers, {:.1} s per scenario and implementation in {} interleaved slices",
            field("redis_version:"),
            server.kind(),
            cores,
            cores,
            secs.as_secs_f64(),
            slices(secs)
        );
        println!();

        if wanted("uncontended") {
            let mut setups = Vec::new();
            for which in Impl::ALL {
                setups.push((which, uncontended_setup(which, &url, &run).await));
            }
            let mut r: HashMap<Impl, Uncontended> = HashMap::new();
            for _ in 0..slices(secs) {
                for (which, (client, name)) in &setups {
                    let acc = r.entry(*which).or_default();
                    uncontended_slice(client, name, SLICE, acc).await;
                }
            }
            for x in r.values_mut() {
                x.lat.sort_unstable();
            }
            println!("## uncontended: one task, lock + release one name in a loop");
            println!();
            println!("| impl | cycles/s | p50 | p99 | ÷ floor | ÷ rslock |");
            println!("|---|---:|---:|---:|---:|---:|");
            for which in Impl::ALL {
                let x = &r[&which];
                println!(
                    "| {} | {:.0} | {} | {} | {} | {} |",
                    which.label(),
                    x.per_sec(),
                    us(percentile(&x.lat, 0.5)),
                    us(percentile(&x.lat, 0.99)),
                    ratio(x.per_sec(), r[&Impl::Floor].per_sec()),
                    ratio(x.per_sec(), r[&Impl::Rslock].per_sec()),
                );
            }
            println!();
        }

        for (tasks, shared) in [(4usize, false), (8, false), (16, false), (16, true)] {
            let scenario = format!("contended{tasks}{}", if shared { "shared" } else { "" });
            if !wanted(&scenario) {
                continue;
            }
            let mut setups = Vec::new();
            for which in Impl::ALL {
                setups.push((
                    which,
                    contended_setup(which, &url, tasks, shared, &run).await,
                ));
            }
            let mut accs: HashMap<Impl, ContendedAcc> = HashMap::new();
            for _ in 0..slices(secs) {
                for (which, setup) in &setups {
                    let acc = accs.entry(*which).or_default();
                    contended_slice(setup, &mut admin, SLICE, acc).await;
                }
            }
            let mut r = HashMap::new();
            for (which, setup) in &setups {
                let acc = accs.remove(which).unwrap_or_default();
                r.insert(*which, contended_finish(setup, &mut admin, acc).await);
            }
            let clients = if shared {
                "all through one client"
            } else {
                "each with its own client"
            };
            println!(
                "## contended: {tasks} tasks, {clients}, one name, 1 ms critical section + 1 ms outside"
            );
            println!();
            println!("| impl | acq/s | held | mean gap | p50 gap | fewest/most (ratio) | longest wait | lost updates | attempts/acq | acq/s ÷ floor | acq/s ÷ rslock |");
            println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
            for which in Impl::ALL {
                let x = &r[&which];
                println!(
                    "| {} | {:.0} | {:.1} % | {} | {} | {}/{} ({:.2}) | {:.1} ms | {} | {:.1} | {} | {} |",
                    which.label(),
                    x.per_sec,
                    x.held_share * 100.0,
                    us(x.mean_gap),
                    us(x.p50_gap),
                    x.fewest,
                    x.most,
                    x.fewest as f64 / x.most.max(1) as f64,
                    x.longest_wait.as_secs_f64() * 1e3,
                    x.lost_updates,
                    x.attempts,
                    ratio(x.per_sec, r[&Impl::Floor].per_sec),
                    ratio(x.per_sec, r[&Impl::Rslock].per_sec),
                );
                assert!(x.acquisitions > 0, "{}: no acquisition", which.label());
                assert_eq!(x.lost_updates, 0, "{}: lost updates", which.label());
            }
            println!();
        }

        if wanted("manykeys") {
            let mut clients = Vec::new();
            for which in Impl::ALL {
                clients.push((which, Client::new(which, &url).await));
            }
            let mut done: HashMap<Impl, (u64, Duration)> = HashMap::new();
            for _ in 0..slices(secs) {
                for (which, client) in &clients {
                    let (n, wall) = many_keys_slice(client, *which, &run, SLICE).await;
                    let acc = done.entry(*which).or_default();
                    acc.0 += n;
                    acc.1 += wall;
                }
            }
            let r: HashMap<Impl, f64> = done
                .into_iter()
                .map(|(w, (n, wall))| (w, n as f64 / wall.as_secs_f64()))
                .collect();
            println!("## many keys: {MANY_KEYS_TASKS} tasks on distinct names through one client");
            println!();
            println!("| impl | cycles/s | ÷ floor | ÷ rslock |");
            println!("|---|---:|---:|---:|");
            for which in Impl::ALL {
                println!(
                    "| {} | {:.0} | {} | {} |",
                    which.label(),
                    r[&which],
                    ratio(r[&which], r[&Impl::Floor]),
                    ratio(r[&which], r[&Impl::Rslock]),
                );
            }
            println!();
        }
    });
}
