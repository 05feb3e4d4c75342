//! Lock names and prefixes.

use std::time::Duration;

use distlock::{
    LockBackend, LockError, LockOptions, Locker, Release, MAX_ENCODED_KEY_LEN, MAX_NAME_LEN,
    MAX_PREFIX_LEN,
};
use rand::Rng;
use tokio::time::Instant;

use crate::counting::Counted;
use crate::support::{assert_within, client, is_held, locker};
use crate::{unique_name, Harness};

/// A unique name padded with `x` to exactly `len` bytes.
fn name_of_len(case: &str, len: usize) -> String {
    let mut name = unique_name(case);
    assert!(name.len() <= len);
    name.extend(std::iter::repeat_n('x', len - name.len()));
    name
}

/// Asserts that `result` is an `InvalidName` error.
fn assert_invalid_name<T: std::fmt::Debug>(what: &str, result: Result<T, LockError>) {
    assert!(
        matches!(result, Err(LockError::InvalidName { .. })),
        "{what}: expected InvalidName, got {result:?}"
    );
}

/// Empty, over-long, NUL-containing and non-UTF-8 names are refused with
/// `InvalidName` by every entry point, and never reach the backend.
pub async fn invalid_names_are_rejected<H: Harness>(h: &H) {
    let counting = Counted::new(client(h).await);
    let l = Locker::new(counting.backend.clone());
    let too_long = name_of_len("too-long", MAX_NAME_LEN + 1);
    let bad: [&[u8]; 4] = [b"", too_long.as_bytes(), b"a\0b", b"\xff\xfe"];
    for name in bad {
        let shown = String::from_utf8_lossy(&name[..name.len().min(20)]).into_owned();
        assert_invalid_name(&format!("try_lock({shown:?})"), l.try_lock(name).await);
        assert_invalid_name(&format!("lock({shown:?})"), l.lock(name).await);
        assert_invalid_name(
            &format!("with_lock({shown:?})"),
            l.with_lock(name, |_| async {}).await,
        );
        assert_invalid_name(&format!("inspect({shown:?})"), l.inspect(name).await);
        assert_invalid_name(&format!("key({shown:?})"), l.key(name));
    }
    assert_eq!(counting.calls(), 0, "an invalid name reached the backend");
}

/// Long names (1 KiB and `MAX_NAME_LEN`), Unicode and characters that
/// mean something to key-value stores all work as lock names.
pub async fn unusual_names_work<H: Harness>(h: &H) {
    let a = locker(h).await;
    let b = locker(h).await;
    let base = unique_name("odd");
    let mut names = vec![name_of_len("1k", 1024), name_of_len("max", MAX_NAME_LEN)];
    for suffix in [
        "ключ-鍵-🔒-é",
        "{",
        "}",
        "a{b}c",
        "}{",
        ":",
        "a:b:c",
        "*",
        "[a-z]?",
        " ",
        "with  spaces ",
        "%7D",
        "%",
        "tab\tnewline\n",
        "\"quoted'\\",
    ] {
        names.push(format!("{base}{suffix}"));
    }
    let mut guards = Vec::new();
    for name in &names {
        let guard = a
            .try_lock(name)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{name:?} is free"));
        assert_eq!(guard.name(), name);
        assert!(is_held(&b, name).await, "{name:?} shows as held");
        assert!(
            b.try_lock(name).await.unwrap().is_none(),
            "{name:?} is held"
        );
        guards.push(guard);
    }
    // All of them were held at once: no two share a key.
    for guard in guards {
        assert_eq!(guard.release().await.unwrap(), Release::Released);
    }
    for name in &names {
        assert!(!is_held(&b, name).await, "{name:?} is free after release");
        let again = b.try_lock(name).await.unwrap();
        assert!(again.is_some(), "{name:?} can be taken again");
    }
}

/// Names differing only in case are different locks.
pub async fn names_are_case_sensitive<H: Harness>(h: &H) {
    let a = locker(h).await;
    let b = locker(h).await;
    let base = unique_name("case");
    let lower = format!("{base}lock");
    let upper = format!("{base}LOCK");
    let mixed = format!("{base}Lock");
    let g1 = a.try_lock(&lower).await.unwrap().expect("free");
    let g2 = b.try_lock(&upper).await.unwrap().expect("another lock");
    let g3 = b.try_lock(&mixed).await.unwrap().expect("another lock");
    for guard in [g1, g2, g3] {
        assert_eq!(guard.release().await.unwrap(), Release::Released);
    }
}

/// Lockers with different prefixes never share a lock, however prefix and
/// name are split; lockers with the same prefix do share.
pub async fn prefixes_never_collide<H: Harness>(h: &H) {
    let u = unique_name("prefix");
    let pairs = [
        (
            (format!("{u}-one"), "job".to_owned()),
            (format!("{u}-two"), "job".to_owned()),
        ),
        (
            (format!("{u}a"), "b:c".to_owned()),
            (format!("{u}a:b"), "c".to_owned()),
        ),
        (
            (format!("{u}a"), "b".to_owned()),
            (u.clone(), "a}{b".to_owned()),
        ),
        (
            (format!("{u}a{{"), "b".to_owned()),
            (format!("{u}a"), "{b".to_owned()),
        ),
        (
            (format!("{u}a}}"), "b".to_owned()),
            (format!("{u}a"), "}b".to_owned()),
        ),
        (
            (format!("{u}a"), "b".to_owned()),
            (String::new(), format!("{u}a{{b}}")),
        ),
        (
            (String::new(), format!("{u}x:y")),
            (format!("{u}x"), "y".to_owned()),
        ),
    ];
    for ((p1, n1), (p2, n2)) in pairs {
        let first = locker(h).await.with_prefix(p1.clone()).unwrap();
        let second = locker(h).await.with_prefix(p2.clone()).unwrap();
        let g1 = first.try_lock(&n1).await.unwrap().expect("free");
        let g2 = second.try_lock(&n2).await.unwrap().unwrap_or_else(|| {
            panic!("prefix {p2:?} + name {n2:?} collides with prefix {p1:?} + name {n1:?}")
        });
        assert!(is_held(&first, &n1).await && is_held(&second, &n2).await);
        assert_eq!(g1.release().await.unwrap(), Release::Released);
        assert!(is_held(&second, &n2).await, "releasing one freed the other");
        assert_eq!(g2.release().await.unwrap(), Release::Released);
    }

    // The same prefix is the same namespace, across clients.
    let shared = format!("{u}-shared");
    let first = locker(h).await.with_prefix(shared.clone()).unwrap();
    let second = locker(h).await.with_prefix(shared).unwrap();
    let guard = first.try_lock("job").await.unwrap().expect("free");
    assert!(
        second.try_lock("job").await.unwrap().is_none(),
        "same prefix, same lock"
    );
    assert_eq!(guard.release().await.unwrap(), Release::Released);
}

/// `len` bytes of random printable ASCII (space to `~`): incompressible,
/// and full of characters the key encoding escapes.
fn random_ascii(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(rng.random_range(0x20u8..=0x7e)))
        .collect()
}

/// Exactly `len` bytes (`len` >= 2) of random non-ASCII characters of two,
/// three and four bytes: every byte is escaped, so the encoded form is
/// three times as long.
fn random_multibyte(len: usize) -> String {
    let mut rng = rand::rng();
    let mut out = String::with_capacity(len);
    let pick = |rng: &mut rand::rngs::ThreadRng, width: usize| -> char {
        let range = match width {
            2 => 0x80..=0x7ff,
            3 => 0x800..=0xffff,
            _ => 0x1_0000..=0x10_ffff,
        };
        loop {
            if let Some(c) = char::from_u32(rng.random_range(range.clone())) {
                return c;
            }
        }
    };
    while out.len() < len {
        let left = len - out.len();
        let width = match left {
            2..=4 => left,
            5 => 2,
            _ => rng.random_range(2..=4usize),
        };
        out.push(pick(&mut rng, width));
    }
    debug_assert_eq!(out.len(), len);
    out
}

/// Full-length, incompressible names (random ASCII, random multi-byte)
/// under full-length prefixes work through acquire, inspect, a waiting
/// `lock()`, the release notification (when the backend has them),
/// extend and release. The all-multi-byte pair encodes to exactly
/// `MAX_ENCODED_KEY_LEN` bytes.
pub async fn full_length_names_acquire_wait_notify_release<H: Harness>(h: &H) {
    let slack = h.timing_slack();
    let cases = [
        (random_ascii(MAX_PREFIX_LEN), random_ascii(MAX_NAME_LEN)),
        (
            random_multibyte(MAX_PREFIX_LEN),
            random_multibyte(MAX_NAME_LEN),
        ),
        (String::new(), random_multibyte(MAX_NAME_LEN)),
    ];
    for (i, (prefix, name)) in cases.into_iter().enumerate() {
        let what = format!("full-length name #{i}");
        let holder = locker(h).await.with_prefix(prefix.clone()).unwrap();
        let waiter = locker(h).await.with_prefix(prefix.clone()).unwrap();
        let notify = waiter.backend().capabilities().release_notify;
        let key = holder.key(&name).unwrap();
        assert!(key.encoded().len() <= MAX_ENCODED_KEY_LEN);
        if i == 1 {
            assert_eq!(key.encoded().len(), MAX_ENCODED_KEY_LEN, "{what}");
        }

        let guard = holder
            .try_lock(&name)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{what} is free"));
        assert!(is_held(&waiter, &name).await, "{what} shows as held");
        assert!(waiter.try_lock(&name).await.unwrap().is_none(), "{what}");

        // A waiter that polls only every 5 s when notifications exist, so
        // that it is the notification that wakes it.
        let retry = if notify {
            (Duration::from_secs(5), Duration::from_secs(5))
        } else {
            (Duration::from_millis(5), Duration::from_millis(50))
        };
        let opts = LockOptions::default()
            .with_ttl(Duration::from_secs(10))
            .with_wait_timeout(Duration::from_secs(20) + slack)
            .with_retry(retry.0, retry.1);
        let task = {
            let (waiter, name) = (waiter.clone(), name.clone());
            tokio::spawn(async move {
                let got = waiter.lock_with(&name, |_| opts.clone()).await;
                (got, Instant::now())
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!task.is_finished(), "{what}: the waiter must wait");
        let released_at = Instant::now();
        assert_eq!(guard.release().await.unwrap(), Release::Released, "{what}");
        let (got, acquired_at) = task.await.unwrap();
        let mut got = got.unwrap_or_else(|e| panic!("{what}: the waiter acquires: {e}"));
        if notify {
            // At once on a paused clock: a waiter in a backend's line calls
            // again every third of WAITER_LEASE anyway, well within the
            // slack, so only the exact bound shows a missing notification.
            let bound = if H::PAUSED_CLOCK {
                Duration::from_millis(1)
            } else {
                slack
            };
            assert_within(
                &format!("{what}: notified hand-over"),
                acquired_at.saturating_duration_since(released_at),
                bound,
            );
        }
        assert_eq!(got.name(), name);
        got.extend(Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("{what}: extend: {e}"));
        assert_eq!(got.release().await.unwrap(), Release::Released, "{what}");
        assert!(!is_held(&holder, &name).await, "{what} is free at the end");
    }
}
