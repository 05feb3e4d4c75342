//! Runnable examples for distlock; see the binaries in `src/bin`.
