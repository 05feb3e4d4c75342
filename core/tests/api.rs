//! The application-facing API on the memory backend under tokio's paused
//! clock: per-call options merged over the locker's defaults, a type-erased
//! locker that still hears releases, work under a lock with its outcome,
//! the try-lock that reports the holder, and keeping a lock to its lease end.

use std::sync::Arc;
use std::time::Duration;

use distlock::{LockBackend, LockError, LockOptions, Locker, Release, TryLock};
use distlock_memory::MemoryBackend;
use tokio::time::Instant;

const MINUTE: Duration = Duration::from_secs(60);

fn defaults() -> LockOptions {
    LockOptions::default()
        .with_owner("host-a:42")
        .with_ttl(Duration::from_secs(300))
        .with_auto_renew(true)
}

/// Owner, TTL and auto-renew from the locker's defaults survive a per-call
/// change of the wait timeout (they used to fall back to
/// `LockOptions::default()`).
#[tokio::test(start_paused = true)]
async fn per_call_options_start_from_the_lockers_defaults() {
    let locker = Locker::new(MemoryBackend::new())
        .with_defaults(defaults())
        .unwrap();
    let opts = locker.options(|o| o.with_wait_timeout(Duration::ZERO));
    assert_eq!(opts, defaults().with_wait_timeout(Duration::ZERO));

    let guard = locker
        .try_lock_with("job", |o| o.with_wait_timeout(Duration::ZERO))
        .await
        .unwrap()
        .expect("free");
    let info = locker.inspect("job").await.unwrap();
    assert_eq!(
        info.owner.as_deref(),
        Some("host-a:42"),
        "owner from defaults"
    );
    // The default TTL (300 s), not LockOptions::default()'s 30 s.
    assert!(guard.remaining() > Duration::from_secs(290), "{guard:?}");
    // Auto-renew from the defaults: still ours after three TTLs (sleep, so
    // the paused clock runs every renewal on its way).
    tokio::time::sleep(Duration::from_secs(900)).await;
    assert!(guard.is_valid(), "renewed in the background");
    assert!(locker.inspect("job").await.unwrap().held);
    assert_eq!(guard.release().await.unwrap(), Release::Released);

    // lock_with and with_lock_with merge the same way.
    let guard = locker
        .lock_with("job", |o| o.with_wait_timeout(MINUTE))
        .await
        .unwrap();
    assert_eq!(
        locker.inspect("job").await.unwrap().owner.as_deref(),
        Some("host-a:42")
    );
    guard.release().await.unwrap();
    let inspected = locker
        .with_lock_with(
            "job",
            |o| o.with_ttl(Duration::from_secs(20)),
            |lease| async move { lease.remaining() },
        )
        .await
        .unwrap();
    assert!(inspected <= Duration::from_secs(20), "per-call TTL applied");
}

/// How long the waiter took with release notifications on a type-erased
/// backend: the holder releases after a second, and the waiter's polling
/// would only retry after a minute.
async fn handoff_delay<B: LockBackend>(locker: Locker<B>) -> Duration {
    let locker = locker
        .with_defaults(
            LockOptions::default()
                .with_ttl(Duration::from_secs(600))
                .with_wait_timeout(Duration::from_secs(600))
                .with_retry(MINUTE, MINUTE),
        )
        .unwrap();
    let held = locker.try_lock("k").await.unwrap().expect("free");
    let waiter = {
        let locker = locker.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let guard = locker.lock("k").await.unwrap();
            let took = start.elapsed();
            guard.release().await.unwrap();
            took
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    held.release().await.unwrap();
    waiter.await.unwrap()
}

/// `Locker<Arc<dyn LockBackend>>` and `Locker<Box<dyn LockBackend>>`
/// compile, and release notifications reach their waiters: the waiter gets
/// the lock right after the release, long before its one-minute backoff.
#[tokio::test(start_paused = true)]
async fn type_erased_lockers_hear_releases() {
    let erased: Arc<dyn LockBackend> = Arc::new(MemoryBackend::new());
    assert!(erased.capabilities().release_notify, "forwarded");
    let took = handoff_delay(Locker::new(erased)).await;
    assert!(
        took < Duration::from_secs(2),
        "Arc<dyn>: woke after {took:?}"
    );

    let boxed: Box<dyn LockBackend> = Box::new(MemoryBackend::new());
    let took = handoff_delay(Locker::new(boxed)).await;
    assert!(
        took < Duration::from_secs(2),
        "Box<dyn>: woke after {took:?}"
    );
}

/// `guarded` returns the work's value together with "the lease was lost";
/// `with_lock` turns a loss into `NotHeld`; `try_with_lock` flattens the
/// work's own error type.
#[tokio::test(start_paused = true)]
async fn work_under_a_lock_reports_a_lost_lease_with_its_value() {
    let locker = Locker::new(MemoryBackend::new())
        .with_defaults(LockOptions::default().with_ttl(Duration::from_secs(10)))
        .unwrap();
    // The work outlives the lease (no renewal).
    let slow = |lease: distlock::Lease| async move {
        tokio::time::sleep(Duration::from_secs(11)).await;
        lease.fence()
    };

    let done = locker.guarded("job", slow).await.unwrap();
    assert!(!done.lease_held);
    assert!(done.value > 0, "the value is kept");
    assert!(matches!(done.into_result(), Err(LockError::NotHeld { .. })));

    let err = locker.with_lock("job", slow).await.unwrap_err();
    assert!(matches!(err, LockError::NotHeld { .. }), "{err:?}");

    let fast = locker.guarded("job", |_| async { 7 }).await.unwrap();
    assert!(fast.lease_held);
    assert_eq!(fast.into_result().unwrap(), 7);

    #[derive(Debug)]
    enum JobError {
        Lock(LockError),
        Work(&'static str),
    }
    impl From<LockError> for JobError {
        fn from(e: LockError) -> Self {
            JobError::Lock(e)
        }
    }
    let ok: Result<u32, JobError> = locker.try_with_lock("job", |_| async { Ok(3) }).await;
    assert_eq!(ok.unwrap(), 3);
    let failed: Result<u32, JobError> = locker
        .try_with_lock("job", |_| async { Err(JobError::Work("declined")) })
        .await;
    assert!(matches!(failed, Err(JobError::Work("declined"))));
    let lost: Result<u64, JobError> = locker
        .try_with_lock("job", |lease| async move { Ok(slow(lease).await) })
        .await;
    assert!(
        matches!(lost, Err(JobError::Lock(LockError::NotHeld { .. }))),
        "{lost:?}"
    );
    // A lock that cannot be taken is the converted LockError.
    let _held = locker.try_lock("busy").await.unwrap().unwrap();
    let busy: Result<(), JobError> = locker
        .try_with_lock_with(
            "busy",
            |o| o.with_wait_timeout(Duration::ZERO),
            |_| async { Ok(()) },
        )
        .await;
    assert!(
        matches!(busy, Err(JobError::Lock(LockError::TimedOut { .. }))),
        "{busy:?}"
    );
}

/// A busy lock reports the holder's remaining lease from the acquire reply.
#[tokio::test(start_paused = true)]
async fn try_lock_or_holder_reports_the_holders_remaining_lease() {
    let locker = Locker::new(MemoryBackend::new());
    let held = locker
        .try_lock_with("report", |o| o.with_ttl(Duration::from_secs(100)))
        .await
        .unwrap()
        .unwrap();
    tokio::time::advance(Duration::from_secs(40)).await;
    match locker.try_lock_or_holder("report", |o| o).await.unwrap() {
        TryLock::Held(holder) => {
            assert_eq!(holder.name, "report");
            assert_eq!(holder.remaining, Some(Duration::from_secs(60)));
        }
        TryLock::Acquired(g) => panic!("held, yet acquired {g:?}"),
    }
    held.release().await.unwrap();
    let guard = locker
        .try_lock_or_holder("report", |o| o)
        .await
        .unwrap()
        .guard()
        .expect("free after the release");
    guard.release().await.unwrap();
}

/// "Run tonight's report once": after a successful run the lock is kept for
/// the rest of the day, so a second run that day finds it held, even after
/// the first one ended; a failed run releases it so a retry can run.
#[tokio::test(start_paused = true)]
async fn a_kept_lock_makes_later_runs_within_its_lease_skip() {
    let locker = Locker::new(MemoryBackend::new())
        .with_defaults(
            LockOptions::default()
                .with_ttl(Duration::from_secs(30))
                .with_auto_renew(true),
        )
        .unwrap();
    let day = Duration::from_secs(24 * 3600);
    let guard = locker.try_lock("report:2026-11-30").await.unwrap().unwrap();
    // ... the report ran ...
    guard.keep_for(day - MINUTE).await.unwrap();

    // Later the same day: a second run (another process, or a retry of this
    // one) finds the report done.
    tokio::time::advance(Duration::from_secs(12 * 3600)).await;
    assert!(locker
        .try_lock("report:2026-11-30")
        .await
        .unwrap()
        .is_none());
    // The next day's name is free.
    let next = locker.try_lock("report:2026-12-01").await.unwrap();
    assert!(next.is_some());
    // The kept lock frees itself when its lease ends.
    tokio::time::advance(day).await;
    assert!(locker
        .try_lock("report:2026-11-30")
        .await
        .unwrap()
        .is_some());

    // keep(): the current lease, without extending it.
    let g = locker.try_lock("k").await.unwrap().unwrap();
    g.keep();
    tokio::time::advance(Duration::from_secs(20)).await;
    assert!(locker.try_lock("k").await.unwrap().is_none(), "still held");
    tokio::time::advance(Duration::from_secs(11)).await;
    assert!(
        locker.try_lock("k").await.unwrap().is_some(),
        "not renewed after keep()"
    );
}

/// `Arc` and `Box` forward the line of waiters (`try_acquire_queued`,
/// `watch_queued`): a type-erased locker's waiter takes a place in the
/// memory backend's line, and the release hands the lock straight to it
/// (at once on the paused clock; without the queued watch it would wait
/// for its next refresh).
#[tokio::test(start_paused = true)]
async fn arc_and_box_forward_the_line_of_waiters() {
    let store = MemoryBackend::new();
    let erased: [Arc<dyn LockBackend>; 2] = [
        Arc::new(store.clone()),
        Arc::new(Box::new(store.clone()) as Box<dyn LockBackend>),
    ];
    for backend in erased {
        assert!(backend.capabilities().waiter_queue);
        let holder = Locker::new(store.clone());
        let waiter = Locker::new(backend);
        let key = holder.key("line").unwrap();
        let held = holder.try_lock("line").await.unwrap().unwrap();
        let task = tokio::spawn(async move {
            let guard = waiter
                .lock_with("line", |o| o.with_wait_timeout(MINUTE))
                .await;
            (guard, Instant::now())
        });
        while store.queued_waiters(&key) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let released_at = Instant::now();
        assert_eq!(held.release().await.unwrap(), Release::Released);
        let (guard, acquired_at) = task.await.unwrap();
        assert_eq!(acquired_at, released_at, "handed over at once");
        assert_eq!(guard.unwrap().release().await.unwrap(), Release::Released);
        assert_eq!(store.queued_waiters(&key), 0);
    }
}
