//! An in-process [`LockBackend`] for distlock.
//!
//! Use it to test code that takes locks, and for locks that only one process
//! needs. Expiry follows tokio's clock, so under `tokio::time::pause()` a
//! test can let leases run out without sleeping:
//!
//! ```
//! use std::time::Duration;
//! use distlock::{LockOptions, Locker, Release};
//! use distlock_memory::MemoryBackend;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let locker = Locker::new(MemoryBackend::new());
//! let opts = LockOptions::default().with_ttl(Duration::from_secs(30));
//! let stale = locker.try_lock_with("job", |_| opts.clone()).await.unwrap().unwrap();
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

// Where other crates' docs link to this crate's items when its docs are
// not built beside theirs (otherwise rustdoc prints such links as plain
// text, without a warning).
#![doc(html_root_url = "https://docs.rs/distlock-memory/0.1.0")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod store;

pub use store::MemoryBackend;

#[doc(no_inline)]
pub use distlock::LockBackend;
