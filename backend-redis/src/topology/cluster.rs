//! Redis Cluster: one `cluster_async::ClusterConnection` (a multiplexed
//! connection per node, slot map, `MOVED`/`ASK` and retries handled by the
//! `redis` crate). A script routes by its first key, the lock key; all keys
//! of a lock share its hash tag.

use std::time::Duration;

use distlock::{BackendError, BackendErrorKind};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::Value;

use crate::scripts::ScriptCall;
use tokio::sync::OnceCell;

use crate::errors::{from_redis, timed_out};

/// How many times the cluster client retries a command after a redirect,
/// `TRYAGAIN`, `CLUSTERDOWN` or a broken connection (the crate's default is
/// 16); every call is also bounded by the backend's timeouts.
const RETRIES: u32 = 6;

/// The settings every cluster connection of a backend is built with.
#[derive(Clone)]
pub(crate) struct ClusterSettings {
    pub(crate) seeds: Vec<redis::ConnectionInfo>,
    pub(crate) certificates: Option<redis::TlsCertificates>,
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
    /// The client's bound on one answer (see `RedisConfig::response_timeout`).
    pub(crate) response_timeout: Duration,
}

impl ClusterSettings {
    /// A client builder with these settings.
    pub(crate) fn builder(&self) -> ClusterClientBuilder {
        let mut builder = ClusterClientBuilder::new(self.seeds.clone())
            .connection_timeout(self.connect_timeout)
            .response_timeout(self.response_timeout)
            .retries(RETRIES)
            .min_retry_wait(10)
            .max_retry_wait(500);
        if let Some(certs) = &self.certificates {
            builder = builder.certs(certs.clone());
        }
        builder
    }
}

/// How the backend reaches the primaries of a cluster.
pub(crate) struct ClusterRemote {
    client: ClusterClient,
    conn: OnceCell<ClusterConnection>,
    settings: ClusterSettings,
}

impl ClusterRemote {
    pub(crate) fn new(settings: ClusterSettings) -> Result<Self, BackendError> {
        let client = settings
            .builder()
            .build()
            .map_err(|e| from_redis("building the Redis Cluster client", e))?;
        Ok(Self {
            client,
            conn: OnceCell::new(),
            settings,
        })
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.conn.initialized()
    }

    /// The cluster connection, opened (and the servers checked) on first use.
    async fn connection(&self) -> Result<ClusterConnection, BackendError> {
        let limit = self.settings.connect_timeout + self.settings.command_timeout;
        let open = self.conn.get_or_try_init(|| async {
            let what = "connecting to the Redis Cluster";
            let mut conn = match tokio::time::timeout(
                self.settings.connect_timeout,
                self.client.get_async_connection(),
            )
            .await
            {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => return Err(not_a_cluster(what, e)),
                Err(_) => return Err(timed_out(what, self.settings.connect_timeout)),
            };
            check_sharded_pubsub(&mut conn, self.settings.command_timeout).await?;
            Ok(conn)
        });
        match tokio::time::timeout(limit, open).await {
            Ok(result) => result.cloned(),
            Err(_) => Err(timed_out("connecting to the Redis Cluster", limit)),
        }
    }

    pub(crate) async fn run(
        &self,
        what: &(dyn Fn() -> String + Sync),
        call: &ScriptCall,
        wait: Option<(u32, Duration)>,
    ) -> Result<(Value, Option<u32>), BackendError> {
        let mut conn = self.connection().await?;
        let limit = self.settings.command_timeout + wait.map_or(Duration::ZERO, |(_, t)| t);
        match tokio::time::timeout(limit, super::invoke(&mut conn, call, wait)).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) if redirected(&e) => Err(BackendError::new(
                BackendErrorKind::Unavailable,
                format!(
                    "{}: the slot is moving (a failover or resharding) and the client ran out \
                     of redirections: {e}",
                    what()
                ),
            )
            .with_source(e)),
            Ok(Err(e)) => Err(from_redis(&what(), e)),
            Err(_) => Err(timed_out(&what(), limit)),
        }
    }
}

/// A `MOVED`/`ASK` that reached us: the crate's retries ran out while the
/// slot changed hands (transient).
fn redirected(e: &redis::RedisError) -> bool {
    matches!(
        e.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::Moved | redis::ServerErrorKind::Ask)
    )
}

/// A failure to open the cluster connection: seeds that are not cluster
/// nodes are a configuration error.
pub(crate) fn not_a_cluster(what: &str, e: redis::RedisError) -> BackendError {
    let err = from_redis(what, e);
    if err.kind().is_transient() || err.kind() != distlock::BackendErrorKind::Other {
        return err;
    }
    // Refused for another reason (`cluster support disabled`, a sentinel
    // that does not know `CLUSTER SLOTS`): the seeds are not a cluster.
    BackendError::new(
        BackendErrorKind::Config,
        format!(
            "{what}: the seed nodes are not Redis Cluster nodes (use the single or sentinel \
             topology for them): {err}"
        ),
    )
}

/// Refuses servers without sharded pub/sub (before Redis 7.0): the release
/// script publishes with `SPUBLISH`.
async fn check_sharded_pubsub(
    conn: &mut ClusterConnection,
    timeout: Duration,
) -> Result<(), BackendError> {
    let what = "checking that the Redis Cluster has sharded pub/sub";
    let reply = tokio::time::timeout(
        timeout,
        redis::cmd("COMMAND")
            .arg("INFO")
            .arg("SPUBLISH")
            .query_async::<Vec<Value>>(conn),
    )
    .await;
    match reply {
        Ok(Ok(info)) if info.first().is_some_and(|v| *v != Value::Nil) => Ok(()),
        Ok(Ok(_)) => Err(BackendError::new(
            BackendErrorKind::Config,
            format!(
                "{what}: the server does not know SPUBLISH; distlock on Redis Cluster needs \
                 Redis 7.0 or later"
            ),
        )),
        Ok(Err(e)) => Err(from_redis(what, e)),
        Err(_) => Err(timed_out(what, timeout)),
    }
}
