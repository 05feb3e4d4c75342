//! An in-process [`LockBackend`] for distlock.
//!
//! Use it to test code that takes locks, and for locks that only one process
//! needs. It re-exports distlock's API ([`Locker`], [`LockOptions`], …), so
//! it can be the only distlock dependency of such code.
//!
//! Expiry follows tokio's clock, so under `tokio::time::pause()` a test can
//! let leases run out without sleeping (tests need tokio's `test-util`
//! feature for the paused clock, and `macros` + `rt` for `#[tokio::test]`):
//!
//! ```
//! use std::time::Duration;
//! use distlock_memory::{Locker, MemoryBackend, Release};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let locker = Locker::new(MemoryBackend::new());
//! let stale = locker
//!     .try_lock_with("job", |o| o.with_ttl(Duration::from_secs(30)))
//!     .await.unwrap().unwrap();
//!
//! tokio::time::advance(Duration::from_secs(31)).await; // no real waiting
//! let fresh = locker.try_lock("job").await.unwrap().expect("the lease ran out");
//! assert!(fresh.fence() > stale.fence());
//! assert_eq!(stale.release().await.unwrap(), Release::NotHeld); // frees nothing
//! assert!(locker.inspect("job").await.unwrap().held); // the new holder keeps it
//! # }
//! ```
//!
//! Clones share one store. The store is a mutex-protected map that is never
//! held across an `.await`; expired entries are swept as the map grows, so
//! names that were locked once do not stay in memory. Fencing tokens come
//! from one counter per store, so they strictly increase for every name
//! without keeping a counter per name.
//!
//! The store keeps a first-come-first-served line of waiters per name
//! ([`Capabilities::waiter_queue`]), as the Redis backend does: a release
//! hands the lock straight to the first live waiter, so waiting
//! [`Locker::lock`] calls make one attempt per release. Places lapse
//! [`WAITER_LEASE`] after a waiter's last call, a handover that is not
//! claimed within as long again lapses too, and
//! [`MemoryBackend::queued_waiters`] counts the live places (a test hook).

// Where other crates' docs link to this crate's items when its docs are
// not built beside theirs (otherwise rustdoc prints such links as plain
// text, without a warning).
#![doc(html_root_url = "https://docs.rs/distlock-memory/0.1.0")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod store;

pub use store::MemoryBackend;

// distlock's API, so tests and single-process programs need only this crate.
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
