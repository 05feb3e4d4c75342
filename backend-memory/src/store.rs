use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use distlock::{
    Acquire, BackendError, BackendErrorKind, Capabilities, Extend, LockBackend, LockInfo, LockKey,
    LockToken, Release, ReleaseHub, ReleaseWatch,
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

    /// Removes expired entries once the map has doubled since the last sweep,
    /// which keeps the cost amortised O(1) per insert.
    fn maybe_sweep(&mut self, now: Instant) {
        if self.locks.len() < self.sweep_at.max(MIN_SWEEP_LEN) {
            return;
        }
        self.locks.retain(|_, e| e.expires_at > now);
        self.sweep_at = self.locks.len() * 2;
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
    /// swept included.
    pub fn stored_entries(&self) -> usize {
        self.state().locks.len()
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

/// `now + ttl`, or a `Config` error for a TTL too large for the clock (the
/// `Locker` never sends one above `MAX_TTL`; direct trait calls might).
fn expiry(now: Instant, ttl: Duration) -> Result<Instant, BackendError> {
    now.checked_add(ttl).ok_or_else(|| {
        BackendError::new(
            BackendErrorKind::Config,
            format!("TTL {ttl:?} is too large"),
        )
    })
}

#[async_trait]
impl LockBackend for MemoryBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
            .with_fencing(true)
            .with_release_notify(true)
            .with_tokio_clock(true)
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
            return Ok(Acquire::Held {
                remaining: Some(held.expires_at - now),
            });
        }
        state.last_fence += 1;
        let fence = state.last_fence;
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
        let released = {
            let mut state = self.state();
            let ours = state
                .live(key.encoded(), now)
                .is_some_and(|e| e.token == *token);
            if ours {
                state.locks.remove(key.encoded());
            }
            ours
        };
        Ok(if released {
            self.inner.hub.notify(key.encoded());
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_fault_switch_fails_every_call_and_changes_nothing() {
        let backend = MemoryBackend::new();
        let (k, token) = (key("job"), LockToken::generate());
        let ttl = Duration::from_secs(5);
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
        ];
        for e in kinds {
            let e = e.expect("an error while unavailable");
            assert_eq!(e.kind(), BackendErrorKind::Unavailable);
            assert!(e.is_transient());
        }
        backend.set_unavailable(false);
        assert!(backend.inspect(&k).await.unwrap().held, "nothing changed");
        assert!(!backend.inspect(&key("other")).await.unwrap().held);
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
}
