use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use distlock::{
    Acquire, BackendError, BackendErrorKind, Capabilities, Extend, LockBackend, LockInfo, LockKey,
    LockToken, RaiseFence, Release, ReleaseHub, ReleaseWatch, Waiter, WaiterId, MAX_FENCE, MAX_TTL,
};
use tokio::time::Instant;

/// The smallest map size at which expired entries are swept.
const MIN_SWEEP_LEN: usize = 1024;

/// An in-process lock store; see the [crate docs](crate).
#[derive(Clone, Default)]
pub struct MemoryBackend {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    hub: ReleaseHub,
    unavailable: AtomicBool,
}

#[derive(Default)]
struct State {
    locks: HashMap<String, Entry>,
    last_fence: u64,
    sweep_at: usize,
    /// Each key's line of waiters, first come first.
    queues: HashMap<String, VecDeque<Queued>>,
    queue_sweep_at: usize,
}

/// One place in a key's line ([`LockBackend::try_acquire_queued`]).
struct Queued {
    waiter: WaiterId,
    token: LockToken,
    /// The place lapses then, unless the waiter calls again.
    lease_until: Instant,
    /// How long a handover to this waiter waits for its claim.
    claim: Duration,
}

struct Entry {
    token: LockToken,
    owner: Option<String>,
    expires_at: Instant,
    fence: u64,
}

impl State {
    /// The live entry of `key`, dropping it if it has expired.
    fn live(&mut self, key: &str, now: Instant) -> Option<&mut Entry> {
        if self.locks.get(key).is_some_and(|e| e.expires_at <= now) {
            self.locks.remove(key);
        }
        self.locks.get_mut(key)
    }

    /// Counts one more acquisition: the new fencing token, or `None` once
    /// the counter is at [`MAX_FENCE`] (nothing is counted then).
    fn next_fence(&mut self) -> Option<u64> {
        if self.last_fence >= MAX_FENCE {
            return None;
        }
        self.last_fence += 1;
        Some(self.last_fence)
    }

    /// Removes expired entries once the map has doubled since the last sweep,
    /// which keeps the cost amortised O(1) per insert.
    fn maybe_sweep(&mut self, now: Instant) {
        if self.locks.len() < self.sweep_at.max(MIN_SWEEP_LEN) {
            return;
        }
        self.locks.retain(|_, e| e.expires_at > now);
        self.sweep_at = self.locks.len() * 2;
    }

    /// Puts `token` at the tail of `key`'s line, or renews its place there,
    /// until `lease_until`.
    fn join(
        &mut self,
        key: &str,
        token: &LockToken,
        waiter: &Waiter,
        now: Instant,
        lease_until: Instant,
    ) {
        let line = self.queues.entry(key.to_owned()).or_default();
        // A place that lapsed is gone (the trait's rule), even if no call
        // has dropped it yet: this call joins at the tail.
        line.retain(|q| q.token != *token || q.lease_until > now);
        match line.iter_mut().find(|q| q.token == *token) {
            Some(place) => {
                place.waiter = waiter.id;
                place.lease_until = lease_until;
                place.claim = waiter.lease;
            }
            None => line.push_back(Queued {
                waiter: waiter.id,
                token: token.clone(),
                lease_until,
                claim: waiter.lease,
            }),
        }
        self.maybe_sweep_queues(now);
    }

    /// Takes `token`'s place (if any) out of `key`'s line.
    fn leave(&mut self, key: &str, token: &LockToken) {
        if let Some(line) = self.queues.get_mut(key) {
            line.retain(|q| q.token != *token);
            if line.is_empty() {
                self.queues.remove(key);
            }
        }
    }

    /// The first live place in `key`'s line, dropping lapsed ones before it.
    fn first_live(&mut self, key: &str, now: Instant) -> Option<&Queued> {
        let line = self.queues.get_mut(key)?;
        while line.front().is_some_and(|q| q.lease_until <= now) {
            line.pop_front();
        }
        if line.is_empty() {
            self.queues.remove(key);
            return None;
        }
        self.queues.get(key).and_then(VecDeque::front)
    }

    /// Hands the free `key` to the first live waiter in its line: the lock
    /// is that waiter's token for its claim window, with a new fencing
    /// token, and the waiter leaves the line. Returns the waiter to wake,
    /// or `None` (nobody live in line; the key stays free).
    fn hand_over(&mut self, key: &str, now: Instant) -> Option<WaiterId> {
        loop {
            let line = self.queues.get_mut(key)?;
            let Some(next) = line.pop_front() else {
                self.queues.remove(key);
                return None;
            };
            if line.is_empty() {
                self.queues.remove(key);
            }
            // A lapsed place, or a claim window beyond the clock: skipped.
            let Some(expires_at) = now.checked_add(next.claim) else {
                continue;
            };
            if next.lease_until <= now {
                continue;
            }
            let Some(fence) = self.next_fence() else {
                // No greater fencing token exists: the key stays free, the
                // waiter keeps its place, and its next call is refused.
                self.queues
                    .entry(key.to_owned())
                    .or_default()
                    .push_front(next);
                return None;
            };
            let entry = Entry {
                token: next.token,
                owner: None,
                expires_at,
                fence,
            };
            self.locks.insert(key.to_owned(), entry);
            return Some(next.waiter);
        }
    }

    /// Removes lines whose places have all lapsed, once the map of lines
    /// has doubled since the last sweep (amortised O(1) per join).
    fn maybe_sweep_queues(&mut self, now: Instant) {
        if self.queues.len() < self.queue_sweep_at.max(MIN_SWEEP_LEN) {
            return;
        }
        self.queues
            .retain(|_, line| line.iter().any(|q| q.lease_until > now));
        self.queue_sweep_at = self.queues.len() * 2;
    }
}

impl MemoryBackend {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Test hook: ends the lease on `key` now, as if its TTL had run out,
    /// without notifying waiters. Returns whether a live lease was ended.
    pub fn expire_now(&self, key: &LockKey) -> bool {
        let now = Instant::now();
        self.state().live(key.encoded(), now).is_some_and(|e| {
            e.expires_at = now;
            true
        })
    }

    /// Test hook: how many entries the store keeps, expired ones not yet
    /// swept included: leases, and places in lines of waiters.
    pub fn stored_entries(&self) -> usize {
        let state = self.state();
        state.locks.len() + state.queues.values().map(VecDeque::len).sum::<usize>()
    }

    /// Test hook: how many live places the line of waiters of `key` has
    /// ([`LockBackend::try_acquire_queued`]). Lapsed places are dropped
    /// here (the store drops them lazily otherwise).
    pub fn queued_waiters(&self, key: &LockKey) -> usize {
        let now = Instant::now();
        let mut state = self.state();
        let Some(line) = state.queues.get_mut(key.encoded()) else {
            return 0;
        };
        line.retain(|q| q.lease_until > now);
        let live = line.len();
        if live == 0 {
            state.queues.remove(key.encoded());
        }
        live
    }

    /// Test hook (a fault switch): while on, every call of this store (all
    /// clones) fails with a [`BackendErrorKind::Unavailable`] error and
    /// changes nothing, as if the server could not be reached.
    pub fn set_unavailable(&self, on: bool) {
        self.inner.unavailable.store(on, Ordering::SeqCst);
    }

    /// `Err(Unavailable)` while the fault switch is on.
    fn reachable(&self) -> Result<(), BackendError> {
        if self.inner.unavailable.load(Ordering::SeqCst) {
            return Err(BackendError::new(
                BackendErrorKind::Unavailable,
                "the in-memory store is switched to unavailable (test fault)",
            ));
        }
        Ok(())
    }

    /// Test hook: how many waiters are registered for release notifications.
    pub fn registered_waiters(&self) -> usize {
        self.inner.hub.watcher_count()
    }
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("entries", &self.stored_entries())
            .finish()
    }
}

/// When a lease (or a place in line) of `ttl` from `now` ends. TTLs from
/// 1 ms to [`MAX_TTL`] only, as the trait asks and the Redis backend
/// checks: others are a `Config` error.
fn expiry(now: Instant, ttl: Duration) -> Result<Instant, BackendError> {
    let refused =
        |why: &str| BackendError::new(BackendErrorKind::Config, format!("TTL {ttl:?} {why}"));
    if ttl < Duration::from_millis(1) {
        return Err(refused("is under one millisecond"));
    }
    if ttl > MAX_TTL {
        return Err(refused(&format!("is above the maximum {MAX_TTL:?}")));
    }
    now.checked_add(ttl).ok_or_else(|| refused("is too large"))
}

/// The error of an acquisition once the fencing counter is at
/// [`MAX_FENCE`]: no greater token exists (the Redis backend answers its
/// `INCR` overflow the same way).
fn fences_exhausted() -> BackendError {
    BackendError::new(
        BackendErrorKind::Other,
        format!(
            "the fencing counter is at its maximum {MAX_FENCE}: no greater fencing token exists"
        ),
    )
}

#[async_trait]
impl LockBackend for MemoryBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
            .with_fencing(true)
            .with_release_notify(true)
            .with_tokio_clock(true)
            .with_raise_fence(true)
            .with_waiter_queue(true)
    }

    async fn try_acquire(
        &self,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
    ) -> Result<Acquire, BackendError> {
        self.reachable()?;
        let now = Instant::now();
        let expires_at = expiry(now, ttl)?;
        let mut state = self.state();
        if let Some(held) = state.live(key.encoded(), now) {
            if held.token != *token {
                return Ok(Acquire::Held {
                    remaining: Some(held.expires_at - now),
                });
            }
            // Already this token's (a repeat, or the plain claim of a
            // handover): same fence, the lease renewed to `ttl` from now
            // (never shortened: a late repeat after a longer extend).
            held.expires_at = held.expires_at.max(expires_at);
            held.owner = owner.map(str::to_owned);
            let fence = held.fence;
            state.leave(key.encoded(), token);
            return Ok(Acquire::Acquired { fence });
        }
        let fence = state.next_fence().ok_or_else(fences_exhausted)?;
        state.locks.insert(
            key.encoded().to_owned(),
            Entry {
                token: token.clone(),
                owner: owner.map(str::to_owned),
                expires_at,
                fence,
            },
        );
        state.maybe_sweep(now);
        Ok(Acquire::Acquired { fence })
    }

    async fn extend(
        &self,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
    ) -> Result<Extend, BackendError> {
        self.reachable()?;
        let now = Instant::now();
        let expires_at = expiry(now, ttl)?;
        let mut state = self.state();
        Ok(match state.live(key.encoded(), now) {
            Some(e) if e.token == *token => {
                e.expires_at = expires_at;
                Extend::Extended
            }
            _ => Extend::NotHeld,
        })
    }

    async fn release(&self, key: &LockKey, token: &LockToken) -> Result<Release, BackendError> {
        self.reachable()?;
        let now = Instant::now();
        let (released, handed_to) = {
            let mut state = self.state();
            let ours = state
                .live(key.encoded(), now)
                .is_some_and(|e| e.token == *token);
            if ours {
                state.locks.remove(key.encoded());
                // A place of the releasing token itself (it took the lock
                // with a plain call while still in line) is dropped, never
                // handed the lock (as Redis's release skips it).
                state.leave(key.encoded(), token);
                // The first live waiter in line gets it straight away.
                (true, state.hand_over(key.encoded(), now))
            } else {
                // A waiter giving its place back (cancelled, timed out).
                state.leave(key.encoded(), token);
                (false, None)
            }
        };
        Ok(if released {
            match handed_to {
                Some(waiter) => {
                    self.inner.hub.notify_waiter(key.encoded(), waiter);
                }
                None => self.inner.hub.notify(key.encoded()),
            }
            Release::Released
        } else {
            Release::NotHeld
        })
    }

    async fn inspect(&self, key: &LockKey) -> Result<LockInfo, BackendError> {
        self.reachable()?;
        let now = Instant::now();
        let mut state = self.state();
        Ok(match state.live(key.encoded(), now) {
            Some(e) => LockInfo::held(e.owner.clone(), Some(e.expires_at - now), Some(e.fence)),
            None => LockInfo::free(None),
        })
    }

    async fn watch(&self, key: &LockKey) -> Result<Option<ReleaseWatch>, BackendError> {
        self.reachable()?;
        Ok(Some(self.inner.hub.watch(key)))
    }

    /// Raises the hold's token and the store's counter (shared by every
    /// name, so raising it for one name only makes the others skip
    /// numbers; raised to [`MAX_FENCE`], it ends every name's
    /// acquisitions).
    async fn raise_fence(
        &self,
        key: &LockKey,
        token: &LockToken,
        at_least: u64,
    ) -> Result<RaiseFence, BackendError> {
        self.reachable()?;
        if at_least > MAX_FENCE {
            return Err(BackendError::new(
                BackendErrorKind::Config,
                format!("raise_fence to {at_least}: above the maximum fencing token {MAX_FENCE}"),
            ));
        }
        let now = Instant::now();
        let mut state = self.state();
        let fence = match state.live(key.encoded(), now) {
            Some(e) if e.token == *token => {
                e.fence = e.fence.max(at_least);
                e.fence
            }
            _ => return Ok(RaiseFence::NotHeld),
        };
        state.last_fence = state.last_fence.max(fence);
        Ok(RaiseFence::Raised { fence })
    }

    /// The line of waiters (design: `docs/design/waiter-queue.md`, §5),
    /// with the rules of [`LockBackend::try_acquire_queued`]. Times follow
    /// tokio's clock; places lapse lazily, as leases do.
    async fn try_acquire_queued(
        &self,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
        waiter: &Waiter,
    ) -> Result<Acquire, BackendError> {
        self.reachable()?;
        let now = Instant::now();
        let expires_at = expiry(now, ttl)?;
        let lease_until = expiry(now, waiter.lease)?;
        let k = key.encoded();
        let (outcome, handed_to) = {
            let mut state = self.state();
            let held = state.live(k, now).map(|e| {
                if e.token == *token {
                    // The claim of a handover (or a repeat): no new fence;
                    // the lease never shortened (a late repeat after a
                    // longer extend).
                    e.expires_at = e.expires_at.max(expires_at);
                    e.owner = owner.map(str::to_owned);
                    Acquire::Acquired { fence: e.fence }
                } else {
                    Acquire::Held {
                        remaining: Some(e.expires_at - now),
                    }
                }
            });
            match held {
                Some(claimed @ Acquire::Acquired { .. }) => {
                    state.leave(k, token);
                    (claimed, None)
                }
                Some(held) => {
                    state.join(k, token, waiter, now, lease_until);
                    (held, None)
                }
                None if state.first_live(k, now).is_none_or(|q| q.token == *token) => {
                    // Free, and first in line (or no line): take it.
                    let Some(fence) = state.next_fence() else {
                        return Err(fences_exhausted());
                    };
                    state.locks.insert(
                        k.to_owned(),
                        Entry {
                            token: token.clone(),
                            owner: owner.map(str::to_owned),
                            expires_at,
                            fence,
                        },
                    );
                    state.leave(k, token);
                    state.maybe_sweep(now);
                    (Acquire::Acquired { fence }, None)
                }
                None => {
                    // Free after an expiry, another waiter first: hand it
                    // to that waiter, and line up.
                    let handed_to = state.hand_over(k, now);
                    let remaining = state.live(k, now).map(|e| e.expires_at - now);
                    state.join(k, token, waiter, now, lease_until);
                    (Acquire::Held { remaining }, handed_to)
                }
            }
        };
        if let Some(next) = handed_to {
            self.inner.hub.notify_waiter(k, next);
        }
        Ok(outcome)
    }

    async fn watch_queued(
        &self,
        key: &LockKey,
        waiter: &Waiter,
    ) -> Result<Option<ReleaseWatch>, BackendError> {
        self.reachable()?;
        Ok(Some(self.inner.hub.watch_waiter(key, waiter.id)))
    }

    /// `memory:` and the address of the shared store: clones of one store
    /// report the same identity.
    fn identity(&self) -> Option<String> {
        Some(format!("memory:{:p}", Arc::as_ptr(&self.inner)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_fault_switch_fails_every_call_and_changes_nothing() {
        let backend = MemoryBackend::new();
        let (k, token) = (key("job"), LockToken::generate());
        let ttl = Duration::from_secs(5);
        let waiter = Waiter::new(WaiterId::generate(), distlock::WAITER_LEASE);
        backend.try_acquire(&k, &token, ttl, None).await.unwrap();
        backend.clone().set_unavailable(true);
        let kinds = [
            backend
                .try_acquire(&key("other"), &token, ttl, None)
                .await
                .err(),
            backend.extend(&k, &token, ttl).await.err(),
            backend.release(&k, &token).await.err(),
            backend.inspect(&k).await.err(),
            backend.watch(&k).await.err(),
            backend
                .try_acquire_queued(&key("other"), &token, ttl, None, &waiter)
                .await
                .err(),
            backend.watch_queued(&k, &waiter).await.err(),
            backend.raise_fence(&k, &token, 5).await.err(),
        ];
        for e in kinds {
            let e = e.expect("an error while unavailable");
            assert_eq!(e.kind(), BackendErrorKind::Unavailable);
            assert!(e.is_transient());
        }
        backend.set_unavailable(false);
        assert!(backend.inspect(&k).await.unwrap().held, "nothing changed");
        assert!(!backend.inspect(&key("other")).await.unwrap().held);
        assert_eq!(backend.queued_waiters(&key("other")), 0);
    }

    fn key(name: &str) -> LockKey {
        LockKey::new("", name).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_million_expired_names_do_not_stay_in_memory() {
        let backend = MemoryBackend::new();
        let token = LockToken::generate();
        let ttl = Duration::from_secs(1);
        for i in 0..1_000_000u32 {
            let k = key(&i.to_string());
            let out = backend.try_acquire(&k, &token, ttl, None).await.unwrap();
            assert!(matches!(out, Acquire::Acquired { .. }));
            if i % 10_000 == 9_999 {
                tokio::time::advance(Duration::from_secs(2)).await;
            }
        }
        assert!(
            backend.stored_entries() < 50_000,
            "{} entries kept",
            backend.stored_entries()
        );
        assert_eq!(backend.state().last_fence, 1_000_000);
    }

    /// The fencing counter stops at `MAX_FENCE`: a raise above it is a
    /// `Config` error, and once the counter is there acquisitions fail
    /// (plain, queued and handovers) instead of wrapping or panicking.
    /// Found by differential testing against the Redis backend: the next
    /// acquire answered `MAX_FENCE + 1`, and after a raise to `u64::MAX` it
    /// panicked ("attempt to add with overflow").
    #[tokio::test(start_paused = true)]
    async fn the_fencing_counter_stops_at_max_fence() {
        let backend = MemoryBackend::new();
        let ttl = Duration::from_secs(30);
        let (k, t1, t2) = (key("max"), LockToken::generate(), LockToken::generate());
        backend.try_acquire(&k, &t1, ttl, None).await.unwrap();
        for too_high in [MAX_FENCE + 1, u64::MAX] {
            let e = backend.raise_fence(&k, &t1, too_high).await.unwrap_err();
            assert_eq!(e.kind(), BackendErrorKind::Config, "{e}");
        }
        assert_eq!(
            backend.raise_fence(&k, &t1, MAX_FENCE).await.unwrap(),
            RaiseFence::Raised { fence: MAX_FENCE }
        );
        // A waiter in line: the release cannot hand over (no greater
        // token), so the key is free and the waiter's call is refused.
        let waiter = Waiter::new(WaiterId::generate(), Duration::from_secs(10));
        let queued = backend
            .try_acquire_queued(&k, &t2, ttl, None, &waiter)
            .await
            .unwrap();
        assert!(matches!(queued, Acquire::Held { .. }), "{queued:?}");
        assert_eq!(backend.release(&k, &t1).await.unwrap(), Release::Released);
        assert!(!backend.inspect(&k).await.unwrap().held);
        let e = backend
            .try_acquire_queued(&k, &t2, ttl, None, &waiter)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), BackendErrorKind::Other, "{e}");
        let e = backend.try_acquire(&k, &t2, ttl, None).await.unwrap_err();
        assert_eq!(e.kind(), BackendErrorKind::Other, "{e}");
        assert_eq!(backend.inspect(&k).await.unwrap().last_fence, None);
    }

    /// TTLs and waiter leases outside 1 ms ..= `MAX_TTL` are `Config`
    /// errors, as on Redis (found by differential testing: memory took
    /// 500 µs and `MAX_TTL` + 1 ms).
    #[tokio::test(start_paused = true)]
    async fn ttls_outside_one_millisecond_to_max_ttl_are_refused() {
        let backend = MemoryBackend::new();
        let (k, t) = (key("ttl"), LockToken::generate());
        let ok = Duration::from_secs(1);
        for bad in [
            Duration::ZERO,
            Duration::from_micros(500),
            MAX_TTL + Duration::from_millis(1),
            Duration::MAX,
        ] {
            let e = backend.try_acquire(&k, &t, bad, None).await.unwrap_err();
            assert_eq!(e.kind(), BackendErrorKind::Config, "{bad:?}: {e}");
            let w = Waiter::new(WaiterId::generate(), bad);
            let e = backend
                .try_acquire_queued(&k, &t, ok, None, &w)
                .await
                .unwrap_err();
            assert_eq!(e.kind(), BackendErrorKind::Config, "lease {bad:?}: {e}");
        }
        for edge in [Duration::from_millis(1), MAX_TTL] {
            let got = backend.try_acquire(&k, &t, edge, None).await.unwrap();
            assert!(matches!(got, Acquire::Acquired { .. }), "{edge:?}");
            let e = backend.extend(&k, &t, Duration::from_micros(10)).await;
            assert_eq!(e.unwrap_err().kind(), BackendErrorKind::Config);
            assert_eq!(backend.release(&k, &t).await.unwrap(), Release::Released);
        }
    }

    /// A place that lapsed is gone even before a call drops it: the waiter
    /// calling again joins at the tail, behind those who joined meanwhile
    /// (the trait's rule; found by differential testing: memory renewed
    /// the lapsed place where it was).
    #[tokio::test(start_paused = true)]
    async fn a_lapsed_place_is_not_given_back() {
        let backend = MemoryBackend::new();
        let long = Duration::from_secs(30);
        let (k, h, t1, t2) = (
            key("lapsed"),
            LockToken::generate(),
            LockToken::generate(),
            LockToken::generate(),
        );
        let w1 = WaiterId::generate();
        let w2 = Waiter::new(WaiterId::generate(), long);
        backend.try_acquire(&k, &h, long, None).await.unwrap();
        let short = Waiter::new(w1, Duration::from_millis(150));
        backend
            .try_acquire_queued(&k, &t1, long, None, &short)
            .await
            .unwrap();
        tokio::time::advance(Duration::from_millis(400)).await;
        backend
            .try_acquire_queued(&k, &t2, long, None, &w2)
            .await
            .unwrap();
        backend
            .try_acquire_queued(&k, &t1, long, None, &Waiter::new(w1, long))
            .await
            .unwrap();
        assert_eq!(backend.release(&k, &h).await.unwrap(), Release::Released);
        let first = backend
            .try_acquire_queued(&k, &t2, long, None, &w2)
            .await
            .unwrap();
        assert!(
            matches!(first, Acquire::Acquired { .. }),
            "t2 joined first: {first:?}"
        );
    }
}
