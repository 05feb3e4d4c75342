//! Error classification: a store that cannot be reached gives transient
//! errors, promptly.

use std::future::Future;
use std::time::Duration;

use distlock::{
    BackendError, BackendErrorKind, LockBackend, LockError, LockOptions, LockToken, Locker,
};

use crate::support::skip;
use crate::Harness;

/// Whether `e` is what an unreachable store should give: a transient error
/// of a kind that says so.
fn unreachable_kind(e: &BackendError) -> bool {
    e.is_transient()
        && matches!(
            e.kind(),
            BackendErrorKind::Unavailable
                | BackendErrorKind::Timeout
                | BackendErrorKind::PoolExhausted
        )
}

/// Runs `call` with a time limit, panicking if it does not finish.
async fn bounded<T>(what: &str, limit: Duration, call: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
        panic!("{what} against an unreachable store did not end within {limit:?}")
    })
}

/// Asserts that a backend call failed as an unreachable store should, and
/// that its message does not carry the secret token.
#[track_caller]
fn assert_unreachable<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, BackendError>,
    token: &LockToken,
) {
    match result {
        Err(e) => {
            assert!(
                unreachable_kind(&e),
                "{what}: an unreachable store must give Unavailable, Timeout or \
                 PoolExhausted (transient), got {:?}: {e}",
                e.kind()
            );
            let shown = format!("{e} {e:?}");
            assert!(
                !shown.contains(token.as_hex()),
                "{what}: the error shows the token"
            );
        }
        Ok(v) => panic!("{what} succeeded against an unreachable store: {v:?}"),
    }
}

/// Through a client whose store cannot be reached
/// ([`Harness::unreachable_client`]), every backend call and every `Locker`
/// entry point fails within a bounded time (30 s plus the slack) with a
/// transient error of kind `Unavailable`, `Timeout` or `PoolExhausted`; a
/// waiting `lock()` keeps trying until its wait timeout (a store that is
/// down for a moment must not fail a waiter with time left) and then ends
/// with that error, not with `TimedOut`; `with_lock` does not run its
/// closure. `watch` may register
/// locally (a later notification connection), or fail the same way.
pub async fn unreachable_store_gives_transient_errors<H: Harness>(h: &H) {
    const CASE: &str = "unreachable_store_gives_transient_errors";
    let down = match h.unreachable_client().await {
        Ok(Some(client)) => client,
        Ok(None) => {
            return skip(CASE, "the harness has no Harness::unreachable_client hook");
        }
        Err(e) => panic!("Harness::unreachable_client failed: {e}"),
    };
    let limit = Duration::from_secs(30) + h.timing_slack();
    // Waiters retry transient errors until their wait timeout: keep it short.
    let wait = Duration::from_secs(1);
    let l = Locker::new(down.clone())
        .with_defaults(LockOptions::default().with_wait_timeout(wait))
        .unwrap();
    let name = crate::unique_name("unreachable");
    let key = l.key(&name).unwrap();
    let token = LockToken::generate();
    let ttl = Duration::from_secs(5);

    let got = bounded(
        "try_acquire",
        limit,
        down.try_acquire(&key, &token, ttl, None),
    )
    .await;
    assert_unreachable("try_acquire", got, &token);
    let got = bounded("extend", limit, down.extend(&key, &token, ttl)).await;
    assert_unreachable("extend", got, &token);
    let got = bounded("release", limit, down.release(&key, &token)).await;
    assert_unreachable("release", got, &token);
    let got = bounded("inspect", limit, down.inspect(&key)).await;
    assert_unreachable("inspect", got, &token);
    if let Err(e) = bounded("watch", limit, down.watch(&key)).await {
        assert!(unreachable_kind(&e), "watch: {:?}: {e}", e.kind());
    }

    fn is_unreachable<T>(r: &Result<T, LockError>) -> bool {
        matches!(r, Err(LockError::Backend(e)) if unreachable_kind(e))
    }
    let tried = bounded("try_lock", limit, l.try_lock(&name)).await;
    assert!(is_unreachable(&tried), "try_lock: {tried:?}");
    let started = tokio::time::Instant::now();
    let locked = bounded("lock", limit + wait, l.lock(&name)).await;
    assert!(is_unreachable(&locked), "lock: {locked:?}");
    assert!(
        started.elapsed() >= wait,
        "lock gave up after {:?}, before its wait timeout {wait:?}",
        started.elapsed()
    );
    let inspected = bounded("Locker::inspect", limit, l.inspect(&name)).await;
    assert!(is_unreachable(&inspected), "inspect: {inspected:?}");
    let ran = std::sync::atomic::AtomicBool::new(false);
    let with = bounded(
        "with_lock",
        limit + wait,
        l.with_lock(&name, |_| async {
            ran.store(true, std::sync::atomic::Ordering::SeqCst)
        }),
    )
    .await;
    assert!(is_unreachable(&with), "with_lock: {with:?}");
    assert!(
        !ran.into_inner(),
        "with_lock ran its closure without the lock"
    );
    let e = tried.err().unwrap();
    assert!(e.is_transient(), "LockError::is_transient for {e}");
}
