//! Owner tokens: the secret that proves a lease is ours.

use std::fmt;

/// The random secret that identifies one acquisition of a lock.
///
/// A new token is drawn for every acquisition from a cryptographically secure
/// generator (`rand`'s thread-local ChaCha generator, seeded from the operating
/// system). It holds 128 bits, so another client cannot guess it, and a
/// stale holder's token never equals a newer holder's.
///
/// `Debug` and `Display` show only the first four hex digits, so tokens do not
/// leak into logs; backends store it as [`LockToken::as_hex`] (32 ASCII
/// characters), [`LockToken::to_bytes`] (16 bytes, for a `bytea`/`BINARY(16)`
/// column) or [`LockToken::to_u128`] (for a `uuid` column, through e.g.
/// `uuid::Uuid::from_u128`). All three forms carry the same 128 bits.
///
/// ```
/// use distlock::LockToken;
///
/// let token = LockToken::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
/// assert_eq!(token.to_u128(), 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
/// assert_eq!(LockToken::from_bytes(token.to_bytes()), token);
/// assert_eq!(token.to_bytes()[0], 0x01); // big-endian, like the hex form
/// assert_eq!(&token.as_hex()[..4], "0123");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LockToken {
    /// 32 lowercase ASCII hex digits, kept inline: no allocation per lock.
    hex: [u8; 32],
}

impl LockToken {
    /// Draws a new random token.
    pub fn generate() -> Self {
        Self::from_u128(rand::random::<u128>())
    }

    /// Builds a token from a known value. Meant for tests and backend authors
    /// who need a second, different token; applications never need it.
    pub fn from_u128(value: u128) -> Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut hex = [0u8; 32];
        for (i, digit) in hex.iter_mut().enumerate() {
            *digit = DIGITS[((value >> (124 - 4 * i)) & 0xf) as usize];
        }
        Self { hex }
    }

    /// Builds a token from its [`LockToken::to_bytes`] form (big-endian).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self::from_u128(u128::from_be_bytes(bytes))
    }

    /// The full token as a number. This is the secret itself: do not log it.
    pub fn to_u128(&self) -> u128 {
        self.hex.iter().fold(0u128, |acc, &digit| {
            let value = match digit {
                b'0'..=b'9' => digit - b'0',
                _ => digit - b'a' + 10,
            };
            (acc << 4) | u128::from(value)
        })
    }

    /// The full token as 16 bytes, big-endian (the same order as
    /// [`LockToken::as_hex`]). This is the secret itself: do not log it.
    pub fn to_bytes(&self) -> [u8; 16] {
        self.to_u128().to_be_bytes()
    }

    /// The full token as 32 lowercase hex digits, as backends store it.
    ///
    /// This is the secret itself: do not log it.
    pub fn as_hex(&self) -> &str {
        // Only ASCII hex digits are ever stored.
        std::str::from_utf8(&self.hex).unwrap_or_default()
    }

    /// A short, non-secret prefix for logs and debugging.
    pub fn short(&self) -> &str {
        &self.as_hex()[..4]
    }
}

impl fmt::Debug for LockToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LockToken({}…)", self.short())
    }
}

impl fmt::Display for LockToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}…", self.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_128_bits_and_distinct() {
        let a = LockToken::generate();
        let b = LockToken::generate();
        assert_eq!(a.as_hex().len(), 32);
        assert_eq!(
            LockToken::from_u128(0xabc).as_hex(),
            "00000000000000000000000000000abc"
        );
        assert_ne!(a, b);
    }

    #[test]
    fn the_three_forms_round_trip() {
        for value in [0, 1, u128::MAX, rand::random::<u128>()] {
            let t = LockToken::from_u128(value);
            assert_eq!(t.to_u128(), value);
            assert_eq!(LockToken::from_bytes(t.to_bytes()), t);
            assert_eq!(u128::from_str_radix(t.as_hex(), 16).unwrap(), value);
        }
    }

    #[test]
    fn debug_and_display_never_show_the_whole_token() {
        let t = LockToken::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        for shown in [format!("{t:?}"), format!("{t}"), format!("{t:#?}")] {
            assert!(!shown.contains(t.as_hex()), "{shown}");
            assert!(!shown.contains("89abcdef"), "{shown}");
            assert!(shown.contains("0123"), "{shown}");
        }
    }
}
