//! Waiting for a held lock: retry delays and the per-process queue of
//! waiters.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::Rng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Exponential backoff with full jitter: the n-th delay is drawn uniformly
/// from `[min, min(max, min * 2^n)]`.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    ceiling: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            ceiling: min,
        }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let (lo, hi) = (self.min.as_nanos() as u64, self.ceiling.as_nanos() as u64);
        let delay = Duration::from_nanos(rand::rng().random_range(lo..=hi.max(lo)));
        self.ceiling = (self.ceiling * 2).min(self.max);
        delay
    }
}

/// How long a waiter in a backend's line sleeps at most between calls:
/// a third of [`WAITER_LEASE`](crate::WAITER_LEASE) with ±10 % jitter, so
/// it calls again well before its place lapses, and waiters of many
/// processes do not call in step.
pub(crate) fn refresh_period() -> Duration {
    let base = crate::WAITER_LEASE / 3;
    let tenth = base / 10;
    let (lo, hi) = (base - tenth, base + tenth);
    Duration::from_nanos(rand::rng().random_range(lo.as_nanos() as u64..=hi.as_nanos() as u64))
}

/// Runs `fut` to its end, or until `deadline` if there is one (`None`
/// when it is dropped there).
pub(crate) async fn within<T>(
    deadline: Option<tokio::time::Instant>,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    match deadline {
        Some(at) => tokio::time::timeout_at(at, fut).await.ok(),
        None => Some(fut.await),
    }
}

/// A waiting `lock()`'s registration for release events (`watch` or
/// `watch_queued`), bounded by the wait `deadline`: `timed_out()` when cut
/// off there, and a backend error counted where it happens, as every
/// failed call of a wait is (`telemetry::wait_error`).
pub(crate) async fn registered(
    key: &crate::LockKey,
    deadline: Option<tokio::time::Instant>,
    registration: impl std::future::Future<
        Output = Result<Option<crate::ReleaseWatch>, crate::BackendError>,
    >,
    timed_out: impl FnOnce() -> crate::LockError,
) -> Result<Option<crate::ReleaseWatch>, crate::LockError> {
    within(deadline, registration)
        .await
        .ok_or_else(timed_out)?
        .map_err(|e| {
            let e = crate::LockError::from(e);
            crate::telemetry::wait_error(key, &e, false);
            e
        })
}

/// Whether a failed attempt of a waiting call ([`Locker::lock`]) is worth
/// another one while the wait deadline allows: transient backend errors
/// (the server restarting, busy with a script, failing over; a timeout; a
/// busy pool) pass, so a waiter with time left keeps waiting through them
/// (with backoff) instead of failing. Anything else ends the wait at once.
///
/// [`Locker::lock`]: crate::Locker::lock
pub(crate) fn retry_while_waiting(err: &crate::LockError) -> bool {
    matches!(err, crate::LockError::Backend(e) if e.is_transient())
}

/// How long after a `Held` answer for a key this process's `lock()` calls
/// on it go queue-first ([`Turn::contended`]): they register for the
/// handover before their first call and join the backend's line with it.
pub(crate) const CONTENTION_HINT: Duration = Duration::from_secs(1);

/// The smallest map size at which [`Turns`] prunes entries kept only for
/// their contention hint.
const MIN_PRUNE_LEN: usize = 64;

/// The first-come-first-served queue of the tasks of one process that wait
/// for the same key. Only the task at the head talks to the backend; the
/// others wait for their turn locally, so a release wakes one task per
/// process instead of all of them.
#[derive(Default)]
pub(crate) struct Turns {
    keys: Mutex<Keys>,
}

#[derive(Default)]
struct Keys {
    map: HashMap<String, Slot>,
    /// Prune when the map reaches this size (doubling, as the memory
    /// store sweeps).
    prune_at: usize,
}

/// One key's queue, and its contention hint.
struct Slot {
    sem: Arc<Semaphore>,
    /// A `lock()` call on the key was answered `Held` by a backend with a
    /// line of waiters until this moment minus [`CONTENTION_HINT`]. An
    /// entry with a hot hint stays in the map with nobody in line.
    contended_until: Option<tokio::time::Instant>,
}

impl Slot {
    fn hot(&self) -> bool {
        self.contended_until
            .is_some_and(|until| until > tokio::time::Instant::now())
    }
}

impl Keys {
    /// Drops entries that nobody is in line for and whose hint has cooled,
    /// once the map has doubled since the last prune (amortised O(1)).
    fn maybe_prune(&mut self) {
        if self.map.len() < self.prune_at.max(MIN_PRUNE_LEN) {
            return;
        }
        self.map
            .retain(|_, slot| Arc::strong_count(&slot.sem) > 1 || slot.hot());
        self.prune_at = self.map.len() * 2;
    }
}

impl Turns {
    /// Waits until this task is first in line for `key`. Cancel safe: a
    /// dropped future leaves the queue.
    pub(crate) async fn enter(self: &Arc<Self>, key: &str) -> Turn {
        let (sem, contended) = {
            let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
            keys.maybe_prune();
            let slot = keys.map.entry(key.to_owned()).or_insert_with(|| Slot {
                sem: Arc::new(Semaphore::new(1)),
                contended_until: None,
            });
            (slot.sem.clone(), slot.hot())
        };
        let mut turn = Turn {
            turns: self.clone(),
            key: key.to_owned(),
            sem: Some(sem.clone()),
            permit: None,
            waited: false,
            contended,
        };
        turn.permit = match sem.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                turn.waited = true;
                // The semaphore is never closed.
                sem.acquire_owned().await.ok()
            }
        };
        turn
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.keys.lock().unwrap().map.len()
    }
}

/// A place in the queue of [`Turns`]; leaving it (drop) lets the next task in.
pub(crate) struct Turn {
    turns: Arc<Turns>,
    key: String,
    sem: Option<Arc<Semaphore>>,
    permit: Option<OwnedSemaphorePermit>,
    waited: bool,
    contended: bool,
}

impl Turn {
    /// Whether another task of this process was ahead in line, i.e. a
    /// sibling most likely holds the lock right now.
    pub(crate) fn waited(&self) -> bool {
        self.waited
    }

    /// Whether the key's contention hint was hot when this turn began: a
    /// `lock()` call of this process was answered `Held` for it less than
    /// [`CONTENTION_HINT`] before.
    pub(crate) fn contended(&self) -> bool {
        self.contended
    }

    /// Records a `Held` answer for this turn's key: the hint is hot for
    /// [`CONTENTION_HINT`] from now.
    pub(crate) fn mark_contended(&self) {
        let until = tokio::time::Instant::now() + CONTENTION_HINT;
        let mut keys = self
            .turns
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // The entry exists while this turn holds its semaphore.
        if let Some(slot) = keys.map.get_mut(&self.key) {
            slot.contended_until = Some(until);
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut keys = self
            .turns
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        drop(self.permit.take());
        if let Some(sem) = self.sem.take() {
            // Only the map and this turn know the semaphore: nobody waits.
            // An entry with a hot hint stays (pruned later).
            if Arc::strong_count(&sem) == 2 && !keys.map.get(&self.key).is_some_and(Slot::hot) {
                keys.map.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_and_stays_in_range() {
        let (min, max) = (Duration::from_millis(5), Duration::from_millis(100));
        let mut b = Backoff::new(min, max);
        for _ in 0..50 {
            let d = b.next_delay();
            assert!(d >= min && d <= max, "{d:?}");
        }
        assert_eq!(b.ceiling, max);
    }

    #[tokio::test]
    async fn turns_are_fifo_and_leave_no_entries() {
        let turns = Arc::new(Turns::default());
        let first = turns.enter("k").await;
        assert!(!first.waited());
        let t2 = turns.clone();
        let second = tokio::spawn(async move { t2.enter("k").await });
        tokio::task::yield_now().await;
        assert!(!second.is_finished());
        drop(first);
        let second = second.await.unwrap();
        assert!(second.waited());
        drop(second);
        assert_eq!(turns.len(), 0);
        // A cancelled waiter leaves nothing behind either.
        let held = turns.enter("k").await;
        let t3 = turns.clone();
        let waiter = tokio::spawn(async move { t3.enter("k").await });
        tokio::task::yield_now().await;
        waiter.abort();
        let _ = waiter.await;
        drop(held);
        assert_eq!(turns.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_contention_hint_lasts_a_second_and_its_entries_are_pruned() {
        let turns = Arc::new(Turns::default());
        let turn = turns.enter("k").await;
        assert!(!turn.contended());
        turn.mark_contended();
        drop(turn);
        assert_eq!(turns.len(), 1, "kept while the hint is hot");
        let turn = turns.enter("k").await;
        assert!(turn.contended());
        drop(turn);
        tokio::time::advance(CONTENTION_HINT).await;
        let turn = turns.enter("k").await;
        assert!(!turn.contended(), "cooled");
        drop(turn);
        assert_eq!(turns.len(), 0);
        // Many hot keys, then cooled: pruned as the map grows.
        for i in 0..MIN_PRUNE_LEN {
            turns.enter(&i.to_string()).await.mark_contended();
        }
        assert_eq!(turns.len(), MIN_PRUNE_LEN);
        tokio::time::advance(CONTENTION_HINT).await;
        drop(turns.enter("other").await);
        assert_eq!(turns.len(), 0);
    }
}
