//! Per-name metric labels are opt-in (their own test binary: the switch is
//! process-wide).

use std::time::Duration;

use distlock::{telemetry, LockOptions, Locker};
use distlock_memory::MemoryBackend;
use metrics_util::debugging::DebuggingRecorder;

/// The label sets of every metric recorded by one lock cycle on `name`.
fn labels_of_a_cycle(name: &str) -> Vec<(String, Vec<(String, String)>)> {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let locker = Locker::new(MemoryBackend::new())
                .with_prefix("app")
                .unwrap();
            let opts = LockOptions::default().with_ttl(Duration::from_secs(3));
            let guard = locker.lock_with(name, |_| opts.clone()).await.unwrap();
            guard.release().await.unwrap();
        });
    });
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, _)| {
            let key = key.key();
            let labels = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            (key.name().to_owned(), labels)
        })
        .collect()
}

#[test]
fn lock_names_become_labels_only_when_asked() {
    assert!(!telemetry::lock_name_labels(), "off by default");
    let default = labels_of_a_cycle("order-1");
    assert!(default.len() >= 4, "{default:?}");
    for (name, labels) in &default {
        assert!(
            labels.iter().all(|(k, _)| k != "lock"),
            "{name}: {labels:?}"
        );
    }

    telemetry::set_lock_name_labels(true);
    let named = labels_of_a_cycle("order-2");
    telemetry::set_lock_name_labels(false);
    for (name, labels) in &named {
        let lock = labels
            .iter()
            .find(|(k, _)| k == "lock")
            .map(|(_, v)| v.as_str());
        if name == telemetry::WAITERS {
            assert_eq!(lock, None, "the gauge stays one series");
        } else {
            assert_eq!(lock, Some("app{order-2}"), "{name}: {labels:?}");
        }
    }

    // A hold that starts before the switch ends on the series it started
    // on: the held gauge goes back to 0 there (here, in this one test:
    // the switch is process-wide).
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let locker = Locker::new(MemoryBackend::new());
            let opts = LockOptions::default().with_ttl(Duration::from_secs(3));
            let guard = locker.lock_with("order-3", |_| opts.clone()).await.unwrap();
            telemetry::set_lock_name_labels(true);
            guard.release().await.unwrap();
            telemetry::set_lock_name_labels(false);
        });
    });
    let held: Vec<_> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, _, _, _)| key.key().name() == telemetry::HELD)
        .map(|(key, _, _, value)| (key.key().labels().count(), value))
        .collect();
    assert_eq!(held.len(), 1, "one series: {held:?}");
    assert_eq!(
        held[0],
        (0, metrics_util::debugging::DebugValue::Gauge(0.0.into()))
    );
}
