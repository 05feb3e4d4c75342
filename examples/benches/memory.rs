#![allow(missing_docs)] // criterion_group! generates an undocumented function
//! In-memory figures for BENCHMARKS.md: one uncontended try-lock + release
//! cycle through `Locker<MemoryBackend>` next to `tokio::sync::Mutex`, and 8
//! tasks contending for one name.
//!
//! ```text
//! cargo bench -p distlock-examples --bench memory
//! # the same with distlock's `metrics` feature (no recorder installed)
//! cargo bench -p distlock-examples --bench memory --features metrics
//! ```
//!
//! No `tracing` subscriber is installed, so the uncontended cycle shows the
//! cost of distlock's disabled spans (and, with the feature, of the metric
//! calls without a recorder): see "Overhead of tracing and metrics" in
//! BENCHMARKS.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use distlock::{LockOptions, Locker};
use distlock_memory::MemoryBackend;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn uncontended(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("uncontended cycle");

    let locker = Locker::new(MemoryBackend::new());
    group.bench_function("distlock memory try_lock+release", |b| {
        b.to_async(&rt).iter(|| async {
            let guard = locker.try_lock("bench").await.unwrap().unwrap();
            guard.release().await.unwrap();
        })
    });

    let mutex = tokio::sync::Mutex::new(0u64);
    group.bench_function("tokio::sync::Mutex lock+unlock", |b| {
        b.to_async(&rt).iter(|| async {
            *mutex.lock().await += 1;
        })
    });
    group.finish();
}

/// 8 tasks on a multi-thread runtime each take the lock, bump a counter, and
/// release, `iters` times in total; reported per acquisition.
fn contended(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("8 tasks contending");
    group.sample_size(20);
    let opts = LockOptions::default()
        .with_retry(Duration::from_micros(50), Duration::from_millis(5))
        .with_wait_timeout(Duration::from_secs(60));
    group.bench_function("distlock memory lock+release", |b| {
        b.iter_custom(|iters| {
            let locker = Locker::new(MemoryBackend::new());
            let opts = opts.clone();
            rt.block_on(run_tasks(iters, move |_| {
                let locker = locker.clone();
                let opts = opts.clone();
                async move {
                    let guard = locker
                        .lock_with("contended", |_| opts.clone())
                        .await
                        .unwrap();
                    guard.release().await.unwrap();
                }
            }))
        })
    });
    group.bench_function("tokio::sync::Mutex lock+unlock", |b| {
        b.iter_custom(|iters| {
            let mutex = Arc::new(tokio::sync::Mutex::new(0u64));
            rt.block_on(run_tasks(iters, move |_| {
                let mutex = mutex.clone();
                async move {
                    *mutex.lock().await += 1;
                }
            }))
        })
    });
    group.finish();
}

async fn run_tasks<F, Fut>(iters: u64, op: F) -> Duration
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    const TASKS: u64 = 8;
    let per_task = iters.div_ceil(TASKS);
    let start = Instant::now();
    let handles: Vec<_> = (0..TASKS)
        .map(|t| {
            let op = op.clone();
            tokio::spawn(async move {
                for i in 0..per_task {
                    op(t * per_task + i).await;
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    start.elapsed()
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = uncontended, contended
}
criterion_main!(benches);
