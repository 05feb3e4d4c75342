//! Turning Redis, pool and timeout failures into typed [`BackendError`]s.

use std::time::Duration;

use deadpool_redis::{PoolError, TimeoutType};
use distlock::{BackendError, BackendErrorKind};
use redis::{ErrorKind, RedisError};

/// The kind of a Redis client or server error.
///
/// Every error code Redis can answer to the scripts' `EVALSHA`/`EVAL` (and
/// to the connection setup) is mapped on purpose; the table is in the crate
/// README ("Redis" section, "Server errors"):
///
/// | Redis answer | kind | why |
/// | --- | --- | --- |
/// | `LOADING`, `BUSY`, `MASTERDOWN`, `READONLY`, `NOREPLICAS`, `TRYAGAIN`, `CLUSTERDOWN` | `Unavailable` (transient) | a passing server state: starting, a script past `busy-reply-threshold`, a failover, no replica for `min-replicas-to-write` |
/// | `OOM` | `Unavailable` (transient) | writes are refused until memory is freed; leases expiring free it, so waiting callers keep trying |
/// | `MISCONF` | `Unavailable` (transient) | writes are refused until a snapshot succeeds again |
/// | `ERR max number of clients reached` | `Unavailable` (transient) | the server refuses connections for now |
/// | `WRONGPASS`, `NOAUTH`, `ERR Protocol error: unauthenticated …` | `Auth` | the last is Redis 7's answer to a command of more than 10 arguments before authentication |
/// | `NOPERM`, `ERR` from a script the ACL denies | `Permission` | |
/// | `WRONGTYPE` | `WrongType` | a lock's key holds data distlock did not write (also a lock key without expiry) |
/// | `MOVED`, `ASK`, `CROSSSLOT` | `Config` | a Redis Cluster node: this backend talks to one server |
/// | `ERR unknown command` | `Config` | scripting is disabled or renamed on the server |
/// | `ERR DB index is out of range` | `Config` | the URL's database number is above the server's `databases` |
/// | `NOSCRIPT` (after the `EVAL` fallback), `EXECABORT` | `Protocol` | cannot happen with these commands |
/// | `STALE` (distlock's own) | `Other`, [needs a new token](BackendError::needs_new_token) (so transient) | a late copy of an acquire whose token was already released (nobody awaits its answer), or a retry with a token given back here (a quorum member): a new token can succeed |
/// | any other `ERR` (a script error) and unknown codes | `Other` | |
pub(crate) fn redis_kind(err: &RedisError) -> BackendErrorKind {
    match err.code() {
        Some("WRONGPASS" | "NOAUTH") => return BackendErrorKind::Auth,
        Some("NOPERM") => return BackendErrorKind::Permission,
        Some("WRONGTYPE") => return BackendErrorKind::WrongType,
        // A server that is starting, running a long script, failing over,
        // short of replicas, memory or disk, or read-only for now.
        Some(
            "LOADING" | "BUSY" | "MASTERDOWN" | "READONLY" | "NOREPLICAS" | "TRYAGAIN"
            | "CLUSTERDOWN" | "OOM" | "MISCONF",
        ) => return BackendErrorKind::Unavailable,
        Some("MOVED" | "ASK" | "CROSSSLOT") => return BackendErrorKind::Config,
        Some("NOSCRIPT" | "EXECABORT") => return BackendErrorKind::Protocol,
        Some("STALE") => return BackendErrorKind::Other,
        Some("ERR") => {
            let detail = err.detail().unwrap_or_default();
            if detail.starts_with("Protocol error: unauthenticated") {
                // Redis 7 refuses a command of more than 10 arguments (a
                // script call) from a client that has not authenticated
                // with this instead of NOAUTH.
                return BackendErrorKind::Auth;
            }
            if detail.starts_with("max number of clients reached") {
                return BackendErrorKind::Unavailable;
            }
            if detail.starts_with("unknown command") {
                return BackendErrorKind::Config;
            }
            if detail.starts_with("DB index is out of range") {
                // The URL's database number: no retry can fix it.
                return BackendErrorKind::Config;
            }
        }
        _ => {}
    }
    if script_acl_denial(err) {
        return BackendErrorKind::Permission;
    }
    if tls_certificate_error(err).is_some() {
        // Retrying cannot help: the client does not trust the server's
        // certificate (or the server refused ours).
        return BackendErrorKind::Config;
    }
    if err.is_timeout() {
        return BackendErrorKind::Timeout;
    }
    if err.is_connection_refusal() || err.is_connection_dropped() || err.is_io_error() {
        return BackendErrorKind::Unavailable;
    }
    match err.kind() {
        ErrorKind::AuthenticationFailed => BackendErrorKind::Auth,
        ErrorKind::InvalidClientConfig => BackendErrorKind::Config,
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => BackendErrorKind::Protocol,
        ErrorKind::ClusterConnectionNotFound => BackendErrorKind::Unavailable,
        _ => BackendErrorKind::Other,
    }
}

/// Whether a script failed because the ACL user may not run a command or
/// touch a key inside it (Redis answers `ERR The user executing the script
/// can't …` there, not `NOPERM`).
fn script_acl_denial(err: &RedisError) -> bool {
    let text = err.detail().unwrap_or_default();
    text.contains("user executing the script can't") || text.contains("No permissions to")
}

/// The TLS error behind a failed connection, if it is about certificates:
/// an untrusted or invalid server certificate, or a client certificate the
/// server refused or wanted. (The rustls error reaches us inside an
/// `io::Error` behind an `Arc`, where it cannot be downcast, so its text is
/// matched: rustls's own `Display` strings.)
fn tls_certificate_error(err: &RedisError) -> Option<String> {
    if !err.is_io_error() {
        return None;
    }
    const CERTIFICATE_FAILURES: [&str; 6] = [
        "invalid peer certificate",
        "peer sent no certificates",
        "received fatal alert: BadCertificate",
        "received fatal alert: UnknownCA",
        "received fatal alert: CertificateRequired",
        "received fatal alert: CertificateUnknown",
    ];
    let text = err.to_string();
    CERTIFICATE_FAILURES
        .iter()
        .any(|needle| text.contains(needle))
        .then_some(text)
}

/// A Redis error during `what` (e.g. "acquire distlock:a{b}"). The message
/// says what to check; it never contains a password (Redis and the client
/// do not echo credentials back).
pub(crate) fn from_redis(what: &str, err: RedisError) -> BackendError {
    let kind = redis_kind(&err);
    let message = match kind {
        BackendErrorKind::WrongType => format!(
            "{what}: a key of this lock holds a value distlock did not write ({})",
            err.detail().unwrap_or("WRONGTYPE")
        ),
        BackendErrorKind::Auth => format!(
            "{what}: Redis refused the credentials (wrong password, unknown or disabled \
             ACL user, or a password is required and the URL has none): {err}"
        ),
        BackendErrorKind::Permission => format!(
            "{what}: the Redis ACL user lacks a permission: it needs the keys and the \
             release channels under the backend's key prefix and the commands distlock \
             uses (see the RedisConfig docs): {err}"
        ),
        BackendErrorKind::Config => match tls_certificate_error(&err) {
            Some(tls) => format!(
                "{what}: the TLS handshake with Redis failed: {tls} (a server certificate \
                 from a private CA needs `tls_ca_cert`; a server that requires client \
                 certificates needs `tls_client_cert` and `tls_client_key`)"
            ),
            None => format!("{what}: {err}"),
        },
        _ => format!("{what}: {err}"),
    };
    // A token given back here is refused for good; a new one can win.
    let stale = err.code() == Some("STALE");
    BackendError::new(kind, message)
        .with_needs_new_token(stale)
        .with_source(err)
}

/// A failure to get a pooled connection.
pub(crate) fn from_pool(what: &str, err: PoolError, waited: Duration) -> BackendError {
    match err {
        PoolError::Timeout(TimeoutType::Wait) => BackendError::new(
            BackendErrorKind::PoolExhausted,
            format!("{what}: every pooled Redis connection stayed busy for {waited:?}"),
        ),
        PoolError::Timeout(TimeoutType::Create) => BackendError::new(
            BackendErrorKind::Timeout,
            format!("{what}: connecting to Redis took longer than the connect timeout"),
        ),
        PoolError::Timeout(TimeoutType::Recycle) => BackendError::new(
            BackendErrorKind::Timeout,
            format!("{what}: checking a pooled Redis connection timed out"),
        ),
        PoolError::Backend(e) => from_redis(what, e),
        PoolError::Closed => BackendError::new(
            BackendErrorKind::Config,
            format!("{what}: the connection pool was closed"),
        ),
        PoolError::NoRuntimeSpecified => BackendError::new(
            BackendErrorKind::Config,
            format!("{what}: the connection pool has no runtime for its timeouts"),
        ),
        PoolError::PostCreateHook(e) => BackendError::new(
            BackendErrorKind::Other,
            format!("{what}: a pool hook failed: {e}"),
        ),
    }
}

/// The call `what` got no answer within `limit`.
pub(crate) fn timed_out(what: &str, limit: Duration) -> BackendError {
    BackendError::new(
        BackendErrorKind::Timeout,
        format!("{what}: Redis did not answer within {limit:?}"),
    )
}

/// An unusable configuration.
pub(crate) fn config(message: impl Into<String>) -> BackendError {
    BackendError::new(BackendErrorKind::Config, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_codes_map_to_kinds() {
        let cases = [
            ("WRONGPASS", BackendErrorKind::Auth),
            ("NOAUTH", BackendErrorKind::Auth),
            ("NOPERM", BackendErrorKind::Permission),
            ("WRONGTYPE", BackendErrorKind::WrongType),
            ("LOADING", BackendErrorKind::Unavailable),
            ("BUSY", BackendErrorKind::Unavailable),
            ("MASTERDOWN", BackendErrorKind::Unavailable),
            ("READONLY", BackendErrorKind::Unavailable),
            ("NOREPLICAS", BackendErrorKind::Unavailable),
            ("TRYAGAIN", BackendErrorKind::Unavailable),
            ("CLUSTERDOWN", BackendErrorKind::Unavailable),
            ("OOM", BackendErrorKind::Unavailable),
            ("MISCONF", BackendErrorKind::Unavailable),
            ("MOVED", BackendErrorKind::Config),
            ("ASK", BackendErrorKind::Config),
            ("CROSSSLOT", BackendErrorKind::Config),
            ("NOSCRIPT", BackendErrorKind::Protocol),
            ("EXECABORT", BackendErrorKind::Protocol),
            ("ERR", BackendErrorKind::Other),
            ("SOMETHING", BackendErrorKind::Other),
        ];
        for (code, kind) in cases {
            // Parsed from the wire, as the client sees a server's answer.
            let line = format!("-{code} detail\r\n");
            let err = redis::parse_redis_value(line.as_bytes())
                .and_then(|v| v.extract_error())
                .unwrap_err();
            assert_eq!(err.code(), Some(code), "{err:?}");
            assert_eq!(redis_kind(&err), kind, "{code}");
        }
        for (line, kind) in [
            (
                "-ERR max number of clients reached\r\n",
                BackendErrorKind::Unavailable,
            ),
            (
                "-ERR unknown command 'EVALSHA'\r\n",
                BackendErrorKind::Config,
            ),
        ] {
            let err = redis::parse_redis_value(line.as_bytes())
                .and_then(|v| v.extract_error())
                .unwrap_err();
            assert_eq!(redis_kind(&err), kind, "{line}");
        }
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(redis_kind(&io), BackendErrorKind::Unavailable);
        let t = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert_eq!(redis_kind(&t), BackendErrorKind::Timeout);
    }

    #[test]
    fn script_acl_denials_and_certificate_failures_have_their_kinds() {
        let denied = redis::make_extension_error(
            "ERR".into(),
            Some("The user executing the script can't run this command or subcommand".into()),
        );
        assert_eq!(redis_kind(&denied), BackendErrorKind::Permission);
        let io = |text: &str| {
            RedisError::from(std::io::Error::new(std::io::ErrorKind::InvalidData, text))
        };
        let untrusted = io("invalid peer certificate: UnknownIssuer");
        assert_eq!(redis_kind(&untrusted), BackendErrorKind::Config);
        let message = from_redis("acquire k", untrusted).to_string();
        assert!(message.contains("tls_ca_cert"), "{message}");
        let required = io("received fatal alert: CertificateRequired");
        assert_eq!(redis_kind(&required), BackendErrorKind::Config);
        assert_eq!(
            redis_kind(&io("broken pipe")),
            BackendErrorKind::Unavailable
        );
    }
}
