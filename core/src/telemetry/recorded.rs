//! The metrics, through the `metrics` facade (feature `metrics`).

use std::time::Duration;

use metrics::Label;

use super::{
    kind_label, lock_name_labels, ACQUIRE_WAIT_SECONDS, ACQUISITIONS, BACKEND_ERRORS, HELD,
    HOLD_SECONDS, LEASES_LOST, RELEASES, RENEWALS, WAITERS,
};
use crate::error::BackendErrorKind;
use crate::key::LockKey;

/// `fixed`, plus the `lock` label when per-name labels are on.
fn labels(key: &LockKey, fixed: &[(&'static str, &'static str)]) -> Vec<Label> {
    let per_name = lock_name_labels();
    // No allocation for a metric without labels.
    let mut labels = Vec::with_capacity(fixed.len() + usize::from(per_name));
    labels.extend(fixed.iter().map(|&(k, v)| Label::from_static_parts(k, v)));
    if per_name {
        labels.push(Label::new("lock", key.encoded().to_owned()));
    }
    labels
}

pub(crate) fn acquisition(key: &LockKey, wait: bool, outcome: &'static str, waited: Duration) {
    let wait = if wait { "true" } else { "false" };
    let labels = labels(key, &[("outcome", outcome), ("wait", wait)]);
    metrics::histogram!(ACQUIRE_WAIT_SECONDS, labels.clone()).record(waited.as_secs_f64());
    metrics::counter!(ACQUISITIONS, labels).increment(1);
}

pub(crate) fn waiters(delta: f64) {
    metrics::gauge!(WAITERS).increment(delta);
}

/// The labels of a hold's series (see `spans::Held`).
pub(crate) fn hold_labels(key: &LockKey) -> Vec<Label> {
    labels(key, &[])
}

pub(crate) fn held(labels: &[Label], delta: f64) {
    metrics::gauge!(HELD, labels.to_vec()).increment(delta);
}

pub(crate) fn hold(labels: &[Label], held: Duration) {
    metrics::histogram!(HOLD_SECONDS, labels.to_vec()).record(held.as_secs_f64());
}

pub(crate) fn lease_lost(key: &LockKey) {
    metrics::counter!(LEASES_LOST, labels(key, &[])).increment(1);
}

pub(crate) fn renewal(key: &LockKey, outcome: &'static str) {
    metrics::counter!(RENEWALS, labels(key, &[("outcome", outcome)])).increment(1);
}

pub(crate) fn release(key: &LockKey, outcome: &'static str, background: bool) {
    let background = if background { "true" } else { "false" };
    let labels = labels(key, &[("outcome", outcome), ("background", background)]);
    metrics::counter!(RELEASES, labels).increment(1);
}

pub(crate) fn backend_error(key: &LockKey, op: &'static str, kind: BackendErrorKind) {
    let labels = labels(key, &[("op", op), ("kind", kind_label(kind))]);
    metrics::counter!(BACKEND_ERRORS, labels).increment(1);
}

/// Registers the description and unit of every distlock metric with the
/// installed recorder (exporters show them as help text). Optional; call
/// once after installing the recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(ACQUISITIONS, "lock/try_lock calls by outcome");
    describe_histogram!(
        ACQUIRE_WAIT_SECONDS,
        Unit::Seconds,
        "time spent in lock/try_lock calls, the wait included"
    );
    describe_gauge!(WAITERS, "lock calls in progress");
    describe_gauge!(
        HELD,
        "locks this process holds now (guards not yet released or dropped)"
    );
    describe_histogram!(
        HOLD_SECONDS,
        Unit::Seconds,
        "time from acquisition to release or drop of the guard"
    );
    describe_counter!(LEASES_LOST, "leases found lost");
    describe_counter!(RENEWALS, "extends of the renewal task by outcome");
    describe_counter!(RELEASES, "releases by outcome");
    describe_counter!(BACKEND_ERRORS, "backend errors by operation and kind");
}
