//! Calling every member at once, each call bounded by the member timeout.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};

use crate::error::{BackendError, BackendErrorKind};

/// One member's answer: its position and what it said.
pub(super) type Answer<T> = (usize, Result<T, BackendError>);

type Call<T> = Pin<Box<dyn Future<Output = Answer<T>> + Send + 'static>>;

/// The calls of one quorum operation still in flight. Answers come in the
/// order members give them; the caller stops reading once the outcome is
/// decided and hands the rest to [`Calls::finish_in_background`] or drops
/// them.
pub(super) struct Calls<T> {
    pending: FuturesUnordered<Call<T>>,
    /// The members that have not answered yet.
    members: Vec<usize>,
}

impl<T: Send + 'static> Calls<T> {
    pub(super) fn new() -> Self {
        Self {
            pending: FuturesUnordered::new(),
            members: Vec::new(),
        }
    }

    /// Starts `call` for member `index`; its answer is a `Timeout` error if
    /// it takes longer than `limit`.
    pub(super) fn push<F>(&mut self, index: usize, limit: Duration, call: F)
    where
        F: Future<Output = Result<T, BackendError>> + Send + 'static,
    {
        self.members.push(index);
        self.pending.push(Box::pin(async move {
            let answer = match tokio::time::timeout(limit, call).await {
                Ok(answer) => answer,
                Err(_) => Err(BackendError::new(
                    BackendErrorKind::Timeout,
                    format!("no answer within the member timeout {limit:?}"),
                )),
            };
            (index, answer)
        }));
    }

    /// The next answer, or `None` when every member has answered.
    pub(super) async fn next(&mut self) -> Option<Answer<T>> {
        let answer = self.pending.next().await;
        if let Some((i, _)) = &answer {
            self.members.retain(|m| m != i);
        }
        answer
    }

    /// The members that have not answered yet.
    pub(super) fn members(&self) -> &[usize] {
        &self.members
    }

    /// How many members have not answered yet.
    pub(super) fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether every member has answered.
    pub(super) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Lets the calls still in flight run to their end (each within its
    /// bound) on the current tokio runtime, so every member receives the
    /// request even though the outcome is already decided. Without a
    /// runtime they are dropped.
    pub(super) fn finish_in_background(self) {
        if self.pending.is_empty() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let mut pending = self.pending;
            rt.spawn(async move { while pending.next().await.is_some() {} });
        }
    }
}

/// One error for a quorum call that failed because members failed: the
/// common kind if they agree (else `Unavailable` if any is transient, else
/// `Other`), and every member's error in the message.
pub(super) fn combine(op: &str, summary: &str, errors: &[(usize, BackendError)]) -> BackendError {
    let kind = match errors.split_first() {
        Some(((_, first), rest)) if rest.iter().all(|(_, e)| e.kind() == first.kind()) => {
            first.kind()
        }
        _ if errors.iter().any(|(_, e)| e.is_transient()) => BackendErrorKind::Unavailable,
        _ => BackendErrorKind::Other,
    };
    let mut message = format!("quorum {op}: {summary}");
    for (i, e) in errors {
        message.push_str(&format!("; member {i}: {e}"));
    }
    BackendError::new(kind, message)
}
