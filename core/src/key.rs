//! Lock names, and the keys backends store them under.

use std::fmt::{self, Write as _};

use crate::error::LockError;

/// The longest lock name accepted, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 4096;

/// The longest [`Locker`](crate::Locker) prefix accepted, in bytes of UTF-8.
pub const MAX_PREFIX_LEN: usize = 256;

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
/// key, and the braces form a Redis Cluster hash tag around the name.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LockKey {
    name: String,
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
        Ok(Self {
            name: name.to_owned(),
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
        &self.name
    }

    /// The encoded key, `namespace{name}`, pure ASCII. Backends store the lock
    /// under this string (plus a backend prefix of their own).
    pub fn encoded(&self) -> &str {
        &self.encoded
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
    fn bad_prefixes_are_rejected() {
        assert!(LockKey::validate_prefix("").is_ok());
        assert!(LockKey::validate_prefix("a\0").is_err());
        assert!(LockKey::validate_prefix(&"p".repeat(MAX_PREFIX_LEN + 1)).is_err());
    }
}
