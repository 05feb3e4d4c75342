//! A repeated acquire by the token that holds a key through a quorum
//! (`core/src/quorum/holds.rs`): the give-back rules apply to it, and it
//! works without quorum fencing. Written by a reviewer in stop 25; both
//! failed on the first version of the repeat path.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use distlock::{
    async_trait, Acquire, BackendError, Capabilities, Extend, LockBackend, LockInfo, LockKey,
    LockToken, Quorum, QuorumConfig, RaiseFence, Release, ReleaseWatch,
};
use distlock_memory::MemoryBackend;

/// A memory member. `late_release_ms` > 0: a release/give-back acts that
/// long after it was sent, whether or not its caller still waits (a
/// stalled server that resumes). `no_raise`: no raise_fence capability.
#[derive(Clone, Default)]
struct M {
    store: MemoryBackend,
    late_release_ms: Arc<AtomicU64>,
    no_raise: Arc<AtomicBool>,
}

impl M {
    async fn late(
        &self,
        key: &LockKey,
        token: &LockToken,
        give_back: bool,
    ) -> Result<Release, BackendError> {
        let ms = self.late_release_ms.load(Ordering::SeqCst);
        let (store, key, token) = (self.store.clone(), key.clone(), token.clone());
        let task = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            if give_back {
                store.give_back(&key, &token).await
            } else {
                store.release(&key, &token).await
            }
        });
        task.await.unwrap()
    }
}

#[async_trait]
impl LockBackend for M {
    fn capabilities(&self) -> Capabilities {
        self.store
            .capabilities()
            .with_raise_fence(!self.no_raise.load(Ordering::SeqCst))
    }
    async fn try_acquire(
        &self,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
    ) -> Result<Acquire, BackendError> {
        self.store.try_acquire(key, token, ttl, owner).await
    }
    async fn extend(
        &self,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
    ) -> Result<Extend, BackendError> {
        self.store.extend(key, token, ttl).await
    }
    async fn release(&self, key: &LockKey, token: &LockToken) -> Result<Release, BackendError> {
        self.late(key, token, false).await
    }
    async fn give_back(&self, key: &LockKey, token: &LockToken) -> Result<Release, BackendError> {
        self.late(key, token, true).await
    }
    async fn inspect(&self, key: &LockKey) -> Result<LockInfo, BackendError> {
        self.store.inspect(key).await
    }
    async fn watch(&self, key: &LockKey) -> Result<Option<ReleaseWatch>, BackendError> {
        self.store.watch(key).await
    }
    async fn raise_fence(
        &self,
        key: &LockKey,
        token: &LockToken,
        at_least: u64,
    ) -> Result<RaiseFence, BackendError> {
        self.store.raise_fence(key, token, at_least).await
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn quorum(members: &[M]) -> Quorum {
    Quorum::with_config(
        members.iter().cloned(),
        QuorumConfig::default().with_member_timeout(ms(20)),
    )
    .unwrap()
}

async fn holds(m: &M, key: &LockKey, token: &LockToken) -> bool {
    matches!(
        m.store.raise_fence(key, token, 0).await,
        Ok(RaiseFence::Raised { .. })
    )
}

/// A repeat must not count a member whose earlier give-back of this token
/// had an unknown outcome (rule 2 of `give_back`): that give-back lands
/// later, and another token would take a majority while the repeat's
/// answer is still valid (two holders, with the first version).
#[tokio::test(start_paused = true)]
async fn a_repeat_does_not_count_a_member_whose_give_back_may_still_land() {
    let members: Vec<M> = (0..3).map(|_| M::default()).collect();
    let q = quorum(&members);
    let k = LockKey::new("rev", "k").unwrap();
    let (t, y) = (LockToken::from_u128(1), LockToken::from_u128(2));
    let ttl = ms(10_000);
    // y holds members 0 and 1 (raw), 500 ms.
    for m in &members[..2] {
        m.store.try_acquire(&k, &y, ms(500), None).await.unwrap();
    }
    // Member 2's releases stall for 5 s (then act).
    members[2].late_release_ms.store(5_000, Ordering::SeqCst);
    // t: member 2 only; its give-back there times out (unknown outcome).
    let a = q.try_acquire(&k, &t, ttl, None).await.unwrap();
    assert!(matches!(a, Acquire::Held { .. }), "{a:?}");
    // Its call to member 2 is answered and given back in the background.
    tokio::time::sleep(ms(100)).await;
    assert!(
        holds(&members[2], &k, &t).await,
        "t's stale hold on member 2"
    );
    // y's hold lapses; t acquires with the same token: members 0 and 1
    // count, member 2 (still t's) is a spare.
    tokio::time::sleep(ms(1_500)).await;
    let a = q.try_acquire(&k, &t, ttl, None).await.unwrap();
    assert!(matches!(a, Acquire::Acquired { .. }), "{a:?}");
    tokio::time::sleep(ms(3_000)).await;
    // Member 1 down; t repeats its acquire: members 0 and 2 answer.
    members[1].store.set_unavailable(true);
    let r = q.try_acquire(&k, &t, ttl, None).await;
    // Member 2 does not count for t (its give-back may still land), so
    // only member 0 renews: no majority, a transient error, and nothing
    // given back. (The first version answered Acquired here; the stale
    // give-back then landed on member 2 and, once t's lease on member 1
    // lapsed, another token took members 1 and 2 while t's answer was
    // still valid.)
    let e = r.expect_err("a repeat counted a member whose give-back may still land");
    assert!(e.is_transient(), "{e}");
    assert!(holds(&members[0], &k, &t).await, "nothing was given back");
}

/// Without quorum fencing (a member lacks raise_fence) the quorum hands
/// out 0; a holder's repeated acquire that every member renewed answers
/// acquired (the first version compared the members' own tokens with 0
/// and refused them all).
#[tokio::test(start_paused = true)]
async fn a_repeat_works_without_quorum_fencing() {
    let members: Vec<M> = (0..3).map(|_| M::default()).collect();
    members[2].no_raise.store(true, Ordering::SeqCst);
    let q = quorum(&members);
    assert!(!q.capabilities().fencing);
    let k = LockKey::new("rev", "nofence").unwrap();
    let t = LockToken::from_u128(7);
    let a = q.try_acquire(&k, &t, ms(10_000), None).await.unwrap();
    assert_eq!(a, Acquire::Acquired { fence: 0 });
    let r = q.try_acquire(&k, &t, ms(10_000), None).await;
    eprintln!("repeat: {r:?}");
    assert!(matches!(r, Ok(Acquire::Acquired { fence: 0 })), "{r:?}");
}
