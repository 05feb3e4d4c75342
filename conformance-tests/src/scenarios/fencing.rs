//! Fencing tokens (only for backends with `Capabilities::fencing`).

use std::time::Duration;

use distlock::{LockBackend, Release, MAX_FENCE};

use crate::support::{locker, short_ttl, skipped_for, ttl};
use crate::{unique_name, Harness};

/// Fencing tokens strictly increase across release and re-acquisition and
/// across expiry and takeover, and `inspect` shows the holder's token;
/// they stay at or below `MAX_FENCE` (`i64::MAX`).
pub async fn fences_strictly_increase<H: Harness>(h: &H) {
    let a = locker(h).await;
    if skipped_for("fences_strictly_increase", a.backend().capabilities()) {
        return;
    }
    let b = locker(h).await;
    let name = unique_name("fences");
    let t = short_ttl(h);

    let first = a.try_lock(&name).await.unwrap().expect("free");
    let f1 = first.fence();
    assert!(f1 <= MAX_FENCE, "fence {f1} above MAX_FENCE (i64::MAX)");
    let info = b.inspect(&name).await.unwrap();
    assert_eq!(
        info.last_fence,
        Some(f1),
        "inspect shows the holder's fence"
    );
    assert_eq!(
        first.release().await.unwrap(),
        Release::Released,
        "the holder's own release"
    );

    let second = b
        .try_lock_with(&name, |_| ttl(t))
        .await
        .unwrap()
        .expect("released");
    let f2 = second.fence();
    assert!(f2 > f1, "release then re-acquire: {f2} after {f1}");
    assert_eq!(
        b.inspect(&name).await.unwrap().last_fence,
        Some(f2),
        "inspect after release and re-acquire shows the new holder's fence"
    );

    tokio::time::sleep(t + h.timing_slack()).await;
    let third = a.try_lock(&name).await.unwrap().expect("expired");
    let f3 = third.fence();
    assert!(f3 > f2, "expiry then takeover: {f3} after {f2}");
    assert_eq!(
        a.inspect(&name).await.unwrap().last_fence,
        Some(f3),
        "inspect after expiry and takeover shows the new holder's fence"
    );
    assert_eq!(
        second.release().await.unwrap(),
        Release::NotHeld,
        "a release after the lease expired and was taken over"
    );
    assert_eq!(
        a.inspect(&name).await.unwrap().last_fence,
        Some(f3),
        "a stale release does not change the fence"
    );

    // A release never resets the sequence.
    assert_eq!(
        third.release().await.unwrap(),
        Release::Released,
        "the holder's own release"
    );
    let fourth = b.try_lock(&name).await.unwrap().expect("released");
    assert!(fourth.fence() > f3, "{} after {f3}", fourth.fence());
    assert!(
        fourth.fence() <= MAX_FENCE,
        "fence above MAX_FENCE (i64::MAX)"
    );
}

/// Each name's fencing tokens increase on their own: interleaved
/// acquisitions of several names keep every name's sequence increasing.
pub async fn fences_increase_per_name<H: Harness>(h: &H) {
    let a = locker(h).await;
    if skipped_for("fences_increase_per_name", a.backend().capabilities()) {
        return;
    }
    let b = locker(h).await;
    let names: Vec<String> = (0..3).map(|i| unique_name(&format!("fence-{i}"))).collect();
    let mut last = vec![None::<u64>; names.len()];
    let lease = ttl(Duration::from_secs(10));
    for round in 0..4 {
        for (i, name) in names.iter().enumerate() {
            let l = if (round + i) % 2 == 0 { &a } else { &b };
            let guard = l
                .try_lock_with(name, |_| lease.clone())
                .await
                .unwrap()
                .expect("free");
            let fence = guard.fence();
            assert!(
                fence <= MAX_FENCE,
                "fence {fence} above MAX_FENCE (i64::MAX)"
            );
            if let Some(prev) = last[i] {
                assert!(fence > prev, "{name}: fence {fence} after {prev}");
            }
            assert_eq!(l.inspect(name).await.unwrap().last_fence, Some(fence));
            last[i] = Some(fence);
            assert_eq!(guard.release().await.unwrap(), Release::Released);
        }
    }
}
