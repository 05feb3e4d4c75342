//! Giving partial holds back, and what later attempts of the same token
//! must know about it.
//!
//! An acquisition that gets no majority releases what it may hold. A
//! `lock()` then tries again **with the same token** (one token serves a
//! whole wait, so the line of waiters can hand the lock to it), and a
//! member answers a repeated acquire of the token that holds it as
//! acquired. A give-back still on its way when the next attempt acquires
//! would delete that attempt's hold, and the guard would count a member it
//! no longer holds. Two rules prevent it:
//!
//! 1. **Settled first.** The give-backs of a token that run in the
//!    background (to members that failed or had not answered) are
//!    registered here; the next acquisition of that key and token waits
//!    for them to finish before it asks any member. Each of their calls is
//!    bounded (the member timeout), so the wait is too.
//! 2. **Unknown outcomes do not count.** A give-back that failed (an error,
//!    or no answer within the member timeout) may still land later than any
//!    bound, for example when a stalled server resumes. That member does
//!    not count toward the majority of later acquisitions and extensions of
//!    the token: they may still hold it there, but the majority must come
//!    from the others. This lasts until the token is released through the
//!    quorum or goes unused for its TTL plus the member timeout, after
//!    which every hold it had has expired. A give-back cut off (its
//!    acquisition was cancelled, or the runtime shut down) ends with the
//!    members it had not heard from counted as unknown.
//! 3. **Running give-backs do not count for extends.** An acquisition
//!    that follows a give-back within the same call (the ordered round
//!    after a split vote) does not wait for the background give-backs of
//!    the members it skips; until those answer, an extend of the token
//!    does not count those members either (found in review: one that
//!    still held the token answered "extended", its give-back landed, and
//!    another client took a majority while the guard counted its lease).
//!
//! The cost of rule 2 is liveness, never safety: an acquisition whose
//! majority needs an uncounted member answers a transient
//! [`Unavailable`](crate::BackendErrorKind::Unavailable) error naming it,
//! marked [`needs_new_token`](crate::BackendError::needs_new_token), so a
//! waiting `lock()` goes on with a new token at once (which every member
//! counts) instead of retrying in vain until its wait ends. Which errors count as
//! unknown: every kind except those that say nothing was done
//! (`PoolExhausted`, `Conflict`, `Auth`, `Permission`, `Config`); a broken
//! connection (`Unavailable`) or a timeout may come after the request was
//! sent.
//!
//! A fresh token (every `try_lock`, every new `lock()`) finds nothing here
//! and pays one atomic load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::calls::{Answer, Calls};
use super::Inner;
use crate::backend::{Acquire, LockBackend, Release};
use crate::error::{BackendError, BackendErrorKind};
use crate::key::LockKey;
use crate::token::LockToken;

/// Above this many slots, registering a new one first drops the expired.
const SWEEP_ABOVE: usize = 256;

/// The give-backs of every key and token of one quorum; see the module docs.
#[derive(Default)]
pub(super) struct GiveBacks {
    slots: Mutex<HashMap<(LockKey, LockToken), Slot>>,
    /// How many slots exist: zero on the common path, which then takes no
    /// lock.
    live: AtomicUsize,
}

struct Slot {
    /// How many give-backs of this token are still running.
    running: watch::Sender<usize>,
    /// Members whose give-back had an unknown outcome.
    unknown: Vec<usize>,
    /// Members of the give-backs still running (one entry per member per
    /// give-back, until that give-back ends): a release may still land, so
    /// they do not count for the token's extends meanwhile (an acquisition
    /// waits for them instead).
    in_flight: Vec<usize>,
    /// When the slot may go: every hold of the token has expired by then.
    until: Instant,
    /// The token was released through the quorum while give-backs still
    /// ran: it is not used again, so the slot goes when they end.
    forgotten: bool,
}

impl GiveBacks {
    fn slots(&self) -> MutexGuard<'_, HashMap<(LockKey, LockToken), Slot>> {
        // A panic while holding the lock cannot leave a slot half-written
        // in a way that matters more than losing it; keep going.
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a give-back of `token` that is about to run; every call
    /// is matched by one [`GiveBacks::end`].
    fn begin(&self, key: &LockKey, token: &LockToken, keep: Duration, members: &[usize]) {
        let now = Instant::now();
        let mut slots = self.slots();
        if slots.len() >= SWEEP_ABOVE {
            slots.retain(|_, s| *s.running.borrow() > 0 || s.until > now);
        }
        let slot = slots
            .entry((key.clone(), token.clone()))
            .or_insert_with(|| Slot {
                running: watch::Sender::new(0),
                unknown: Vec::new(),
                in_flight: Vec::new(),
                until: now,
                forgotten: false,
            });
        slot.running.send_modify(|n| *n += 1);
        slot.in_flight.extend_from_slice(members);
        slot.until = slot.until.max(now + keep);
        self.live.store(slots.len(), Ordering::Release);
    }

    /// Ends a give-back registered by [`GiveBacks::begin`]; `unknown` are
    /// the members whose release had no clear answer.
    fn end(
        &self,
        key: &LockKey,
        token: &LockToken,
        unknown: &[usize],
        keep: Duration,
        members: &[usize],
    ) {
        let now = Instant::now();
        let id = (key.clone(), token.clone());
        let mut slots = self.slots();
        let Some(slot) = slots.get_mut(&id) else {
            return;
        };
        for &i in members {
            if let Some(p) = slot.in_flight.iter().position(|&m| m == i) {
                slot.in_flight.swap_remove(p);
            }
        }
        for &i in unknown {
            if !slot.unknown.contains(&i) {
                slot.unknown.push(i);
            }
        }
        slot.until = slot.until.max(now + keep);
        slot.running.send_modify(|n| *n = n.saturating_sub(1));
        if *slot.running.borrow() == 0 && (slot.unknown.is_empty() || slot.forgotten) {
            slots.remove(&id);
        }
        self.live.store(slots.len(), Ordering::Release);
    }

    /// Before an acquisition of `key` with `token` (which may hold it for
    /// `keep`): waits for the token's give-backs still running, then names
    /// the members that must not count (rule 2 of the module docs).
    pub(super) async fn settle(
        &self,
        key: &LockKey,
        token: &LockToken,
        keep: Duration,
    ) -> Vec<usize> {
        if self.live.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        let id = (key.clone(), token.clone());
        let mut running = match self.slots().get(&id) {
            None => return Vec::new(),
            Some(slot) => slot.running.subscribe(),
        };
        // Every call of a give-back is bounded, so this ends; a dropped
        // sender (the slot went) ends it too.
        let _ = running.wait_for(|n| *n == 0).await;
        self.uncounted(key, token, keep)
    }

    /// The members that must not count for `token` (rule 2 of the module
    /// docs), keeping that knowledge for `keep` more (the token is in use).
    pub(super) fn uncounted(&self, key: &LockKey, token: &LockToken, keep: Duration) -> Vec<usize> {
        if self.live.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        let now = Instant::now();
        match self.slots().get_mut(&(key.clone(), token.clone())) {
            Some(slot) if slot.until > now || *slot.running.borrow() > 0 => {
                slot.until = slot.until.max(now + keep);
                let mut out = slot.unknown.clone();
                for &i in &slot.in_flight {
                    if !out.contains(&i) {
                        out.push(i);
                    }
                }
                out
            }
            _ => Vec::new(),
        }
    }

    /// The token is released through the quorum: it is not used again.
    pub(super) fn forget(&self, key: &LockKey, token: &LockToken) {
        if self.live.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut slots = self.slots();
        let id = (key.clone(), token.clone());
        match slots.get_mut(&id) {
            Some(s) if *s.running.borrow() == 0 => {
                slots.remove(&id);
            }
            // Ends with its last give-back (see `end`).
            Some(s) => s.forgotten = true,
            None => {}
        }
        self.live.store(slots.len(), Ordering::Release);
    }
}

/// Releases `key` for `token` on `held` (members that acquired: waiting
/// for their answers, each within the member timeout), and in the
/// background on `failed` (members whose acquire failed: it may have
/// landed) and on every member of `in_flight` that does not answer "held".
/// Registered in [`GiveBacks`] so the next acquisition of the token waits
/// for it; `keep` is how long the token's holds could last (its TTL).
pub(super) async fn give_back(
    q: &Arc<Inner>,
    key: &LockKey,
    token: &LockToken,
    keep: Duration,
    held: &[usize],
    failed: &[usize],
    in_flight: Calls<Acquire>,
) {
    let keep = keep + q.member_timeout;
    let mut now = Calls::new();
    for &i in held {
        now.push(
            i,
            q.member_timeout,
            release_call(&q.members[i], key, token, false),
        );
    }
    if !failed.is_empty() || !in_flight.is_empty() {
        let mut later = Calls::new();
        for &i in failed {
            later.push(
                i,
                q.member_timeout,
                release_call(&q.members[i], key, token, false),
            );
        }
        let mut members: Vec<usize> = failed.to_vec();
        members.extend(in_flight.members());
        let mut pending = Pending::begin(q, key, token, keep, &members);
        pending.unheard.extend(&members);
        let q = q.clone();
        let background = async move {
            // Both at once: a call's bound runs from when it was started.
            let (failed, (held, late)) = futures::join!(
                answers(later),
                after_answers(&q, &pending.key, &pending.token, in_flight)
            );
            for i in held {
                pending.heard(i);
            }
            for (i, answer) in failed.into_iter().chain(late) {
                pending.note(i, answer);
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(background);
            }
            Err(_) => background.await,
        }
    }
    let mut pending = Pending::begin(q, key, token, keep, held);
    pending.unheard.extend(held);
    hear(&mut pending, now).await;
}

/// One give-back registered in [`GiveBacks`], ended when dropped (also when
/// cancelled): the members it has not heard from by then count as unknown.
struct Pending {
    q: Arc<Inner>,
    key: LockKey,
    token: LockToken,
    keep: Duration,
    registered: Vec<usize>,
    /// Members whose release has not answered (or not been sent) yet.
    unheard: Vec<usize>,
    /// Members whose release failed in a way that may still land.
    unknown: Vec<usize>,
}

impl Pending {
    fn begin(
        q: &Arc<Inner>,
        key: &LockKey,
        token: &LockToken,
        keep: Duration,
        members: &[usize],
    ) -> Self {
        q.give_backs.begin(key, token, keep, members);
        Self {
            q: q.clone(),
            key: key.clone(),
            token: token.clone(),
            keep,
            registered: members.to_vec(),
            unheard: Vec::new(),
            unknown: Vec::new(),
        }
    }

    fn heard(&mut self, i: usize) {
        self.unheard.retain(|&u| u != i);
    }

    /// Member `i`'s release answered `answer`.
    fn note(&mut self, i: usize, answer: Result<Release, BackendError>) {
        self.heard(i);
        if let Err(e) = answer {
            tracing::debug!(member = i, error = %e, "quorum: giving back a partial hold failed; it expires with its lease");
            if may_have_landed(&e) {
                self.unknown.push(i);
            }
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut unknown = std::mem::take(&mut self.unknown);
        unknown.append(&mut self.unheard);
        self.q.give_backs.end(
            &self.key,
            &self.token,
            &unknown,
            self.keep,
            &self.registered,
        );
    }
}

/// Waits for the late answers of `in_flight` and releases every member
/// that did not answer "held": the members that answered "held", and the
/// answers of the releases.
async fn after_answers(
    q: &Arc<Inner>,
    key: &LockKey,
    token: &LockToken,
    mut in_flight: Calls<Acquire>,
) -> (Vec<usize>, Vec<Answer<Release>>) {
    let mut held = Vec::new();
    let mut releases = Calls::new();
    let mut released = Vec::new();
    // Releases run while later answers are awaited: a call's bound runs
    // from when it was started.
    loop {
        tokio::select! {
            Some((i, answer)) = in_flight.next(), if !in_flight.is_empty() => {
                if matches!(answer, Ok(Acquire::Held { .. })) {
                    held.push(i);
                } else {
                    releases.push(i, q.member_timeout, release_call(&q.members[i], key, token, false));
                }
            }
            Some(answer) = releases.next(), if !releases.is_empty() => released.push(answer),
            else => break,
        }
    }
    (held, released)
}

/// Every answer of `calls`.
async fn answers<T: Send + 'static>(mut calls: Calls<T>) -> Vec<Answer<T>> {
    let mut all = Vec::with_capacity(calls.len());
    while let Some(answer) = calls.next().await {
        all.push(answer);
    }
    all
}

/// Hears every release of `releases` into `pending`.
async fn hear(pending: &mut Pending, mut releases: Calls<Release>) {
    while let Some((i, answer)) = releases.next().await {
        pending.note(i, answer);
    }
}

/// Whether a failed release may still act on the member: not for the
/// kinds that say nothing was done (the pool had no connection, the server
/// refused the request or the credentials), yes for every other (a broken
/// connection or a timeout may come after the request was sent).
fn may_have_landed(e: &BackendError) -> bool {
    !matches!(
        e.kind(),
        BackendErrorKind::PoolExhausted
            | BackendErrorKind::Conflict
            | BackendErrorKind::Auth
            | BackendErrorKind::Permission
            | BackendErrorKind::Config
    )
}

/// A release of `key` for `token` on `member`, as an owned future: a
/// [`LockBackend::give_back`] when `give_back` is set.
pub(super) fn release_call(
    member: &Arc<dyn LockBackend>,
    key: &LockKey,
    token: &LockToken,
    give_back: bool,
) -> impl std::future::Future<Output = Result<Release, BackendError>> + Send + 'static {
    let (member, key, token) = (member.clone(), key.clone(), token.clone());
    async move {
        if give_back {
            member.give_back(&key, &token).await
        } else {
            member.release(&key, &token).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slot whose token was released while a give-back still ran goes
    /// when that give-back ends, even with members of unknown outcome: the
    /// token is never used again, so nothing would read them. Before, it
    /// stayed until a sweep (at 256 slots), and every acquisition of the
    /// quorum took the registry's lock instead of one atomic load.
    #[tokio::test(start_paused = true)]
    async fn a_forgotten_slot_goes_with_its_last_give_back() {
        let give_backs = GiveBacks::default();
        let key = LockKey::new("", "forgotten").unwrap();
        let token = LockToken::generate();
        let keep = Duration::from_secs(30);
        give_backs.begin(&key, &token, keep, &[]);
        give_backs.forget(&key, &token);
        assert_eq!(give_backs.live.load(Ordering::Acquire), 1, "still running");
        give_backs.end(&key, &token, &[1], keep, &[]);
        assert_eq!(give_backs.live.load(Ordering::Acquire), 0);
        assert!(give_backs.slots().is_empty());

        // Not forgotten: the unknown member is kept for the token's next
        // acquisition.
        give_backs.begin(&key, &token, keep, &[]);
        give_backs.end(&key, &token, &[1], keep, &[]);
        assert_eq!(give_backs.uncounted(&key, &token, keep), vec![1]);
    }
}
