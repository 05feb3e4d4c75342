//! Connection settings, loadable from configuration files.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use distlock::BackendError;
use serde::{Deserialize, Serialize};

use crate::errors::config;
use crate::keys::{KeyLayout, DEFAULT_KEY_PREFIX};
use crate::topology::{ReplicaAck, Topology};

/// Default [`RedisConfig::pool_size`].
pub const DEFAULT_POOL_SIZE: usize = 16;
/// Default [`RedisConfig::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default [`RedisConfig::command_timeout`].
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Default [`RedisConfig::pool_wait_timeout`].
pub const DEFAULT_POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default [`RedisConfig::fence_retention`]: one day.
pub const DEFAULT_FENCE_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
/// The shortest [`RedisConfig::fence_retention`] accepted: one second.
pub const MIN_FENCE_RETENTION: Duration = Duration::from_secs(1);
/// The longest [`RedisConfig::fence_retention`] accepted: about ten years.
pub const MAX_FENCE_RETENTION: Duration = Duration::from_secs(10 * 366 * 24 * 60 * 60);

/// How [`RedisBackend`](crate::RedisBackend) reaches Redis.
///
/// Only `url` is required; durations are human-readable and unknown fields
/// are rejected:
///
/// ```
/// use std::time::Duration;
/// use distlock_redis::RedisConfig;
///
/// let config: RedisConfig = toml::from_str(r#"
///     url = "redis://locker:s3cret@redis.internal:6380/2"
///     key_prefix = "myapp:locks:"
///     pool_size = 32
///     command_timeout = "500ms"
/// "#).unwrap();
/// assert_eq!(config.command_timeout, Duration::from_millis(500));
/// assert_eq!(config.connect_timeout, Duration::from_secs(2)); // the default
/// config.validate().unwrap();
///
/// // The password never shows in logs.
/// assert!(!format!("{config:?}").contains("s3cret"));
/// assert!(!config.to_string().contains("s3cret"));
///
/// assert!(toml::from_str::<RedisConfig>("url = \"redis://h\"\npool_sise = 3").is_err());
/// ```
///
/// # A Redis ACL user
///
/// `redis://USER:PASSWORD@host` logs in as an ACL user. The smallest ACL
/// that distlock needs, for the default `key_prefix` `distlock:` (use your
/// prefix in both patterns otherwise):
///
/// ```text
/// ACL SETUSER locker reset on >PASSWORD ~distlock:* &distlock:* -@all
///     +evalsha +eval +get +set +del +incr +time +pttl
///     +pexpire +type +publish +subscribe +unsubscribe +ping +unwatch
///     +zadd +zrem +zrange +hset +hget +hdel
/// ```
///
/// `~distlock:*` covers the lock, fence, owner, tombstone and waiter-line
/// keys, `&distlock:*` the release and grant channels (each lock key +
/// `:released`, and + `:grant:` + a backend id).
/// `evalsha` runs the scripts, and `eval` runs a script with its body when
/// Redis answers `NOSCRIPT` (after a restart, `SCRIPT FLUSH` or failover);
/// `get`, `set`, `del`, `incr`, `time`, `pttl`,
/// `pexpire`, `type`, `publish` and, for the line of waiters
/// ([`waiter_queue`](RedisConfig::waiter_queue)), `zadd`, `zrem`, `zrange`,
/// `hset`, `hget` and `hdel` are what the scripts call (Redis checks
/// them against the user's ACL); `subscribe`/`unsubscribe` serve the release subscriber,
/// `ping` checks idle connections, and `unwatch` is only needed for a pool
/// given to [`RedisBackend::from_pool`](crate::RedisBackend::from_pool).
/// Add `+select` for a database other than 0. Wrong credentials are
/// [`Auth`](distlock::BackendErrorKind::Auth) errors; a key or command the
/// user may not use is [`Permission`](distlock::BackendErrorKind::Permission).
///
/// # TLS with a private CA
///
/// `rediss://` URLs trust the Mozilla root certificates by default. A server
/// whose certificate comes from a private CA needs `tls_ca_cert`; a server
/// started with `tls-auth-clients yes` also needs a client certificate and
/// key (mutual TLS). All are PEM files, read when the backend is built:
///
/// ```
/// use distlock_redis::RedisConfig;
///
/// let config: RedisConfig = toml::from_str(r#"
///     url = "rediss://locker:s3cret@redis.internal:6380"
///     tls_ca_cert = "/etc/distlock/redis-ca.pem"
///     tls_client_cert = "/etc/distlock/client.pem"
///     tls_client_key = "/etc/distlock/client.key"
/// "#).unwrap();
/// config.validate().unwrap(); // checks the combination, not the files
///
/// // TLS files only make sense with rediss://.
/// let plain = RedisConfig::new("redis://h").with_tls_ca_cert("/etc/ca.pem");
/// assert!(plain.validate().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user[:password]@]host[:port][/db]`, or `rediss://…` for
    /// TLS. A user name selects a Redis ACL user; the password is never
    /// shown by `Debug` or `Display`. With the Sentinel topology only its
    /// credentials, database and scheme are used (the sentinels name the
    /// primary); with the Cluster topology it is a seed node whose
    /// credentials and scheme apply to every node (see [`Topology`]).
    pub url: String,
    /// Prepended to every key and to the release channel. Default
    /// `"distlock:"`; must not contain `{` or `}`.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// The most connections the pool opens. Default 16. The operations of
    /// one backend share a multiplexed connection (requests pipeline on
    /// it), so a healthy backend uses one; the pool replaces it when it
    /// breaks.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// How long opening a connection (TCP, TLS, AUTH) may take. Default 2 s.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long one command (one lock operation) may wait for its answer.
    /// Default 2 s.
    #[serde(default = "default_command_timeout", with = "humantime_serde")]
    pub command_timeout: Duration,
    /// How long a call waits for a pooled connection when all are busy
    /// before it fails with `PoolExhausted`. Default 1 s. (With the shared
    /// multiplexed connection this only happens while the pool is opening
    /// a replacement; the backend's own bound also applies to pools given
    /// to [`RedisBackend::from_pool`](crate::RedisBackend::from_pool),
    /// which are checked out per operation.)
    #[serde(default = "default_pool_wait_timeout", with = "humantime_serde")]
    pub pool_wait_timeout: Duration,
    /// A PEM file with the CA certificate(s) that signed the server's
    /// certificate (`rediss://` only). When set, only these CAs are trusted,
    /// instead of the built-in Mozilla roots. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_cert: Option<PathBuf>,
    /// A PEM file with the client certificate for mutual TLS (`rediss://`
    /// only; needs [`tls_client_key`](RedisConfig::tls_client_key) too).
    /// Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_client_cert: Option<PathBuf>,
    /// A PEM file with the private key of
    /// [`tls_client_cert`](RedisConfig::tls_client_cert). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_client_key: Option<PathBuf>,
    /// The deployment: one server (the default), a Sentinel group or a
    /// Cluster. See [`Topology`] for what [`url`](Self::url) means in each.
    #[serde(default, skip_serializing_if = "Topology::is_single")]
    pub topology: Topology,
    /// Wait for replicas to acknowledge acquisitions and extensions
    /// (`WAIT`). Default: off. See [`ReplicaAck`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_ack: Option<ReplicaAck>,
    /// How long a lock name's fencing counter (the `:fence` key) stays in
    /// Redis after the name's last acquire. Default one day; from
    /// [`MIN_FENCE_RETENTION`] (1 s) to [`MAX_FENCE_RETENTION`] (about ten
    /// years).
    ///
    /// This bounds the state a name leaves behind: a name acquired once
    /// keeps one counter for this long: 72 bytes of `MEMORY USAGE`, about
    /// 152 bytes of `used_memory` with the key table's share, measured on
    /// Redis 7.0 (see the README's "State left in Redis"). When the counter
    /// is missing (expired, or lost with the data), the next acquire starts
    /// it from the server clock in microseconds, so fencing tokens keep
    /// increasing **as long as the server clock has not stepped back by
    /// more than the retention** (for an expired counter: at least the
    /// retention passed on that clock since the name's last acquire, and no
    /// name is acquired more than once per microsecond). A longer retention tolerates larger clock
    /// steps and costs memory for longer; the guarantee after a data loss
    /// (restart without persistence, failover) is the same for every
    /// setting: the new server's clock must read later than the old one's
    /// at the name's last acquire.
    #[serde(default = "default_fence_retention", with = "humantime_serde")]
    pub fence_retention: Duration,
    /// Whether waiting `lock()` calls line up in Redis (first come, first
    /// served across processes) and a release hands the lock straight to
    /// the first of them: one acquisition attempt per release instead of
    /// one per waiting process. Default `true`. It needs the release
    /// subscriber (the grant of a handover is a pub/sub message).
    ///
    /// `false` keeps the behaviour of earlier versions (every waiter tries
    /// again on each release). It exists for rolling upgrades: clients
    /// without the line neither join it nor hear its grants, so under
    /// sustained queued contention they get the lock only when the line is
    /// empty.
    #[serde(default = "default_waiter_queue")]
    pub waiter_queue: bool,
}

fn default_prefix() -> String {
    DEFAULT_KEY_PREFIX.to_owned()
}
fn default_pool_size() -> usize {
    DEFAULT_POOL_SIZE
}
fn default_connect_timeout() -> Duration {
    DEFAULT_CONNECT_TIMEOUT
}
fn default_command_timeout() -> Duration {
    DEFAULT_COMMAND_TIMEOUT
}
fn default_pool_wait_timeout() -> Duration {
    DEFAULT_POOL_WAIT_TIMEOUT
}
fn default_fence_retention() -> Duration {
    DEFAULT_FENCE_RETENTION
}
fn default_waiter_queue() -> bool {
    true
}

impl RedisConfig {
    /// The defaults, with `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            key_prefix: default_prefix(),
            pool_size: DEFAULT_POOL_SIZE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            pool_wait_timeout: DEFAULT_POOL_WAIT_TIMEOUT,
            tls_ca_cert: None,
            tls_client_cert: None,
            tls_client_key: None,
            topology: Topology::Single,
            replica_ack: None,
            fence_retention: DEFAULT_FENCE_RETENTION,
            waiter_queue: true,
        }
    }

    /// Sets [`topology`](RedisConfig::topology).
    pub fn with_topology(mut self, topology: Topology) -> Self {
        self.topology = topology;
        self
    }

    /// A Sentinel topology: the primary monitored as `master_name` by the
    /// `sentinels` (see [`Topology::Sentinel`]).
    pub fn with_sentinel<I, S>(self, master_name: impl Into<String>, sentinels: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.with_topology(Topology::Sentinel {
            master_name: master_name.into(),
            sentinels: sentinels.into_iter().map(Into::into).collect(),
        })
    }

    /// A Cluster topology: `url` and `nodes` are seed nodes (see
    /// [`Topology::Cluster`]).
    pub fn with_cluster<I, S>(self, nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.with_topology(Topology::Cluster {
            nodes: nodes.into_iter().map(Into::into).collect(),
        })
    }

    /// Sets [`replica_ack`](RedisConfig::replica_ack).
    pub fn with_replica_ack(mut self, ack: ReplicaAck) -> Self {
        self.replica_ack = Some(ack);
        self
    }

    /// Sets [`waiter_queue`](RedisConfig::waiter_queue).
    pub fn with_waiter_queue(mut self, on: bool) -> Self {
        self.waiter_queue = on;
        self
    }

    /// Sets [`fence_retention`](RedisConfig::fence_retention).
    pub fn with_fence_retention(mut self, retention: Duration) -> Self {
        self.fence_retention = retention;
        self
    }

    /// Sets [`tls_ca_cert`](RedisConfig::tls_ca_cert): trust only the CA
    /// certificate(s) in this PEM file.
    pub fn with_tls_ca_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_ca_cert = Some(path.into());
        self
    }

    /// Sets the client certificate and key for mutual TLS
    /// ([`tls_client_cert`](RedisConfig::tls_client_cert),
    /// [`tls_client_key`](RedisConfig::tls_client_key)).
    pub fn with_tls_client_cert(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.tls_client_cert = Some(cert.into());
        self.tls_client_key = Some(key.into());
        self
    }

    /// Sets [`key_prefix`](RedisConfig::key_prefix).
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Sets [`pool_size`](RedisConfig::pool_size).
    pub fn with_pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// Sets [`connect_timeout`](RedisConfig::connect_timeout).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`command_timeout`](RedisConfig::command_timeout).
    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Sets [`pool_wait_timeout`](RedisConfig::pool_wait_timeout).
    pub fn with_pool_wait_timeout(mut self, timeout: Duration) -> Self {
        self.pool_wait_timeout = timeout;
        self
    }

    /// Checks every field (the URL is parsed, not connected to); errors are
    /// of kind [`Config`](distlock::BackendErrorKind::Config).
    pub fn validate(&self) -> Result<(), BackendError> {
        let info = self.connection_info()?;
        let tls_files = self.tls_ca_cert.is_some()
            || self.tls_client_cert.is_some()
            || self.tls_client_key.is_some();
        if tls_files && !matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
            return Err(config(
                "tls_ca_cert, tls_client_cert and tls_client_key need a rediss:// URL",
            ));
        }
        if self.tls_client_cert.is_some() != self.tls_client_key.is_some() {
            return Err(config(
                "mutual TLS needs both tls_client_cert and tls_client_key",
            ));
        }
        KeyLayout::new(&self.key_prefix)?;
        self.topology.validate()?;
        if let Topology::Cluster { .. } = self.topology {
            // Found in review: both passed validation and failed at connect
            // with a transient error, so waiters retried a configuration
            // error.
            if info.redis_settings().db() != 0 {
                return Err(config(format!(
                    "topology cluster: the url selects database {}, but a Redis Cluster has \
                     only database 0",
                    info.redis_settings().db()
                )));
            }
            if matches!(info.addr(), redis::ConnectionAddr::Unix(_)) {
                return Err(config(
                    "topology cluster: the url is a unix socket; cluster nodes are reached \
                     over TCP (redis:// or rediss://)",
                ));
            }
        }
        if tls_files && matches!(self.topology, Topology::Sentinel { .. }) {
            return Err(config(
                "tls_ca_cert, tls_client_cert and tls_client_key are not supported with the \
                 sentinel topology (rediss:// with the system roots is)",
            ));
        }
        if let Some(ack) = &self.replica_ack {
            ack.validate()?;
        }
        if self.pool_size == 0 {
            return Err(config("pool_size must be at least 1"));
        }
        if !(MIN_FENCE_RETENTION..=MAX_FENCE_RETENTION).contains(&self.fence_retention) {
            return Err(config(format!(
                "fence_retention must be from {MIN_FENCE_RETENTION:?} to {MAX_FENCE_RETENTION:?}, not {:?}",
                self.fence_retention
            )));
        }
        for (name, value) in [
            ("connect_timeout", self.connect_timeout),
            ("command_timeout", self.command_timeout),
            ("pool_wait_timeout", self.pool_wait_timeout),
        ] {
            if value.is_zero() {
                return Err(config(format!("{name} must be more than zero")));
            }
            if value > Duration::from_secs(24 * 60 * 60) {
                return Err(config(format!("{name} must be at most 24 hours")));
            }
        }
        Ok(())
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }

    /// Parses the URL and, for `rediss://` with TLS files, reads them: the
    /// connection settings pools and clients are built from.
    pub(crate) fn client_connection_info(&self) -> Result<redis::ConnectionInfo, BackendError> {
        let info = self.connection_info()?;
        if self.tls_ca_cert.is_none() && self.tls_client_cert.is_none() {
            return Ok(info);
        }
        let root_cert = self.tls_ca_cert.as_deref().map(read_pem).transpose()?;
        let client_tls = match (&self.tls_client_cert, &self.tls_client_key) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read_pem(cert)?,
                client_key: read_pem(key)?,
            }),
            _ => None,
        };
        let certificates = redis::TlsCertificates {
            client_tls,
            root_cert,
        };
        let client = redis::Client::build_with_tls(info, certificates).map_err(|e| {
            config(format!(
                "cannot use the TLS certificates for {}: {}",
                self.redacted_url(),
                e.detail().unwrap_or("unusable certificate or key")
            ))
        })?;
        Ok(client.get_connection_info().clone())
    }

    /// The TLS files, read (`None` without any).
    pub(crate) fn tls_certificates(&self) -> Result<Option<redis::TlsCertificates>, BackendError> {
        if self.tls_ca_cert.is_none() && self.tls_client_cert.is_none() {
            return Ok(None);
        }
        let root_cert = self.tls_ca_cert.as_deref().map(read_pem).transpose()?;
        let client_tls = match (&self.tls_client_cert, &self.tls_client_key) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read_pem(cert)?,
                client_key: read_pem(key)?,
            }),
            _ => None,
        };
        Ok(Some(redis::TlsCertificates {
            client_tls,
            root_cert,
        }))
    }

    /// The redis client's own bound on one answer: the command timeout,
    /// plus the `WAIT` timeout when acquire and extend are followed by
    /// `WAIT` (the pipeline's answer comes after it; found in review: with
    /// the command timeout alone, a `WAIT` longer than it ended as
    /// `Timeout`, of unknown outcome, instead of `ReplicationIncomplete`
    /// with the acquisition given back). Every call is also bounded by the
    /// backend's own timeout.
    pub(crate) fn response_timeout(&self) -> Duration {
        self.command_timeout + self.replica_ack.map_or(Duration::ZERO, |a| a.timeout)
    }

    /// The server address without credentials: `redis://host:port` or
    /// `redis+unix://path` (see `RedisBackend`'s `identity`).
    pub(crate) fn server_identity(&self) -> Result<String, BackendError> {
        Ok(match self.connection_info()?.addr() {
            redis::ConnectionAddr::Unix(path) => format!("redis+unix://{}", path.display()),
            addr => format!("redis://{}", addr.to_string().to_ascii_lowercase()),
        })
    }

    pub(crate) fn connection_info(&self) -> Result<redis::ConnectionInfo, BackendError> {
        use redis::IntoConnectionInfo;
        check_scheme(&self.url)?;
        self.url.as_str().into_connection_info().map_err(|e| {
            config(format!(
                "invalid Redis URL {}: {}",
                self.redacted_url(),
                e.detail().unwrap_or("cannot be parsed")
            ))
        })
    }
}

/// The URL schemes the `redis` client accepts.
const SCHEMES: [&str; 7] = [
    "redis",
    "rediss",
    "valkey",
    "valkeys",
    "unix",
    "redis+unix",
    "valkey+unix",
];

/// Refuses a URL without a scheme (`localhost:6379`, `127.0.0.1:6402`) or
/// with one the client does not speak (`http://…`), naming the problem.
fn check_scheme(url: &str) -> Result<(), BackendError> {
    let shown = redact(url);
    // `host:port` parses as scheme `host`; a scheme is only what precedes `://`.
    let Some((scheme, _)) = url.trim().split_once("://") else {
        return Err(config(format!(
            "invalid Redis URL {shown}: missing scheme, use redis://host:port \
             (rediss://host:port for TLS)"
        )));
    };
    if !SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) {
        return Err(config(format!(
            "invalid Redis URL {shown}: unsupported scheme {scheme:?}, use redis://host:port \
             (rediss://host:port for TLS, unix:///path/to/socket for a Unix socket)"
        )));
    }
    Ok(())
}

/// Reads a PEM file named in the configuration.
fn read_pem(path: &Path) -> Result<Vec<u8>, BackendError> {
    std::fs::read(path).map_err(|e| config(format!("cannot read {}: {e}", path.display())))
}

/// `url` with any password replaced by `***`. A URL that does not parse
/// (or has no `scheme://`) is shown without its user information (what
/// precedes the last `@`) and without a query or fragment, which could hold
/// credentials.
pub(crate) fn redact(url: &str) -> String {
    if url.contains("://") {
        if let Ok(mut parsed) = url::Url::parse(url) {
            if parsed.password().is_some() && parsed.set_password(Some("***")).is_err() {
                return "<url hidden>".to_owned();
            }
            return parsed.to_string();
        }
    }
    let url = url.trim();
    let url = url.split(['?', '#']).next().unwrap_or_default();
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    match rest.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}***@{host}"),
        None => format!("{scheme}{rest}"),
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.redacted_url())
            .field("key_prefix", &self.key_prefix)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("pool_wait_timeout", &self.pool_wait_timeout)
            .field("tls_ca_cert", &self.tls_ca_cert)
            .field("tls_client_cert", &self.tls_client_cert)
            .field("tls_client_key", &self.tls_client_key)
            .field("topology", &self.topology)
            .field("replica_ack", &self.replica_ack)
            .field("fence_retention", &self.fence_retention)
            .field("waiter_queue", &self.waiter_queue)
            .finish()
    }
}

/// Shows the redacted URL.
impl fmt::Display for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted_url())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use distlock::BackendErrorKind;

    #[test]
    fn passwords_are_redacted() {
        let c = RedisConfig::new("rediss://user:hunter2@example.com:6380/3");
        for shown in [format!("{c:?}"), c.to_string(), format!("{c:#?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("user:***@example.com"), "{shown}");
        }
        assert!(!redact("redis://:p%40ss@[::1").contains("p%40ss"));
    }

    #[test]
    fn bad_values_are_config_errors() {
        let bad = [
            RedisConfig::new("http://localhost"),
            RedisConfig::new("not a url"),
            RedisConfig::new("redis://localhost").with_pool_size(0),
            RedisConfig::new("redis://localhost").with_key_prefix("a{b}"),
            RedisConfig::new("redis://localhost").with_command_timeout(Duration::ZERO),
            RedisConfig::new("redis://localhost").with_fence_retention(Duration::from_millis(999)),
            RedisConfig::new("redis://localhost").with_fence_retention(Duration::MAX),
        ];
        for c in bad {
            assert_eq!(
                c.validate().unwrap_err().kind(),
                BackendErrorKind::Config,
                "{c:?}"
            );
        }
        RedisConfig::new("redis://u:p@localhost:1/2")
            .validate()
            .unwrap();
        RedisConfig::new("rediss://localhost").validate().unwrap();
    }

    #[test]
    fn url_errors_name_the_scheme_problem_and_hide_passwords() {
        let message = |url: &str| {
            let err = RedisConfig::new(url).validate().unwrap_err();
            assert_eq!(err.kind(), BackendErrorKind::Config, "{url}");
            err.to_string()
        };
        // No scheme: the same message whether or not the host looks like one.
        for url in ["127.0.0.1:6402", "localhost:6379"] {
            let m = message(url);
            assert!(m.contains("missing scheme, use redis://host:port"), "{m}");
            assert!(m.contains(url), "{m}");
        }
        for url in ["http://localhost:6379", "HTTPS://user:hunter2@host"] {
            let m = message(url);
            assert!(m.contains("unsupported scheme"), "{m}");
            assert!(m.contains("use redis://host:port"), "{m}");
            assert!(!m.contains("hunter2"), "{m}");
        }
        for url in [
            "user:hunter2@localhost:6379",
            "redis://user:hunter2@bad host:6379",
            "localhost:6379?password=hunter2",
        ] {
            let m = message(url);
            assert!(!m.contains("hunter2"), "{m}");
        }
        assert!(message("user:hunter2@localhost:6379").contains("***@localhost:6379"));
        RedisConfig::new("unix:///run/redis.sock")
            .validate()
            .unwrap();
    }

    #[test]
    fn loads_from_json_with_defaults() {
        let c: RedisConfig =
            serde_json::from_str(r#"{"url":"redis://h","pool_wait_timeout":"250ms"}"#).unwrap();
        assert_eq!(c.pool_wait_timeout, Duration::from_millis(250));
        assert_eq!(c.key_prefix, "distlock:");
        assert_eq!(c.fence_retention, DEFAULT_FENCE_RETENTION);
        assert!(c.waiter_queue, "on by default, also in files without it");
        let c: RedisConfig =
            serde_json::from_str(r#"{"url":"redis://h","waiter_queue":false}"#).unwrap();
        assert!(!c.waiter_queue);
        let c: RedisConfig =
            serde_json::from_str(r#"{"url":"redis://h","fence_retention":"1h"}"#).unwrap();
        assert_eq!(c.fence_retention, Duration::from_secs(3600));
        assert!(serde_json::from_str::<RedisConfig>(r#"{"pool_size":3}"#).is_err());
    }
}
