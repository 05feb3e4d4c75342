//! A `tracing` subscriber that records everything logged, so tests can
//! check that logs never contain secrets (a full lock token, a password),
//! and which spans and events an operation produced.
//!
//! ```
//! use distlock_conformance::log_capture::LogCapture;
//!
//! let capture = LogCapture::default();
//! {
//!     let _default = tracing::subscriber::set_default(capture.clone());
//!     tracing::warn!(user = "alice", "something happened");
//!     let span = tracing::debug_span!("work", item = 7, outcome = tracing::field::Empty);
//!     span.record("outcome", "done");
//! }
//! assert!(capture.text().contains("user=\"alice\""));
//! let spans = capture.spans();
//! assert_eq!(spans[0].name, "work");
//! assert_eq!(spans[0].field("item"), Some("7"));
//! assert_eq!(spans[0].field("outcome"), Some("\"done\""));
//! assert_eq!(capture.events()[0].message(), Some("something happened"));
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};

/// A `tracing` subscriber that writes every event and span field to a
/// buffer, and keeps each span and event with its fields.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Captured>>);

#[derive(Default)]
struct Captured {
    text: String,
    spans: Vec<CapturedSpan>,
    events: Vec<CapturedEvent>,
}

/// One span: its name and every field recorded on it (at creation or
/// later), as `Debug` shows the value (strings quoted, `%` values as
/// `Display` shows them).
#[derive(Clone, Debug)]
pub struct CapturedSpan {
    /// The span name.
    pub name: &'static str,
    /// The span's target (module path unless set).
    pub target: String,
    /// The span's level.
    pub level: tracing::Level,
    /// Field name to value.
    pub fields: BTreeMap<String, String>,
}

impl CapturedSpan {
    /// A field's value.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// One event, with its fields (the message under `message`).
#[derive(Clone, Debug)]
pub struct CapturedEvent {
    /// The event's level.
    pub level: tracing::Level,
    /// The event's target.
    pub target: String,
    /// Field name to value.
    pub fields: BTreeMap<String, String>,
}

impl CapturedEvent {
    /// A field's value.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    /// The message.
    pub fn message(&self) -> Option<&str> {
        self.field("message")
    }
}

/// Writes ` name=value` to the text and keeps the field.
struct FieldWriter<'a> {
    text: &'a mut String,
    fields: &'a mut BTreeMap<String, String>,
}

impl tracing::field::Visit for FieldWriter<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let value = format!("{value:?}");
        let _ = write!(self.text, " {}={value}", field.name());
        self.fields.insert(field.name().to_owned(), value);
    }
}

impl LogCapture {
    fn lock(&self) -> std::sync::MutexGuard<'_, Captured> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Everything recorded so far, one line per span, record or event.
    pub fn text(&self) -> String {
        self.lock().text.clone()
    }

    /// Every span created so far, in creation order, with its fields.
    pub fn spans(&self) -> Vec<CapturedSpan> {
        self.lock().spans.clone()
    }

    /// Every event so far, in order.
    pub fn events(&self) -> Vec<CapturedEvent> {
        self.lock().events.clone()
    }
}

impl tracing::Subscriber for LogCapture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut guard = self.lock();
        let captured = &mut *guard;
        let meta = span.metadata();
        let _ = write!(captured.text, "span {}", meta.name());
        let mut fields = BTreeMap::new();
        span.record(&mut FieldWriter {
            text: &mut captured.text,
            fields: &mut fields,
        });
        captured.text.push('\n');
        captured.spans.push(CapturedSpan {
            name: meta.name(),
            target: meta.target().to_owned(),
            level: *meta.level(),
            fields,
        });
        // Ids start at 1: span n is spans[n - 1].
        tracing::span::Id::from_u64(captured.spans.len() as u64)
    }
    fn record(&self, id: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut guard = self.lock();
        let captured = &mut *guard;
        let mut fields = BTreeMap::new();
        values.record(&mut FieldWriter {
            text: &mut captured.text,
            fields: &mut fields,
        });
        captured.text.push('\n');
        let index = usize::try_from(id.into_u64()).unwrap_or(usize::MAX);
        if let Some(span) = index.checked_sub(1).and_then(|i| captured.spans.get_mut(i)) {
            span.fields.extend(fields);
        }
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut guard = self.lock();
        let captured = &mut *guard;
        let meta = event.metadata();
        let _ = write!(captured.text, "{} {}", meta.level(), meta.target());
        let mut fields = BTreeMap::new();
        event.record(&mut FieldWriter {
            text: &mut captured.text,
            fields: &mut fields,
        });
        captured.text.push('\n');
        captured.events.push(CapturedEvent {
            level: *meta.level(),
            target: meta.target().to_owned(),
            fields,
        });
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
