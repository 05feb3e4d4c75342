//! Per-lock options, loadable from configuration files.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::LockError;

/// The shortest lease accepted: 10 ms. Shorter leases expire before a
/// network round trip and its drift allowance are over.
pub const MIN_TTL: Duration = Duration::from_millis(10);

/// The longest lease accepted: 24 hours. Longer work should keep a shorter
/// lease alive with [`LockOptions::auto_renew`] so that a crashed holder does
/// not block everyone for days.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest wait accepted by [`Locker::lock`](crate::Locker::lock): 24 hours.
pub const MAX_WAIT_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// Options for taking one lock. A [`Locker`](crate::Locker) has defaults
/// ([`Locker::with_defaults`](crate::Locker::with_defaults)); every `*_with`
/// call starts from them and changes what it names
/// (`locker.lock_with("x", |o| o.with_wait_timeout(Duration::ZERO))`).
///
/// In configuration files durations are human-readable (`"30s"`, `"250ms"`,
/// `"1h 30m"`) and unknown fields are rejected:
///
/// ```
/// use distlock::LockOptions;
/// use std::time::Duration;
///
/// let opts: LockOptions = toml::from_str(r#"
///     ttl = "10s"
///     wait_timeout = "500ms"
///     owner = "report-worker-3"
/// "#).unwrap();
/// assert_eq!(opts.ttl, Duration::from_secs(10));
/// assert_eq!(opts.wait_timeout, Duration::from_millis(500));
/// opts.validate().unwrap();
///
/// assert!(toml::from_str::<LockOptions>("tll = \"10s\"").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LockOptions {
    /// How long the lease lasts unless it is extended. Default 30 s; must be
    /// within [`MIN_TTL`]..=[`MAX_TTL`].
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// How long [`Locker::lock`](crate::Locker::lock) waits for a held lock
    /// before it gives up with [`LockError::TimedOut`]. Zero means a single
    /// attempt (or none, if another task of the same `Locker` is already
    /// waiting for that name: it queues first). The wait covers queueing and
    /// sleeping; a backend call in progress at the deadline still finishes
    /// within the backend's own timeout. Default 10 s; at most
    /// [`MAX_WAIT_TIMEOUT`].
    #[serde(with = "humantime_serde")]
    pub wait_timeout: Duration,
    /// A label stored beside the lock so operators can see who holds it
    /// ([`LockBackend::inspect`](crate::LockBackend::inspect)). Not secret and
    /// not used for ownership checks (the random token is). At most 256 bytes.
    pub owner: Option<String>,
    /// Renew the lease in the background at about a third of the TTL until
    /// the guard is released or dropped. Default off.
    pub auto_renew: bool,
    /// With `auto_renew`, stop renewing once the lock has been held this long
    /// (the lease then runs out normally). Default: no limit.
    #[serde(with = "humantime_serde")]
    pub max_hold: Option<Duration>,
    /// The first retry delay while waiting; later delays grow exponentially
    /// with full jitter up to `retry_max`. Default 5 ms.
    #[serde(with = "humantime_serde")]
    pub retry_min: Duration,
    /// The longest delay between two attempts while waiting. A waiter never
    /// sleeps past the holder's remaining lease either. Default 500 ms.
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
}

impl Default for LockOptions {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(30),
            wait_timeout: Duration::from_secs(10),
            owner: None,
            auto_renew: false,
            max_hold: None,
            retry_min: Duration::from_millis(5),
            retry_max: Duration::from_millis(500),
        }
    }
}

/// The longest owner label accepted, in bytes.
pub const MAX_OWNER_LEN: usize = 256;

impl LockOptions {
    /// Sets [`ttl`](LockOptions::ttl).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets [`wait_timeout`](LockOptions::wait_timeout).
    pub fn with_wait_timeout(mut self, wait_timeout: Duration) -> Self {
        self.wait_timeout = wait_timeout;
        self
    }

    /// Sets the [`owner`](LockOptions::owner) label.
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Sets the [`owner`](LockOptions::owner) label to this machine and
    /// process, `hostname:pid` ([`default_owner`](crate::default_owner)).
    pub fn with_owner_host_pid(self) -> Self {
        self.with_owner(crate::default_owner())
    }

    /// Turns [`auto_renew`](LockOptions::auto_renew) on or off.
    pub fn with_auto_renew(mut self, on: bool) -> Self {
        self.auto_renew = on;
        self
    }

    /// Sets [`max_hold`](LockOptions::max_hold).
    pub fn with_max_hold(mut self, max_hold: Option<Duration>) -> Self {
        self.max_hold = max_hold;
        self
    }

    /// Sets the retry delays ([`retry_min`](LockOptions::retry_min),
    /// [`retry_max`](LockOptions::retry_max)).
    pub fn with_retry(mut self, min: Duration, max: Duration) -> Self {
        self.retry_min = min;
        self.retry_max = max;
        self
    }

    /// Checks every value; [`Locker`](crate::Locker) calls this before it
    /// contacts the backend, so bad options never leave anything behind.
    pub fn validate(&self) -> Result<(), LockError> {
        validate_ttl(self.ttl)?;
        if self.wait_timeout > MAX_WAIT_TIMEOUT {
            return Err(LockError::InvalidOptions(format!(
                "wait_timeout {:?} is above the maximum {MAX_WAIT_TIMEOUT:?}",
                self.wait_timeout
            )));
        }
        if let Some(owner) = &self.owner {
            if owner.len() > MAX_OWNER_LEN {
                return Err(LockError::InvalidOptions(format!(
                    "owner label is {} bytes; the maximum is {MAX_OWNER_LEN}",
                    owner.len()
                )));
            }
        }
        if self.retry_min.is_zero() || self.retry_min > self.retry_max {
            return Err(LockError::InvalidOptions(format!(
                "retry delays must satisfy 0 < retry_min <= retry_max (got {:?} and {:?})",
                self.retry_min, self.retry_max
            )));
        }
        if self.retry_max > MAX_WAIT_TIMEOUT {
            return Err(LockError::InvalidOptions(format!(
                "retry_max {:?} is above the maximum {MAX_WAIT_TIMEOUT:?}",
                self.retry_max
            )));
        }
        if let Some(max_hold) = self.max_hold {
            if max_hold.is_zero() || max_hold > MAX_WAIT_TIMEOUT * 365 {
                return Err(LockError::InvalidOptions(format!(
                    "max_hold {max_hold:?} must be above zero and at most a year"
                )));
            }
        }
        Ok(())
    }

    /// How long before the server-side expiry the guard already counts the
    /// lease as gone: 1 % of the TTL plus 2 ms, for clock-rate differences
    /// between this machine and the backend.
    pub fn drift(ttl: Duration) -> Duration {
        ttl / 100 + Duration::from_millis(2)
    }
}

/// Checks one TTL against [`MIN_TTL`] and [`MAX_TTL`].
pub fn validate_ttl(ttl: Duration) -> Result<(), LockError> {
    if ttl < MIN_TTL {
        return Err(LockError::InvalidTtl {
            ttl,
            reason: format!("must be at least {MIN_TTL:?}"),
        });
    }
    if ttl > MAX_TTL {
        return Err(LockError::InvalidTtl {
            ttl,
            reason: format!("must be at most {MAX_TTL:?}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        LockOptions::default().validate().unwrap();
        assert_eq!(LockOptions::default().ttl, Duration::from_secs(30));
    }

    #[test]
    fn bad_values_are_rejected() {
        let d = LockOptions::default;
        let cases = [
            d().with_ttl(Duration::ZERO),
            d().with_ttl(Duration::from_nanos(1)),
            d().with_ttl(MAX_TTL + Duration::from_millis(1)),
            d().with_ttl(Duration::MAX),
            d().with_wait_timeout(Duration::MAX),
            d().with_owner("x".repeat(MAX_OWNER_LEN + 1)),
            d().with_retry(Duration::ZERO, Duration::from_millis(1)),
            d().with_retry(Duration::from_secs(2), Duration::from_secs(1)),
            d().with_max_hold(Some(Duration::ZERO)),
        ];
        for opts in cases {
            assert!(opts.validate().is_err(), "{opts:?} was accepted");
        }
    }

    #[test]
    fn json_round_trip_uses_human_durations() {
        let opts = LockOptions::default().with_max_hold(Some(Duration::from_secs(90)));
        let json = serde_json::to_string(&opts).unwrap();
        assert!(json.contains("\"30s\""), "{json}");
        assert!(json.contains("\"1m 30s\""), "{json}");
        let back: LockOptions = serde_json::from_str(&json).unwrap();
        assert_eq!(back, opts);
    }

    #[test]
    fn bad_config_is_rejected() {
        assert!(serde_json::from_str::<LockOptions>(r#"{"ttl":"ten seconds"}"#).is_err());
        assert!(serde_json::from_str::<LockOptions>(r#"{"ttl":"10s","colour":1}"#).is_err());
        assert!(serde_json::from_str::<LockOptions>(r#"{"ttl":-1}"#).is_err());
    }
}
