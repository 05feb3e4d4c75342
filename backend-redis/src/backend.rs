//! [`RedisBackend`]: the [`LockBackend`] over a deadpool-redis pool.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool::managed::{Pool as ManagedPool, Status};
use deadpool_redis::{Manager, Pool, Runtime};
use distlock::{
    Acquire, BackendError, BackendErrorKind, Capabilities, Extend, LockBackend, LockInfo, LockKey,
    LockToken, RaiseFence, Release, ReleaseWatch, Waiter, WaiterId,
};
use redis::AsyncConnectionConfig;

use crate::command::{Commands, Reply};
use crate::config::RedisConfig;
use crate::errors::{config, config as config_error, from_redis};
use crate::keys::{KeyLayout, LockKeys};
use crate::pool::{CheckIdleManager, Pools};
use crate::scripts::{self, ScriptArgs, ScriptCall};
use crate::subscriber::Subscriber;
use crate::topology::{pubsub::Source, Remote};

/// A distlock backend on one Redis server (or a Redis-compatible one).
///
/// Each operation is **one round trip**: a Lua script run with `EVALSHA`
/// (sent again as `EVAL` with the script's body after `NOSCRIPT`, so a lost
/// script cache never fails a call). The pool checks a connection
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
/// | `P` `billing{user:42}:fence` | the last fencing token (`INCR`) | [`fence_retention`](RedisConfig::fence_retention) (default one day) after the name's last acquire |
/// | `P` `billing{user:42}:owner` | the owner label, if any | with the lease |
/// | `P` `billing{user:42}:tombstone:TOKEN` | a release found the lock not held by `TOKEN` | after [`RELEASE_TOMBSTONE_TTL`](crate::RELEASE_TOMBSTONE_TTL) |
/// | `P` `billing{user:42}:waiters` | the line of waiters: a sorted set of their tokens, scored by the server time of joining (µs) | [`WAITER_LEASE`](distlock::WAITER_LEASE) (500 ms) after the last join or renewal |
/// | `P` `billing{user:42}:leases` | hash `TOKEN` → `LEASE_END_MS BACKEND WAITER CLAIM_MS` | as `:waiters` |
///
/// All keys of a lock (and its channels) share the `{…}` hash tag, so they
/// are in one Redis Cluster slot.
///
/// # The line of waiters
///
/// With [`waiter_queue`](RedisConfig::waiter_queue) (the default) and the
/// release subscriber, a `lock()` call that keeps waiting joins the lock's
/// line ([`LockBackend::try_acquire_queued`], `acquire_queued.lua`) and
/// keeps its place by calling again within the waiter lease. A release
/// with a live waiter in line does not free the lock: it sets the lock key
/// to that waiter's token for a claim window of one waiter lease, counts
/// the fence, and publishes `ENCODED-KEY WAITER` on the lock key +
/// `:grant:` + the waiter's backend id (a random number drawn once per
/// backend and shared by its clones), so only that backend's subscriber
/// hears of it; a release by this backend wakes its own waiter directly.
/// The waiter then claims the lock with one more call (full TTL, the fence
/// of the handover). A release by a token that is only in line gives its
/// place back. The uncontended path is unchanged, except that a release
/// probes for a line that does not exist (`PTTL` of the `:waiters` key;
/// `ZRANGE … 0 0` reads the head only when the key exists).
///
/// A missing fence key (a name's first use, its expiry, or data lost by a
/// restart without persistence or a failover) starts from the server's
/// `TIME` in microseconds, so fencing tokens keep increasing across expiry
/// as long as the server clock did not step back by more than the
/// retention, and names no longer used leave Redis after it.
///
/// The acquire script refuses a token with a tombstone: an acquire that
/// reaches Redis after its own release (it was cancelled in flight and the
/// background release, on a fresh connection, overtook it) cannot take the
/// lock. A lock key without an expiry was not written by distlock: acquire,
/// extend and inspect report it as a
/// [`WrongType`](distlock::BackendErrorKind::WrongType) error naming the
/// key, not as a lock held forever.
///
/// # Release notifications
///
/// (For waiters in the line of waiters, see above: a release that hands the
/// lock over publishes only the grant, to the waiter's backend.) A release
/// that hands it to nobody publishes the encoded key (`billing{user:42}`, without the
/// prefix) on the lock's own channel, the lock key + `:released`
/// (`distlock:billing{user:42}:released`). Each backend keeps **one**
/// subscriber connection, started by the first waiter; it subscribes to a
/// lock's channel while this backend has waiters for that lock (so a process
/// only hears about locks it waits for), re-subscribes with backoff after a
/// disconnect, and wakes one waiter per release through a
/// [`distlock::ReleaseHub`]. Waiters also poll with backoff, so a lost
/// message only delays them, never past the holder's lease.
///
/// Redis delivers a message to a channel's subscribers in a fixed order, so
/// among several processes waiting for one lock the first subscriber would
/// win nearly every handoff. When a waiter of this backend acquires, the
/// subscriber therefore moves its subscription of that lock's channel to
/// the back of that order (`UNSUBSCRIBE` + `SUBSCRIBE` in the background,
/// while this process holds the lock), and handoffs rotate among the
/// waiting processes. Moves of many names that wait together are sent as
/// one `UNSUBSCRIBE` and one `SUBSCRIBE` of all their channels, after any
/// new subscriptions, so a waiter's watch never waits behind the moves of
/// other names.
///
/// # Connections
///
/// With its own pool (`from_url`, `from_config`), the operations of a
/// backend share one multiplexed connection (requests pipeline on it, so
/// concurrency is not capped at the pool size). While there is none (the
/// first call, after a failure, or after
/// [`CHECK_IDLE_AFTER`](crate::CHECK_IDLE_AFTER) unused, when it is checked
/// with `PING`) one caller opens or checks it and concurrent callers wait
/// for that one, so a backend holds one connection for operations however
/// many calls arrive at once. A connection that fails or times out is
/// replaced at the next call. A call whose connection is found dead (Redis
/// restarted, `CLIENT KILL`) is sent once more on a fresh connection (with
/// Sentinel to the primary looked up again; the Cluster client resends by
/// itself) (every
/// script is safe to run twice; a release sent again that finds the lock
/// gone is reported as a transient `Unavailable` error, since the first
/// attempt may have released it). A pool handed to
/// `from_pool` is checked out for each operation.
///
/// # Errors and timeouts
///
/// Every call finishes within about `pool_wait_timeout + connect_timeout +
/// command_timeout` (plus the [`replica_ack`](RedisConfig::replica_ack)
/// timeout for acquire and extend when it is set; twice that when it is
/// sent again after its connection dropped), even if Redis hangs. Refused or broken connections are
/// [`Unavailable`](distlock::BackendErrorKind::Unavailable), late answers
/// [`Timeout`](distlock::BackendErrorKind::Timeout), a pool that stays busy
/// [`PoolExhausted`](distlock::BackendErrorKind::PoolExhausted); passing
/// server states (`LOADING`, `BUSY`, `MASTERDOWN`, `READONLY`,
/// `NOREPLICAS`, `OOM`, `MISCONF`, …) are `Unavailable` too (all
/// transient); `WRONGPASS`/`NOAUTH` are `Auth`, `NOPERM` is `Permission`,
/// a lock key of another type or without expiry is `WrongType`. The full
/// table of Redis answers is in the README ("Server errors"). A connection
/// that failed or timed out is dropped from the pool, not reused; after a
/// broken connection the idle pooled ones are dropped as well, so only
/// calls already in flight when Redis restarts can fail.
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    /// The single server's calls; `None` for the other topologies.
    commands: Option<Commands>,
    /// Sentinel or Cluster (see `crate::topology`).
    remote: Option<Remote>,
    /// `WAIT` after acquire and extend: (replicas, timeout).
    replica_ack: Option<(u32, Duration)>,
    /// Release with `SPUBLISH` (cluster: sharded pub/sub).
    sharded: bool,
    layout: KeyLayout,
    subscriber: Subscriber,
    description: String,
    /// The server address, for [`LockBackend::identity`].
    identity: String,
    /// [`RedisConfig::fence_retention`] in ms, as the acquire script wants it.
    fence_retention_ms: String,
    /// [`RedisConfig::waiter_queue`].
    waiter_queue: bool,
    /// This backend's id (shared by clones): its grant channels end with
    /// it, and the release script names it with the waiter it handed the
    /// lock to.
    backend_id: u64,
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
        if !config.topology.is_single() {
            let (remote, source) = crate::topology::build(config)?;
            return Self::assemble(None, Some(remote), Some(source), config);
        }
        // With TLS files (CA, client certificate) read into the settings.
        let info = config.client_connection_info()?;
        let connection = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout()));
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
        Self::assemble(
            Some(Pools::Own(pool)),
            None,
            Some(Source::Client(client)),
            config,
        )
    }

    /// A backend over an existing pool. The key prefix and the timeouts come
    /// from `config` (its `pool_size` is ignored: the pool keeps its own
    /// size and timeouts, and this backend adds its own bounds on top), and
    /// the release subscriber connects to `config.url`.
    ///
    /// Single servers only: a `config` with another
    /// [`topology`](RedisConfig::topology) is refused with a
    /// [`Config`](BackendErrorKind::Config) error (use
    /// [`from_config`](Self::from_config); a deadpool-redis pool cannot
    /// follow a failover or route by slot).
    pub fn from_pool(pool: Pool, config: &RedisConfig) -> Result<Self, BackendError> {
        config.validate()?;
        if !config.topology.is_single() {
            return Err(config_error(format!(
                "from_pool serves a single server; the {} topology needs from_config",
                config.topology.name()
            )));
        }
        install_crypto_provider();
        let client = redis::Client::open(config.client_connection_info()?)
            .map_err(|e| from_redis("building the pub/sub client", e))?;
        Self::assemble(
            Some(Pools::Given(pool)),
            None,
            Some(Source::Client(client)),
            config,
        )
    }

    fn assemble(
        pool: Option<Pools>,
        remote: Option<Remote>,
        client: Option<Source>,
        config: &RedisConfig,
    ) -> Result<Self, BackendError> {
        let sharded = matches!(remote, Some(Remote::Cluster(_)));
        let layout = KeyLayout::new(&config.key_prefix)?;
        // Random, not secret: it only addresses grant messages.
        let backend_id = WaiterId::generate().to_u64();
        let subscriber =
            Subscriber::new(client, layout.clone(), config.connect_timeout, backend_id);
        let endpoint = endpoint(&config.connection_info()?);
        Ok(Self {
            inner: Arc::new(Inner {
                commands: pool.map(|pool| Commands {
                    pool,
                    checkout_timeout: config.pool_wait_timeout + config.connect_timeout,
                    command_timeout: config.command_timeout,
                    endpoint,
                }),
                remote,
                replica_ack: config.replica_ack.map(|a| (a.replicas, a.timeout)),
                sharded,
                layout,
                subscriber,
                description: config.redacted_url(),
                identity: config.server_identity()?,
                fence_retention_ms: config.fence_retention.as_millis().to_string(),
                waiter_queue: config.waiter_queue,
                backend_id,
            }),
        })
    }

    /// The connection pool's state (shared by all clones). For the
    /// Sentinel and Cluster topologies: size 1 once the (multiplexed)
    /// connection is open, else 0.
    pub fn pool_status(&self) -> Status {
        match (&self.inner.commands, &self.inner.remote) {
            (Some(commands), _) => commands.pool.status(),
            (None, Some(remote)) => remote.status(),
            (None, None) => Status {
                max_size: 0,
                size: 0,
                available: 0,
                waiting: 0,
            },
        }
    }

    /// The deployment this backend talks to.
    pub fn topology_name(&self) -> &'static str {
        match &self.inner.remote {
            None => "single",
            Some(Remote::Sentinel(_)) => "sentinel",
            Some(Remote::Cluster(_)) => "cluster",
        }
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

    /// This backend's id, as 16 hex digits: the tail of its grant channels
    /// (see [`grant_channel`](Self::grant_channel)). Drawn at random when
    /// the backend is built; clones share it.
    pub fn backend_id(&self) -> String {
        format!("{:016x}", self.inner.backend_id)
    }

    /// The pub/sub channel on which `key` is handed to this backend's
    /// waiters (the lock key + `:grant:` + [`backend_id`](Self::backend_id)).
    pub fn grant_channel(&self, key: &LockKey) -> String {
        self.inner.layout.grant_channel(key, self.inner.backend_id)
    }

    /// The channels the subscriber connection listens to right now: per
    /// lock name this backend has waiters for, its release channel and/or
    /// (for waiters in the line) its grant channel (dropped about a second
    /// after the last waiter of a name leaves).
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

    /// Whether waiting calls use the line of waiters: configured, and the
    /// release subscriber (which hears the grants) exists.
    fn queue_enabled(&self) -> bool {
        self.inner.waiter_queue && self.inner.subscriber.enabled()
    }

    /// One release round trip (`release.lua`); `give_back` also leaves the
    /// token's tombstone when the token holds the lock
    /// ([`LockBackend::give_back`]).
    async fn run_release(
        &self,
        key: &LockKey,
        token: &LockToken,
        give_back: bool,
    ) -> Result<Release, BackendError> {
        // The keys and arguments in one buffer (the hot path: no string
        // per key).
        use crate::keys::{
            CHANNEL_SUFFIX, FENCE_SUFFIX, LEASES_SUFFIX, OWNER_SUFFIX, TOMBSTONE_INFIX,
            WAITERS_SUFFIX,
        };
        let lock = self.inner.layout.lock_key(key);
        let token_hex = token.as_hex();
        let mut items = ScriptArgs::with_capacity(
            7 * lock.len() + 2 * token_hex.len() + key.encoded().len() + 96,
            13,
        );
        items.push(&[&lock]);
        items.push(&[&lock, OWNER_SUFFIX]);
        items.push(&[&lock, TOMBSTONE_INFIX, token_hex]);
        items.push(&[&lock, FENCE_SUFFIX]);
        items.push(&[&lock, WAITERS_SUFFIX]);
        items.push(&[&lock, LEASES_SUFFIX]);
        items.end_keys();
        items.push(&[token_hex]);
        items.push(&[&lock, CHANNEL_SUFFIX]);
        items.push(&[key.encoded()]);
        items.push(&[RELEASE_TOMBSTONE_TTL_MS]);
        // Cluster: SPUBLISH (sharded pub/sub, to the lock's shard only).
        items.push(&[if self.inner.sharded { "s" } else { "" }]);
        items.push(&[&self.inner.fence_retention_ms]);
        if give_back {
            items.push(&["g"]);
        }
        let call = scripts::RELEASE.call_with(items);
        let reply = self.run("release", &lock, &call, None).await?;
        let outcome = scripts::parse_release(&reply.value)?;
        if outcome == scripts::Released::NotHeld && reply.repeated {
            // The first attempt may have released the lock before its
            // connection dropped; "not held" would be a guess either way.
            return Err(BackendError::new(
                BackendErrorKind::Unavailable,
                format!(
                    "release {lock}: the connection dropped before the answer, and the \
                     release sent again found the lock not held: the first attempt \
                     released it, or the lease had already ended"
                ),
            ));
        }
        Ok(match outcome {
            scripts::Released::Freed => {
                // Waiters of this backend (of any Locker on it) hear of the
                // release at once, not only through the pub/sub message.
                self.inner.subscriber.hub().notify(key.encoded());
                Release::Released
            }
            scripts::Released::HandedOver { backend, waiter } => {
                if backend == self.inner.backend_id {
                    // Our own waiter: wake it now, not after the pub/sub hop.
                    self.inner
                        .subscriber
                        .hub()
                        .notify_waiter(key.encoded(), waiter);
                }
                Release::Released
            }
            scripts::Released::NotHeld => Release::NotHeld,
        })
    }

    /// Runs an acquire script (`call`, for `token` on `key`, whose lock key
    /// is `lock`), with `WAIT` when [`replica_ack`](RedisConfig::replica_ack)
    /// is set: an acquisition too few replicas acknowledged is given back
    /// (best effort) and reported as an error.
    async fn run_acquire(
        &self,
        key: &LockKey,
        token: &LockToken,
        lock: &str,
        call: &ScriptCall,
    ) -> Result<Acquire, BackendError> {
        let wait = self.inner.replica_ack;
        let reply = self.run("acquire", lock, call, wait).await?;
        let outcome = scripts::parse_acquire(&reply.value)?;
        if let (Acquire::Acquired { .. }, Some((needed, timeout)), Some(acked)) =
            (&outcome, wait, reply.acked)
        {
            if acked < needed {
                // Not safe across a failover: give it back (best effort;
                // the lease expires anyway).
                let given_back = self.release(key, token).await;
                return Err(crate::topology::replication_incomplete(
                    "acquire",
                    lock,
                    acked,
                    needed,
                    timeout,
                    given_back.is_ok(),
                ));
            }
        }
        Ok(outcome)
    }

    /// Runs one script call on the lock's primary, within bounds, then
    /// `WAIT replicas timeout` pipelined on the same connection when `wait`
    /// is given. `op` and `lock_key` name the call in errors.
    async fn run(
        &self,
        op: &str,
        lock_key: &str,
        call: &ScriptCall,
        wait: Option<(u32, Duration)>,
    ) -> Result<Reply, BackendError> {
        if let Some(commands) = &self.inner.commands {
            return commands.run(op, lock_key, call, wait).await;
        }
        let Some(remote) = &self.inner.remote else {
            return Err(config_error("a backend without a connection"));
        };
        let what = || format!("{op} {lock_key}");
        let ((value, acked), repeated) = remote.run(&what, call, wait).await?;
        Ok(Reply {
            value,
            repeated,
            acked,
        })
    }
}

/// The server a connection goes to, as `host:port` (or the socket path);
/// never the credentials.
fn endpoint(info: &redis::ConnectionInfo) -> String {
    match info.addr() {
        redis::ConnectionAddr::Tcp(host, port)
        | redis::ConnectionAddr::TcpTls { host, port, .. } => {
            format!("{host}:{port}")
        }
        redis::ConnectionAddr::Unix(path) => path.display().to_string(),
        _ => "the configured server".to_owned(),
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

/// [`RELEASE_TOMBSTONE_TTL`](crate::RELEASE_TOMBSTONE_TTL) in ms, as the
/// release script wants it (a test checks that they agree).
const RELEASE_TOMBSTONE_TTL_MS: &str = "60000";

#[test]
fn release_tombstone_ttl_ms_agrees() {
    assert_eq!(
        RELEASE_TOMBSTONE_TTL_MS,
        crate::RELEASE_TOMBSTONE_TTL.as_millis().to_string()
    );
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
            .with_raise_fence(true)
            .with_waiter_queue(self.queue_enabled())
    }

    async fn try_acquire(
        &self,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
    ) -> Result<Acquire, BackendError> {
        // The keys and arguments in one buffer (the hot path: no string
        // per key).
        let lock = self.inner.layout.lock_key(key);
        let token_hex = token.as_hex();
        let ttl = ttl_ms(ttl)?.to_string();
        let mut items = ScriptArgs::with_capacity(
            4 * lock.len() + 64 + 2 * token_hex.len() + ttl.len() + owner.map_or(0, str::len) + 24,
            8,
        );
        items.push(&[&lock]);
        items.push(&[&lock, crate::keys::FENCE_SUFFIX]);
        items.push(&[&lock, crate::keys::OWNER_SUFFIX]);
        items.push(&[&lock, crate::keys::TOMBSTONE_INFIX, token_hex]);
        items.end_keys();
        items.push(&[token_hex]);
        items.push(&[&ttl]);
        items.push(&[&self.inner.fence_retention_ms]);
        if let Some(owner) = owner {
            items.push(&[owner]);
        }
        let call = scripts::ACQUIRE.call_with(items);
        let outcome = self.run_acquire(key, token, &lock, &call).await?;
        if matches!(outcome, Acquire::Acquired { .. })
            && self.inner.subscriber.hub().is_watched(key.encoded())
        {
            // A waiter of this process won a handoff: let the other
            // processes hear of the next release first.
            self.inner.subscriber.rotate(key);
        }
        Ok(outcome)
    }

    /// One round trip (`acquire_queued.lua`, see "The line of waiters"
    /// above). Without the line ([`RedisConfig::waiter_queue`] off, or no
    /// release subscriber) it is [`try_acquire`](LockBackend::try_acquire).
    /// `waiter.lease` must be from 1 ms to [`MAX_TTL`](distlock::MAX_TTL)
    /// (a [`Config`](BackendErrorKind::Config) error otherwise). Never
    /// moves a release subscription (the server orders the waiters).
    async fn try_acquire_queued(
        &self,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
        waiter: &Waiter,
    ) -> Result<Acquire, BackendError> {
        if !self.queue_enabled() {
            return self.try_acquire(key, token, ttl, owner).await;
        }
        let keys = self.keys(key);
        let mut args = vec![
            token.as_hex().to_owned(),
            ttl_ms(ttl)?.to_string(),
            self.inner.fence_retention_ms.clone(),
            format!("{:016x}", self.inner.backend_id),
            waiter.id.as_hex(),
            ttl_ms(waiter.lease)?.to_string(),
            key.encoded().to_owned(),
            if self.inner.sharded { "s" } else { "" }.to_owned(),
        ];
        if let Some(owner) = owner {
            args.push(owner.to_owned());
        }
        let lock = keys.lock.clone();
        let tombstone = keys.tombstone(token);
        let call = scripts::ACQUIRE_QUEUED.call(
            vec![
                keys.lock,
                keys.fence,
                keys.owner,
                tombstone,
                keys.waiters,
                keys.leases,
            ],
            args,
        );
        self.run_acquire(key, token, &lock, &call).await
    }

    /// Without the line, [`watch`](LockBackend::watch). With it: registers
    /// `waiter`'s own wake-up and subscribes to `key`'s grant channel of
    /// this backend; woken by a handover to `waiter`, by a release of `key`
    /// heard by this backend, and after the subscriber reconnected.
    async fn watch_queued(
        &self,
        key: &LockKey,
        waiter: &Waiter,
    ) -> Result<Option<ReleaseWatch>, BackendError> {
        if !self.queue_enabled() {
            return self.watch(key).await;
        }
        Ok(self.inner.subscriber.watch_grant(key, waiter.id).await)
    }

    async fn extend(
        &self,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
    ) -> Result<Extend, BackendError> {
        let keys = self.keys(key);
        let args = vec![token.as_hex().to_owned(), ttl_ms(ttl)?.to_string()];
        let lock = keys.lock.clone();
        let call = scripts::EXTEND.call(vec![keys.lock, keys.owner], args);
        let wait = self.inner.replica_ack;
        let reply = self.run("extend", &lock, &call, wait).await?;
        let extended = scripts::parse_flag("extend", &reply.value)?;
        if let (true, Some((needed, timeout)), Some(acked)) = (extended, wait, reply.acked) {
            if acked < needed {
                return Err(crate::topology::replication_incomplete(
                    "extend", &lock, acked, needed, timeout, false,
                ));
            }
        }
        Ok(if extended {
            Extend::Extended
        } else {
            Extend::NotHeld
        })
    }

    async fn release(&self, key: &LockKey, token: &LockToken) -> Result<Release, BackendError> {
        self.run_release(key, token, false).await
    }

    /// A release that also leaves the token's tombstone when the token
    /// holds the lock (`release.lua` always leaves it when it does not), so
    /// a late copy of any earlier call with this token is refused.
    async fn give_back(&self, key: &LockKey, token: &LockToken) -> Result<Release, BackendError> {
        self.run_release(key, token, true).await
    }

    async fn inspect(&self, key: &LockKey) -> Result<LockInfo, BackendError> {
        let keys = self.keys(key);
        let lock = keys.lock.clone();
        let call = scripts::INSPECT.call(vec![keys.lock, keys.fence, keys.owner], vec![]);
        let reply = self.run("inspect", &lock, &call, None).await?;
        scripts::parse_inspect(&reply.value)
    }

    async fn watch(&self, key: &LockKey) -> Result<Option<ReleaseWatch>, BackendError> {
        Ok(self.inner.subscriber.watch(key).await)
    }

    /// One round trip (`raise_fence.lua`): only while `token` holds the
    /// lock, sets the fence key to `max(fence, at_least)`. `at_least` must
    /// fit Redis integers (at most `i64::MAX`).
    async fn raise_fence(
        &self,
        key: &LockKey,
        token: &LockToken,
        at_least: u64,
    ) -> Result<RaiseFence, BackendError> {
        if i64::try_from(at_least).is_err() {
            return Err(config(format!(
                "fencing token {at_least} is above what a Redis counter holds"
            )));
        }
        let keys = self.keys(key);
        let lock = keys.lock.clone();
        let call = scripts::RAISE_FENCE.call(
            vec![keys.lock, keys.fence],
            vec![token.as_hex().to_owned(), at_least.to_string()],
        );
        let reply = self.run("raise_fence", &lock, &call, None).await?;
        scripts::parse_raise_fence(&reply.value)
    }

    /// `redis://host:port` (or `redis+unix://path`) of the server, without
    /// credentials, database or key prefix: two backends on one server are
    /// one failure domain, whatever their prefixes.
    fn identity(&self) -> Option<String> {
        Some(self.inner.identity.clone())
    }
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.pool_status();
        f.debug_struct("RedisBackend")
            .field("url", &self.inner.description)
            .field("topology", &self.topology_name())
            .field("prefix", &self.inner.layout.prefix())
            .field("pool_size", &status.size)
            .field("pool_max_size", &status.max_size)
            .field("waiters", &self.registered_waiters())
            .finish()
    }
}

#[cfg(all(test, feature = "testkit"))]
mod tests {
    use super::*;
    use crate::testkit::RedisServer;
    use distlock::{LockOptions, Locker};
    use tokio::time::Instant;

    /// Concurrent operations pipeline on one multiplexed connection instead
    /// of each holding a pooled connection for its round trip (which capped
    /// a backend at `pool_size` requests in flight).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_operations_share_one_connection() {
        let backend = RedisBackend::from_url(RedisServer::shared().url()).unwrap();
        let warm = LockKey::new("pool-test", "warm").unwrap();
        backend.inspect(&warm).await.unwrap();
        assert_eq!(backend.pool_status().size, 1);

        let run = std::process::id();
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let backend = backend.clone();
                tokio::spawn(async move {
                    let key = LockKey::new("pool-test", format!("{run}:{i}")).unwrap();
                    for _ in 0..20 {
                        let token = LockToken::generate();
                        let ttl = Duration::from_secs(5);
                        let got = backend.try_acquire(&key, &token, ttl, None).await.unwrap();
                        assert!(matches!(got, Acquire::Acquired { .. }), "{got:?}");
                        let released = backend.release(&key, &token).await.unwrap();
                        assert_eq!(released, Release::Released);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(backend.pool_status().size, 1, "{:?}", backend.pool_status());
    }

    async fn unsubscribe_calls(con: &mut redis::aio::MultiplexedConnection) -> i64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(con)
            .await
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_unsubscribe:calls="))
            .and_then(|v| v.split(',').next()?.parse().ok())
            .unwrap_or(0)
    }

    /// A waiter that wins a handoff moves its subscription behind the other
    /// processes' (so handoffs rotate: `UNSUBSCRIBE` + `SUBSCRIBE` while a
    /// sibling still waits, so it is not the idle pruning), and the moved
    /// subscription still hears releases.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_winning_waiter_moves_back_and_still_hears_releases() {
        let url = RedisServer::shared().url();
        let mut admin = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let holder_backend = RedisBackend::from_url(url).unwrap();
        let holder = Locker::new(holder_backend.clone());
        // Rotation is for waiters outside the line of waiters.
        let waiting =
            RedisBackend::from_config(&RedisConfig::new(url).with_waiter_queue(false)).unwrap();
        // Retries far apart: only a release message can wake the waiters in time.
        let opts = LockOptions::default()
            .with_retry(Duration::from_secs(5), Duration::from_secs(5))
            .with_wait_timeout(Duration::from_secs(20));
        let waiter = Locker::new(waiting.clone()).with_defaults(opts).unwrap();
        let name = format!("rotate:{}:{:?}", std::process::id(), Instant::now());
        let key = holder.key(&name).unwrap();
        let channel = waiting.release_channel(&key);

        let held = holder.lock(&name).await.unwrap();
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let (w, n) = (waiter.clone(), name.clone());
                tokio::spawn(async move {
                    let guard = w.lock(&n).await?;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    guard.release().await
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while waiting.subscribed_channels() == 0 {
            assert!(Instant::now() < deadline, "the waiter never subscribed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let moves_before = unsubscribe_calls(&mut admin).await;
        let released_at = Instant::now();
        held.release().await.unwrap();
        // The first waiter wins by the release message (its retry is 5 s
        // away), moves its subscription, then the second gets the lock.
        for task in tasks {
            let released = tokio::time::timeout(Duration::from_secs(3), task)
                .await
                .expect("the waiters were woken by releases")
                .unwrap()
                .unwrap();
            assert_eq!(released, Release::Released);
        }
        assert!(released_at.elapsed() < Duration::from_secs(3));
        assert!(
            unsubscribe_calls(&mut admin).await > moves_before,
            "the winning waiter never moved its subscription"
        );
        // Still one subscriber of the channel until pruning (a second later).
        let numsub: (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&channel)
            .query_async(&mut admin)
            .await
            .unwrap();
        assert!(numsub.1 <= 1, "{numsub:?}");
    }
}
