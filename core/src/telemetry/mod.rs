//! What the locks are doing, in `tracing` spans and (with the `metrics`
//! feature) in metrics.
//!
//! # Tracing
//!
//! Every operation is a span (target `distlock::telemetry::spans`) at
//! `DEBUG` level, so a service that logs at `INFO` sees nothing of normal lock
//! traffic; only the few `WARN` events below stand out. Enable the spans with a filter such as
//! `RUST_LOG=distlock=debug` (`tracing-subscriber`'s `EnvFilter`), and log
//! span closes (`FmtSpan::CLOSE`) to see their final fields.
//!
//! | span | fields |
//! |---|---|
//! | `acquire` (one `lock`/`try_lock` call, including the wait) | `lock` (the encoded key, `prefix{name}`), `wait` (`true` for `lock`, `false` for `try_lock`), `outcome` (`acquired`, `held`, `timed_out`, `error`, `invalid`, `cancelled`), `fence`, `waited_ms`, `attempts`, `retried_errors` (backend errors the wait rode out), `error_kind` |
//! | `extend` (a manual [`LockGuard::extend`](crate::LockGuard::extend)) | `lock`, `fence`, `outcome` (`extended`, `not_held`, `error`, `cancelled`), `error_kind` |
//! | `renewal` (one extend by the renewal task) | `lock`, `fence`, `outcome` (`extended`, `not_held`, `error`, `timeout`), `error_kind` |
//! | `release` (an explicit release, or one attempt of the background release) | `lock`, `background`, `outcome` (`released`, `not_held`, `error`, `cancelled`), `error_kind` |
//!
//! | event | level | fields |
//! |---|---|---|
//! | `lease lost` | `WARN` | `lock`, `fence` |
//! | `backend error while waiting; retrying until the wait ends` (the first of a `lock` call; later ones at `DEBUG`) | `WARN` | `lock`, `error` |
//! | `lease renewal failed; retrying` | `WARN` | `lock`, `error` |
//! | `background release failed; the lease will expire at its TTL` | `WARN` | `lock`, `token` (shortened), `error`, `attempts` |
//! | `release after the work failed` (by `with_lock` and its kin) | `WARN` | `lock`, `error` |
//! | `OS randomness failed; lock token drawn from rand's thread generator` | `WARN` | `error` |
//!
//! `lock` is always the encoded key (`prefix{name}`). The lock token (the
//! holder's secret) is never a field; background
//! release events show its first four hex digits at most.
//!
//! # Metrics
//!
//! With the `metrics` feature (off by default) distlock records through the
//! [`metrics`](https://docs.rs/metrics) facade; install any recorder
//! (Prometheus exporter, StatsD, ...) to collect them. Without a recorder
//! the calls do nothing.
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `distlock_acquisitions_total` | counter | `outcome`, `wait` | `lock` (`wait="true"`) and `try_lock` (`wait="false"`) calls by outcome (`acquired`, `held`, `timed_out`, `error`, `invalid`, `cancelled`) |
//! | `distlock_acquire_wait_seconds` | histogram | `outcome`, `wait` | how long those calls took, the wait included |
//! | `distlock_waiters` | gauge | | `lock` calls in progress (waiting, or making their first attempt) |
//! | `distlock_held` | gauge | | locks this process holds now (guards not yet released or dropped); a hold that never ends shows here long before its `distlock_hold_seconds` sample |
//! | `distlock_hold_seconds` | histogram | | from acquisition to release or drop of the guard |
//! | `distlock_leases_lost_total` | counter | | leases found lost (taken away, or the deadline passed) |
//! | `distlock_renewals_total` | counter | `outcome` | renewal-task extends by outcome (`extended`, `not_held`, `error`, `timeout`: no answer before the lease's deadline, or the guard ended during the call) |
//! | `distlock_releases_total` | counter | `outcome`, `background` | releases by outcome (`released`, `not_held`, `error`, `cancelled`: an explicit release dropped before its answer) |
//! | `distlock_backend_errors_total` | counter | `op`, `kind` | failed backend calls by operation (`acquire`, `extend`, `renewal`, `release`) and [`BackendErrorKind`] (`Unavailable`, `Timeout`, `PoolExhausted`, `Auth`, `Permission`, `WrongType`, `Config`, `Protocol`, `Conflict`, `ReplicationIncomplete`, `Other`); each failed attempt of a waiting `lock` counts when it happens, so an outage that only waiters meet shows while they wait |
//!
//! Labels never depend on lock names by default, so the number of series
//! stays fixed however many names an application locks. Per-name series
//! are opt-in: [`set_lock_name_labels`]`(true)` adds a `lock` label (the
//! encoded key) to every metric except `distlock_waiters`.

mod spans;

#[cfg(feature = "metrics")]
mod recorded;
#[cfg(feature = "metrics")]
pub use recorded::describe;

/// Without the `metrics` feature: nothing is recorded.
#[cfg(not(feature = "metrics"))]
mod recorded {
    use std::time::Duration;

    use crate::error::BackendErrorKind;
    use crate::key::LockKey;

    pub(crate) fn acquisition(_: &LockKey, _: bool, _: &'static str, _: Duration) {}
    pub(crate) fn waiters(_: f64) {}
    pub(crate) fn lease_lost(_: &LockKey) {}
    pub(crate) fn renewal(_: &LockKey, _: &'static str) {}
    pub(crate) fn release(_: &LockKey, _: &'static str, _: bool) {}
    pub(crate) fn backend_error(_: &LockKey, _: &'static str, _: BackendErrorKind) {}
}

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::BackendErrorKind;

pub(crate) use spans::{
    acquire, attempted, extend, lease_lost, release, renewal, wait_error, Held,
};

/// The name of the acquisitions counter.
pub const ACQUISITIONS: &str = "distlock_acquisitions_total";
/// The name of the wait-time histogram (seconds).
pub const ACQUIRE_WAIT_SECONDS: &str = "distlock_acquire_wait_seconds";
/// The name of the gauge of `lock` calls in progress.
pub const WAITERS: &str = "distlock_waiters";
/// The name of the gauge of locks held now.
pub const HELD: &str = "distlock_held";
/// The name of the hold-time histogram (seconds).
pub const HOLD_SECONDS: &str = "distlock_hold_seconds";
/// The name of the lost-leases counter.
pub const LEASES_LOST: &str = "distlock_leases_lost_total";
/// The name of the renewals counter.
pub const RENEWALS: &str = "distlock_renewals_total";
/// The name of the releases counter.
pub const RELEASES: &str = "distlock_releases_total";
/// The name of the backend-errors counter.
pub const BACKEND_ERRORS: &str = "distlock_backend_errors_total";

static LOCK_NAME_LABELS: AtomicBool = AtomicBool::new(false);

/// Adds (or removes) a `lock` label with the encoded lock key to the
/// metrics recorded from now on, process-wide. Off by default: with many
/// lock names (one per order, per user...) it makes one series per name.
/// Has no effect without the `metrics` feature.
///
/// ```
/// distlock::telemetry::set_lock_name_labels(true);
/// assert!(distlock::telemetry::lock_name_labels());
/// # distlock::telemetry::set_lock_name_labels(false);
/// ```
pub fn set_lock_name_labels(on: bool) {
    LOCK_NAME_LABELS.store(on, Ordering::Relaxed);
}

/// Whether metrics carry the `lock` label ([`set_lock_name_labels`]).
pub fn lock_name_labels() -> bool {
    LOCK_NAME_LABELS.load(Ordering::Relaxed)
}

/// The kind as metrics and spans show it: the variant name.
pub(crate) fn kind_label(kind: BackendErrorKind) -> &'static str {
    match kind {
        BackendErrorKind::Unavailable => "Unavailable",
        BackendErrorKind::Timeout => "Timeout",
        BackendErrorKind::PoolExhausted => "PoolExhausted",
        BackendErrorKind::Auth => "Auth",
        BackendErrorKind::Permission => "Permission",
        BackendErrorKind::WrongType => "WrongType",
        BackendErrorKind::Config => "Config",
        BackendErrorKind::Protocol => "Protocol",
        BackendErrorKind::Conflict => "Conflict",
        BackendErrorKind::ReplicationIncomplete => "ReplicationIncomplete",
        BackendErrorKind::Other => "Other",
    }
}
