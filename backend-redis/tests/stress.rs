//! Stress across OS processes against one real Redis, checked from the
//! recorded history.
//!
//! `stress_across_processes_checked_from_history` starts the shared Redis
//! and re-runs this test binary as 4 child processes with
//! `distlock_conformance::processes::ProcessStress` (only the test
//! `stress_worker`, in child mode). Each child runs 16 tasks on 3 lock
//! names with `processes::run_child` (the `history::stress` driver): every
//! hold increments a Redis-held counter of its name with GET, a pause and
//! SET, and is sent to the parent as one marked record line. The parent checks the merged history
//! with `history::check` (no overlapping protected intervals, fences
//! strictly increasing per name), that each counter equals the number of
//! holds of its name, and that every task of every process held a lock.
//! Run with `--nocapture` to see the figures.
//!
//! Run alone, `stress_worker` is a small in-process run of the same worker.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use distlock_conformance::history::{
    check, stress_streaming, BoxError, Hold, HolderId, Report, SharedCounter, StressConfig,
};
use distlock_conformance::processes::{child_process, run_child, ProcessStress};
use distlock_redis::redis::AsyncCommands;
use distlock_redis::testkit::RedisServer;
use distlock_redis::{Locker, RedisBackend};

/// Set in a child: the Redis URL.
const CHILD_URL_ENV: &str = "DISTLOCK_STRESS_URL";
/// Set in a child: the run id that keeps names and counters apart.
const CHILD_RUN_ENV: &str = "DISTLOCK_STRESS_RUN";

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
) -> (distlock_conformance::history::StressRun, RedisCounter) {
    let (lockers, counter) = lockers_and_counter(url, run).await;
    let outcome = stress_streaming(&lockers, counter.clone(), config, |_| {})
        .await
        .unwrap_or_else(|e| panic!("stress run failed: {e}"));
    (outcome, counter)
}

/// Two lockers (each with its own pool and subscriber) and the counter.
async fn lockers_and_counter(url: &str, run: &str) -> ([Locker<RedisBackend>; 2], RedisCounter) {
    let locker = || {
        Locker::new(RedisBackend::from_url(url).expect("backend"))
            .with_prefix(format!("stress-{run}"))
            .expect("prefix")
    };
    ([locker(), locker()], RedisCounter::connect(url, run).await)
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
    if let Some(process) = child_process() {
        let url = std::env::var(CHILD_URL_ENV).expect("child URL");
        let run = std::env::var(CHILD_RUN_ENV).expect("child run id");
        runtime().block_on(async {
            let (lockers, counter) = lockers_and_counter(&url, &run).await;
            run_child(&lockers, counter, &config(process))
                .await
                .unwrap_or_else(|e| panic!("stress child failed: {e}"));
        });
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
    let (outcome, counter) = rt.block_on(work(&url, &run, &config));
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

#[test]
fn stress_across_processes_checked_from_history() {
    let url = RedisServer::shared().url().to_owned();
    let run = run_id();
    let run_records = ProcessStress::new("stress_worker", PROCESSES)
        .env(CHILD_URL_ENV, &url)
        .env(CHILD_RUN_ENV, &run)
        .timeout(CHILD_TIMEOUT)
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    let wall = run_records.elapsed;
    for child in &run_records.children {
        println!(
            "worker {}: {} holds in {} ms",
            child.process, child.holds, child.elapsed_ms
        );
    }
    let not_held = run_records.released_not_held();
    let planned = run_records.planned_expiries();
    let holds = run_records.holds;

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
