//! Exit codes, and the error type that carries one.
//!
//! | code | meaning |
//! |---|---|
//! | the child's | `run`: the command's own exit status; `128 + N` if a signal N killed it (as shells report it) |
//! | 0 | `inspect`, `wait`: success (`wait`: the lock is free) |
//! | [`USAGE`] 64 | bad arguments or options (`EX_USAGE`) |
//! | [`BACKEND`] 69 | the backend failed: Redis unreachable, timed out, refused the credentials…; the message names the kind (`EX_UNAVAILABLE`) |
//! | [`INTERNAL`] 70 | distlock itself failed (cannot handle signals, lost track of the command) (`EX_SOFTWARE`) |
//! | [`CONFLICT`] 75 | the lock was not acquired within the wait (`run`), or stayed held (`wait`); `-E/--conflict-exit-code` changes it (`EX_TEMPFAIL`) |
//! | [`CONFIG`] 78 | unusable connection settings: no URL, a bad URL, an unreadable or invalid config file (`EX_CONFIG`) |
//! | [`LOST`] 79 | `run`: the lease was lost (or `--max-hold` ran out) while the command ran; the command was stopped |
//! | 126 / 127 | `run`: the command could not be executed / was not found (as shells) |
//!
//! 64–78 are the `sysexits.h` codes; commands rarely exit with them, so a
//! script can tell distlock's outcome from the command's.

use std::fmt;

use distlock::{BackendErrorKind, LockError};

/// Bad arguments or options.
pub const USAGE: u8 = 64;
/// The backend failed (the message names the kind).
pub const BACKEND: u8 = 69;
/// distlock itself failed.
pub const INTERNAL: u8 = 70;
/// Not acquired within the wait: the default of `-E/--conflict-exit-code`.
pub const CONFLICT: u8 = 75;
/// Unusable connection settings.
pub const CONFIG: u8 = 78;
/// The lease was lost while the command ran.
pub const LOST: u8 = 79;
/// The command exists but could not be executed.
pub const NOT_EXECUTABLE: u8 = 126;
/// The command was not found.
pub const NOT_FOUND: u8 = 127;

/// A failure that ends the program: a one-line message for stderr and an
/// exit code.
#[derive(Debug)]
pub struct Failure {
    /// The process exit code.
    pub code: u8,
    /// Printed after `distlock: `.
    pub message: String,
}

impl Failure {
    /// A failure with `code`.
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// A [`LockError`] from the library, with `conflict` for timeouts.
    pub fn from_lock_error(e: LockError, conflict: u8) -> Self {
        match &e {
            LockError::TimedOut { .. } => Self::new(conflict, e.to_string()),
            LockError::NotHeld { .. } => Self::new(LOST, e.to_string()),
            LockError::Backend(b) => {
                let code = if b.kind() == BackendErrorKind::Config {
                    CONFIG
                } else {
                    BACKEND
                };
                Self::new(code, format!("backend error ({:?}): {b}", b.kind()))
            }
            _ => Self::new(USAGE, e.to_string()),
        }
    }
}

impl From<LockError> for Failure {
    fn from(e: LockError) -> Self {
        Self::from_lock_error(e, CONFLICT)
    }
}

impl From<distlock::BackendError> for Failure {
    fn from(e: distlock::BackendError) -> Self {
        LockError::Backend(e).into()
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "distlock: {}", self.message)
    }
}
