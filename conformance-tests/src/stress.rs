//! The stress driver of [`crate::history`]: many tasks, a few names, a
//! non-atomic counter under the lock, every hold recorded.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use distlock::{LockBackend, LockError, LockOptions, Locker, Release};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::history::{Hold, HolderId, Stamp};

pub use crate::harness::BoxError;

/// A counter per lock name that the stress tasks increment with a plain
/// read, a pause and a write: only the lock keeps increments from being
/// lost. Keep it where the holders are: in memory for one process
/// ([`MemoryCounter`]), in the backend's store (for example a Redis key)
/// across processes.
#[async_trait]
pub trait SharedCounter: Send + Sync + 'static {
    /// Reads the counter of `name` (zero if never written).
    async fn read(&self, name: &str) -> Result<u64, BoxError>;
    /// Writes the counter of `name`.
    async fn write(&self, name: &str, value: u64) -> Result<(), BoxError>;
}

/// A [`SharedCounter`] in this process's memory; clones share the values.
#[derive(Clone, Debug, Default)]
pub struct MemoryCounter {
    values: Arc<Mutex<HashMap<String, u64>>>,
}

impl MemoryCounter {
    /// All counters at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter of `name` now.
    pub fn get(&self, name: &str) -> u64 {
        self.values
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .copied()
            .unwrap_or(0)
    }
}

#[async_trait]
impl SharedCounter for MemoryCounter {
    async fn read(&self, name: &str) -> Result<u64, BoxError> {
        Ok(self.get(name))
    }

    async fn write(&self, name: &str, value: u64) -> Result<(), BoxError> {
        self.values
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned(), value);
        Ok(())
    }
}

/// What [`stress`] does. Start from [`StressConfig::new`] and change fields.
///
/// Task `t` (0-based) takes name `names[(t + h) % names.len()]` for its
/// hold `h`, so every task visits every name. Each hold: lock (waiting up
/// to `wait_timeout`), read the counter, pause for `work` (a yield if
/// zero), write it plus one, then release, recording a [`Hold`].
///
/// Two kinds of hold go on past the lease, *after* the counter is written
/// (the lease is long then, so the increment itself stays protected):
/// every `overrun_every`-th hold of a task that does not renew shortens its
/// lease to `overrun_ttl` with `extend`, sleeps twice that, and releases a
/// lease that has run out (it must report `NotHeld`, and another task may
/// already hold the lock); tasks with `t % renew_every == 0` lock with
/// `renew_ttl` and auto-renewal, and their `overrun_every`-th holds sleep
/// one and a half `renew_ttl`s, so renewal must keep the lease.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StressConfig {
    /// The process number recorded in every [`HolderId`].
    pub process: u32,
    /// The lock names (also the counter names).
    pub names: Vec<String>,
    /// How many tasks run at once. Default 16.
    pub tasks: u32,
    /// How many holds each task makes at most. Default 20.
    pub holds_per_task: u32,
    /// Tasks start no new hold after this long (each makes at least one).
    /// Default none.
    pub max_duration: Option<Duration>,
    /// The lease of holds without renewal. Default 5 s.
    pub ttl: Duration,
    /// How long one lock call may wait. Default 60 s.
    pub wait_timeout: Duration,
    /// The retry backoff bounds of lock calls. Default 1 ms to 20 ms.
    pub retry: (Duration, Duration),
    /// The pause between reading and writing the counter. Default 1 ms.
    pub work: Duration,
    /// Every `renew_every`-th task renews its leases (0: none). Default 8.
    pub renew_every: u32,
    /// The lease of renewing tasks. Default 600 ms.
    pub renew_ttl: Duration,
    /// Every `overrun_every`-th hold of a task goes on past its lease (0:
    /// none). Default 10.
    pub overrun_every: u32,
    /// The shortened lease of an overrunning hold without renewal. Default
    /// 30 ms.
    pub overrun_ttl: Duration,
}

impl StressConfig {
    /// The defaults, for process number `process` and these lock names.
    pub fn new(process: u32, names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            process,
            names: names.into_iter().map(Into::into).collect(),
            tasks: 16,
            holds_per_task: 20,
            max_duration: None,
            ttl: Duration::from_secs(5),
            wait_timeout: Duration::from_secs(60),
            retry: (Duration::from_millis(1), Duration::from_millis(20)),
            work: Duration::from_millis(1),
            renew_every: 8,
            renew_ttl: Duration::from_millis(600),
            overrun_every: 10,
            overrun_ttl: Duration::from_millis(30),
        }
    }

    fn renews(&self, task: u32) -> bool {
        self.renew_every > 0 && task.is_multiple_of(self.renew_every)
    }

    fn overruns(&self, hold: u32) -> bool {
        self.overrun_every > 0 && (hold + 1).is_multiple_of(self.overrun_every)
    }
}

/// What a [`stress`] run recorded.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct StressRun {
    /// Every hold, in completion order per task.
    pub holds: Vec<Hold>,
    /// Releases that reported [`Release::NotHeld`] (the lease had run out).
    pub released_not_held: usize,
    /// Holds that shortened their lease and slept past it: on a correct
    /// backend each of these releases reports `NotHeld`.
    pub planned_expiries: usize,
    /// How long the run took.
    pub elapsed: Duration,
}

/// Why a [`stress`] run stopped early.
#[derive(Debug)]
#[non_exhaustive]
pub enum StressError {
    /// The configuration has no names, no tasks or no lockers.
    Config(String),
    /// A lock call failed.
    Lock {
        /// The task.
        holder: HolderId,
        /// The lock name.
        name: String,
        /// The error.
        source: LockError,
    },
    /// The counter failed.
    Counter {
        /// The task.
        holder: HolderId,
        /// The counter name.
        name: String,
        /// The error.
        source: BoxError,
    },
    /// A task panicked or was cancelled.
    Task(String),
}

impl fmt::Display for StressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StressError::Config(why) => write!(f, "bad stress configuration: {why}"),
            StressError::Lock {
                holder,
                name,
                source,
            } => write!(f, "{holder} locking {name:?}: {source}"),
            StressError::Counter {
                holder,
                name,
                source,
            } => write!(f, "{holder} counter {name:?}: {source}"),
            StressError::Task(why) => write!(f, "stress task failed: {why}"),
        }
    }
}

impl std::error::Error for StressError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StressError::Lock { source, .. } => Some(source),
            StressError::Counter { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

/// Runs `config.tasks` tasks over `lockers` (task `t` uses
/// `lockers[t % lockers.len()]`) and returns every hold they recorded.
/// Check the result with [`check`](crate::history::check) and compare each
/// counter with the number of holds of its name.
///
/// Call it inside a tokio runtime whose clock runs in real time. The first
/// task error stops the run (the other tasks are cancelled).
///
/// ```
/// use distlock::Locker;
/// use distlock_conformance::history::{check, stress, MemoryCounter, StressConfig};
/// use distlock_memory::MemoryBackend;
///
/// # #[tokio::main] async fn main() {
/// let store = MemoryBackend::new();
/// let lockers = [Locker::new(store.clone()), Locker::new(store)];
/// let counter = MemoryCounter::new();
/// let mut config = StressConfig::new(0, ["a", "b"]);
/// config.tasks = 4;
/// config.holds_per_task = 10;
/// let run = stress(&lockers, counter.clone(), &config).await.unwrap();
/// let report = check(&run.holds);
/// assert!(report.is_clean(), "{report}");
/// assert_eq!(counter.get("a") as usize, report.holds_per_name["a"]);
/// # }
/// ```
pub async fn stress<B, C>(
    lockers: &[Locker<B>],
    counter: C,
    config: &StressConfig,
) -> Result<StressRun, StressError>
where
    B: LockBackend,
    C: SharedCounter,
{
    stress_streaming(lockers, counter, config, |_| {}).await
}

/// [`stress`], also handing every hold to `sink` as soon as it is released
/// (for example to print it as a JSON line for a parent process).
pub async fn stress_streaming<B, C, F>(
    lockers: &[Locker<B>],
    counter: C,
    config: &StressConfig,
    sink: F,
) -> Result<StressRun, StressError>
where
    B: LockBackend,
    C: SharedCounter,
    F: Fn(&Hold) + Send + Sync + 'static,
{
    if config.names.is_empty() || config.tasks == 0 || lockers.is_empty() {
        return Err(StressError::Config(format!(
            "{} names, {} tasks, {} lockers: each must be at least one",
            config.names.len(),
            config.tasks,
            lockers.len()
        )));
    }
    let plain = LockOptions::default()
        .with_ttl(config.ttl)
        .with_wait_timeout(config.wait_timeout)
        .with_retry(config.retry.0, config.retry.1);
    let renewing = plain
        .clone()
        .with_ttl(config.renew_ttl)
        .with_auto_renew(true);
    plain
        .validate()
        .map_err(|e| StressError::Config(e.to_string()))?;
    renewing
        .validate()
        .map_err(|e| StressError::Config(e.to_string()))?;
    distlock::validate_ttl(config.overrun_ttl).map_err(|e| StressError::Config(e.to_string()))?;

    let counter = Arc::new(counter);
    let sink = Arc::new(sink);
    let config = Arc::new(config.clone());
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for task in 0..config.tasks {
        let locker = lockers[task as usize % lockers.len()].clone();
        let opts = if config.renews(task) {
            renewing.clone()
        } else {
            plain.clone()
        };
        let (counter, sink, config) = (counter.clone(), sink.clone(), config.clone());
        let holder = HolderId {
            process: config.process,
            task,
        };
        tasks.spawn(async move {
            run_task(holder, locker, opts, &*counter, &*sink, &config, start).await
        });
    }
    let mut run = StressRun::default();
    while let Some(joined) = tasks.join_next().await {
        let task_run = joined.map_err(|e| StressError::Task(e.to_string()))??;
        run.holds.extend(task_run.holds);
        run.released_not_held += task_run.released_not_held;
        run.planned_expiries += task_run.planned_expiries;
    }
    run.elapsed = start.elapsed();
    Ok(run)
}

async fn run_task<B: LockBackend>(
    holder: HolderId,
    locker: Locker<B>,
    opts: LockOptions,
    counter: &dyn SharedCounter,
    sink: &(dyn Fn(&Hold) + Send + Sync),
    config: &StressConfig,
    start: Instant,
) -> Result<StressRun, StressError> {
    let renews = config.renews(holder.task);
    let mut run = StressRun::default();
    for h in 0..config.holds_per_task {
        if h > 0
            && config
                .max_duration
                .is_some_and(|max| start.elapsed() >= max)
        {
            break;
        }
        let name = &config.names[(holder.task + h) as usize % config.names.len()];
        let lock_err = |source| StressError::Lock {
            holder,
            name: name.clone(),
            source,
        };
        let counter_err = |source| StressError::Counter {
            holder,
            name: name.clone(),
            source,
        };

        let asked = Stamp::now();
        let mut guard = locker.lock_with(name, &opts).await.map_err(lock_err)?;
        let mut hold = Hold::from_guard(holder, asked, Stamp::now(), &guard);

        // The critical section: a read-modify-write only the lock protects.
        let value = counter.read(name).await.map_err(counter_err)?;
        if config.work.is_zero() {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(config.work).await;
        }
        counter.write(name, value + 1).await.map_err(counter_err)?;

        if config.overruns(h) {
            if renews {
                // Renewal must carry the lease across this sleep.
                tokio::time::sleep(config.renew_ttl * 3 / 2).await;
            } else {
                match guard.extend(config.overrun_ttl).await {
                    Ok(()) => run.planned_expiries += 1,
                    Err(LockError::NotHeld { .. }) => {}
                    Err(e) => return Err(lock_err(e)),
                }
                tokio::time::sleep(config.overrun_ttl * 2).await;
            }
        }

        hold.before_release(&guard);
        if guard.release().await.map_err(lock_err)? == Release::NotHeld {
            run.released_not_held += 1;
        }
        sink(&hold);
        run.holds.push(hold);
    }
    Ok(run)
}
