//! The memory backend's line of waiters (issue 15; design
//! `docs/design/waiter-queue.md` §5 and §7 "Memory"), on tokio's paused
//! clock, where every bound is exact.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use distlock_memory::{
    Acquire, LockBackend, LockKey, LockOptions, LockToken, Locker, MemoryBackend, Release, Waiter,
    WaiterId, WAITER_LEASE,
};
use tokio::time::Instant;

/// The claim window of a handover: the waiter's lease.
const CLAIM: Duration = WAITER_LEASE;
const TTL: Duration = Duration::from_secs(30);
const MS: Duration = Duration::from_millis(1);

fn key(name: &str) -> LockKey {
    LockKey::new("", name).unwrap()
}

/// A locker of its own (its own per-process queue) over `store`: waits of
/// a minute, a 30 s TTL, and retries a minute apart (so only the line and
/// its wake-ups move the waiters).
fn locker(store: &MemoryBackend) -> Locker<MemoryBackend> {
    Locker::new(store.clone())
        .with_defaults(
            LockOptions::default()
                .with_ttl(TTL)
                .with_wait_timeout(Duration::from_secs(60))
                .with_retry(Duration::from_secs(60), Duration::from_secs(60)),
        )
        .unwrap()
}

fn waiter() -> Waiter {
    Waiter::new(WaiterId::generate(), WAITER_LEASE)
}

/// Lets the other tasks run until `done` (the paused clock moves on only
/// while every task is idle); fails after a minute of that clock.
async fn until(done: impl Fn() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < give_up, "the condition never held");
        tokio::time::sleep(MS).await;
    }
}

/// Memory 1: four lockers (as four processes) loop lock, hold, release:
/// the acquisitions follow the order in which they joined the line, round
/// after round (40 in all).
#[tokio::test(start_paused = true)]
async fn acquisitions_follow_the_join_order() {
    let store = MemoryBackend::new();
    let k = key("fifo");
    let holder = LockToken::generate();
    store.try_acquire(&k, &holder, TTL, None).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for id in 0..4usize {
        let (l, order) = (locker(&store), order.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let guard = l.lock("fifo").await.unwrap();
                order.lock().unwrap().push(id);
                tokio::time::sleep(Duration::from_millis(5)).await;
                assert_eq!(guard.release().await.unwrap(), Release::Released);
            }
        }));
        // Joined in this order.
        until(|| store.queued_waiters(&k) == id + 1).await;
    }
    assert_eq!(store.release(&k, &holder).await.unwrap(), Release::Released);
    for task in tasks {
        task.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    let expected: Vec<usize> = (0..40).map(|i| i % 4).collect();
    assert_eq!(order, expected);
    // Memory 5: nothing left behind once everyone has left.
    assert_eq!(store.queued_waiters(&k), 0);
    assert_eq!(store.stored_entries(), 0);
    assert_eq!(store.registered_waiters(), 0);
}

/// Memory 2: a waiter that joined once and never calls again (dead) is
/// handed the lock at the release; the live waiter behind it gets it
/// exactly one claim window + 1 ms later. Three dead waiters that crashed
/// together at t cost at most their lease + one claim window + 1 ms after t.
#[tokio::test(start_paused = true)]
async fn dead_waiters_cost_a_claim_window_each_at_most() {
    let store = MemoryBackend::new();
    let k = key("dead");
    let holder = LockToken::generate();
    store.try_acquire(&k, &holder, TTL, None).await.unwrap();
    let dead = LockToken::generate();
    let got = store
        .try_acquire_queued(&k, &dead, TTL, None, &waiter())
        .await
        .unwrap();
    assert!(matches!(got, Acquire::Held { .. }), "{got:?}");
    let live = locker(&store);
    let task = tokio::spawn(async move {
        let guard = live.lock("dead").await.unwrap();
        (Instant::now(), guard)
    });
    until(|| store.queued_waiters(&k) == 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await; // the dead one keeps its place
    let released_at = Instant::now();
    store.release(&k, &holder).await.unwrap();
    let info = store.inspect(&k).await.unwrap();
    assert!(
        info.held && info.owner.is_none(),
        "handed to the dead waiter"
    );
    let (acquired_at, guard) = task.await.unwrap();
    assert_eq!(acquired_at - released_at, CLAIM + MS);
    guard.release().await.unwrap();

    // Three waiters crash together at t (their last calls).
    let holder = LockToken::generate();
    store.try_acquire(&k, &holder, TTL, None).await.unwrap();
    let crashed_at = Instant::now();
    for _ in 0..3 {
        store
            .try_acquire_queued(&k, &LockToken::generate(), TTL, None, &waiter())
            .await
            .unwrap();
    }
    let live = locker(&store);
    let task = tokio::spawn(async move {
        let guard = live.lock("dead").await.unwrap();
        (Instant::now(), guard)
    });
    until(|| store.queued_waiters(&k) == 4).await;
    store.release(&k, &holder).await.unwrap();
    let (acquired_at, guard) = task.await.unwrap();
    assert!(
        acquired_at - crashed_at <= WAITER_LEASE + CLAIM + MS,
        "took {:?}",
        acquired_at - crashed_at
    );
    guard.release().await.unwrap();
    assert_eq!(store.queued_waiters(&k), 0);
}

/// Memory 3: a waiter cancelled in line gives its place back on
/// `flush()`, so the next release hands over to the waiter behind it at
/// once.
#[tokio::test(start_paused = true)]
async fn a_cancelled_waiter_costs_nothing_after_flush() {
    let store = MemoryBackend::new();
    let k = key("cancel");
    let holder = LockToken::generate();
    store.try_acquire(&k, &holder, TTL, None).await.unwrap();
    let cancelled = locker(&store);
    let pending = {
        let cancelled = cancelled.clone();
        tokio::spawn(async move { cancelled.lock("cancel").await })
    };
    until(|| store.queued_waiters(&k) == 1).await;
    let behind = locker(&store);
    let task = tokio::spawn(async move {
        let guard = behind.lock("cancel").await.unwrap();
        (Instant::now(), guard)
    });
    until(|| store.queued_waiters(&k) == 2).await;
    pending.abort();
    assert!(pending.await.unwrap_err().is_cancelled());
    cancelled.flush().await;
    assert_eq!(store.queued_waiters(&k), 1, "the cancelled place is gone");
    let released_at = Instant::now();
    store.release(&k, &holder).await.unwrap();
    let (acquired_at, guard) = task.await.unwrap();
    assert_eq!(acquired_at, released_at, "no claim window lost");
    guard.release().await.unwrap();
    assert_eq!(store.registered_waiters(), 0);
    assert_eq!(store.stored_entries(), 0);
}

/// Memory 4: a handover counts exactly one fencing token, which the claim
/// returns; a handover that lapses unclaimed skips one; a waiter that comes
/// back after its grant lapsed joins the tail and never holds unclaimed.
#[tokio::test(start_paused = true)]
async fn a_handover_counts_one_fence_and_a_lapsed_one_skips_it() {
    let store = MemoryBackend::new();
    let k = key("fence");
    let (h, w1, w2, w3) = (
        LockToken::generate(),
        LockToken::generate(),
        LockToken::generate(),
        LockToken::generate(),
    );
    let (q1, q2) = (waiter(), waiter());
    let Acquire::Acquired { fence: f } = store.try_acquire(&k, &h, TTL, None).await.unwrap() else {
        panic!("free")
    };
    let joined = store
        .try_acquire_queued(&k, &w1, TTL, None, &q1)
        .await
        .unwrap();
    assert!(matches!(joined, Acquire::Held { .. }));
    store.release(&k, &h).await.unwrap();
    let info = store.inspect(&k).await.unwrap();
    assert_eq!(info.last_fence, Some(f + 1), "the handover counted one");
    assert!(info.remaining.unwrap() <= CLAIM);
    let claimed = store
        .try_acquire_queued(&k, &w1, TTL, None, &q1)
        .await
        .unwrap();
    assert_eq!(claimed, Acquire::Acquired { fence: f + 1 });
    let again = store
        .try_acquire_queued(&k, &w1, TTL, None, &q1)
        .await
        .unwrap();
    assert_eq!(
        again,
        Acquire::Acquired { fence: f + 1 },
        "a repeated claim"
    );
    assert!(
        store.inspect(&k).await.unwrap().remaining.unwrap() > CLAIM,
        "claimed for the TTL"
    );

    // w2 is handed the lock and never claims it.
    store
        .try_acquire_queued(&k, &w2, TTL, None, &q2)
        .await
        .unwrap();
    store.release(&k, &w1).await.unwrap();
    assert_eq!(store.inspect(&k).await.unwrap().last_fence, Some(f + 2));
    tokio::time::advance(CLAIM).await;
    assert!(!store.inspect(&k).await.unwrap().held, "the grant lapsed");
    let taken = store
        .try_acquire_queued(&k, &w3, TTL, None, &waiter())
        .await
        .unwrap();
    assert_eq!(taken, Acquire::Acquired { fence: f + 3 });
    // w2 comes back: the lock is w3's; w2 is in line again, holding nothing.
    let back = store
        .try_acquire_queued(&k, &w2, TTL, None, &q2)
        .await
        .unwrap();
    assert!(matches!(back, Acquire::Held { .. }), "{back:?}");
    assert_eq!(store.queued_waiters(&k), 1);
    assert_eq!(store.release(&k, &w2).await.unwrap(), Release::NotHeld);
    assert_eq!(store.queued_waiters(&k), 0, "released: out of line");
    store.release(&k, &w3).await.unwrap();
}

/// Memory 5: places lapse one waiter lease after their last call, and a
/// store with many lapsed lines sweeps them as it grows.
#[tokio::test(start_paused = true)]
async fn lapsed_places_leave_nothing_behind() {
    let store = MemoryBackend::new();
    let k = key("lapse");
    let h = LockToken::generate();
    store.try_acquire(&k, &h, TTL, None).await.unwrap();
    store
        .try_acquire_queued(&k, &LockToken::generate(), TTL, None, &waiter())
        .await
        .unwrap();
    assert_eq!(store.queued_waiters(&k), 1);
    tokio::time::advance(WAITER_LEASE - MS).await;
    assert_eq!(store.queued_waiters(&k), 1);
    tokio::time::advance(MS).await;
    assert_eq!(store.queued_waiters(&k), 0);
    store.release(&k, &h).await.unwrap();
    assert!(
        !store.inspect(&k).await.unwrap().held,
        "nobody live to hand it to"
    );
    assert_eq!(store.stored_entries(), 0);

    // 5000 names, each with a holder and a waiter that goes away.
    for i in 0..5000u32 {
        let k = key(&format!("many-{i}"));
        store
            .try_acquire(&k, &LockToken::generate(), Duration::from_millis(10), None)
            .await
            .unwrap();
        store
            .try_acquire_queued(&k, &LockToken::generate(), TTL, None, &waiter())
            .await
            .unwrap();
        if i % 500 == 499 {
            tokio::time::advance(WAITER_LEASE).await;
        }
    }
    assert!(
        store.stored_entries() < 5000,
        "{} entries kept",
        store.stored_entries()
    );
}

/// A token that took the lock with a plain call while it still had a
/// place in the line (a quorum does this on a member that is no longer
/// its gate) is never handed the lock by its own release: the release
/// drops that place, as Redis's release skips the releasing token. Before,
/// the lock went straight back to the releaser for its claim window.
#[tokio::test(start_paused = true)]
async fn a_release_never_hands_the_lock_to_the_releasers_own_place() {
    let store = MemoryBackend::new();
    let k = key("own-place");
    let (x, a, b) = (
        LockToken::generate(),
        LockToken::generate(),
        LockToken::generate(),
    );
    let short = Duration::from_millis(100);
    assert!(matches!(
        store.try_acquire(&k, &x, short, None).await.unwrap(),
        Acquire::Acquired { .. }
    ));
    let queued = store
        .try_acquire_queued(&k, &a, TTL, None, &waiter())
        .await
        .unwrap();
    assert!(matches!(queued, Acquire::Held { .. }), "{queued:?}");
    // X's lease ends; A takes the free key with a plain call, its place
    // still live.
    tokio::time::sleep(short + MS).await;
    assert!(matches!(
        store.try_acquire(&k, &a, TTL, None).await.unwrap(),
        Acquire::Acquired { .. }
    ));
    assert_eq!(store.release(&k, &a).await.unwrap(), Release::Released);
    let after = store.try_acquire(&k, &b, TTL, None).await.unwrap();
    assert!(
        matches!(after, Acquire::Acquired { .. }),
        "released, so free for anyone: {after:?}"
    );
}
