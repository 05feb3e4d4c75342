//! The environment the `redis` and `quorum` benches read
//! (`#[path = "common/settings.rs"] mod settings;`).

use std::time::Duration;

/// `DISTLOCK_BENCH_SECS` (seconds per scenario and implementation;
/// fractions allowed) and `DISTLOCK_BENCH_ONLY` (comma-separated scenario
/// names; unset or empty: all).
pub struct Settings {
    pub secs: Duration,
    only: Option<Vec<String>>,
}

impl Settings {
    /// Reads the environment; `default_secs` when the variable is unset,
    /// not a number, or not positive.
    pub fn from_env(default_secs: Duration) -> Self {
        let secs = std::env::var("DISTLOCK_BENCH_SECS")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| *s > 0.0)
            .map(Duration::from_secs_f64)
            .unwrap_or(default_secs);
        let only = std::env::var("DISTLOCK_BENCH_ONLY")
            .ok()
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.split(',').map(|p| p.trim().to_owned()).collect());
        Self { secs, only }
    }

    /// Whether `scenario` is to run.
    pub fn wanted(&self, scenario: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|p| p == scenario))
    }
}
