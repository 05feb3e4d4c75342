//! Redis Sentinel: the primary is looked up through the sentinels (the
//! `redis` crate's `SentinelClient`) whenever a connection is opened, and
//! the connection is dropped after a connection error or `READONLY`, so the
//! next operation looks it up again. A connection in use is also checked
//! against the sentinels about once a second ([`RECHECK_EVERY`]): an old
//! primary cut off from the sentinels (a partition) is never demoted and
//! never fails a call, so without the check a backend would go on taking
//! locks there while other clients take them on the new primary (found in
//! review: two holders of one lock ten seconds after the failover).

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use distlock::{BackendError, BackendErrorKind};
use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{AsyncConnectionConfig, TlsMode, Value};

use crate::scripts::ScriptCall;

use crate::errors::{config, from_redis, redis_kind, timed_out};

/// How long a connection to the primary is used before one call asks the
/// sentinels again whether its server still is the primary. After a
/// failover that leaves the old primary running and reachable, a backend
/// sends at most this long (plus one lookup) to it.
pub(crate) const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// The connection to the primary found last.
struct Current {
    conn: MultiplexedConnection,
    /// The primary's address, as the sentinels named it.
    addr: String,
    /// When the sentinels last named `addr` (or a call took on asking).
    checked: tokio::time::Instant,
}

/// How the backend reaches the current primary of a Sentinel group.
pub(crate) struct SentinelRemote {
    master_name: String,
    sentinels: Vec<String>,
    /// Serializes lookups (the client caches sentinel connections and needs
    /// `&mut`).
    client: tokio::sync::Mutex<SentinelClient>,
    /// The connection to the primary found last, until it fails or the
    /// sentinels name another primary.
    current: Mutex<Option<Current>>,
    connection: AsyncConnectionConfig,
    connect_timeout: Duration,
    command_timeout: Duration,
}

impl SentinelRemote {
    /// `data_node` gives the credentials, database and scheme of the
    /// primary (its host is not used).
    pub(crate) fn new(
        master_name: &str,
        sentinels: &[String],
        data_node: &redis::ConnectionInfo,
        connect_timeout: Duration,
        command_timeout: Duration,
        response_timeout: Duration,
    ) -> Result<Self, BackendError> {
        let tls = match data_node.addr() {
            redis::ConnectionAddr::TcpTls { insecure, .. } => Some(if *insecure {
                TlsMode::Insecure
            } else {
                TlsMode::Secure
            }),
            _ => None,
        };
        let mut node = SentinelNodeConnectionInfo::default()
            .set_redis_connection_info(data_node.redis_settings().clone());
        if let Some(tls) = tls {
            node = node.set_tls_mode(tls);
        }
        let client = SentinelClient::build(
            sentinels.to_vec(),
            master_name,
            Some(node),
            SentinelServerType::Master,
        )
        .map_err(|e| from_redis("building the Sentinel client", e))?;
        Ok(Self {
            master_name: master_name.to_owned(),
            sentinels: sentinels.to_vec(),
            client: tokio::sync::Mutex::new(client),
            current: Mutex::new(None),
            connection: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(Some(response_timeout)),
            connect_timeout,
            command_timeout,
        })
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// A client for the current primary, asked of the sentinels now,
    /// within the connect timeout.
    pub(crate) async fn primary_client(&self) -> Result<redis::Client, BackendError> {
        let lookup = async {
            let mut client = self.client.lock().await;
            client.async_get_client().await
        };
        let what = || {
            format!(
                "looking up the primary {:?} through Sentinel",
                self.master_name
            )
        };
        let started = tokio::time::Instant::now();
        match tokio::time::timeout(self.connect_timeout, lookup).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) if e.kind() == redis::ErrorKind::MasterNameNotFoundBySentinel => {
                // Either no sentinel knows the name (a configuration error)
                // or the primary is down and not yet replaced (transient).
                let left = self.connect_timeout.saturating_sub(started.elapsed());
                let known = tokio::time::timeout(left, self.name_known()).await;
                if known == Ok(false) {
                    Err(BackendError::new(
                        BackendErrorKind::Config,
                        format!("{}: no sentinel monitors a master of this name", what()),
                    )
                    .with_source(e))
                } else {
                    Err(BackendError::new(
                        BackendErrorKind::Unavailable,
                        format!(
                            "{}: the sentinels know no reachable primary right now \
                             (a failover in progress?)",
                            what()
                        ),
                    )
                    .with_source(e))
                }
            }
            Ok(Err(e)) => Err(lookup_error(&what(), e)),
            Err(_) => Err(timed_out(&what(), self.connect_timeout)),
        }
    }

    /// Whether some answering sentinel has an address for the master name
    /// (`SENTINEL GET-MASTER-ADDR-BY-NAME`).
    async fn name_known(&self) -> bool {
        for url in &self.sentinels {
            let Ok(client) = redis::Client::open(url.as_str()) else {
                continue;
            };
            let Ok(mut conn) = client
                .get_multiplexed_async_connection_with_config(&self.connection)
                .await
            else {
                continue;
            };
            let reply: redis::RedisResult<Option<(String, u16)>> = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(&self.master_name)
                .query_async(&mut conn)
                .await;
            if let Ok(addr) = reply {
                return addr.is_some();
            }
        }
        // No sentinel answered: unknown, treat as transient.
        true
    }

    async fn connection(&self) -> Result<MultiplexedConnection, BackendError> {
        if let Some((conn, recheck)) = self.current() {
            let Some(addr) = recheck else {
                return Ok(conn);
            };
            // This call asks the sentinels (the others go on meanwhile).
            // A failed lookup (a failover in progress, sentinels down)
            // keeps the connection; only another answer replaces it.
            return match self.primary_client().await {
                Ok(client) if address(&client) != addr => {
                    tracing::info!(old = %addr, new = %address(&client),
                        "the sentinels name another primary; reconnecting");
                    self.forget();
                    self.open(client).await
                }
                _ => Ok(conn),
            };
        }
        let client = self.primary_client().await?;
        self.open(client).await
    }

    /// Opens a connection to the primary `client` (just looked up) and
    /// makes it the current one, unless a concurrent call opened one
    /// meanwhile (then that one is used).
    async fn open(&self, client: redis::Client) -> Result<MultiplexedConnection, BackendError> {
        let addr = address(&client);
        let what = || format!("connecting to the primary {:?}", self.master_name);
        let conn = match tokio::time::timeout(
            self.connect_timeout,
            client.get_multiplexed_async_connection_with_config(&self.connection),
        )
        .await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(from_redis(&what(), e)),
            Err(_) => return Err(timed_out(&what(), self.connect_timeout)),
        };
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        // Keep a connection a concurrent call opened meanwhile.
        Ok(current
            .get_or_insert(Current {
                conn,
                addr,
                checked: tokio::time::Instant::now(),
            })
            .conn
            .clone())
    }

    /// The current connection, and its primary's address when this call
    /// is to ask the sentinels about it: once [`RECHECK_EVERY`] has passed
    /// since they last named it, to the first call that asks (it restarts
    /// the period, so concurrent calls do not all look it up). One lock,
    /// and no allocation unless a recheck is due.
    fn current(&self) -> Option<(MultiplexedConnection, Option<String>)> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let c = current.as_mut()?;
        let recheck = (c.checked.elapsed() >= RECHECK_EVERY).then(|| {
            c.checked = tokio::time::Instant::now();
            c.addr.clone()
        });
        Some((c.conn.clone(), recheck))
    }

    /// Forgets the connection, so the next call looks the primary up again.
    fn forget(&self) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Runs `call` on the primary. Like the single-server path
    /// (`Commands::run`), a call whose connection dropped (a restart of the
    /// primary, `CLIENT KILL`, a failover that closed it) is sent once more
    /// on a freshly looked-up connection, since every script is safe to run
    /// twice; the `bool` says it was (see `Reply::repeated`). A timeout is
    /// not retried.
    pub(crate) async fn run(
        &self,
        what: &(dyn Fn() -> String + Sync),
        call: &ScriptCall,
        wait: Option<(u32, Duration)>,
    ) -> Result<((Value, Option<u32>), bool), BackendError> {
        match self.attempt(what, call, wait).await? {
            Ok(reply) => Ok((reply, false)),
            Err(first) => {
                tracing::debug!(call = %what(), error = %first,
                    "Redis connection to the Sentinel primary dropped; retrying once on a fresh connection");
                match self.attempt(what, call, wait).await? {
                    Ok(reply) => Ok((reply, true)),
                    Err(e) => Err(from_redis(&what(), e)),
                }
            }
        }
    }

    /// One attempt: the reply, or (inner `Err`) the error of a connection
    /// that dropped before an answer came (the call may or may not have
    /// run), or (outer `Err`) any other failure.
    async fn attempt(
        &self,
        what: &(dyn Fn() -> String + Sync),
        call: &ScriptCall,
        wait: Option<(u32, Duration)>,
    ) -> Result<Result<(Value, Option<u32>), redis::RedisError>, BackendError> {
        let mut conn = self.connection().await?;
        let limit = self.command_timeout + wait.map_or(Duration::ZERO, |(_, t)| t);
        match tokio::time::timeout(limit, super::invoke(&mut conn, call, wait)).await {
            Ok(Ok(reply)) => Ok(Ok(reply)),
            Ok(Err(e)) => {
                let demoted =
                    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
                let dropped = super::connection_lost(&e);
                if demoted || dropped || redis_kind(&e).is_transient() || e.is_unrecoverable_error()
                {
                    // A failover, a restart or a demoted primary: look it up
                    // again next time.
                    self.forget();
                }
                if dropped {
                    Ok(Err(e))
                } else {
                    Err(from_redis(&what(), e))
                }
            }
            Err(_) => {
                self.forget();
                Err(timed_out(&what(), limit))
            }
        }
    }
}

/// The address of the server `client` connects to (`host:port`).
fn address(client: &redis::Client) -> String {
    client.get_connection_info().addr().to_string()
}

/// An error of the Sentinel lookup other than an unknown master: no
/// sentinel answered (transient), or an address is not a sentinel (config).
fn lookup_error(what: &str, e: redis::RedisError) -> BackendError {
    if e.kind() == redis::ErrorKind::InvalidClientConfig {
        return config(format!("{what}: {e}"));
    }
    let kind = match redis_kind(&e) {
        BackendErrorKind::Other => BackendErrorKind::Unavailable,
        kind => kind,
    };
    BackendError::new(
        kind,
        format!("{what}: no sentinel named a reachable primary: {e}"),
    )
    .with_source(e)
}
