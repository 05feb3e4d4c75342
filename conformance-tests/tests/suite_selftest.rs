//! The suite's self-test: deliberately broken backends (the memory backend
//! wrapped with one defect each, through `wrapper::Wrapped`) must fail the
//! cases named for their defect, and the correct memory backend must pass
//! the same cases, so every assertion here can fail.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use distlock::{
    Acquire, BackendError, BackendErrorKind, Extend, LockBackend, LockInfo, LockKey, LockToken,
    Release, ReleaseHub, ReleaseWatch, Waiter,
};
use distlock_conformance::wrapper::{Hooks, Wrapped};
use distlock_conformance::{
    run_case, scenarios, BoxError, CapabilityReport, Harness, Need, SetupError,
};
use distlock_memory::MemoryBackend;

/// One defect: hooks around the memory backend, shared by every client of
/// one store. The memory backend keeps a line of waiters, so a defect in
/// an acquire call or a watch is built into its queued variant too (the
/// `Locker` waits through those): `Hooks::capabilities` documents that
/// obligation.
trait Defect: Hooks<MemoryBackend> + Default {}
impl<D: Hooks<MemoryBackend> + Default> Defect for D {}

/// The memory harness, every client wrapped with the defect `D`.
struct Faulty<D> {
    store: MemoryBackend,
    hooks: Arc<D>,
    _defect: PhantomData<D>,
}

#[distlock_conformance::async_trait]
impl<D: Defect> Harness for Faulty<D> {
    type Backend = Wrapped<MemoryBackend>;
    const PAUSED_CLOCK: bool = true;

    async fn setup() -> Result<Self, SetupError> {
        Ok(Self {
            store: MemoryBackend::new(),
            hooks: Arc::new(D::default()),
            _defect: PhantomData,
        })
    }

    async fn client(&self) -> Result<Self::Backend, BoxError> {
        Ok(Wrapped::with_shared(self.store.clone(), self.hooks.clone()))
    }

    async fn expire_now(&self, client: &Self::Backend, key: &LockKey) -> Result<(), BoxError> {
        client.inner().expire_now(key);
        Ok(())
    }

    fn registered_waiters(&self, client: &Self::Backend) -> Option<usize> {
        Some(client.inner().registered_waiters())
    }

    async fn unreachable_client(&self) -> Result<Option<Self::Backend>, BoxError> {
        let down = MemoryBackend::new();
        down.set_unavailable(true);
        Ok(Some(Wrapped::with_shared(down, self.hooks.clone())))
    }
}

/// No defect: the control.
#[derive(Default)]
struct Correct;
impl Hooks<MemoryBackend> for Correct {}

/// `try_acquire` ends whatever lease is there first: it always takes over.
#[derive(Default)]
struct AlwaysTakesOver;

#[distlock::async_trait]
impl Hooks<MemoryBackend> for AlwaysTakesOver {
    async fn try_acquire(
        &self,
        inner: &MemoryBackend,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
    ) -> Result<Acquire, BackendError> {
        inner.expire_now(key);
        inner.try_acquire(key, token, ttl, owner).await
    }

    async fn try_acquire_queued(
        &self,
        inner: &MemoryBackend,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
        waiter: &Waiter,
    ) -> Result<Acquire, BackendError> {
        inner.expire_now(key);
        inner
            .try_acquire_queued(key, token, ttl, owner, waiter)
            .await
    }
}

/// `extend` of a lease that ran out takes the lock again and says Extended.
#[derive(Default)]
struct ExtendRevivesExpired;

#[distlock::async_trait]
impl Hooks<MemoryBackend> for ExtendRevivesExpired {
    async fn extend(
        &self,
        inner: &MemoryBackend,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
    ) -> Result<Extend, BackendError> {
        match inner.extend(key, token, ttl).await? {
            Extend::NotHeld => match inner.try_acquire(key, token, ttl, None).await? {
                Acquire::Acquired { .. } => Ok(Extend::Extended),
                Acquire::Held { .. } => Ok(Extend::NotHeld),
            },
            extended => Ok(extended),
        }
    }
}

/// `release` of a lease that is no longer ours says Released.
#[derive(Default)]
struct ReleaseOfExpiredSaysReleased;

#[distlock::async_trait]
impl Hooks<MemoryBackend> for ReleaseOfExpiredSaysReleased {
    async fn release(
        &self,
        inner: &MemoryBackend,
        key: &LockKey,
        token: &LockToken,
    ) -> Result<Release, BackendError> {
        inner.release(key, token).await?;
        Ok(Release::Released)
    }
}

/// Claims release notifications, but its watches are never woken.
#[derive(Default)]
struct NoNotification {
    silent: ReleaseHub,
}

#[distlock::async_trait]
impl Hooks<MemoryBackend> for NoNotification {
    async fn watch(
        &self,
        inner: &MemoryBackend,
        key: &LockKey,
    ) -> Result<Option<ReleaseWatch>, BackendError> {
        inner.watch(key).await?; // registered and dropped at once
        Ok(Some(self.silent.watch(key)))
    }

    async fn watch_queued(
        &self,
        inner: &MemoryBackend,
        key: &LockKey,
        waiter: &Waiter,
    ) -> Result<Option<ReleaseWatch>, BackendError> {
        inner.watch_queued(key, waiter).await?;
        Ok(Some(self.silent.watch_waiter(key, waiter.id)))
    }
}

/// Fencing tokens count per key and start again at 1 after a release.
#[derive(Default)]
struct FencesRestartAfterRelease {
    /// Per encoded key: (the last fence handed out, whether still counting).
    fences: Mutex<HashMap<String, u64>>,
}

#[distlock::async_trait]
impl Hooks<MemoryBackend> for FencesRestartAfterRelease {
    async fn try_acquire(
        &self,
        inner: &MemoryBackend,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
    ) -> Result<Acquire, BackendError> {
        let outcome = inner.try_acquire(key, token, ttl, owner).await?;
        Ok(self.renumber(key, outcome))
    }

    async fn try_acquire_queued(
        &self,
        inner: &MemoryBackend,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
        waiter: &Waiter,
    ) -> Result<Acquire, BackendError> {
        let outcome = inner
            .try_acquire_queued(key, token, ttl, owner, waiter)
            .await?;
        Ok(self.renumber(key, outcome))
    }

    async fn release(
        &self,
        inner: &MemoryBackend,
        key: &LockKey,
        token: &LockToken,
    ) -> Result<Release, BackendError> {
        let released = inner.release(key, token).await?;
        if released == Release::Released {
            self.fences.lock().unwrap().remove(key.encoded());
        }
        Ok(released)
    }

    async fn inspect(
        &self,
        inner: &MemoryBackend,
        key: &LockKey,
    ) -> Result<LockInfo, BackendError> {
        let info = inner.inspect(key).await?;
        let fence = self.fences.lock().unwrap().get(key.encoded()).copied();
        Ok(if info.held {
            LockInfo::held(info.owner, info.remaining, fence)
        } else {
            LockInfo::free(fence)
        })
    }
}

impl FencesRestartAfterRelease {
    /// An acquisition's fence from the per-key count instead.
    fn renumber(&self, key: &LockKey, outcome: Acquire) -> Acquire {
        match outcome {
            Acquire::Acquired { .. } => {
                let mut fences = self.fences.lock().unwrap();
                let fence = fences.entry(key.encoded().to_owned()).or_insert(0);
                *fence += 1;
                Acquire::Acquired { fence: *fence }
            }
            held => held,
        }
    }
}

/// `release` ignores the token and ends whatever lease is there.
#[derive(Default)]
struct ReleaseIgnoresToken;

#[distlock::async_trait]
impl Hooks<MemoryBackend> for ReleaseIgnoresToken {
    async fn release(
        &self,
        inner: &MemoryBackend,
        key: &LockKey,
        _token: &LockToken,
    ) -> Result<Release, BackendError> {
        Ok(if inner.expire_now(key) {
            Release::Released
        } else {
            Release::NotHeld
        })
    }
}

/// Leases last a quarter of the TTL asked for.
#[derive(Default)]
struct LeaseShorterThanTtl;

#[distlock::async_trait]
impl Hooks<MemoryBackend> for LeaseShorterThanTtl {
    async fn try_acquire(
        &self,
        inner: &MemoryBackend,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
    ) -> Result<Acquire, BackendError> {
        inner.try_acquire(key, token, ttl / 4, owner).await
    }

    async fn try_acquire_queued(
        &self,
        inner: &MemoryBackend,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
        waiter: &Waiter,
    ) -> Result<Acquire, BackendError> {
        inner
            .try_acquire_queued(key, token, ttl / 4, owner, waiter)
            .await
    }
}

/// Errors of a store that cannot be reached come out as `Other` (not
/// retryable): misclassified.
#[derive(Default)]
struct UnreachableIsOther;

fn as_other(e: BackendError) -> BackendError {
    BackendError::new(BackendErrorKind::Other, e.message().to_owned())
}

#[distlock::async_trait]
impl Hooks<MemoryBackend> for UnreachableIsOther {
    async fn try_acquire(
        &self,
        inner: &MemoryBackend,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
    ) -> Result<Acquire, BackendError> {
        inner
            .try_acquire(key, token, ttl, owner)
            .await
            .map_err(as_other)
    }

    async fn try_acquire_queued(
        &self,
        inner: &MemoryBackend,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
        waiter: &Waiter,
    ) -> Result<Acquire, BackendError> {
        inner
            .try_acquire_queued(key, token, ttl, owner, waiter)
            .await
            .map_err(as_other)
    }
}

/// Claims a line of waiters, but its queued acquire is a plain one: no
/// line, no handover, every waiter tries at every release.
#[derive(Default)]
struct NoLine;

#[distlock::async_trait]
impl Hooks<MemoryBackend> for NoLine {
    async fn try_acquire_queued(
        &self,
        inner: &MemoryBackend,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
        _waiter: &Waiter,
    ) -> Result<Acquire, BackendError> {
        inner.try_acquire(key, token, ttl, owner).await
    }
}

/// A repeated acquire by the holding token answers `Acquired` but keeps
/// the old lease (what `distlock-redis` did before 0.2): a handover
/// claimed by a plain call kept only its claim window.
#[derive(Default)]
struct RepeatKeepsOldLease;

#[distlock::async_trait]
impl Hooks<MemoryBackend> for RepeatKeepsOldLease {
    async fn try_acquire(
        &self,
        inner: &MemoryBackend,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
    ) -> Result<Acquire, BackendError> {
        let before = inner.inspect(key).await?;
        let outcome = inner.try_acquire(key, token, ttl, owner).await?;
        if let (true, Some(remaining)) = (before.held, before.remaining) {
            if matches!(outcome, Acquire::Acquired { .. }) {
                // Put the old lease back.
                inner.extend(key, token, remaining).await?;
            }
        }
        Ok(outcome)
    }
}

/// Every reply 20 ms late (after the store acted): slower than `MIN_TTL`.
/// Not a defect: cases must not depend on a backend's speed.
#[derive(Default)]
struct SlowReplies;

#[distlock::async_trait]
impl Hooks<MemoryBackend> for SlowReplies {
    async fn try_acquire(
        &self,
        inner: &MemoryBackend,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
    ) -> Result<Acquire, BackendError> {
        let outcome = inner.try_acquire(key, token, ttl, owner).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        outcome
    }

    async fn try_acquire_queued(
        &self,
        inner: &MemoryBackend,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
        waiter: &Waiter,
    ) -> Result<Acquire, BackendError> {
        let outcome = inner
            .try_acquire_queued(key, token, ttl, owner, waiter)
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        outcome
    }
}

type Case<H> = for<'a> fn(&'a H) -> Pin<Box<dyn Future<Output = ()> + 'a>>;

/// A case's name, the case against the defect `D`, and against no defect.
type Pair<D> = (&'static str, Case<Faulty<D>>, Case<Faulty<Correct>>);

/// Whether the case passes against harness `H` (a panic is a failure).
fn passes<H: Harness>(name: &str, case: Case<H>) -> bool {
    std::panic::catch_unwind(AssertUnwindSafe(|| run_case::<H>(name, case))).is_ok()
}

/// Expands to (name, case for `Faulty<$defect>`, case for `Faulty<Correct>`).
macro_rules! case {
    ($defect:ty, $name:ident) => {
        (
            stringify!($name),
            (|h| Box::pin(scenarios::$name(h))) as Case<Faulty<$defect>>,
            (|h| Box::pin(scenarios::$name(h))) as Case<Faulty<Correct>>,
        )
    };
}

/// Each named case fails against the defect and passes without it.
fn assert_caught<D: Defect>(cases: &[Pair<D>]) {
    for (name, broken, correct) in cases {
        assert!(
            passes::<Faulty<Correct>>(name, *correct),
            "{name} fails against the correct backend"
        );
        assert!(
            !passes::<Faulty<D>>(name, *broken),
            "{name} did not catch {}",
            std::any::type_name::<D>()
        );
    }
}

#[test]
fn always_taking_over_is_caught() {
    assert_caught::<AlwaysTakesOver>(&[
        case!(AlwaysTakesOver, acquire_free_then_held_then_free),
        case!(AlwaysTakesOver, racing_try_lock_has_one_winner),
        case!(AlwaysTakesOver, mutual_exclusion_counter),
    ]);
}

#[test]
fn extend_reviving_an_expired_lease_is_caught() {
    assert_caught::<ExtendRevivesExpired>(&[case!(
        ExtendRevivesExpired,
        extend_after_expiry_is_not_held
    )]);
}

#[test]
fn release_of_an_expired_lease_saying_released_is_caught() {
    assert_caught::<ReleaseOfExpiredSaysReleased>(&[
        case!(
            ReleaseOfExpiredSaysReleased,
            stale_guard_cannot_touch_new_holder
        ),
        case!(ReleaseOfExpiredSaysReleased, double_release_is_harmless),
        // A lease that ran out and nobody took since, released through the
        // backend (a guard that counted its lease as lost reports NotHeld
        // whatever the backend says, so the case asks the backend too;
        // found missing by a backend author's trial).
        case!(
            ReleaseOfExpiredSaysReleased,
            extend_after_expiry_is_not_held
        ),
    ]);
}

/// `Held.remaining` 1000 times too short (a unit mix-up): waiters sleep on
/// it, so they poll the store a thousand times too often.
#[derive(Default)]
struct RemainingTooShort;

impl RemainingTooShort {
    fn shrink(outcome: Acquire) -> Acquire {
        match outcome {
            Acquire::Held {
                remaining: Some(left),
            } => Acquire::Held {
                remaining: Some(left / 1000),
            },
            other => other,
        }
    }
}

#[distlock::async_trait]
impl Hooks<MemoryBackend> for RemainingTooShort {
    async fn try_acquire(
        &self,
        inner: &MemoryBackend,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
    ) -> Result<Acquire, BackendError> {
        Ok(Self::shrink(
            inner.try_acquire(key, token, ttl, owner).await?,
        ))
    }

    async fn try_acquire_queued(
        &self,
        inner: &MemoryBackend,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
        waiter: &Waiter,
    ) -> Result<Acquire, BackendError> {
        Ok(Self::shrink(
            inner
                .try_acquire_queued(key, token, ttl, owner, waiter)
                .await?,
        ))
    }
}

#[test]
fn a_held_answer_with_a_wrong_remaining_lease_is_caught() {
    assert_caught::<RemainingTooShort>(&[case!(
        RemainingTooShort,
        acquire_free_then_held_then_free
    )]);
}

#[test]
fn missing_release_notification_is_caught() {
    assert_caught::<NoNotification>(&[
        case!(NoNotification, waiter_woken_by_release_notification),
        case!(
            NoNotification,
            full_length_names_acquire_wait_notify_release
        ),
    ]);
}

#[test]
fn fences_restarting_after_release_are_caught() {
    assert_caught::<FencesRestartAfterRelease>(&[
        case!(FencesRestartAfterRelease, fences_strictly_increase),
        case!(FencesRestartAfterRelease, fences_increase_per_name),
    ]);
}

#[test]
fn release_ignoring_the_token_is_caught() {
    assert_caught::<ReleaseIgnoresToken>(&[case!(
        ReleaseIgnoresToken,
        wrong_token_changes_nothing
    )]);
}

#[test]
fn lease_shorter_than_its_ttl_is_caught() {
    assert_caught::<LeaseShorterThanTtl>(&[case!(
        LeaseShorterThanTtl,
        lock_expires_after_ttl_not_before
    )]);
}

#[test]
fn unreachable_store_misclassified_as_other_is_caught() {
    assert_caught::<UnreachableIsOther>(&[case!(
        UnreachableIsOther,
        unreachable_store_gives_transient_errors
    )]);
}

#[test]
fn a_line_that_hands_nothing_over_is_caught() {
    assert_caught::<NoLine>(&[case!(NoLine, queued_waiters_make_one_attempt_per_release)]);
}

#[test]
fn a_repeated_acquire_that_keeps_the_old_lease_is_caught() {
    assert_caught::<RepeatKeepsOldLease>(&[case!(
        RepeatKeepsOldLease,
        acquire_by_the_holding_token_renews_its_lease
    )]);
}

/// A backend slower than `MIN_TTL` still passes the TTL validation case
/// (it used to need a 10 ms acquire to answer within about 8 ms).
#[test]
fn a_slow_backend_passes_the_ttl_validation_case() {
    assert!(passes::<Faulty<SlowReplies>>(
        "invalid_ttl_rejected_before_backend",
        |h| Box::pin(scenarios::invalid_ttl_rejected_before_backend(h))
    ));
}

/// Claims that expiry does not follow tokio's clock, under a harness that
/// pauses it: the harness and the capabilities disagree.
#[derive(Default)]
struct NotOnTokioClock;

impl Hooks<MemoryBackend> for NotOnTokioClock {
    fn capabilities(&self, inner: &MemoryBackend) -> distlock::Capabilities {
        inner.capabilities().with_tokio_clock(false)
    }
}

#[test]
fn a_paused_clock_without_tokio_clock_fails_every_case_and_the_report() {
    assert!(!passes::<Faulty<NotOnTokioClock>>(
        "acquire_free_then_held_then_free",
        |h| Box::pin(scenarios::acquire_free_then_held_then_free(h))
    ));
    assert!(!passes::<Faulty<NotOnTokioClock>>(
        "capability_report",
        |h| Box::pin(async move {
            let report = CapabilityReport::of(h).await.unwrap();
            assert!(report.is_consistent(), "{report}");
        })
    ));
}

/// Claims a line of waiters and release notifications, but gives waiters
/// in line no watch (they would wait for their next refresh).
#[derive(Default)]
struct NoQueuedWatch;

#[distlock::async_trait]
impl Hooks<MemoryBackend> for NoQueuedWatch {
    async fn watch_queued(
        &self,
        _inner: &MemoryBackend,
        _key: &LockKey,
        _waiter: &Waiter,
    ) -> Result<Option<ReleaseWatch>, BackendError> {
        Ok(None)
    }
}

#[test]
fn a_line_without_queued_watches_is_a_report_problem() {
    assert!(passes::<Faulty<NoQueuedWatch>>("capability_report", |h| {
        Box::pin(async move {
            let report = CapabilityReport::of(h).await.unwrap();
            assert!(!report.is_consistent(), "{report}");
            assert!(report.problems[0].contains("watch_queued"), "{report}");
        })
    }));
    assert!(passes::<Faulty<Correct>>("capability_report", |h| {
        Box::pin(async move {
            let report = CapabilityReport::of(h).await.unwrap();
            assert!(report.is_consistent(), "{report}");
            assert!(report.to_string().contains("waiter_queue=true"), "{report}");
        })
    }));
}

/// The memory backend with only the required hooks: no
/// `registered_waiters` (although it claims release notifications) and no
/// `unreachable_client`.
struct OnlyRequiredHooks(MemoryBackend);

#[distlock_conformance::async_trait]
impl Harness for OnlyRequiredHooks {
    type Backend = MemoryBackend;
    const PAUSED_CLOCK: bool = true;

    async fn setup() -> Result<Self, SetupError> {
        Ok(Self(MemoryBackend::new()))
    }

    async fn client(&self) -> Result<MemoryBackend, BoxError> {
        Ok(self.0.clone())
    }

    async fn expire_now(&self, client: &MemoryBackend, key: &LockKey) -> Result<(), BoxError> {
        client.expire_now(key);
        Ok(())
    }
}

/// A missing `registered_waiters` hook fails the case that needs it (it
/// used to skip that check silently) and is a problem in the report; a
/// missing `unreachable_client` hook is a listed skip.
#[test]
fn missing_hooks_fail_or_show_as_skips() {
    assert!(!passes::<OnlyRequiredHooks>(
        "cancelled_lock_leaves_nothing_behind",
        |h| Box::pin(scenarios::cancelled_lock_leaves_nothing_behind(h))
    ));
    assert!(passes::<OnlyRequiredHooks>("capability_report", |h| {
        Box::pin(async move {
            let report = CapabilityReport::of(h).await.unwrap();
            assert!(!report.is_consistent(), "{report}");
            assert!(
                report.problems[0].contains("registered_waiters"),
                "{report}"
            );
            assert_eq!(
                report.skipped,
                [(
                    "unreachable_store_gives_transient_errors",
                    Need::UnreachableClient
                )],
                "{report}"
            );
        })
    }));
}
