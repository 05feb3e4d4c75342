//! Distributed locks for services that run on many machines.
//!
//! `distlock` gives a lock that every process reaching the same backend
//! shares: insert a user only if absent, run tonight's report once, charge a
//! card once. It keeps the simplicity of a `with lock:` block and fixes what
//! naive Redis locks get wrong:
//!
//! - **Safe release**: a lock is released or extended only with the random
//!   128-bit token of the acquisition that took it, so a holder whose lease
//!   ran out can never free the next holder's lock.
//! - **Fencing tokens**: every acquisition returns a number that strictly
//!   increases per lock name, so the protected resource can reject writes
//!   from a stale holder.
//! - **Bounded, event-driven waiting** with a timeout, exponential backoff
//!   with full jitter, and release notifications where the backend has them.
//! - **Leases that end**: a crashed holder's lock frees itself after its TTL;
//!   optional renewal keeps long work covered and a lost-lock signal tells
//!   the critical section when its lease is gone.
//!
//! # Quick start
//!
//! ```
//! use std::time::Duration;
//! use distlock::{LockOptions, Locker};
//! use distlock_memory::MemoryBackend; // or distlock_redis::RedisBackend
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), distlock::LockError> {
//! let locker = Locker::new(MemoryBackend::new())
//!     .with_defaults(LockOptions::default().with_ttl(Duration::from_secs(30)))?;
//!
//! // Wait up to the wait timeout, run the closure, always release.
//! locker.with_lock("charge:order-1234", |lease| async move {
//!     // pass lease.fence() to the payment store so it can refuse stale writers
//!     assert!(lease.is_held());
//! }).await?;
//!
//! // Or hold a guard yourself.
//! let mut guard = locker.lock("nightly-report").await?;
//! guard.extend(Duration::from_secs(60)).await?;
//! guard.release().await?;
//!
//! // Options for one call start from the locker's defaults (the 30 s TTL
//! // stays); here: one attempt, no waiting.
//! let once = locker.lock_with("nightly-report", |o| o.with_wait_timeout(Duration::ZERO)).await?;
//! once.release().await?;
//! # Ok(()) }
//! ```
//!
//! # Safety model
//!
//! A lease lock guarantees mutual exclusion **only while the lease is
//! valid**. A holder that pauses (GC, swap, a stopped VM) past its lease can
//! wake up believing it still holds the lock while another process holds it.
//! A backend that loses data (a Redis failover to a replica that had not
//! received the lock key) can grant the same lock twice. distlock narrows
//! these windows (the guard's deadline is computed from the moment the
//! request was sent, minus a drift allowance; an extend whose outcome is
//! unknown counts on the shorter of the two possible leases;
//! [`Lease::is_held`] and [`Lease::ended`] report loss and the end of the
//! guard), but only **fencing tokens** close them: the
//! resource itself must remember the highest [`Lease::fence`] it has seen and
//! refuse writes that carry a lower one.
//!
//! # Choosing the backend at run time
//!
//! [`LockBackend`] is implemented for `Arc<T>` and `Box<T>`, forwarding
//! every method (release notifications included), so
//! `Locker<Arc<dyn LockBackend>>` works.
//!
//! # Writing a backend
//!
//! Implement [`LockBackend`] and run the conformance suite of the
//! `distlock-conformance` crate against it; its `guide` module covers key
//! sizes ([`MAX_ENCODED_KEY_LEN`], [`LockKey::digest`]), fencing designs
//! that survive cleanup ([`MAX_FENCE`]), the error-kind mapping
//! ([`BackendErrorKind`]) and release notifications ([`ReleaseHub`]).

// Where other crates' docs link to this crate's items when its docs are
// not built beside theirs (otherwise rustdoc prints such links as plain
// text, without a warning).
#![doc(html_root_url = "https://docs.rs/distlock/0.1.0")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backend;
mod calls;
mod error;
mod forward;
mod guard;
mod key;
mod locker;
mod notify;
mod options;
mod owner;
mod quorum;
mod releaser;
pub mod telemetry;
mod token;
mod wait;

pub use async_trait::async_trait;

pub use backend::{
    Acquire, Capabilities, Extend, LockBackend, LockInfo, RaiseFence, Release, Waiter, WaiterId,
    MAX_FENCE, WAITER_LEASE,
};
pub use calls::{Guarded, Holder, TryLock};
pub use error::{BackendError, BackendErrorKind, LockError};
pub use guard::{Lease, LeaseEnd, LockGuard};
pub use key::{LockKey, MAX_ENCODED_KEY_LEN, MAX_NAME_LEN, MAX_PREFIX_LEN};
pub use locker::Locker;
pub use notify::{ReleaseHub, ReleaseWatch};
pub use options::{validate_ttl, LockOptions, MAX_OWNER_LEN, MAX_TTL, MAX_WAIT_TIMEOUT, MIN_TTL};
pub use owner::default_owner;
pub use quorum::{Quorum, QuorumConfig, QuorumError, QuorumMember, DEFAULT_MEMBER_TIMEOUT};
pub use token::LockToken;
