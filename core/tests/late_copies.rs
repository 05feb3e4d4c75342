//! A waiting `lock()` whose call timed out goes on with a new token and
//! gives the old one back (`LockBackend::give_back`), so a copy of the
//! timed-out call that reaches the store late can never take the lock
//! after the wait's guard released it. Found in review: before, the wait
//! kept its token, the guard's plain release left no tombstone on Redis,
//! and the late copy took the free lock for a whole TTL.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use distlock::{
    async_trait, Acquire, BackendError, BackendErrorKind, Capabilities, Extend, LockBackend,
    LockInfo, LockKey, LockOptions, LockToken, Locker, Quorum, Release, ReleaseWatch, Waiter,
};
use distlock_memory::MemoryBackend;

/// What the backend was asked, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    Acquire(LockToken),
    Queued(LockToken),
    Release(LockToken),
    GiveBack(LockToken),
}

/// Forwards to `inner` and logs the calls; the next `lose_queued` queued
/// acquires are applied and then answered with a `Timeout` (the reply was
/// lost; the request itself reached the store).
#[derive(Clone, Default)]
struct Logged {
    inner: MemoryBackend,
    log: Arc<Mutex<Vec<Call>>>,
    lose_queued: Arc<AtomicUsize>,
}

impl Logged {
    fn push(&self, call: Call) {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(call);
    }

    fn calls(&self) -> Vec<Call> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl LockBackend for Logged {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn identity(&self) -> Option<String> {
        self.inner.identity()
    }
    async fn try_acquire(
        &self,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
    ) -> Result<Acquire, BackendError> {
        self.push(Call::Acquire(token.clone()));
        self.inner.try_acquire(key, token, ttl, owner).await
    }
    async fn try_acquire_queued(
        &self,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
        waiter: &Waiter,
    ) -> Result<Acquire, BackendError> {
        self.push(Call::Queued(token.clone()));
        let outcome = self
            .inner
            .try_acquire_queued(key, token, ttl, owner, waiter)
            .await;
        let lost = self
            .lose_queued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if lost {
            return Err(BackendError::new(BackendErrorKind::Timeout, "reply lost"));
        }
        outcome
    }
    async fn extend(
        &self,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
    ) -> Result<Extend, BackendError> {
        self.inner.extend(key, token, ttl).await
    }
    async fn release(&self, key: &LockKey, token: &LockToken) -> Result<Release, BackendError> {
        self.push(Call::Release(token.clone()));
        self.inner.release(key, token).await
    }
    async fn give_back(&self, key: &LockKey, token: &LockToken) -> Result<Release, BackendError> {
        self.push(Call::GiveBack(token.clone()));
        self.inner.give_back(key, token).await
    }
    async fn inspect(&self, key: &LockKey) -> Result<LockInfo, BackendError> {
        self.inner.inspect(key).await
    }
    async fn watch(&self, key: &LockKey) -> Result<Option<ReleaseWatch>, BackendError> {
        self.inner.watch(key).await
    }
    async fn watch_queued(
        &self,
        key: &LockKey,
        waiter: &Waiter,
    ) -> Result<Option<ReleaseWatch>, BackendError> {
        self.inner.watch_queued(key, waiter).await
    }
}

fn waiting(o: LockOptions) -> LockOptions {
    o.with_ttl(Duration::from_secs(30))
        .with_wait_timeout(Duration::from_secs(5))
}

/// The sequence: a queued call times out (its copy reached the
/// store: the token joined the line), the wait goes on, and gets the lock
/// when the holder releases. The guard's token must be a new one, and the
/// timed-out one given back, not kept.
#[tokio::test(start_paused = true)]
async fn a_wait_whose_call_timed_out_goes_on_with_a_new_token() {
    let store = MemoryBackend::new();
    let holder = Locker::new(store.clone());
    let held = holder.lock("k").await.unwrap();
    let logged = Logged {
        inner: store.clone(),
        lose_queued: Arc::new(AtomicUsize::new(1)),
        ..Logged::default()
    };
    let waiter = Locker::new(logged.clone());
    let wait = tokio::spawn(async move { waiter.lock_with("k", waiting).await });
    // Let the wait make its calls (the lost one, the give-back, the next).
    tokio::time::sleep(Duration::from_millis(300)).await;
    held.release().await.unwrap();
    let guard = wait.await.unwrap().expect("the wait gets the lock");
    let calls = logged.calls();
    let lost = calls
        .iter()
        .find_map(|c| match c {
            Call::Queued(t) => Some(t.clone()),
            _ => None,
        })
        .expect("a queued call");
    assert!(
        calls.contains(&Call::GiveBack(lost.clone())),
        "the token of the timed-out call was given back: {calls:?}"
    );
    let last = calls
        .iter()
        .rev()
        .find_map(|c| match c {
            Call::Queued(t) | Call::Acquire(t) => Some(t.clone()),
            _ => None,
        })
        .unwrap();
    assert_ne!(
        last, lost,
        "the wait went on with the timed-out call's token: {calls:?}"
    );
    // The late copy of the lost call now finds its token given back: on
    // Redis a tombstone refuses it; here, in process, it simply cannot
    // arrive. Either way the store shows only the guard's hold.
    let key = holder.key("k").unwrap();
    assert!(store.inspect(&key).await.unwrap().held, "held by the guard");
    guard.release().await.unwrap();
    let info = store.inspect(&key).await.unwrap();
    assert!(!info.held, "nothing left held: {info:?}");
}

/// A call that was answered keeps the token: only a timeout (an unknown
/// outcome) makes the wait change it.
#[tokio::test(start_paused = true)]
async fn a_wait_whose_calls_were_answered_keeps_its_token() {
    let store = MemoryBackend::new();
    let holder = Locker::new(store.clone());
    let held = holder.lock("k").await.unwrap();
    let logged = Logged {
        inner: store.clone(),
        ..Logged::default()
    };
    let waiter = Locker::new(logged.clone());
    let wait = tokio::spawn(async move { waiter.lock_with("k", waiting).await });
    tokio::time::sleep(Duration::from_millis(600)).await;
    held.release().await.unwrap();
    let guard = wait.await.unwrap().expect("the wait gets the lock");
    let calls = logged.calls();
    let tokens: Vec<&LockToken> = calls
        .iter()
        .filter_map(|c| match c {
            Call::Queued(t) | Call::Acquire(t) => Some(t),
            _ => None,
        })
        .collect();
    assert!(tokens.len() >= 2, "several calls: {calls:?}");
    assert!(
        tokens.windows(2).all(|w| w[0] == w[1]),
        "one token for the whole wait: {calls:?}"
    );
    assert!(
        !calls.iter().any(|c| matches!(c, Call::GiveBack(_))),
        "nothing given back: {calls:?}"
    );
    guard.release().await.unwrap();
}

/// A quorum gives a token back through every member's `give_back` (each
/// member then refuses late copies its own way), and releases through
/// their `release`.
#[tokio::test(start_paused = true)]
async fn a_quorum_gives_back_through_its_members_give_back() {
    let members: Vec<Logged> = (0..3).map(|_| Logged::default()).collect();
    let quorum = Quorum::new(members.iter().cloned()).unwrap();
    let key = Locker::new(MemoryBackend::new()).key("k").unwrap();
    let token = LockToken::generate();
    let got = quorum
        .try_acquire(&key, &token, Duration::from_secs(30), None)
        .await
        .unwrap();
    assert!(matches!(got, Acquire::Acquired { .. }), "{got:?}");
    assert_eq!(
        quorum.give_back(&key, &token).await.unwrap(),
        Release::Released
    );
    // Every member got the request (the last ones in the background).
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (i, m) in members.iter().enumerate() {
        let calls = m.calls();
        assert!(
            calls.contains(&Call::GiveBack(token.clone())),
            "member {i} was asked to give back: {calls:?}"
        );
        assert!(
            !calls.iter().any(|c| matches!(c, Call::Release(_))),
            "member {i} got a plain release instead: {calls:?}"
        );
        assert!(!m.inner.inspect(&key).await.unwrap().held, "member {i}");
    }
}

/// A backend chosen at run time (`Arc<dyn LockBackend>`, `Box<dyn ..>`)
/// forwards `give_back` too: with the trait's default, a Redis backend
/// behind a pointer would give back without its tombstone.
#[tokio::test(start_paused = true)]
async fn pointers_forward_give_back() {
    let logged = Logged::default();
    let key = Locker::new(MemoryBackend::new()).key("k").unwrap();
    let as_arc: Arc<dyn LockBackend> = Arc::new(logged.clone());
    let as_box: Box<dyn LockBackend> = Box::new(logged.clone());
    let (a, b) = (LockToken::generate(), LockToken::generate());
    as_arc.give_back(&key, &a).await.unwrap();
    as_box.give_back(&key, &b).await.unwrap();
    // Through the pointer's own impl (what `Locker<Arc<dyn LockBackend>>`
    // calls), not only through the vtable.
    let arc_of_arc: Arc<Arc<dyn LockBackend>> = Arc::new(as_arc.clone());
    let c = LockToken::generate();
    LockBackend::give_back(&arc_of_arc, &key, &c).await.unwrap();
    let calls = logged.calls();
    for t in [a, b, c] {
        assert!(calls.contains(&Call::GiveBack(t.clone())), "{calls:?}");
        assert!(!calls.contains(&Call::Release(t)), "{calls:?}");
    }
}
