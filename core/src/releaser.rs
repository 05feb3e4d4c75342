//! Background releases: of dropped guards, and of acquisitions whose caller
//! went away while the request was in flight.
//!
//! Each release runs as a small task on the runtime of the code that
//! submitted it (not on one task tied to whichever runtime came first), and
//! retries backend failures (all but the permanent kinds) with backoff for
//! as long as the lease could still be held. Every job stays in a shared table until it finished
//! or gave up, so that:
//! - a job with no task (submitted outside a runtime, or whose task was
//!   dropped because its runtime shut down) is picked up by the next call
//!   of the `Locker` made inside a runtime ([`Releaser::adopt_orphans`]);
//! - [`Releaser::flush`] can run jobs whose task has not started (its
//!   runtime may be idle) and wait for the rest.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use crate::backend::LockBackend;
use crate::error::{BackendError, BackendErrorKind};
use crate::key::LockKey;
use crate::token::LockToken;
use crate::wait::Backoff;

/// How many releases run at once per `Locker` family.
const CONCURRENCY: usize = 64;
/// Added to a lease's latest possible end before a release stops retrying:
/// a request sent just before a call was cancelled can still be applied a
/// little later, and the server's clock may run a little slow.
const GRACE: Duration = Duration::from_secs(1);
/// Retry delays of a failing release.
const RETRY_MIN: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_secs(1);

struct Job {
    key: LockKey,
    token: LockToken,
    /// Retry transient failures until then.
    until: Instant,
    /// A give-back ([`LockBackend::give_back`]): a call with the token may
    /// still be on its way. Otherwise a guard's release.
    give_back: bool,
}

struct Slot {
    /// The job, until a runner takes it (and while it waits for a runner).
    job: Option<Job>,
    /// No task will run it: the next call inside a runtime must.
    orphan: bool,
    until: Instant,
}

#[derive(Default)]
struct Table {
    next: u64,
    slots: BTreeMap<u64, Slot>,
}

struct Shared {
    backend: Arc<dyn LockBackend>,
    table: Mutex<Table>,
    /// Some slot is an orphan (the lock-free fast path of `adopt_orphans`).
    orphans: AtomicBool,
    /// Woken whenever a job finishes or gives up.
    finished: Notify,
    permits: Semaphore,
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A handle for queueing releases. Cheap to clone; never blocks.
#[derive(Clone)]
pub(crate) struct Releaser {
    shared: Arc<Shared>,
}

impl Releaser {
    pub(crate) fn new(backend: Arc<dyn LockBackend>) -> Self {
        Self {
            shared: Arc::new(Shared {
                backend,
                table: Mutex::default(),
                orphans: AtomicBool::new(false),
                finished: Notify::new(),
                permits: Semaphore::new(CONCURRENCY),
            }),
        }
    }

    /// Queues a release of `token`'s lease on `key` (a guard's), retried
    /// until `until` (the latest moment the lease could still be held) plus
    /// a grace.
    pub(crate) fn submit(&self, key: LockKey, token: LockToken, until: Instant) {
        self.queue(key, token, until, false);
    }

    fn queue(&self, key: LockKey, token: LockToken, until: Instant, give_back: bool) {
        let until = until + GRACE;
        let mut table = self.shared.table();
        let seq = table.next;
        table.next += 1;
        let job = Job {
            key,
            token,
            until,
            give_back,
        };
        let handle = tokio::runtime::Handle::try_current().ok();
        table.slots.insert(
            seq,
            Slot {
                job: Some(job),
                orphan: handle.is_none(),
                until,
            },
        );
        drop(table);
        match handle {
            Some(handle) => spawn(&handle, &self.shared, seq),
            None => self.shared.orphans.store(true, Ordering::Release),
        }
    }

    /// Starts a task, on the current runtime, for every job that has none.
    /// Cheap when there is nothing to adopt; does nothing outside a runtime.
    pub(crate) fn adopt_orphans(&self) {
        if !self.shared.orphans.load(Ordering::Acquire) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut table = self.shared.table();
        self.shared.orphans.store(false, Ordering::Release);
        let adopted: Vec<u64> = table
            .slots
            .iter_mut()
            .filter(|(_, slot)| slot.orphan && slot.job.is_some())
            .map(|(seq, slot)| {
                slot.orphan = false;
                *seq
            })
            .collect();
        drop(table);
        for seq in adopted {
            spawn(&handle, &self.shared, seq);
        }
    }

    /// Waits until every release submitted before this call has finished
    /// or given up. Jobs not started yet run here; jobs running elsewhere
    /// are waited for, at most until their leases could have ended (plus a
    /// grace), which bounds the wait even when their runtime is idle.
    pub(crate) async fn flush(&self) {
        self.adopt_orphans();
        let shared = &self.shared;
        let (upto, unstarted) = {
            let table = shared.table();
            let upto = table.next;
            let unstarted: Vec<u64> = table
                .slots
                .iter()
                .filter(|(_, slot)| slot.job.is_some())
                .map(|(seq, _)| *seq)
                .collect();
            drop(table);
            (upto, unstarted)
        };
        let runs = unstarted
            .into_iter()
            .map(|seq| run(Ticket::new(shared.clone(), seq)));
        futures::future::join_all(runs).await;
        loop {
            // A job whose task went away meanwhile (its runtime shut down)
            // gets a new one here instead of waiting out its lease.
            self.adopt_orphans();
            let finished = shared.finished.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            let latest = {
                let table = shared.table();
                table.slots.range(..upto).map(|(_, slot)| slot.until).max()
            };
            let Some(latest) = latest else { return };
            if Instant::now() >= latest {
                return;
            }
            tokio::select! {
                _ = finished => {}
                _ = tokio::time::sleep_until(latest) => {}
            }
        }
    }
}

fn spawn(handle: &tokio::runtime::Handle, shared: &Arc<Shared>, seq: u64) {
    // The ticket moves into the task now: if the runtime drops the task
    // before or while it runs, the ticket hands the job back as an orphan.
    let ticket = Ticket::new(shared.clone(), seq);
    handle.spawn(run(ticket));
}

/// The right to run one job. Dropped before the job finished (the task or
/// a `flush` was dropped), it hands the job back as an orphan.
struct Ticket {
    shared: Arc<Shared>,
    seq: u64,
    job: Option<Job>,
    done: bool,
}

impl Ticket {
    fn new(shared: Arc<Shared>, seq: u64) -> Self {
        Self {
            shared,
            seq,
            job: None,
            done: false,
        }
    }

    /// Takes the job from its slot, unless another runner has it.
    fn take(&mut self) -> Option<&Job> {
        let mut table = self.shared.table();
        self.job = table.slots.get_mut(&self.seq).and_then(|s| s.job.take());
        drop(table);
        self.job.as_ref()
    }

    fn finish(mut self) {
        self.done = true;
        self.shared.table().slots.remove(&self.seq);
        self.shared.finished.notify_waiters();
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut table = self.shared.table();
        if let Some(slot) = table.slots.get_mut(&self.seq) {
            if let Some(job) = self.job.take() {
                slot.job = Some(job);
            }
            if slot.job.is_some() {
                slot.orphan = true;
                self.shared.orphans.store(true, Ordering::Release);
            }
        }
    }
}

async fn run(mut ticket: Ticket) {
    let shared = ticket.shared.clone();
    let Ok(_permit) = shared.permits.acquire().await else {
        return;
    };
    let Some(job) = ticket.take() else {
        // Another runner (a flush) has it.
        ticket.done = true;
        return;
    };
    release(shared.backend.as_ref(), job).await;
    ticket.finish();
}

/// Releases one lease, retrying failures ([`worth_retrying`]) with backoff
/// until the lease could no longer be held.
async fn release(backend: &dyn LockBackend, job: &Job) {
    let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        // Never wait past the job's end for one attempt either (the backend
        // bounds its calls too); the first attempt always gets a grace.
        let attempt_until = job.until.max(Instant::now() + GRACE);
        let error = match tokio::time::timeout_at(
            attempt_until,
            crate::telemetry::release(&job.key, true, async {
                if job.give_back {
                    backend.give_back(&job.key, &job.token).await
                } else {
                    backend.release(&job.key, &job.token).await
                }
            }),
        )
        .await
        {
            Ok(Ok(outcome)) => {
                tracing::debug!(lock = %job.key, token = %job.token, ?outcome, attempts,
                    "background release");
                return;
            }
            Ok(Err(e)) => e,
            Err(_) => crate::error::BackendError::new(
                crate::error::BackendErrorKind::Timeout,
                "background release did not answer before the lease could have ended",
            ),
        };
        let now = Instant::now();
        if !worth_retrying(&error) || now >= job.until {
            tracing::warn!(lock = %job.key, token = %job.token, error = %error, attempts,
                "background release failed; the lease will expire at its TTL");
            return;
        }
        let delay = backoff.next_delay();
        tokio::time::sleep_until(job.until.min(now + delay)).await;
    }
}

/// Whether a failed release may succeed later. Retrying a release is
/// harmless (it only ever deletes our own lease), so every error is retried
/// while the lease could be held, except those that no retry can fix: bad
/// credentials, missing permissions, bad configuration, a key of another
/// type. Server states that pass (Redis `BUSY`, `LOADING`, a failover) may
/// surface as transient kinds or as `Other`; both are retried.
fn worth_retrying(error: &BackendError) -> bool {
    !matches!(
        error.kind(),
        BackendErrorKind::Auth
            | BackendErrorKind::Permission
            | BackendErrorKind::Config
            | BackendErrorKind::WrongType
    )
}

/// Queues a release of a possibly-taken lease if dropped while armed. Wraps
/// every backend call whose success would leave us holding a lease, so that
/// cancelling the caller's future never leaves a lock held.
pub(crate) struct PendingRelease<'a> {
    releaser: &'a Releaser,
    job: Option<(&'a LockKey, LockToken)>,
    /// The lease may be held until the later of `held_at_most` and `ttl`
    /// after the moment this is dropped armed.
    held_at_most: Instant,
    ttl: Duration,
    /// Dropped armed, it gives the token back ([`LockBackend::give_back`])
    /// rather than releasing it.
    give_back: bool,
}

impl<'a> PendingRelease<'a> {
    /// Armed around acquisition calls with `token`: dropped armed, it gives
    /// the token back ([`LockBackend::give_back`]), since a call with it
    /// may still be on its way.
    pub(crate) fn arm(
        releaser: &'a Releaser,
        key: &'a LockKey,
        token: &LockToken,
        held_at_most: Instant,
        ttl: Duration,
    ) -> Self {
        Self {
            releaser,
            job: Some((key, token.clone())),
            held_at_most,
            ttl,
            give_back: true,
        }
    }

    /// Armed around a guard's release call: dropped armed (the call was
    /// cancelled), the release goes on in the background.
    pub(crate) fn arm_release(
        releaser: &'a Releaser,
        key: &'a LockKey,
        token: &LockToken,
        held_at_most: Instant,
    ) -> Self {
        let mut pending = Self::arm(releaser, key, token, held_at_most, Duration::ZERO);
        pending.give_back = false;
        pending
    }

    pub(crate) fn disarm(mut self) {
        self.job = None;
    }
}

impl Drop for PendingRelease<'_> {
    fn drop(&mut self) {
        if let Some((key, token)) = self.job.take() {
            let until = self.held_at_most.max(Instant::now() + self.ttl);
            self.releaser
                .queue(key.clone(), token, until, self.give_back);
        }
    }
}
