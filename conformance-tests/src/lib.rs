//! The conformance suite for distlock backends.
//!
//! Every backend (ours and third-party) runs the same scenarios. Add one
//! dev-dependency and one macro call to your backend's tests:
//!
//! ```ignore
//! // tests/conformance.rs of your backend crate
//! use distlock_conformance::Harness;
//!
//! struct MyHarness;
//!
//! #[distlock_conformance::async_trait]
//! impl Harness for MyHarness {
//!     type Backend = MyBackend;
//!     async fn client(&self) -> MyBackend { MyBackend::connect(URL).await.unwrap() }
//!     async fn expire_now(&self, b: &MyBackend, key: &distlock::LockKey) { b.delete_for_test(key).await }
//! }
//!
//! distlock_conformance::suite!(MyHarness);
//! ```
//!
//! The macro expands every scenario into its own `#[test]`, named after the
//! scenario, so `cargo test` lists each case. Each test builds its own tokio
//! runtime (paused clock if [`Harness::paused_clock`]) and its own clients.
//! Scenarios use unique lock names, so several suites can share one server.
//! Cases that need a capability the backend does not claim print
//! `skipped: …` and pass.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod harness;
pub mod scenarios;
mod support;

pub use async_trait::async_trait;
pub use harness::Harness;
pub use support::{runtime, unique_name};

/// Expands every conformance scenario into a `#[test]` for the harness
/// expression `$harness` (evaluated once per test).
#[macro_export]
macro_rules! suite {
    ($harness:expr) => {
        $crate::__cases!($harness; $crate::scenarios::ALL_CASES_ARE_LISTED;
            acquire_free_then_held_then_free,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __cases {
    ($harness:expr; $check:path; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let harness = $harness;
                $crate::runtime(&harness).block_on($crate::scenarios::$case(&harness));
            }
        )*
    };
}
