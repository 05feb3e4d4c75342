//! The connection pool: deadpool with a manager that keeps each lock
//! operation at one round trip.
//!
//! `deadpool_redis::Manager` checks every connection with `UNWATCH` + `PING`
//! each time it leaves the pool, which doubles the round trips of a lock
//! operation. [`CheckIdleManager`] only checks connections that sat unused
//! for [`CHECK_IDLE_AFTER`]; a connection that broke while in use is taken
//! out of the pool by the backend instead ([`Conn::discard`]).

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use deadpool::managed::{self, Metrics, Object, PoolError, RecycleResult, Status};
use redis::aio::MultiplexedConnection;
use redis::RedisError;

/// A pooled connection unused for longer than this is checked with a `PING`
/// before it is handed out.
pub const CHECK_IDLE_AFTER: Duration = Duration::from_secs(5);

/// Creates connections like `deadpool_redis::Manager`, but recycles recently
/// used ones without a round trip.
pub(crate) struct CheckIdleManager {
    inner: deadpool_redis::Manager,
}

impl CheckIdleManager {
    pub(crate) fn new(inner: deadpool_redis::Manager) -> Self {
        Self { inner }
    }
}

impl managed::Manager for CheckIdleManager {
    type Type = MultiplexedConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<MultiplexedConnection, RedisError> {
        managed::Manager::create(&self.inner).await
    }

    async fn recycle(
        &self,
        conn: &mut MultiplexedConnection,
        metrics: &Metrics,
    ) -> RecycleResult<RedisError> {
        if metrics.last_used() < CHECK_IDLE_AFTER {
            return Ok(());
        }
        managed::Manager::recycle(&self.inner, conn, metrics).await
    }
}

/// The pool a backend uses: its own, or one the application handed over.
pub(crate) enum Pools {
    Own(managed::Pool<CheckIdleManager>),
    Given(deadpool_redis::Pool),
}

impl Pools {
    pub(crate) async fn get(&self) -> Result<Conn, PoolError<RedisError>> {
        Ok(match self {
            Pools::Own(pool) => Conn::Own(pool.get().await?),
            Pools::Given(pool) => Conn::Given(pool.get().await?),
        })
    }

    /// Closes every idle connection; new ones are opened on demand.
    pub(crate) fn drop_idle(&self) {
        match self {
            Pools::Own(pool) => drop(pool.retain(|_, _| false)),
            Pools::Given(pool) => drop(pool.retain(|_, _| false)),
        }
    }

    pub(crate) fn status(&self) -> Status {
        match self {
            Pools::Own(pool) => pool.status(),
            Pools::Given(pool) => pool.status(),
        }
    }
}

/// A checked-out connection.
pub(crate) enum Conn {
    Own(Object<CheckIdleManager>),
    Given(deadpool_redis::Connection),
}

impl Conn {
    /// Takes a broken connection out of the pool and closes it.
    pub(crate) fn discard(self) {
        match self {
            Conn::Own(obj) => drop(Object::take(obj)),
            Conn::Given(conn) => drop(deadpool_redis::Connection::take(conn)),
        }
    }
}

impl Deref for Conn {
    type Target = MultiplexedConnection;

    fn deref(&self) -> &MultiplexedConnection {
        match self {
            Conn::Own(obj) => obj,
            Conn::Given(conn) => conn,
        }
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut MultiplexedConnection {
        match self {
            Conn::Own(obj) => obj,
            Conn::Given(conn) => conn,
        }
    }
}
