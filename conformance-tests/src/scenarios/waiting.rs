//! Waiting in `lock()`: timeouts, hand-over, cancellation, abandonment.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use distlock::{
    Acquire, LockBackend, LockError, LockKey, LockOptions, LockToken, Locker, Release, Waiter,
    WaiterId, WAITER_LEASE,
};
use tokio::time::Instant;

use crate::history::{check_with, CheckOptions, Hold, HolderId, Stamp};

use crate::counting::Counted;
use crate::stalling::Stalls;
use crate::support::{
    assert_within, client, drop_bound, free_within, is_held, locker, short_ttl, skipped_for,
};
use crate::wrapper::Wrapped;
use crate::{unique_name, Harness};

/// Options for a waiter: a lease of 10 s and quick polling.
fn waiting(wait: Duration) -> LockOptions {
    LockOptions::default()
        .with_ttl(Duration::from_secs(10))
        .with_wait_timeout(wait)
        .with_retry(Duration::from_millis(5), Duration::from_millis(50))
}

/// `lock()` on a held name gives up with `TimedOut` after the wait timeout:
/// not much before it, and at most the slack after it.
pub async fn lock_times_out_while_held<H: Harness>(h: &H) {
    let holder = locker(h).await;
    let waiter = locker(h).await;
    let name = unique_name("timeout");
    let guard = holder.try_lock(&name).await.unwrap().expect("free");
    let wait = Duration::from_millis(300);

    let start = Instant::now();
    let result = waiter.lock_with(&name, |_| waiting(wait)).await;
    let took = start.elapsed();
    match result {
        Err(LockError::TimedOut { waited, .. }) => {
            assert!(waited <= took, "reported {waited:?}, measured {took:?}");
        }
        other => panic!("lock() of a held name must time out: {other:?}"),
    }
    assert!(took >= wait, "gave up after {took:?}, before {wait:?}");
    assert_within(
        "TimedOut after the wait timeout",
        took,
        wait + h.timing_slack(),
    );
    assert!(is_held(&waiter, &name).await, "the holder is unaffected");
    assert_eq!(guard.release().await.unwrap(), Release::Released);
}

/// A zero wait timeout makes exactly one attempt: it times out at once on
/// a held name and acquires a free one.
pub async fn zero_wait_timeout_is_one_attempt<H: Harness>(h: &H) {
    let holder = locker(h).await;
    let counting = Counted::new(client(h).await);
    let l = Locker::new(counting.backend.clone());
    let held = unique_name("zero-wait-held");
    let free = unique_name("zero-wait-free");
    let guard = holder.try_lock(&held).await.unwrap().expect("free");
    let once = waiting(Duration::ZERO);

    let start = Instant::now();
    let result = l.lock_with(&held, |_| once.clone()).await;
    assert!(
        matches!(result, Err(LockError::TimedOut { .. })),
        "zero wait on a held name: {result:?}"
    );
    assert_within("a single attempt", start.elapsed(), h.timing_slack());
    assert_eq!(counting.acquires(), 1, "exactly one attempt");

    let got = l
        .lock_with(&free, |_| once.clone())
        .await
        .expect("zero wait, free name");
    assert_eq!(counting.acquires(), 2, "exactly one attempt");
    assert_eq!(got.release().await.unwrap(), Release::Released);
    assert_eq!(guard.release().await.unwrap(), Release::Released);
}

/// A waiting `lock()` acquires soon after the holder releases.
pub async fn lock_succeeds_after_release<H: Harness>(h: &H) {
    let holder = locker(h).await;
    let waiter = locker(h).await;
    let name = unique_name("hand-over");
    let guard = holder.try_lock(&name).await.unwrap().expect("free");

    let task = {
        let (waiter, name) = (waiter.clone(), name.clone());
        tokio::spawn(async move {
            let guard = waiter
                .lock_with(&name, |_| waiting(Duration::from_secs(10)))
                .await;
            (guard, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !task.is_finished(),
        "the waiter must wait while the lock is held"
    );
    let released_at = Instant::now();
    assert_eq!(guard.release().await.unwrap(), Release::Released);
    let (got, acquired_at) = task.await.unwrap();
    let got = got.expect("the waiter acquires after the release");
    assert_within(
        "hand-over after release",
        acquired_at.saturating_duration_since(released_at),
        h.timing_slack(),
    );
    assert_eq!(got.release().await.unwrap(), Release::Released);
}

/// Dropping a pending `lock()` leaves nothing behind: no lock held, no
/// waiter registered, and the name can be taken at once afterwards. Also
/// cancels `lock()` of a free name at many points in flight.
pub async fn cancelled_lock_leaves_nothing_behind<H: Harness>(h: &H) {
    let holder = locker(h).await;
    let client = client(h).await;
    let waiter = Locker::new(client.clone());
    let other = locker(h).await;
    let name = unique_name("cancel");
    let guard = holder.try_lock(&name).await.unwrap().expect("free");

    let long_wait = waiting(Duration::from_secs(10));
    let pending = waiter.lock_with(&name, |_| long_wait.clone());
    let cancelled = tokio::time::timeout(Duration::from_millis(300), pending).await;
    assert!(
        cancelled.is_err(),
        "the lock is held, lock() must still wait"
    );
    assert_eq!(
        waiters(h, &client),
        0,
        "a cancelled lock() left waiters registered"
    );
    // On a backend with a line of waiters, the cancelled call's place is
    // given back in the background: without this, the release below could
    // hand the lock to it until that background release lands.
    waiter.flush().await;
    assert_eq!(guard.release().await.unwrap(), Release::Released);
    assert!(
        !is_held(&other, &name).await,
        "nothing held after cancelling"
    );
    let taken = other.try_lock(&name).await.unwrap();
    assert!(taken.is_some(), "another client takes it right away");
    drop(taken);
    let again = waiter
        .lock_with(&name, |_| waiting(drop_bound(h)))
        .await
        .expect("the cancelled waiter's locker is not stuck");
    assert_eq!(again.release().await.unwrap(), Release::Released);

    // Cancel at many points of an acquisition of a free name, also after
    // the backend took the lock but before its (slow) reply arrived.
    let free = unique_name("cancel-in-flight");
    let slow = Locker::new(Counted::with_delay(client.clone(), Duration::from_millis(1)).backend);
    cancel_at_many_points(&waiter, &free, &long_wait).await;
    cancel_at_many_points(&slow, &free, &long_wait).await;
    let from = Instant::now();
    let freed = free_within(&other, &free, from, drop_bound(h)).await;
    assert!(
        freed.is_some(),
        "a cancelled acquisition left the lock held"
    );
    assert_eq!(
        waiters(h, &client),
        0,
        "cancelled lock() calls left waiters registered"
    );
}

/// The waiters `client` has registered, by [`Harness::registered_waiters`].
/// A backend without release notifications registers none; one with them
/// must answer the hook (a missing hook fails, it does not skip the check).
fn waiters<H: Harness>(h: &H, client: &H::Backend) -> usize {
    match h.registered_waiters(client) {
        Some(n) => n,
        None if !client.capabilities().release_notify => 0,
        None => panic!(
            "the backend claims release_notify, so Harness::registered_waiters must \
             report its registered waiters (ReleaseHub::watcher_count); it returned None"
        ),
    }
}

/// Runs `lock()` of `name` a dozen times, cancelling it after 0, 150,
/// 300, … µs, and releases what was acquired in time.
async fn cancel_at_many_points<B: LockBackend>(l: &Locker<B>, name: &str, opts: &LockOptions) {
    for step in 0..12u64 {
        let attempt = l.lock_with(name, |_| opts.clone());
        let limit = Duration::from_micros(step * 150);
        if let Ok(got) = tokio::time::timeout(limit, attempt).await {
            let got = got.expect("a free name");
            assert_eq!(
                got.release().await.unwrap(),
                Release::Released,
                "a lock() that completed before its cancellation: its guard's release \
                 found the lock no longer held by it"
            );
        }
    }
}

/// With release notifications, a blocked `lock()` returns within the slack
/// of the release (at once on a paused clock), although its retry delay is
/// five seconds.
pub async fn waiter_woken_by_release_notification<H: Harness>(h: &H) {
    let holder = locker(h).await;
    if skipped_for(
        "waiter_woken_by_release_notification",
        holder.backend().capabilities(),
    ) {
        return;
    }
    let waiter = locker(h).await;
    let name = unique_name("notify");
    let guard = holder.try_lock(&name).await.unwrap().expect("free");
    let slow_polls =
        waiting(Duration::from_secs(20)).with_retry(Duration::from_secs(5), Duration::from_secs(5));

    let task = {
        let (waiter, name) = (waiter.clone(), name.clone());
        tokio::spawn(async move {
            let guard = waiter.lock_with(&name, |_| slow_polls.clone()).await;
            (guard, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !task.is_finished(),
        "the waiter must wait while the lock is held"
    );
    let released_at = Instant::now();
    assert_eq!(guard.release().await.unwrap(), Release::Released);
    let (got, acquired_at) = task.await.unwrap();
    let got = got.expect("the waiter acquires after the release");
    let bound = if H::PAUSED_CLOCK {
        Duration::from_millis(1)
    } else {
        h.timing_slack()
    };
    assert_within(
        "notified hand-over",
        acquired_at.saturating_duration_since(released_at),
        bound,
    );
    assert_eq!(got.release().await.unwrap(), Release::Released);
}

/// A waiter acquires a lock whose holder vanished without releasing once
/// the TTL runs out, and not before.
pub async fn waiter_takes_over_abandoned_lock<H: Harness>(h: &H) {
    let holder = locker(h).await;
    let waiter = locker(h).await;
    let name = unique_name("abandoned");
    let (t, slack) = (short_ttl(h), h.timing_slack());
    let before = Instant::now();
    let guard = holder
        .try_lock_with(&name, |_| crate::support::ttl(t))
        .await
        .unwrap()
        .expect("free");
    // The holder crashes: no release, no drop.
    std::mem::forget(guard);

    let got = waiter
        .lock_with(&name, |_| waiting(Duration::from_secs(10)))
        .await
        .expect("the waiter gets the abandoned lock");
    let took = before.elapsed();
    assert!(
        took + slack / 2 >= t,
        "acquired {took:?} after the holder, before its TTL {t:?}"
    );
    assert_within("take-over after the TTL", took, t + slack);
    assert_eq!(got.release().await.unwrap(), Release::Released);
}

/// The wait deadline bounds the whole `lock()` call (issue 10, kind 2):
/// with the name held elsewhere, a waiter whose acquire attempts stall for
/// longer than its wait (as during a server stall), or whose release
/// subscription stalls, gets `TimedOut` at the deadline plus the slack, not
/// when the stalled call returns. Built from a wrapper around the harness's
/// client, so every backend runs it.
pub async fn wait_deadline_bounds_stalled_backend_calls<H: Harness>(h: &H) {
    let holder = locker(h).await;
    let name = unique_name("stalled-wait");
    let guard = holder.try_lock(&name).await.unwrap().expect("free");
    let wait = Duration::from_millis(300);
    let stall = Duration::from_secs(3).max(h.timing_slack() * 4);
    let attempts = Stalls {
        before_acquire: stall,
        ..Stalls::default()
    };
    let attempts = Wrapped::new(client(h).await, attempts);
    let subscription = Stalls {
        before_watch: stall,
        ..Stalls::default()
    };
    let subscription = Wrapped::new(client(h).await, subscription);
    for (what, backend) in [("acquire", attempts), ("subscription", subscription)] {
        let waiter = Locker::new(backend);
        let start = Instant::now();
        let result = waiter.lock_with(&name, |_| waiting(wait)).await;
        let took = start.elapsed();
        assert!(
            matches!(result, Err(LockError::TimedOut { .. })),
            "a stalled {what} with a {wait:?} wait: {result:?}"
        );
        assert!(took >= wait, "{what}: gave up after {took:?}");
        assert_within(
            &format!("TimedOut with a stalled {what}"),
            took,
            wait + h.timing_slack(),
        );
    }
    assert!(is_held(&holder, &name).await, "the holder is unaffected");
    assert_eq!(guard.release().await.unwrap(), Release::Released);
}

/// An acquisition whose reply is still on its way at the wait deadline is
/// given back: the caller gets `TimedOut` at the deadline, and once the
/// background releases are flushed nobody holds the lock.
pub async fn acquisition_cut_at_wait_deadline_is_given_back<H: Harness>(h: &H) {
    let observer = locker(h).await;
    let name = unique_name("cut-acquire");
    let wait = Duration::from_millis(300);
    let slow = Stalls {
        after_acquire: Duration::from_secs(3).max(h.timing_slack() * 4),
        ..Stalls::default()
    };
    let slow = Wrapped::new(client(h).await, slow);
    let waiter = Locker::new(slow);
    let start = Instant::now();
    let result = waiter.lock_with(&name, |_| waiting(wait)).await;
    let took = start.elapsed();
    assert!(
        matches!(result, Err(LockError::TimedOut { .. })),
        "a reply stuck past the wait deadline: {result:?}"
    );
    assert_within("TimedOut at the deadline", took, wait + h.timing_slack());
    tokio::time::timeout(Duration::from_secs(30), waiter.flush())
        .await
        .expect("flush returns");
    assert!(
        !is_held(&observer, &name).await,
        "the acquisition cut at the deadline was not given back"
    );
}

/// Waiters in a backend's line ([`Capabilities::waiter_queue`]) make one
/// acquisition attempt per release: six lockers on their own clients loop
/// lock (a 30 s wait), a 5 ms hold, release, a 1 ms pause, for a second.
/// Each acquisition costs at most 2.5 acquire calls (the join and the
/// claim; about six without a line) and 1.5 `Held` answers (about five
/// without), every locker gets the lock, and the holds never overlap (with
/// fencing tokens in order).
///
/// A backend without the capability is checked against the trait's
/// default contract instead: `try_acquire_queued` answers as
/// `try_acquire`, and `watch_queued` gives a watch exactly when the
/// backend claims `release_notify`.
///
/// [`Capabilities::waiter_queue`]: distlock::Capabilities::waiter_queue
pub async fn queued_waiters_make_one_attempt_per_release<H: Harness>(h: &H) {
    let probe = client(h).await;
    let caps = probe.capabilities();
    if !caps.waiter_queue {
        default_queue_contract(&probe).await;
        return;
    }
    const LOCKERS: usize = 6;
    let name = unique_name("queued");
    let period = Duration::from_secs(1);
    let opts = LockOptions::default()
        .with_ttl(Duration::from_secs(10))
        .with_wait_timeout(Duration::from_secs(30) + h.timing_slack() * 20)
        .with_retry(Duration::from_millis(2), Duration::from_millis(20));
    let counted = Counted::new(client(h).await);
    let base = Instant::now();
    // Stamps on tokio's clock (paused or not), offset from the start.
    let stamp = move |at: Instant| {
        let since =
            u64::try_from(at.saturating_duration_since(base).as_nanos()).unwrap_or(u64::MAX);
        Stamp::from_nanos(1_000_000_000u64.saturating_add(since))
    };
    let holds = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..LOCKERS {
        let backend = if i == 0 {
            counted.backend.clone()
        } else {
            counted.also(client(h).await)
        };
        let (l, name, opts, holds) = (
            Locker::new(backend),
            name.clone(),
            opts.clone(),
            holds.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut acquired = 0usize;
            while acquired == 0 || base.elapsed() < period {
                let asked = Instant::now();
                let guard = l.lock_with(&name, |_| opts.clone()).await.expect("lock");
                let mut hold = Hold {
                    name: name.clone(),
                    holder: HolderId {
                        process: 0,
                        task: i as u32,
                    },
                    fence: guard.fence(),
                    acquire_sent: stamp(asked),
                    acquired: stamp(Instant::now()),
                    valid_until: stamp(guard.valid_until()),
                    release_called: None,
                };
                acquired += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
                hold.valid_until = stamp(guard.valid_until());
                hold.release_called = Some(stamp(Instant::now()));
                holds.lock().unwrap().push(hold);
                assert_eq!(guard.release().await.unwrap(), Release::Released);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            acquired
        }));
    }
    let mut counts = Vec::new();
    for task in tasks {
        counts.push(task.await.unwrap());
    }
    assert!(
        counts.iter().all(|&n| n > 0),
        "a locker starved: acquisitions per locker {counts:?}"
    );
    let holds = holds.lock().unwrap().clone();
    let report = check_with(&holds, CheckOptions::default().with_fences(caps.fencing));
    assert!(report.is_clean(), "{report}");
    let a: usize = counts.iter().sum();
    let (n, held) = (counted.acquires(), counted.held());
    let (per_acq, held_per_acq) = (n as f64 / a as f64, held as f64 / a as f64);
    assert!(
        per_acq <= 2.5,
        "{n} acquire calls for {a} acquisitions ({per_acq:.2} each; the line allows 2.5)"
    );
    assert!(
        held_per_acq <= 1.5,
        "{held} Held answers for {a} acquisitions ({held_per_acq:.2} each; the line allows 1.5)"
    );
}

/// The trait's defaults, for a backend without a line of waiters.
async fn default_queue_contract<B: LockBackend>(client: &B) {
    let key = LockKey::new("", unique_name("queued-default")).unwrap();
    let (a, b) = (LockToken::generate(), LockToken::generate());
    let waiter = Waiter::new(WaiterId::generate(), WAITER_LEASE);
    let ttl = Duration::from_secs(10);
    let got = client
        .try_acquire_queued(&key, &a, ttl, None, &waiter)
        .await
        .unwrap();
    assert!(
        matches!(got, Acquire::Acquired { .. }),
        "try_acquire_queued of a free key without waiter_queue: {got:?}"
    );
    let again = client
        .try_acquire_queued(&key, &b, ttl, None, &waiter)
        .await
        .unwrap();
    assert!(
        matches!(again, Acquire::Held { .. }),
        "try_acquire_queued of a held key without waiter_queue: {again:?}"
    );
    let watch = client.watch_queued(&key, &waiter).await.unwrap();
    assert_eq!(
        watch.is_some(),
        client.capabilities().release_notify,
        "watch_queued without waiter_queue answers as watch"
    );
    drop(watch);
    assert_eq!(client.release(&key, &a).await.unwrap(), Release::Released);
    // No line: the released key is free for anyone, not handed over.
    let taken = client.try_acquire(&key, &b, ttl, None).await.unwrap();
    assert!(
        matches!(taken, Acquire::Acquired { .. }),
        "a release without waiter_queue frees the key: {taken:?}"
    );
    assert_eq!(client.release(&key, &b).await.unwrap(), Release::Released);
}
