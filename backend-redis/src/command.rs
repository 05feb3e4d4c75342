//! Running one script call against the single server's pool, within
//! bounds: the checkout, the command timeout, the `EVAL` fallback after
//! `NOSCRIPT` (see [`crate::topology::invoke`], shared with Sentinel and
//! Cluster), the replica acknowledgement (`WAIT`), and one retry on a fresh
//! connection after the connection dropped.
//!
//! Connection management (which connection, when to replace it) is
//! [`crate::pool`]'s; this module only decides what to do with a call's
//! outcome.

use std::time::Duration;

use distlock::{BackendError, BackendErrorKind};
use redis::{RedisError, Value};

use crate::errors::{from_pool, from_redis, timed_out};
use crate::pool::{Conn, Pools};
use crate::scripts::ScriptCall;

/// The pool and the bounds every call runs within.
pub(crate) struct Commands {
    pub(crate) pool: Pools,
    /// Bound on getting a pooled connection (wait + connect).
    pub(crate) checkout_timeout: Duration,
    pub(crate) command_timeout: Duration,
    /// `host:port` (or the socket path) for connection errors.
    pub(crate) endpoint: String,
}

/// The answer to a call.
pub(crate) struct Reply {
    pub(crate) value: Value,
    /// Whether the call was sent twice (the first attempt's connection
    /// dropped, so the first may or may not have run).
    pub(crate) repeated: bool,
    /// How many replicas acknowledged (`WAIT`), when asked to wait.
    pub(crate) acked: Option<u32>,
}

/// How one attempt of a call ended.
enum Attempt {
    Done((Value, Option<u32>)),
    /// The connection dropped (or was already dead) before an answer came:
    /// the call may or may not have run.
    Dropped(RedisError),
    Failed(BackendError),
}

impl Commands {
    /// Runs `call`, then `WAIT replicas timeout` pipelined on the same
    /// connection when `wait` is given. `op` and `lock_key` name the call in
    /// errors (formatted only then).
    ///
    /// Every script is safe to run twice with the same arguments (acquire
    /// with the same token answers "acquired" with the same fence and
    /// renews the lease, never shortening it; extend
    /// sets the same expiry, inspect only reads, a release finds the lock
    /// gone), so a call whose connection dropped is sent once more on a
    /// fresh connection: after a Redis restart or `CLIENT KILL` the shared
    /// connection is dead, and the next call must not fail because of it.
    /// [`Reply::repeated`] tells the caller, for answers a repeat cannot
    /// give exactly (a repeated release that finds the lock gone may have
    /// released it the first time). A timeout is not retried (the call has
    /// used its time).
    pub(crate) async fn run(
        &self,
        op: &str,
        lock_key: &str,
        call: &ScriptCall,
        wait: Option<(u32, Duration)>,
    ) -> Result<Reply, BackendError> {
        let what = || format!("{op} {lock_key}");
        match self.attempt(op, lock_key, call, wait).await? {
            Attempt::Done((value, acked)) => Ok(Reply {
                value,
                repeated: false,
                acked,
            }),
            Attempt::Failed(e) => Err(e),
            Attempt::Dropped(first) => {
                tracing::debug!(op, lock = lock_key, error = %first,
                    "Redis connection dropped; retrying once on a fresh connection");
                match self.attempt(op, lock_key, call, wait).await? {
                    Attempt::Done((value, acked)) => Ok(Reply {
                        value,
                        repeated: true,
                        acked,
                    }),
                    Attempt::Failed(e) => Err(e),
                    Attempt::Dropped(e) => Err(from_redis(&what(), e)),
                }
            }
        }
    }

    async fn attempt(
        &self,
        op: &str,
        lock_key: &str,
        call: &ScriptCall,
        wait: Option<(u32, Duration)>,
    ) -> Result<Attempt, BackendError> {
        let what = || format!("{op} {lock_key}");
        let mut conn = self.connection(op, lock_key).await?;
        // The script's bound, plus the time `WAIT` may take.
        let limit = self.command_timeout + wait.map_or(Duration::ZERO, |(_, t)| t);
        let reply =
            tokio::time::timeout(limit, crate::topology::invoke(&mut *conn, call, wait)).await;
        Ok(match reply {
            Ok(Ok(value)) => Attempt::Done(value),
            Ok(Err(e)) if crate::topology::connection_lost(&e) => {
                conn.discard();
                // What broke this connection (a restart, `CLIENT KILL`, a
                // failover) most likely broke the idle ones too: open fresh
                // ones instead of failing once per idle connection.
                self.pool.drop_idle();
                Attempt::Dropped(e)
            }
            Ok(Err(e)) => {
                if e.is_timeout() || e.is_unrecoverable_error() {
                    conn.discard();
                }
                // A server reply (BUSY, LOADING, WRONGTYPE…) leaves the
                // connection usable. `MOVED`/`ASK`: this "single server" is
                // a cluster node.
                Attempt::Failed(
                    crate::topology::misrouted(&what(), &e)
                        .unwrap_or_else(|| from_redis(&what(), e)),
                )
            }
            Err(_) => {
                // The connection may hang forever: never hand it out again.
                conn.discard();
                Attempt::Failed(timed_out(&what(), limit))
            }
        })
    }

    /// Gets a pooled connection, within the checkout bound.
    async fn connection(&self, op: &str, lock_key: &str) -> Result<Conn, BackendError> {
        if let Some(conn) = self.pool.ready() {
            return Ok(conn);
        }
        // Connecting fails here: name the server ("Connection refused" alone
        // does not say which host and port were refused).
        let what = || format!("{op} {lock_key} (Redis at {})", self.endpoint);
        let started = tokio::time::Instant::now();
        match tokio::time::timeout(self.checkout_timeout, self.pool.get()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(from_pool(&what(), e, started.elapsed())),
            Err(_) => {
                // A pool without its own wait timeout (from_pool) ends here
                // when every connection stays checked out.
                let status = self.pool.status();
                if status.available == 0 && status.size >= status.max_size {
                    Err(BackendError::new(
                        BackendErrorKind::PoolExhausted,
                        format!(
                            "{}: every pooled Redis connection stayed busy for {:?}",
                            what(),
                            started.elapsed()
                        ),
                    ))
                } else {
                    Err(timed_out(&what(), self.checkout_timeout))
                }
            }
        }
    }
}
