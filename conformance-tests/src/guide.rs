//! The backend author's guide: what to write, and the store-design
//! questions every backend meets.
//!
//! # 1. What you write
//!
//! An implementation of [`distlock::LockBackend`] (five methods and
//! `capabilities`). Its skeleton, with the rule each method must keep
//! (the trait's docs have the whole contract):
//!
//! ```no_run
//! use std::time::Duration;
//! use distlock::{
//!     Acquire, BackendError, BackendErrorKind, Capabilities, Extend, LockBackend, LockInfo,
//!     LockKey, LockToken, Release, ReleaseWatch,
//! };
//!
//! struct MyBackend {/* a client (pool) of your store, with its timeouts */}
//!
//! /// Stands for the store call you write (a typed error, never a panic).
//! fn store_call<T>(what: String) -> Result<T, BackendError> {
//!     Err(BackendError::new(BackendErrorKind::Unavailable, what))
//! }
//!
//! #[distlock::async_trait]
//! impl LockBackend for MyBackend {
//!     fn capabilities(&self) -> Capabilities {
//!         // Claim only what the store really does: the suite checks each claim.
//!         Capabilities::none().with_fencing(true)
//!     }
//!
//!     async fn try_acquire(
//!         &self,
//!         key: &LockKey,
//!         token: &LockToken,
//!         ttl: Duration,
//!         owner: Option<&str>,
//!     ) -> Result<Acquire, BackendError> {
//!         // One atomic step in the store: if nobody holds `key` (or its
//!         // lease ran out), store `token` with an expiry of `ttl`, bump the
//!         // key's fencing counter and answer `Acquired { fence }`; if
//!         // `token` already holds it (a retried request, or a handover
//!         // claimed), answer the same fence again, renew the owner to
//!         // this call's and the expiry to this call's `ttl`, never
//!         // shortening a longer lease (a late repeat after an `extend`);
//!         // else `Held { remaining }`.
//!         store_call(format!("acquire {key} {token:?} {ttl:?} {owner:?}"))
//!     }
//!
//!     async fn extend(
//!         &self,
//!         key: &LockKey,
//!         token: &LockToken,
//!         ttl: Duration,
//!     ) -> Result<Extend, BackendError> {
//!         // Only while `token` holds `key`: expiry = now + `ttl`.
//!         store_call(format!("extend {key} {token:?} {ttl:?}"))
//!     }
//!
//!     async fn release(&self, key: &LockKey, token: &LockToken) -> Result<Release, BackendError> {
//!         // Only while `token` holds `key`: free it, keep the fencing
//!         // counter, and wake the waiters of every client of the store
//!         // (other processes too), not only this value's own.
//!         store_call(format!("release {key} {token:?}"))
//!     }
//!
//!     async fn inspect(&self, key: &LockKey) -> Result<LockInfo, BackendError> {
//!         // Holder label, remaining lease, last fence; never the token.
//!         store_call(format!("inspect {key}"))
//!     }
//!
//!     // Optional: with `release_notify`, register in a `ReleaseHub` and
//!     // fire it on the store's release notifications.
//!     async fn watch(&self, key: &LockKey) -> Result<Option<ReleaseWatch>, BackendError> {
//!         let _ = key;
//!         Ok(None)
//!     }
//! }
//! ```
//!
//! Then, in your crate's `tests/conformance.rs`, a
//! [`Harness`](crate::Harness) and one [`suite!`](crate::suite) line:
//!
//! ```
//! use std::time::Duration;
//! use distlock::LockKey;
//! use distlock_conformance::{BoxError, Harness, SetupError};
//! # use distlock_memory::MemoryBackend as MyBackend; // your backend here
//! # trait Connect { async fn connect(url: &str) -> Result<MyBackend, std::io::Error>; }
//! # impl Connect for MyBackend { async fn connect(_: &str) -> Result<MyBackend, std::io::Error> { Ok(MyBackend::new()) } }
//!
//! struct MyHarness {
//!     url: String,
//! }
//!
//! #[distlock_conformance::async_trait]
//! impl Harness for MyHarness {
//!     type Backend = MyBackend;
//!
//!     // Runs inside the case's runtime: connect, migrate, start a server.
//!     async fn setup() -> Result<Self, SetupError> {
//!         match std::env::var("MY_STORE_URL") {
//!             Ok(url) => Ok(MyHarness { url }),
//!             // Your choice: skip visibly (CI sets DISTLOCK_CONFORMANCE_NO_SKIP=1).
//!             Err(_) => Err(SetupError::skip("MY_STORE_URL is not set")),
//!         }
//!     }
//!
//!     // A new client with its own connections, to the one shared store.
//!     async fn client(&self) -> Result<MyBackend, BoxError> {
//!         Ok(MyBackend::connect(&self.url).await?)
//!     }
//!
//!     // End the lease on `key` behind its holder's back, without notifying
//!     // (for SQL: UPDATE ... SET expires_at = now() WHERE key = ...).
//!     async fn expire_now(&self, client: &MyBackend, key: &LockKey) -> Result<(), BoxError> {
//!         client.expire_now(key);
//!         Ok(())
//!     }
//!
//!     // Required with release_notify: ReleaseHub::watcher_count of the client.
//!     fn registered_waiters(&self, client: &MyBackend) -> Option<usize> {
//!         Some(client.registered_waiters())
//!     }
//!
//!     // Optional: a client of a store that cannot be reached (a closed
//!     // port). Without it the error-classification case is skipped, visibly.
//!     async fn unreachable_client(&self) -> Result<Option<MyBackend>, BoxError> {
//!         let down = MyBackend::new();
//!         down.set_unavailable(true);
//!         Ok(Some(down))
//!     }
//!
//!     // Optional: more room for round trips on a slow store (default 250 ms).
//!     fn timing_slack(&self) -> Duration {
//!         Duration::from_millis(400)
//!     }
//! }
//!
//! distlock_conformance::suite!(MyHarness);
//! # fn main() {}
//! ```
//!
//! `cargo test --test conformance` then lists one test per case plus
//! `capability_report`, which prints what your backend claims, which cases
//! that skips, and fails where the harness and the backend disagree (for
//! example [`Harness::PAUSED_CLOCK`](crate::Harness::PAUSED_CLOCK) without
//! `tokio_clock`, `release_notify` without a working `watch`, or
//! `release_notify` without `registered_waiters`). Skips are written
//! straight to the terminal (`distlock-conformance: SKIPPED ...`), never
//! only to captured output. With `DISTLOCK_CONFORMANCE_NO_SKIP=1`
//! ([`NO_SKIP_ENV`](crate::NO_SKIP_ENV)) a skip fails instead; a case
//! for a capability your backend does not claim (`NOT APPLICABLE ...`)
//! is not a skip and still passes, so a backend without release
//! notifications can run under it.
//!
//! For a suite that needs a service not every developer runs, either skip
//! in `setup` as above, or put attributes on every generated test:
//! `suite!(#[ignore = "needs PostgreSQL"] MyHarness)` or
//! `suite!(#[cfg(feature = "pg-tests")] MyHarness)`. Your CI should run
//! them all.
//!
//! # 2. Keys and their size
//!
//! A [`LockKey`](distlock::LockKey) gives the namespace
//! ([`prefix`](distlock::LockKey::prefix), at most 256 bytes), the
//! [`name`](distlock::LockKey::name) (at most 4,096 bytes of UTF-8), the
//! ASCII [`encoded`](distlock::LockKey::encoded) form (at most
//! [`MAX_ENCODED_KEY_LEN`](distlock::MAX_ENCODED_KEY_LEN) = 13,058 bytes,
//! because percent-encoding triples every non-ASCII byte), and a 32-byte
//! SHA-256 [`digest`](distlock::LockKey::digest) of the encoded form.
//!
//! Stores with limits on key, index-entry or message size must not key by
//! the name or the encoded key. PostgreSQL, for example, refuses B-tree
//! index rows over 2,704 bytes and `NOTIFY` payloads of 8,000 bytes or
//! more: key the table by the digest (`bytea` primary key, or the 64-digit
//! [`digest_hex`](distlock::LockKey::digest_hex) as text) and keep
//! `namespace` and `name` in plain columns for people to read. The
//! `full_length_names_acquire_wait_notify_release` case takes random,
//! incompressible full-length names (ASCII and multi-byte, under
//! full-length prefixes) through acquire, wait, notification and release.
//!
//! # 3. Tokens
//!
//! A [`LockToken`](distlock::LockToken) is 128 random bits; store it as
//! [`as_hex`](distlock::LockToken::as_hex) (32 characters),
//! [`to_bytes`](distlock::LockToken::to_bytes) (16 bytes, `bytea`) or
//! [`to_u128`](distlock::LockToken::to_u128) (a `uuid` column). It is the
//! secret that proves ownership: never log it or put it in an error
//! message, and never return it from `inspect`.
//!
//! # 4. Fencing tokens that survive cleanup
//!
//! With [`Capabilities::fencing`](distlock::Capabilities), every
//! acquisition of a key returns a fence strictly greater than every fence
//! that key ever had, across release, expiry and takeover, and at most
//! [`MAX_FENCE`](distlock::MAX_FENCE) (`i64::MAX`, so every fence fits a
//! signed `bigint`; a plain cast is safe). The hard part is what happens
//! when the store forgets a key: a per-key counter that is deleted with the
//! lease starts again at 1, and a stale holder's fence 7 then beats the new
//! holder's fence 1 at the protected resource. Designs that are safe:
//!
//! **A row that is never deleted (SQL, the simple choice).** One row per
//! key ever locked; release clears the holder but keeps the row and its
//! fence. The cost is a row per distinct name; fine for a bounded set of
//! names, not for names made per request.
//!
//! ```sql
//! CREATE TABLE distlock (
//!     key_digest bytea PRIMARY KEY,          -- LockKey::digest()
//!     namespace  text NOT NULL,              -- LockKey::prefix()
//!     name       text NOT NULL,              -- LockKey::name()
//!     token      uuid,                       -- NULL when free
//!     owner      text,
//!     expires_at timestamptz NOT NULL,
//!     fence      bigint NOT NULL
//! );
//! -- try_acquire: take a free or expired row, or create it; the fence is
//! -- computed under the row lock, from the row itself. The holder's own
//! -- token (a retried request) keeps its fence and renews its lease, never
//! -- shortening a longer one (a late repeat after an extend).
//! INSERT INTO distlock AS l (key_digest, namespace, name, token, owner, expires_at, fence)
//! VALUES ($1, $2, $3, $4, $5, now() + $6 * interval '1 millisecond', 1)
//! ON CONFLICT (key_digest) DO UPDATE
//!    SET token = excluded.token, owner = excluded.owner,
//!        expires_at = CASE WHEN l.token = excluded.token AND l.expires_at > now()
//!                          THEN greatest(l.expires_at, excluded.expires_at)
//!                          ELSE excluded.expires_at END,
//!        fence = CASE WHEN l.token = excluded.token AND l.expires_at > now()
//!                     THEN l.fence ELSE l.fence + 1 END
//!  WHERE l.token IS NULL OR l.expires_at <= now() OR l.token = excluded.token
//! RETURNING fence;                           -- no row: held (Acquire::Held)
//! -- release: only our token, only while the lease lasts; the row stays.
//! UPDATE distlock SET token = NULL, owner = NULL, expires_at = now()
//!  WHERE key_digest = $1 AND token = $2 AND expires_at > now();
//! ```
//!
//! Use the server's clock (`now()`) for every expiry decision, never the
//! clients' clocks.
//!
//! **A counter seeded from the clock (what `distlock-redis` does).** When a
//! key's counter is missing (never created, expired, deleted, or the store
//! lost its data), start it at the store server's clock in microseconds
//! instead of 0, and add one per acquisition. Every fence handed out before
//! the loss was at most "the seed then plus the acquisitions since", which
//! is below the clock now, because acquisitions of one key are serialized
//! and each takes far more than a microsecond. So counters may be deleted,
//! for example a day after their last use (Redis: an expiry on the
//! counter key). In SQL: `fence = greatest(l.fence + 1, <server clock in
//! µs>)` on every acquisition lets you delete idle rows. Pitfalls: the
//! clock must be one clock (the store server's, not each client's), it
//! must not step backwards by more than the idle time before deletion
//! (NTP steps, a failover to a server with a slower clock), and the
//! microsecond clock keeps fences far below `MAX_FENCE` (about 290,000
//! years).
//!
//! **Not safe: a global sequence with rows deleted on release.** A
//! sequence (`nextval`, an auto-increment, a global counter key) hands out
//! values in the order statements *ask* for them, not in the order their
//! acquisitions *take effect*. An `INSERT ... VALUES (nextval(...)) ON
//! CONFLICT ...` evaluates `nextval` before the conflict check: statement
//! A takes 10 and waits on the key's row lock; B takes 11, acquires,
//! releases and deletes the row; A then inserts with 10, a lower fence
//! than the 11 already handed out for that key. Take the fence under the
//! row lock from the row's own value (above), or seed from the clock.
//!
//! **Key-value stores.** Keep the counter beside the lease in one atomic
//! operation: a counter key in the same hash slot updated in the same
//! script (Redis), an attribute of the same item in a conditional update
//! (DynamoDB), or the store's own per-write revision when it grows in
//! commit order (etcd's `mod_revision`). Never delete a counter unless it
//! is clock-seeded.
//!
//! The history checker ([`history::check`](crate::history::check)) and the
//! cases `fences_strictly_increase` and `fences_increase_per_name` catch
//! fences that go down or restart after release.
//!
//! # 5. Try-acquire answers
//!
//! [`Acquire::Held`](distlock::Acquire::Held) carries the holder's remaining
//! lease when the store can say cheaply; `None` is always allowed (an SQL
//! upsert that did not take the row returns nothing). Waiters then follow
//! their backoff instead of sleeping until the lease ends.
//!
//! # 6. Errors
//!
//! Map every store error to a [`BackendErrorKind`](distlock::BackendErrorKind);
//! its documentation has the table (with PostgreSQL and Redis examples).
//! Retryable conditions get a transient kind: `Unavailable`, `Timeout`,
//! `PoolExhausted`, or `Conflict` for serialization failures, deadlocks and
//! lock-wait timeouts; [`BackendError::with_transient`](distlock::BackendError::with_transient)
//! overrides the kind's default. The `unreachable_store_gives_transient_errors`
//! case (with the [`Harness::unreachable_client`](crate::Harness::unreachable_client)
//! hook) checks that an unreachable store gives transient kinds, promptly,
//! from every call. Every network call needs its own timeout.
//!
//! # 7. Release notifications
//!
//! Keep one [`ReleaseHub`](distlock::ReleaseHub) per backend instance;
//! return [`ReleaseHub::watch`](distlock::ReleaseHub::watch) from `watch`
//! (registered before it returns), and call
//! [`notify`](distlock::ReleaseHub::notify) (encoded key) or
//! [`notify_digest`](distlock::ReleaseHub::notify_digest) /
//! [`notify_digest_hex`](distlock::ReleaseHub::notify_digest_hex) (for
//! notifications that carry the digest, such as a PostgreSQL `NOTIFY`
//! payload) when a release arrives, and
//! [`notify_all`](distlock::ReleaseHub::notify_all) after a reconnect that
//! may have missed some.
//!
//! # 7a. A line of waiters (optional)
//!
//! A backend that can keep a first-come-first-served line of waiters per
//! key sets [`Capabilities::waiter_queue`](distlock::Capabilities) and
//! implements [`try_acquire_queued`](distlock::LockBackend::try_acquire_queued)
//! and [`watch_queued`](distlock::LockBackend::watch_queued) by the rules
//! in their docs: a held key puts the waiter in line (its place lapses
//! [`Waiter::lease`](distlock::Waiter) after its last call); a release of a
//! held key with a live waiter in line does not free the key but hands it
//! to the first live waiter (its token, for a claim window of its lease,
//! with a new fencing token) and wakes only that waiter
//! ([`ReleaseHub::notify_waiter`](distlock::ReleaseHub::notify_waiter),
//! which finds the watch made by
//! [`ReleaseHub::watch_waiter`](distlock::ReleaseHub::watch_waiter)); the
//! claim is the waiter's next queued call; a release by a token that is
//! only in line takes it out. The memory backend is the reference
//! (`distlock-memory`, `store.rs`); the Redis backend does the same in Lua
//! (`lua/acquire_queued.lua`, `lua/release.lua`). The conformance case
//! `queued_waiters_make_one_attempt_per_release` checks the line when the
//! capability is on, and the trait's defaults (plain `try_acquire` and
//! `watch`) when it is off, so a backend without a line needs nothing.
//! A wrapper that forwards [`capabilities`](distlock::LockBackend::capabilities)
//! must forward both methods too (or report `waiter_queue: false`), or its
//! waiters keep calling the plain methods and never line up.
//!
//! # 7b. Taking part in a quorum (optional)
//!
//! [`Quorum`](distlock::Quorum) takes one lock on several independent
//! backends and hands out the highest member fence of the acquiring
//! majority after raising the others to it, so your backend takes part in
//! quorum fencing only with
//! [`raise_fence`](distlock::LockBackend::raise_fence) (set
//! [`Capabilities::raise_fence`](distlock::Capabilities)); without it a
//! quorum of several members reports `fencing: false` (or refuses to be
//! built with `QuorumConfig::require_fencing`). The rules are in the
//! method's docs (only while the token holds the key; the counter never
//! goes down; above `MAX_FENCE` is a `Config` error) and the conformance
//! case `raise_fence_lifts_the_counter` checks them. Also implement
//! [`identity`](distlock::LockBackend::identity) (the server or store the
//! backend talks to, such as `host:port`), so that a quorum refuses the
//! same server listed twice. Then run the suite over a quorum of your
//! backends too (see `conformance-tests/tests/quorum_memory.rs`).
//!
//! # 8. Stress and history
//!
//! [`history::stress`](crate::history::stress) runs many tasks over a few
//! names in one process and records every hold; [`processes`](crate::processes)
//! runs it across OS processes ([`ProcessStress`](crate::processes::ProcessStress)
//! and [`run_child`](crate::processes::run_child)) with a counter every
//! process sees ([`FileCounter`](crate::processes::FileCounter) works for
//! any store); [`history::check`](crate::history::check) finds overlapping
//! holds and fence-order violations. [`wrapper::Wrapped`](crate::wrapper::Wrapped)
//! injects faults into a backend for your own tests.
