//! A Redis backend for [`distlock`]: distributed locks with fencing
//! tokens, safe release and event-driven waiting on one Redis server.
//!
//! This crate is the only dependency an application needs: it re-exports
//! distlock's API ([`Locker`], [`LockOptions`], …) and the `redis` and
//! `deadpool_redis` crates it is built on.
//!
//! ```no_run
//! use std::time::Duration;
//! use distlock_redis::{LockOptions, Locker, RedisBackend};
//!
//! # #[tokio::main] async fn main() -> Result<(), distlock_redis::LockError> {
//! let backend = RedisBackend::from_url("redis://127.0.0.1:6379/0")?;
//! let locker = Locker::new(backend)
//!     .with_defaults(LockOptions::default().with_ttl(Duration::from_secs(30)))?;
//!
//! locker.with_lock("charge:order-1234", |lease| async move {
//!     // Hand lease.fence() to the store you write to, so it can refuse
//!     // writes from a holder whose lease ran out.
//!     println!("fencing token {}", lease.fence());
//! }).await?;
//! # Ok(()) }
//! ```
//!
//! Build the backend from a URL ([`RedisBackend::from_url`]), from a
//! [`RedisConfig`] loaded from a configuration file
//! ([`RedisBackend::from_config`]), or around a pool you already have
//! ([`RedisBackend::from_pool`]). `rediss://` URLs use TLS (rustls with the
//! `ring` provider and the Mozilla root certificates); `redis://user:pass@host/db`
//! selects an ACL user and a database.
//!
//! # What is stored, and what each operation costs
//!
//! See [`RedisBackend`] for the key layout and the release channel. Each
//! operation (acquire, a queued acquire, extend, release, inspect) is one `EVALSHA` of a Lua
//! script ([`ACQUIRE_LUA`] and its siblings); when Redis answers `NOSCRIPT`
//! (restart, `SCRIPT FLUSH`, failover) the call is sent again as `EVAL` with
//! the script's body, which also caches it.
//!
//! # Testing
//!
//! With the `testkit` feature, `testkit::RedisServer` gives tests a Redis
//! server: `DISTLOCK_REDIS_URL`, else a Docker container of
//! `DISTLOCK_REDIS_IMAGE`, else `redis-server` from `PATH`.

// Where other crates' docs link to this crate's items when its docs are
// not built beside theirs (otherwise rustdoc prints such links as plain
// text, without a warning).
#![doc(html_root_url = "https://docs.rs/distlock-redis/0.1.0")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backend;
mod command;
mod config;
mod errors;
mod keys;
mod pool;
mod scripts;
mod subscriber;
mod topology;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use backend::RedisBackend;
pub use config::{
    RedisConfig, DEFAULT_COMMAND_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_FENCE_RETENTION,
    DEFAULT_POOL_SIZE, DEFAULT_POOL_WAIT_TIMEOUT, MAX_FENCE_RETENTION, MIN_FENCE_RETENTION,
};
pub use keys::{
    KeyLayout, LockKeys, CHANNEL_SUFFIX, DEFAULT_KEY_PREFIX, FENCE_SUFFIX, GRANT_CHANNEL_INFIX,
    LEASES_SUFFIX, MAX_KEY_PREFIX_LEN, OWNER_SUFFIX, RELEASE_TOMBSTONE_TTL, TOMBSTONE_INFIX,
    WAITERS_SUFFIX,
};
pub use pool::CHECK_IDLE_AFTER;
pub use scripts::{ACQUIRE_LUA, ACQUIRE_QUEUED_LUA, EXTEND_LUA, INSPECT_LUA, RELEASE_LUA};
pub use topology::{ReplicaAck, Topology, DEFAULT_REPLICA_ACK_TIMEOUT};

#[doc(no_inline)]
pub use distlock::{
    async_trait, default_owner, Acquire, BackendError, BackendErrorKind, Capabilities, Extend,
    Guarded, Holder, Lease, LeaseEnd, LockBackend, LockError, LockGuard, LockInfo, LockKey,
    LockOptions, LockToken, Locker, Quorum, QuorumConfig, QuorumError, RaiseFence, Release,
    ReleaseHub, ReleaseWatch, TryLock, Waiter, WaiterId, MAX_ENCODED_KEY_LEN, MAX_FENCE,
    MAX_NAME_LEN, MAX_OWNER_LEN, MAX_PREFIX_LEN, MAX_TTL, MAX_WAIT_TIMEOUT, MIN_TTL, WAITER_LEASE,
};

/// The distlock core crate, for everything not re-exported above.
pub use distlock;

/// The connection pool crate this backend uses.
pub use deadpool_redis;

/// The Redis client crate this backend uses.
pub use redis;
