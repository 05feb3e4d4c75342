//! The scenarios, one public async function each. [`suite!`](crate::suite)
//! calls them all; they can also be called one by one.

mod basic;
mod errors;
mod exclusion;
mod expiry;
mod fencing;
mod lifecycle;
mod names;
mod options;
mod ownership;
mod renewal;
mod waiting;

pub use basic::*;
pub use errors::*;
pub use exclusion::*;
pub use expiry::*;
pub use fencing::*;
pub use lifecycle::*;
pub use names::*;
pub use options::*;
pub use ownership::*;
pub use renewal::*;
pub use waiting::*;
