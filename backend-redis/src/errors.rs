//! Turning Redis, pool and timeout failures into typed [`BackendError`]s.

use std::time::Duration;

use deadpool_redis::{PoolError, TimeoutType};
use distlock::{BackendError, BackendErrorKind};
use redis::{ErrorKind, RedisError, ServerErrorKind};

/// The kind of a Redis client or server error.
pub(crate) fn redis_kind(err: &RedisError) -> BackendErrorKind {
    match err.code() {
        Some("WRONGPASS" | "NOAUTH") => return BackendErrorKind::Auth,
        Some("NOPERM") => return BackendErrorKind::Permission,
        Some("WRONGTYPE") => return BackendErrorKind::WrongType,
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
        ErrorKind::Server(ServerErrorKind::NoPerm) => BackendErrorKind::Permission,
        // A server that is starting, failing over or read-only for now.
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly,
        ) => BackendErrorKind::Unavailable,
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
    BackendError::new(kind, message).with_source(err)
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
            ("SOMETHING", BackendErrorKind::Other),
        ];
        for (code, kind) in cases {
            let err = redis::make_extension_error(code.into(), Some("detail".into()));
            assert_eq!(redis_kind(&err), kind, "{code}");
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
