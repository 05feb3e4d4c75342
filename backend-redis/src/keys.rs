//! Where a lock lives in Redis.

use distlock::{BackendError, BackendErrorKind, LockKey};

/// The default backend prefix: every key and the release channel start with it.
pub const DEFAULT_KEY_PREFIX: &str = "distlock:";

/// Suffix of the key that holds a lock's last fencing token (expires
/// [`fence_retention`](crate::RedisConfig::fence_retention) after the
/// name's last acquire; restarts from the server clock).
pub const FENCE_SUFFIX: &str = ":fence";

/// Infix of a released token's tombstone: the lock key + `:tombstone:` + the
/// token. A release that finds the lock not held by its token leaves it for
/// [`RELEASE_TOMBSTONE_TTL`], and the acquire script refuses that token
/// while it exists, so an acquire that arrives after its own release (it
/// was cancelled in flight) cannot take the lock.
pub const TOMBSTONE_INFIX: &str = ":tombstone:";

/// How long a tombstone (see [`TOMBSTONE_INFIX`]) stays: the longest delay
/// of a cancelled acquire behind its release that is made harmless. (A
/// later one takes the lock until its TTL at most, as without tombstones.)
pub const RELEASE_TOMBSTONE_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// Suffix of the key that holds a lock's owner label (expires with the lock).
pub const OWNER_SUFFIX: &str = ":owner";

/// Suffix of a lock's pub/sub channel: the release script publishes on the
/// lock key + `:released`, and only processes waiting for that lock listen.
pub const CHANNEL_SUFFIX: &str = ":released";

/// Suffix of a lock's line of waiters: a sorted set of the tokens of the
/// waiting `lock()` calls, scored by the server time of joining in
/// microseconds (the first-come-first-served order). It expires the waiter
/// lease ([`distlock::WAITER_LEASE`], 500 ms) after the last join or
/// renewal, so it is gone that long after the last waiter stopped calling.
pub const WAITERS_SUFFIX: &str = ":waiters";

/// Suffix of the hash beside [`WAITERS_SUFFIX`]: token → `LEASE_END_MS
/// BACKEND WAITER CLAIM_MS` (server milliseconds; the backend's and the
/// waiter's ids as 16 hex digits). Expires with the line.
pub const LEASES_SUFFIX: &str = ":leases";

/// Infix of a backend's grant channel: the lock key + `:grant:` + the
/// backend's id (16 hex digits). A release (or a queued acquire that finds
/// the lock free) that hands the lock to a waiter publishes `ENCODED-KEY
/// WAITER` there, so only the waiter's backend hears of it. The scripts
/// build this name themselves.
pub const GRANT_CHANNEL_INFIX: &str = ":grant:";

/// The longest backend prefix accepted, in bytes.
pub const MAX_KEY_PREFIX_LEN: usize = 256;

/// The Redis keys of one lock. They share the `{…}` hash tag of
/// [`LockKey::encoded`], so they live in one Redis Cluster slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockKeys {
    /// `PREFIX` + encoded key: holds the owner token, expires with the lease.
    pub lock: String,
    /// The lock key + `:fence`: the last fencing token (see `RedisBackend`).
    pub fence: String,
    /// The lock key + `:owner`: the owner label, expires with the lease.
    pub owner: String,
    /// The lock key + `:waiters`: the line of waiters (see
    /// [`WAITERS_SUFFIX`]).
    pub waiters: String,
    /// The lock key + `:leases`: the waiters' leases (see
    /// [`LEASES_SUFFIX`]).
    pub leases: String,
}

impl LockKeys {
    /// The lock key + `:tombstone:` + `token`: the tombstone a release
    /// leaves for a token that did not hold the lock (see
    /// [`TOMBSTONE_INFIX`]).
    pub fn tombstone(&self, token: &distlock::LockToken) -> String {
        format!("{}{TOMBSTONE_INFIX}{}", self.lock, token.as_hex())
    }
}

/// Maps [`LockKey`]s to Redis keys under one backend prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyLayout {
    prefix: String,
}

impl KeyLayout {
    /// A layout under `prefix`. The prefix must not contain `{` or `}` (the
    /// lock name's braces must be the key's only hash tag), control
    /// characters or spaces, and is at most [`MAX_KEY_PREFIX_LEN`] bytes.
    pub fn new(prefix: &str) -> Result<Self, BackendError> {
        let bad = |why: &str| {
            Err(BackendError::new(
                BackendErrorKind::Config,
                format!("invalid key prefix {prefix:?}: {why}"),
            ))
        };
        if prefix.len() > MAX_KEY_PREFIX_LEN {
            return bad("longer than 256 bytes");
        }
        if prefix.contains(['{', '}']) {
            return bad("it must not contain `{` or `}` (they delimit the hash tag)");
        }
        if prefix.chars().any(|c| c.is_control() || c == ' ') {
            return bad("it must not contain spaces or control characters");
        }
        Ok(Self {
            prefix: prefix.to_owned(),
        })
    }

    /// The backend prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The pub/sub channel that releases of `key` are published on: the lock
    /// key + `:released` (same hash tag). The message is the
    /// [`LockKey::encoded`] form of the released lock.
    pub fn channel(&self, key: &LockKey) -> String {
        self.channel_of_encoded(key.encoded())
    }

    /// [`channel`](Self::channel) from a [`LockKey::encoded`] form.
    pub fn channel_of_encoded(&self, encoded_key: &str) -> String {
        let mut channel =
            String::with_capacity(self.prefix.len() + encoded_key.len() + CHANNEL_SUFFIX.len());
        channel.push_str(&self.prefix);
        channel.push_str(encoded_key);
        channel.push_str(CHANNEL_SUFFIX);
        channel
    }

    /// The pub/sub channel on which the lock `key` is handed to waiters of
    /// the backend whose id is `backend`: the lock key + `:grant:` + the id
    /// as 16 hex digits (see [`GRANT_CHANNEL_INFIX`]).
    pub fn grant_channel(&self, key: &LockKey, backend: u64) -> String {
        self.grant_channel_of_encoded(key.encoded(), backend)
    }

    /// [`grant_channel`](Self::grant_channel) from a [`LockKey::encoded`]
    /// form.
    pub fn grant_channel_of_encoded(&self, encoded_key: &str, backend: u64) -> String {
        format!(
            "{}{encoded_key}{GRANT_CHANNEL_INFIX}{backend:016x}",
            self.prefix
        )
    }

    /// The keys of `key`.
    pub fn keys(&self, key: &LockKey) -> LockKeys {
        let lock = self.lock_key(key);
        LockKeys {
            fence: format!("{lock}{FENCE_SUFFIX}"),
            owner: format!("{lock}{OWNER_SUFFIX}"),
            waiters: format!("{lock}{WAITERS_SUFFIX}"),
            leases: format!("{lock}{LEASES_SUFFIX}"),
            lock,
        }
    }

    /// The key that holds the owner token of `key`.
    pub fn lock_key(&self, key: &LockKey) -> String {
        let mut lock = String::with_capacity(self.prefix.len() + key.encoded().len());
        lock.push_str(&self.prefix);
        lock.push_str(key.encoded());
        lock
    }
}

impl Default for KeyLayout {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_KEY_PREFIX.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_documentation() {
        let layout = KeyLayout::default();
        let key = LockKey::new("billing", "user:42").unwrap();
        let keys = layout.keys(&key);
        assert_eq!(keys.lock, "distlock:billing{user:42}");
        assert_eq!(keys.fence, "distlock:billing{user:42}:fence");
        assert_eq!(keys.owner, "distlock:billing{user:42}:owner");
        assert_eq!(keys.waiters, "distlock:billing{user:42}:waiters");
        assert_eq!(keys.leases, "distlock:billing{user:42}:leases");
        assert_eq!(layout.channel(&key), "distlock:billing{user:42}:released");
        assert_eq!(
            layout.grant_channel(&key, 0xab),
            "distlock:billing{user:42}:grant:00000000000000ab"
        );
        let token = distlock::LockToken::from_u128(0xabc);
        assert_eq!(
            keys.tombstone(&token),
            format!("distlock:billing{{user:42}}:tombstone:{}", token.as_hex())
        );
    }

    #[test]
    fn prefixes_with_braces_are_refused() {
        for bad in ["a{", "}", "a b", "a\nb"] {
            let err = KeyLayout::new(bad).unwrap_err();
            assert_eq!(err.kind(), BackendErrorKind::Config, "{bad:?}");
        }
        let key = LockKey::new("", "n").unwrap();
        assert_eq!(KeyLayout::new("").unwrap().channel(&key), "{n}:released");
        assert!(KeyLayout::new(&"p".repeat(257)).is_err());
    }
}
