//! A reference fenced resource: the storage side of fencing tokens.
//!
//! A lease lock cannot stop a holder that pauses past its lease (GC, swap, a
//! stopped VM) from waking up and writing as if it still held the lock. The
//! protected resource closes that gap itself: it remembers the highest
//! fencing token ([`Lease::fence`](distlock::Lease::fence)) it has accepted
//! and refuses writes that carry a lower one. [`FencedResource`] is that
//! rule in a few lines, for tests, examples and as a model for real stores.
//!
//! ```
//! use distlock_conformance::fenced::{FencedResource, StaleFence};
//!
//! let account = FencedResource::new();
//! account.write(33, "A: balance 100").unwrap();   // holder A, token 33
//! account.write(34, "B: balance 250").unwrap();   // A paused and expired; B got 34
//! // A wakes up and writes with its old token: refused, nothing changes.
//! let err = account.write(33, "A: balance 90").unwrap_err();
//! assert_eq!(err, StaleFence { presented: 33, highest: 34 });
//! assert_eq!(account.value(), Some("B: balance 250"));
//! ```
//!
//! The same rule in SQL, with the token stored beside the row:
//!
//! ```sql
//! UPDATE accounts SET balance = $1, fence = $token
//!  WHERE id = $id AND fence <= $token;  -- 0 rows updated: a stale holder
//! ```

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

/// A store that accepts a write only with a fencing token at least as high
/// as the highest it has accepted so far.
///
/// Equal tokens are accepted, so one holder can write several times during
/// one lease. A rejected write changes nothing and returns [`StaleFence`]
/// with both tokens. Clones share the same state, like handles to one
/// database; all methods are safe to call from many tasks and threads.
#[derive(Clone)]
pub struct FencedResource<T> {
    state: Arc<Mutex<State<T>>>,
}

struct State<T> {
    highest: Option<u64>,
    value: Option<T>,
    accepted: u64,
    rejected: u64,
}

/// A write refused by a [`FencedResource`] because its fencing token is
/// lower than one the resource already accepted: the writer's lease ended
/// and someone else has held the lock since.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StaleFence {
    /// The fencing token the refused write carried.
    pub presented: u64,
    /// The highest fencing token the resource had accepted.
    pub highest: u64,
}

impl fmt::Display for StaleFence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stale write refused: fencing token {} is lower than {}, which was already accepted",
            self.presented, self.highest
        )
    }
}

impl std::error::Error for StaleFence {}

impl<T> FencedResource<T> {
    /// An empty resource that has seen no token yet (it accepts any).
    pub fn new() -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                highest: None,
                value: None,
                accepted: 0,
                rejected: 0,
            })),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores `value` if `fence` is at least the highest token accepted so
    /// far, and remembers `fence`; otherwise changes nothing and returns
    /// [`StaleFence`] with both tokens.
    pub fn write(&self, fence: u64, value: T) -> Result<(), StaleFence> {
        let mut state = self.state();
        if let Some(highest) = state.highest {
            if fence < highest {
                state.rejected += 1;
                return Err(StaleFence {
                    presented: fence,
                    highest,
                });
            }
        }
        state.highest = Some(fence);
        state.value = Some(value);
        state.accepted += 1;
        Ok(())
    }

    /// The highest fencing token accepted so far (`None` before the first
    /// write).
    pub fn highest_fence(&self) -> Option<u64> {
        self.state().highest
    }

    /// How many writes were accepted.
    pub fn accepted_writes(&self) -> u64 {
        self.state().accepted
    }

    /// How many writes were refused as stale.
    pub fn rejected_writes(&self) -> u64 {
        self.state().rejected
    }
}

impl<T: Clone> FencedResource<T> {
    /// The value of the last accepted write.
    pub fn value(&self) -> Option<T> {
        self.state().value.clone()
    }
}

impl<T> Default for FencedResource<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for FencedResource<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("FencedResource")
            .field("highest_fence", &state.highest)
            .field("accepted", &state.accepted)
            .field("rejected", &state.rejected)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_equal_and_higher_tokens() {
        let r = FencedResource::new();
        assert_eq!(r.highest_fence(), None);
        assert_eq!(r.value(), None::<&str>);
        r.write(5, "a").unwrap();
        r.write(5, "b").unwrap();
        r.write(9, "c").unwrap();
        assert_eq!(r.highest_fence(), Some(9));
        assert_eq!(r.value(), Some("c"));
        assert_eq!((r.accepted_writes(), r.rejected_writes()), (3, 0));
    }

    #[test]
    fn refuses_a_lower_token_with_both_tokens_and_changes_nothing() {
        let r = FencedResource::new();
        r.write(34, 250).unwrap();
        let err = r.write(33, 90).unwrap_err();
        assert_eq!(
            err,
            StaleFence {
                presented: 33,
                highest: 34
            }
        );
        assert_eq!(r.highest_fence(), Some(34));
        assert_eq!(r.value(), Some(250));
        assert_eq!((r.accepted_writes(), r.rejected_writes()), (1, 1));
        let shown = err.to_string();
        assert!(shown.contains("33") && shown.contains("34"), "{shown}");
        // Token 0 (a backend without fencing) is refused once any token was seen.
        assert_eq!(
            r.write(0, 1),
            Err(StaleFence {
                presented: 0,
                highest: 34
            })
        );
    }

    #[test]
    fn the_first_write_accepts_any_token_and_clones_share_state() {
        let r = FencedResource::new();
        let other = r.clone();
        other.write(0, "first").unwrap();
        assert_eq!(r.highest_fence(), Some(0));
        assert_eq!(r.value(), Some("first"));
        assert!(format!("{r:?}").contains("highest_fence: Some(0)"));
    }

    #[test]
    fn concurrent_writers_never_lower_the_highest_token() {
        let r = FencedResource::new();
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for i in 0..500u64 {
                        let fence = (i * 8 + t) % 1000;
                        let before = r.highest_fence().unwrap_or(0);
                        match r.write(fence, fence) {
                            Ok(()) => assert!(r.highest_fence().unwrap() >= fence),
                            Err(e) => {
                                assert_eq!(e.presented, fence);
                                assert!(e.highest > fence && e.highest >= before);
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(r.accepted_writes() + r.rejected_writes(), 8 * 500);
        let highest = r.highest_fence().unwrap();
        assert_eq!(r.value(), Some(highest));
        assert_eq!(highest, 999);
    }
}
