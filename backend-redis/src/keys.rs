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

    /// The keys of `key`.
    pub fn keys(&self, key: &LockKey) -> LockKeys {
        let lock = self.lock_key(key);
        LockKeys {
            fence: format!("{lock}{FENCE_SUFFIX}"),
            owner: format!("{lock}{OWNER_SUFFIX}"),
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
        assert_eq!(layout.channel(&key), "distlock:billing{user:42}:released");
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
