//! [`RedisBackend`]: the [`LockBackend`] over a deadpool-redis pool.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool::managed::{Pool as ManagedPool, Status};
use deadpool_redis::{Manager, Pool, Runtime};
use distlock::{
    Acquire, BackendError, BackendErrorKind, Capabilities, Extend, LockBackend, LockInfo, LockKey,
    LockToken, Release, ReleaseWatch,
};
use redis::{AsyncConnectionConfig, Value};

use crate::config::RedisConfig;
use crate::errors::{config, from_pool, from_redis, redis_kind, timed_out};
use crate::keys::{KeyLayout, LockKeys};
use crate::pool::{CheckIdleManager, Conn, Pools};
use crate::scripts;
use crate::subscriber::Subscriber;

/// A distlock backend on one Redis server (or a Redis-compatible one).
///
/// Each operation is **one round trip**: a Lua script run with `EVALSHA`
/// (reloaded transparently after `NOSCRIPT`). The pool checks a connection
/// with `PING` only when it sat unused for 5 s, so busy lockers pay one
/// round trip per operation. (A pool handed to
/// [`from_pool`](RedisBackend::from_pool) keeps deadpool-redis's check, an
/// `UNWATCH` + `PING` round trip on every checkout.) Clones are cheap and share the
/// connection pool and the release subscriber.
///
/// # Keys
///
/// With the backend prefix `P` (default `distlock:`) and a lock whose
/// [`LockKey::encoded`] form is `billing{user:42}`:
///
/// | key | holds | expires |
/// | --- | --- | --- |
/// | `P` `billing{user:42}` | the holder's random token | with the lease |
/// | `P` `billing{user:42}:fence` | the last fencing token (`INCR`) | never |
/// | `P` `billing{user:42}:owner` | the owner label, if any | with the lease |
///
/// All keys of a lock share the `{…}` hash tag, so they are in one Redis
/// Cluster slot. Fence keys never expire (one small string per lock name
/// ever used): that is what keeps fencing tokens increasing across expiry.
///
/// A missing fence key (a name's first use, or data lost by a restart
/// without persistence or a failover) starts from the server's `TIME` in
/// microseconds, so fencing tokens keep increasing across such losses as
/// long as the server clock does not step backwards.
///
/// # Release notifications
///
/// A release publishes the encoded key (`billing{user:42}`, without the
/// prefix) on the lock's own channel, the lock key + `:released`
/// (`distlock:billing{user:42}:released`). Each backend keeps **one**
/// subscriber connection, started by the first waiter; it subscribes to a
/// lock's channel while this backend has waiters for that lock (so a process
/// only hears about locks it waits for), re-subscribes with backoff after a
/// disconnect, and wakes one waiter per release through a
/// [`distlock::ReleaseHub`]. Waiters also poll with backoff, so a lost
/// message only delays them, never past the holder's lease.
///
/// # Errors and timeouts
///
/// Every call finishes within about `pool_wait_timeout + connect_timeout +
/// command_timeout`, even if Redis hangs. Refused or broken connections are
/// [`Unavailable`](distlock::BackendErrorKind::Unavailable), late answers
/// [`Timeout`](distlock::BackendErrorKind::Timeout), a pool that stays busy
/// [`PoolExhausted`](distlock::BackendErrorKind::PoolExhausted) (all
/// transient); `WRONGPASS`/`NOAUTH` are `Auth`, `NOPERM` is `Permission`,
/// a lock key of another type is `WrongType`. A connection that failed or
/// timed out is dropped from the pool, not reused; after a broken
/// connection the idle pooled ones are dropped as well (a Redis restart or
/// `CLIENT KILL` breaks them all), so only calls already in flight fail.
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pools,
    layout: KeyLayout,
    /// Bound on getting a pooled connection (wait + connect).
    checkout_timeout: Duration,
    command_timeout: Duration,
    subscriber: Subscriber,
    description: String,
}

impl RedisBackend {
    /// A backend for `url` with the default settings (see [`RedisConfig`]).
    /// Does not connect yet; the first operation does.
    pub fn from_url(url: &str) -> Result<Self, BackendError> {
        Self::from_config(&RedisConfig::new(url))
    }

    /// A backend with its own pool, built from `config` (validated first).
    /// Does not connect yet; the first operation does.
    pub fn from_config(config: &RedisConfig) -> Result<Self, BackendError> {
        config.validate()?;
        install_crypto_provider();
        // With TLS files (CA, client certificate) read into the settings.
        let info = config.client_connection_info()?;
        let connection = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.command_timeout));
        let manager = Manager::new_with_config(info.clone(), connection)
            .map_err(|e| from_redis("building the connection pool", e))?;
        let pool = ManagedPool::builder(CheckIdleManager::new(manager))
            .max_size(config.pool_size)
            .wait_timeout(Some(config.pool_wait_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.command_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| crate::errors::config(format!("building the connection pool: {e}")))?;
        let client =
            redis::Client::open(info).map_err(|e| from_redis("building the pub/sub client", e))?;
        Self::assemble(Pools::Own(pool), Some(client), config)
    }

    /// A backend over an existing pool. The key prefix and the timeouts come
    /// from `config` (its `pool_size` is ignored: the pool keeps its own
    /// size and timeouts, and this backend adds its own bounds on top), and
    /// the release subscriber connects to `config.url`.
    pub fn from_pool(pool: Pool, config: &RedisConfig) -> Result<Self, BackendError> {
        config.validate()?;
        install_crypto_provider();
        let client = redis::Client::open(config.client_connection_info()?)
            .map_err(|e| from_redis("building the pub/sub client", e))?;
        Self::assemble(Pools::Given(pool), Some(client), config)
    }

    fn assemble(
        pool: Pools,
        client: Option<redis::Client>,
        config: &RedisConfig,
    ) -> Result<Self, BackendError> {
        let layout = KeyLayout::new(&config.key_prefix)?;
        let subscriber = Subscriber::new(client, layout.clone(), config.connect_timeout);
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                layout,
                checkout_timeout: config.pool_wait_timeout + config.connect_timeout,
                command_timeout: config.command_timeout,
                subscriber,
                description: config.redacted_url(),
            }),
        })
    }

    /// The connection pool's state (shared by all clones).
    pub fn pool_status(&self) -> Status {
        self.inner.pool.status()
    }

    /// The key layout: prefix, key names and release channel.
    pub fn layout(&self) -> &KeyLayout {
        &self.inner.layout
    }

    /// The Redis keys of `key`.
    pub fn keys(&self, key: &LockKey) -> LockKeys {
        self.inner.layout.keys(key)
    }

    /// The pub/sub channel releases of `key` are published on (the lock key
    /// + `:released`).
    pub fn release_channel(&self, key: &LockKey) -> String {
        self.inner.layout.channel(key)
    }

    /// The release channels the subscriber connection listens to right now:
    /// one per lock name this backend has waiters for (dropped about a
    /// second after the last waiter of a name leaves).
    pub fn subscribed_channels(&self) -> usize {
        self.inner.subscriber.subscribed_count()
    }

    /// How many waiters of this backend are registered for release
    /// notifications (for tests: cancelled waiters must leave none behind).
    pub fn registered_waiters(&self) -> usize {
        self.inner.subscriber.hub().watcher_count()
    }

    /// Whether the release subscriber is subscribed right now. It starts
    /// with the first waiter, so this is false before any waiting.
    pub fn release_subscriber_connected(&self) -> bool {
        self.inner.subscriber.is_subscribed()
    }

    /// Gets a pooled connection, within the checkout bound.
    async fn connection(&self, what: &str) -> Result<Conn, BackendError> {
        let inner = &self.inner;
        let started = tokio::time::Instant::now();
        match tokio::time::timeout(inner.checkout_timeout, inner.pool.get()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(from_pool(what, e, started.elapsed())),
            Err(_) => {
                // A pool without its own wait timeout (from_pool) ends here
                // when every connection stays checked out.
                let status = inner.pool.status();
                if status.available == 0 && status.size >= status.max_size {
                    Err(BackendError::new(
                        BackendErrorKind::PoolExhausted,
                        format!(
                            "{what}: every pooled Redis connection stayed busy for {:?}",
                            started.elapsed()
                        ),
                    ))
                } else {
                    Err(timed_out(what, inner.checkout_timeout))
                }
            }
        }
    }

    /// Runs one script invocation on a pooled connection, within bounds.
    async fn run(
        &self,
        what: &str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<Value, BackendError> {
        let mut conn = self.connection(what).await?;
        let limit = self.inner.command_timeout;
        match tokio::time::timeout(limit, invocation.invoke_async::<Value>(&mut *conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                let kind = redis_kind(&e);
                if kind.is_transient() || e.is_unrecoverable_error() {
                    conn.discard();
                }
                if e.is_connection_dropped() || e.is_io_error() {
                    // What broke this connection (a restart, `CLIENT KILL`,
                    // a failover) most likely broke the idle ones too: open
                    // fresh ones instead of failing once per idle connection.
                    self.inner.pool.drop_idle();
                }
                Err(from_redis(what, e))
            }
            Err(_) => {
                // The connection may hang forever: never hand it out again.
                conn.discard();
                Err(timed_out(what, limit))
            }
        }
    }
}

/// Makes `ring` the process's rustls provider unless one is installed, so
/// `rediss://` works without further setup.
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

fn ttl_ms(ttl: Duration) -> Result<u64, BackendError> {
    let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return Err(config(format!("TTL {ttl:?} is under one millisecond")));
    }
    // Far beyond what PX accepts (and what Locker allows): refuse before
    // Redis answers with an opaque "out of range".
    if ttl > distlock::MAX_TTL {
        return Err(config(format!(
            "TTL {ttl:?} is above the maximum {:?}",
            distlock::MAX_TTL
        )));
    }
    Ok(ms)
}

#[async_trait]
impl LockBackend for RedisBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
            .with_fencing(true)
            .with_release_notify(self.inner.subscriber.enabled())
            .with_distributed(true)
            .with_tokio_clock(false)
    }

    async fn try_acquire(
        &self,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
    ) -> Result<Acquire, BackendError> {
        let keys = self.keys(key);
        let mut inv = scripts::ACQUIRE.prepare_invoke();
        inv.key(&keys.lock)
            .key(&keys.fence)
            .key(&keys.owner)
            .arg(token.as_hex())
            .arg(ttl_ms(ttl)?);
        if let Some(owner) = owner {
            inv.arg(owner);
        }
        let what = format!("acquire {}", keys.lock);
        scripts::parse_acquire(&self.run(&what, &inv).await?)
    }

    async fn extend(
        &self,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
    ) -> Result<Extend, BackendError> {
        let keys = self.keys(key);
        let mut inv = scripts::EXTEND.prepare_invoke();
        inv.key(&keys.lock)
            .key(&keys.owner)
            .arg(token.as_hex())
            .arg(ttl_ms(ttl)?);
        let what = format!("extend {}", keys.lock);
        Ok(
            if scripts::parse_flag("extend", &self.run(&what, &inv).await?)? {
                Extend::Extended
            } else {
                Extend::NotHeld
            },
        )
    }

    async fn release(&self, key: &LockKey, token: &LockToken) -> Result<Release, BackendError> {
        let keys = self.keys(key);
        let channel = format!("{}{}", keys.lock, crate::keys::CHANNEL_SUFFIX);
        let mut inv = scripts::RELEASE.prepare_invoke();
        inv.key(&keys.lock)
            .key(&keys.owner)
            .arg(token.as_hex())
            .arg(&channel)
            .arg(key.encoded());
        let what = format!("release {}", keys.lock);
        Ok(
            if scripts::parse_flag("release", &self.run(&what, &inv).await?)? {
                Release::Released
            } else {
                Release::NotHeld
            },
        )
    }

    async fn inspect(&self, key: &LockKey) -> Result<LockInfo, BackendError> {
        let keys = self.keys(key);
        let mut inv = scripts::INSPECT.prepare_invoke();
        inv.key(&keys.lock).key(&keys.fence).key(&keys.owner);
        let what = format!("inspect {}", keys.lock);
        scripts::parse_inspect(&self.run(&what, &inv).await?)
    }

    async fn watch(&self, key: &LockKey) -> Result<Option<ReleaseWatch>, BackendError> {
        Ok(self.inner.subscriber.watch(key).await)
    }
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.inner.pool.status();
        f.debug_struct("RedisBackend")
            .field("url", &self.inner.description)
            .field("prefix", &self.inner.layout.prefix())
            .field("pool_size", &status.size)
            .field("pool_max_size", &status.max_size)
            .field("waiters", &self.registered_waiters())
            .finish()
    }
}
