//! The one pub/sub connection per backend that turns release messages into
//! [`ReleaseHub`] events.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use distlock::{LockKey, ReleaseHub, ReleaseWatch};
use futures::StreamExt;
use redis::aio::PubSubSink;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

/// How often an idle subscription is checked with `PING`, so a connection
/// that died silently is noticed and replaced.
const PING_EVERY: Duration = Duration::from_secs(10);
/// First delay before reconnecting after a failure; doubles up to the max.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Where the subscriber task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    /// Connecting or reconnecting.
    Connecting,
    /// Subscribed: releases published from now on are seen.
    Subscribed,
    /// The last attempt failed; retrying with backoff.
    Down,
}

struct Running {
    task: JoinHandle<()>,
    status: watch::Receiver<Status>,
}

/// Owns the hub and, once the first waiter watches, the subscriber task.
pub(crate) struct Subscriber {
    client: Option<redis::Client>,
    channel: String,
    hub: ReleaseHub,
    connect_timeout: Duration,
    running: Mutex<Option<Running>>,
    /// Asks the task to move this subscription to the end of the server's
    /// delivery order (see [`Subscriber::rotate`]).
    rotate: Arc<Notify>,
}

impl Subscriber {
    /// A subscriber of `channel` through `client` (`None`: no notifications).
    pub(crate) fn new(
        client: Option<redis::Client>,
        channel: String,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            client,
            channel,
            hub: ReleaseHub::new(),
            connect_timeout,
            running: Mutex::new(None),
            rotate: Arc::new(Notify::new()),
        }
    }

    /// Moves this backend's subscription behind the other subscribers of the
    /// channel, in the background and without a moment unsubscribed.
    ///
    /// Redis delivers a release message to a channel's subscribers in the
    /// order they subscribed, so with several processes waiting for one lock
    /// the first subscriber would hear of every release first and win nearly
    /// every handoff. The backend calls this when one of its waiters has
    /// just acquired a lock: the winner then goes to the back of the line,
    /// and handoffs rotate among the waiting processes. Requests made while a
    /// move is under way are merged into one.
    pub(crate) fn rotate(&self) {
        if self.is_subscribed() {
            self.rotate.notify_one();
        }
    }

    /// Whether this backend delivers release notifications.
    pub(crate) fn enabled(&self) -> bool {
        self.client.is_some()
    }

    /// The hub (the backend also notifies its own releases through it).
    pub(crate) fn hub(&self) -> &ReleaseHub {
        &self.hub
    }

    /// Whether the subscription is established right now.
    pub(crate) fn is_subscribed(&self) -> bool {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        running
            .as_ref()
            .is_some_and(|r| !r.task.is_finished() && *r.status.borrow() == Status::Subscribed)
    }

    /// Registers a watcher of `key`, starting the subscriber if needed and
    /// waiting (at most the connect timeout) until it is subscribed. When
    /// Redis is down the watch is returned anyway: waiters also poll.
    pub(crate) async fn watch(&self, key: &LockKey) -> Option<ReleaseWatch> {
        let client = self.client.as_ref()?;
        let watch = self.hub.watch(key);
        let Some(mut status) = self.ensure_running(client) else {
            // Not inside a tokio runtime: no subscriber, waiters poll.
            return Some(watch);
        };
        let settled = status.wait_for(|s| *s != Status::Connecting);
        let _ = tokio::time::timeout(self.connect_timeout, settled).await;
        Some(watch)
    }

    /// Starts the task unless it runs (a task whose runtime shut down is
    /// restarted on the current one).
    fn ensure_running(&self, client: &redis::Client) -> Option<watch::Receiver<Status>> {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = running.as_ref() {
            if !r.task.is_finished() {
                return Some(r.status.clone());
            }
        }
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let (tx, rx) = watch::channel(Status::Connecting);
        let task = handle.spawn(run(
            client.clone(),
            self.channel.clone(),
            self.hub.clone(),
            self.connect_timeout,
            self.rotate.clone(),
            tx,
        ));
        *running = Some(Running {
            task,
            status: rx.clone(),
        });
        Some(rx)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let running = self
            .running
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = running.take() {
            r.task.abort();
        }
    }
}

/// The subscriber loop: connect, subscribe, forward messages; on any failure
/// reconnect with exponential backoff. Ends only when aborted.
async fn run(
    client: redis::Client,
    channel: String,
    hub: ReleaseHub,
    connect_timeout: Duration,
    rotate: Arc<Notify>,
    status: watch::Sender<Status>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let connect = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(connect_timeout, connect).await {
            Ok(Ok(pubsub)) => {
                backoff = BACKOFF_MIN;
                status.send_replace(Status::Subscribed);
                tracing::debug!(%channel, "release subscriber subscribed");
                forward(pubsub, &hub, &channel, &rotate, connect_timeout).await;
                status.send_replace(Status::Connecting);
                tracing::debug!(%channel, "release subscriber lost its connection; reconnecting");
                continue;
            }
            Ok(Err(e)) => {
                tracing::debug!(%channel, error = %e, "release subscriber cannot connect");
            }
            Err(_) => {
                tracing::debug!(%channel, "release subscriber timed out connecting");
            }
        }
        status.send_replace(Status::Down);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// A request on the subscriber connection that runs beside the message
/// stream; it hands the sink back with whether it succeeded.
type SinkJob = Pin<Box<dyn Future<Output = (PubSubSink, bool)> + Send>>;

/// Forwards release messages to the hub until the connection fails. Pings
/// and subscription moves run beside the stream, so they never delay a
/// release message.
async fn forward(
    pubsub: redis::aio::PubSub,
    hub: &ReleaseHub,
    channel: &str,
    rotate: &Notify,
    timeout: Duration,
) {
    let (sink, mut stream) = pubsub.split();
    let mut sink = Some(sink);
    let mut job: Option<SinkJob> = None;
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let pattern = glob_escape(channel);
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(msg) => match msg.get_payload::<String>() {
                    Ok(encoded_key) => hub.notify(&encoded_key),
                    Err(e) => tracing::debug!(error = %e, "ignoring a malformed release message"),
                },
                None => return,
            },
            done = async {
                match job.as_mut() {
                    Some(j) => j.await,
                    None => std::future::pending().await,
                }
            } => {
                job = None;
                let (returned, ok) = done;
                if !ok {
                    return;
                }
                sink = Some(returned);
            },
            _ = rotate.notified(), if sink.is_some() => {
                if let Some(s) = sink.take() {
                    job = Some(Box::pin(move_to_back(s, channel.to_owned(), pattern.clone(), timeout)));
                }
            },
            _ = ping.tick(), if sink.is_some() => {
                if let Some(s) = sink.take() {
                    job = Some(Box::pin(ping_sink(s, timeout)));
                }
            },
        }
    }
}

async fn ping_sink(mut sink: PubSubSink, timeout: Duration) -> (PubSubSink, bool) {
    let pong = tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await;
    (sink, matches!(pong, Ok(Ok(_))))
}

/// Re-subscribes to `channel` so that the server lists this connection
/// last. A pattern subscription matching only `channel` covers the moment
/// between UNSUBSCRIBE and SUBSCRIBE, so no message is lost (one may arrive
/// twice, which only costs a spare wake-up).
async fn move_to_back(
    mut sink: PubSubSink,
    channel: String,
    pattern: String,
    timeout: Duration,
) -> (PubSubSink, bool) {
    let steps = async {
        sink.psubscribe(&pattern).await?;
        sink.unsubscribe(&channel).await?;
        sink.subscribe(&channel).await?;
        sink.punsubscribe(&pattern).await
    };
    let ok = matches!(tokio::time::timeout(timeout, steps).await, Ok(Ok(())));
    (sink, ok)
}

/// A glob pattern that matches exactly `s` (Redis `PSUBSCRIBE` syntax).
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::glob_escape;

    #[test]
    fn glob_escape_matches_only_the_channel() {
        assert_eq!(glob_escape("distlock:released"), "distlock:released");
        assert_eq!(glob_escape("a*b?[c]\\d"), "a\\*b\\?\\[c\\]\\\\d");
    }
}
