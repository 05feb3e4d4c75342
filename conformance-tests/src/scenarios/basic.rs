//! Case 1: the basic contract.

use distlock::Locker;

use crate::{unique_name, Harness};

/// A free lock is acquired; a held lock gives `None` (not an error); another
/// name is independent; a released lock can be taken again.
pub async fn acquire_free_then_held_then_free<H: Harness>(h: &H) {
    let a = Locker::new(h.client().await);
    let b = Locker::new(h.client().await);
    let name = unique_name("basic");
    let other = unique_name("basic-other");

    let guard = a
        .try_lock(&name)
        .await
        .unwrap()
        .expect("a free lock is acquired");
    assert!(
        b.try_lock(&name).await.unwrap().is_none(),
        "a held lock gives None"
    );
    let independent = b.try_lock(&other).await.unwrap();
    assert!(independent.is_some(), "another name is independent");
    assert_eq!(guard.release().await.unwrap(), distlock::Release::Released);
    let again = b.try_lock(&name).await.unwrap();
    assert!(again.is_some(), "a released lock can be taken again");
}
