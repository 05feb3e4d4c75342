//! Errors returned to applications and by backends.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

/// Everything that can go wrong when taking, extending or releasing a lock.
///
/// A lock that someone else holds is **not** an error: [`Locker::try_lock`]
/// returns `Ok(None)` for it. Only waiting that runs out of time is
/// ([`LockError::TimedOut`]).
///
/// [`Locker::try_lock`]: crate::Locker::try_lock
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// [`Locker::lock`](crate::Locker::lock) waited for the whole wait timeout
    /// and the lock stayed held by someone else.
    #[error("timed out after {waited:?} waiting for lock {name:?}")]
    TimedOut {
        /// The lock name.
        name: String,
        /// How long the call waited.
        waited: Duration,
    },
    /// The lock is no longer ours: its lease expired, or another owner took
    /// it. Work that needs the lock must stop.
    #[error("lock {name:?} is no longer held by this owner (expired or taken over)")]
    NotHeld {
        /// The lock name.
        name: String,
    },
    /// The lock name is unusable (empty, too long, not UTF-8, contains NUL).
    #[error("invalid lock name: {reason}")]
    InvalidName {
        /// Why the name was refused.
        reason: String,
    },
    /// A TTL outside [`MIN_TTL`](crate::MIN_TTL)..=[`MAX_TTL`](crate::MAX_TTL).
    #[error("invalid TTL {ttl:?}: {reason}")]
    InvalidTtl {
        /// The TTL that was refused.
        ttl: Duration,
        /// Why it was refused.
        reason: String,
    },
    /// Any other option or configuration value is unusable.
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// The backend failed; the lock state on the server is unknown or unchanged.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl LockError {
    /// True when retrying the same call later may succeed: a transient backend
    /// error, or a wait that timed out.
    pub fn is_transient(&self) -> bool {
        match self {
            LockError::TimedOut { .. } => true,
            LockError::Backend(e) => e.is_transient(),
            _ => false,
        }
    }

    /// The backend error, if this is one.
    pub fn backend_error(&self) -> Option<&BackendError> {
        match self {
            LockError::Backend(e) => Some(e),
            _ => None,
        }
    }
}

/// What kind of failure a [`BackendError`] is.
///
/// Five kinds are transient ([`BackendErrorKind::is_transient`]):
/// [`Unavailable`](Self::Unavailable), [`Timeout`](Self::Timeout),
/// [`PoolExhausted`](Self::PoolExhausted), [`Conflict`](Self::Conflict) and
/// [`ReplicationIncomplete`](Self::ReplicationIncomplete). The same call
/// may succeed if repeated later without changing anything. A backend
/// whose store reports a transient condition that fits no kind can still
/// mark the error transient with [`BackendError::with_transient`].
///
/// # Which kind for which store error
///
/// | class of store error | kind | PostgreSQL (SQLSTATE) | Redis (as `distlock-redis` maps it) |
/// |---|---|---|---|
/// | cannot connect; connection reset or closed; the server is starting, shutting down, or read-only during a failover | [`Unavailable`](Self::Unavailable) | class `08`, `57P01`–`57P03`, `25006` read-only transaction | I/O errors, `LOADING`, `BUSY`, `MASTERDOWN`, `CLUSTERDOWN`, `TRYAGAIN`, `READONLY`, `NOREPLICAS`, `OOM`, `MISCONF`, `ERR max number of clients reached` |
/// | no answer within the backend's own timeout | [`Timeout`](Self::Timeout) | client-side timeout; `57014` after `statement_timeout` | client-side timeout |
/// | no free pooled connection within the pool's wait | [`PoolExhausted`](Self::PoolExhausted) | pool wait timeout | pool wait timeout |
/// | a concurrent operation made the server refuse; retrying is expected to work | [`Conflict`](Self::Conflict) | `40001` serialization failure, `40P01` deadlock, `55P03` lock not available | (not produced: the scripts are atomic) |
/// | credentials refused | [`Auth`](Self::Auth) | `28P01`, `28000` | `WRONGPASS`, `NOAUTH` |
/// | authenticated, but not allowed | [`Permission`](Self::Permission) | `42501` | `NOPERM`, ACL denials inside scripts |
/// | the lock's storage has another shape | [`WrongType`](Self::WrongType) | `42P01` missing table, `42703` missing column | `WRONGTYPE`, a lock key without expiry |
/// | the backend's own configuration is unusable | [`Config`](Self::Config) | bad connection string | bad URL, untrusted TLS certificate, `MOVED`/`ASK`/`CROSSSLOT` (a Cluster node), `ERR unknown command` |
/// | an answer the backend cannot interpret | [`Protocol`](Self::Protocol) | unexpected row shape | unexpected reply type, `EXECABORT`, `NOSCRIPT` after the `EVAL` fallback |
/// | anything else (not retried) | [`Other`](Self::Other) | | script errors, `STALE` (a late acquire refused; [needs a new token](BackendError::needs_new_token), so retried with one) |
///
/// When unsure between a transient kind and [`Other`](Self::Other), ask
/// whether repeating the very same call in a second could succeed. The
/// conformance suite checks that a backend whose store cannot be reached
/// reports a transient kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendErrorKind {
    /// The server could not be reached, or the connection broke (transient).
    Unavailable,
    /// The server did not answer within the configured timeout (transient).
    Timeout,
    /// Every pooled connection was busy for the whole pool wait timeout
    /// (transient).
    PoolExhausted,
    /// The server refused the operation because of a concurrent operation (a
    /// serialization failure, a deadlock, a row-lock wait that gave up), and
    /// a retry is expected to succeed (transient). Nothing changed.
    Conflict,
    /// The credentials were refused.
    Auth,
    /// The credentials were accepted but lack a permission (a database
    /// grant, a Redis ACL).
    Permission,
    /// The storage the lock uses has another shape than the backend expects:
    /// a key of another data type (Redis `WRONGTYPE`), a missing or altered
    /// table or column (SQL), a value that does not parse.
    WrongType,
    /// The backend's configuration is unusable (bad URL, bad pool settings).
    Config,
    /// The server answered something this backend does not understand.
    Protocol,
    /// Fewer replicas than required acknowledged a write in time (Redis
    /// `WAIT`, see distlock-redis's `ReplicaAck`); an acquisition was given
    /// back (transient).
    ReplicationIncomplete,
    /// Anything else.
    Other,
}

impl BackendErrorKind {
    /// True for kinds where a retry may succeed without changing anything:
    /// [`Unavailable`](Self::Unavailable), [`Timeout`](Self::Timeout),
    /// [`PoolExhausted`](Self::PoolExhausted), [`Conflict`](Self::Conflict)
    /// and [`ReplicationIncomplete`](Self::ReplicationIncomplete).
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            BackendErrorKind::Unavailable
                | BackendErrorKind::Timeout
                | BackendErrorKind::PoolExhausted
                | BackendErrorKind::Conflict
                | BackendErrorKind::ReplicationIncomplete
        )
    }
}

impl fmt::Display for BackendErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendErrorKind::Unavailable => "backend unavailable",
            BackendErrorKind::Timeout => "backend timed out",
            BackendErrorKind::PoolExhausted => "connection pool exhausted",
            BackendErrorKind::Conflict => "conflict on the server, retry",
            BackendErrorKind::Auth => "authentication failed",
            BackendErrorKind::Permission => "permission denied",
            BackendErrorKind::WrongType => "lock storage has an unexpected shape",
            BackendErrorKind::Config => "invalid backend configuration",
            BackendErrorKind::Protocol => "unexpected backend reply",
            BackendErrorKind::ReplicationIncomplete => "too few replicas acknowledged",
            BackendErrorKind::Other => "backend error",
        })
    }
}

/// A failure inside a backend, with its [`kind`](BackendError::kind) and the
/// underlying error as [`source`](StdError::source).
pub struct BackendError {
    kind: BackendErrorKind,
    transient: Option<bool>,
    needs_new_token: bool,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

impl BackendError {
    /// A new error of `kind` with a message for humans. The message must not
    /// contain secrets (passwords, full tokens).
    pub fn new(kind: BackendErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            transient: None,
            needs_new_token: false,
            message: message.into(),
            source: None,
        }
    }

    /// Overrides whether this error is transient (by default its kind
    /// decides, see [`BackendErrorKind::is_transient`]): for a store error
    /// that is retryable although no transient kind fits, or the reverse.
    pub fn with_transient(mut self, transient: bool) -> Self {
        self.transient = Some(transient);
        self
    }

    /// Marks (or unmarks) this error as one that no retry **with the same
    /// token** can get past, although a new token may succeed at once: the
    /// store refuses the token for good because it was released or given
    /// back there before (Redis answers `STALE`), or a combinator can no
    /// longer count enough members for it (a [`Quorum`](crate::Quorum)
    /// whose members' give-backs of the token had unknown outcomes).
    ///
    /// A waiting [`Locker::lock`](crate::Locker::lock) then goes on with a
    /// new token (and a new place in line), giving the old one back,
    /// instead of retrying in vain until its wait ends. Such an error is
    /// transient unless [`BackendError::with_transient`] says otherwise.
    pub fn with_needs_new_token(mut self, needs_new_token: bool) -> Self {
        self.needs_new_token = needs_new_token;
        self
    }

    /// Whether a retry needs a new token; see
    /// [`BackendError::with_needs_new_token`].
    pub fn needs_new_token(&self) -> bool {
        self.needs_new_token
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> BackendErrorKind {
        self.kind
    }

    /// True when a retry may succeed: as set by
    /// [`BackendError::with_transient`], else true for an error that
    /// [needs a new token](BackendError::needs_new_token) (a retry with a
    /// **new** token may succeed; one with the same token cannot), else as
    /// [`BackendErrorKind::is_transient`] says for its kind.
    pub fn is_transient(&self) -> bool {
        self.transient
            .unwrap_or_else(|| self.needs_new_token || self.kind.is_transient())
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Debug for BackendError {
    /// Shows the effective transience (what [`BackendError::is_transient`]
    /// answers), not whether it was overridden.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendError")
            .field("kind", &self.kind)
            .field("transient", &self.is_transient())
            .field("needs_new_token", &self.needs_new_token)
            .field("message", &self.message)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl StdError for BackendError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_the_effective_transience() {
        let by_kind = BackendError::new(BackendErrorKind::Unavailable, "down");
        assert!(
            format!("{by_kind:?}").contains("transient: true"),
            "{by_kind:?}"
        );
        let overridden = BackendError::new(BackendErrorKind::Other, "x").with_transient(true);
        assert!(format!("{overridden:?}").contains("transient: true"));
        let permanent = BackendError::new(BackendErrorKind::Auth, "no");
        assert!(format!("{permanent:?}").contains("transient: false"));
    }
}
