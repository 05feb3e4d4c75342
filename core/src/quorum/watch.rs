//! Release notifications of a quorum: releases seen on a majority of
//! members wake the quorum's waiters.
//!
//! The quorum has its own [`ReleaseHub`]. The first waiter of a key
//! registers with every member that notifies, and a forwarding task turns
//! release events from a majority of members into one event of the
//! quorum's hub (see [`forward`]). The task
//! ends (dropping the member registrations) within [`IDLE_CHECK`] once the
//! quorum has no waiter of the key left. Members that do not notify are
//! covered by the waiter's backoff polling, as for any such backend.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::select_all;

use super::calls::Calls;
use super::Inner;
use crate::error::BackendError;
use crate::key::LockKey;
use crate::notify::{ReleaseHub, ReleaseWatch};

/// How often a forwarding task checks that someone still waits.
pub(super) const IDLE_CHECK: Duration = Duration::from_secs(1);

/// The quorum's hub and the keys whose member events are being forwarded.
#[derive(Default)]
pub(super) struct Watches {
    pub(super) hub: ReleaseHub,
    forwarding: Mutex<HashMap<String, ()>>,
}

/// Registers a waiter of `key`; see the module docs.
pub(super) async fn watch(
    q: &Arc<Inner>,
    key: &LockKey,
) -> Result<Option<ReleaseWatch>, BackendError> {
    let watches = &q.watches;
    let watch = watches.hub.watch(key);
    let start = {
        let mut forwarding = watches
            .forwarding
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        forwarding.insert(key.encoded().to_owned(), ()).is_none()
    };
    if !start {
        return Ok(Some(watch));
    }
    // Cancelled while registering (a `lock()` cut off at its deadline
    // while a member is slow), the key must not stay marked as forwarded
    // with no task behind it: no later watch of it would ever be woken.
    let mut unmark = Unmark {
        q,
        key: key.encoded(),
        armed: true,
    };
    let registered = register(q, key).await;
    unmark.armed = false;
    let q = q.clone();
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(forward(q, key.clone(), registered));
        }
        Err(_) => stop_forwarding(&q, key.encoded()),
    }
    Ok(Some(watch))
}

/// The member registrations of one key (each with its member's index),
/// and whether a member failed to register (rather than having no
/// notifications).
struct Registered {
    watches: Vec<(usize, ReleaseWatch)>,
    failed: bool,
}

/// Registers with every member at once, each within the member timeout.
async fn register(q: &Arc<Inner>, key: &LockKey) -> Registered {
    let mut calls = Calls::new();
    for (i, member) in q.members.iter().enumerate() {
        let (member, key) = (member.clone(), key.clone());
        calls.push(i, q.member_timeout, async move { member.watch(&key).await });
    }
    let mut registered = Registered {
        watches: Vec::new(),
        failed: false,
    };
    while let Some((i, answer)) = calls.next().await {
        match answer {
            Ok(Some(w)) => registered.watches.push((i, w)),
            Ok(None) => {}
            Err(e) => {
                registered.failed = true;
                tracing::debug!(member = i, error = %e, "quorum: a member could not watch; its releases are polled for");
            }
        }
    }
    registered
}

/// Forwards member release events of `key` to the quorum's hub until no
/// waiter of the quorum is left.
///
/// One quorum waiter is woken once release events came from a majority of
/// members (counted since the last wake-up, forgotten after a quiet
/// [`IDLE_CHECK`]). A real release frees the lock on at least a majority,
/// so it wakes a waiter; a partial hold given back by a failed attempt
/// covers less than a majority, so it does not: otherwise every failed
/// attempt would wake the next waiter, whose failed attempt would wake the
/// next, in a storm of useless retries while the holder keeps the lock.
/// While the key is contended, the majority must include the gate member
/// (see [`ready`]); a majority without it still wakes a waiter once the
/// events have been quiet for [`IDLE_CHECK`].
///
/// When fewer than a majority of members could be registered because some
/// failed (a timeout while the machine was busy, a member down), the task
/// registers again every [`IDLE_CHECK`] while waiters remain: without it,
/// a process that waits without a break would only ever poll.
async fn forward(q: Arc<Inner>, lock_key: LockKey, registered: Registered) {
    let key = lock_key.encoded().to_owned();
    let mut retry = registered.failed;
    let (mut indices, mut members): (Vec<usize>, Vec<ReleaseWatch>) =
        registered.watches.into_iter().unzip();
    if members.len() < q.majority {
        // Too few members notify to ever see a majority: rely on polling.
        members.clear();
        indices.clear();
    }
    let mut fired = vec![false; members.len()];
    loop {
        if members.is_empty() {
            tokio::time::sleep(IDLE_CHECK).await;
            if retry && q.watches.hub.is_watched(&key) {
                let again = register(&q, &lock_key).await;
                retry = again.failed;
                if again.watches.len() >= q.majority {
                    (indices, members) = again.watches.into_iter().unzip();
                    fired = vec![false; members.len()];
                    // A release may have been missed meanwhile.
                    q.watches.hub.notify(&key);
                    continue;
                }
            }
        } else {
            let any = select_all(members.iter_mut().map(|w| Box::pin(w.released())));
            if let Ok(((), which, _)) = tokio::time::timeout(IDLE_CHECK, any).await {
                fired[which] = true;
                if ready(&q, &lock_key, &indices, &fired) {
                    fired.iter_mut().for_each(|f| *f = false);
                    q.watches.hub.notify(&key);
                }
                continue;
            }
            // Quiet for a while after events from a majority whose gate
            // event never came (the gate's release failed, or its event
            // was lost): wake a waiter anyway; its attempt tells.
            if fired.iter().filter(|&&f| f).count() >= q.majority {
                q.watches.hub.notify(&key);
            }
            fired.iter_mut().for_each(|f| *f = false);
        }
        let mut forwarding = q
            .watches
            .forwarding
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !q.watches.hub.is_watched(&key) {
            forwarding.remove(&key);
            return;
        }
    }
}

/// Whether the release events in `fired` (one flag per registered member,
/// whose indices are `indices`) should wake a waiter: events from a
/// majority, and, while `key` is contended, from the gate member among
/// them (see the `contention` module). A waiter's next attempt then asks
/// the gate first: woken by a majority whose release had not reached the
/// gate yet, it would find the gate held and sleep again, and the gate's
/// own event, alone less than a majority, would not wake it, leaving it to
/// its backoff (seen over three and five Redis servers: a 5 s wait). A
/// gate that is not registered here is not waited for.
fn ready(q: &Inner, key: &LockKey, indices: &[usize], fired: &[bool]) -> bool {
    if fired.iter().filter(|&&f| f).count() < q.majority {
        return false;
    }
    match q
        .contention
        .gate(key)
        .and_then(|g| indices.iter().position(|&i| i == g))
    {
        Some(gate) => fired[gate],
        None => true,
    }
}

/// Unmarks a key as forwarded when dropped armed (see [`watch`]).
struct Unmark<'a> {
    q: &'a Inner,
    key: &'a str,
    armed: bool,
}

impl Drop for Unmark<'_> {
    fn drop(&mut self) {
        if self.armed {
            stop_forwarding(self.q, self.key);
        }
    }
}

fn stop_forwarding(q: &Inner, key: &str) {
    q.watches
        .forwarding
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(key);
}
