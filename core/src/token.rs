//! Owner tokens: the secret that proves a lease is ours.

use std::fmt;

/// The random secret that identifies one acquisition of a lock.
///
/// A new token is drawn for every acquisition straight from the operating
/// system's random source (`getrandom`: the `getrandom(2)` system call on
/// Linux), never from a user-space generator. It holds 128 bits, so another
/// client cannot guess it, and a stale holder's token never equals a newer
/// holder's.
///
/// Drawing from the OS every time makes tokens unique across `fork()`: a
/// user-space generator (such as `rand`'s thread-local one, which has no
/// fork protection) is copied into the child with its state, so parent and
/// child would draw the same next token and could release or extend each
/// other's locks. Only if the OS source fails (it does not on supported
/// platforms once the system booted) does `generate` fall back to `rand`'s
/// thread-local generator, and logs a warning.
///
/// `Debug` and `Display` show only the first four hex digits, so tokens do not
/// leak into logs; backends use [`LockToken::as_hex`] to store it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LockToken {
    /// 32 lowercase ASCII hex digits, kept inline: no allocation per lock.
    hex: [u8; 32],
}

impl LockToken {
    /// Draws a new random token.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 16];
        match getrandom::fill(&mut bytes) {
            Ok(()) => Self::from_u128(u128::from_le_bytes(bytes)),
            Err(e) => {
                tracing::warn!(error = %e, "OS randomness failed; lock token drawn from rand's thread generator");
                Self::from_u128(rand::random::<u128>())
            }
        }
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
    fn debug_and_display_never_show_the_whole_token() {
        let t = LockToken::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        for shown in [format!("{t:?}"), format!("{t}"), format!("{t:#?}")] {
            assert!(!shown.contains(t.as_hex()), "{shown}");
            assert!(!shown.contains("89abcdef"), "{shown}");
            assert!(shown.contains("0123"), "{shown}");
        }
    }
}
