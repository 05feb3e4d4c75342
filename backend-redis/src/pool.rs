//! The connection pool: deadpool with a manager that keeps each lock
//! operation at one round trip, and multiplexed connections shared by
//! concurrent operations.
//!
//! `deadpool_redis::Manager` checks every connection with `UNWATCH` + `PING`
//! each time it leaves the pool, which doubles the round trips of a lock
//! operation. [`CheckIdleManager`] only checks connections that sat unused
//! for [`CHECK_IDLE_AFTER`].
//!
//! A pooled connection is a [`MultiplexedConnection`]: it pipelines any
//! number of concurrent requests. Holding it exclusively for a whole round
//! trip (deadpool's model) caps a backend at `pool_size` requests in flight
//! and loses the pipelining, so a checkout from the backend's own pool only
//! clones the connection handle and returns the pool slot at once
//! ([`Pools::get`]), and keeps using that one connection (as the `redis`
//! crate recommends for a multiplexed connection) while it is healthy and
//! busy: concurrent requests then share writes and reads instead of paying
//! a system call each on many connections. A connection that failed or timed
//! out is marked broken ([`Conn::discard`]) and replaced at the next
//! checkout; one unused for [`CHECK_IDLE_AFTER`] goes back through the
//! pool's check.
//!
//! Only one checkout at a time goes to the pool for a new shared connection
//! ([`Pools::get`] holds a lock while it opens or checks one); concurrent
//! callers wait for it and then share it, instead of each opening its own
//! connection. So a backend with its own pool holds one connection for
//! operations, however many calls arrive at once, including right after it
//! was created and after it sat idle.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics, PoolError, RecycleResult, Status};
use redis::aio::MultiplexedConnection;
use redis::RedisError;

/// A pooled connection unused for longer than this is checked with a `PING`
/// before it is handed out.
pub const CHECK_IDLE_AFTER: Duration = Duration::from_secs(5);

/// Creates connections like `deadpool_redis::Manager`, but recycles recently
/// used ones without a round trip.
pub(crate) struct CheckIdleManager {
    inner: deadpool_redis::Manager,
    /// The connection checkouts share while it is healthy and in use.
    current: Mutex<Option<Current>>,
    /// Held while a checkout opens or checks the next shared connection, so
    /// concurrent callers wait for that one instead of opening their own.
    opening: tokio::sync::Mutex<()>,
}

struct Current {
    conn: MultiplexedConnection,
    broken: Arc<AtomicBool>,
    last_used: Instant,
}

impl CheckIdleManager {
    pub(crate) fn new(inner: deadpool_redis::Manager) -> Self {
        Self {
            inner,
            current: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
        }
    }

    /// The shared connection, unless it broke or sat idle too long.
    fn current(&self) -> Option<Conn> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let c = current.as_mut()?;
        let now = Instant::now();
        if c.broken.load(Ordering::Acquire) || now.duration_since(c.last_used) >= CHECK_IDLE_AFTER {
            *current = None;
            return None;
        }
        c.last_used = now;
        Some(Conn::Own {
            conn: c.conn.clone(),
            broken: c.broken.clone(),
        })
    }

    fn set_current(&self, shared: &Shared) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        *current = Some(Current {
            conn: shared.conn.clone(),
            broken: shared.broken.clone(),
            last_used: Instant::now(),
        });
    }
}

/// A pooled multiplexed connection and the flag that retires it.
pub(crate) struct Shared {
    conn: MultiplexedConnection,
    broken: Arc<AtomicBool>,
}

impl managed::Manager for CheckIdleManager {
    type Type = Shared;
    type Error = RedisError;

    async fn create(&self) -> Result<Shared, RedisError> {
        Ok(Shared {
            conn: managed::Manager::create(&self.inner).await?,
            broken: Arc::default(),
        })
    }

    async fn recycle(&self, shared: &mut Shared, metrics: &Metrics) -> RecycleResult<RedisError> {
        if shared.broken.load(Ordering::Acquire) {
            return Err(managed::RecycleError::message(
                "the connection failed or timed out",
            ));
        }
        if metrics.last_used() < CHECK_IDLE_AFTER {
            return Ok(());
        }
        managed::Manager::recycle(&self.inner, &mut shared.conn, metrics).await
    }
}

/// The pool a backend uses: its own, or one the application handed over.
pub(crate) enum Pools {
    Own(managed::Pool<CheckIdleManager>),
    Given(deadpool_redis::Pool),
}

impl Pools {
    /// The shared connection if it can be used right away (no waiting, no
    /// round trip), so callers can skip their checkout timeout.
    pub(crate) fn ready(&self) -> Option<Conn> {
        match self {
            Pools::Own(pool) => pool.manager().current(),
            Pools::Given(_) => None,
        }
    }

    pub(crate) async fn get(&self) -> Result<Conn, PoolError<RedisError>> {
        Ok(match self {
            Pools::Own(pool) => {
                if let Some(conn) = pool.manager().current() {
                    return Ok(conn);
                }
                // One caller at a time gets the next shared connection; the
                // others find it current once they get the lock. (Cancel
                // safe: a dropped caller releases the lock.)
                let _opening = pool.manager().opening.lock().await;
                if let Some(conn) = pool.manager().current() {
                    return Ok(conn);
                }
                // Clone the handle and give the slot back at once: the
                // connection pipelines concurrent requests.
                let obj = pool.get().await?;
                pool.manager().set_current(&obj);
                Conn::Own {
                    conn: obj.conn.clone(),
                    broken: obj.broken.clone(),
                }
            }
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

/// A checked-out connection: a shared handle (own pool) or an exclusive
/// checkout (a pool the application handed over).
pub(crate) enum Conn {
    Own {
        conn: MultiplexedConnection,
        broken: Arc<AtomicBool>,
    },
    Given(deadpool_redis::Connection),
}

impl Conn {
    /// Takes a broken connection out of the pool: at once for an exclusive
    /// checkout, at its next checkout for a shared one.
    pub(crate) fn discard(self) {
        match self {
            Conn::Own { broken, .. } => broken.store(true, Ordering::Release),
            Conn::Given(conn) => drop(deadpool_redis::Connection::take(conn)),
        }
    }
}

impl Deref for Conn {
    type Target = MultiplexedConnection;

    fn deref(&self) -> &MultiplexedConnection {
        match self {
            Conn::Own { conn, .. } => conn,
            Conn::Given(conn) => conn,
        }
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut MultiplexedConnection {
        match self {
            Conn::Own { conn, .. } => conn,
            Conn::Given(conn) => conn,
        }
    }
}
