//! The holds this quorum has reported, so that a repeated acquire by the
//! token that holds a key keeps what it holds.
//!
//! A member answers a repeated acquire of the token that holds it as
//! acquired (the trait's rule), so the members' answers cannot tell a hold
//! from before this call from one this call made. An acquisition that
//! finds no majority gives back every member that may hold the key for its
//! token, which is right for an attempt that never held a majority, but for
//! a token that already held the key through this quorum it would give the
//! lock away under its guard (found by a differential test: with one member
//! down, the holder's repeated acquire gave back its majority and another
//! client took the lock while the holder still counted on it). So a
//! repeated acquire of a held key takes its own path
//! ([`repeat`](super::acquire::repeat)), which never gives anything back.
//!
//! An entry lives from the acquisition the quorum reported until the
//! token's release or give-back through the quorum, an extend that found
//! it not held, or the end of its lease.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::key::LockKey;
use crate::token::LockToken;

/// Below this many entries no sweep runs.
const MIN_SWEEP_LEN: usize = 256;

/// The holds of one quorum, by key and token; see the module docs.
#[derive(Default)]
pub(super) struct Holds {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// By (a hash of the encoded key, the token): no allocation per hold.
    /// Tokens are random 128-bit values, so an entry cannot be mistaken
    /// for another token's.
    holds: HashMap<HoldId, Hold>,
    sweep_at: usize,
}

struct Hold {
    /// The fencing token the quorum handed out for this hold; `None` for a
    /// hold the quorum never reported acquired but a majority extended (a
    /// handover on the gate member plus holds on others).
    fence: Option<u64>,
    /// Its lease has surely ended by then.
    until: Instant,
}

/// Which hold: a key and a token, hashed once per acquisition (it is
/// looked up first, then recorded).
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct HoldId(u64, LockToken);

impl HoldId {
    pub(super) fn new(key: &LockKey, token: &LockToken) -> Self {
        let mut h = DefaultHasher::new();
        key.encoded().hash(&mut h);
        Self(h.finish(), token.clone())
    }
}

impl Holds {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `Some(fence)` if the key is held by the token through this quorum (an
    /// acquisition it reported, or an extend a majority confirmed) and its
    /// lease may not have ended: the fencing token the quorum handed out
    /// for it, if it did.
    pub(super) fn held(&self, id: &HoldId) -> Option<Option<u64>> {
        let state = self.state();
        let hold = state.holds.get(id)?;
        (hold.until > Instant::now()).then_some(hold.fence)
    }

    /// The quorum reported the key acquired by the token with `fence`; the
    /// majority's leases end within `keep` from now (the TTL: the holder's
    /// guard counts on less, the TTL minus the drift allowance, from an
    /// earlier instant). A minority may hold it longer (a late answer, a
    /// failed extend): that is no quorum hold.
    pub(super) fn acquired(&self, id: HoldId, fence: u64, keep: Duration) {
        let now = Instant::now();
        let mut state = self.state();
        if state.holds.len() >= state.sweep_at.max(MIN_SWEEP_LEN) {
            state.holds.retain(|_, h| h.until > now);
            state.sweep_at = state.holds.len() * 2;
        }
        let until = now + keep;
        let fence = Some(fence);
        state.holds.insert(id, Hold { fence, until });
    }

    /// A majority extended the hold: its leases now end within `keep`
    /// from now, sooner than before if the new TTL is shorter. A token the
    /// quorum never reported acquired holds the key from now on too (a
    /// majority says so), without a fencing token of the quorum's.
    pub(super) fn extended(&self, key: &LockKey, token: &LockToken, keep: Duration) {
        let until = Instant::now() + keep;
        self.state()
            .holds
            .entry(HoldId::new(key, token))
            .and_modify(|hold| hold.until = until)
            .or_insert(Hold { fence: None, until });
    }

    /// A majority renewed the hold by a repeated acquire, which never
    /// shortens a lease (they end within `keep` from now at the earliest),
    /// and the quorum answered it with `fence`.
    pub(super) fn renewed(&self, key: &LockKey, token: &LockToken, fence: u64, keep: Duration) {
        let until = Instant::now() + keep;
        if let Some(hold) = self.state().holds.get_mut(&HoldId::new(key, token)) {
            hold.until = hold.until.max(until);
            hold.fence = Some(fence);
        }
    }

    /// The hold ended: released, given back, or found not held.
    pub(super) fn ended(&self, key: &LockKey, token: &LockToken) {
        self.state().holds.remove(&HoldId::new(key, token));
    }
}
