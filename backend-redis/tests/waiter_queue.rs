//! The Redis line of waiters (issue 15), through the `LockBackend` trait
//! directly: handover to the first live waiter, its claim and fence, FIFO
//! across backends, grant routing, dead and departed waiters, a lost line,
//! and what the uncontended path pays. Real `redis-server`s; the bounds
//! asserted are the design's correctness bounds with generous slack.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use distlock_redis::redis::{self, aio::MultiplexedConnection};
use distlock_redis::testkit::RedisServer;

mod line_support;
use distlock_redis::{
    Acquire, BackendErrorKind, LockBackend, LockKey, LockToken, RedisBackend, RedisConfig, Release,
    ReleaseWatch, Waiter, WaiterId, WAITER_LEASE,
};
use futures::{FutureExt as _, StreamExt as _};
use line_support::{admin, exists, get, line_reaches, no_hang, zcard};
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(30);
/// Generous slack on top of a bound (2 shared cores, other test binaries).
const SLACK: Duration = Duration::from_millis(700);

fn unique(case: &str) -> LockKey {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    LockKey::new(
        "wq",
        format!(
            "{case}:{}:{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ),
    )
    .unwrap()
}

fn backend(url: &str) -> RedisBackend {
    RedisBackend::from_url(url).unwrap()
}

/// A runtime for the tests that own a dedicated server.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn waiter(lease: Duration) -> Waiter {
    Waiter::new(WaiterId::generate(), lease)
}

fn acquired(a: Acquire) -> u64 {
    match a {
        Acquire::Acquired { fence } => fence,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

fn is_held(a: &Acquire) -> bool {
    matches!(a, Acquire::Held { .. })
}

/// Whether `watch` has been woken (without waiting).
fn woken(watch: &mut ReleaseWatch) -> bool {
    watch.released().now_or_never().is_some()
}

/// A waiting `lock()` call as the Locker makes it: one token and waiter,
/// queued calls, woken by its watch, calling again after at most `refresh`
/// and never later than the holder's remaining lease + 1 ms. Returns the
/// fence and when the call that acquired was answered.
async fn wait_in_line(
    b: &RedisBackend,
    key: &LockKey,
    token: &LockToken,
    w: &Waiter,
    refresh: Duration,
) -> (u64, Instant) {
    let mut watch = b.watch_queued(key, w).await.unwrap().expect("a watch");
    loop {
        match b
            .try_acquire_queued(key, token, TTL, None, w)
            .await
            .unwrap()
        {
            Acquire::Acquired { fence } => return (fence, Instant::now()),
            Acquire::Held { remaining } => {
                let mut wait = refresh;
                if let Some(r) = remaining {
                    wait = wait.min(r + Duration::from_millis(1));
                }
                tokio::select! {
                    () = watch.released() => {}
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// A release with waiters in line hands the key to the first live one (its
/// token, for the claim window), wakes only that waiter's watch, and its
/// claim answers the handover's fence: one new fence per acquisition, none
/// for the claim or a repeated claim. Across three backends (pub/sub).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_hands_over_to_the_first_waiter_and_wakes_only_it() {
    let url = RedisServer::shared().url();
    let (b0, b1, b2) = (backend(url), backend(url), backend(url));
    assert!(b1.capabilities().waiter_queue);
    let mut admin = admin(url).await;
    let k = unique("handover");
    let keys = b0.keys(&k);
    // Leases far longer than the test's steps: only the order matters here.
    let lease = Duration::from_secs(10);
    let (w1, w2) = (waiter(lease), waiter(lease));
    let (t0, t1, t2) = (
        LockToken::generate(),
        LockToken::generate(),
        LockToken::generate(),
    );

    let f0 = acquired(b0.try_acquire(&k, &t0, TTL, None).await.unwrap());
    let mut watch1 = b1.watch_queued(&k, &w1).await.unwrap().unwrap();
    let mut watch2 = b2.watch_queued(&k, &w2).await.unwrap().unwrap();
    let held = b1
        .try_acquire_queued(&k, &t1, TTL, None, &w1)
        .await
        .unwrap();
    assert!(is_held(&held), "{held:?}");
    assert_eq!(zcard(&mut admin, &keys.waiters).await, 1);
    assert!(is_held(
        &b2.try_acquire_queued(&k, &t2, TTL, None, &w2)
            .await
            .unwrap()
    ));
    // A renewal keeps the place (the order is unchanged).
    assert!(is_held(
        &b1.try_acquire_queued(&k, &t1, TTL, None, &w1)
            .await
            .unwrap()
    ));
    assert_eq!(zcard(&mut admin, &keys.waiters).await, 2);
    // Newcomers see it held, also a plain try_acquire.
    assert!(is_held(
        &b0.try_acquire(&k, &LockToken::generate(), TTL, None)
            .await
            .unwrap()
    ));

    assert_eq!(b0.release(&k, &t0).await.unwrap(), Release::Released);
    // Never free: the key went straight to the first waiter's token.
    assert_eq!(
        get(&mut admin, &keys.lock).await.as_deref(),
        Some(t1.as_hex())
    );
    let info = b0.inspect(&k).await.unwrap();
    assert!(info.held);
    assert_eq!(
        info.last_fence,
        Some(f0 + 1),
        "the handover counts the fence"
    );
    assert!(info.remaining.unwrap() <= lease, "{info:?}");
    no_hang("the grant to w1", watch1.released()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!woken(&mut watch2), "w2 was woken by a handover to w1");
    // Others still see it held during the claim window.
    assert!(is_held(
        &b0.try_acquire(&k, &LockToken::generate(), TTL, None)
            .await
            .unwrap()
    ));

    let f1 = acquired(
        b1.try_acquire_queued(&k, &t1, TTL, None, &w1)
            .await
            .unwrap(),
    );
    assert_eq!(f1, f0 + 1, "the claim answers the handover's fence");
    let again = acquired(
        b1.try_acquire_queued(&k, &t1, TTL, None, &w1)
            .await
            .unwrap(),
    );
    assert_eq!(again, f1, "a repeated claim takes no new fence");
    let info = b0.inspect(&k).await.unwrap();
    assert_eq!(info.last_fence, Some(f1));
    assert!(
        info.remaining.unwrap() > lease,
        "the claim set the TTL: {info:?}"
    );
    assert_eq!(
        zcard(&mut admin, &keys.waiters).await,
        1,
        "w1 left the line"
    );

    assert_eq!(b1.release(&k, &t1).await.unwrap(), Release::Released);
    no_hang("the grant to w2", watch2.released()).await;
    let f2 = acquired(
        b2.try_acquire_queued(&k, &t2, TTL, None, &w2)
            .await
            .unwrap(),
    );
    assert_eq!(f2, f1 + 1);
    assert_eq!(b2.release(&k, &t2).await.unwrap(), Release::Released);
    assert!(!b0.inspect(&k).await.unwrap().held);
    assert_eq!(
        exists(&mut admin, &[&keys.waiters, &keys.leases]).await,
        0,
        "the line is gone with its last waiter"
    );
}

/// Waiters of three backends join A, B, C (each awaited by `ZCARD`) and
/// acquire in that order, with consecutive fences.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_of_three_backends_acquire_in_the_order_they_joined() {
    let url = RedisServer::shared().url();
    let holder = backend(url);
    let mut admin = admin(url).await;
    let k = unique("fifo");
    let keys = holder.keys(&k);
    let t0 = LockToken::generate();
    let f0 = acquired(holder.try_acquire(&k, &t0, TTL, None).await.unwrap());
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (i, name) in ["A", "B", "C"].into_iter().enumerate() {
        let (b, k, order) = (backend(url), k.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let (token, w) = (LockToken::generate(), waiter(WAITER_LEASE));
            let (fence, _) = wait_in_line(&b, &k, &token, &w, WAITER_LEASE / 3).await;
            order.lock().unwrap().push((name, fence));
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(b.release(&k, &token).await.unwrap(), Release::Released);
        }));
        line_reaches(
            &mut admin,
            &keys.waiters,
            i as i64 + 1,
            Duration::from_secs(20),
        )
        .await;
    }
    assert_eq!(holder.release(&k, &t0).await.unwrap(), Release::Released);
    for t in tasks {
        no_hang("a waiter", t).await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    assert_eq!(
        order,
        [("A", f0 + 1), ("B", f0 + 2), ("C", f0 + 3)],
        "not first come, first served"
    );
}

/// A raw observer of the lock's channels sees one grant per handover, on
/// the grant channel of the waiter's backend with that waiter's id, and one
/// release message when nobody is left; the grant alone wakes a waiter
/// whose calls are 60 s apart (its lease is longer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_go_to_the_waiters_backend_only() {
    let url = RedisServer::shared().url();
    let (b0, b1, b2) = (backend(url), backend(url), backend(url));
    assert_ne!(b1.backend_id(), b2.backend_id());
    assert_eq!(b1.backend_id(), b1.clone().backend_id(), "clones share it");
    let mut admin = admin(url).await;
    let k = unique("routing");
    let keys = b0.keys(&k);
    let mut observer = redis::Client::open(url)
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    observer
        .psubscribe(format!(
            "{}:*",
            keys.lock.replace('{', "\\{").replace('}', "\\}")
        ))
        .await
        .unwrap();
    let mut messages = observer.into_on_message();

    let t0 = LockToken::generate();
    acquired(b0.try_acquire(&k, &t0, TTL, None).await.unwrap());
    let lease = Duration::from_secs(120);
    let slow = Duration::from_secs(60);
    let (w1, w2) = (waiter(lease), waiter(lease));
    let spawn = |b: RedisBackend, w: Waiter| {
        let k = k.clone();
        tokio::spawn(async move {
            let token = LockToken::generate();
            let (fence, at) = wait_in_line(&b, &k, &token, &w, slow).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(b.release(&k, &token).await.unwrap(), Release::Released);
            (fence, at)
        })
    };
    let a = spawn(b1.clone(), w1.clone());
    line_reaches(&mut admin, &keys.waiters, 1, Duration::from_secs(20)).await;
    let b = spawn(b2.clone(), w2.clone());
    line_reaches(&mut admin, &keys.waiters, 2, Duration::from_secs(20)).await;
    let released_at = Instant::now();
    assert_eq!(b0.release(&k, &t0).await.unwrap(), Release::Released);
    let (_, a_at) = no_hang("w1", a).await.unwrap();
    let (_, b_at) = no_hang("w2", b).await.unwrap();
    assert!(
        a_at - released_at < slow / 2,
        "w1 was not woken by its grant"
    );
    assert!(
        b_at - released_at < slow / 2,
        "w2 was not woken by its grant"
    );

    let mut seen = Vec::new();
    while seen.len() < 3 {
        let msg = no_hang("the lock's messages", messages.next())
            .await
            .unwrap();
        let payload: String = msg.get_payload().unwrap();
        seen.push((msg.get_channel_name().to_owned(), payload));
    }
    let expected = vec![
        (
            b1.grant_channel(&k),
            format!("{} {}", k.encoded(), w1.id.as_hex()),
        ),
        (
            b2.grant_channel(&k),
            format!("{} {}", k.encoded(), w2.id.as_hex()),
        ),
        (b0.release_channel(&k), k.encoded().to_owned()),
    ];
    assert_eq!(seen, expected);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), messages.next())
            .await
            .is_err(),
        "more messages than handovers"
    );
}

/// A dead waiter at the head (one call, never again) is handed the lock and
/// costs the live waiter behind it at most the claim window + slack; a
/// waiter whose lease ended is skipped; and the line's keys are gone
/// within the waiter lease after every waiter stopped calling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_waiter_costs_at_most_the_claim_window() {
    let url = RedisServer::shared().url();
    let (holder, dead, live) = (backend(url), backend(url), backend(url));
    let mut admin = admin(url).await;
    let k = unique("dead");
    let keys = holder.keys(&k);
    let t0 = LockToken::generate();
    let f0 = acquired(holder.try_acquire(&k, &t0, TTL, None).await.unwrap());
    let (td, wd) = (LockToken::generate(), waiter(WAITER_LEASE));
    assert!(is_held(
        &dead
            .try_acquire_queued(&k, &td, TTL, None, &wd)
            .await
            .unwrap()
    ));
    let x = {
        let (live, k) = (live.clone(), k.clone());
        tokio::spawn(async move {
            let (token, w) = (LockToken::generate(), waiter(WAITER_LEASE));
            let got = wait_in_line(&live, &k, &token, &w, WAITER_LEASE / 3).await;
            (token, got)
        })
    };
    line_reaches(&mut admin, &keys.waiters, 2, Duration::from_secs(20)).await;
    let released_at = Instant::now();
    assert_eq!(holder.release(&k, &t0).await.unwrap(), Release::Released);
    assert_eq!(
        get(&mut admin, &keys.lock).await.as_deref(),
        Some(td.as_hex()),
        "handed to the dead waiter first"
    );
    let (tx, (fence, at)) = no_hang("the live waiter", x).await.unwrap();
    let waited = at - released_at;
    assert!(
        waited >= WAITER_LEASE - Duration::from_millis(5),
        "acquired inside the dead waiter's claim window: {waited:?}"
    );
    assert!(
        waited <= WAITER_LEASE + SLACK,
        "the dead waiter cost {waited:?}"
    );
    assert_eq!(fence, f0 + 2, "the lapsed grant skipped one fence");
    assert_eq!(live.release(&k, &tx).await.unwrap(), Release::Released);
    assert_eq!(exists(&mut admin, &[&keys.waiters, &keys.leases]).await, 0);

    // Two waiters that stop calling: their keys expire within the lease.
    let t0 = LockToken::generate();
    acquired(holder.try_acquire(&k, &t0, TTL, None).await.unwrap());
    for _ in 0..2 {
        let (t, w) = (LockToken::generate(), waiter(WAITER_LEASE));
        assert!(is_held(
            &dead
                .try_acquire_queued(&k, &t, TTL, None, &w)
                .await
                .unwrap()
        ));
    }
    let stopped = Instant::now();
    assert_eq!(exists(&mut admin, &[&keys.waiters, &keys.leases]).await, 2);
    no_hang("the line's expiry", async {
        while exists(&mut admin, &[&keys.waiters, &keys.leases]).await != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(stopped.elapsed() <= WAITER_LEASE + SLACK);

    // A lapsed place ahead of a live one is skipped at the release.
    let (te, we) = (LockToken::generate(), waiter(Duration::from_millis(100)));
    let (tf, wf) = (LockToken::generate(), waiter(Duration::from_secs(10)));
    assert!(is_held(
        &dead
            .try_acquire_queued(&k, &te, TTL, None, &we)
            .await
            .unwrap()
    ));
    line_reaches(&mut admin, &keys.waiters, 1, Duration::from_secs(20)).await;
    assert!(is_held(
        &live
            .try_acquire_queued(&k, &tf, TTL, None, &wf)
            .await
            .unwrap()
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(zcard(&mut admin, &keys.waiters).await, 2);
    assert_eq!(holder.release(&k, &t0).await.unwrap(), Release::Released);
    assert_eq!(
        get(&mut admin, &keys.lock).await.as_deref(),
        Some(tf.as_hex()),
        "not handed to the first live waiter"
    );
    acquired(
        live.try_acquire_queued(&k, &tf, TTL, None, &wf)
            .await
            .unwrap(),
    );
    assert_eq!(live.release(&k, &tf).await.unwrap(), Release::Released);
    assert_eq!(exists(&mut admin, &[&keys.waiters, &keys.leases]).await, 0);
}

/// A release by a token that is only in line gives its place back (how a
/// cancelled waiter leaves), and a late copy of its queued call is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_by_a_queued_token_gives_its_place_back() {
    let url = RedisServer::shared().url();
    let b = backend(url);
    let mut admin = admin(url).await;
    let k = unique("give-back");
    let keys = b.keys(&k);
    let t0 = LockToken::generate();
    acquired(b.try_acquire(&k, &t0, TTL, None).await.unwrap());
    let (t1, w1) = (LockToken::generate(), waiter(Duration::from_secs(10)));
    assert!(is_held(
        &b.try_acquire_queued(&k, &t1, TTL, None, &w1).await.unwrap()
    ));
    assert_eq!(exists(&mut admin, &[&keys.waiters, &keys.leases]).await, 2);
    assert_eq!(b.release(&k, &t1).await.unwrap(), Release::NotHeld);
    assert_eq!(exists(&mut admin, &[&keys.waiters, &keys.leases]).await, 0);
    let late = b.try_acquire_queued(&k, &t1, TTL, None, &w1).await;
    assert!(late.is_err(), "a late queued call re-joined: {late:?}");
    assert_eq!(zcard(&mut admin, &keys.waiters).await, 0);
    // Nobody in line: the release frees the lock.
    assert_eq!(b.release(&k, &t0).await.unwrap(), Release::Released);
    assert!(!b.inspect(&k).await.unwrap().held);
}

/// The line deleted while a waiter waits (a failover's stand-in): the
/// waiter still acquires after the next release, within its refresh period
/// and slack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_line_still_lets_the_waiter_acquire() {
    let url = RedisServer::shared().url();
    let (holder, b) = (backend(url), backend(url));
    let mut admin = admin(url).await;
    let k = unique("lost");
    let keys = holder.keys(&k);
    let t0 = LockToken::generate();
    acquired(holder.try_acquire(&k, &t0, TTL, None).await.unwrap());
    let refresh = WAITER_LEASE / 3;
    let task = {
        let (b, k) = (b.clone(), k.clone());
        tokio::spawn(async move {
            let (token, w) = (LockToken::generate(), waiter(WAITER_LEASE));
            wait_in_line(&b, &k, &token, &w, refresh).await
        })
    };
    line_reaches(&mut admin, &keys.waiters, 1, Duration::from_secs(20)).await;
    let () = redis::cmd("DEL")
        .arg(&keys.waiters)
        .arg(&keys.leases)
        .query_async(&mut admin)
        .await
        .unwrap();
    let released_at = Instant::now();
    assert_eq!(holder.release(&k, &t0).await.unwrap(), Release::Released);
    let (_, at) = no_hang("the waiter", task).await.unwrap();
    assert!(
        at - released_at <= refresh + SLACK,
        "{:?}",
        at - released_at
    );
}

/// Queue keys of another type are `WrongType` errors naming the key, for
/// the queued acquire and for the release (which then leaves the lock as
/// it was).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_keys_of_another_type_are_wrongtype() {
    let url = RedisServer::shared().url();
    let b = backend(url);
    let mut admin = admin(url).await;
    let k = unique("wrongtype");
    let keys = b.keys(&k);
    let t0 = LockToken::generate();
    acquired(b.try_acquire(&k, &t0, TTL, None).await.unwrap());
    let () = redis::cmd("SET")
        .arg(&keys.waiters)
        .arg("not a line")
        .query_async(&mut admin)
        .await
        .unwrap();
    let w = waiter(WAITER_LEASE);
    let err = b
        .try_acquire_queued(&k, &LockToken::generate(), TTL, None, &w)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), BackendErrorKind::WrongType, "{err}");
    assert!(err.to_string().contains(&keys.waiters), "{err}");
    let err = b.release(&k, &t0).await.unwrap_err();
    assert_eq!(err.kind(), BackendErrorKind::WrongType, "{err}");
    assert!(
        b.inspect(&k).await.unwrap().held,
        "a failed release freed it"
    );
    let () = redis::cmd("DEL")
        .arg(&keys.waiters)
        .query_async(&mut admin)
        .await
        .unwrap();
    let () = redis::cmd("HSET")
        .arg(&keys.leases)
        .arg("x")
        .arg("y")
        .query_async::<i64>(&mut admin)
        .await
        .map(drop)
        .unwrap();
    let () = redis::cmd("RENAME")
        .arg(&keys.leases)
        .arg(&keys.waiters)
        .query_async(&mut admin)
        .await
        .unwrap();
    let err = b.release(&k, &t0).await.unwrap_err();
    assert_eq!(err.kind(), BackendErrorKind::WrongType, "{err}");
    let () = redis::cmd("DEL")
        .arg(&keys.waiters)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(b.release(&k, &t0).await.unwrap(), Release::Released);
}

/// A release that answers an error has written nothing: the lock is still
/// the holder's and the waiter keeps its place (Redis does not undo a
/// script's writes on error, so every check runs before the first write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_fails_leaves_the_lock_and_the_line_as_they_were() {
    let url = RedisServer::shared().url();
    let b = backend(url);
    let mut admin = admin(url).await;
    for broken in ["fence", "leases"] {
        let k = unique("release-error");
        let keys = b.keys(&k);
        let t0 = LockToken::generate();
        acquired(b.try_acquire(&k, &t0, TTL, None).await.unwrap());
        let (t1, w1) = (LockToken::generate(), waiter(Duration::from_secs(10)));
        assert!(is_held(
            &b.try_acquire_queued(&k, &t1, TTL, None, &w1).await.unwrap()
        ));
        let held_by = get(&mut admin, &keys.lock).await;
        let target = if broken == "fence" {
            &keys.fence
        } else {
            &keys.leases
        };
        let saved: Option<Vec<u8>> = redis::cmd("DUMP")
            .arg(target)
            .query_async(&mut admin)
            .await
            .unwrap();
        let () = redis::cmd("SET")
            .arg(target)
            .arg("not a number")
            .query_async(&mut admin)
            .await
            .unwrap();
        let err = b.release(&k, &t0).await.unwrap_err();
        assert_eq!(err.kind(), BackendErrorKind::WrongType, "{broken}: {err}");
        assert_eq!(
            get(&mut admin, &keys.lock).await,
            held_by,
            "{broken}: the failed release changed the lock key"
        );
        assert_eq!(
            zcard(&mut admin, &keys.waiters).await,
            1,
            "{broken}: the failed release dropped the waiter"
        );
        // Repaired, the release hands over to the waiter as usual.
        let () = redis::cmd("DEL")
            .arg(target)
            .query_async(&mut admin)
            .await
            .unwrap();
        if let Some(dump) = saved {
            let () = redis::cmd("RESTORE")
                .arg(target)
                .arg(0)
                .arg(dump)
                .query_async(&mut admin)
                .await
                .unwrap();
        }
        assert_eq!(b.release(&k, &t0).await.unwrap(), Release::Released);
        acquired(b.try_acquire_queued(&k, &t1, TTL, None, &w1).await.unwrap());
        assert_eq!(b.release(&k, &t1).await.unwrap(), Release::Released);
    }
}

/// More lapsed places at the head of the line than one call drops (16 for
/// a queued call, 256 for a release) never let a later waiter take the lock
/// ahead of the first live one: a queued call that could not reach the end
/// answers `Held` with no time left, so the waiter calls again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_lapsed_places_do_not_let_a_later_waiter_jump_the_line() {
    let url = RedisServer::shared().url();
    let b = backend(url);
    let mut admin = admin(url).await;
    for (lapsed, by_release) in [(17, false), (40, false), (17, true), (300, true)] {
        let k = unique("lapsed");
        let holder = LockToken::generate();
        // Held for the whole setup however slow it is; ended below.
        acquired(b.try_acquire(&k, &holder, TTL, None).await.unwrap());
        for _ in 0..lapsed {
            let w = waiter(Duration::from_millis(50));
            let _ = b
                .try_acquire_queued(&k, &LockToken::generate(), TTL, None, &w)
                .await
                .unwrap();
        }
        let (tx, wx) = (LockToken::generate(), waiter(Duration::from_secs(10)));
        let (ty, wy) = (LockToken::generate(), waiter(Duration::from_secs(10)));
        assert!(is_held(
            &b.try_acquire_queued(&k, &tx, TTL, None, &wx).await.unwrap()
        ));
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(is_held(
            &b.try_acquire_queued(&k, &ty, TTL, None, &wy).await.unwrap()
        ));
        // The 50 ms places lapse.
        tokio::time::sleep(Duration::from_millis(100)).await;
        if by_release {
            assert_eq!(b.release(&k, &holder).await.unwrap(), Release::Released);
        } else {
            // The holder's lease runs out (no release, nothing handed).
            let () = redis::cmd("PEXPIRE")
                .arg(&b.keys(&k).lock)
                .arg(1)
                .query_async::<i64>(&mut admin)
                .await
                .map(drop)
                .unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The later waiter calls first, as often as it is told to.
        for _ in 0..lapsed {
            let y = b.try_acquire_queued(&k, &ty, TTL, None, &wy).await.unwrap();
            assert!(
                is_held(&y),
                "{lapsed} lapsed places (release: {by_release}): the later waiter got {y:?}"
            );
            if y != (Acquire::Held {
                remaining: Some(Duration::ZERO),
            }) {
                break;
            }
        }
        let mut x = None;
        for _ in 0..lapsed {
            let a = b.try_acquire_queued(&k, &tx, TTL, None, &wx).await.unwrap();
            if let Acquire::Acquired { fence } = a {
                x = Some(fence);
                break;
            }
        }
        assert!(
            x.is_some(),
            "{lapsed} lapsed places (release: {by_release}): the first live waiter never acquired"
        );
        assert_eq!(b.release(&k, &tx).await.unwrap(), Release::Released);
        acquired(b.try_acquire_queued(&k, &ty, TTL, None, &wy).await.unwrap());
        assert_eq!(b.release(&k, &ty).await.unwrap(), Release::Released);
    }
}

/// A place that lapsed is gone even while other live places keep the line
/// alive: the waiter calling again joins at the tail (found by
/// differential testing: `ZADD NX` kept the lapsed place's old score, so it
/// got its turn back ahead of waiters who joined meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_place_is_not_given_back() {
    let b = backend(RedisServer::shared().url());
    let k = unique("lapsed-back");
    let long = Duration::from_secs(30);
    let [h, t1, t2, t3] = [(); 4].map(|()| LockToken::generate());
    let w1 = WaiterId::generate();
    let (w2, w3) = (waiter(long), waiter(long));
    acquired(b.try_acquire(&k, &h, long, None).await.unwrap());
    let short = Waiter::new(w1, Duration::from_millis(150));
    assert!(is_held(
        &b.try_acquire_queued(&k, &t1, long, None, &short)
            .await
            .unwrap()
    ));
    // A live waiter behind it keeps the line's keys alive.
    assert!(is_held(
        &b.try_acquire_queued(&k, &t3, long, None, &w3)
            .await
            .unwrap()
    ));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(is_held(
        &b.try_acquire_queued(&k, &t2, long, None, &w2)
            .await
            .unwrap()
    ));
    let again = Waiter::new(w1, long);
    assert!(is_held(
        &b.try_acquire_queued(&k, &t1, long, None, &again)
            .await
            .unwrap()
    ));
    // The line is now t3, t2, t1.
    for (holder, next, w) in [(&h, &t3, &w3), (&t3, &t2, &w2), (&t2, &t1, &again)] {
        assert_eq!(b.release(&k, holder).await.unwrap(), Release::Released);
        let got = b.try_acquire_queued(&k, next, long, None, w).await.unwrap();
        assert!(
            matches!(got, Acquire::Acquired { .. }),
            "the next in line: {got:?}"
        );
    }
    assert_eq!(b.release(&k, &t1).await.unwrap(), Release::Released);
}

/// Once a key's fencing counter is at `MAX_FENCE` nobody can be handed the
/// lock: a release with a waiter in line frees the key (as on the memory
/// backend), and acquisitions fail. Found in review: the release failed
/// with "increment or decrement would overflow" and left the lock held by
/// the releasing token until its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_fence_a_release_hands_over_to_nobody() {
    let memory = distlock_memory::MemoryBackend::new();
    let redis = backend(RedisServer::shared().url());
    for b in [&memory as &dyn LockBackend, &redis as &dyn LockBackend] {
        let k = unique("max-fence");
        let (t1, t2) = (LockToken::generate(), LockToken::generate());
        acquired(b.try_acquire(&k, &t1, TTL, None).await.unwrap());
        assert_eq!(
            b.raise_fence(&k, &t1, distlock_redis::MAX_FENCE)
                .await
                .unwrap(),
            distlock_redis::RaiseFence::Raised {
                fence: distlock_redis::MAX_FENCE
            }
        );
        let w = waiter(Duration::from_secs(10));
        assert!(is_held(
            &b.try_acquire_queued(&k, &t2, TTL, None, &w).await.unwrap()
        ));
        assert_eq!(b.release(&k, &t1).await.unwrap(), Release::Released);
        assert!(
            !b.inspect(&k).await.unwrap().held,
            "freed, handed to nobody"
        );
        let e = b
            .try_acquire_queued(&k, &t2, TTL, None, &w)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), BackendErrorKind::Other, "{e}");
        let e = b.try_acquire(&k, &t2, TTL, None).await.unwrap_err();
        assert_eq!(e.kind(), BackendErrorKind::Other, "{e}");
    }
}

fn calls(info: &str, command: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|v| v.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// The uncontended cycle (plain acquire, release) pays one `PTTL` of a
/// missing key per release (the probe for a line; cheaper for the server
/// than the `ZRANGE` of a missing key) and no other command of the line;
/// with the line off nothing queued runs either. A dedicated server, so
/// the counts are ours.
#[test]
fn the_uncontended_cycle_pays_one_pttl_per_release() {
    // A dedicated server is made and dropped outside the runtime (a
    // container's handle may not be dropped inside an async context).
    let server = RedisServer::start();
    runtime().block_on(async {
        let b = backend(server.url());
        let mut admin = admin(server.url()).await;
        let k = unique("uncontended");
        let cycle = || async {
            let t = LockToken::generate();
            acquired(b.try_acquire(&k, &t, TTL, None).await.unwrap());
            assert_eq!(b.release(&k, &t).await.unwrap(), Release::Released);
        };
        // The first acquire starts the fence from TIME.
        cycle().await;
        let () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut admin)
            .await
            .unwrap();
        for _ in 0..10 {
            cycle().await;
        }
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut admin)
            .await
            .unwrap();
        assert_eq!(calls(&info, "pttl"), 10, "{info}");
        for command in [
            "zrange", "zadd", "zrem", "hset", "hget", "hdel", "time", "exists",
        ] {
            assert_eq!(calls(&info, command), 0, "{command}: {info}");
        }

        let off =
            RedisBackend::from_config(&RedisConfig::new(server.url()).with_waiter_queue(false))
                .unwrap();
        assert!(!off.capabilities().waiter_queue);
        let (t, w) = (LockToken::generate(), waiter(WAITER_LEASE));
        acquired(off.try_acquire(&k, &t, TTL, None).await.unwrap());
        // Without the line the queued call is a plain acquire: no place taken.
        let other = LockToken::generate();
        assert!(is_held(
            &off.try_acquire_queued(&k, &other, TTL, None, &w)
                .await
                .unwrap()
        ));
        let keys = off.keys(&k);
        assert_eq!(exists(&mut admin, &[&keys.waiters, &keys.leases]).await, 0);
        assert_eq!(off.release(&k, &t).await.unwrap(), Release::Released);
    });
}

/// After the subscriber's connection is killed, it subscribes to the grant
/// channel again: a waiter whose calls are 60 s apart is still woken by
/// its grant. A dedicated server (`CLIENT KILL TYPE pubsub` hits every
/// subscriber on it).
#[test]
fn grants_are_heard_again_after_the_subscriber_reconnects() {
    // A dedicated server is made and dropped outside the runtime (a
    // container's handle may not be dropped inside an async context).
    let server = RedisServer::start();
    runtime().block_on(async {
        let url = server.url();
        let (holder, b) = (backend(url), backend(url));
        let mut admin = admin(url).await;
        let k = unique("reconnect");
        let keys = holder.keys(&k);
        let grant = b.grant_channel(&k);
        let numsub = |admin: &mut MultiplexedConnection| {
            let mut admin = admin.clone();
            let grant = grant.clone();
            async move {
                let (_, n): (String, i64) = redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg(&grant)
                    .query_async(&mut admin)
                    .await
                    .unwrap();
                n
            }
        };
        let t0 = LockToken::generate();
        acquired(holder.try_acquire(&k, &t0, TTL, None).await.unwrap());
        let slow = Duration::from_secs(60);
        let task = {
            let (b, k) = (b.clone(), k.clone());
            tokio::spawn(async move {
                let (token, w) = (LockToken::generate(), waiter(Duration::from_secs(120)));
                wait_in_line(&b, &k, &token, &w, slow).await
            })
        };
        line_reaches(&mut admin, &keys.waiters, 1, Duration::from_secs(20)).await;
        assert_eq!(numsub(&mut admin).await, 1);
        assert_eq!(b.subscribed_channels(), 1, "only the grant channel");
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut admin)
            .await
            .unwrap();
        assert_eq!(killed, 1);
        no_hang("the grant channel's new subscription", async {
            while numsub(&mut admin).await != 1 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        let released_at = Instant::now();
        assert_eq!(holder.release(&k, &t0).await.unwrap(), Release::Released);
        let (_, at) = no_hang("the waiter", task).await.unwrap();
        assert!(at - released_at < slow / 2, "the grant was not heard");
    });
}

/// A waiter with a short lease joining behind one with a long lease does
/// not cut the line's expiry short: the long-lease waiter keeps its place
/// (and is handed the lock) after the short lease ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lease_does_not_shorten_the_line() {
    let url = RedisServer::shared().url();
    let b = backend(url);
    let mut admin = admin(url).await;
    let k = unique("short-lease");
    let keys = b.keys(&k);
    let t0 = LockToken::generate();
    acquired(b.try_acquire(&k, &t0, TTL, None).await.unwrap());
    let (tl, wl) = (LockToken::generate(), waiter(Duration::from_secs(10)));
    let (ts, ws) = (LockToken::generate(), waiter(Duration::from_millis(100)));
    assert!(is_held(
        &b.try_acquire_queued(&k, &tl, TTL, None, &wl).await.unwrap()
    ));
    assert!(is_held(
        &b.try_acquire_queued(&k, &ts, TTL, None, &ws).await.unwrap()
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(exists(&mut admin, &[&keys.waiters, &keys.leases]).await, 2);
    assert_eq!(b.release(&k, &t0).await.unwrap(), Release::Released);
    assert_eq!(
        get(&mut admin, &keys.lock).await.as_deref(),
        Some(tl.as_hex())
    );
    acquired(b.try_acquire_queued(&k, &tl, TTL, None, &wl).await.unwrap());
    // The short-lease waiter's place lapsed: the release frees the lock.
    assert_eq!(b.release(&k, &tl).await.unwrap(), Release::Released);
    assert!(!b.inspect(&k).await.unwrap().held);
    assert_eq!(exists(&mut admin, &[&keys.waiters, &keys.leases]).await, 0);
}

/// A waiter cancelled after it was handed the lock (its `release` lands
/// during the claim window) passes it straight on to the next waiter: no
/// claim window is waited out, and the fence counts the second handover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_waiter_that_gives_up_passes_the_lock_on_at_once() {
    let url = RedisServer::shared().url();
    let (holder, a, b) = (backend(url), backend(url), backend(url));
    let mut admin = admin(url).await;
    let k = unique("cancelled-after-grant");
    let keys = holder.keys(&k);
    let t0 = LockToken::generate();
    let f0 = acquired(holder.try_acquire(&k, &t0, TTL, None).await.unwrap());
    let lease = Duration::from_secs(10);
    let (ta, wa) = (LockToken::generate(), waiter(lease));
    let (tb, wb) = (LockToken::generate(), waiter(lease));
    let mut watch_b = b.watch_queued(&k, &wb).await.unwrap().unwrap();
    assert!(is_held(
        &a.try_acquire_queued(&k, &ta, TTL, None, &wa).await.unwrap()
    ));
    assert!(is_held(
        &b.try_acquire_queued(&k, &tb, TTL, None, &wb).await.unwrap()
    ));
    assert_eq!(holder.release(&k, &t0).await.unwrap(), Release::Released);
    assert_eq!(
        get(&mut admin, &keys.lock).await.as_deref(),
        Some(ta.as_hex())
    );
    // A gives up before claiming: its release hands the lock on to B.
    assert_eq!(a.release(&k, &ta).await.unwrap(), Release::Released);
    assert_eq!(
        get(&mut admin, &keys.lock).await.as_deref(),
        Some(tb.as_hex())
    );
    no_hang("the grant to B", watch_b.released()).await;
    let fb = acquired(b.try_acquire_queued(&k, &tb, TTL, None, &wb).await.unwrap());
    assert_eq!(fb, f0 + 2, "one fence per handover");
    // A late copy of A's queued call cannot take it back or re-join.
    let late = a.try_acquire_queued(&k, &ta, TTL, None, &wa).await.unwrap();
    assert!(is_held(&late), "{late:?}");
    assert_eq!(b.release(&k, &tb).await.unwrap(), Release::Released);
    // A's late copy re-joined as an orphan place (a plain release ran
    // while it held the handover, so no tombstone); the release hands the
    // lock to it, and the lapse frees it later. The `Locker` gives such a
    // token back with `give_back` instead, which refuses the late copy
    // (next test).
    assert_eq!(
        get(&mut admin, &keys.lock).await.as_deref(),
        Some(ta.as_hex())
    );
}

/// A late copy of a call whose token was given back
/// (`LockBackend::give_back`) is refused, whether the token held the lock
/// when it was given back (taken, or handed over and not yet claimed) or
/// not; and a plain release of a held lock still leaves no tombstone (the
/// uncontended path pays nothing). Found in review: the `Locker` used to
/// give back with a plain release, so a handover given back before its
/// claim, or a guard released after one of its wait's calls had timed out,
/// left no tombstone, and the late copy took the free lock for a whole TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_given_back_token_refuses_its_late_copies() {
    let url = RedisServer::shared().url();
    let (holder, a) = (backend(url), backend(url));
    let mut admin = admin(url).await;
    // Refused as STALE, and marked so that a waiting `lock()` goes on with
    // a new token (`BackendError::needs_new_token`).
    let stale = |r: &Result<Acquire, distlock_redis::BackendError>| matches!(r, Err(e) if e.to_string().contains("STALE") && e.needs_new_token() && e.is_transient());

    // Taken by a queued call, then given back: its copies are refused.
    let k = unique("give-back-held");
    let keys = a.keys(&k);
    let (ta, wa) = (LockToken::generate(), waiter(WAITER_LEASE));
    acquired(a.try_acquire_queued(&k, &ta, TTL, None, &wa).await.unwrap());
    assert_eq!(a.give_back(&k, &ta).await.unwrap(), Release::Released);
    assert_eq!(exists(&mut admin, &[&keys.tombstone(&ta)]).await, 1);
    let late = a.try_acquire_queued(&k, &ta, TTL, None, &wa).await;
    assert!(stale(&late), "a late queued copy: {late:?}");
    let late = a.try_acquire(&k, &ta, TTL, None).await;
    assert!(stale(&late), "a late plain copy: {late:?}");
    assert_eq!(exists(&mut admin, &[&keys.lock, &keys.waiters]).await, 0);

    // Handed over by a release, given back before the claim: the claim's
    // late copy is refused, and the lock is free (nobody was in line).
    let k = unique("give-back-handover");
    let keys = holder.keys(&k);
    let t0 = LockToken::generate();
    acquired(holder.try_acquire(&k, &t0, TTL, None).await.unwrap());
    let (ta, wa) = (LockToken::generate(), waiter(WAITER_LEASE));
    assert!(is_held(
        &a.try_acquire_queued(&k, &ta, TTL, None, &wa).await.unwrap()
    ));
    assert_eq!(holder.release(&k, &t0).await.unwrap(), Release::Released);
    assert_eq!(
        get(&mut admin, &keys.lock).await.as_deref(),
        Some(ta.as_hex()),
        "handed over to A"
    );
    assert_eq!(a.give_back(&k, &ta).await.unwrap(), Release::Released);
    let late = a.try_acquire_queued(&k, &ta, TTL, None, &wa).await;
    assert!(stale(&late), "the claim's late copy: {late:?}");
    assert_eq!(exists(&mut admin, &[&keys.lock, &keys.waiters]).await, 0);

    // A plain release of a held lock leaves no tombstone.
    let k = unique("plain-release");
    let keys = a.keys(&k);
    let t = LockToken::generate();
    acquired(a.try_acquire(&k, &t, TTL, None).await.unwrap());
    assert_eq!(a.release(&k, &t).await.unwrap(), Release::Released);
    assert_eq!(exists(&mut admin, &[&keys.tombstone(&t)]).await, 0);
}
