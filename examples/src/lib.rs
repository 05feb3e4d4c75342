//! Runnable examples for distlock; see the binaries in `src/bin`.

// The README's code blocks run as doctests of this crate.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
