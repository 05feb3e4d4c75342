//! The one background task per [`Locker`](crate::Locker) that releases
//! dropped guards.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;

use crate::backend::LockBackend;
use crate::key::LockKey;
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
    tx: mpsc::UnboundedSender<Job>,
    rx: Arc<Mutex<Option<mpsc::UnboundedReceiver<Job>>>>,
    started: Arc<AtomicBool>,
    backend: Arc<dyn LockBackend>,
}

impl Releaser {
    pub(crate) fn new(backend: Arc<dyn LockBackend>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            tx,
            rx: Arc::new(Mutex::new(Some(rx))),
            started: Arc::default(),
            backend,
        }
    }

    /// Starts the background task if it is not running yet. Called whenever a
    /// guard is created, which always happens inside a tokio runtime.
    pub(crate) fn ensure_started(&self) {
        if self.started.load(Ordering::Acquire) {
            return;
        }
        let mut slot = self.rx.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if let Some(rx) = slot.take() {
            handle.spawn(run(rx, self.backend.clone()));
            self.started.store(true, Ordering::Release);
        }
    }

    /// Queues a release of `token`'s lease on `key`. If no runtime runs the
    /// task any more, the lease simply expires at its TTL.
    pub(crate) fn submit(&self, key: LockKey, token: LockToken) {
        let _ = self.tx.send(Job { key, token });
        self.ensure_started();
    }
}

async fn run(mut rx: mpsc::UnboundedReceiver<Job>, backend: Arc<dyn LockBackend>) {
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
        match backend.release(&job.key, &job.token).await {
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
