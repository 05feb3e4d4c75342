//! Fencing tokens across a quorum.
//!
//! Each member keeps its own fencing counter per key. After a majority `M`
//! acquired, the quorum takes `F`, the highest token among `M`, and raises
//! the counters of the members of `M` that handed out less to `F` (with
//! [`LockBackend::raise_fence`](crate::LockBackend::raise_fence), which
//! acts only while our token holds the key there). It hands out `F` only
//! once a majority `R` of members is at `F` or above.
//!
//! Why that makes tokens strictly increase: the next acquisition needs a
//! majority `M'`, and any two majorities of one member set share at least
//! one member, so `M'` contains a member `j` of `R`. On `j` our raise
//! happened while our token held the key, so before `j` let anyone else
//! acquire it; `j`'s next token is therefore above `F`, and the next
//! quorum token (the maximum over `M'`) is above `F` too. This holds
//! whichever members were down for either acquisition.
//!
//! It assumes that members do not forget their counters. A member that
//! restarts without persistence forgets them; the Redis backend then
//! restarts the counter from the server clock in microseconds, which stays
//! above the old tokens as long as that server's clock does not step back
//! and the servers' clocks agree to within the time since the old tokens
//! were handed out (see the README's safety model).

use std::sync::Arc;
use std::time::Duration;

use super::calls::{combine, Calls};
use super::Inner;
use crate::backend::RaiseFence;
use crate::error::{BackendError, BackendErrorKind};
use crate::key::LockKey;
use crate::token::LockToken;

/// Raises the members in `acquired` to the highest of their tokens until a
/// majority is at it; returns that token.
pub(super) async fn settle(
    q: &Arc<Inner>,
    key: &LockKey,
    token: &LockToken,
    ttl: Duration,
    acquired: &[(usize, u64)],
) -> Result<u64, BackendError> {
    let fence = acquired.iter().map(|&(_, f)| f).max().unwrap_or(0);
    let mut at_fence = acquired.iter().filter(|&&(_, f)| f == fence).count();
    if at_fence >= q.majority {
        return Ok(fence);
    }
    let limit = q.call_limit(ttl);
    let mut calls = Calls::new();
    for &(i, f) in acquired {
        if f < fence {
            let (member, key, token) = (q.members[i].clone(), key.clone(), token.clone());
            calls.push(i, limit, async move {
                member.raise_fence(&key, &token, fence).await
            });
        }
    }
    let mut errors = Vec::new();
    while let Some((i, answer)) = calls.next().await {
        match answer {
            Ok(RaiseFence::Raised { fence: now }) if now >= fence => at_fence += 1,
            Ok(RaiseFence::Raised { fence: now }) => errors.push((
                i,
                BackendError::new(
                    BackendErrorKind::Protocol,
                    format!("raise_fence to {fence} answered a lower token {now}"),
                ),
            )),
            // Lost between the acquire and the raise (the member restarted
            // without persistence, or the lease ran out): everything is
            // given back, and a new attempt may succeed.
            Ok(RaiseFence::NotHeld) => errors.push((
                i,
                BackendError::new(
                    BackendErrorKind::Conflict,
                    "the hold was gone before its fencing token could be raised",
                ),
            )),
            Ok(RaiseFence::Unsupported) => errors.push((
                i,
                BackendError::new(
                    BackendErrorKind::Config,
                    "the member claims the raise_fence capability but does not implement it",
                ),
            )),
            Err(e) => errors.push((i, e)),
        }
        if at_fence >= q.majority {
            calls.finish_in_background();
            return Ok(fence);
        }
        if at_fence + calls.len() < q.majority {
            break;
        }
    }
    Err(combine(
        "acquire",
        &format!(
            "a majority acquired, but only {at_fence} members could be brought to the \
             fencing token {fence}; the lock was given back"
        ),
        &errors,
    ))
}
