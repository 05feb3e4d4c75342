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

/// The first-come-first-served queue of the tasks of one process that wait
/// for the same key. Only the task at the head talks to the backend; the
/// others wait for their turn locally, so a release wakes one task per
/// process instead of all of them.
#[derive(Default)]
pub(crate) struct Turns {
    keys: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Turns {
    /// Waits until this task is first in line for `key`. Cancel safe: a
    /// dropped future leaves the queue.
    pub(crate) async fn enter(self: &Arc<Self>, key: &str) -> Turn {
        let sem = {
            let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
            keys.entry(key.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(1)))
                .clone()
        };
        let mut turn = Turn {
            turns: self.clone(),
            key: key.to_owned(),
            sem: Some(sem.clone()),
            permit: None,
            waited: false,
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
        self.keys.lock().unwrap().len()
    }
}

/// A place in the queue of [`Turns`]; leaving it (drop) lets the next task in.
pub(crate) struct Turn {
    turns: Arc<Turns>,
    key: String,
    sem: Option<Arc<Semaphore>>,
    permit: Option<OwnedSemaphorePermit>,
    waited: bool,
}

impl Turn {
    /// Whether another task of this process was ahead in line, i.e. a
    /// sibling most likely holds the lock right now.
    pub(crate) fn waited(&self) -> bool {
        self.waited
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
            if Arc::strong_count(&sem) == 2 {
                keys.remove(&self.key);
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
}
