//! Running one case: runtime, setup, capability gates, visible skips, and
//! the capability report.

use std::fmt;
use std::future::Future;
use std::io::Write as _;
use std::pin::Pin;

use distlock::{Capabilities, LockBackend, LockKey};

use crate::harness::{BoxError, Harness, SetupError};

/// The environment variable that turns every skip into a failure (set it
/// to `1` in CI, where the store must be there and every case must run).
///
/// A case that needs a capability the backend does not claim
/// ([`Need::is_capability`]) is not a skip but does not apply: it is
/// announced as `NOT APPLICABLE` and passes even with this set, so a
/// backend that honestly lacks an optional capability (release
/// notifications, fencing) can run under it. A setup skip and a missing
/// harness hook are skips.
pub const NO_SKIP_ENV: &str = "DISTLOCK_CONFORMANCE_NO_SKIP";

/// What a case needs beyond the contract every backend meets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Need {
    /// [`Capabilities::fencing`].
    Fencing,
    /// [`Capabilities::release_notify`].
    ReleaseNotify,
    /// The [`Harness::unreachable_client`] hook.
    UnreachableClient,
}

impl Need {
    /// Whether this is a capability the backend may honestly lack (the case
    /// does not apply to it), rather than something the harness should
    /// provide (a skip, which [`NO_SKIP_ENV`] forbids).
    pub fn is_capability(self) -> bool {
        matches!(self, Need::Fencing | Need::ReleaseNotify)
    }
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Need::Fencing => "Capabilities::fencing",
            Need::ReleaseNotify => "Capabilities::release_notify",
            Need::UnreachableClient => "the Harness::unreachable_client hook",
        })
    }
}

/// The cases that need something, and what. Every other case runs against
/// every backend.
pub const CASE_NEEDS: &[(&str, Need)] = &[
    ("fences_strictly_increase", Need::Fencing),
    ("fences_increase_per_name", Need::Fencing),
    ("waiter_woken_by_release_notification", Need::ReleaseNotify),
    (
        "unreachable_store_gives_transient_errors",
        Need::UnreachableClient,
    ),
];

/// Whether skips are forbidden ([`NO_SKIP_ENV`] is set to something other
/// than `0` or empty).
fn skips_forbidden() -> bool {
    std::env::var(NO_SKIP_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Writes a line straight to the process's stderr. libtest captures only
/// the `print!` family, so this line shows whether or not the test passes
/// and without `--nocapture`.
pub(crate) fn announce(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "distlock-conformance: {line}");
}

/// Reports a skipped case (or part of one): visible on the terminal, and a
/// failure instead when skips are forbidden.
#[track_caller]
pub(crate) fn skip(case: &str, why: &str) {
    if skips_forbidden() {
        panic!("{case} would be skipped ({why}), and {NO_SKIP_ENV} forbids skips");
    }
    announce(&format!("SKIPPED {case}: {why}"));
}

/// Builds the runtime one case runs on: current-thread with a paused clock
/// for [`Harness::PAUSED_CLOCK`], otherwise two worker threads.
pub fn runtime<H: Harness>() -> tokio::runtime::Runtime {
    let mut builder = if H::PAUSED_CLOCK {
        let mut b = tokio::runtime::Builder::new_current_thread();
        b.start_paused(true);
        b
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    };
    builder
        .enable_all()
        .build()
        .expect("building a tokio runtime")
}

/// Runs [`Harness::setup`]: `None` if the harness asked to skip (announced).
/// Panics with the error if setup failed.
pub async fn setup<H: Harness>(case: &str) -> Option<H> {
    match H::setup().await {
        Ok(h) => Some(h),
        Err(SetupError::Skip(reason)) => {
            skip(case, &format!("the harness skipped setup: {reason}"));
            None
        }
        Err(SetupError::Failed(e)) => panic!("{case}: harness setup failed: {e}"),
    }
}

/// A new client of the harness; panics with the hook's error.
pub(crate) async fn client<H: Harness>(h: &H) -> H::Backend {
    h.client()
        .await
        .unwrap_or_else(|e| panic!("Harness::client failed: {e}"))
}

/// Whether `case` must be skipped because `caps` lack what it needs
/// (announced, or a panic when skips are forbidden).
#[track_caller]
pub(crate) fn skipped_for(case: &str, caps: Capabilities) -> bool {
    for &(name, need) in CASE_NEEDS {
        let has = match need {
            Need::Fencing => caps.fencing,
            Need::ReleaseNotify => caps.release_notify,
            // Checked by the case itself, by calling the hook.
            Need::UnreachableClient => true,
        };
        if name == case && !has {
            if need.is_capability() {
                announce(&format!(
                    "NOT APPLICABLE {case}: the backend does not claim {need}"
                ));
            } else {
                skip(case, &format!("the backend lacks {need}"));
            }
            return true;
        }
    }
    false
}

/// Runs one case the way [`suite!`](crate::suite) does: builds the runtime,
/// sets the harness up inside it, checks that the harness and the backend
/// agree on the clock, and runs `body`.
#[doc(hidden)]
pub fn run_case<H: Harness>(
    case: &str,
    body: impl for<'a> FnOnce(&'a H) -> Pin<Box<dyn Future<Output = ()> + 'a>>,
) {
    runtime::<H>().block_on(async {
        let Some(h) = setup::<H>(case).await else {
            return;
        };
        let caps = client(&h).await.capabilities();
        assert!(
            !H::PAUSED_CLOCK || caps.tokio_clock,
            "Harness::PAUSED_CLOCK is set, but the backend's expiry does not follow \
             tokio's clock (Capabilities::tokio_clock is false): leases would never \
             expire on the paused clock"
        );
        body(&h).await;
    });
}

/// What a backend and its harness offer, which cases that skips, and where
/// the two disagree. [`suite!`](crate::suite) prints it in its
/// `capability_report` test, which fails on any problem.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CapabilityReport {
    /// What the backend claims.
    pub capabilities: Capabilities,
    /// [`Harness::PAUSED_CLOCK`].
    pub paused_clock: bool,
    /// Whether [`Harness::registered_waiters`] answers.
    pub waiter_hook: bool,
    /// Whether [`Harness::unreachable_client`] gives a client.
    pub unreachable_hook: bool,
    /// Cases that skip, or do not apply ([`Need::is_capability`]), with
    /// this backend, and why.
    pub skipped: Vec<(&'static str, Need)>,
    /// Notes that are not problems.
    pub notes: Vec<String>,
    /// Disagreements between the harness, the capabilities and the
    /// backend's behaviour: each fails the report.
    pub problems: Vec<String>,
}

impl CapabilityReport {
    /// Builds the report: reads the capabilities of a client, calls the
    /// optional hooks, and checks [`LockBackend::watch`] against
    /// `release_notify`.
    pub async fn of<H: Harness>(h: &H) -> Result<Self, BoxError> {
        let client = h.client().await?;
        let caps = client.capabilities();
        let waiter_hook = h.registered_waiters(&client).is_some();
        let unreachable_hook = h.unreachable_client().await?.is_some();
        let mut report = Self {
            capabilities: caps,
            paused_clock: H::PAUSED_CLOCK,
            waiter_hook,
            unreachable_hook,
            skipped: Vec::new(),
            notes: Vec::new(),
            problems: Vec::new(),
        };
        for &(case, need) in CASE_NEEDS {
            let has = match need {
                Need::Fencing => caps.fencing,
                Need::ReleaseNotify => caps.release_notify,
                Need::UnreachableClient => unreachable_hook,
            };
            if !has {
                report.skipped.push((case, need));
            }
        }
        if H::PAUSED_CLOCK && !caps.tokio_clock {
            report
                .problems
                .push("Harness::PAUSED_CLOCK is set but Capabilities::tokio_clock is false".into());
        }
        if caps.tokio_clock && !H::PAUSED_CLOCK {
            report.notes.push(
                "tokio_clock backend run in real time (set Harness::PAUSED_CLOCK for fast, \
                 deterministic runs)"
                    .into(),
            );
        }
        if caps.release_notify && !waiter_hook {
            report.problems.push(
                "Capabilities::release_notify is claimed but Harness::registered_waiters \
                 returns None: cancelled_lock_leaves_nothing_behind cannot check for leftover \
                 waiters"
                    .into(),
            );
        }
        let key = LockKey::new("", crate::unique_name("capability-report"))?;
        let watch = client.watch(&key).await?;
        match (caps.release_notify, watch.is_some()) {
            (true, false) => report.problems.push(
                "Capabilities::release_notify is claimed but LockBackend::watch returns None"
                    .into(),
            ),
            (false, true) => report.problems.push(
                "LockBackend::watch returns a watch but Capabilities::release_notify is false \
                 (the capabilities must say what the backend does: wrappers and combinators \
                 such as Quorum decide by them)"
                    .into(),
            ),
            _ => {}
        }
        if caps.waiter_queue {
            let waiter =
                distlock::Waiter::new(distlock::WaiterId::generate(), distlock::WAITER_LEASE);
            let queued = client.watch_queued(&key, &waiter).await?;
            if caps.release_notify && queued.is_none() {
                report.problems.push(
                    "Capabilities::waiter_queue and release_notify are claimed but \
                     LockBackend::watch_queued returns None: handovers would wait for the \
                     next refresh"
                        .into(),
                );
            }
        }
        if !caps.distributed {
            report.notes.push(
                "not distributed: locks stay inside one process; the multi-process stress \
                 driver (processes::ProcessStress) refuses this backend"
                    .into(),
            );
        }
        Ok(report)
    }

    /// Whether nothing disagrees.
    pub fn is_consistent(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for CapabilityReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.capabilities;
        writeln!(
            f,
            "capabilities: fencing={} release_notify={} distributed={} tokio_clock={} \
             raise_fence={} waiter_queue={}; \
             harness: paused_clock={} registered_waiters={} unreachable_client={}",
            c.fencing,
            c.release_notify,
            c.distributed,
            c.tokio_clock,
            c.raise_fence,
            c.waiter_queue,
            self.paused_clock,
            self.waiter_hook,
            self.unreachable_hook
        )?;
        if self.skipped.is_empty() {
            writeln!(f, "every case runs")?;
        }
        for (case, need) in &self.skipped {
            if need.is_capability() {
                writeln!(
                    f,
                    "NOT APPLICABLE {case}: the backend does not claim {need}"
                )?;
            } else {
                writeln!(f, "SKIPPED {case}: needs {need}")?;
            }
        }
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        for problem in &self.problems {
            writeln!(f, "PROBLEM: {problem}")?;
        }
        Ok(())
    }
}

/// The `capability_report` test of [`suite!`](crate::suite): prints the
/// report to the terminal (not captured) and fails on a problem, or on a
/// skip when [`NO_SKIP_ENV`] forbids skips.
#[doc(hidden)]
pub fn run_capability_report<H: Harness>() {
    run_case::<H>("capability_report", |h| {
        Box::pin(async move {
            let report = CapabilityReport::of(h)
                .await
                .unwrap_or_else(|e| panic!("building the capability report: {e}"));
            for line in report.to_string().lines() {
                announce(line);
            }
            assert!(report.is_consistent(), "{report}");
            if skips_forbidden() {
                assert!(
                    report.skipped.iter().all(|(_, need)| need.is_capability()),
                    "{NO_SKIP_ENV} forbids skips: {report}"
                );
            }
        })
    });
}
