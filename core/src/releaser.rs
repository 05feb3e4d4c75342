//! The one background task per [`Locker`](crate::Locker) that releases
//! dropped guards.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::backend::LockBackend;
use crate::key::LockKey;
use crate::telemetry;
use crate::token::LockToken;

/// How many releases the background task runs at once.
const CONCURRENCY: usize = 64;
/// Attempts per release when the backend reports a transient error.
const ATTEMPTS: u32 = 3;

struct Job {
    key: LockKey,
    token: LockToken,
}

/// A handle for queueing releases. Cheap to clone; never blocks.
#[derive(Clone)]
pub(crate) struct Releaser {
    state: Arc<Mutex<State>>,
    /// True while a task serves the channel (cleared when the task ends or
    /// is dropped with its runtime): the lock-free fast path of
    /// [`Releaser::ensure_started`].
    alive: Arc<AtomicBool>,
    backend: Arc<dyn LockBackend>,
}

struct State {
    tx: mpsc::UnboundedSender<Job>,
    /// The receiver, until a task takes it.
    rx: Option<mpsc::UnboundedReceiver<Job>>,
    /// The task serving the current channel, once started.
    task: Option<JoinHandle<()>>,
}

impl State {
    fn fresh() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            tx,
            rx: Some(rx),
            task: None,
        }
    }

    /// Starts the task on the current runtime unless one serves the
    /// channel. A task whose runtime shut down is gone with its receiver:
    /// then a fresh channel and task replace them.
    fn ensure_started(&mut self, backend: &Arc<dyn LockBackend>, alive: &Arc<AtomicBool>) {
        if self.task.as_ref().is_some_and(JoinHandle::is_finished) {
            *self = State::fresh();
        }
        if self.task.is_some() {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            // Not inside a runtime: jobs wait in the channel for the next
            // call made inside one.
            return;
        };
        if let Some(rx) = self.rx.take() {
            alive.store(true, Ordering::Release);
            let flag = Alive(alive.clone());
            self.task = Some(handle.spawn(run(rx, backend.clone(), flag)));
        }
    }
}

impl Releaser {
    pub(crate) fn new(backend: Arc<dyn LockBackend>) -> Self {
        Self {
            state: Arc::new(Mutex::new(State::fresh())),
            alive: Arc::default(),
            backend,
        }
    }

    /// Starts the background task if none runs. Called whenever a guard is
    /// created, which always happens inside a tokio runtime; restarts the
    /// task on the current runtime if an earlier one shut down.
    pub(crate) fn ensure_started(&self) {
        if self.alive.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.ensure_started(&self.backend, &self.alive);
    }

    /// Queues a release of `token`'s lease on `key`. If no runtime can run
    /// the task, the lease simply expires at its TTL.
    pub(crate) fn submit(&self, key: LockKey, token: LockToken) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.ensure_started(&self.backend, &self.alive);
        let _ = state.tx.send(Job { key, token });
    }
}

/// Clears the `alive` flag when the task ends or is dropped (its runtime
/// shut down).
struct Alive(Arc<AtomicBool>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

async fn run(mut rx: mpsc::UnboundedReceiver<Job>, backend: Arc<dyn LockBackend>, _alive: Alive) {
    let mut running = FuturesUnordered::new();
    loop {
        tokio::select! {
            job = rx.recv(), if running.len() < CONCURRENCY => match job {
                Some(job) => running.push(release(backend.clone(), job)),
                None => break,
            },
            Some(()) = running.next(), if !running.is_empty() => {}
        }
    }
    while running.next().await.is_some() {}
}

async fn release(backend: Arc<dyn LockBackend>, job: Job) {
    for attempt in 1..=ATTEMPTS {
        match telemetry::release(&job.key, true, backend.release(&job.key, &job.token)).await {
            Ok(outcome) => {
                tracing::debug!(key = %job.key, token = %job.token, ?outcome, "background release");
                return;
            }
            Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
            }
            Err(e) => {
                tracing::warn!(key = %job.key, token = %job.token, error = %e,
                    "background release failed; the lease will expire at its TTL");
                return;
            }
        }
    }
}

/// Queues a release of a possibly-taken lease if dropped while armed. Wraps
/// every backend call whose success would leave us holding a lease, so that
/// cancelling the caller's future never leaves a lock held.
pub(crate) struct PendingRelease<'a> {
    releaser: &'a Releaser,
    job: Option<(&'a LockKey, &'a LockToken)>,
}

impl<'a> PendingRelease<'a> {
    pub(crate) fn arm(releaser: &'a Releaser, key: &'a LockKey, token: &'a LockToken) -> Self {
        Self {
            releaser,
            job: Some((key, token)),
        }
    }

    pub(crate) fn disarm(mut self) {
        self.job = None;
    }
}

impl Drop for PendingRelease<'_> {
    fn drop(&mut self) {
        if let Some((key, token)) = self.job.take() {
            self.releaser.submit(key.clone(), token.clone());
        }
    }
}
