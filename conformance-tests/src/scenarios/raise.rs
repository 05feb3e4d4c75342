//! `LockBackend::raise_fence` (only for backends with
//! `Capabilities::raise_fence`; quorums rely on it for their fencing).

use std::time::Duration;

use distlock::{Acquire, LockBackend, LockKey, LockToken, RaiseFence, Release, Waiter, WaiterId};

use crate::support::client;
use crate::{unique_name, Harness};

/// `raise_fence` lifts the hold's fencing token only while the token holds
/// the key, never lowers it, and later acquisitions get greater tokens.
pub async fn raise_fence_lifts_the_counter<H: Harness>(h: &H) {
    let client = client(h).await;
    let key = LockKey::new("", unique_name("raise-fence")).unwrap();
    if !client.capabilities().raise_fence {
        // Without the capability the contract is the default answer: a
        // backend that does not claim it must not pretend to raise.
        let token = LockToken::generate();
        let got = client
            .try_acquire(&key, &token, Duration::from_secs(10), None)
            .await
            .unwrap();
        assert!(matches!(got, Acquire::Acquired { .. }), "free: {got:?}");
        assert_eq!(
            client
                .raise_fence(&key, &token, u64::from(u32::MAX))
                .await
                .unwrap(),
            RaiseFence::Unsupported,
            "a backend without Capabilities::raise_fence answers Unsupported"
        );
        assert_eq!(
            client.release(&key, &token).await.unwrap(),
            Release::Released
        );
        return;
    }
    let ttl = Duration::from_secs(10);
    let (ours, theirs) = (LockToken::generate(), LockToken::generate());
    let Acquire::Acquired { fence: first } =
        client.try_acquire(&key, &ours, ttl, None).await.unwrap()
    else {
        panic!("a fresh key is free");
    };
    let raised = first + 1000;
    assert_eq!(
        client.raise_fence(&key, &ours, raised).await.unwrap(),
        RaiseFence::Raised { fence: raised }
    );
    assert_eq!(
        client.inspect(&key).await.unwrap().last_fence,
        Some(raised),
        "inspect shows the raised token"
    );
    // Never lowered; retrying is harmless.
    assert_eq!(
        client.raise_fence(&key, &ours, first).await.unwrap(),
        RaiseFence::Raised { fence: raised }
    );
    assert_eq!(
        client.raise_fence(&key, &ours, raised).await.unwrap(),
        RaiseFence::Raised { fence: raised }
    );
    // Another token changes nothing.
    assert_eq!(
        client
            .raise_fence(&key, &theirs, raised + 50)
            .await
            .unwrap(),
        RaiseFence::NotHeld
    );
    assert_eq!(client.inspect(&key).await.unwrap().last_fence, Some(raised));

    assert_eq!(
        client.release(&key, &ours).await.unwrap(),
        Release::Released
    );
    // Released: no raise any more.
    assert_eq!(
        client.raise_fence(&key, &ours, raised + 50).await.unwrap(),
        RaiseFence::NotHeld
    );
    let Acquire::Acquired { fence: next } =
        client.try_acquire(&key, &theirs, ttl, None).await.unwrap()
    else {
        panic!("released, so free");
    };
    assert!(
        next > raised,
        "next acquisition got {next} after a raise to {raised}"
    );
    assert!(
        next < raised + 50,
        "a refused raise changed the counter: {next}"
    );
    assert_eq!(
        client.release(&key, &theirs).await.unwrap(),
        Release::Released
    );
}

/// Fencing tokens stay exact and strictly increasing above 2^53 (where a
/// double, such as a Lua number, can no longer count by one): after a
/// raise to 2^53 + 1, every later acquisition, the repeated acquire of the
/// holding token, and (with [`Capabilities::waiter_queue`]) a handover and
/// its claim answer exactly the counter's value.
///
/// A quorum raises its members to the highest member's token, so a member
/// whose counter started high (a clock in nanoseconds, say) carries every
/// other member there.
///
/// [`Capabilities::waiter_queue`]: distlock::Capabilities::waiter_queue
pub async fn raised_fences_stay_exact_above_2_pow_53<H: Harness>(h: &H) {
    let client = client(h).await;
    if !client.capabilities().raise_fence {
        // Checked by `raise_fence_lifts_the_counter`: the default answer.
        return;
    }
    let key = LockKey::new("", unique_name("raise-2-53")).unwrap();
    let ttl = Duration::from_secs(10);
    let start = (1u64 << 53) + 1;
    let ours = LockToken::generate();
    let got = client.try_acquire(&key, &ours, ttl, None).await.unwrap();
    assert!(matches!(got, Acquire::Acquired { .. }), "free: {got:?}");
    assert_eq!(
        client.raise_fence(&key, &ours, start).await.unwrap(),
        RaiseFence::Raised { fence: start }
    );
    assert_eq!(
        client.try_acquire(&key, &ours, ttl, None).await.unwrap(),
        Acquire::Acquired { fence: start },
        "the holding token's repeated acquire answers the raised token exactly"
    );
    let mut last = start;
    let mut holder = ours;
    if client.capabilities().waiter_queue {
        // Released with a waiter in line: handed over, then claimed.
        let waiter = Waiter::new(WaiterId::generate(), Duration::from_secs(10));
        let next = LockToken::generate();
        let queued = client
            .try_acquire_queued(&key, &next, ttl, None, &waiter)
            .await
            .unwrap();
        assert!(matches!(queued, Acquire::Held { .. }), "held: {queued:?}");
        assert_eq!(
            client.release(&key, &holder).await.unwrap(),
            Release::Released
        );
        let Acquire::Acquired { fence } = client
            .try_acquire_queued(&key, &next, ttl, None, &waiter)
            .await
            .unwrap()
        else {
            panic!("the release handed the key to the only waiter in line");
        };
        assert_eq!(fence, last + 1, "the handover's token after {last}");
        last = fence;
        holder = next;
    }
    for _ in 0..3 {
        assert_eq!(
            client.release(&key, &holder).await.unwrap(),
            Release::Released
        );
        holder = LockToken::generate();
        let Acquire::Acquired { fence } =
            client.try_acquire(&key, &holder, ttl, None).await.unwrap()
        else {
            panic!("released, so free");
        };
        assert_eq!(fence, last + 1, "the acquisition after {last}");
        assert_eq!(
            client.inspect(&key).await.unwrap().last_fence,
            Some(fence),
            "inspect and acquire agree on the token"
        );
        last = fence;
    }
    assert_eq!(
        client.release(&key, &holder).await.unwrap(),
        Release::Released
    );
}
