//! Redis figures for BENCHMARKS.md: distlock next to the floor (the same work
//! issued directly with the `redis` crate) and next to rslock 0.10, in one run
//! against one Redis server. `distlock-noq` is distlock with
//! `RedisConfig::waiter_queue = false` (no line of waiters: the behaviour
//! before it), so before and after come from the same run.
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
//!   `manykeys`, `procs4`, `procs16`, `names300`); default
//!   all. `contended16shared` is the 16-task case with one client for all
//!   tasks (distlock's per-process waiter queue at work).
//!
//! - `procs4`, `procs16`: 4 or 16 separate OS processes (this binary re-run
//!   in child mode, see `common/procs.rs`), each with its own client, wait
//!   for one name; each hold does `GET`, 1 ms sleep, `SET` of a counter and
//!   pauses 1 ms after releasing. The implementations run one after
//!   another, each for `DISTLOCK_BENCH_SECS`. The longest wait is also
//!   given ÷ the fair share (the other N - 1 processes' holds at the
//!   measured rate).
//! - `names300`: one distlock `Locker`, 3 tasks per name doing lock +
//!   release, once with 1 name and once with 300: the time `watch()` takes
//!   (a wrapper backend times it) and the lock waits must not grow with the
//!   number of other contended names (issue 15).
//!
//! A smoke run for CI (one 250 ms slice per scenario and implementation,
//! about 5 s; fails if a contended run loses a counter update):
//! `DISTLOCK_BENCH_SECS=0.1 cargo bench -p distlock-examples --bench redis`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use distlock::{
    Acquire, BackendError, Capabilities, Extend, LockBackend, LockInfo, LockKey, LockToken,
    RaiseFence, Release, ReleaseWatch, Waiter,
};
use distlock_redis::redis::{self, aio::MultiplexedConnection, AsyncCommands};
use distlock_redis::testkit::RedisServer;
use distlock_redis::{LockGuard, LockOptions, Locker, RedisBackend, RedisConfig};

#[path = "common/procs.rs"]
mod procs;
#[path = "common/settings.rs"]
mod settings;

/// Set (to the implementation's label) in the child processes of `procs4`
/// and `procs16`.
const CHILD_ENV: &str = "DISTLOCK_BENCH_CHILD";

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
    /// distlock with the server-side line of waiters turned off (today's
    /// behaviour before it), so before and after come from one run.
    DistlockNoq,
    Rslock,
}

impl Impl {
    const ALL: [Impl; 4] = [Impl::Floor, Impl::Distlock, Impl::DistlockNoq, Impl::Rslock];

    fn label(self) -> &'static str {
        match self {
            Impl::Floor => "floor",
            Impl::Distlock => "distlock",
            Impl::DistlockNoq => "distlock-noq",
            Impl::Rslock => "rslock",
        }
    }

    fn parse(label: &str) -> Option<Impl> {
        Impl::ALL.into_iter().find(|w| w.label() == label)
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
            Impl::Distlock | Impl::DistlockNoq => {
                let config = RedisConfig::new(url).with_waiter_queue(which == Impl::Distlock);
                let backend = RedisBackend::from_config(&config).expect("backend");
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
    let sets_before = procs::set_calls(admin).await;
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
    acc.sets += procs::set_calls(admin).await - sets_before;
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

// ---------------------------------------------------------------- names300
//
// Many contended names in one process: every handoff to a waiter of this
// backend asks the release subscriber to move that name's subscription to
// the back of Redis's subscriber order. With 300 names the moves must not
// delay the next waiter's `watch()` (issue 15).

/// `watch()` calls of a backend: how many and how long they took.
#[derive(Default)]
struct WatchStats {
    calls: AtomicU64,
    total_ns: AtomicU64,
    max_ns: AtomicU64,
}

impl WatchStats {
    /// Runs one `watch`/`watch_queued` call and counts its time.
    async fn time<T>(&self, call: impl std::future::Future<Output = T>) -> T {
        let t0 = Instant::now();
        let w = call.await;
        let ns = t0.elapsed().as_nanos() as u64;
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.total_ns.fetch_add(ns, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
        w
    }
}

/// A [`RedisBackend`] that times its `watch()` and `watch_queued()` calls
/// (everything forwarded).
#[derive(Clone)]
struct TimedWatch {
    inner: RedisBackend,
    stats: Arc<WatchStats>,
}

#[distlock::async_trait]
impl LockBackend for TimedWatch {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn try_acquire(
        &self,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
    ) -> Result<Acquire, BackendError> {
        self.inner.try_acquire(key, token, ttl, owner).await
    }

    async fn extend(
        &self,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
    ) -> Result<Extend, BackendError> {
        self.inner.extend(key, token, ttl).await
    }

    async fn release(&self, key: &LockKey, token: &LockToken) -> Result<Release, BackendError> {
        self.inner.release(key, token).await
    }

    async fn inspect(&self, key: &LockKey) -> Result<LockInfo, BackendError> {
        self.inner.inspect(key).await
    }

    async fn watch(&self, key: &LockKey) -> Result<Option<ReleaseWatch>, BackendError> {
        self.stats.time(self.inner.watch(key)).await
    }

    async fn try_acquire_queued(
        &self,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
        waiter: &Waiter,
    ) -> Result<Acquire, BackendError> {
        self.inner
            .try_acquire_queued(key, token, ttl, owner, waiter)
            .await
    }

    async fn watch_queued(
        &self,
        key: &LockKey,
        waiter: &Waiter,
    ) -> Result<Option<ReleaseWatch>, BackendError> {
        self.stats.time(self.inner.watch_queued(key, waiter)).await
    }

    async fn raise_fence(
        &self,
        key: &LockKey,
        token: &LockToken,
        at_least: u64,
    ) -> Result<RaiseFence, BackendError> {
        self.inner.raise_fence(key, token, at_least).await
    }

    fn identity(&self) -> Option<String> {
        self.inner.identity()
    }
}

/// Tasks per name in the `names300` scenario.
const NAMES_TASKS: usize = 3;

struct ManyNames {
    acquisitions: u64,
    per_sec: f64,
    watch_calls: u64,
    watch_mean: Duration,
    watch_max: Duration,
    wait_mean: Duration,
    longest_wait: Duration,
}

/// One `Locker` for `names` names, `NAMES_TASKS` tasks each doing lock +
/// release in a loop for `len`.
async fn many_names(url: &str, names: usize, run: &str, len: Duration) -> ManyNames {
    let stats = Arc::new(WatchStats::default());
    let backend = TimedWatch {
        inner: RedisBackend::from_url(url).expect("backend"),
        stats: stats.clone(),
    };
    let defaults = LockOptions::default()
        .with_ttl(TTL)
        .with_wait_timeout(Duration::from_secs(600));
    let locker = Locker::new(backend)
        .with_defaults(defaults)
        .expect("options");
    // Warm up (connection, script cache, subscriber connection).
    for n in 0..names.min(8) {
        let name = format!("bench:{run}:names{names}:{n}");
        locker
            .lock(&name)
            .await
            .expect("lock")
            .release()
            .await
            .expect("release");
    }
    let start = Instant::now();
    let deadline = start + len;
    let handles: Vec<_> = (0..names * NAMES_TASKS)
        .map(|t| {
            let locker = locker.clone();
            let name = format!("bench:{run}:names{names}:{}", t % names);
            tokio::spawn(async move {
                let (mut n, mut waited, mut longest) = (0u64, Duration::ZERO, Duration::ZERO);
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    let guard = locker.lock(&name).await.expect("lock");
                    let w = t0.elapsed();
                    waited += w;
                    longest = longest.max(w);
                    guard.release().await.expect("release");
                    n += 1;
                }
                (n, waited, longest)
            })
        })
        .collect();
    let (mut total, mut waited, mut longest) = (0u64, Duration::ZERO, Duration::ZERO);
    for h in handles {
        let (n, w, l) = h.await.expect("task");
        total += n;
        waited += w;
        longest = longest.max(l);
    }
    let wall = start.elapsed();
    let calls = stats.calls.load(Ordering::Relaxed);
    ManyNames {
        acquisitions: total,
        per_sec: total as f64 / wall.as_secs_f64(),
        watch_calls: calls,
        watch_mean: Duration::from_nanos(stats.total_ns.load(Ordering::Relaxed) / calls.max(1)),
        watch_max: Duration::from_nanos(stats.max_ns.load(Ordering::Relaxed)),
        wait_mean: waited / total.max(1) as u32,
        longest_wait: longest,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

// ---------------------------------------------------------------- procs

/// A client in a child process of `procs4`/`procs16`, with its own tokens.
struct ProcClient {
    client: Client,
    tokens: AtomicU64,
}

impl procs::Contender for ProcClient {
    type Held = Held;

    async fn acquire(&self, name: &str) -> Held {
        let i = self.tokens.fetch_add(1, Ordering::Relaxed);
        let token = format!("{}-{i}", std::process::id());
        self.client.acquire(name, token).await
    }

    async fn release(&self, held: Held) {
        self.client.release(held).await
    }
}

/// A child process of `procs4`/`procs16` (see `common/procs.rs`).
fn child(args: &procs::ChildArgs) {
    let which = Impl::parse(&args.which).expect("implementation label");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = ProcClient {
            client: Client::new(which, &args.urls[0]).await,
            tokens: AtomicU64::new(0),
        };
        procs::child(&client, args).await;
    });
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
    if let Some(args) = procs::ChildArgs::from_env(CHILD_ENV) {
        child(&args);
        return;
    }
    let settings = settings::Settings::from_env(Duration::from_secs(3));
    let secs = settings.secs;
    let wanted = |s: &str| settings.wanted(s);

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


        for n in [4usize, 16] {
            let scenario = format!("procs{n}");
            if !wanted(&scenario) {
                continue;
            }
            let urls = [url.clone()];
            let mut r = HashMap::new();
            for which in Impl::ALL {
                let c = procs::run(&procs::Run {
                    marker: CHILD_ENV,
                    which: which.label(),
                    urls: &urls,
                    name: format!("bench:{run}:procs{n}:{}", which.label()),
                    procs: n,
                    secs,
                })
                .await;
                r.insert(which, c);
            }
            println!(
                "## {scenario}: {n} OS processes, each with its own client, one name, GET + 1 ms + SET inside, 1 ms outside"
            );
            println!();
            println!("| impl | acq/s | held | mean gap (÷ round trip) | p50 gap (÷ round trip) | fewest/most (ratio) | longest wait (÷ fair share) | lost updates | attempts/acq | acq/s ÷ floor | acq/s ÷ rslock |");
            println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
            for which in Impl::ALL {
                let x: &procs::Contended = &r[&which];
                // A fair share of waiting: the other n - 1 processes' holds
                // at this implementation's mean hold + gap.
                let fair = (n as f64 - 1.0) / x.per_sec.max(f64::MIN_POSITIVE);
                let rtt = x.rtt_p50.as_secs_f64().max(f64::MIN_POSITIVE);
                println!(
                    "| {} | {:.0} | {:.1} % | {} ({:.1}) | {} ({:.1}) | {}/{} ({:.2}) | {:.1} ms ({:.1}) | {} | {:.2} | {} | {} |",
                    which.label(),
                    x.per_sec,
                    x.held_share * 100.0,
                    us(x.mean_gap),
                    x.mean_gap.as_secs_f64() / rtt,
                    us(x.p50_gap),
                    x.p50_gap.as_secs_f64() / rtt,
                    x.fewest,
                    x.most,
                    x.fewest as f64 / x.most.max(1) as f64,
                    x.longest_wait.as_secs_f64() * 1e3,
                    x.longest_wait.as_secs_f64() / fair,
                    x.lost_updates,
                    x.attempts,
                    ratio(x.per_sec, r[&Impl::Floor].per_sec),
                    ratio(x.per_sec, r[&Impl::Rslock].per_sec),
                );
                assert!(x.acquisitions > 0, "{}: no acquisition", which.label());
                assert_eq!(x.lost_updates, 0, "{}: lost updates", which.label());
            }
            println!();
            println!(
                "Round trip (median `PING` from the parent during each run): {}.",
                Impl::ALL
                    .iter()
                    .map(|w| format!("{} {}", w.label(), us(r[w].rtt_p50)))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            println!();
        }

        if wanted("names300") {
            // The same run with one name first: handoff cost must not grow
            // with the number of other contended names.
            let mut rows = Vec::new();
            for names in [1usize, 300] {
                rows.push((names, many_names(&url, names, &run, secs).await));
            }
            println!("## names300: one Locker (distlock), {NAMES_TASKS} tasks per name, lock + release in a loop");
            println!();
            println!("| names | acq/s | watch() calls | watch() mean | watch() max | lock wait mean | longest wait |");
            println!("|---:|---:|---:|---:|---:|---:|---:|");
            for (names, x) in &rows {
                println!(
                    "| {names} | {:.0} | {} | {} | {} | {} | {} |",
                    x.per_sec,
                    x.watch_calls,
                    ms(x.watch_mean),
                    ms(x.watch_max),
                    ms(x.wait_mean),
                    ms(x.longest_wait),
                );
                assert!(x.acquisitions > 0, "names{names}: no acquisition");
            }
            println!();
        }
    });
}
