//! The basic contract: acquire, held is not an error, no reentrancy.

use std::time::Duration;

use distlock::{Acquire, LockBackend, LockError, LockOptions, LockToken, Release};

use crate::support::{is_held, locker};
use crate::{unique_name, Harness};

/// A free lock is acquired; a held lock gives `None` (not an error); another
/// name is independent; a released lock can be taken again.
pub async fn acquire_free_then_held_then_free<H: Harness>(h: &H) {
    let a = locker(h).await;
    let b = locker(h).await;
    let name = unique_name("basic");
    let other = unique_name("basic-other");

    assert!(!is_held(&b, &name).await, "a new name starts free");
    let guard = a
        .try_lock(&name)
        .await
        .unwrap()
        .expect("a free lock is acquired");
    assert!(is_held(&b, &name).await, "inspect sees the holder");
    assert!(
        b.try_lock(&name).await.unwrap().is_none(),
        "a held lock gives None"
    );
    // `Held.remaining` is the holder's remaining lease (waiters sleep on
    // it): here about the default TTL, never more.
    let lease = LockOptions::default().ttl;
    let key = b.key(&name).unwrap();
    let held = b
        .backend()
        .try_acquire(&key, &LockToken::generate(), lease, None)
        .await
        .unwrap();
    match held {
        Acquire::Held { remaining: None } => {}
        Acquire::Held {
            remaining: Some(left),
        } => assert!(
            left > lease / 2 && left <= lease,
            "Held.remaining must be the holder's remaining lease, about {lease:?} here \
             (waiters sleep on it): {left:?}"
        ),
        other => panic!("a held lock answers Held: {other:?}"),
    }
    let independent = b.try_lock(&other).await.unwrap();
    assert!(independent.is_some(), "another name is independent");
    assert_eq!(guard.release().await.unwrap(), Release::Released);
    assert!(!is_held(&b, &name).await, "a released lock is free");
    let again = b.try_lock(&name).await.unwrap();
    assert!(again.is_some(), "a released lock can be taken again");
}

/// Locks are not reentrant: the same `Locker` trying a name it holds gets
/// `None`, and a zero-wait `lock` times out instead of deadlocking.
pub async fn not_reentrant<H: Harness>(h: &H) {
    let l = locker(h).await;
    let name = unique_name("reentrant");
    let guard = l.try_lock(&name).await.unwrap().expect("free");
    assert!(
        l.try_lock(&name).await.unwrap().is_none(),
        "the same locker cannot take a lock it holds"
    );
    assert!(
        l.clone().try_lock(&name).await.unwrap().is_none(),
        "nor can a clone of it"
    );
    let once = LockOptions::default().with_wait_timeout(Duration::ZERO);
    let limit = Duration::from_secs(10) + h.timing_slack();
    let second = tokio::time::timeout(limit, l.lock_with(&name, |_| once.clone()))
        .await
        .expect("a second lock() of a held name must not deadlock");
    assert!(
        matches!(second, Err(LockError::TimedOut { .. })),
        "a second lock() of a held name times out: {second:?}"
    );
    assert_eq!(guard.release().await.unwrap(), Release::Released);
}

/// `inspect` reports the holder's owner label and a remaining lease no
/// longer than the TTL, and nothing for a free lock.
pub async fn inspect_reports_owner_and_remaining<H: Harness>(h: &H) {
    let a = locker(h).await;
    let b = locker(h).await;
    let name = unique_name("inspect");
    let anonymous = unique_name("inspect-anonymous");
    let t = Duration::from_secs(20);
    let opts = LockOptions::default()
        .with_ttl(t)
        .with_owner("worker-7 (pid 42)");
    let guard = a
        .try_lock_with(&name, |_| opts.clone())
        .await
        .unwrap()
        .expect("free");
    let info = b.inspect(&name).await.unwrap();
    assert!(info.held);
    assert_eq!(info.owner.as_deref(), Some("worker-7 (pid 42)"));
    let remaining = info
        .remaining
        .expect("a held lock reports its remaining lease");
    assert!(
        remaining <= t && remaining + h.timing_slack() >= t,
        "remaining {remaining:?} of a {t:?} lease"
    );
    let plain = a
        .try_lock_with(&anonymous, |_| LockOptions::default().with_ttl(t))
        .await
        .unwrap()
        .expect("free");
    assert_eq!(b.inspect(&anonymous).await.unwrap().owner, None);
    assert_eq!(guard.release().await.unwrap(), Release::Released);
    assert_eq!(plain.release().await.unwrap(), Release::Released);
    let info = b.inspect(&name).await.unwrap();
    assert!(!info.held && info.owner.is_none() && info.remaining.is_none());
}
