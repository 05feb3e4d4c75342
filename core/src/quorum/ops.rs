//! Extend, release and inspect on every member.

use std::sync::Arc;
use std::time::Duration;

use super::calls::{combine, Calls};
use super::give_back::release_call;
use super::Inner;
use crate::backend::{Extend, LockInfo, Release};
use crate::error::BackendError;
use crate::key::LockKey;
use crate::token::LockToken;

/// How a yes/no call over every member came out.
enum Vote {
    /// A majority said yes.
    Yes,
    /// No majority said yes, and at least one member answered.
    No,
    /// Every member that was heard from failed: nothing is known.
    Failed(BackendError),
}

/// Reads yes/no answers until the outcome is decided; the calls still in
/// flight finish in the background (every member gets the request).
///
/// With `hear = Some(i)`, a majority "yes" is not enough to return: member
/// `i` must have answered too (each call is bounded by the member timeout),
/// and if it failed it is marked failed for the choice of the gate. A "yes"
/// of a member in `uncounted` counts as a "no".
async fn vote<T: Send + 'static>(
    q: &Inner,
    op: &str,
    mut calls: Calls<T>,
    yes: impl Fn(&T) -> bool,
    hear: Option<usize>,
    uncounted: &[usize],
) -> Vote {
    let (mut ayes, mut noes) = (0, 0);
    let mut errors = Vec::new();
    let mut heard = hear.is_none();
    while let Some((i, answer)) = calls.next().await {
        if Some(i) == hear {
            heard = true;
            if answer.is_err() {
                q.contention.member_failed(i);
            }
        }
        match answer {
            Ok(a) if yes(&a) && !uncounted.contains(&i) => ayes += 1,
            Ok(_) => noes += 1,
            Err(e) => errors.push((i, e)),
        }
        if (ayes >= q.majority && heard) || ayes + calls.len() < q.majority {
            break;
        }
    }
    calls.finish_in_background();
    if ayes >= q.majority {
        Vote::Yes
    } else if ayes + noes > 0 {
        // Some members answered, but not a majority yes: the lease cannot
        // be counted on (the guard treats it as lost; holds left on
        // members expire with their TTL).
        Vote::No
    } else {
        let summary = format!(
            "{ayes} of {} members agreed, {noes} refused, {} failed; a majority is {}",
            q.members.len(),
            errors.len(),
            q.majority
        );
        Vote::Failed(combine(op, &summary, &errors))
    }
}

/// Extends on every member: [`Extend::Extended`] if a majority extended.
pub(super) async fn extend(
    q: &Arc<Inner>,
    key: &LockKey,
    token: &LockToken,
    ttl: Duration,
) -> Result<Extend, BackendError> {
    let limit = q.call_limit(ttl);
    // Members where a give-back of this token may still land do not count
    // (see the `give_back` module).
    let uncounted = q.give_backs.uncounted(key, token, ttl);
    let mut calls = Calls::new();
    for (i, member) in q.members.iter().enumerate() {
        let (member, key, token) = (member.clone(), key.clone(), token.clone());
        calls.push(
            i,
            limit,
            async move { member.extend(&key, &token, ttl).await },
        );
    }
    let extended = |a: &Extend| *a == Extend::Extended;
    match vote(q, "extend", calls, extended, None, &uncounted).await {
        Vote::Yes => {
            q.holds.extended(key, token, ttl);
            Ok(Extend::Extended)
        }
        Vote::No => {
            q.holds.ended(key, token);
            Ok(Extend::NotHeld)
        }
        Vote::Failed(e) => Err(e),
    }
}

/// Releases on every member: [`Release::Released`] if a majority released.
pub(super) async fn release(
    q: &Arc<Inner>,
    key: &LockKey,
    token: &LockToken,
    give_back: bool,
) -> Result<Release, BackendError> {
    let mut calls = Calls::new();
    for (i, member) in q.members.iter().enumerate() {
        calls.push(
            i,
            q.member_timeout,
            release_call(member, key, token, give_back),
        );
    }
    // Before returning, hear the member that gates contended acquisitions
    // (see `contention`), not only a majority: a release still in flight
    // there would make the next gated acquisition of another client find
    // the key held although a majority is free (a `try_lock` right after
    // `release` returned would answer "held"). This costs at most the
    // slowest healthy member's answer; a member that fails it stops being
    // the gate.
    let gate = q.contention.gate_member();
    q.give_backs.forget(key, token);
    q.holds.ended(key, token);
    let released = |a: &Release| *a == Release::Released;
    match vote(q, "release", calls, released, gate, &[]).await {
        Vote::Yes => Ok(Release::Released),
        Vote::No => Ok(Release::NotHeld),
        Vote::Failed(e) => Err(e),
    }
}

/// The majority view of every member's [`LockInfo`].
pub(super) async fn inspect(q: &Arc<Inner>, key: &LockKey) -> Result<LockInfo, BackendError> {
    let mut calls = Calls::new();
    for (i, member) in q.members.iter().enumerate() {
        let (member, key) = (member.clone(), key.clone());
        calls.push(
            i,
            q.member_timeout,
            async move { member.inspect(&key).await },
        );
    }
    let mut infos = Vec::new();
    let mut errors = Vec::new();
    while let Some((i, answer)) = calls.next().await {
        match answer {
            Ok(info) => infos.push(info),
            Err(e) => errors.push((i, e)),
        }
    }
    if infos.len() < q.majority {
        let summary = format!(
            "only {} of {} members answered; a majority is {}",
            infos.len(),
            q.members.len(),
            q.majority
        );
        return Err(combine("inspect", &summary, &errors));
    }
    Ok(majority_view(&infos, q.majority))
}

/// The view a majority supports:
/// - `held` if at least `majority` members report the key held;
/// - `remaining`: how long at least `majority` members still hold it (the
///   `majority`-th longest remaining lease; "no expiry" counts as longest);
/// - `owner`: the label most holding members report;
/// - `last_fence`: the highest token that at least `majority` members have
///   reached (the next quorum acquisition gets a greater one).
pub(super) fn majority_view(infos: &[LockInfo], majority: usize) -> LockInfo {
    let mut fences: Vec<Option<u64>> = infos.iter().map(|i| i.last_fence).collect();
    fences.sort_unstable_by(|a, b| b.cmp(a));
    let last_fence = fences.get(majority - 1).copied().flatten();
    let holders: Vec<&LockInfo> = infos.iter().filter(|i| i.held).collect();
    if holders.len() < majority {
        return LockInfo::free(last_fence);
    }
    let mut remaining: Vec<Option<Duration>> = holders.iter().map(|i| i.remaining).collect();
    // Longest first, with "no expiry" (None) before any duration.
    remaining.sort_unstable_by(|a, b| match (a, b) {
        (None, None) => std::cmp::Ordering::Equal,
        (None, Some(_)) => std::cmp::Ordering::Less,
        (Some(_), None) => std::cmp::Ordering::Greater,
        (Some(x), Some(y)) => y.cmp(x),
    });
    let remaining = remaining[majority - 1];
    // "No label" is a vote too: a stale label left on a minority must not
    // outvote a majority holder that set none (found by a differential
    // test). A tie goes to a label.
    let owner = holders
        .iter()
        .map(|i| &i.owner)
        .max_by_key(|o| {
            let votes = holders.iter().filter(|i| &i.owner == *o).count();
            (votes, o.is_some())
        })
        .cloned()
        .flatten();
    LockInfo::held(owner, remaining, last_fence)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Option<Duration> {
        Some(Duration::from_millis(n))
    }

    #[test]
    fn majority_view_takes_what_a_majority_supports() {
        let infos = [
            LockInfo::held(Some("a".into()), ms(900), Some(7)),
            LockInfo::held(Some("a".into()), ms(300), Some(7)),
            LockInfo::free(Some(40)),
        ];
        let view = majority_view(&infos, 2);
        assert!(view.held);
        assert_eq!(view.owner.as_deref(), Some("a"));
        assert_eq!(
            view.remaining,
            ms(300),
            "two members hold it for 300 ms more"
        );
        assert_eq!(view.last_fence, Some(7), "only one member reached 40");

        let infos = [
            LockInfo::held(None, ms(900), Some(7)),
            LockInfo::free(None),
            LockInfo::free(None),
        ];
        assert_eq!(majority_view(&infos, 2), LockInfo::free(None));
    }
}
