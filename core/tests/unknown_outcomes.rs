//! Issue 10, kind 1: an extend whose outcome is unknown (cancelled, timed
//! out, failed after it may have reached the server) leaves the guard on
//! the safe side: its deadline becomes the earlier of the old one and the
//! one the new TTL gives. Each test failed before the fix (the guard kept
//! its old, later deadline while another client held the lock).

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use distlock::{LockError, LockOptions, Locker};
use distlock_memory::MemoryBackend;
use support::Faulty;

fn ttl(t: Duration) -> LockOptions {
    LockOptions::default().with_ttl(t)
}

/// The input: `timeout(20 ms, g.extend(1 s))` drops the call while
/// the server stalls; the server applies it 200 ms later. Once the 1 s
/// lease ran out another client takes the lock, and the guard must not
/// claim it any more.
#[tokio::test(start_paused = true)]
async fn a_cancelled_shortening_extend_lowers_the_deadline() {
    let store = MemoryBackend::new();
    let a = Locker::new(Faulty {
        inner: store.clone(),
        extend_delay: Duration::from_millis(200),
        ..Faulty::default()
    });
    let b = Locker::new(store.clone());
    let mut g = a
        .try_lock_with("k", |_| ttl(Duration::from_secs(30)).clone())
        .await
        .unwrap()
        .expect("free");
    let cut =
        tokio::time::timeout(Duration::from_millis(20), g.extend(Duration::from_secs(1))).await;
    assert!(cut.is_err(), "the extend was cut short: {cut:?}");
    assert!(
        g.lease().remaining() <= Duration::from_secs(1),
        "a dropped extend must already have lowered the deadline: {:?} left",
        g.lease().remaining()
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let other = b.try_lock("k").await.unwrap();
    assert!(
        other.is_some(),
        "the server applied the 1 s lease, which ended"
    );
    assert!(
        !g.is_valid() && !g.lease().is_held(),
        "two holders: the guard still claims the lock with {:?} left",
        g.lease().remaining()
    );
}

/// The second input: `g.extend(1 s)` returns a backend timeout
/// while the server applied it.
#[tokio::test(start_paused = true)]
async fn a_failed_shortening_extend_lowers_the_deadline() {
    let store = MemoryBackend::new();
    let faulty = Faulty {
        inner: store.clone(),
        ..Faulty::default()
    };
    faulty.extend_unknown.store(1, Ordering::SeqCst);
    let a = Locker::new(faulty);
    let b = Locker::new(store.clone());
    let mut g = a
        .try_lock_with("k", |_| ttl(Duration::from_secs(30)).clone())
        .await
        .unwrap()
        .expect("free");
    let err = g.extend(Duration::from_secs(1)).await.unwrap_err();
    assert!(matches!(err, LockError::Backend(_)), "{err:?}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(b.try_lock("k").await.unwrap().is_some());
    assert!(!g.is_valid(), "two holders: {:?}", g.lease());
}

/// A lengthening extend with an unknown outcome keeps the old deadline; a
/// confirmed one moves it.
#[tokio::test(start_paused = true)]
async fn a_failed_lengthening_extend_keeps_the_old_deadline() {
    let faulty = Faulty::default();
    let unknown = faulty.extend_unknown.clone();
    let a = Locker::new(faulty);
    let mut g = a
        .try_lock_with("k", |_| ttl(Duration::from_secs(1)).clone())
        .await
        .unwrap()
        .expect("free");
    let before = g.valid_until();
    unknown.store(1, Ordering::SeqCst);
    assert!(g.extend(Duration::from_secs(30)).await.is_err());
    assert_eq!(
        g.valid_until(),
        before,
        "an unconfirmed extend moved the deadline later"
    );
    g.extend(Duration::from_secs(30)).await.unwrap();
    assert!(g.lease().remaining() > Duration::from_secs(29));
}

/// The variant: the user extends to a longer TTL, then a renewal
/// (which would send the original, shorter TTL) is applied but answered
/// with an error, and later renewals fail; the guard must never count on a
/// lease the server does not have. Since stop 23 renewal never sends a TTL
/// that would shorten a longer manual lease (it waits until what is left
/// falls to its TTL), so the shorter lease never reaches the server: the
/// manual 60 s lease stands, the guard counts on it, and nobody else
/// acquires meanwhile.
#[tokio::test(start_paused = true)]
async fn a_renewal_after_a_longer_manual_extend_sends_nothing_shorter() {
    let store = MemoryBackend::new();
    let faulty = Faulty {
        inner: store.clone(),
        ..Faulty::default()
    };
    let (unknown, down) = (faulty.extend_unknown.clone(), faulty.down.clone());
    let a = Locker::new(faulty);
    let b = Locker::new(store.clone());
    let t = Duration::from_secs(3);
    let mut g = a
        .try_lock_with("k", |_| ttl(t).with_auto_renew(true).clone())
        .await
        .unwrap()
        .expect("free");
    g.extend(Duration::from_secs(60)).await.unwrap();
    // A renewal at t/3 = 1 s would be applied and its answer lost.
    unknown.store(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        unknown.load(Ordering::SeqCst),
        1,
        "no renewal was sent while the longer manual lease stands"
    );
    down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert!(
        b.try_lock("k").await.unwrap().is_none(),
        "the manual 60 s lease still holds on the server"
    );
    assert!(g.is_valid(), "and the guard counts on it, rightly");
}

/// An extend confirmed only after the lease it set could have ended is an
/// error (`NotHeld`), not `Ok`: the guard can no longer count on the lock
/// (found in review: it returned `Ok` while `is_valid()` was false).
#[tokio::test(start_paused = true)]
async fn an_extend_answered_after_its_lease_ended_is_not_ok() {
    let store = MemoryBackend::new();
    let a = Locker::new(Faulty {
        inner: store.clone(),
        extend_delay: Duration::from_millis(300),
        ..Faulty::default()
    });
    let mut g = a
        .try_lock_with("k", |_| ttl(Duration::from_secs(30)).clone())
        .await
        .unwrap()
        .expect("free");
    let late = g.extend(Duration::from_millis(100)).await;
    assert!(
        matches!(late, Err(LockError::NotHeld { .. })),
        "{late:?} while valid = {}",
        g.is_valid()
    );
    assert!(!g.is_valid());
}
