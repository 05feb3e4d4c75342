//! The Redis line of waiters (issue 15) through `Locker::lock`, design
//! `docs/design/waiter-queue.md` §7 "Redis" items 1, 2 and 7: a waiter
//! SIGKILLed while in line (the test binary re-runs itself as the child
//! that waits), a `lock()` future dropped at a dozen points around the
//! handover, and a history-checked stress across processes in which a
//! quarter of the waits are cut short. The trait-level tests of the line
//! are in `waiter_queue.rs`.
//!
//! Real `redis-server`s. The bounds asserted are the design's correctness
//! bounds (§1: claim window C = waiter lease L = `WAITER_LEASE` = 500 ms)
//! plus generous slack for 2 shared cores; nothing here measures speed.
//! The tests of this binary run one at a time (their bounds are timing
//! bounds, and the stress's four processes would load the cores under the
//! others).

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use distlock_conformance::history::{check, Hold, HolderId, Stamp};
use distlock_conformance::processes::{child_process, ChildSummary, ProcessStress, Record};
use distlock_redis::redis::{self, aio::MultiplexedConnection};
use distlock_redis::testkit::RedisServer;

mod line_support;
use distlock_redis::{
    LockError, LockGuard, LockKey, LockOptions, LockToken, Locker, RedisBackend, Release,
    WAITER_LEASE,
};
use line_support::{admin, exists, get, line_reaches, no_hang};
use tokio::time::Instant;

/// The lease of every lock taken here: far longer than any step, so a
/// lock never changes hands by expiry except where a test means it to.
const TTL: Duration = Duration::from_secs(30);
/// Generous slack on top of a bound (2 shared cores, a CI loop beside us).
const SLACK: Duration = Duration::from_millis(700);
/// The claim window of a handover (design §1: C = L).
const CLAIM_WINDOW: Duration = WAITER_LEASE;
/// The Locker prefix of the SIGKILL and cancel tests.
const PREFIX: &str = "wql";

/// In the SIGKILL child: the Redis URL, and the lock name to wait for.
const SIGKILL_URL_ENV: &str = "DISTLOCK_WQL_SIGKILL_URL";
const SIGKILL_NAME_ENV: &str = "DISTLOCK_WQL_SIGKILL_NAME";
/// In a stress child: the Redis URL, and the run id (prefix, counters).
const STRESS_URL_ENV: &str = "DISTLOCK_WQL_STRESS_URL";
const STRESS_RUN_ENV: &str = "DISTLOCK_WQL_STRESS_RUN";

/// One test of this binary at a time (see the module docs).
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Runs `f` on a fresh runtime, after the other tests of this binary.
fn run<F: std::future::Future>(f: F) -> F::Output {
    let _serial = serial();
    runtime().block_on(f)
}

fn unique(case: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{case}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A Locker on its own backend (own pool and subscriber), as another
/// process would have.
fn locker(url: &str, prefix: &str) -> Locker<RedisBackend> {
    Locker::new(RedisBackend::from_url(url).expect("backend"))
        .with_prefix(prefix)
        .expect("prefix")
}

/// A wait that uses the line (TTL ≥ `WAITER_LEASE`, non-zero wait).
fn waiting(o: LockOptions, wait: Duration) -> LockOptions {
    o.with_ttl(TTL).with_wait_timeout(wait)
}

/// The tokens in line, first first.
async fn line(admin: &mut MultiplexedConnection, waiters: &str) -> Vec<String> {
    redis::cmd("ZRANGE")
        .arg(waiters)
        .arg(0)
        .arg(-1)
        .query_async(admin)
        .await
        .unwrap()
}

/// Waits until `keys` are all gone; returns when that was seen.
async fn gone(admin: &mut MultiplexedConnection, keys: &[&str]) -> Instant {
    no_hang("the keys' expiry", async {
        while exists(admin, keys).await != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    Instant::now()
}

/// The Redis keys of `name` under `locker`'s prefix.
fn keys_of(locker: &Locker<RedisBackend>, name: &str) -> (LockKey, distlock_redis::LockKeys) {
    let key = locker.key(name).unwrap();
    let keys = locker.backend().keys(&key);
    (key, keys)
}

// ---------------------------------------------------------------------
// 1. A waiter SIGKILLed while in line.
// ---------------------------------------------------------------------

/// The SIGKILL child: waits for the lock named in its environment until
/// the parent kills it. Does nothing when run as an ordinary test.
#[test]
fn sigkill_child() {
    let (Ok(url), Ok(name)) = (
        std::env::var(SIGKILL_URL_ENV),
        std::env::var(SIGKILL_NAME_ENV),
    ) else {
        return;
    };
    runtime().block_on(async {
        let l = locker(&url, PREFIX);
        let got = l
            .lock_with(&name, |o| waiting(o, Duration::from_secs(60)))
            .await;
        // Not reached while the parent works: it holds the lock and kills
        // this process while it waits.
        eprintln!(
            "sigkill_child: lock() returned {:?}",
            got.map(|g| g.fence())
        );
        std::process::exit(3);
    });
}

/// A child process, killed (SIGKILL) and reaped when dropped.
struct KillOnDrop(Child);

impl KillOnDrop {
    /// SIGKILL (`Child::kill` on Unix), then waits for the exit.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_waiting_child(url: &str, name: &str) -> KillOnDrop {
    let exe = std::env::current_exe().expect("the test binary");
    let child = Command::new(exe)
        .args([
            "sigkill_child",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(SIGKILL_URL_ENV, url)
        .env(SIGKILL_NAME_ENV, name)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting the waiting child");
    KillOnDrop(child)
}

/// What one SIGKILL run saw.
struct Killed {
    /// The lock key's value right after the holder's release: the dead
    /// waiter's token (its claim window), or X's (handed to X directly).
    handed_to_dead: bool,
    /// From the release call to X's guard.
    x_waited: Duration,
}

/// The SIGKILL scenario (design §7 Redis 1): the parent holds the lock; a
/// child process's `Locker` waits for it (`ZCARD :waiters == 1`); the
/// parent's own waiter X lines up behind it (`== 2`); the child is
/// SIGKILLed, and `release_after` later the holder releases. Asserts what
/// holds whichever way the release went (X's fence, no barging through a
/// dead waiter's window, the line gone after X's release) and returns the
/// rest for the caller.
async fn sigkilled_waiter(release_after: Duration) -> Killed {
    let url = RedisServer::shared().url().to_owned();
    let name = unique("sigkill");
    let (holder, x) = (locker(&url, PREFIX), locker(&url, PREFIX));
    let (_, keys) = keys_of(&holder, &name);
    let mut admin = admin(&url).await;
    let guard = holder
        .try_lock_with(&name, |o| o.with_ttl(TTL))
        .await
        .unwrap()
        .expect("a fresh name is free");
    let f0 = guard.fence();

    let mut child = spawn_waiting_child(&url, &name);
    // The child starts a process, a runtime and a pool: allow it time.
    line_reaches(&mut admin, &keys.waiters, 1, Duration::from_secs(60)).await;
    let x_task = {
        let (x, name) = (x.clone(), name.clone());
        tokio::spawn(async move {
            let got = x
                .lock_with(&name, |o| waiting(o, Duration::from_secs(30)))
                .await;
            (got, Instant::now())
        })
    };
    line_reaches(&mut admin, &keys.waiters, 2, Duration::from_secs(20)).await;
    let order = line(&mut admin, &keys.waiters).await;
    let (dead, x_token) = (order[0].clone(), order[1].clone());

    child.kill();
    let killed_at = Instant::now();
    tokio::time::sleep_until(killed_at + release_after).await;
    let released_at = Instant::now();
    assert_eq!(guard.release().await.unwrap(), Release::Released);
    // The lock key and its remaining lease, read together right after.
    let read_sent = Instant::now();
    let (value, pttl): (Option<String>, i64) = redis::pipe()
        .atomic()
        .cmd("GET")
        .arg(&keys.lock)
        .cmd("PTTL")
        .arg(&keys.lock)
        .query_async(&mut admin)
        .await
        .unwrap();
    let handed_to_dead = match value.as_deref() {
        Some(v) if v == dead => true,
        Some(v) if v == x_token => false,
        // Freed: nobody live in line (X's place lapsed too, under a long
        // stall); X takes it with the next fence, checked below.
        None => false,
        Some(other) => panic!("the lock went to neither waiter in line: {other}"),
    };

    let (got, x_at) = no_hang("X", x_task).await.unwrap();
    let x_guard: LockGuard = got.expect("X acquires after the release");
    let x_waited = x_at - released_at;
    if handed_to_dead {
        // The handover to the dead waiter counted one fence, X's take of
        // the lapsed window the next (a lapsed grant skips one).
        assert_eq!(
            x_guard.fence(),
            f0 + 2,
            "fences: holder {f0}, X {x_guard:?}"
        );
        // Nobody barged through the dead waiter's claim window: X's take
        // came after the window's end (its expiry is at or after the
        // read's send time + PTTL, ±1 ms of the server's rounding; 5 ms
        // of clock slack). Broken by a queued call that takes a key handed
        // to another token before its window ends.
        let window_end = read_sent + Duration::from_millis(pttl.max(0) as u64);
        assert!(
            x_at + Duration::from_millis(5) >= window_end,
            "X acquired {:?} before the dead waiter's claim window ended",
            window_end - x_at
        );
        assert!(pttl as u128 <= CLAIM_WINDOW.as_millis(), "window {pttl} ms");
    } else {
        // The dead place was skipped: one handover, to X.
        assert_eq!(
            x_guard.fence(),
            f0 + 1,
            "fences: holder {f0}, X {x_guard:?}"
        );
    }
    assert_eq!(x_guard.release().await.unwrap(), Release::Released);
    let x_released = Instant::now();
    // Nothing of the line is left within the waiter lease + slack after
    // X's release (design §1: places lapse within L). Broken by a join
    // that does not set the keys' expiry, or a claim or handover that
    // leaves the place in line.
    let at = gone(&mut admin, &[&keys.waiters, &keys.leases]).await;
    assert!(
        at - x_released <= WAITER_LEASE + SLACK,
        "the line's keys lasted {:?} after X's release",
        at - x_released
    );
    assert!(
        !holder.inspect(&name).await.unwrap().held,
        "X's release left the lock held"
    );
    Killed {
        handed_to_dead,
        x_waited,
    }
}

/// A waiter SIGKILLed while in line, the holder releasing at once: the
/// release hands the lock to the dead waiter (its place is still live),
/// and X behind it acquires once that claim window lapses. Bound (design
/// §1, a dead waiter at the head): C + 1 ms + 1 round trip after the
/// release; asserted as C + SLACK = 1.2 s. X's take must not come before
/// the window's end, and its fence is the holder's + 2.
///
/// If the parent is stalled long enough between the kill and the release
/// (≥ L − R ≈ 333 ms) the dead place lapses first and the release hands
/// straight to X; that run did not test the window, so it is repeated (up
/// to three runs, one must go through the window).
///
/// What breaks it: a handover that never lapses (no `PX` on the window:
/// X hangs), a queued call that barges into another token's window, a
/// Locker that does not call again when the window can have ended (X
/// would wait for its next refresh at the earliest, or for the holder's
/// 30 s lease), line keys without expiry.
#[test]
fn a_sigkilled_waiter_costs_at_most_its_claim_window() {
    run(async {
        let mut through_window = false;
        for attempt in 1..=3 {
            let k = sigkilled_waiter(Duration::ZERO).await;
            println!(
                "attempt {attempt}: handed to the dead waiter: {}, X waited {:?} after the release",
                k.handed_to_dead, k.x_waited
            );
            assert!(
                k.x_waited <= CLAIM_WINDOW + SLACK,
                "X waited {:?} after the release (bound C + slack = {:?})",
                k.x_waited,
                CLAIM_WINDOW + SLACK
            );
            if k.handed_to_dead {
                through_window = true;
                break;
            }
        }
        assert!(
            through_window,
            "no run handed the lock to the dead waiter (its place always lapsed first)"
        );
    });
}

/// Variant: the holder releases L + 100 ms after the SIGKILL, when the
/// dead waiter's place has lapsed (its last call was at or before the
/// kill). The release skips it and hands the lock straight to X (one
/// fence), which acquires within SLACK of the release: the dead waiter
/// costs nothing. Broken by a release that hands over to a lapsed place
/// (X would wait a claim window, and the lock key would hold the dead
/// token).
#[test]
fn a_sigkilled_waiter_whose_place_lapsed_costs_nothing() {
    run(async {
        let k = sigkilled_waiter(WAITER_LEASE + Duration::from_millis(100)).await;
        println!("X waited {:?} after the release", k.x_waited);
        assert!(
            !k.handed_to_dead,
            "the release handed the lock to a waiter whose lease had ended"
        );
        assert!(
            k.x_waited <= SLACK,
            "X waited {:?} after the release (bound: slack {SLACK:?})",
            k.x_waited
        );
    });
}

/// A waiter SIGKILLed while alone in line, the holder keeping the lock:
/// nobody pops its place, so only the line's expiry removes it. Both keys
/// are gone within L + SLACK of the kill (design §1: a crashed waiter's
/// state is gone within L), and the holder's release then frees the lock
/// (nobody to hand it to). Broken by a join or renewal that does not set
/// the keys' expiry (the keys stay until the next release pops the dead
/// place), or one that sets it longer than the lease.
#[test]
fn a_sigkilled_waiter_alone_in_line_leaves_nothing_within_its_lease() {
    run(async {
        let url = RedisServer::shared().url().to_owned();
        let name = unique("sigkill-alone");
        let holder = locker(&url, PREFIX);
        let (_, keys) = keys_of(&holder, &name);
        let mut admin = admin(&url).await;
        let guard = holder
            .try_lock_with(&name, |o| o.with_ttl(TTL))
            .await
            .unwrap()
            .expect("a fresh name is free");
        let mut child = spawn_waiting_child(&url, &name);
        line_reaches(&mut admin, &keys.waiters, 1, Duration::from_secs(60)).await;
        assert_eq!(exists(&mut admin, &[&keys.waiters, &keys.leases]).await, 2);
        child.kill();
        let killed_at = Instant::now();
        let at = gone(&mut admin, &[&keys.waiters, &keys.leases]).await;
        println!(
            "the dead waiter's place was gone {:?} after the kill",
            at - killed_at
        );
        assert!(
            at - killed_at <= WAITER_LEASE + SLACK,
            "the dead waiter's place lasted {:?} after the kill",
            at - killed_at
        );
        assert_eq!(guard.release().await.unwrap(), Release::Released);
        assert!(
            get(&mut admin, &keys.lock).await.is_none(),
            "the release handed the lock to the dead waiter's lapsed place"
        );
    });
}

// ---------------------------------------------------------------------
// 2. A waiter cancelled at many points.
// ---------------------------------------------------------------------

/// When waiter A's `lock()` future is dropped, relative to the holder's
/// release.
#[derive(Clone, Copy, Debug)]
enum CancelAt {
    /// This long before the release call (A is in line).
    Before(Duration),
    /// This long after the release call returned (the lock was handed to
    /// A, the grant published; A may be claiming, or have claimed).
    After(Duration),
}

const CANCEL_POINTS: [CancelAt; 12] = [
    CancelAt::Before(Duration::from_millis(20)),
    CancelAt::Before(Duration::from_millis(5)),
    CancelAt::Before(Duration::from_millis(1)),
    CancelAt::Before(Duration::ZERO),
    CancelAt::After(Duration::ZERO),
    CancelAt::After(Duration::from_micros(100)),
    CancelAt::After(Duration::from_micros(300)),
    CancelAt::After(Duration::from_micros(700)),
    CancelAt::After(Duration::from_micros(1500)),
    CancelAt::After(Duration::from_millis(3)),
    CancelAt::After(Duration::from_millis(8)),
    CancelAt::After(Duration::from_millis(25)),
];

/// How a round ended for A.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum AEnded {
    /// Dropped while in line, before the release.
    InLine,
    /// Dropped after the release had handed the lock to A (published the
    /// grant), before A's `lock()` returned.
    Handed,
    /// Its `lock()` returned a guard before the drop (then released).
    Acquired,
}

/// Until `at`, yielding (sub-millisecond points; the timer has 1 ms steps).
async fn spin_until(at: Instant) {
    while Instant::now() < at {
        tokio::task::yield_now().await;
    }
}

/// One round: holder H holds; A and then B wait (each on its own
/// backend, joined in that order); A's `lock()` is dropped at `point`;
/// B must get the lock, the hubs must be empty and the line gone.
async fn cancel_round(url: &str, point: CancelAt, flush: bool) -> AEnded {
    let (h, a, b) = (
        locker(url, PREFIX),
        locker(url, PREFIX),
        locker(url, PREFIX),
    );
    let mut admin = admin(url).await;
    let name = unique("cancel");
    let (_, keys) = keys_of(&h, &name);
    let guard = h
        .try_lock_with(&name, |o| o.with_ttl(TTL))
        .await
        .unwrap()
        .expect("a fresh name is free");
    let f0 = guard.fence();
    let wait = |o| waiting(o, Duration::from_secs(30));
    let a_task = {
        let (a, name) = (a.clone(), name.clone());
        tokio::spawn(async move { a.lock_with(&name, wait).await })
    };
    line_reaches(&mut admin, &keys.waiters, 1, Duration::from_secs(20)).await;
    let b_task = {
        let (b, name) = (b.clone(), name.clone());
        tokio::spawn(async move {
            let got = b.lock_with(&name, wait).await;
            (got, Instant::now())
        })
    };
    line_reaches(&mut admin, &keys.waiters, 2, Duration::from_secs(20)).await;
    let order = line(&mut admin, &keys.waiters).await;
    assert_eq!(order.len(), 2, "{order:?}");
    // B's token (B joined second).
    let tb = order[1].clone();

    // Drops A's future (a no-op if it already returned); what it returned.
    let cancel = |task: tokio::task::JoinHandle<Result<LockGuard, LockError>>| async move {
        task.abort();
        let at = Instant::now();
        match task.await {
            Err(e) if e.is_cancelled() => (None, at),
            Err(e) => panic!("A's task failed: {e}"),
            Ok(got) => (Some(got.expect("A's lock() failed")), at),
        }
    };
    let (a_got, cancelled_at, released_at) = match point {
        CancelAt::Before(d) => {
            let (got, at) = cancel(a_task).await;
            assert!(got.is_none(), "A acquired a held lock");
            if flush {
                a.flush().await;
            }
            tokio::time::sleep_until(at + d).await;
            let released_at = Instant::now();
            assert_eq!(guard.release().await.unwrap(), Release::Released);
            (None, at, released_at)
        }
        CancelAt::After(d) => {
            let released_at = Instant::now();
            assert_eq!(guard.release().await.unwrap(), Release::Released);
            // The release handed the lock over in the same script.
            spin_until(Instant::now() + d).await;
            let (got, at) = cancel(a_task).await;
            (got, at, released_at)
        }
    };
    let mut since = released_at.max(cancelled_at);
    let ended = match a_got {
        Some(a_guard) => {
            // A claimed before the drop: a normal hold, given back now.
            assert_eq!(a_guard.release().await.unwrap(), Release::Released);
            since = Instant::now();
            AEnded::Acquired
        }
        // The release handed the lock to A before the drop (checked by
        // B's fence below).
        None if matches!(point, CancelAt::After(_)) => AEnded::Handed,
        None => AEnded::InLine,
    };
    // The drop deregistered A's watch (the hub of A's backend is empty).
    assert_eq!(
        a.backend().registered_waiters(),
        0,
        "a dropped lock() left a watcher ({point:?})"
    );
    if flush {
        a.flush().await;
        since = since.max(Instant::now());
        // Timing-free: once A's give-back has landed and the holder has
        // released, the key is B's (handed, or claimed). Broken by a
        // dropped lock() that does not give its token back (the key would
        // stay A's for the claim window).
        assert_eq!(
            get(&mut admin, &keys.lock).await.as_deref(),
            Some(tb.as_str()),
            "after flush() the lock is not B's ({point:?}, A {ended:?})"
        );
    }
    let (got, b_at) = no_hang("B", b_task).await.unwrap();
    let b_guard = got.expect("B acquires");
    // One fence per handover. After the release the lock went through A
    // (handed to it, then passed on by its give-back or its guard's
    // release): f0 + 2. A dropped before the release and flushed gave its
    // place back first: the release handed straight to B, f0 + 1 (broken
    // by a give-back that leaves the place in line). Dropped before the
    // release without flush(), the give-back races the release: either.
    let expected: &[u64] = match (point, flush) {
        (CancelAt::After(_), _) => &[f0 + 2],
        (CancelAt::Before(_), true) => &[f0 + 1],
        (CancelAt::Before(_), false) => &[f0 + 1, f0 + 2],
    };
    assert!(
        expected.contains(&b_guard.fence()),
        "B's fence {} (holder's {f0}; {point:?}, flush {flush}, A {ended:?})",
        b_guard.fence()
    );
    let b_waited = b_at.saturating_duration_since(since);
    // With flush(): no extra delay, B within slack. Without: A's give-back
    // is in flight; the design's bound for a waiter that never gives back
    // is its claim window (C = L), so at most L + slack.
    let bound = if flush { SLACK } else { WAITER_LEASE + SLACK };
    assert!(
        b_waited <= bound,
        "B waited {b_waited:?} after the release/cancel (bound {bound:?}; {point:?}, flush {flush}, A {ended:?})"
    );
    assert_eq!(b.backend().registered_waiters(), 0, "B's watch is left");
    assert_eq!(a.backend().registered_waiters(), 0, "A's watch is left");

    // After flush() no place is left in line, within the lease (a late
    // copy of A's claim can re-join as an orphan place that lapses).
    a.flush().await;
    let flushed = Instant::now();
    let at = gone(&mut admin, &[&keys.waiters, &keys.leases]).await;
    assert!(
        at - flushed <= WAITER_LEASE + SLACK,
        "the line's keys lasted {:?} after flush() ({point:?}, flush {flush})",
        at - flushed
    );
    assert_eq!(b_guard.release().await.unwrap(), Release::Released);
    // Free within a claim window (+ slack) at most: a late orphan place
    // could still have been handed the lock by that release.
    let freed = Instant::now();
    no_hang("the lock's release", async {
        while get(&mut admin, &keys.lock).await.is_some() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(freed.elapsed() <= CLAIM_WINDOW + SLACK);
    ended
}

/// A `lock()` future dropped at 12 points around the holder's release,
/// from 20 ms before it to 25 ms after (right after: the lock was already
/// handed to the dropped waiter and its grant published), with and
/// without `flush()` after the drop (24 rounds). Each round asserts: the
/// next waiter B acquires within SLACK of the later of the release, the
/// drop and the flush with `flush()` (no extra delay; and the key is B's
/// as soon as flush() returned), within L + SLACK without; B's fence is
/// the holder's + 2 after every drop that came after the release (the
/// lock went through the dropped waiter: handed to it, then passed on)
/// and + 1 after a flushed drop before it; the dropped waiter's backend
/// has no watcher registered; no place is left in line within L + SLACK
/// of `flush()`; and the name ends free (within a claim window + SLACK of
/// B's release: a late copy of A's claim may re-join as an orphan place).
///
/// What breaks it: a dropped `lock()` whose token is not given back (B
/// waits a claim window; the key is A's after flush(); a flushed drop
/// before the release still gets the lock handed to it, B's fence + 2), a
/// watch not deregistered on drop, a place left in line without expiry.
#[test]
fn a_lock_call_dropped_at_any_point_leaves_nothing_behind() {
    run(async {
        let url = RedisServer::shared().url().to_owned();
        let mut seen = std::collections::BTreeMap::<AEnded, usize>::new();
        for flush in [true, false] {
            for point in CANCEL_POINTS {
                let ended = cancel_round(&url, point, flush).await;
                println!("{point:?} flush {flush}: A {ended:?}");
                if let CancelAt::Before(_) = point {
                    assert_eq!(ended, AEnded::InLine);
                }
                *seen.entry(ended).or_default() += 1;
            }
        }
        println!("rounds by how A ended: {seen:?}");
    });
}

// ---------------------------------------------------------------------
// 3. Stress across processes with cut waits, checked from history.
// ---------------------------------------------------------------------

const STRESS_PROCESSES: u32 = 4;
const STRESS_TASKS: u32 = 4;
/// `lock()` calls per task (a quarter of them cut short).
const STRESS_CALLS: u32 = 40;
/// No task starts a call after this long.
const STRESS_BUDGET: Duration = Duration::from_secs(25);
/// A child still running after this long fails the test.
const STRESS_TIMEOUT: Duration = Duration::from_secs(120);
/// The one contended name.
const STRESS_NAME: &str = "one";
/// The lease of a stress hold (≥ `WAITER_LEASE`, so waits use the line).
const STRESS_TTL: Duration = Duration::from_secs(5);

fn stress_prefix(run: &str) -> String {
    format!("wqs-{run}")
}

fn stress_key(run: &str, what: &str) -> String {
    format!("distlock-wqs:{run}:{what}")
}

/// A small PRNG (splitmix64), seeded from a random token: no extra crate.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let token = LockToken::generate();
        Self(u64::from_str_radix(&token.as_hex()[..16], 16).unwrap_or(0x9e37_79b9))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One task's figures.
#[derive(Default)]
struct TaskFigures {
    holds: usize,
    released_not_held: usize,
    /// Calls cut short (a 1–20 ms timeout).
    cut: u64,
    /// Cut calls that ended without a guard (cancelled while waiting).
    cut_empty: u64,
}

async fn stress_task(
    locker: Locker<RedisBackend>,
    mut conn: MultiplexedConnection,
    run: String,
    holder: HolderId,
    started: Instant,
) -> TaskFigures {
    let mut rng = Rng::new();
    let mut f = TaskFigures::default();
    let counter = stress_key(&run, "counter");
    let long = |o: LockOptions| {
        o.with_ttl(STRESS_TTL)
            .with_wait_timeout(Duration::from_secs(60))
            .with_retry(Duration::from_millis(2), Duration::from_millis(50))
    };
    for _ in 0..STRESS_CALLS {
        if started.elapsed() >= STRESS_BUDGET {
            break;
        }
        let cut = rng.below(4) == 0;
        let limit = Duration::from_millis(1 + rng.below(20));
        let asked = Stamp::now();
        let got = if !cut {
            Some(locker.lock_with(STRESS_NAME, long).await)
        } else if rng.below(2) == 0 {
            // The future dropped by a timeout around it.
            tokio::time::timeout(limit, locker.lock_with(STRESS_NAME, long))
                .await
                .ok()
        } else {
            // The Locker's own wait deadline.
            Some(
                locker
                    .lock_with(STRESS_NAME, |o| long(o).with_wait_timeout(limit))
                    .await,
            )
        };
        f.cut += u64::from(cut);
        let guard = match got {
            Some(Ok(guard)) => guard,
            None | Some(Err(LockError::TimedOut { .. })) if cut => {
                f.cut_empty += 1;
                continue;
            }
            None => unreachable!("only a cut call is dropped"),
            Some(Err(e)) => panic!("{holder}: lock() failed: {e}"),
        };
        let mut hold = Hold::from_guard(holder, asked, Stamp::now(), &guard);
        // A non-atomic increment under the lock: a second holder at the
        // same time loses an increment.
        let value: Option<u64> = redis::cmd("GET")
            .arg(&counter)
            .query_async(&mut conn)
            .await
            .expect("reading the counter");
        tokio::time::sleep(Duration::from_millis(1)).await;
        let () = redis::cmd("SET")
            .arg(&counter)
            .arg(value.unwrap_or(0) + 1)
            .query_async(&mut conn)
            .await
            .expect("writing the counter");
        hold.before_release(&guard);
        match guard.release().await.expect("release") {
            Release::Released => {}
            Release::NotHeld => f.released_not_held += 1,
        }
        Record::Hold(hold).emit();
        f.holds += 1;
        // A short, varied pause, so cut calls meet the line at all phases.
        tokio::time::sleep(Duration::from_micros(rng.below(2000))).await;
    }
    f
}

/// A stress child (started by the parent test through
/// `ProcessStress`): two lockers on their own backends, tasks alternating
/// between them, every hold sent to the parent as a record; the cut-call
/// counts go to Redis. Does nothing when run as an ordinary test.
#[test]
fn cut_waits_stress_worker() {
    let Some(process) = child_process() else {
        return;
    };
    let url = std::env::var(STRESS_URL_ENV).expect("child URL");
    let run = std::env::var(STRESS_RUN_ENV).expect("child run id");
    runtime().block_on(async {
        let started = Instant::now();
        let lockers = [
            locker(&url, &stress_prefix(&run)),
            locker(&url, &stress_prefix(&run)),
        ];
        let conn = admin(&url).await;
        let tasks: Vec<_> = (0..STRESS_TASKS)
            .map(|task| {
                let holder = HolderId { process, task };
                tokio::spawn(stress_task(
                    lockers[task as usize % lockers.len()].clone(),
                    conn.clone(),
                    run.clone(),
                    holder,
                    started,
                ))
            })
            .collect();
        let mut total = TaskFigures::default();
        for t in tasks {
            let f = t.await.expect("a stress task panicked");
            total.holds += f.holds;
            total.released_not_held += f.released_not_held;
            total.cut += f.cut;
            total.cut_empty += f.cut_empty;
        }
        // Every give-back of a cut call has landed before the exit.
        for l in &lockers {
            l.flush().await;
        }
        let mut conn = conn;
        let () = redis::pipe()
            .cmd("INCRBY")
            .arg(stress_key(&run, "cut"))
            .arg(total.cut)
            .ignore()
            .cmd("INCRBY")
            .arg(stress_key(&run, "cut_empty"))
            .arg(total.cut_empty)
            .ignore()
            .query_async(&mut conn)
            .await
            .expect("recording the cut calls");
        Record::Summary(ChildSummary {
            process,
            holds: total.holds,
            released_not_held: total.released_not_held,
            planned_expiries: 0,
            elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
        .emit();
    });
}

fn run_id() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )
}

/// Design §7 Redis 7: 4 child processes × 4 tasks (2 lockers per
/// process) on one name, 40 `lock()` calls per task, a quarter of them
/// cut by a random 1–20 ms timeout (half by dropping the future, half by
/// the Locker's own wait deadline). Checked from the merged history: no
/// two holds overlap, fences strictly increase in acquisition order and
/// never repeat, a counter incremented non-atomically under the lock
/// equals the number of holds, no release found its lease gone (5 s
/// leases, holds of a few ms), every task held the lock, and some cut
/// calls really ended without a guard. Afterwards the line's keys are
/// gone within L + SLACK of the last child's exit, and the lock key
/// within L + C + SLACK (a late copy of a cut call's claim may re-join as
/// an orphan place, be handed the lock by the last release and let its
/// window lapse).
///
/// What breaks it: two holders at once (overlap, lost increments), a fence
/// counted twice or not at all per handover (fence order, repeats), a cut
/// call that keeps the lock or its place (the line or the key left, or a
/// NotHeld release after another waiter barged into a window).
#[test]
fn stress_with_cut_waits_across_processes_checked_from_history() {
    let _serial = serial();
    let url = RedisServer::shared().url().to_owned();
    let run = run_id();
    let records = ProcessStress::new("cut_waits_stress_worker", STRESS_PROCESSES)
        .env(STRESS_URL_ENV, &url)
        .env(STRESS_RUN_ENV, &run)
        .timeout(STRESS_TIMEOUT)
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    let ended = std::time::Instant::now();
    for child in &records.children {
        println!(
            "worker {}: {} holds in {} ms",
            child.process, child.holds, child.elapsed_ms
        );
    }
    let report = check(&records.holds);
    println!(
        "cut-wait stress: {STRESS_PROCESSES} processes x {STRESS_TASKS} tasks in {:.1?}",
        records.elapsed
    );
    println!("{report}");
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.overlaps(), 0);
    assert_eq!(report.fence_violations(), 0);
    let mut fences: Vec<u64> = records.holds.iter().map(|h| h.fence).collect();
    fences.sort_unstable();
    let before = fences.len();
    fences.dedup();
    assert_eq!(fences.len(), before, "a fence repeats");
    let holders: std::collections::BTreeSet<HolderId> =
        records.holds.iter().map(|h| h.holder).collect();
    assert_eq!(
        holders.len(),
        (STRESS_PROCESSES * STRESS_TASKS) as usize,
        "some task never held the lock: {holders:?}"
    );
    assert_eq!(
        records.released_not_held(),
        0,
        "releases found their lease gone"
    );

    let rt = runtime();
    rt.block_on(async {
        let mut admin = admin(&url).await;
        let counter: Option<u64> = redis::cmd("GET")
            .arg(stress_key(&run, "counter"))
            .query_async(&mut admin)
            .await
            .unwrap();
        assert_eq!(
            counter.unwrap_or(0),
            records.holds.len() as u64,
            "the counter lost increments"
        );
        let cut: Option<u64> = redis::cmd("GET")
            .arg(stress_key(&run, "cut"))
            .query_async(&mut admin)
            .await
            .unwrap();
        let cut_empty: Option<u64> = redis::cmd("GET")
            .arg(stress_key(&run, "cut_empty"))
            .query_async(&mut admin)
            .await
            .unwrap();
        let (cut, cut_empty) = (cut.unwrap_or(0), cut_empty.unwrap_or(0));
        println!(
            "{} holds; {cut} calls cut short, {cut_empty} of them without a guard",
            records.holds.len()
        );
        assert!(cut_empty > 0, "no call was cut while waiting");

        let probe = locker(&url, &stress_prefix(&run));
        let (_, keys) = keys_of(&probe, STRESS_NAME);
        let at = gone(&mut admin, &[&keys.waiters, &keys.leases]).await;
        let line_left = at.into_std().saturating_duration_since(ended);
        println!("the line's keys were gone {line_left:?} after the last exit");
        assert!(
            line_left <= WAITER_LEASE + SLACK,
            "the line's keys lasted {line_left:?} after the run"
        );
        let at = gone(&mut admin, &[&keys.lock]).await;
        let lock_left = at.into_std().saturating_duration_since(ended);
        assert!(
            lock_left <= WAITER_LEASE + CLAIM_WINDOW + SLACK,
            "the lock key lasted {lock_left:?} after the run"
        );
        let () = redis::cmd("DEL")
            .arg(stress_key(&run, "counter"))
            .arg(stress_key(&run, "cut"))
            .arg(stress_key(&run, "cut_empty"))
            .query_async(&mut admin)
            .await
            .unwrap();
    });
}
