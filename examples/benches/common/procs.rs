//! Contention between separate OS processes, shared by the `redis` and
//! `quorum` benches (`#[path = "common/procs.rs"] mod procs;`).
//!
//! The parent ([`run`]) re-runs the bench binary `procs` times in child
//! mode (the environment variable [`Run::marker`] set to the
//! implementation's name). Each child makes its own client, warms it up
//! (one lock + release), prints `ready` and waits for `go START_NS END_NS`
//! on its stdin; the parent sends that to all children at once, so every
//! child starts at the same moment whatever its start-up time. From START
//! to END each child loops: acquire, non-atomic read-modify-write of a
//! counter on the first server (`GET`, 1 ms sleep, `SET`), release, 1 ms
//! pause; then prints one `hold ACQUIRED_NS RELEASED_NS WAIT_NS` line per
//! hold. The parent merges the holds of all children into the figures of
//! [`Contended`]; `SET` calls counted by the first server between `go` and
//! the children's exit give the attempts per acquisition. Meanwhile the
//! parent sends a `PING` to the first server every [`RTT_EVERY`] from its
//! own connection: the median of those is the round trip under this load,
//! the unit of the mean gap's target (issue 15: 1.5 round trips).

use std::future::Future;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use distlock_redis::redis::{self, aio::MultiplexedConnection, AsyncCommands};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The critical section's sleep and the pause after each release.
pub const WORK: Duration = Duration::from_millis(1);

/// How often the parent measures the round trip during a run.
pub const RTT_EVERY: Duration = Duration::from_millis(5);

/// One client of a lock implementation, as a child process uses it.
pub trait Contender {
    /// A held lock.
    type Held;
    /// Waits for `name`.
    fn acquire(&self, name: &str) -> impl Future<Output = Self::Held>;
    /// Releases a lock taken by [`acquire`](Contender::acquire).
    fn release(&self, held: Self::Held) -> impl Future<Output = ()>;
}

/// What a child process was asked to do.
pub struct ChildArgs {
    /// The implementation's name (the marker variable's value).
    pub which: String,
    /// The servers; the counter lives on the first.
    pub urls: Vec<String>,
    /// The contended lock name.
    pub name: String,
}

impl ChildArgs {
    /// The arguments of this process if it is a child (`marker` is set).
    pub fn from_env(marker: &str) -> Option<ChildArgs> {
        let which = std::env::var(marker).ok()?;
        let urls = std::env::var("PROCS_URLS")
            .expect("PROCS_URLS")
            .split(',')
            .map(str::to_owned)
            .collect();
        let name = std::env::var("PROCS_NAME").expect("PROCS_NAME");
        Some(ChildArgs { which, urls, name })
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

async fn connect(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

/// The child's side (see the module documentation). Panics on any failure,
/// so the child exits non-zero and the parent fails the run.
pub async fn child<C: Contender>(client: &C, args: &ChildArgs) {
    let mut data = connect(&args.urls[0]).await;
    let counter = format!("{}:counter", args.name);
    // Warm up (connections, scripts) before the common start.
    let held = client.acquire(&args.name).await;
    client.release(held).await;
    let mut stdout = tokio::io::stdout();
    stdout.write_all(b"ready\n").await.expect("stdout");
    stdout.flush().await.expect("stdout");
    let mut line = String::new();
    BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await
        .expect("stdin");
    let f: Vec<u128> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().expect("go START END"))
        .collect();
    let (start_ns, end_ns) = (f[0], f[1]);
    tokio::time::sleep(Duration::from_nanos(
        start_ns.saturating_sub(now_ns()) as u64
    ))
    .await;
    let mut out = String::new();
    while now_ns() < end_ns {
        let asked = std::time::Instant::now();
        let held = client.acquire(&args.name).await;
        let acquired = now_ns();
        let waited = asked.elapsed();
        let n: i64 = data.get(&counter).await.expect("GET");
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
    stdout.write_all(out.as_bytes()).await.expect("stdout");
    stdout.flush().await.expect("stdout");
}

/// One multi-process run.
pub struct Run<'a> {
    /// The environment variable that puts the binary in child mode.
    pub marker: &'a str,
    /// Its value: the implementation the children use.
    pub which: &'a str,
    /// The servers, passed to the children; the counter lives on the first.
    pub urls: &'a [String],
    /// The contended lock name.
    pub name: String,
    /// How many child processes.
    pub procs: usize,
    /// How long they contend.
    pub secs: Duration,
}

/// The figures of one run.
pub struct Contended {
    pub acquisitions: usize,
    pub per_sec: f64,
    /// Share of the wall time the lock was held (acquire returned to
    /// release called).
    pub held_share: f64,
    /// Mean time from one release call to the next acquisition's return.
    pub mean_gap: Duration,
    /// The median of those gaps.
    pub p50_gap: Duration,
    /// Median `PING` round trip to the first server during the run, from
    /// the parent (see the module documentation).
    pub rtt_p50: Duration,
    /// Acquisitions of the least and the most lucky process.
    pub fewest: usize,
    pub most: usize,
    /// The longest single wait for the lock.
    pub longest_wait: Duration,
    /// Acquisitions minus counter increments seen (must be 0).
    pub lost_updates: i64,
    /// `SET` calls on the first server per acquisition, minus the counter's
    /// (1.0: every `SET NX` attempt succeeded).
    pub attempts: f64,
}

/// How many `SET` commands a server ran (also those inside scripts).
pub async fn set_calls(con: &mut MultiplexedConnection) -> i64 {
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

/// Runs `run.procs` children and gathers their holds. Children are killed
/// if this future is dropped; panics if a child fails.
pub async fn run(run: &Run<'_>) -> Contended {
    let counter = format!("{}:counter", run.name);
    let mut admin = connect(&run.urls[0]).await;
    let _: () = admin.set(&counter, 0i64).await.expect("reset counter");
    let exe = std::env::current_exe().expect("current exe");
    let mut children = Vec::new();
    for _ in 0..run.procs {
        let mut child = tokio::process::Command::new(&exe)
            .env(run.marker, run.which)
            .env("PROCS_URLS", run.urls.join(","))
            .env("PROCS_NAME", &run.name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn a child");
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        children.push((child, stdout));
    }
    for (_, lines) in &mut children {
        let ready = lines.next_line().await.expect("child stdout");
        assert_eq!(ready.as_deref(), Some("ready"), "a child did not start");
    }
    let sets_before = set_calls(&mut admin).await;
    let start = now_ns() + 20_000_000;
    let end = start + run.secs.as_nanos();
    let pings = tokio::spawn(round_trips(connect(&run.urls[0]).await, start, end));
    for (child, _) in &mut children {
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(format!("go {start} {end}\n").as_bytes())
            .await
            .expect("child stdin");
    }
    let mut holds: Vec<(u128, u128)> = Vec::new();
    let mut per_proc = Vec::new();
    let mut longest_wait = Duration::ZERO;
    for (mut child, mut lines) in children {
        let mut n = 0;
        while let Some(line) = lines.next_line().await.expect("child stdout") {
            let f: Vec<u128> = line
                .split_whitespace()
                .skip(1)
                .map(|x| x.parse().expect("hold line"))
                .collect();
            holds.push((f[0], f[1]));
            longest_wait = longest_wait.max(Duration::from_nanos(f[2] as u64));
            n += 1;
        }
        assert!(
            child.wait().await.expect("child").success(),
            "a child failed"
        );
        per_proc.push(n);
    }
    let sets = set_calls(&mut admin).await - sets_before;
    let mut rtts = pings.await.expect("the round-trip task");
    rtts.sort_unstable();
    let rtt_p50 = rtts.get(rtts.len() / 2).copied().unwrap_or(Duration::ZERO);
    let counted: i64 = admin.get(&counter).await.expect("GET counter");
    holds.sort_unstable();
    let last = holds.iter().map(|h| h.1).max().unwrap_or(end).max(end);
    let wall = Duration::from_nanos((last - start) as u64);
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
    let mut sorted = gaps.clone();
    sorted.sort_unstable();
    let p50_gap = Duration::from_nanos(sorted.get(sorted.len() / 2).copied().unwrap_or(0) as u64);
    let n = holds.len();
    Contended {
        acquisitions: n,
        per_sec: n as f64 / wall.as_secs_f64(),
        held_share: held as f64 / wall.as_nanos() as f64,
        mean_gap,
        p50_gap,
        rtt_p50,
        fewest: per_proc.iter().copied().min().unwrap_or(0),
        most: per_proc.iter().copied().max().unwrap_or(0),
        longest_wait,
        lost_updates: n as i64 - counted,
        attempts: (sets - n as i64) as f64 / n.max(1) as f64,
    }
}

/// `PING` round trips on `con`, one every [`RTT_EVERY`] from `start_ns` to
/// `end_ns` (wall clock, as the children's).
async fn round_trips(
    mut con: MultiplexedConnection,
    start_ns: u128,
    end_ns: u128,
) -> Vec<Duration> {
    tokio::time::sleep(Duration::from_nanos(
        start_ns.saturating_sub(now_ns()) as u64
    ))
    .await;
    let mut rtts = Vec::new();
    let mut every = tokio::time::interval(RTT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while now_ns() < end_ns {
        every.tick().await;
        let sent = std::time::Instant::now();
        let _: String = redis::cmd("PING")
            .query_async(&mut con)
            .await
            .expect("PING");
        rtts.push(sent.elapsed());
    }
    rtts
}
