//! A `tracing` subscriber that records everything logged, so tests can
//! check that logs never contain secrets (a full lock token, a password).
//!
//! ```
//! use distlock_conformance::log_capture::LogCapture;
//!
//! let capture = LogCapture::default();
//! {
//!     let _default = tracing::subscriber::set_default(capture.clone());
//!     tracing::warn!(user = "alice", "something happened");
//! }
//! assert!(capture.text().contains("user=\"alice\""));
//! ```

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// A `tracing` subscriber that writes every event and span field to a
/// buffer.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<String>>);

struct FieldWriter<'a>(&'a mut String);

impl tracing::field::Visit for FieldWriter<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

impl LogCapture {
    /// Everything recorded so far, one line per span, record or event.
    pub fn text(&self) -> String {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl tracing::Subscriber for LogCapture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let mut out = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = write!(out, "span {}", span.metadata().name());
        span.record(&mut FieldWriter(&mut out));
        out.push('\n');
        tracing::span::Id::from_u64(NEXT.fetch_add(1, Ordering::Relaxed))
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut out = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        values.record(&mut FieldWriter(&mut out));
        out.push('\n');
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut out = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = write!(
            out,
            "{} {}",
            event.metadata().level(),
            event.metadata().target()
        );
        event.record(&mut FieldWriter(&mut out));
        out.push('\n');
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
