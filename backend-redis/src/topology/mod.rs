//! Where the lock's primary is: one server (the backend's pool), a primary
//! found through Redis Sentinel, or the primary that owns the lock's slot
//! in a Redis Cluster.
//!
//! The backend asks a [`Remote`] to "run this script on the lock's
//! primary", and the release subscriber asks a [`pubsub::Source`] for "a
//! subscriber connection that hears this lock's channel". The single-server
//! path is `command.rs`/`pool.rs`; both run scripts through [`invoke`].

use std::time::Duration;

use distlock::BackendError;
use redis::Value;
use serde::{Deserialize, Serialize};

use crate::errors::config;
use crate::scripts::ScriptCall;

pub(crate) mod cluster;
pub(crate) mod pubsub;
pub(crate) mod sentinel;

/// Which Redis deployment [`RedisConfig::url`](crate::RedisConfig::url)
/// and this field describe. In a configuration file it is a table with a
/// `mode` field:
///
/// ```
/// use distlock_redis::{RedisConfig, Topology};
///
/// // Sentinel: the url gives the credentials, database and scheme of the
/// // primary (its host is not used: the sentinels name the primary).
/// let sentinel: RedisConfig = toml::from_str(r#"
///     url = "redis://locker:s3cret@primary/0"
///     [topology]
///     mode = "sentinel"
///     master_name = "mymaster"
///     sentinels = ["redis://10.0.0.1:26379", "redis://10.0.0.2:26379", "redis://10.0.0.3:26379"]
/// "#).unwrap();
/// sentinel.validate().unwrap();
///
/// // Cluster: the url is one seed node (its credentials and scheme apply
/// // to every node); `nodes` adds more seeds.
/// let cluster: RedisConfig = toml::from_str(r#"
///     url = "redis://locker:s3cret@10.0.1.1:6379"
///     [topology]
///     mode = "cluster"
///     nodes = ["redis://10.0.1.2:6379", "redis://10.0.1.3:6379"]
/// "#).unwrap();
/// cluster.validate().unwrap();
/// assert!(matches!(cluster.topology, Topology::Cluster { .. }));
///
/// // The default: one server.
/// let single: RedisConfig = toml::from_str(r#"url = "redis://h""#).unwrap();
/// assert_eq!(single.topology, Topology::Single);
/// ```
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "mode",
    rename_all = "snake_case",
    deny_unknown_fields,
    try_from = "RawTopology"
)]
#[non_exhaustive]
pub enum Topology {
    /// One server (or a managed endpoint that always points at the
    /// primary): [`url`](crate::RedisConfig::url). The default.
    #[default]
    Single,
    /// A primary monitored by Redis Sentinel. The backend asks the
    /// sentinels for the current primary of `master_name` when it opens a
    /// connection, and asks again after a connection error or a `READONLY`
    /// answer (the primary was demoted), for operations and for the release
    /// subscriber alike. A connection for operations is also checked about
    /// once a second while in use (an old primary cut off by a partition is
    /// never demoted); the release subscriber's is not (its waiters then
    /// fall back to polling until it reconnects).
    Sentinel {
        /// The name the sentinels monitor the primary under
        /// (`sentinel monitor NAME …`).
        master_name: String,
        /// The sentinels, `redis://[:password@]host:port` (`rediss://` for
        /// TLS with the system roots; a private CA is not supported for
        /// sentinels). Tried in order.
        sentinels: Vec<String>,
    },
    /// A Redis Cluster (7.0 or later: release notifications use sharded
    /// pub/sub). Operations go to the primary owning the lock's slot;
    /// `MOVED`/`ASK` redirections are followed.
    Cluster {
        /// Seed nodes besides [`url`](crate::RedisConfig::url),
        /// `redis://host:port`. May be empty.
        #[serde(default)]
        nodes: Vec<String>,
    },
}

/// Every field any mode takes, so that a field of another mode is refused
/// by name: serde's `deny_unknown_fields` does not reach the unit variant
/// `single` of an internally tagged enum (found in review: `mode =
/// "single"` with `nodes = [...]`, a cluster meant, was accepted and ran
/// as one server).
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a topology table with a `mode` field"
)]
struct RawTopology {
    mode: RawMode,
    master_name: Option<String>,
    sentinels: Option<Vec<String>>,
    nodes: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawMode {
    Single,
    Sentinel,
    Cluster,
}

impl TryFrom<RawTopology> for Topology {
    type Error = String;

    fn try_from(raw: RawTopology) -> Result<Self, String> {
        let RawTopology {
            mode,
            master_name,
            sentinels,
            nodes,
        } = raw;
        let stray = |mode: &str, fields: &[(&str, bool)]| -> Result<(), String> {
            match fields.iter().find(|(_, present)| *present) {
                Some((field, _)) => Err(format!(
                    "topology mode {mode:?} does not take the field `{field}`"
                )),
                None => Ok(()),
            }
        };
        match mode {
            RawMode::Single => {
                stray(
                    "single",
                    &[
                        ("master_name", master_name.is_some()),
                        ("sentinels", sentinels.is_some()),
                        ("nodes", nodes.is_some()),
                    ],
                )?;
                Ok(Topology::Single)
            }
            RawMode::Sentinel => {
                stray("sentinel", &[("nodes", nodes.is_some())])?;
                Ok(Topology::Sentinel {
                    master_name: master_name
                        .ok_or("topology sentinel: missing field `master_name`")?,
                    sentinels: sentinels.ok_or("topology sentinel: missing field `sentinels`")?,
                })
            }
            RawMode::Cluster => {
                stray(
                    "cluster",
                    &[
                        ("master_name", master_name.is_some()),
                        ("sentinels", sentinels.is_some()),
                    ],
                )?;
                Ok(Topology::Cluster {
                    nodes: nodes.unwrap_or_default(),
                })
            }
        }
    }
}

impl Topology {
    /// Whether this is [`Topology::Single`].
    pub fn is_single(&self) -> bool {
        matches!(self, Topology::Single)
    }

    /// A name for logs and errors: `single`, `sentinel` or `cluster`.
    pub fn name(&self) -> &'static str {
        match self {
            Topology::Single => "single",
            Topology::Sentinel { .. } => "sentinel",
            Topology::Cluster { .. } => "cluster",
        }
    }

    pub(crate) fn validate(&self) -> Result<(), BackendError> {
        let parse = |what: &str, url: &str| {
            use redis::IntoConnectionInfo;
            url.into_connection_info().map(|_| ()).map_err(|e| {
                config(format!(
                    "invalid {what} URL {}: {}",
                    crate::config::redact(url),
                    e.detail().unwrap_or("cannot be parsed")
                ))
            })
        };
        match self {
            Topology::Single => Ok(()),
            Topology::Sentinel {
                master_name,
                sentinels,
            } => {
                if master_name.trim().is_empty() {
                    return Err(config("topology sentinel: master_name is empty"));
                }
                if sentinels.is_empty() {
                    return Err(config("topology sentinel: no sentinel URL is given"));
                }
                sentinels.iter().try_for_each(|s| parse("sentinel", s))
            }
            Topology::Cluster { nodes } => nodes.iter().try_for_each(|s| {
                parse("cluster node", s)?;
                if s.starts_with("redis+unix:") || s.starts_with("unix:") {
                    return Err(config(format!(
                        "topology cluster: node {} is a unix socket; cluster nodes are reached \
                         over TCP",
                        crate::config::redact(s)
                    )));
                }
                Ok(())
            }),
        }
    }
}

/// Shows URLs with their passwords replaced by `***`.
impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |urls: &[String]| -> Vec<String> {
            urls.iter().map(|u| crate::config::redact(u)).collect()
        };
        match self {
            Topology::Single => f.write_str("Single"),
            Topology::Sentinel {
                master_name,
                sentinels,
            } => f
                .debug_struct("Sentinel")
                .field("master_name", master_name)
                .field("sentinels", &redacted(sentinels))
                .finish(),
            Topology::Cluster { nodes } => f
                .debug_struct("Cluster")
                .field("nodes", &redacted(nodes))
                .finish(),
        }
    }
}

/// A non-single topology's way to the lock's primary.
pub(crate) enum Remote {
    Sentinel(std::sync::Arc<sentinel::SentinelRemote>),
    Cluster(Box<cluster::ClusterRemote>),
}

impl Remote {
    /// Runs `call` (and then `WAIT` when `wait` is given, on the same
    /// connection) on the primary of the lock `lock_key`, within
    /// `command_timeout` for the script (plus the `WAIT` timeout).
    pub(crate) async fn run(
        &self,
        what: &(dyn Fn() -> String + Sync),
        call: &ScriptCall,
        wait: Option<(u32, Duration)>,
    ) -> Result<((Value, Option<u32>), bool), BackendError> {
        match self {
            Remote::Sentinel(s) => s.run(what, call, wait).await,
            // The cluster client resends after a dropped connection itself
            // (its retries), so a repeat is not visible here.
            Remote::Cluster(c) => Ok((c.run(what, call, wait).await?, false)),
        }
    }

    /// The status reported by `RedisBackend::pool_status`: one connection
    /// (size 1) once it is open.
    pub(crate) fn status(&self) -> deadpool::managed::Status {
        let open = match self {
            Remote::Sentinel(s) => s.is_connected(),
            Remote::Cluster(c) => c.is_connected(),
        };
        deadpool::managed::Status {
            max_size: 1,
            size: usize::from(open),
            available: usize::from(open),
            waiting: 0,
        }
    }
}

/// Whether `err` means the connection is gone (reset, closed, broken pipe),
/// as opposed to a server answer or a timeout.
pub(crate) fn connection_lost(err: &redis::RedisError) -> bool {
    !err.is_timeout() && (err.is_connection_dropped() || err.is_io_error())
}

/// Runs a script call on `conn` as `EVALSHA`, pipelined with `WAIT` when
/// asked; when the server answers `NOSCRIPT` (its script cache was emptied:
/// a restart, `SCRIPT FLUSH`, a failover or, in a cluster, a slot moved to
/// a primary that never ran the script) it is sent once more as `EVAL`,
/// which runs the body and caches it in the same round trip (no
/// `SCRIPT LOAD` that a second flush could undo). In a cluster both are
/// routed by the call's first key, so they reach the lock's primary.
pub(crate) async fn invoke<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    call: &ScriptCall,
    wait: Option<(u32, Duration)>,
) -> redis::RedisResult<(Value, Option<u32>)> {
    match invoke_as(conn, &call.evalsha(), wait).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            invoke_as(conn, &call.eval(), wait).await
        }
        other => other,
    }
}

/// Sends `cmd`, followed by `WAIT` in the same pipeline when asked.
async fn invoke_as<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    cmd: &redis::Cmd,
    wait: Option<(u32, Duration)>,
) -> redis::RedisResult<(Value, Option<u32>)> {
    let Some((replicas, timeout)) = wait else {
        return Ok((cmd.query_async(conn).await?, None));
    };
    let timeout_ms = u64::try_from(timeout.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let mut pipe = redis::pipe();
    pipe.add_command(cmd.clone())
        .cmd("WAIT")
        .arg(replicas)
        .arg(timeout_ms);
    let (value, acked) = pipe.query_async::<(Value, u32)>(conn).await?;
    Ok((value, Some(acked)))
}

/// Default [`ReplicaAck::timeout`].
pub const DEFAULT_REPLICA_ACK_TIMEOUT: Duration = Duration::from_secs(1);

/// Replica acknowledgement: after the acquire and extend scripts, wait
/// (`WAIT replicas timeout`, pipelined right after the script on the same
/// connection, so in a cluster it goes to the lock's shard) until at least
/// `replicas` replicas have the write. If fewer acknowledge within
/// `timeout`, an acquisition is given back and the call fails with
/// [`ReplicationIncomplete`](distlock::BackendErrorKind::ReplicationIncomplete);
/// an extension fails the same way (the lease was extended on the primary
/// only).
///
/// Off by default in every topology (see the README's "Topologies"
/// section for why). `WAIT` does not make Redis strongly consistent: an
/// acknowledged write can still be lost if the replica that has it is not
/// the one promoted, but a failover that promotes an acknowledging replica
/// keeps the lock.
///
/// ```
/// use std::time::Duration;
/// use distlock_redis::RedisConfig;
///
/// let config: RedisConfig = toml::from_str(r#"
///     url = "redis://h"
///     replica_ack = { replicas = 1, timeout = "500ms" }
/// "#).unwrap();
/// let ack = config.replica_ack.unwrap();
/// assert_eq!((ack.replicas, ack.timeout), (1, Duration::from_millis(500)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaAck {
    /// How many replicas must acknowledge (at least 1).
    pub replicas: u32,
    /// How long to wait for them. Default 1 s (Redisson's default).
    #[serde(default = "default_ack_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_ack_timeout() -> Duration {
    DEFAULT_REPLICA_ACK_TIMEOUT
}

impl ReplicaAck {
    /// Wait for `replicas` replicas, at most [`DEFAULT_REPLICA_ACK_TIMEOUT`].
    pub fn new(replicas: u32) -> Self {
        Self {
            replicas,
            timeout: DEFAULT_REPLICA_ACK_TIMEOUT,
        }
    }

    /// Sets [`timeout`](Self::timeout).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), BackendError> {
        if self.replicas == 0 {
            return Err(config("replica_ack.replicas must be at least 1"));
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(60) {
            return Err(config(
                "replica_ack.timeout must be more than zero and at most 60 s",
            ));
        }
        Ok(())
    }
}

/// Builds the way to the primaries and the subscriber source of a
/// non-single topology (nothing connects yet).
pub(crate) fn build(config: &crate::RedisConfig) -> Result<(Remote, pubsub::Source), BackendError> {
    let info = config.client_connection_info()?;
    match &config.topology {
        Topology::Single => Err(config_err("build() is not for the single topology")),
        Topology::Sentinel {
            master_name,
            sentinels,
        } => {
            // The operations and the subscriber share one lookup client.
            let remote = std::sync::Arc::new(sentinel::SentinelRemote::new(
                master_name,
                sentinels,
                &info,
                config.connect_timeout,
                config.command_timeout,
                config.response_timeout(),
            )?);
            Ok((
                Remote::Sentinel(remote.clone()),
                pubsub::Source::Sentinel(remote),
            ))
        }
        Topology::Cluster { nodes } => {
            use redis::IntoConnectionInfo;
            let mut seeds = vec![info.clone()];
            for node in nodes {
                let mut seed = node.as_str().into_connection_info().map_err(|e| {
                    config_err(format!(
                        "invalid cluster node URL {}: {}",
                        crate::config::redact(node),
                        e.detail().unwrap_or("cannot be parsed")
                    ))
                })?;
                // The url's credentials apply to every node.
                seed = seed.set_redis_settings(info.redis_settings().clone());
                seeds.push(seed);
            }
            let settings = cluster::ClusterSettings {
                seeds,
                certificates: config.tls_certificates()?,
                connect_timeout: config.connect_timeout,
                command_timeout: config.command_timeout,
                response_timeout: config.response_timeout(),
            };
            let remote = cluster::ClusterRemote::new(settings.clone())?;
            Ok((
                Remote::Cluster(Box::new(remote)),
                pubsub::Source::Cluster(settings),
            ))
        }
    }
}

fn config_err(message: impl Into<String>) -> BackendError {
    config(message)
}

/// The error of a write that too few replicas acknowledged.
pub(crate) fn replication_incomplete(
    op: &str,
    lock_key: &str,
    acked: u32,
    needed: u32,
    timeout: Duration,
    given_back: bool,
) -> BackendError {
    let after = match (op, given_back) {
        ("acquire", true) => "; the acquisition was given back",
        ("acquire", false) => "; giving the acquisition back failed (its lease expires)",
        _ => "; the lease was extended on the primary only",
    };
    BackendError::new(
        distlock::BackendErrorKind::ReplicationIncomplete,
        format!(
            "{op} {lock_key}: {acked} of the {needed} required replicas acknowledged within \
             {timeout:?} (WAIT){after}"
        ),
    )
}

/// A single-server backend pointed at a cluster node gets `MOVED`/`ASK`
/// for keys of other nodes' slots: a configuration error that says so.
pub(crate) fn misrouted(what: &str, e: &redis::RedisError) -> Option<BackendError> {
    matches!(
        e.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::Moved | redis::ServerErrorKind::Ask)
    )
    .then(|| {
        config(format!(
            "{what}: the server is a Redis Cluster node and the key lives on another node \
             ({e}); configure the cluster topology"
        ))
    })
}
