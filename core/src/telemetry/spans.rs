//! The spans and events of each operation, and the metrics recorded when
//! they end. Called from the locker, the guard and the releaser with one
//! line each.

use std::cell::Cell;
use std::future::Future;

use tokio::time::Instant;
use tracing::field::Empty;
use tracing::{Instrument, Span};

use super::{kind_label, recorded};
use crate::backend::{Extend, Release};
use crate::error::{BackendError, LockError};
use crate::guard::LockGuard;
use crate::key::LockKey;

/// What the acquisition running in this task counted so far.
#[derive(Default)]
struct Counts {
    /// Backend attempts.
    attempts: Cell<u32>,
    /// Backend errors the wait rode out (retried).
    retried: Cell<u32>,
}

tokio::task_local! {
    static COUNTS: Counts;
}

/// Counts one acquisition attempt of the enclosing [`acquire`] (nothing
/// outside one).
pub(crate) fn attempted() {
    let _ = COUNTS.try_with(|c| c.attempts.set(c.attempts.get().saturating_add(1)));
}

/// A failed backend call of a waiting `lock()`: counted in
/// `distlock_backend_errors_total` (`op="acquire"`) where it happens, so
/// that an outage only waiters meet shows while they wait, and each failed
/// call counts once (the `acquire` span of a `lock()` does not count the
/// error it ends with again). The first that the wait rides out
/// (`retrying`) is a `WARN` event, later ones `DEBUG`.
pub(crate) fn wait_error(key: &LockKey, error: &LockError, retrying: bool) {
    let LockError::Backend(e) = error else {
        return;
    };
    recorded::backend_error(key, "acquire", e.kind());
    if !retrying {
        return;
    }
    let first = COUNTS
        .try_with(|c| {
            let n = c.retried.get();
            c.retried.set(n.saturating_add(1));
            n == 0
        })
        .unwrap_or(true);
    if first {
        tracing::warn!(lock = %key, error = %e, "backend error while waiting; retrying until the wait ends");
    } else {
        tracing::debug!(lock = %key, error = %e, "backend error while waiting; retrying");
    }
}

/// What an acquisition call returns on success.
pub(crate) trait Acquired {
    /// The fencing token, if the lock was taken.
    fn fence(&self) -> Option<u64>;
}

impl Acquired for LockGuard {
    fn fence(&self) -> Option<u64> {
        Some(LockGuard::fence(self))
    }
}

/// One attempt: the guard, or the holder's remaining lease.
impl Acquired for Result<LockGuard, Option<std::time::Duration>> {
    fn fence(&self) -> Option<u64> {
        self.as_ref().ok().map(LockGuard::fence)
    }
}

/// Runs one `lock` (`wait`) or `try_lock` call in an `acquire` span and
/// records its outcome, wait time and attempts.
pub(crate) async fn acquire<T: Acquired>(
    key: &LockKey,
    wait: bool,
    call: impl Future<Output = Result<T, LockError>>,
) -> Result<T, LockError> {
    let span = tracing::debug_span!(
        "acquire",
        lock = %key,
        wait,
        outcome = Empty,
        fence = Empty,
        waited_ms = Empty,
        attempts = Empty,
        retried_errors = Empty,
        error_kind = Empty,
    );
    let mut pending = PendingAcquire {
        key,
        span: span.clone(),
        started: Instant::now(),
        wait,
        done: false,
    };
    if wait {
        recorded::waiters(1.0);
    }
    let scoped = COUNTS.scope(Counts::default(), call.instrument(span));
    tokio::pin!(scoped);
    let result = scoped.as_mut().await;
    let counts = scoped.as_mut().take_value().unwrap_or_default();
    pending.span.record("attempts", counts.attempts.get());
    pending.span.record("retried_errors", counts.retried.get());
    let outcome = match &result {
        Ok(value) => match value.fence() {
            Some(fence) => {
                pending.span.record("fence", fence);
                "acquired"
            }
            None => "held",
        },
        Err(LockError::TimedOut { .. }) => "timed_out",
        Err(LockError::Backend(e)) if wait => {
            // Counted where it happened (`wait_error`).
            pending.span.record("error_kind", kind_label(e.kind()));
            "error"
        }
        Err(LockError::Backend(e)) => {
            backend_error(&pending.span, key, "acquire", e);
            "error"
        }
        Err(_) => "invalid",
    };
    pending.finish(outcome);
    result
}

/// Records an acquisition once: its outcome, or `cancelled` when the call
/// is dropped first.
struct PendingAcquire<'a> {
    key: &'a LockKey,
    span: Span,
    started: Instant,
    wait: bool,
    done: bool,
}

impl PendingAcquire<'_> {
    fn finish(&mut self, outcome: &'static str) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let waited = self.started.elapsed();
        self.span.record("outcome", outcome);
        self.span.record(
            "waited_ms",
            u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
        );
        if self.wait {
            recorded::waiters(-1.0);
        }
        recorded::acquisition(self.key, self.wait, outcome, waited);
    }
}

impl Drop for PendingAcquire<'_> {
    fn drop(&mut self) {
        self.finish("cancelled");
    }
}

/// A manual extend of the lease of `key`, in an `extend` span.
pub(crate) async fn extend(
    key: &LockKey,
    fence: u64,
    call: impl Future<Output = Result<Extend, BackendError>>,
) -> Result<Extend, BackendError> {
    let span = tracing::debug_span!(
        "extend",
        lock = %key,
        fence,
        outcome = Empty,
        error_kind = Empty
    );
    let mut op = PendingOp::new(key, span, Op::Extend);
    let result = call.instrument(op.span.clone()).await;
    op.finish(extend_outcome(&op, &result));
    result
}

/// One extend of the renewal task, in a `renewal` span. Dropped unfinished
/// (the renewal gave up at the lease's deadline), it counts as `timeout`.
pub(crate) async fn renewal(
    key: &LockKey,
    fence: u64,
    call: impl Future<Output = Result<Extend, BackendError>>,
) -> Result<Extend, BackendError> {
    let span = tracing::debug_span!(
        "renewal",
        lock = %key,
        fence,
        outcome = Empty,
        error_kind = Empty
    );
    let mut op = PendingOp::new(key, span, Op::Renewal);
    let result = call.instrument(op.span.clone()).await;
    op.finish(extend_outcome(&op, &result));
    result
}

fn extend_outcome(op: &PendingOp<'_>, result: &Result<Extend, BackendError>) -> &'static str {
    match result {
        Ok(Extend::Extended) => "extended",
        Ok(Extend::NotHeld) => "not_held",
        Err(e) => {
            let what = if op.op == Op::Renewal {
                "renewal"
            } else {
                "extend"
            };
            backend_error(&op.span, op.key, what, e);
            "error"
        }
    }
}

/// One release of `key` (explicit, or an attempt of the background
/// release), in a `release` span.
pub(crate) async fn release(
    key: &LockKey,
    background: bool,
    call: impl Future<Output = Result<Release, BackendError>>,
) -> Result<Release, BackendError> {
    let span = tracing::debug_span!(
        "release",
        lock = %key,
        background,
        outcome = Empty,
        error_kind = Empty
    );
    let mut op = PendingOp::new(key, span, Op::Release { background });
    let result = call.instrument(op.span.clone()).await;
    let outcome = match &result {
        Ok(Release::Released) => "released",
        Ok(Release::NotHeld) => "not_held",
        Err(e) => {
            backend_error(&op.span, key, "release", e);
            "error"
        }
    };
    op.finish(outcome);
    result
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Extend,
    Renewal,
    Release { background: bool },
}

/// Records one backend operation once: its outcome, or what a drop means.
struct PendingOp<'a> {
    key: &'a LockKey,
    span: Span,
    op: Op,
    done: bool,
}

impl<'a> PendingOp<'a> {
    fn new(key: &'a LockKey, span: Span, op: Op) -> Self {
        Self {
            key,
            span,
            op,
            done: false,
        }
    }

    fn finish(&mut self, outcome: &'static str) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        self.span.record("outcome", outcome);
        match self.op {
            Op::Extend => {}
            Op::Renewal => recorded::renewal(self.key, outcome),
            Op::Release { background } => recorded::release(self.key, outcome, background),
        }
    }
}

impl Drop for PendingOp<'_> {
    fn drop(&mut self) {
        let outcome = match self.op {
            Op::Renewal => "timeout",
            _ => "cancelled",
        };
        self.finish(outcome);
    }
}

fn backend_error(span: &Span, key: &LockKey, op: &'static str, e: &BackendError) {
    span.record("error_kind", kind_label(e.kind()));
    recorded::backend_error(key, op, e.kind());
}

/// The lease of `key` was found lost: a `WARN` event and the counter.
pub(crate) fn lease_lost(key: &LockKey, fence: u64) {
    tracing::warn!(lock = %key, fence, "lease lost");
    recorded::lease_lost(key);
}

/// A guard's hold, for the held-locks gauge and the hold-time histogram
/// (nothing without the `metrics` feature). The labels are fixed when the
/// hold starts, so the gauge goes down on the series it went up on even
/// if per-name labels are switched meanwhile.
pub(crate) struct Held {
    #[cfg(feature = "metrics")]
    since: Instant,
    #[cfg(feature = "metrics")]
    labels: Vec<metrics::Label>,
}

impl Held {
    /// The hold of `key` starts: the gauge goes up.
    pub(crate) fn start(_key: &LockKey) -> Self {
        #[cfg(feature = "metrics")]
        {
            let labels = recorded::hold_labels(_key);
            recorded::held(&labels, 1.0);
            Self {
                since: Instant::now(),
                labels,
            }
        }
        #[cfg(not(feature = "metrics"))]
        Self {}
    }

    /// The guard was released or dropped (called once).
    pub(crate) fn end(&self) {
        #[cfg(feature = "metrics")]
        {
            recorded::held(&self.labels, -1.0);
            recorded::hold(&self.labels, self.since.elapsed());
        }
    }
}
