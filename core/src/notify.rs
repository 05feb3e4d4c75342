//! Release notifications: how a backend wakes the waiters of its process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest as _, Sha256};
use tokio::sync::Notify;

use crate::backend::WaiterId;
use crate::key::LockKey;

/// A key's [`LockKey::digest`]: what the hub is keyed by.
type KeyDigest = [u8; 32];

/// The digest of an encoded key, as [`LockKey::digest`] computes it.
fn digest_of(encoded_key: &str) -> KeyDigest {
    Sha256::digest(encoded_key.as_bytes()).into()
}

/// Fans release events out to the waiters of one backend instance.
///
/// A backend with [`Capabilities::release_notify`](crate::Capabilities) owns
/// one hub, returns [`ReleaseHub::watch`] from
/// [`LockBackend::watch`](crate::LockBackend::watch), and calls
/// [`ReleaseHub::notify`] whenever it learns that a key was released (by its
/// own process or, through the server, by another). Each event wakes **one**
/// watcher of the key; [`Locker`](crate::Locker) lets only the first waiter
/// of a key in a process watch, so a release costs one retry per process, not
/// one per waiting task.
///
/// Events are addressed by the key's [`encoded`](LockKey::encoded) form
/// ([`ReleaseHub::notify`]) or by its [`digest`](LockKey::digest)
/// ([`ReleaseHub::notify_digest`]), whichever the store's notifications
/// carry; both find the watchers directly, without a scan.
///
/// An event with nobody watching is kept for the next watcher of that key
/// only while someone is registered; keys nobody watches take no memory.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use distlock::{LockKey, ReleaseHub};
///
/// let hub = ReleaseHub::new();
/// let key = LockKey::new("app", "job").unwrap();
/// let mut watch = hub.watch(&key);
/// // A store whose notification carries the key's digest (say, as hex):
/// let payload = key.digest_hex();
/// assert!(hub.notify_digest_hex(&payload));
/// watch.released().await; // completes: the event was kept for the watcher
/// # }
/// ```
#[derive(Clone, Default)]
pub struct ReleaseHub {
    keys: Arc<Mutex<HashMap<KeyDigest, Entry>>>,
}

struct Entry {
    encoded: String,
    /// Shared by the plain watchers of the key.
    notify: Arc<Notify>,
    /// Every watcher of the key, plain and queued.
    watchers: usize,
    /// The queued watchers ([`ReleaseHub::watch_waiter`]), each with its own
    /// wake-up.
    queued: Vec<(WaiterId, Arc<Notify>)>,
}

impl ReleaseHub {
    /// A hub with no watchers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a watcher of `key`. The registration is in place when this
    /// returns and ends when the [`ReleaseWatch`] is dropped.
    pub fn watch(&self, key: &LockKey) -> ReleaseWatch {
        let digest = key.digest();
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = Entry::of(&mut keys, key, digest);
        ReleaseWatch {
            hub: self.clone(),
            key: digest,
            notify: entry.notify.clone(),
            waiter: None,
        }
    }

    /// Registers the watcher of one waiter in a backend's line for `key`
    /// ([`LockBackend::watch_queued`](crate::LockBackend::watch_queued)):
    /// woken by [`ReleaseHub::notify_waiter`] for exactly this `waiter`,
    /// and by every event for the key ([`ReleaseHub::notify`] and the
    /// others), since those mean that the key was freed without a handover
    /// to this waiter. In place when this returns; ends when the
    /// [`ReleaseWatch`] is dropped.
    pub fn watch_waiter(&self, key: &LockKey, waiter: WaiterId) -> ReleaseWatch {
        let digest = key.digest();
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = Entry::of(&mut keys, key, digest);
        let notify = Arc::new(Notify::new());
        entry.queued.push((waiter, notify.clone()));
        ReleaseWatch {
            hub: self.clone(),
            key: digest,
            notify,
            waiter: Some(waiter),
        }
    }

    /// Reports that the key whose [`LockKey::encoded`] form is `encoded_key`
    /// was handed over to `waiter`. Wakes that waiter's watch only, and
    /// returns whether it is registered here.
    pub fn notify_waiter(&self, encoded_key: &str, waiter: WaiterId) -> bool {
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        // Nobody watches anything (the uncontended case): no digest needed.
        if keys.is_empty() {
            return false;
        }
        let Some(entry) = keys.get(&digest_of(encoded_key)) else {
            return false;
        };
        match entry.queued.iter().find(|(id, _)| *id == waiter) {
            Some((_, notify)) => {
                notify.notify_one();
                true
            }
            None => false,
        }
    }

    /// Reports that the key whose [`LockKey::encoded`] form is `encoded_key`
    /// was released. Wakes one plain watcher and every queued watcher
    /// ([`ReleaseHub::watch_waiter`]); does nothing if nobody watches.
    pub fn notify(&self, encoded_key: &str) {
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        // Nobody watches anything (the uncontended case): the SHA-256 of
        // the key, a few thousand instructions per release, is not needed.
        if keys.is_empty() {
            return;
        }
        if let Some(entry) = keys.get(&digest_of(encoded_key)) {
            entry.wake();
        }
    }

    /// Reports that the key whose [`LockKey::digest`] is `digest` was
    /// released: for stores whose notifications carry the digest (fixed
    /// size) instead of the key. Wakes one watcher; does nothing if nobody
    /// watches. Returns whether anyone watched the key.
    pub fn notify_digest(&self, digest: &[u8; 32]) -> bool {
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        match keys.get(digest) {
            Some(entry) => {
                entry.wake();
                true
            }
            None => false,
        }
    }

    /// [`ReleaseHub::notify_digest`] for a digest in [`LockKey::digest_hex`]
    /// form (64 hex digits, either case). Returns false, and wakes nobody,
    /// for text that is not such a digest or a key nobody watches.
    pub fn notify_digest_hex(&self, hex: &str) -> bool {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return false;
        }
        let mut digest = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let (Some(hi), Some(lo)) = (hex_value(pair[0]), hex_value(pair[1])) else {
                return false;
            };
            digest[i] = (hi << 4) | lo;
        }
        self.notify_digest(&digest)
    }

    /// Wakes one watcher of every watched key: for a backend that may have
    /// missed release events (its notification connection was down), so
    /// each waiting process retries once instead of waiting for its backoff.
    pub fn notify_all(&self) {
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        for entry in keys.values() {
            entry.wake();
        }
    }

    /// Whether anyone watches the key whose [`LockKey::encoded`] form is
    /// `encoded_key`, i.e. whether a task of this process waits for it.
    pub fn is_watched(&self, encoded_key: &str) -> bool {
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        // Nobody watches anything (the uncontended case): no digest needed.
        !keys.is_empty() && keys.contains_key(&digest_of(encoded_key))
    }

    /// The [`LockKey::encoded`] forms of every key watched right now (for a
    /// backend that subscribes per key, to re-subscribe after a reconnect).
    pub fn watched_keys(&self) -> Vec<String> {
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        keys.values().map(|e| e.encoded.clone()).collect()
    }

    /// How many watchers are registered, over all keys. Used by tests to
    /// check that cancelled waiters leave nothing behind.
    pub fn watcher_count(&self) -> usize {
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        keys.values().map(|e| e.watchers).sum()
    }
}

impl std::fmt::Debug for ReleaseHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleaseHub")
            .field("watchers", &self.watcher_count())
            .finish()
    }
}

impl Entry {
    /// The entry of `key` (made if missing), with one more watcher counted.
    fn of<'a>(
        keys: &'a mut HashMap<KeyDigest, Entry>,
        key: &LockKey,
        digest: KeyDigest,
    ) -> &'a mut Entry {
        let entry = keys.entry(digest).or_insert_with(|| Entry {
            encoded: key.encoded().to_owned(),
            notify: Arc::new(Notify::new()),
            watchers: 0,
            queued: Vec::new(),
        });
        entry.watchers += 1;
        entry
    }

    /// Wakes one plain watcher (if any) and every queued one.
    fn wake(&self) {
        if self.watchers > self.queued.len() {
            self.notify.notify_one();
        }
        for (_, notify) in &self.queued {
            notify.notify_one();
        }
    }
}

/// One hex digit's value.
fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// One registration for release events of one key; see [`ReleaseHub`].
pub struct ReleaseWatch {
    hub: ReleaseHub,
    key: KeyDigest,
    notify: Arc<Notify>,
    /// Set for a queued watcher ([`ReleaseHub::watch_waiter`]).
    waiter: Option<WaiterId>,
}

impl ReleaseWatch {
    /// Waits for a release event. An event that arrived since the last call
    /// (while this watcher was busy) completes it at once. Cancel safe.
    pub async fn released(&mut self) {
        self.notify.notified().await;
    }
}

impl std::fmt::Debug for ReleaseWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = self.hub.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let encoded = keys.get(&self.key).map(|e| e.encoded.as_str());
        f.debug_struct("ReleaseWatch")
            .field("key", &encoded)
            .field("waiter", &self.waiter)
            .finish()
    }
}

impl Drop for ReleaseWatch {
    fn drop(&mut self) {
        let mut keys = self.hub.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = keys.get_mut(&self.key) {
            entry.watchers -= 1;
            if let Some(waiter) = self.waiter {
                entry.queued.retain(|(id, _)| *id != waiter);
            }
            if entry.watchers == 0 {
                keys.remove(&self.key);
            } else if self.waiter.is_none() && Arc::strong_count(&self.notify) > 1 {
                // Pass a wake-up we may have consumed on to the next watcher.
                entry.notify.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_by_key_digest_and_hex_reach_the_watcher() {
        let hub = ReleaseHub::new();
        let key = LockKey::new("p", "ключ").unwrap();
        let other = LockKey::new("p", "other").unwrap();
        let mut watch = hub.watch(&key);
        assert!(hub.is_watched(key.encoded()));
        assert_eq!(hub.watched_keys(), vec![key.encoded().to_owned()]);
        assert!(!hub.notify_digest(&other.digest()), "nobody watches other");
        assert!(!hub.notify_digest_hex("zz"), "not a digest");
        hub.notify(key.encoded());
        watch.released().await;
        assert!(hub.notify_digest(&key.digest()));
        watch.released().await;
        assert!(hub.notify_digest_hex(&key.digest_hex().to_uppercase()));
        watch.released().await;
        drop(watch);
        assert_eq!(hub.watcher_count(), 0);
        assert!(!hub.is_watched(key.encoded()));
    }

    #[tokio::test]
    async fn a_handover_wakes_only_its_waiter_and_a_release_wakes_all_queued() {
        use std::future::Future as _;
        use std::task::{Context, Poll};

        let hub = ReleaseHub::new();
        let key = LockKey::new("p", "k").unwrap();
        let (a, b) = (WaiterId::from_u64(1), WaiterId::from_u64(2));
        let mut wa = hub.watch_waiter(&key, a);
        let mut wb = hub.watch_waiter(&key, b);
        let mut plain = hub.watch(&key);
        assert_eq!(hub.watcher_count(), 3);
        let ready = |w: &mut ReleaseWatch| {
            let fut = std::pin::pin!(w.released());
            let mut cx = Context::from_waker(std::task::Waker::noop());
            matches!(fut.poll(&mut cx), Poll::Ready(()))
        };
        assert!(hub.notify_waiter(key.encoded(), b));
        assert!(
            !ready(&mut wa) && !ready(&mut plain),
            "only b was handed the key"
        );
        assert!(ready(&mut wb));
        assert!(!hub.notify_waiter(key.encoded(), WaiterId::from_u64(3)));
        hub.notify(key.encoded());
        assert!(ready(&mut wa) && ready(&mut wb) && ready(&mut plain));
        drop(wa);
        assert!(!hub.notify_waiter(key.encoded(), a), "a left");
        drop((wb, plain));
        assert_eq!(hub.watcher_count(), 0);
        assert!(!hub.is_watched(key.encoded()));
    }
}
