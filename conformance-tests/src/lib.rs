//! The conformance suite for distlock backends.
//!
//! Every backend (ours and third-party) runs the same scenarios. Implement
//! [`Harness`] in your backend's tests and call [`suite!`] once: it expands
//! every scenario into its own `#[test]`, named after the scenario, so
//! `cargo test` lists each case, plus a `capability_report` test. Each test
//! builds its own tokio runtime (a paused clock if
//! [`Harness::PAUSED_CLOCK`], see [`runtime`]), sets the harness up inside
//! it ([`Harness::setup`] is `async` and fallible) and makes its own
//! clients. Scenarios use unique lock names ([`unique_name`]), so several
//! suites can share one server.
//!
//! The [`guide`] is the backend author's manual: key sizes, fencing designs
//! that survive cleanup, the error-kind mapping, the harness, skipping, and
//! the stress drivers.
//!
//! **Skipped cases are visible.** A case that needs an optional hook the
//! harness does not provide writes `distlock-conformance: SKIPPED <case>:
//! <why>` straight to the terminal (libtest does not capture it) and
//! passes; one that needs a capability the backend does not claim
//! ([`CASE_NEEDS`]) writes `NOT APPLICABLE <case>: <why>`. The
//! `capability_report` test lists both and fails where the harness and the
//! backend disagree (for example a paused clock for a backend that does
//! not follow tokio's clock, or `release_notify` without a working
//! `watch`). With `DISTLOCK_CONFORMANCE_NO_SKIP=1` ([`NO_SKIP_ENV`]) every
//! skip fails instead; a case that does not apply still passes.
//!
//! A complete harness, here for the in-memory backend; the scenarios in
//! [`scenarios`] can also be called one by one:
//!
//! ```
//! use distlock::LockKey;
//! use distlock_conformance::{scenarios, BoxError, Harness, SetupError};
//! use distlock_memory::MemoryBackend;
//!
//! /// Every client shares one store, as clients of one server would.
//! struct MemoryHarness {
//!     store: MemoryBackend,
//! }
//!
//! #[distlock_conformance::async_trait]
//! impl Harness for MemoryHarness {
//!     type Backend = MemoryBackend;
//!     const PAUSED_CLOCK: bool = true; // expiry follows tokio's clock
//!
//!     async fn setup() -> Result<Self, SetupError> {
//!         Ok(MemoryHarness { store: MemoryBackend::new() })
//!     }
//!
//!     async fn client(&self) -> Result<MemoryBackend, BoxError> {
//!         Ok(self.store.clone())
//!     }
//!
//!     async fn expire_now(&self, client: &MemoryBackend, key: &LockKey) -> Result<(), BoxError> {
//!         client.expire_now(key);
//!         Ok(())
//!     }
//!
//!     fn registered_waiters(&self, client: &MemoryBackend) -> Option<usize> {
//!         Some(client.registered_waiters())
//!     }
//!
//!     async fn unreachable_client(&self) -> Result<Option<MemoryBackend>, BoxError> {
//!         let down = MemoryBackend::new();
//!         down.set_unavailable(true);
//!         Ok(Some(down))
//!     }
//! }
//!
//! // In tests/conformance.rs this line is all it takes: one #[test] per case.
//! distlock_conformance::suite!(MemoryHarness);
//!
//! fn main() {
//!     distlock_conformance::runtime::<MemoryHarness>().block_on(async {
//!         let h = MemoryHarness::setup().await.unwrap();
//!         scenarios::acquire_free_then_held_then_free(&h).await;
//!         scenarios::stale_guard_cannot_touch_new_holder(&h).await;
//!         scenarios::lost_fires_when_lock_taken_away(&h).await;
//!     });
//! }
//! ```
//!
//! Attributes before the harness type go on every generated test, for a
//! suite that needs a service not every developer runs:
//!
//! ```
//! # use distlock::LockKey;
//! # use distlock_conformance::{BoxError, Harness, SetupError};
//! # use distlock_memory::MemoryBackend;
//! # struct PgHarness(MemoryBackend);
//! # #[distlock_conformance::async_trait]
//! # impl Harness for PgHarness {
//! #     type Backend = MemoryBackend;
//! #     async fn setup() -> Result<Self, SetupError> { Ok(PgHarness(MemoryBackend::new())) }
//! #     async fn client(&self) -> Result<MemoryBackend, BoxError> { Ok(self.0.clone()) }
//! #     async fn expire_now(&self, c: &MemoryBackend, k: &LockKey) -> Result<(), BoxError> {
//! #         c.expire_now(k);
//! #         Ok(())
//! #     }
//! # }
//! // Run with: DATABASE_URL=... cargo test -- --ignored
//! distlock_conformance::suite!(#[ignore = "needs PostgreSQL"] PgHarness);
//! # mod gated {
//! #     use super::PgHarness;
//! distlock_conformance::suite!(#[cfg(feature = "pg-tests")] PgHarness);
//! # }
//! # fn main() {}
//! ```
//!
//! Beyond the per-case scenarios, [`history`] records every hold of a
//! stress run (in one process or across many) and checks the history for
//! overlapping holds and fence order; its [`history::stress`] driver runs
//! against any backend, and [`processes`] runs it across OS processes.
//! [`wrapper`] wraps a backend with hooks for fault injection.
//!
//! Timing: every case runs against the in-memory backend on a paused clock
//! and against network backends in real time, so TTLs are short (a few
//! hundred milliseconds, see [`short_ttl`] and [`renew_ttl`]) and every
//! timing bound allows [`Harness::timing_slack`]; no case depends on how
//! fast a backend answers beyond that slack.

// Where other crates' docs link to this crate's items when its docs are
// not built beside theirs (otherwise rustdoc prints such links as plain
// text, without a warning).
#![doc(html_root_url = "https://docs.rs/distlock-conformance/0.1.0")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod counting;
pub mod fenced;
pub mod guide;
mod harness;
pub mod history;
pub mod log_capture;
pub mod processes;
mod runner;
pub mod scenarios;
mod stalling;
mod stress;
mod support;
pub mod wrapper;

pub use async_trait::async_trait;
pub use harness::{BoxError, Harness, SetupError};
pub use runner::{
    run_capability_report, run_case, runtime, setup, CapabilityReport, Need, CASE_NEEDS,
    NO_SKIP_ENV,
};
pub use support::{drop_bound, renew_ttl, short_ttl, unique_name};

/// Expands every conformance scenario into a `#[test]` for the harness type
/// `$harness`, plus a `capability_report` test. Attributes written before
/// the type (`#[ignore = "..."]`, `#[cfg(...)]`) go on every test.
///
/// A unit test of this crate checks that the list names every public
/// scenario in `src/scenarios/`.
#[macro_export]
macro_rules! suite {
    ($(#[$attr:meta])* $harness:ty) => {
        $(#[$attr])*
        #[test]
        fn capability_report() {
            $crate::run_capability_report::<$harness>();
        }
        $crate::__cases!([$(#[$attr])*] $harness;
            // basic
            acquire_free_then_held_then_free,
            not_reentrant,
            inspect_reports_owner_and_remaining,
            // ownership
            wrong_token_changes_nothing,
            stale_guard_cannot_touch_new_holder,
            double_release_is_harmless,
            acquire_by_the_holding_token_renews_its_lease,
            // expiry
            lock_expires_after_ttl_not_before,
            extend_really_extends,
            extend_after_expiry_is_not_held,
            // fencing
            fences_strictly_increase,
            fences_increase_per_name,
            raise_fence_lifts_the_counter,
            raised_fences_stay_exact_above_2_pow_53,
            // waiting
            lock_times_out_while_held,
            zero_wait_timeout_is_one_attempt,
            lock_succeeds_after_release,
            cancelled_lock_leaves_nothing_behind,
            waiter_woken_by_release_notification,
            waiter_takes_over_abandoned_lock,
            wait_deadline_bounds_stalled_backend_calls,
            acquisition_cut_at_wait_deadline_is_given_back,
            queued_waiters_make_one_attempt_per_release,
            // exclusion
            racing_try_lock_has_one_winner,
            mutual_exclusion_counter,
            every_contender_progresses,
            // names
            invalid_names_are_rejected,
            unusual_names_work,
            full_length_names_acquire_wait_notify_release,
            names_are_case_sensitive,
            prefixes_never_collide,
            // options
            invalid_ttl_rejected_before_backend,
            invalid_options_rejected_before_backend,
            // lifecycle
            dropped_guard_released_promptly,
            with_lock_runs_under_lock_and_releases,
            with_lock_releases_on_panic,
            with_lock_reports_lost_lease,
            cancelled_release_still_releases,
            // renewal
            auto_renew_keeps_lock_across_ttls,
            renewal_stops_when_guard_dropped,
            lost_fires_when_lock_taken_away,
            release_ends_lease_without_loss,
            lost_fires_at_deadline_without_renewal,
            max_hold_stops_renewal,
            // errors
            unreachable_store_gives_transient_errors,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __cases {
    ($attrs:tt $harness:ty; $case:ident, $($rest:ident,)*) => {
        $crate::__case!($attrs $harness; $case);
        $crate::__cases!($attrs $harness; $($rest,)*);
    };
    ($attrs:tt $harness:ty;) => {};
}

#[doc(hidden)]
#[macro_export]
macro_rules! __case {
    ([$(#[$attr:meta])*] $harness:ty; $case:ident) => {
        $(#[$attr])*
        #[test]
        fn $case() {
            $crate::run_case::<$harness>(stringify!($case), |h| {
                ::std::boxed::Box::pin($crate::scenarios::$case(h))
            });
        }
    };
}

#[cfg(test)]
mod self_check {
    use std::collections::BTreeSet;
    use std::path::Path;

    /// The case names listed in the `suite!` macro of this file.
    fn listed() -> Vec<String> {
        let source = include_str!("lib.rs");
        let start = source
            .find("$crate::__cases!([$(#[$attr])*] $harness;")
            .expect("the suite! macro calls __cases!");
        let body = &source[start..];
        let body = &body[body.find(';').unwrap() + 1..body.find(");").unwrap()];
        body.lines()
            .map(|line| line.split("//").next().unwrap().trim())
            .flat_map(|line| line.split(','))
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The `pub async fn` names of one scenario source file.
    fn defined_in(source: &str) -> Vec<String> {
        source
            .lines()
            .filter_map(|line| line.trim_start().strip_prefix("pub async fn "))
            .map(|rest| {
                rest.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn every_scenario_is_listed_in_the_suite() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/scenarios");
        let module = std::fs::read_to_string(dir.join("mod.rs")).unwrap();
        let mut defined = BTreeSet::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
            if path.extension().is_none_or(|e| e != "rs") || stem == "mod" {
                continue;
            }
            assert!(
                module.contains(&format!("mod {stem};"))
                    && module.contains(&format!("pub use {stem}::*;")),
                "src/scenarios/{stem}.rs is not wired into scenarios/mod.rs"
            );
            let source = std::fs::read_to_string(&path).unwrap();
            for name in defined_in(&source) {
                assert!(defined.insert(name.clone()), "{name} is defined twice");
            }
        }
        let listed = listed();
        let unique: BTreeSet<String> = listed.iter().cloned().collect();
        assert_eq!(unique.len(), listed.len(), "a case is listed twice");
        let missing: Vec<_> = defined.difference(&unique).collect();
        let unknown: Vec<_> = unique.difference(&defined).collect();
        assert!(
            missing.is_empty(),
            "scenarios missing from suite!: {missing:?}"
        );
        assert!(
            unknown.is_empty(),
            "suite! lists unknown cases: {unknown:?}"
        );
        for (case, _) in crate::CASE_NEEDS {
            assert!(
                unique.contains(*case),
                "CASE_NEEDS names unknown case {case}"
            );
        }
        assert!(
            defined.len() >= 30,
            "only {} scenarios found",
            defined.len()
        );
    }
}
