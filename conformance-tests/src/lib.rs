//! The conformance suite for distlock backends.
//!
//! Every backend (ours and third-party) runs the same scenarios. Implement
//! [`Harness`] in your backend's tests and call [`suite!`] once: it expands
//! every scenario into its own `#[test]`, named after the scenario, so
//! `cargo test` lists each case. Each test builds its own tokio runtime
//! (paused clock if [`Harness::paused_clock`], see [`runtime`]) and its own
//! clients. Scenarios use unique lock names ([`unique_name`]), so several
//! suites can share one server. Cases that need a capability the backend
//! does not claim print `skipped: <case> needs <capability>` and pass.
//!
//! A complete harness, here for the in-memory backend; the scenarios in
//! [`scenarios`] can also be called one by one:
//!
//! ```
//! use distlock::LockKey;
//! use distlock_conformance::{scenarios, Harness};
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
//!
//!     async fn client(&self) -> MemoryBackend {
//!         self.store.clone()
//!     }
//!
//!     async fn expire_now(&self, client: &MemoryBackend, key: &LockKey) {
//!         client.expire_now(key);
//!     }
//!
//!     fn registered_waiters(&self, client: &MemoryBackend) -> Option<usize> {
//!         Some(client.registered_waiters())
//!     }
//!
//!     fn paused_clock(&self) -> bool {
//!         true // expiry follows tokio's clock
//!     }
//! }
//!
//! // In tests/conformance.rs this line is all it takes: one #[test] per case.
//! distlock_conformance::suite!(MemoryHarness { store: MemoryBackend::new() });
//!
//! fn main() {
//!     let h = MemoryHarness { store: MemoryBackend::new() };
//!     distlock_conformance::runtime(&h).block_on(async {
//!         scenarios::acquire_free_then_held_then_free(&h).await;
//!         scenarios::stale_guard_cannot_touch_new_holder(&h).await;
//!         scenarios::lost_fires_when_lock_taken_away(&h).await;
//!     });
//! }
//! ```
//!
//! Beyond the per-case scenarios, [`history`] records every hold of a
//! stress run (in one process or across many) and checks the history for
//! overlapping holds and fence order; its [`history::stress`] driver runs
//! against any backend.
//!
//! Timing: every case runs against the in-memory backend on a paused clock
//! and against network backends in real time, so TTLs are short (a few
//! hundred milliseconds, see [`short_ttl`] and [`renew_ttl`]) and every
//! timing bound allows [`Harness::timing_slack`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod counting;
pub mod fenced;
mod harness;
pub mod history;
pub mod log_capture;
pub mod scenarios;
mod stress;
mod support;

pub use async_trait::async_trait;
pub use harness::Harness;
pub use support::{drop_bound, renew_ttl, runtime, short_ttl, unique_name};

/// Expands every conformance scenario into a `#[test]` for the harness
/// expression `$harness` (evaluated once per test).
///
/// A unit test of this crate checks that the list names every public
/// scenario in `src/scenarios/`.
#[macro_export]
macro_rules! suite {
    ($harness:expr) => {
        $crate::__cases!($harness;
            // basic
            acquire_free_then_held_then_free,
            not_reentrant,
            inspect_reports_owner_and_remaining,
            // ownership
            wrong_token_changes_nothing,
            stale_guard_cannot_touch_new_holder,
            double_release_is_harmless,
            // expiry
            lock_expires_after_ttl_not_before,
            extend_really_extends,
            extend_after_expiry_is_not_held,
            // fencing
            fences_strictly_increase,
            fences_increase_per_name,
            raise_fence_lifts_the_counter,
            // waiting
            lock_times_out_while_held,
            zero_wait_timeout_is_one_attempt,
            lock_succeeds_after_release,
            cancelled_lock_leaves_nothing_behind,
            waiter_woken_by_release_notification,
            waiter_takes_over_abandoned_lock,
            // exclusion
            racing_try_lock_has_one_winner,
            mutual_exclusion_counter,
            every_contender_progresses,
            // names
            invalid_names_are_rejected,
            unusual_names_work,
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
            lost_does_not_fire_on_release,
            lost_fires_at_deadline_without_renewal,
            max_hold_stops_renewal,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __cases {
    ($harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let harness = $harness;
                $crate::runtime(&harness).block_on($crate::scenarios::$case(&harness));
            }
        )*
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
            .find("$crate::__cases!($harness;")
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
        assert!(
            defined.len() >= 30,
            "only {} scenarios found",
            defined.len()
        );
    }
}
