//! The renewal task of a guard with [`LockOptions::auto_renew`](crate::LockOptions::auto_renew).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::lease::{deadline, LeaseState};
use crate::backend::{Extend, LockBackend};
use crate::options::MIN_TTL;
use crate::token::LockToken;

/// Extends the lease every third of its TTL until the guard ends, the lock
/// is found lost, or `stop_at` (from `max_hold`) is reached: renewal never
/// sets the lease to end after `stop_at`, and never shortens a longer lease
/// set by a manual extend (it waits until what is left falls to its TTL).
///
/// Every call goes through [`LeaseState::extend`], so a renewal whose
/// outcome is unknown (an error, or no answer before the deadline) leaves
/// the deadline at the earlier of the old one and the renewal's own; this
/// matters when a manual `extend` had set a longer lease than the renewal
/// TTL.
pub(super) async fn renew(
    backend: Arc<dyn LockBackend>,
    state: Arc<LeaseState>,
    token: LockToken,
    ttl: Duration,
    stop_at: Option<Instant>,
) {
    let period = ttl / 3;
    let mut wait = period;
    loop {
        tokio::time::sleep(wait).await;
        let _one_at_a_time = state.extending.lock().await;
        if !state.is_held() {
            return;
        }
        let mut next_ttl = ttl;
        if let Some(stop_at) = stop_at {
            let left = stop_at.saturating_duration_since(Instant::now());
            if left < MIN_TTL {
                return;
            }
            next_ttl = next_ttl.min(left);
        }
        // A manual extend (or `keep_for`, racing this task on another
        // thread) set a longer lease than this renewal would: never shorten
        // it. Look again every period (no call: a later manual extend may
        // shorten it), and renew once what is left falls to the TTL.
        let left = state
            .valid_until()
            .saturating_duration_since(Instant::now());
        if left > next_ttl {
            wait = period;
            continue;
        }
        // No answer before the deadline (lowered by this call if its TTL is
        // shorter): the lease can no longer be counted on.
        let give_up_at = state.valid_until().min(deadline(Instant::now(), next_ttl));
        let call = state.extend(backend.as_ref(), &token, next_ttl, true);
        match tokio::time::timeout_at(give_up_at, call).await {
            Ok(Ok(Extend::Extended)) => wait = period,
            Ok(Ok(Extend::NotHeld)) => return,
            Err(_) => {
                state.mark_lost();
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(lock = %state.key(), error = %e, "lease renewal failed; retrying");
                let left = state
                    .valid_until()
                    .saturating_duration_since(Instant::now());
                wait = (period / 4).min(left).max(Duration::from_millis(1));
            }
        }
    }
}
