//! The one pub/sub connection per backend that turns release messages into
//! [`ReleaseHub`] events.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use distlock::{LockKey, ReleaseHub, ReleaseWatch};
use futures::StreamExt;
use tokio::sync::watch;
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
                forward(pubsub, &hub, connect_timeout).await;
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

/// Forwards release messages to the hub until the connection fails.
async fn forward(pubsub: redis::aio::PubSub, hub: &ReleaseHub, ping_timeout: Duration) {
    let (mut sink, mut stream) = pubsub.split();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(msg) => match msg.get_payload::<String>() {
                    Ok(encoded_key) => hub.notify(&encoded_key),
                    Err(e) => tracing::debug!(error = %e, "ignoring a malformed release message"),
                },
                None => return,
            },
            _ = ping.tick() => {
                let pong = tokio::time::timeout(ping_timeout, sink.ping::<redis::Value>()).await;
                if !matches!(pong, Ok(Ok(_))) {
                    return;
                }
            }
        }
    }
}
