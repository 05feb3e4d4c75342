//! Which keys are contended, and which member gates their acquisitions.
//!
//! An uncontended acquisition calls every member at once (one parallel
//! round trip). Under contention that lets racers split the vote: each gets
//! some members, nobody a majority, every partial hold is given back (and
//! each give-back is a release event that wakes more waiters), and the
//! round is lost for everyone. So while a key is contended (a member
//! answered "held" to an acquisition that asked every member, within
//! [`CONTENDED_FOR`]; the gate's own answers do not count, so a stale hold
//! on the gate alone delays a free majority by at most that long), an
//! acquisition first asks one member, the **gate**: the first member in
//! list order that has not failed an acquisition within [`GATE_REST`].
//! Whoever wins the gate asks the others (and may briefly retry the ones
//! still held, see `acquire`); whoever finds the gate held stops there,
//! holding nothing and giving nothing back. Racers that list the members in
//! the same order share the gate, so at most one of them goes on to the
//! other members. A waiter in a line of waiters (a queued call) asks the
//! gate first whether or not the key counts as contended here, since its
//! wake-up is the gate's handover; when the key does not count as
//! contended it also asks the others after finding the gate held (the
//! same one-second bound on a stale hold). This changes who waits, never
//! what counts as held: the majority rule, the validity check and the
//! fencing are the same on both paths.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::key::LockKey;

/// How long a key counts as contended after a member answered "held".
pub(super) const CONTENDED_FOR: Duration = Duration::from_secs(1);

/// How long a member that failed an acquisition is not used as the gate
/// (a hung gate would cost every contended attempt the member timeout).
pub(super) const GATE_REST: Duration = Duration::from_secs(10);

/// Above this many remembered keys, stale ones are dropped on insert.
const PRUNE_ABOVE: usize = 1024;

/// Per-quorum memory of contended keys and failing members.
pub(super) struct Contention {
    /// Encoded key → when a member last answered "held" for it.
    keys: Mutex<HashMap<String, Instant>>,
    /// Per member: when it last failed an acquisition.
    failed: Vec<Mutex<Option<Instant>>>,
}

impl Contention {
    pub(super) fn new(members: usize) -> Self {
        Self {
            keys: Mutex::new(HashMap::new()),
            failed: (0..members).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// A member answered "held" for `key`.
    pub(super) fn saw_held(&self, key: &LockKey) {
        let now = Instant::now();
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if keys.len() >= PRUNE_ABOVE {
            keys.retain(|_, at| now.duration_since(*at) < CONTENDED_FOR);
        }
        keys.insert(key.encoded().to_owned(), now);
    }

    /// Member `i` failed (error or timeout) an acquisition or a release.
    pub(super) fn member_failed(&self, i: usize) {
        if let Some(slot) = self.failed.get(i) {
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        }
    }

    /// The gate for an acquisition of `key`: `None` when the key is not
    /// contended (call every member at once) or every member failed lately.
    pub(super) fn gate(&self, key: &LockKey) -> Option<usize> {
        if !self.contended(key) {
            return None;
        }
        self.gate_member()
    }

    /// Whether a member answered "held" for `key` to a round that asked
    /// every member within [`CONTENDED_FOR`].
    pub(super) fn contended(&self, key: &LockKey) -> bool {
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        keys.get(key.encoded())
            .is_some_and(|at| at.elapsed() < CONTENDED_FOR)
    }

    /// The member that is the gate of every contended key now: the first
    /// in list order that has not failed within [`GATE_REST`] (`None` if
    /// all have). A release waits for this member's answer (see
    /// `ops::release`).
    pub(super) fn gate_member(&self) -> Option<usize> {
        self.first_healthy(Instant::now())
    }

    fn first_healthy(&self, now: Instant) -> Option<usize> {
        self.failed.iter().position(|slot| {
            match *slot.lock().unwrap_or_else(PoisonError::into_inner) {
                Some(at) => now.duration_since(at) >= GATE_REST,
                None => true,
            }
        })
    }
}
