//! Stress across OS processes against one real Redis, checked from the
//! recorded history.
//!
//! `stress_across_processes_checked_from_history` starts the shared Redis
//! and re-runs this test binary as 4 child processes (only the test
//! `stress_worker`, selected with `--exact`, in child mode through
//! environment variables). Each child runs 16 tasks on 3 lock names with
//! the `distlock_conformance::history::stress` driver: every hold
//! increments a Redis-held counter of its name with GET, a pause and SET,
//! and is printed as one JSON line. The parent checks the merged history
//! with `history::check` (no overlapping protected intervals, fences
//! strictly increasing per name), that each counter equals the number of
//! holds of its name, and that every task of every process held a lock.
//! Run with `--nocapture` to see the figures.
//!
//! Run alone, `stress_worker` is a small in-process run of the same worker.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use distlock_conformance::history::{
    check, stress_streaming, BoxError, Hold, HolderId, Report, SharedCounter, StressConfig,
};
use distlock_redis::redis::AsyncCommands;
use distlock_redis::testkit::RedisServer;
use distlock_redis::{Locker, RedisBackend};

/// Set in a child: its process number.
const CHILD_ENV: &str = "DISTLOCK_STRESS_CHILD";
/// Set in a child: the Redis URL.
const CHILD_URL_ENV: &str = "DISTLOCK_STRESS_URL";
/// Set in a child: the run id that keeps names and counters apart.
const CHILD_RUN_ENV: &str = "DISTLOCK_STRESS_RUN";
/// The prefix of a hold line on a child's stdout.
const HOLD_LINE: &str = "distlock-stress-hold ";
/// The prefix of a child's closing summary line.
const SUMMARY_LINE: &str = "distlock-stress-summary ";

const PROCESSES: u32 = 4;
const TASKS: u32 = 16;
const NAMES: [&str; 3] = ["alpha", "beta", "gamma"];
const HOLDS_PER_TASK: u32 = 30;
/// Children start no new hold after this long (each task holds at least once).
const CHILD_BUDGET: Duration = Duration::from_secs(25);
/// A child still running after this long fails the test (all are killed).
const CHILD_TIMEOUT: Duration = Duration::from_secs(90);

/// The worker's configuration for process `process`.
fn config(process: u32) -> StressConfig {
    let mut config = StressConfig::new(process, NAMES);
    config.tasks = TASKS;
    config.holds_per_task = HOLDS_PER_TASK;
    config.max_duration = Some(CHILD_BUDGET);
    config.ttl = Duration::from_secs(5);
    config.wait_timeout = Duration::from_secs(60);
    config.retry = (Duration::from_millis(2), Duration::from_millis(50));
    config.work = Duration::from_millis(1);
    // One renewing task per process (1 s leases renewed every third of it,
    // held 1.5 s at times); every tenth hold of the others runs its lease
    // out (30 ms) on purpose. Counters are written early in each hold,
    // while the lease has most of its TTL left.
    config.renew_every = 16;
    config.renew_ttl = Duration::from_secs(1);
    config.overrun_every = 10;
    config.overrun_ttl = Duration::from_millis(30);
    config
}

/// The per-name counters, as Redis keys read with GET and written with SET.
#[derive(Clone)]
struct RedisCounter {
    connection: distlock_redis::redis::aio::MultiplexedConnection,
    run: String,
}

impl RedisCounter {
    async fn connect(url: &str, run: &str) -> Self {
        let client = distlock_redis::redis::Client::open(url).expect("redis client");
        let connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("connecting the counter connection");
        Self {
            connection,
            run: run.to_owned(),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("distlock-stress:{}:counter:{name}", self.run)
    }
}

#[distlock_conformance::async_trait]
impl SharedCounter for RedisCounter {
    async fn read(&self, name: &str) -> Result<u64, BoxError> {
        let value: Option<u64> = self.connection.clone().get(self.key(name)).await?;
        Ok(value.unwrap_or(0))
    }

    async fn write(&self, name: &str, value: u64) -> Result<(), BoxError> {
        let () = self.connection.clone().set(self.key(name), value).await?;
        Ok(())
    }
}

/// Runs the worker for `config` against `url`: two lockers (each with its
/// own pool and subscriber), tasks alternating between them. Hands every
/// hold to `sink`; returns the run's summary figures.
async fn work(
    url: &str,
    run: &str,
    config: &StressConfig,
    sink: impl Fn(&Hold) + Send + Sync + 'static,
) -> (distlock_conformance::history::StressRun, RedisCounter) {
    let locker = || {
        Locker::new(RedisBackend::from_url(url).expect("backend"))
            .with_prefix(format!("stress-{run}"))
            .expect("prefix")
    };
    let lockers = [locker(), locker()];
    let counter = RedisCounter::connect(url, run).await;
    let outcome = stress_streaming(&lockers, counter.clone(), config, sink)
        .await
        .unwrap_or_else(|e| panic!("stress run failed: {e}"));
    (outcome, counter)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The child entry point; run alone, a small in-process run of the worker.
#[test]
fn stress_worker() {
    if let Ok(process) = std::env::var(CHILD_ENV) {
        let process: u32 = process.parse().expect("child number");
        let url = std::env::var(CHILD_URL_ENV).expect("child URL");
        let run = std::env::var(CHILD_RUN_ENV).expect("child run id");
        let (outcome, _) = runtime().block_on(work(&url, &run, &config(process), |hold| {
            println!("{HOLD_LINE}{}", hold.to_json_line());
        }));
        println!(
            "{SUMMARY_LINE}{}",
            serde_json::json!({
                "holds": outcome.holds.len(),
                "released_not_held": outcome.released_not_held,
                "planned_expiries": outcome.planned_expiries,
                "elapsed_ms": outcome.elapsed.as_millis() as u64,
            })
        );
        return;
    }

    // Not a child: one process, 4 tasks, 6 holds each, checked here.
    let url = RedisServer::shared().url().to_owned();
    let run = run_id();
    let mut config = config(0);
    config.tasks = 4;
    config.holds_per_task = 6;
    config.renew_every = 4;
    config.overrun_every = 3;
    let rt = runtime();
    let (outcome, counter) = rt.block_on(work(&url, &run, &config, |_| {}));
    let report = check(&outcome.holds);
    println!("{report}");
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.total_holds(), 4 * 6);
    rt.block_on(assert_counters(&counter, &report));
    // Tasks 1..3 ran their leases out at holds 3 and 6.
    assert_eq!(outcome.planned_expiries, 3 * 2);
    assert!(outcome.released_not_held >= outcome.planned_expiries);
}

/// Each counter equals the number of holds of its name.
async fn assert_counters(counter: &RedisCounter, report: &Report) {
    for name in NAMES {
        let holds = report.holds_per_name.get(name).copied().unwrap_or(0);
        let value = counter.read(name).await.expect("reading a counter");
        println!("counter {name:?}: {value} after {holds} holds");
        assert_eq!(value, holds as u64, "counter {name:?} lost increments");
    }
}

fn run_id() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )
}

/// Prints how long a waiter took to get a lock after the previous hold's
/// protected end, for holders that were already waiting then (figures
/// only, nothing asserted).
fn print_handoffs(holds: &[Hold]) {
    let mut by_name: BTreeMap<&str, Vec<&Hold>> = BTreeMap::new();
    for h in holds {
        by_name.entry(h.name.as_str()).or_default().push(h);
    }
    let mut gaps: Vec<Duration> = Vec::new();
    for list in by_name.values_mut() {
        list.sort_by_key(|h| h.acquired);
        for pair in list.windows(2) {
            if let Some((_, end)) = pair[0].protected() {
                // Only where the next holder was already waiting.
                if pair[1].acquire_sent < end {
                    gaps.push(pair[1].acquired.saturating_duration_since(end));
                }
            }
        }
    }
    gaps.sort();
    if gaps.is_empty() {
        return;
    }
    let at = |q: f64| gaps[((gaps.len() - 1) as f64 * q) as usize];
    println!(
        "hand-over to a waiting task ({} cases, protected end to next acquired): median {:?}, p90 {:?}, p99 {:?}, max {:?}",
        gaps.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
}

/// A running child and the threads that drain its output.
struct Worker {
    process: u32,
    child: Child,
    stdout: JoinHandle<Vec<String>>,
    stderr: JoinHandle<String>,
}

fn spawn_worker(process: u32, url: &str, run: &str) -> Worker {
    let mut child = Command::new(std::env::current_exe().expect("current exe"))
        .args([
            "stress_worker",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, process.to_string())
        .env(CHILD_URL_ENV, url)
        .env(CHILD_RUN_ENV, run)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning a worker process");
    let out = child.stdout.take().expect("stdout");
    let err = child.stderr.take().expect("stderr");
    let stdout = std::thread::spawn(move || {
        BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            // libtest may print "test stress_worker ... " in front of the
            // first line: keep what follows a marker.
            .filter_map(|line| {
                [HOLD_LINE, SUMMARY_LINE]
                    .iter()
                    .find_map(|marker| line.find(marker).map(|at| line[at..].to_owned()))
            })
            .collect()
    });
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(err).read_to_string(&mut text);
        text
    });
    Worker {
        process,
        child,
        stdout,
        stderr,
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Waits for every worker until `timeout`; kills them all if one fails or
/// the time is up, and panics with the failing child's stderr.
fn wait_all(workers: &mut [Worker], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut done = vec![false; workers.len()];
    let mut failure: Option<String> = None;
    while failure.is_none() && done.iter().any(|d| !d) {
        for (i, w) in workers.iter_mut().enumerate() {
            if done[i] {
                continue;
            }
            match w.child.try_wait() {
                Ok(Some(status)) if status.success() => done[i] = true,
                Ok(Some(status)) => {
                    done[i] = true;
                    failure = Some(format!("worker {} exited with {status}", w.process));
                    break;
                }
                Ok(None) => {}
                Err(e) => {
                    failure = Some(format!("waiting for worker {}: {e}", w.process));
                    break;
                }
            }
        }
        if failure.is_none() && Instant::now() >= deadline {
            failure = Some(format!("workers still running after {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let Some(failure) = failure else { return };
    for w in workers.iter_mut() {
        // Ends only our own children, by handle; errors mean it already exited.
        let _ = w.child.kill();
        let _ = w.child.wait();
    }
    let mut details = String::new();
    for w in workers.iter_mut() {
        let stdout = std::mem::replace(&mut w.stdout, std::thread::spawn(Vec::new));
        let sent = stdout.join().map(|lines| lines.len()).unwrap_or(0);
        let stderr = std::mem::replace(&mut w.stderr, std::thread::spawn(String::new));
        let text = stderr.join().unwrap_or_default();
        details.push_str(&format!(
            "\n--- worker {} (sent {sent} lines) stderr (tail) ---\n{}",
            w.process,
            tail(&text, 30)
        ));
    }
    panic!("{failure}{details}");
}

#[test]
fn stress_across_processes_checked_from_history() {
    let url = RedisServer::shared().url().to_owned();
    let run = run_id();
    let started = Instant::now();
    let mut workers: Vec<Worker> = (0..PROCESSES)
        .map(|p| spawn_worker(p, &url, &run))
        .collect();
    wait_all(&mut workers, CHILD_TIMEOUT);
    let wall = started.elapsed();

    let mut holds: Vec<Hold> = Vec::new();
    let mut not_held = 0u64;
    let mut planned = 0u64;
    for w in workers {
        let lines = w.stdout.join().expect("stdout reader");
        let _ = w.stderr.join();
        let mut own = 0u64;
        let mut summary = None;
        for line in &lines {
            if let Some(json) = line.strip_prefix(HOLD_LINE) {
                let hold = Hold::from_json_line(json).unwrap_or_else(|e| {
                    panic!("worker {}: bad hold line {line:?}: {e}", w.process)
                });
                assert_eq!(hold.holder.process, w.process, "{line}");
                holds.push(hold);
                own += 1;
            } else if let Some(json) = line.strip_prefix(SUMMARY_LINE) {
                summary = Some(serde_json::from_str::<serde_json::Value>(json).expect("summary"));
            }
        }
        let summary = summary.unwrap_or_else(|| panic!("worker {} sent no summary", w.process));
        assert_eq!(
            summary["holds"].as_u64(),
            Some(own),
            "worker {} recorded more holds than it sent",
            w.process
        );
        not_held += summary["released_not_held"].as_u64().unwrap_or(0);
        planned += summary["planned_expiries"].as_u64().unwrap_or(0);
        println!(
            "worker {}: {own} holds in {} ms",
            w.process, summary["elapsed_ms"]
        );
    }

    let report = check(&holds);
    println!(
        "stress: {PROCESSES} processes x {TASKS} tasks on {} names in {wall:.1?}",
        NAMES.len()
    );
    println!("{report}");
    println!(
        "releases that found the lease gone: {not_held} ({planned} leases run out on purpose)"
    );
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.overlaps(), 0);
    assert_eq!(report.fence_violations(), 0);

    // Every task of every process held a lock at least once.
    let holders: BTreeSet<HolderId> = holds.iter().map(|h| h.holder).collect();
    let expected: BTreeSet<HolderId> = (0..PROCESSES)
        .flat_map(|process| (0..TASKS).map(move |task| HolderId { process, task }))
        .collect();
    let missing: Vec<_> = expected.difference(&holders).collect();
    assert!(missing.is_empty(), "never held a lock: {missing:?}");

    // Per name: fences strictly increase in acquisition order (already
    // checked) and are all distinct; print the range.
    let mut fences: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for h in &holds {
        fences.entry(h.name.as_str()).or_default().push(h.fence);
    }
    for (name, list) in &fences {
        let distinct: BTreeSet<_> = list.iter().collect();
        assert_eq!(distinct.len(), list.len(), "{name}: a fence repeats");
        println!(
            "  {name:?}: fences {}..={}",
            list.iter().min().unwrap_or(&0),
            list.iter().max().unwrap_or(&0)
        );
    }
    print_handoffs(&holds);
    assert!(
        not_held >= planned,
        "{planned} leases were run out but only {not_held} releases said NotHeld"
    );

    let rt = runtime();
    rt.block_on(async {
        let counter = RedisCounter::connect(&url, &run).await;
        assert_counters(&counter, &report).await;
    });
}
