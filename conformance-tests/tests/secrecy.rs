//! Secrets stay secret: lock tokens are 128 random bits from a CSPRNG, and
//! `Debug`, `Display`, log output (events and the fields of every span:
//! acquire, extend, renewal, release) and metric labels never show more
//! than their first four hex digits. (Passwords are covered in distlock-redis's `security` tests.) It lives
//! here, beside `log_capture`, because it needs the core crate and a backend.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use distlock::{
    async_trait, Acquire, BackendError, Capabilities, Extend, LockBackend, LockInfo, LockKey,
    LockOptions, LockToken, Locker, Release, ReleaseWatch,
};
use distlock_conformance::log_capture::LogCapture;
use distlock_memory::MemoryBackend;

/// The longest run of consecutive hex digits in `text`.
fn longest_hex_run(text: &str) -> usize {
    let (mut best, mut run) = (0, 0);
    for c in text.chars() {
        if c.is_ascii_hexdigit() {
            run += 1;
            best = best.max(run);
        } else {
            run = 0;
        }
    }
    best
}

/// Whether `text` contains any `window` consecutive hex digits of `token`.
fn leaks(text: &str, token: &str, window: usize) -> bool {
    (0..=token.len() - window).any(|i| text.contains(&token[i..i + window]))
}

/// Every place `text` shows a token (`LockToken(…)` or `token=…`) shows
/// exactly four hex digits and an ellipsis.
fn tokens_shown_short(text: &str) -> usize {
    let mut shown = 0;
    for marker in ["LockToken(", "token="] {
        for (at, _) in text.match_indices(marker) {
            let rest = &text[at + marker.len()..];
            let digits = rest.chars().take_while(char::is_ascii_hexdigit).count();
            assert_eq!(digits, 4, "a token shown with {digits} digits: {rest:.40}");
            assert!(rest[4..].starts_with('…'), "{rest:.40}");
            shown += 1;
        }
    }
    shown
}

#[test]
fn token_debug_and_display_show_at_most_four_hex_digits() {
    for _ in 0..1000 {
        let t = LockToken::generate();
        let hex = t.as_hex().to_owned();
        for shown in [
            format!("{t:?}"),
            format!("{t:#?}"),
            format!("{t}"),
            format!("{t:>64}"),
            format!("{t:<64}"),
            format!("{:?}", Some(&t)),
            format!("{:?}", vec![t.clone()]),
        ] {
            assert!(longest_hex_run(&shown) <= 4, "{shown}");
            // No other digits are printed, so 5 of the token is a leak.
            assert!(!leaks(&shown, &hex, 5), "{shown} shows part of {hex}");
        }
        assert_eq!(t.short(), &hex[..4]);
    }
}

#[test]
fn tokens_are_128_random_bits() {
    const N: usize = 10_000;
    let mut seen = HashSet::with_capacity(N);
    let mut ones_at = [0u32; 128];
    let mut halves = HashSet::with_capacity(2 * N);
    for _ in 0..N {
        let t = LockToken::generate();
        let hex = t.as_hex();
        assert_eq!(hex.len(), 32, "{hex}");
        assert!(hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        let value = u128::from_str_radix(hex, 16).unwrap();
        assert_eq!(LockToken::from_u128(value), t, "hex round trip");
        for (bit, count) in ones_at.iter_mut().enumerate() {
            *count += ((value >> bit) & 1) as u32;
        }
        assert!(seen.insert(value), "a token repeated");
        // Neither half repeats either: all 128 bits are random.
        assert!(halves.insert((0, (value >> 64) as u64)));
        assert!(halves.insert((1, value as u64)));
    }
    // Every bit position is set in about half the tokens: N/2 = 5000 with
    // a standard deviation of 50; 7 sigma never fails by chance.
    for (bit, &count) in ones_at.iter().enumerate() {
        assert!(
            (4650..=5350).contains(&count),
            "bit {bit} set in {count} of {N} tokens"
        );
    }
    let total: u32 = ones_at.iter().sum();
    // 1,280,000 bits, mean 640,000, sigma about 566.
    assert!((636_000..=644_000).contains(&total), "{total} ones");
}

/// Records every token a backend is handed, to check that none leaks.
#[derive(Clone, Default)]
struct Recording {
    inner: MemoryBackend,
    tokens: Arc<Mutex<Vec<String>>>,
}

impl Recording {
    fn record(&self, token: &LockToken) {
        let mut tokens = self.tokens.lock().unwrap();
        if !tokens.iter().any(|t| t == token.as_hex()) {
            tokens.push(token.as_hex().to_owned());
        }
    }
}

#[async_trait]
impl LockBackend for Recording {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn try_acquire(
        &self,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
        owner: Option<&str>,
    ) -> Result<Acquire, BackendError> {
        self.record(token);
        self.inner.try_acquire(key, token, ttl, owner).await
    }
    async fn extend(
        &self,
        key: &LockKey,
        token: &LockToken,
        ttl: Duration,
    ) -> Result<Extend, BackendError> {
        self.record(token);
        self.inner.extend(key, token, ttl).await
    }
    async fn release(&self, key: &LockKey, token: &LockToken) -> Result<Release, BackendError> {
        self.record(token);
        self.inner.release(key, token).await
    }
    async fn inspect(&self, key: &LockKey) -> Result<LockInfo, BackendError> {
        self.inner.inspect(key).await
    }
    async fn watch(&self, key: &LockKey) -> Result<Option<ReleaseWatch>, BackendError> {
        self.inner.watch(key).await
    }
}

#[test]
fn guards_errors_and_logs_never_show_a_full_token() {
    let capture = LogCapture::default();
    let _default = tracing::subscriber::set_default(capture.clone());
    let backend = Recording::default();
    let tokens = backend.tokens.clone();
    // One thread, so the background release task logs to this subscriber.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut shown = Vec::new();
    // Metrics too, with the opt-in per-name labels (the only labels that
    // carry anything from the lock).
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    distlock::telemetry::set_lock_name_labels(true);
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let locker = Locker::new(backend).with_prefix("secrecy").unwrap();
            let opts = LockOptions::default()
                .with_ttl(Duration::from_millis(300))
                .with_auto_renew(true)
                .with_owner("tester");

            let mut guard = locker.lock_with("a", |_| opts.clone()).await.unwrap();
            // Shorter than the TTL, so renewal (which never shortens a
            // longer lease) runs below.
            guard.extend(Duration::from_millis(250)).await.unwrap();
            shown.push(format!("{guard:?} {guard:#?}"));
            shown.push(format!("{:?}", guard.lease()));
            shown.push(format!("{locker:?}"));
            shown.push(format!("{:?}", locker.inspect("a").await.unwrap()));
            // Renewals run (every TTL/3) while the guard is held.
            tokio::time::sleep(Duration::from_millis(400)).await;
            // Lost: the lock is taken away; extend fails with NotHeld.
            locker.backend().inner.expire_now(&locker.key("a").unwrap());
            let thief = locker.try_lock("a").await.unwrap().expect("free again");
            let err = guard.extend(Duration::from_secs(1)).await.unwrap_err();
            shown.push(format!("{err} {err:?}"));
            shown.push(format!("{:?}", guard.release().await));
            // Dropped without release: released in the background, which logs.
            drop(thief);
            let g = locker.lock("b").await.unwrap();
            drop(g);
            tokio::time::sleep(Duration::from_millis(50)).await;
            let value = locker
                .with_lock("c", |lease| async move { format!("{lease:?}") })
                .await
                .unwrap();
            shown.push(value);
        })
    });
    drop(rt);
    distlock::telemetry::set_lock_name_labels(false);
    for (key, _, _, _) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        shown.push(format!("{} {}", key.name(), labels.join(",")));
    }
    assert!(
        shown.iter().any(|s| s.contains("lock=secrecy{a}")),
        "the metrics were recorded: {shown:?}"
    );
    let log = capture.text();
    println!("captured log:\n{log}");
    let tokens = tokens.lock().unwrap().clone();
    assert!(tokens.len() >= 4, "{tokens:?}");
    // The capture saw every span and the loss (so the checks below cover
    // their fields).
    let spans = capture.spans();
    for name in ["acquire", "extend", "renewal", "release"] {
        assert!(spans.iter().any(|s| s.name == name), "no {name} span");
    }
    assert!(spans.iter().any(|s| s.field("background") == Some("true")));
    assert!(
        capture
            .events()
            .iter()
            .any(|e| e.message() == Some("lease lost")),
        "no lease lost event"
    );
    assert!(
        log.contains("background release"),
        "the capture must see the library's own events"
    );
    // Texts also hold other numbers (instants, durations), so look for 8
    // digits of a token anywhere (a chance match is about 1 in 10^5), and
    // check that every token field shows exactly 4.
    let fields: usize = shown
        .iter()
        .chain([&log])
        .map(|t| tokens_shown_short(t))
        .sum();
    assert!(fields >= 3, "token fields seen: {fields}");
    let mut short_forms = 0;
    for token in &tokens {
        for text in shown.iter().chain([&log]) {
            assert!(!leaks(text, token, 8), "part of a token in: {text}");
        }
        if log.contains(&token[..4]) {
            short_forms += 1;
        }
    }
    assert!(short_forms >= 1, "the short form is what logs show");
    for text in &shown {
        println!("{text}");
    }
}
