//! Acquiring on a majority, and giving partial holds back.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::time::Instant;

use super::calls::{combine, Calls};
use super::give_back::give_back;
use super::holds::HoldId;
use super::{fencing, Inner};
use crate::backend::Acquire;
use crate::error::{BackendError, BackendErrorKind};
use crate::key::LockKey;
use crate::options::LockOptions;
use crate::token::LockToken;

/// What the members answered to one acquisition, as far as read.
#[derive(Default)]
struct Tally {
    /// (member, fencing token) of every member that acquired.
    acquired: Vec<(usize, u64)>,
    /// How many members answered that someone holds the key.
    held: usize,
    /// Which members answered that someone holds the key.
    held_by: Vec<usize>,
    /// The shortest remaining lease a holding member reported.
    remaining: Option<Duration>,
    /// Members that failed or did not answer in time: they may hold the
    /// key for us (the request may have landed).
    errors: Vec<(usize, BackendError)>,
    /// Members that do not count for this token: an earlier give-back of
    /// it there had an unknown outcome (see the `give_back` module).
    uncounted: Vec<usize>,
    /// (member, fencing token) of uncounted members that acquired: held,
    /// given back like the others, but not part of the majority.
    spare: Vec<(usize, u64)>,
    /// Members whose answer had not come when the outcome was decided.
    unheard: usize,
}

impl Tally {
    /// An empty tally for a token whose `uncounted` members do not count.
    fn new(uncounted: Vec<usize>) -> Self {
        Self {
            uncounted,
            ..Self::default()
        }
    }

    fn won(&mut self, i: usize, fence: u64) {
        if self.uncounted.contains(&i) {
            self.spare.push((i, fence));
        } else {
            self.acquired.push((i, fence));
        }
    }

    /// Every member that may hold the key for us now: the counted and the
    /// spare ones.
    fn holding(&self) -> Vec<usize> {
        self.acquired
            .iter()
            .chain(&self.spare)
            .map(|&(i, _)| i)
            .collect()
    }

    fn failed(&self) -> Vec<usize> {
        self.errors.iter().map(|&(i, _)| i).collect()
    }

    fn count(&mut self, i: usize, answer: Result<Acquire, BackendError>) {
        match answer {
            Ok(Acquire::Acquired { fence }) => self.won(i, fence),
            Ok(Acquire::Held { remaining }) => {
                self.held += 1;
                self.held_by.push(i);
                if let Some(r) = remaining {
                    self.remaining = Some(self.remaining.map_or(r, |m| m.min(r)));
                }
            }
            Err(e) => self.errors.push((i, e)),
        }
    }
}

/// `try_acquire` on every member but `except`, all at once, each bounded
/// by the member timeout.
fn try_acquire_all(
    q: &Inner,
    key: &LockKey,
    token: &LockToken,
    ttl: Duration,
    owner: Option<&str>,
    except: Option<usize>,
) -> Calls<Acquire> {
    let limit = q.call_limit(ttl);
    let mut calls = Calls::new();
    for (i, member) in q.members.iter().enumerate() {
        if Some(i) == except {
            continue;
        }
        let (member, key, token) = (member.clone(), key.clone(), token.clone());
        let owner = owner.map(str::to_owned);
        calls.push(i, limit, async move {
            member
                .try_acquire(&key, &token, ttl, owner.as_deref())
                .await
        });
    }
    calls
}

/// Acquires `key` on a majority of members; see [`Quorum`](super::Quorum).
pub(super) async fn acquire(
    q: &Arc<Inner>,
    key: &LockKey,
    token: &LockToken,
    ttl: Duration,
    owner: Option<&str>,
) -> Result<Acquire, BackendError> {
    acquire_queued(q, key, token, ttl, owner, None).await
}

/// [`acquire`] for a waiter in line (`waiter`): every call asks the gate
/// member first, as its queued call, so waiters line up on the gate for
/// their whole wait; a waiter that finds the gate held asks the others too
/// only when no round that asked every member saw the key held lately.
/// See [`Quorum::try_acquire_queued`](super::Quorum).
pub(super) async fn acquire_queued(
    q: &Arc<Inner>,
    key: &LockKey,
    token: &LockToken,
    ttl: Duration,
    owner: Option<&str>,
    waiter: Option<&crate::Waiter>,
) -> Result<Acquire, BackendError> {
    // The token holds the key through this quorum already: a repeated
    // acquire, which must not give back what it holds (see `holds`).
    let hold = HoldId::new(key, token);
    if let Some(fence) = q.holds.held(&hold) {
        return repeat(q, key, token, ttl, owner, fence).await;
    }
    // A give-back of this token still on its way could undo what this
    // attempt acquires: wait for it first (see the `give_back` module).
    let uncounted = q.give_backs.settle(key, token, ttl).await;
    let started = Instant::now();
    let limit = q.call_limit(ttl);
    let mut tally = Tally::new(uncounted);
    // A contended key is acquired through its gate first (see the
    // `contention` module): a racer that finds the gate held stops there,
    // holding nothing, so racers do not split the vote. A waiter in line
    // always asks the gate first: its wake-up is the gate's handover (see
    // `Quorum::watch_queued`), so it keeps to the gate's line for its
    // whole wait, not only while a round that asked every member has
    // seen the key held lately.
    let contended = q.contention.contended(key);
    let gate = if waiter.is_some() || contended {
        q.contention.gate_member()
    } else {
        None
    };
    // No round that asked every member has seen the key held lately: a
    // waiter that finds the gate held asks the others too, so a stale
    // hold on the gate alone (a release that reached the others only)
    // hides a free majority for at most `CONTENDED_FOR`. Its place in the
    // gate's line stays.
    let probe = waiter.is_some() && !contended;
    if let Some(g) = gate {
        let member = &q.members[g];
        let call = async {
            match waiter {
                Some(w) if member.capabilities().waiter_queue => {
                    member.try_acquire_queued(key, token, ttl, owner, w).await
                }
                _ => member.try_acquire(key, token, ttl, owner).await,
            }
        };
        let answer = bounded(limit, call).await;
        match answer {
            // Not a new sighting: only a round that asked every member
            // prolongs the contention (see `probe` above).
            Ok(Acquire::Held { remaining }) if !probe => {
                return Ok(Acquire::Held { remaining });
            }
            // Acquired, held while probing, or failed (then the others
            // decide, as usual; the gate's request may have landed, so it
            // is given back like any failed one).
            answer => tally.count(g, answer),
        }
    }
    let mut calls = try_acquire_all(q, key, token, ttl, owner, gate);
    while tally.acquired.len() < q.majority && tally.acquired.len() + calls.len() >= q.majority {
        let Some((i, answer)) = calls.next().await else {
            break;
        };
        tally.count(i, answer);
    }

    if tally.acquired.len() < q.majority {
        if !tally.acquired.is_empty() {
            // Perhaps a split vote, retried below with the same token: hear
            // every member first (each within its bound), so no late answer
            // is handled in the background while the retry runs.
            while let Some((i, answer)) = calls.next().await {
                tally.count(i, answer);
            }
        }
        note(q, key, &tally);
        tally.unheard = calls.len();
        let gate_won = gate.is_some_and(|g| tally.acquired.iter().any(|&(i, _)| i == g));
        let split = !tally.acquired.is_empty() && tally.held > 0 && tally.errors.len() < q.majority;
        let retried = if split && gate_won {
            // We hold the gate, so no other gated racer gets further: the
            // members still held are most likely a release in flight or a
            // racer's partial hold about to be given back. Keep what we
            // have and ask them again.
            complete(q, key, token, ttl, owner, tally).await
        } else {
            // No majority: give back every partial hold, including the ones
            // of members that have not answered yet.
            give_back_all(q, key, token, ttl, &tally, calls).await;
            if split {
                ordered(q, key, token, ttl, owner, &tally).await
            } else {
                Err(tally)
            }
        };
        calls = Calls::new();
        match retried {
            Ok(won) => tally = won,
            Err(lost) => return failure(q, lost),
        }
    } else {
        note(q, key, &tally);
    }
    // Answers already there count too (an in-process member answers at
    // once). A late hold is ours, and every later extend and release
    // covers it: holding every member that could be reached keeps the
    // lease alive when one of the first majority fails later.
    while let Some(Some((i, answer))) = calls.next().now_or_never() {
        tally.count(i, answer);
    }

    let fence = if q.fencing {
        // The calls still in flight keep running while the fence is
        // raised; their answers are kept for the give-back if it fails.
        let counted = tally.acquired.clone();
        let mut late = Vec::new();
        let settled = {
            let settle = fencing::settle(q, key, token, ttl, &counted);
            tokio::pin!(settle);
            loop {
                tokio::select! {
                    settled = &mut settle => break settled,
                    Some(answer) = calls.next(), if !calls.is_empty() => late.push(answer),
                }
            }
        };
        for (i, answer) in late {
            tally.count(i, answer);
        }
        match settled {
            Ok(fence) => fence,
            Err(e) => {
                // Everything this attempt may hold goes back, including
                // late answers (the next attempt of this token waits for
                // them; see the `give_back` module).
                give_back_all(q, key, token, ttl, &tally, calls).await;
                return Err(e);
            }
        }
    } else if q.members.len() == 1 {
        tally.acquired[0].1
    } else {
        0
    };

    let elapsed = started.elapsed();
    if elapsed >= ttl.saturating_sub(LockOptions::drift(ttl)) {
        // The majority came too late: its lease may already have run out
        // on some members. Never report a hold that is invalid from birth.
        give_back_all(q, key, token, ttl, &tally, calls).await;
        return Err(BackendError::new(
            BackendErrorKind::Timeout,
            format!(
                "quorum acquire: a majority took {elapsed:?}, which leaves no validity \
                 of the TTL {ttl:?} after the drift allowance; the lock was given back"
            ),
        ));
    }
    calls.finish_in_background();
    q.holds.acquired(hold, fence, ttl);
    Ok(Acquire::Acquired { fence })
}

/// A repeated acquire by `token`, which holds `key` through this quorum
/// (the trait's rule: the same hold, its lease renewed to `ttl`): every
/// member is asked as a repeat, and a majority that answers acquired
/// renews the hold. Nothing is ever given back here: a member that answers
/// "held" by someone else or fails does not count, and without a majority
/// the answer is a transient error (the hold stands as it was, for its
/// guard's own deadline and renewal to judge).
///
/// `fence` is the quorum's fencing token of the hold. Without one (a hold
/// that a majority extended but the quorum never reported acquired), the
/// renewing majority is brought to its highest token as an acquisition
/// does ([`fencing::settle`]), and that is the answer.
pub(super) async fn repeat(
    q: &Arc<Inner>,
    key: &LockKey,
    token: &LockToken,
    ttl: Duration,
    owner: Option<&str>,
    fence: Option<u64>,
) -> Result<Acquire, BackendError> {
    // The give-back rules hold here too (see the `give_back` module): a
    // member where a give-back of this token may still land does not count
    // (found in review: it counted, the stale give-back landed after the
    // answer, and another client took the majority), and running
    // give-backs are waited for.
    let uncounted = q.give_backs.settle(key, token, ttl).await;
    let started = Instant::now();
    let mut calls = try_acquire_all(q, key, token, ttl, owner, None);
    let (mut renewed, mut errors) = (Vec::new(), Vec::new());
    while renewed.len() < q.majority && renewed.len() + calls.len() >= q.majority {
        let Some((i, answer)) = calls.next().await else {
            break;
        };
        match answer {
            _ if uncounted.contains(&i) => {}
            // With fencing, a member's token of this hold is at most the
            // quorum's (the highest at acquisition, or raised to it); a
            // greater one is a new hold there, made after ours ended on
            // that member. Without, the quorum's token is 0 and the
            // members' own are not compared.
            Ok(Acquire::Acquired { fence: f })
                if !q.fencing || fence.is_none_or(|mine| f <= mine) =>
            {
                renewed.push((i, f));
            }
            Ok(_) => {}
            Err(e) => errors.push((i, e)),
        }
        let pending = calls
            .members()
            .iter()
            .filter(|m| !uncounted.contains(m))
            .count();
        if renewed.len() + pending < q.majority {
            break;
        }
    }
    calls.finish_in_background();
    let answer = if renewed.len() < q.majority {
        None
    } else {
        match fence {
            Some(fence) => Some(fence),
            None if q.fencing => match fencing::settle(q, key, token, ttl, &renewed).await {
                Ok(fence) => Some(fence),
                // Nothing is given back: the hold stands as it was.
                Err(e) => return Err(transient(e)),
            },
            None => Some(0),
        }
    };
    let elapsed = started.elapsed();
    if let Some(fence) = answer {
        if elapsed < ttl.saturating_sub(LockOptions::drift(ttl)) {
            q.holds.renewed(key, token, fence, ttl);
            return Ok(Acquire::Acquired { fence });
        }
    }
    let summary = format!(
        "a repeated acquire by the token that holds the key renewed it on {} of {} \
         members in {elapsed:?} (a majority is {}); nothing was given back",
        renewed.len(),
        q.members.len(),
        q.majority
    );
    Err(transient(combine("acquire", &summary, &errors)))
}

/// `e`, as an `Unavailable` error if its kind is not transient: a repeat
/// that could not renew leaves the hold as it was, and trying again is
/// right.
fn transient(e: BackendError) -> BackendError {
    if e.is_transient() {
        return e;
    }
    BackendError::new(BackendErrorKind::Unavailable, e.message().to_owned())
}

/// The answer of an acquisition that found no majority: `Ok(Held)` when
/// members reported the key held (contention) unless a majority failed
/// outright (then the outage is the news), else the combined error.
///
/// When this token can no longer win a majority whoever holds the key (the
/// members that do not count for it, or that refuse it for good, leave
/// fewer than a majority), the answer is a transient `Unavailable` error
/// that [needs a new token](BackendError::needs_new_token), so a waiting
/// `lock()` goes on with one at once instead of retrying in vain.
fn failure(q: &Inner, tally: Tally) -> Result<Acquire, BackendError> {
    let mut lost = tally.uncounted.clone();
    for (i, e) in &tally.errors {
        if e.needs_new_token() && !lost.contains(i) {
            lost.push(*i);
        }
    }
    if q.members.len() - lost.len() < q.majority {
        lost.sort_unstable();
        // The members' own errors of this attempt are the news (an
        // outage); the token's state only explains the kind.
        let summary = format!(
            "{} of {} members failed this attempt and members {lost:?} cannot count for \
             this token (an earlier give-back of it there has an unknown outcome, or they \
             refuse it as given back), which leaves fewer than a majority of {}; a new \
             token can win",
            tally.errors.len(),
            q.members.len(),
            q.majority
        );
        let message = combine("acquire", &summary, &tally.errors)
            .message()
            .to_owned();
        return Err(
            BackendError::new(BackendErrorKind::Unavailable, message).with_needs_new_token(true)
        );
    }
    if tally.held > 0 && tally.errors.len() < q.majority {
        return Ok(Acquire::Held {
            remaining: tally.remaining,
        });
    }
    let unheard = match tally.unheard {
        0 => String::new(),
        n => format!(", {n} not heard yet"),
    };
    let summary = format!(
        "{} of {} members acquired, {} hold it, {} failed{unheard}; a majority is {}",
        tally.acquired.len(),
        q.members.len(),
        tally.held,
        tally.errors.len(),
        q.majority
    );
    let combined = combine("acquire", &summary, &tally.errors);
    if !tally.spare.is_empty() && tally.errors.len() < q.majority {
        // Members that acquired but do not count for this token (see the
        // `give_back` module) made the difference: nobody else holds it.
        let spare: Vec<usize> = tally.spare.iter().map(|&(i, _)| i).collect();
        return Err(BackendError::new(
            BackendErrorKind::Unavailable,
            format!(
                "{}; members {spare:?} acquired but do not count for this token: an \
                 earlier give-back of it there has an unknown outcome and may still land",
                combined.message()
            ),
        )
        .with_needs_new_token(true));
    }
    Err(combined)
}

/// How often the winner of the first member retries a later member that
/// answered "held" during an ordered attempt (a racer's partial hold is
/// given back within about one round trip).
const ORDERED_RETRIES: u32 = 3;

/// The second try after a split vote (we got some members, racers got the
/// others, nobody a majority: with concurrent requests that can leave every
/// racer empty-handed). Members are tried one at a time in list order,
/// skipping the ones that failed: whoever wins the first member has
/// priority and waits briefly for the racers' partial holds on the others
/// to be given back; whoever finds the first member held gives up. So a
/// race of simultaneous `try_acquire`s still has a winner.
async fn ordered(
    q: &Arc<Inner>,
    key: &LockKey,
    token: &LockToken,
    ttl: Duration,
    owner: Option<&str>,
    first: &Tally,
) -> Result<Tally, Tally> {
    let limit = q.call_limit(ttl);
    // The give-back just before this may have left members with an
    // unknown outcome: they do not count either.
    let mut uncounted = q.give_backs.uncounted(key, token, ttl);
    for &i in &first.uncounted {
        if !uncounted.contains(&i) {
            uncounted.push(i);
        }
    }
    let mut tally = Tally::new(uncounted);
    for (i, member) in q.members.iter().enumerate() {
        if first.errors.iter().any(|(e, _)| *e == i) {
            continue;
        }
        let mut tries = 0;
        loop {
            let answer = bounded(limit, member.try_acquire(key, token, ttl, owner)).await;
            match answer {
                Ok(Acquire::Held { .. })
                    if !tally.acquired.is_empty() && tries < ORDERED_RETRIES =>
                {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(2u64 << tries)).await;
                    continue;
                }
                answer => tally.count(i, answer),
            }
            break;
        }
        if tally.acquired.len() >= q.majority || (tally.acquired.is_empty() && tally.held > 0) {
            break;
        }
    }
    if tally.acquired.len() >= q.majority {
        return Ok(tally);
    }
    give_back_all(q, key, token, ttl, &tally, Calls::new()).await;
    // The answer reports the first round's view (who held it, who failed).
    Err(Tally {
        acquired: Vec::new(),
        held: first.held,
        held_by: first.held_by.clone(),
        remaining: first.remaining,
        spare: tally.spare,
        ..Tally::default()
    })
}

/// After winning the gate without a majority: asks the members that
/// answered "held" again, one at a time in list order, each up to
/// [`ORDERED_RETRIES`] times with a short pause, until a majority is
/// reached. `Err` (with every hold given back) if it is not.
async fn complete(
    q: &Arc<Inner>,
    key: &LockKey,
    token: &LockToken,
    ttl: Duration,
    owner: Option<&str>,
    mut tally: Tally,
) -> Result<Tally, Tally> {
    let limit = q.call_limit(ttl);
    let mut still_held = std::mem::take(&mut tally.held_by);
    still_held.sort_unstable();
    tally.held = 0;
    for i in still_held {
        if tally.acquired.len() >= q.majority {
            break;
        }
        let mut tries = 0;
        loop {
            tries += 1;
            tokio::time::sleep(Duration::from_millis(2u64 << tries)).await;
            let answer = bounded(limit, q.members[i].try_acquire(key, token, ttl, owner)).await;
            match answer {
                Ok(Acquire::Held { .. }) if tries < ORDERED_RETRIES => continue,
                answer => {
                    tally.count(i, answer);
                    break;
                }
            }
        }
    }
    if tally.acquired.len() >= q.majority {
        return Ok(tally);
    }
    give_back_all(q, key, token, ttl, &tally, Calls::new()).await;
    tally.acquired.clear();
    Err(tally)
}

/// Remembers what an acquisition learnt: contention (a member answered
/// "held") and failing members (for the choice of the gate).
fn note(q: &Inner, key: &LockKey, tally: &Tally) {
    if tally.held > 0 {
        q.contention.saw_held(key);
    }
    for (i, _) in &tally.errors {
        q.contention.member_failed(*i);
    }
}

/// One member call bounded by `limit` (a `Timeout` error past it).
async fn bounded<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, BackendError>>,
) -> Result<T, BackendError> {
    match tokio::time::timeout(limit, call).await {
        Ok(answer) => answer,
        Err(_) => Err(BackendError::new(
            BackendErrorKind::Timeout,
            format!("no answer within the member timeout {limit:?}"),
        )),
    }
}

/// Gives back everything `tally` may hold: the members that acquired
/// (counted or not), the ones that failed (their acquire may have landed),
/// and `in_flight`.
async fn give_back_all(
    q: &Arc<Inner>,
    key: &LockKey,
    token: &LockToken,
    ttl: Duration,
    tally: &Tally,
    in_flight: Calls<Acquire>,
) {
    give_back(
        q,
        key,
        token,
        ttl,
        &tally.holding(),
        &tally.failed(),
        in_flight,
    )
    .await;
}
