//! The history checker's self-test: the stress driver against deliberately
//! broken backends (each wraps `MemoryBackend` with `wrapper::Wrapped`
//! hooks that break one rule) must
//! produce violations the checker reports, and against the correct
//! `MemoryBackend` none.

use std::collections::BTreeSet;
use std::time::Duration;

use distlock::{
    Acquire, BackendError, Capabilities, Extend, LockBackend, LockKey, LockToken, Locker, Release,
    ReleaseWatch,
};
use distlock_conformance::history::{check, MemoryCounter, Report, StressConfig, StressRun};
use distlock_conformance::wrapper::{Hooks, Wrapped};
use distlock_memory::MemoryBackend;

/// The one rule a [`Broken`] backend breaks.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// `release` ignores the token and deletes whatever lease is there.
    ReleaseIgnoresToken,
    /// `try_acquire` first deletes whatever lease is there: it always wins.
    AcquireSteals,
    /// Leases last a quarter of the TTL the caller asked for.
    LeaseShorterThanTtl,
    /// Fencing tokens go down with every acquisition.
    FencesGoDown,
    /// Every acquisition gets fencing token 1.
    FenceRepeats,
}

/// Hooks that break one rule of `MemoryBackend` ([`Fault`]). No release
/// notifications (the broken paths would not send them); waiters poll.
/// No line of waiters either: the faults are in the plain calls, which a
/// `Locker` would go around through `try_acquire_queued` otherwise.
struct Broken {
    fault: Fault,
}

#[distlock::async_trait]
impl Hooks<MemoryBackend> for Broken {
    fn capabilities(&self, inner: &MemoryBackend) -> Capabilities {
        inner
            .capabilities()
            .with_release_notify(false)
            .with_waiter_queue(false)
    }

    async fn try_acquire(
        &self,
        inner: &MemoryBackend,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
    ) -> Result<Acquire, BackendError> {
        let ttl = match self.fault {
            Fault::LeaseShorterThanTtl => ttl / 4,
            Fault::AcquireSteals => {
                inner.expire_now(key);
                ttl
            }
            _ => ttl,
        };
        let outcome = inner.try_acquire(key, token, ttl, owner).await?;
        Ok(match (self.fault, outcome) {
            (Fault::FencesGoDown, Acquire::Acquired { fence }) => Acquire::Acquired {
                fence: 1_000_000 - fence,
            },
            (Fault::FenceRepeats, Acquire::Acquired { .. }) => Acquire::Acquired { fence: 1 },
            (_, outcome) => outcome,
        })
    }

    async fn extend(
        &self,
        inner: &MemoryBackend,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
    ) -> Result<Extend, BackendError> {
        let ttl = match self.fault {
            Fault::LeaseShorterThanTtl => ttl / 4,
            _ => ttl,
        };
        inner.extend(key, token, ttl).await
    }

    async fn release(
        &self,
        inner: &MemoryBackend,
        key: &LockKey,
        token: &LockToken,
    ) -> Result<Release, BackendError> {
        match self.fault {
            Fault::ReleaseIgnoresToken => Ok(if inner.expire_now(key) {
                Release::Released
            } else {
                Release::NotHeld
            }),
            _ => inner.release(key, token).await,
        }
    }

    async fn watch(
        &self,
        _inner: &MemoryBackend,
        _key: &LockKey,
    ) -> Result<Option<ReleaseWatch>, BackendError> {
        Ok(None)
    }
}

const NAMES: [&str; 2] = ["left", "right"];

/// 16 tasks on two lockers of one store, 20 holds each on two names.
fn config() -> StressConfig {
    let mut config = StressConfig::new(0, NAMES);
    config.tasks = 16;
    config.holds_per_task = 20;
    config.work = Duration::from_millis(2);
    config.retry = (Duration::from_millis(1), Duration::from_millis(5));
    config
}

async fn run<B: LockBackend + Clone>(
    backend: B,
    config: &StressConfig,
) -> (StressRun, Report, MemoryCounter) {
    let lockers = [Locker::new(backend.clone()), Locker::new(backend)];
    let counter = MemoryCounter::new();
    let run = distlock_conformance::history::stress(&lockers, counter.clone(), config)
        .await
        .expect("the stress run itself works");
    let report = check(&run.holds);
    println!("{report}");
    for name in NAMES {
        println!(
            "  counter {name:?}: {} for {} holds",
            counter.get(name),
            report.holds_per_name.get(name).copied().unwrap_or(0)
        );
    }
    (run, report, counter)
}

fn broken(fault: Fault) -> Wrapped<MemoryBackend> {
    Wrapped::new(MemoryBackend::new(), Broken { fault })
}

/// Names whose counter is not the number of holds of that name.
fn wrong_counters(report: &Report, counter: &MemoryCounter) -> Vec<&'static str> {
    NAMES
        .into_iter()
        .filter(|name| counter.get(name) as usize != report.holds_per_name[*name])
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correct_memory_backend_has_no_violations_and_exact_counters() {
    let config = config();
    let (run, report, counter) = run(MemoryBackend::new(), &config).await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.total_holds(), 16 * 20);
    assert_eq!(wrong_counters(&report, &counter), Vec::<&str>::new());
    let holders: BTreeSet<_> = run.holds.iter().map(|h| h.holder).collect();
    assert_eq!(holders.len(), 16, "every task held the lock");
    // Every non-renewing task ran its lease out twice (holds 10 and 20) and
    // must have been told NotHeld on release; renewing tasks were not.
    assert_eq!(run.planned_expiries, 14 * 2);
    assert!(
        run.released_not_held >= run.planned_expiries,
        "{} releases said NotHeld, {} leases were run out on purpose",
        run.released_not_held,
        run.planned_expiries
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checker_catches_release_that_ignores_the_token() {
    // A holder that ran its lease out releases the *next* holder's lock, so
    // a third task gets in while the second still holds it.
    let mut config = config();
    config.overrun_every = 3;
    config.work = Duration::from_millis(5);
    let (_, report, counter) = run(broken(Fault::ReleaseIgnoresToken), &config).await;
    assert!(report.overlaps() > 0, "no overlap caught: {report}");
    assert!(
        !wrong_counters(&report, &counter).is_empty(),
        "overlapping holds lost no increment: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checker_catches_acquire_that_steals_a_held_lock() {
    let mut config = config();
    config.overrun_every = 0;
    let (_, report, counter) = run(broken(Fault::AcquireSteals), &config).await;
    assert!(report.overlaps() > 0, "no overlap caught: {report}");
    assert_eq!(
        wrong_counters(&report, &counter).len(),
        NAMES.len(),
        "every counter should have lost increments: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checker_catches_lease_that_ends_before_its_ttl() {
    // Guards believe in a 200 ms lease; the store keeps 50 ms. Each holder
    // works 80 ms, so the next one gets in while the guard is still valid.
    let mut config = config();
    config.ttl = Duration::from_millis(200);
    config.work = Duration::from_millis(80);
    config.holds_per_task = 3;
    config.renew_every = 0;
    config.overrun_every = 0;
    let (_, report, counter) = run(broken(Fault::LeaseShorterThanTtl), &config).await;
    assert!(report.overlaps() > 0, "no overlap caught: {report}");
    assert!(
        !wrong_counters(&report, &counter).is_empty(),
        "overlapping holds lost no increment: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checker_catches_fences_that_go_down() {
    let config = config();
    let (_, report, counter) = run(broken(Fault::FencesGoDown), &config).await;
    // Exclusion itself is intact: only the fences are wrong.
    assert_eq!(report.overlaps(), 0, "{report}");
    assert_eq!(wrong_counters(&report, &counter), Vec::<&str>::new());
    assert!(
        report.fence_violations() > 0,
        "fence order not caught: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checker_catches_a_fence_handed_out_twice() {
    let config = config();
    let (_, report, counter) = run(broken(Fault::FenceRepeats), &config).await;
    assert_eq!(report.overlaps(), 0, "{report}");
    assert_eq!(wrong_counters(&report, &counter), Vec::<&str>::new());
    // Every hold of a name but its first repeats fence 1.
    assert_eq!(
        report.fence_violations(),
        report.total_holds() - NAMES.len(),
        "{report}"
    );
}
