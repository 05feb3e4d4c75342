//! The scenarios, one public async function each. [`suite!`](crate::suite)
//! calls them all; they can also be called one by one.

mod basic;

pub use basic::*;

/// Marker the macro names, so a scenario module that is not wired in fails
/// to compile rather than silently not running.
#[doc(hidden)]
pub const ALL_CASES_ARE_LISTED: () = ();
