//! `LockBackend::raise_fence` (only for backends with
//! `Capabilities::raise_fence`; quorums rely on it for their fencing).

use std::time::Duration;

use distlock::{Acquire, LockBackend, LockKey, LockToken, RaiseFence, Release};

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
