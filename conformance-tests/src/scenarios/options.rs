//! Validation of TTLs and options, before anything reaches the backend.

use std::time::Duration;

use distlock::{
    LockError, LockOptions, Locker, Release, MAX_OWNER_LEN, MAX_PREFIX_LEN, MAX_TTL,
    MAX_WAIT_TIMEOUT, MIN_TTL,
};

use crate::counting::Counted;
use crate::support::{client, is_held, locker, ttl};
use crate::{unique_name, Harness};

/// Runs every entry point that takes options with `opts` and checks that
/// each fails with an error `expected` accepts.
async fn refused_everywhere<B: distlock::LockBackend>(
    l: &Locker<B>,
    name: &str,
    opts: &LockOptions,
    expected: fn(&LockError) -> bool,
) {
    let what = format!("{opts:?}");
    let tried = l.try_lock_with(name, opts).await;
    assert!(
        tried.as_ref().is_err_and(expected),
        "try_lock_with {what}: {tried:?}"
    );
    let locked = l.lock_with(name, opts).await;
    assert!(
        locked.as_ref().is_err_and(expected),
        "lock_with {what}: {locked:?}"
    );
    let ran = l.with_lock_opts(name, opts, |_| async {}).await;
    assert!(
        ran.as_ref().is_err_and(expected),
        "with_lock_opts {what}: {ran:?}"
    );
    let rebuilt = l.clone().with_defaults(opts.clone());
    assert!(
        rebuilt.as_ref().is_err_and(expected),
        "with_defaults {what}"
    );
}

/// Whether `e` is `InvalidTtl`.
fn is_invalid_ttl(e: &LockError) -> bool {
    matches!(e, LockError::InvalidTtl { .. })
}

/// Whether `e` is `InvalidOptions`.
fn is_invalid_options(e: &LockError) -> bool {
    matches!(e, LockError::InvalidOptions(_))
}

/// A TTL of zero, 1 ns, just below `MIN_TTL` or above `MAX_TTL` is refused
/// with `InvalidTtl` by every entry point and by `extend`, and nothing is
/// sent to the backend; `MIN_TTL` and `MAX_TTL` themselves are accepted and
/// reach the backend (however fast it answers: a backend slower than the
/// 10 ms `MIN_TTL` lease gets its lock given back, which is fine here).
pub async fn invalid_ttl_rejected_before_backend<H: Harness>(h: &H) {
    let counting = Counted::new(client(h).await);
    let l = Locker::new(counting.backend.clone());
    let observer = locker(h).await;
    let name = unique_name("bad-ttl");
    let held = unique_name("bad-ttl-extend");
    let mut guard = l.try_lock(&held).await.unwrap().expect("free");
    let calls = counting.calls();

    let bad = [
        Duration::ZERO,
        Duration::from_nanos(1),
        MIN_TTL - Duration::from_nanos(1),
        MAX_TTL + Duration::from_millis(1),
        Duration::MAX,
    ];
    for t in bad {
        refused_everywhere(&l, &name, &ttl(t), is_invalid_ttl).await;
        let extended = guard.extend(t).await;
        assert!(
            extended.as_ref().is_err_and(is_invalid_ttl),
            "extend({t:?}): {extended:?}"
        );
    }
    assert_eq!(counting.calls(), calls, "a bad TTL reached the backend");
    assert!(
        !is_held(&observer, &name).await,
        "a bad TTL locked something"
    );
    assert!(guard.is_valid(), "a refused extend does not lose the lock");
    assert_eq!(guard.release().await.unwrap(), Release::Released);

    for t in [MIN_TTL, MAX_TTL] {
        let name = unique_name("good-ttl");
        let before = counting.calls();
        match l.try_lock_with(&name, &ttl(t)).await {
            // The 10 ms lease may be over by now; either release outcome is fine.
            Ok(Some(got)) => {
                got.release().await.unwrap();
            }
            Ok(None) => panic!("TTL {t:?}: a fresh name is free"),
            // The answer came after the 10 ms lease could have ended: the
            // Locker reported a Timeout and gave the lock back. The TTL was
            // accepted; the backend was merely slower than 10 ms.
            Err(LockError::Backend(e))
                if t == MIN_TTL && e.kind() == distlock::BackendErrorKind::Timeout => {}
            Err(e) => panic!("TTL {t:?} is valid: {e}"),
        }
        assert!(
            counting.calls() > before,
            "the valid TTL {t:?} never reached the backend"
        );
    }
}

/// Options outside their limits (wait timeout above `MAX_WAIT_TIMEOUT`,
/// an over-long owner, bad retry delays, a zero `max_hold`) and an
/// over-long prefix are refused with `InvalidOptions`, before the backend.
pub async fn invalid_options_rejected_before_backend<H: Harness>(h: &H) {
    let counting = Counted::new(client(h).await);
    let l = Locker::new(counting.backend.clone());
    let observer = locker(h).await;
    let name = unique_name("bad-options");
    let d = || LockOptions::default().with_ttl(Duration::from_secs(5));
    let bad = [
        d().with_wait_timeout(MAX_WAIT_TIMEOUT + Duration::from_millis(1)),
        d().with_wait_timeout(Duration::MAX),
        d().with_owner("o".repeat(MAX_OWNER_LEN + 1)),
        d().with_retry(Duration::ZERO, Duration::from_millis(1)),
        d().with_retry(Duration::from_secs(2), Duration::from_secs(1)),
        d().with_retry(Duration::from_millis(1), MAX_WAIT_TIMEOUT * 2),
        d().with_max_hold(Some(Duration::ZERO)),
    ];
    for opts in &bad {
        refused_everywhere(&l, &name, opts, is_invalid_options).await;
    }
    let prefix = l.clone().with_prefix("p".repeat(MAX_PREFIX_LEN + 1));
    assert!(
        prefix.as_ref().is_err_and(is_invalid_options),
        "long prefix"
    );
    let prefix = l.clone().with_prefix("a\0b");
    assert!(prefix.as_ref().is_err_and(is_invalid_options), "NUL prefix");
    assert_eq!(counting.calls(), 0, "bad options reached the backend");
    assert!(
        !is_held(&observer, &name).await,
        "bad options locked something"
    );

    let limits = d()
        .with_wait_timeout(MAX_WAIT_TIMEOUT)
        .with_owner("o".repeat(MAX_OWNER_LEN));
    let got = l
        .try_lock_with(&name, &limits)
        .await
        .unwrap()
        .expect("free");
    assert_eq!(got.release().await.unwrap(), Release::Released);
}
