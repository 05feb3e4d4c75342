//! Mutual exclusion under contention.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use distlock::{LockError, LockOptions, Release};
use tokio::sync::Barrier;
use tokio::time::Instant;

use crate::support::{locker, ttl};
use crate::{unique_name, Harness};

/// 64 clients race `try_lock` on one free name at once: never more than one
/// wins, and one wins within a few rounds (a quorum's split vote may leave a
/// round without a winner).
pub async fn racing_try_lock_has_one_winner<H: Harness>(h: &H) {
    const RACERS: usize = 64;
    // Never two winners. A quorum may see a split vote (each racer holds a
    // minority of the members) and let a round end without a winner, as
    // Redlock does; a backend where nobody ever wins fails after ROUNDS.
    const ROUNDS: usize = 5;
    for _ in 0..ROUNDS {
        let name = unique_name("race");
        let barrier = Arc::new(Barrier::new(RACERS));
        let mut tasks = Vec::with_capacity(RACERS);
        for _ in 0..RACERS {
            let (l, name, barrier) = (locker(h).await, name.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                l.try_lock_with(&name, |_| ttl(Duration::from_secs(10)))
                    .await
                    .expect("try_lock")
            }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            if let Some(guard) = task.await.unwrap() {
                winners.push(guard);
            }
        }
        assert!(
            winners.len() <= 1,
            "{} of {RACERS} racers won",
            winners.len()
        );
        if let Some(guard) = winners.pop() {
            assert_eq!(guard.release().await.unwrap(), Release::Released);
            return;
        }
    }
    panic!("no racer won in {ROUNDS} rounds of {RACERS}");
}

/// 32 tasks on 8 clients each run 50 lock-protected read–yield–write
/// increments of a plain shared counter: the count is exact and never more
/// than one task is inside.
pub async fn mutual_exclusion_counter<H: Harness>(h: &H) {
    const CLIENTS: usize = 8;
    const TASKS_PER_CLIENT: usize = 4;
    const ITERATIONS: u64 = 50;
    let name = unique_name("mutex");
    let value = Arc::new(AtomicU64::new(0));
    let inside = Arc::new(AtomicUsize::new(0));
    let max_inside = Arc::new(AtomicUsize::new(0));
    let opts = LockOptions::default()
        .with_ttl(Duration::from_secs(30))
        .with_wait_timeout(Duration::from_secs(120))
        .with_retry(Duration::from_millis(1), Duration::from_millis(20));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let l = locker(h).await;
        for _ in 0..TASKS_PER_CLIENT {
            let (l, name, opts) = (l.clone(), name.clone(), opts.clone());
            let (value, inside, max_inside) = (value.clone(), inside.clone(), max_inside.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..ITERATIONS {
                    let guard = l.lock_with(&name, |_| opts.clone()).await.expect("lock");
                    let now_inside = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    max_inside.fetch_max(now_inside, Ordering::SeqCst);
                    assert_eq!(
                        now_inside, 1,
                        "two holders at once: lock() granted a lock another task held \
                         (the acquire is not atomic, or ignores an unexpired lease)"
                    );
                    // A non-atomic read-modify-write: only the lock protects it.
                    let read = value.load(Ordering::SeqCst);
                    if i % 10 == 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    } else {
                        tokio::task::yield_now().await;
                    }
                    value.store(read + 1, Ordering::SeqCst);
                    inside.fetch_sub(1, Ordering::SeqCst);
                    assert_eq!(
                        guard.release().await.unwrap(),
                        Release::Released,
                        "the holder's release found the lock no longer its own: someone \
                         else was granted it while it was held (two holders)"
                    );
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let expected = (CLIENTS * TASKS_PER_CLIENT) as u64 * ITERATIONS;
    assert_eq!(
        max_inside.load(Ordering::SeqCst),
        1,
        "tasks overlapped in the critical section"
    );
    assert_eq!(
        value.load(Ordering::SeqCst),
        expected,
        "increments were lost"
    );
}

/// Eight contenders on their own clients loop lock, short hold, release
/// for a second, and each goes on until it got the lock at least once: none
/// of them waits out a long wait timeout (30 s plus 20 slacks, so a slow
/// backend only makes the case slower, it does not fail it).
pub async fn every_contender_progresses<H: Harness>(h: &H) {
    const CONTENDERS: usize = 8;
    let name = unique_name("progress");
    let period = Duration::from_secs(1);
    let wait = Duration::from_secs(30) + h.timing_slack() * 20;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONTENDERS {
        let (l, name) = (locker(h).await, name.clone());
        tasks.push(tokio::spawn(async move {
            let opts = LockOptions::default()
                .with_ttl(Duration::from_secs(10))
                .with_wait_timeout(wait)
                .with_retry(Duration::from_millis(2), Duration::from_millis(20));
            let mut acquired = 0usize;
            while acquired == 0 || start.elapsed() < period {
                let guard = match l.lock_with(&name, |_| opts.clone()).await {
                    Ok(guard) => guard,
                    Err(LockError::TimedOut { .. }) => break,
                    Err(e) => panic!("lock: {e}"),
                };
                acquired += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
                assert_eq!(
                    guard.release().await.unwrap(),
                    Release::Released,
                    "the holder's release found the lock no longer its own: someone \
                     else was granted it while it was held (two holders)"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            acquired
        }));
    }
    let mut counts = Vec::new();
    for task in tasks {
        counts.push(task.await.unwrap());
    }
    assert!(
        counts.iter().all(|&n| n > 0),
        "a contender starved: acquisitions per contender {counts:?}"
    );
}
