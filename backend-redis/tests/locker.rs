//! The core `Locker` over Redis: scenarios from the conformance plan that
//! need real time (expiry) and several clients, until the shared suite has
//! them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use distlock_redis::testkit::RedisServer;
use distlock_redis::{Extend, LockBackend, LockOptions, LockToken, Locker, RedisBackend, Release};

fn locker() -> Locker<RedisBackend> {
    let backend = RedisBackend::from_url(RedisServer::shared().url()).unwrap();
    Locker::new(backend).with_prefix("locker-tests").unwrap()
}

fn name(case: &str) -> String {
    format!("{case}:{}:{:?}", std::process::id(), Instant::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_exclusion_across_clients() {
    let name = name("mutex");
    let inside = Arc::new(AtomicUsize::new(0));
    let entered = Arc::new(AtomicUsize::new(0));
    let opts = LockOptions::default()
        .with_wait_timeout(Duration::from_secs(30))
        .with_retry(Duration::from_millis(5), Duration::from_millis(50));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let l = locker(); // its own pool and subscriber
        for _ in 0..5 {
            let (l, name, inside, entered, opts) = (
                l.clone(),
                name.clone(),
                inside.clone(),
                entered.clone(),
                opts.clone(),
            );
            tasks.push(tokio::spawn(async move {
                l.with_lock_with(
                    &name,
                    |_| opts.clone(),
                    |_| async {
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "overlap");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        inside.fetch_sub(1, Ordering::SeqCst);
                        entered.fetch_add(1, Ordering::SeqCst);
                    },
                )
                .await
                .unwrap();
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(entered.load(Ordering::SeqCst), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_takeover_and_fences() {
    let (a, b) = (locker(), locker());
    let name = name("expiry");
    let short = LockOptions::default().with_ttl(Duration::from_millis(200));
    let stale = a
        .try_lock_with(&name, |_| short.clone())
        .await
        .unwrap()
        .unwrap();
    assert!(b.try_lock(&name).await.unwrap().is_none());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fresh = b.try_lock(&name).await.unwrap().expect("the lease ran out");
    assert!(fresh.fence() > stale.fence());

    // The stale holder can neither extend nor free the new holder's lock.
    let key = a.key(&name).unwrap();
    let wrong = LockToken::generate();
    assert_eq!(
        a.backend()
            .extend(&key, &wrong, Duration::from_secs(5))
            .await
            .unwrap(),
        Extend::NotHeld
    );
    assert_eq!(stale.release().await.unwrap(), Release::NotHeld);
    assert!(a.inspect(&name).await.unwrap().held);
    let fence = fresh.fence();
    assert_eq!(fresh.release().await.unwrap(), Release::Released);
    let again = a.try_lock(&name).await.unwrap().unwrap();
    assert!(again.fence() > fence, "release never resets the fence");
    again.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_and_timed_out_waiters_leave_nothing_behind() {
    let (a, b) = (locker(), locker());
    let name = name("cancel");
    let guard = a.try_lock(&name).await.unwrap().unwrap();
    let opts = LockOptions::default().with_wait_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let err = b.lock_with(&name, |_| opts.clone()).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(started.elapsed() < Duration::from_millis(300 + 400));
    assert_eq!(b.backend().registered_waiters(), 0);

    let waiting = {
        let (b, name) = (b.clone(), name.clone());
        tokio::spawn(async move { b.lock(&name).await })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.backend().registered_waiters() == 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    waiting.abort();
    let _ = waiting.await;
    assert_eq!(b.backend().registered_waiters(), 0);
    guard.release().await.unwrap();
    // Nothing was left held by the cancelled waiter.
    let taken = b.try_lock(&name).await.unwrap();
    assert!(taken.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_names_and_extreme_ttls() {
    let l = locker();
    for n in ["a{b}c", "}{", "with space", "ключ", "x:y:z", "%7D"] {
        let g = l.try_lock(n).await.unwrap().expect(n);
        assert!(l.try_lock(n).await.unwrap().is_none(), "{n}");
        g.release().await.unwrap();
    }
    for ttl in [
        distlock_redis::distlock::MIN_TTL,
        distlock_redis::distlock::MAX_TTL,
    ] {
        let opts = LockOptions::default().with_ttl(ttl);
        let n = name("ttl");
        let g = l
            .try_lock_with(&n, |_| opts.clone())
            .await
            .unwrap()
            .unwrap();
        g.release().await.unwrap();
    }
}
