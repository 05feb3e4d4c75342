//! Release notifications: how a backend wakes the waiters of its process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use crate::key::LockKey;

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
/// An event with nobody watching is kept for the next watcher of that key
/// only while someone is registered; keys nobody watches take no memory.
#[derive(Clone, Default)]
pub struct ReleaseHub {
    keys: Arc<Mutex<HashMap<String, Entry>>>,
}

struct Entry {
    notify: Arc<Notify>,
    watchers: usize,
}

impl ReleaseHub {
    /// A hub with no watchers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a watcher of `key`. The registration is in place when this
    /// returns and ends when the [`ReleaseWatch`] is dropped.
    pub fn watch(&self, key: &LockKey) -> ReleaseWatch {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = keys
            .entry(key.encoded().to_owned())
            .or_insert_with(|| Entry {
                notify: Arc::new(Notify::new()),
                watchers: 0,
            });
        entry.watchers += 1;
        ReleaseWatch {
            hub: self.clone(),
            key: key.encoded().to_owned(),
            notify: entry.notify.clone(),
        }
    }

    /// Reports that the key whose [`LockKey::encoded`] form is `encoded_key`
    /// was released. Wakes one watcher; does nothing if nobody watches.
    pub fn notify(&self, encoded_key: &str) {
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = keys.get(encoded_key) {
            entry.notify.notify_one();
        }
    }

    /// Wakes one watcher of every watched key: for a backend that may have
    /// missed release events (its notification connection was down), so
    /// each waiting process retries once instead of waiting for its backoff.
    pub fn notify_all(&self) {
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        for entry in keys.values() {
            entry.notify.notify_one();
        }
    }

    /// Whether anyone watches the key whose [`LockKey::encoded`] form is
    /// `encoded_key`, i.e. whether a task of this process waits for it.
    pub fn is_watched(&self, encoded_key: &str) -> bool {
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        keys.contains_key(encoded_key)
    }

    /// The [`LockKey::encoded`] forms of every key watched right now (for a
    /// backend that subscribes per key, to re-subscribe after a reconnect).
    pub fn watched_keys(&self) -> Vec<String> {
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        keys.keys().cloned().collect()
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

/// One registration for release events of one key; see [`ReleaseHub`].
pub struct ReleaseWatch {
    hub: ReleaseHub,
    key: String,
    notify: Arc<Notify>,
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
        f.debug_struct("ReleaseWatch")
            .field("key", &self.key)
            .finish()
    }
}

impl Drop for ReleaseWatch {
    fn drop(&mut self) {
        let mut keys = self.hub.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = keys.get_mut(&self.key) {
            entry.watchers -= 1;
            if entry.watchers == 0 {
                keys.remove(&self.key);
            } else if Arc::strong_count(&self.notify) > 1 {
                // Pass a wake-up we may have consumed on to the next watcher.
                entry.notify.notify_one();
            }
        }
    }
}
