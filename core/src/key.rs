//! Lock names, and the keys backends store them under.

use std::fmt::{self, Write as _};

use sha2::{Digest as _, Sha256};

use crate::error::LockError;

/// The longest lock name accepted, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 4096;

/// The longest [`Locker`](crate::Locker) prefix accepted, in bytes of UTF-8.
pub const MAX_PREFIX_LEN: usize = 256;

/// The longest [`LockKey::encoded`] form, in bytes (ASCII): 13,058.
///
/// Percent-encoding turns a byte into at most three (`%XX`), and every byte
/// of a non-ASCII character is encoded, so a [`MAX_PREFIX_LEN`] prefix and a
/// [`MAX_NAME_LEN`] name of non-ASCII text encode to `3 × (256 + 4096)`
/// bytes, plus the two braces. Stores with a smaller limit on keys, index
/// rows or notification payloads (PostgreSQL: a B-tree index row of at most
/// 2,704 bytes, a `NOTIFY` payload under 8,000 bytes) should key their rows
/// and messages by [`LockKey::digest`] (32 bytes) instead, and keep the
/// encoded key or the name in an unindexed column if they need it.
pub const MAX_ENCODED_KEY_LEN: usize = 3 * (MAX_PREFIX_LEN + MAX_NAME_LEN) + 2;

/// A validated lock name inside a [`Locker`](crate::Locker)'s namespace, and
/// its encoded form.
///
/// Names are any UTF-8 text of 1 to [`MAX_NAME_LEN`] bytes without a NUL
/// character; they are case-sensitive. Bytes are accepted too, and must be
/// valid UTF-8.
///
/// The encoded form is ASCII: `namespace{name}`, where both parts are
/// percent-encoded (`%`, `{`, `}`, space, control characters and every
/// non-ASCII byte become `%XX`). Because the braces can only be the ones
/// added here, two different (namespace, name) pairs never share an encoded
/// key, and the braces form a Redis Cluster hash tag around the name. It is
/// at most [`MAX_ENCODED_KEY_LEN`] bytes long; [`LockKey::digest`] gives a
/// fixed-size identifier of it for stores with size limits.
///
/// ```
/// use distlock::{LockKey, MAX_ENCODED_KEY_LEN};
///
/// let key = LockKey::new("billing", "report é").unwrap();
/// assert_eq!(key.prefix(), "billing");
/// assert_eq!(key.name(), "report é");
/// assert_eq!(key.encoded(), "billing{report%20%C3%A9}");
/// assert_eq!(key.digest().len(), 32);
/// assert_eq!(key.digest_hex().len(), 64);
/// assert!(key.encoded().len() <= MAX_ENCODED_KEY_LEN);
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LockKey {
    /// The prefix followed by the name, as given.
    raw: String,
    /// Where the name starts in `raw`.
    split: usize,
    encoded: String,
}

impl LockKey {
    /// Validates `name` and builds its key in the namespace `prefix`.
    ///
    /// The prefix must itself be valid (see [`LockKey::validate_prefix`]); a
    /// [`Locker`](crate::Locker) checks it once when it is built.
    pub fn new(prefix: &str, name: impl AsRef<[u8]>) -> Result<Self, LockError> {
        let name = validate_name(name.as_ref())?;
        let mut encoded = String::with_capacity(prefix.len() + name.len() + 2);
        encode_into(&mut encoded, prefix);
        encoded.push('{');
        encode_into(&mut encoded, name);
        encoded.push('}');
        let mut raw = String::with_capacity(prefix.len() + name.len());
        raw.push_str(prefix);
        raw.push_str(name);
        Ok(Self {
            raw,
            split: prefix.len(),
            encoded,
        })
    }

    /// Checks a namespace prefix: at most [`MAX_PREFIX_LEN`] bytes, no NUL.
    /// The empty prefix is allowed.
    pub fn validate_prefix(prefix: &str) -> Result<(), LockError> {
        if prefix.len() > MAX_PREFIX_LEN {
            return Err(LockError::InvalidOptions(format!(
                "key prefix is {} bytes; the maximum is {MAX_PREFIX_LEN}",
                prefix.len()
            )));
        }
        if prefix.contains('\0') {
            return Err(LockError::InvalidOptions(
                "key prefix contains a NUL character".into(),
            ));
        }
        Ok(())
    }

    /// The lock name as the application gave it.
    pub fn name(&self) -> &str {
        &self.raw[self.split..]
    }

    /// The namespace: the [`Locker`](crate::Locker)'s prefix as given (not
    /// encoded; empty without a prefix). With [`LockKey::name`] it fills
    /// readable columns, such as `namespace` and `name` in SQL.
    pub fn prefix(&self) -> &str {
        &self.raw[..self.split]
    }

    /// The encoded key, `namespace{name}`, pure ASCII, at most
    /// [`MAX_ENCODED_KEY_LEN`] bytes. Backends store the lock under this
    /// string (plus a backend prefix of their own), or under its
    /// [`digest`](LockKey::digest).
    pub fn encoded(&self) -> &str {
        &self.encoded
    }

    /// The SHA-256 digest of [`LockKey::encoded`]: 32 bytes that identify
    /// the key, for stores that limit the size of keys, index entries or
    /// notification payloads. Two different keys get different digests
    /// (a SHA-256 collision is not a practical concern). Computed on each
    /// call (well under a microsecond for short keys).
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.encoded.as_bytes()).into()
    }

    /// [`LockKey::digest`] as 64 lowercase hex digits (for text columns and
    /// text notification payloads).
    pub fn digest_hex(&self) -> String {
        let mut hex = String::with_capacity(64);
        for b in self.digest() {
            // Writing to a String cannot fail.
            let _ = write!(hex, "{b:02x}");
        }
        hex
    }
}

impl fmt::Debug for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LockKey").field(&self.encoded).finish()
    }
}

impl fmt::Display for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encoded)
    }
}

fn validate_name(bytes: &[u8]) -> Result<&str, LockError> {
    let invalid = |reason: String| Err(LockError::InvalidName { reason });
    if bytes.is_empty() {
        return invalid("the name is empty".into());
    }
    if bytes.len() > MAX_NAME_LEN {
        return invalid(format!(
            "the name is {} bytes; the maximum is {MAX_NAME_LEN}",
            bytes.len()
        ));
    }
    let Ok(name) = std::str::from_utf8(bytes) else {
        return invalid("the name is not valid UTF-8".into());
    };
    if name.contains('\0') {
        return invalid("the name contains a NUL character".into());
    }
    Ok(name)
}

fn encode_into(out: &mut String, text: &str) {
    for &b in text.as_bytes() {
        if b.is_ascii_graphic() && !matches!(b, b'%' | b'{' | b'}') {
            out.push(b as char);
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(prefix: &str, name: &str) -> String {
        LockKey::new(prefix, name).unwrap().encoded().to_owned()
    }

    #[test]
    fn readable_names_stay_readable() {
        assert_eq!(key("", "user:42"), "{user:42}");
        assert_eq!(key("billing", "report*"), "billing{report*}");
    }

    #[test]
    fn braces_and_escapes_cannot_collide() {
        assert_eq!(key("", "a}b"), "{a%7Db}");
        assert_ne!(key("a", "b"), key("", "a}{b"));
        assert_ne!(key("a{", "b"), key("a", "{b"));
        assert_ne!(key("", "%7D"), key("", "}"));
        assert_ne!(key("", "A"), key("", "a"));
        assert_eq!(key("", "é"), "{%C3%A9}");
    }

    #[test]
    fn bad_names_are_rejected() {
        for bad in [&b""[..], b"a\0b", b"\xff\xfe", &[b'x'; MAX_NAME_LEN + 1]] {
            assert!(matches!(
                LockKey::new("", bad),
                Err(LockError::InvalidName { .. })
            ));
        }
        assert!(LockKey::new("", [b'x'; MAX_NAME_LEN]).is_ok());
    }

    #[test]
    fn longest_key_is_max_encoded_key_len() {
        let prefix = "é".repeat(MAX_PREFIX_LEN / 2);
        let name = "é".repeat(MAX_NAME_LEN / 2);
        let key = LockKey::new(&prefix, &name).unwrap();
        assert_eq!(key.encoded().len(), MAX_ENCODED_KEY_LEN);
        assert_eq!(MAX_ENCODED_KEY_LEN, 13_058);
        assert_eq!((key.prefix(), key.name()), (prefix.as_str(), name.as_str()));
    }

    #[test]
    fn digest_is_sha256_of_the_encoded_key() {
        // SHA-256("{a}"), computed independently with `printf '{a}' | sha256sum`.
        let key = LockKey::new("", "a").unwrap();
        assert_eq!(
            key.digest_hex(),
            "460c3a93211614ac783c0f1d1bbbcb45a6da87d6421b5c0771772588f1015ff8"
        );
        assert_ne!(key.digest(), LockKey::new("", "b").unwrap().digest());
        assert_ne!(
            LockKey::new("a", "b").unwrap().digest(),
            LockKey::new("", "a}{b").unwrap().digest()
        );
    }

    #[test]
    fn bad_prefixes_are_rejected() {
        assert!(LockKey::validate_prefix("").is_ok());
        assert!(LockKey::validate_prefix("a\0").is_err());
        assert!(LockKey::validate_prefix(&"p".repeat(MAX_PREFIX_LEN + 1)).is_err());
    }
}
