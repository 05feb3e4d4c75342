//! The one pub/sub connection per backend that turns release messages into
//! [`ReleaseHub`] events.
//!
//! Every lock name has its own channel (the lock key + `:released`). The
//! connection subscribes to a name's channel when the first local waiter of
//! that name starts watching, before the waiter's next attempt, and
//! unsubscribes about a second after the last one leaves, so a process only
//! receives releases of locks it waits for. After a reconnect it subscribes
//! again to every watched name and wakes one waiter of each (a release may
//! have been missed while it was down).
//!
//! Redis delivers a message to a channel's subscribers in the order they
//! subscribed, so among several processes waiting for one lock the first
//! subscriber would win nearly every handoff. When a waiter of this backend
//! acquires, the subscriber moves its subscription of that lock's channel to
//! the back ([`Subscriber::rotate`]), and handoffs rotate among the waiting
//! processes. Subscribing, moving, pruning and pings run beside the message
//! stream, so they never delay a release message.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::topology::pubsub::{Event, Sink as PubSubSink, Source, Stream as PubSubStream};
use distlock::{LockKey, ReleaseHub, ReleaseWatch};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::keys::KeyLayout;

/// How often an idle subscription is checked with `PING`, so a connection
/// that died silently is noticed and replaced.
const PING_EVERY: Duration = Duration::from_secs(10);
/// How often channels nobody waits on any more are unsubscribed.
const PRUNE_EVERY: Duration = Duration::from_secs(1);
/// First delay before reconnecting after a failure; doubles up to the max.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Where the subscriber task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    /// Connecting or reconnecting.
    Connecting,
    /// Connected: subscriptions requested from now on are served.
    Subscribed,
    /// The last attempt failed; retrying with backoff.
    Down,
}

/// A request to the subscriber task.
enum Request {
    /// Subscribe to the channel of a watched key.
    Subscribe {
        /// The [`LockKey::encoded`] form of the watched key.
        encoded_key: String,
        /// Answered once the channel is subscribed (or cannot be right now).
        done: oneshot::Sender<()>,
    },
    /// Move the subscription of a key's channel behind the other
    /// subscribers of that channel.
    Rotate {
        /// The [`LockKey::encoded`] form of the key.
        encoded_key: String,
    },
}

struct Running {
    task: JoinHandle<()>,
    status: watch::Receiver<Status>,
    requests: mpsc::UnboundedSender<Request>,
    subscribed: watch::Receiver<usize>,
}

/// Owns the hub and, once the first waiter watches, the subscriber task.
pub(crate) struct Subscriber {
    client: Option<Source>,
    layout: KeyLayout,
    hub: ReleaseHub,
    connect_timeout: Duration,
    running: Mutex<Option<Running>>,
}

impl Subscriber {
    /// A subscriber of the release channels of `layout` through `client`
    /// (`None`: no notifications).
    pub(crate) fn new(
        client: Option<Source>,
        layout: KeyLayout,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            client,
            layout,
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

    /// Whether the subscriber connection is established right now.
    pub(crate) fn is_subscribed(&self) -> bool {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        running
            .as_ref()
            .is_some_and(|r| !r.task.is_finished() && *r.status.borrow() == Status::Subscribed)
    }

    /// How many release channels the connection listens to.
    pub(crate) fn subscribed_count(&self) -> usize {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        running
            .as_ref()
            .filter(|r| !r.task.is_finished())
            .map_or(0, |r| *r.subscribed.borrow())
    }

    /// Registers a watcher of `key`, starting the subscriber if needed, and
    /// waits (at most the connect timeout) until the key's channel is
    /// subscribed. When Redis is down the watch is returned at once: waiters
    /// also poll.
    pub(crate) async fn watch(&self, key: &LockKey) -> Option<ReleaseWatch> {
        let client = self.client.as_ref()?;
        let watch = self.hub.watch(key);
        let Some((status, requests)) = self.ensure_running(client) else {
            // Not inside a tokio runtime: no subscriber, waiters poll.
            return Some(watch);
        };
        if *status.borrow() == Status::Down {
            // The task subscribes every watched key once it reconnects.
            return Some(watch);
        }
        let (done, subscribed) = oneshot::channel();
        let request = Request::Subscribe {
            encoded_key: key.encoded().to_owned(),
            done,
        };
        if requests.send(request).is_ok() {
            let _ = tokio::time::timeout(self.connect_timeout, subscribed).await;
        }
        Some(watch)
    }

    /// Moves this backend's subscription of `key`'s channel behind the other
    /// subscribers of that channel, in the background and without a moment
    /// unsubscribed. The backend calls this when one of its waiters has just
    /// acquired `key`: the winner goes to the back of the line, so handoffs
    /// rotate among the waiting processes.
    pub(crate) fn rotate(&self, key: &LockKey) {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = running.as_ref() {
            let _ = r.requests.send(Request::Rotate {
                encoded_key: key.encoded().to_owned(),
            });
        }
    }

    /// Starts the task unless it runs (a task whose runtime shut down is
    /// restarted on the current one).
    fn ensure_running(
        &self,
        client: &Source,
    ) -> Option<(watch::Receiver<Status>, mpsc::UnboundedSender<Request>)> {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = running.as_ref() {
            if !r.task.is_finished() {
                return Some((r.status.clone(), r.requests.clone()));
            }
        }
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let (status_tx, status) = watch::channel(Status::Connecting);
        let (count_tx, subscribed) = watch::channel(0);
        let (requests, requests_rx) = mpsc::unbounded_channel();
        let task = handle.spawn(
            Task {
                client: client.clone(),
                layout: self.layout.clone(),
                hub: self.hub.clone(),
                timeout: self.connect_timeout,
                status: status_tx,
                count: count_tx,
                requests: requests_rx,
            }
            .run(),
        );
        *running = Some(Running {
            task,
            status: status.clone(),
            requests: requests.clone(),
            subscribed,
        });
        Some((status, requests))
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

/// The subscriber task's state.
struct Task {
    client: Source,
    layout: KeyLayout,
    hub: ReleaseHub,
    timeout: Duration,
    status: watch::Sender<Status>,
    count: watch::Sender<usize>,
    requests: mpsc::UnboundedReceiver<Request>,
}

/// Why a connection's loop ended.
enum Ended {
    /// The connection failed: reconnect.
    Lost,
    /// The backend is gone: stop.
    Closed,
}

impl Task {
    /// Connect, subscribe to every watched key, forward messages; on any
    /// failure reconnect with exponential backoff. Ends when the backend is
    /// dropped (or the task aborted).
    async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        let mut reconnecting = false;
        loop {
            let connect = self.client.connect();
            match tokio::time::timeout(self.timeout, connect).await {
                Ok(Ok((sink, stream))) => {
                    backoff = BACKOFF_MIN;
                    match self.serve(sink, stream, reconnecting).await {
                        Ended::Closed => return,
                        Ended::Lost => {
                            self.count.send_replace(0);
                            self.status.send_replace(Status::Connecting);
                            tracing::debug!("release subscriber lost its connection; reconnecting");
                            reconnecting = true;
                            continue;
                        }
                    }
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "release subscriber cannot connect"),
                Err(_) => tracing::debug!("release subscriber timed out connecting"),
            }
            reconnecting = true;
            self.status.send_replace(Status::Down);
            // Wait out the backoff, answering requests at once meanwhile
            // (their keys are subscribed after the reconnect).
            let sleep = tokio::time::sleep(backoff);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    request = self.requests.recv() => match request {
                        Some(Request::Subscribe { done, .. }) => {
                            let _ = done.send(());
                        }
                        Some(Request::Rotate { .. }) => {}
                        None => return,
                    },
                }
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Serves one connection until it fails or the backend is dropped.
    async fn serve(
        &mut self,
        mut sink: PubSubSink,
        mut stream: PubSubStream,
        reconnected: bool,
    ) -> Ended {
        // encoded key -> its channel, for every subscribed channel.
        let mut channels: HashMap<String, String> = HashMap::new();
        for encoded_key in self.hub.watched_keys() {
            let channel = self.layout.channel_of_encoded(&encoded_key);
            match call(self.timeout, sink.subscribe(&channel)).await {
                Outcome::Done => {
                    channels.insert(encoded_key, channel);
                }
                Outcome::Refused => {}
                Outcome::Lost => return Ended::Lost,
            }
        }
        self.count.send_replace(channels.len());
        self.status.send_replace(Status::Subscribed);
        tracing::debug!(channels = channels.len(), "release subscriber connected");
        if reconnected {
            // Releases published while we were away were missed.
            self.hub.notify_all();
        }
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        prune.tick().await;
        // The sink is either here (idle) or inside the one running job.
        let mut sink = Some(sink);
        let mut job: Option<SinkJob> = None;
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(Event::Released(encoded_key)) => self.hub.notify(&encoded_key),
                    Some(Event::Malformed(e)) => tracing::debug!(error = %e, "ignoring a malformed release message"),
                    // The cluster client reconnected a node and subscribes
                    // again by itself; a release may have been missed.
                    Some(Event::Reconnected) => self.hub.notify_all(),
                    Some(Event::Other) => {}
                    None => return Ended::Lost,
                },
                done = async {
                    match job.as_mut() {
                        Some(job) => job.await,
                        None => std::future::pending().await,
                    }
                } => {
                    job = None;
                    let (returned, outcome, after) = done;
                    if outcome == Outcome::Lost {
                        return Ended::Lost;
                    }
                    sink = Some(returned);
                    if let After::Subscribed { encoded_key, channel, done } = after {
                        if outcome == Outcome::Done {
                            channels.insert(encoded_key, channel);
                            self.count.send_replace(channels.len());
                        }
                        // Refused: the waiter falls back on its backoff.
                        let _ = done.send(());
                    }
                },
                request = self.requests.recv(), if sink.is_some() => {
                    let Some(request) = request else { return Ended::Closed };
                    let Some(idle) = sink.take() else { continue };
                    match request {
                        Request::Subscribe { encoded_key, done } => {
                            if channels.contains_key(&encoded_key) {
                                let _ = done.send(());
                                sink = Some(idle);
                            } else {
                                let channel = self.layout.channel_of_encoded(&encoded_key);
                                job = Some(Box::pin(subscribe(idle, encoded_key, channel, done, self.timeout)));
                            }
                        }
                        Request::Rotate { encoded_key } => match channels.get(&encoded_key) {
                            Some(channel) => {
                                job = Some(Box::pin(move_to_back(idle, channel.clone(), self.timeout)));
                            }
                            None => sink = Some(idle),
                        },
                    }
                },
                _ = prune.tick(), if sink.is_some() => {
                    let idle: Vec<String> = channels
                        .keys()
                        .filter(|k| !self.hub.is_watched(k))
                        .cloned()
                        .collect();
                    if idle.is_empty() {
                        continue;
                    }
                    let gone: Vec<String> = idle.iter().filter_map(|k| channels.remove(k)).collect();
                    self.count.send_replace(channels.len());
                    if let Some(s) = sink.take() {
                        job = Some(Box::pin(unsubscribe(s, gone, self.timeout)));
                    }
                },
                _ = ping.tick(), if sink.is_some() => {
                    if let Some(s) = sink.take() {
                        job = Some(Box::pin(ping_sink(s, self.timeout)));
                    }
                }
            }
        }
    }
}

/// A request on the subscriber connection that runs beside the message
/// stream; it hands the sink back with whether it succeeded and what to
/// record.
type SinkJob = Pin<Box<dyn Future<Output = (PubSubSink, Outcome, After)> + Send>>;

/// What a finished [`SinkJob`] changed.
enum After {
    /// Nothing to record.
    Nothing,
    /// A key's channel is subscribed; tell the waiter.
    Subscribed {
        encoded_key: String,
        channel: String,
        done: oneshot::Sender<()>,
    },
}

async fn subscribe(
    mut sink: PubSubSink,
    encoded_key: String,
    channel: String,
    done: oneshot::Sender<()>,
    timeout: Duration,
) -> (PubSubSink, Outcome, After) {
    let ok = call(timeout, sink.subscribe(&channel)).await;
    let after = After::Subscribed {
        encoded_key,
        channel,
        done,
    };
    (sink, ok, after)
}

async fn unsubscribe(
    mut sink: PubSubSink,
    channels: Vec<String>,
    timeout: Duration,
) -> (PubSubSink, Outcome, After) {
    let ok = call(timeout, sink.unsubscribe(&channels)).await;
    (sink, ok, After::Nothing)
}

async fn ping_sink(mut sink: PubSubSink, timeout: Duration) -> (PubSubSink, Outcome, After) {
    let ok = call(timeout, sink.ping()).await;
    (sink, ok, After::Nothing)
}

/// Re-subscribes to `channel` so that the server lists this connection
/// last. Called right after a waiter of this backend acquired the lock, so
/// the only releases of it in the short gap between `UNSUBSCRIBE` and
/// `SUBSCRIBE` would be this process's own, and those reach the hub
/// directly. (A pattern subscription could cover the gap, but Redis ACLs
/// only allow `PSUBSCRIBE` of patterns identical to a permitted one.)
async fn move_to_back(
    mut sink: PubSubSink,
    channel: String,
    timeout: Duration,
) -> (PubSubSink, Outcome, After) {
    let steps = async {
        sink.unsubscribe(std::slice::from_ref(&channel)).await?;
        sink.subscribe(&channel).await
    };
    let outcome = call(timeout, steps).await;
    (sink, outcome, After::Nothing)
}

/// How a command on the subscriber connection went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// It succeeded.
    Done,
    /// The server refused it (for example `NOPERM` from an ACL that lacks
    /// `psubscribe`); the connection is fine.
    Refused,
    /// The connection failed or did not answer in time: reconnect.
    Lost,
}

/// Runs one command on the subscriber connection within the timeout.
async fn call<T>(
    timeout: Duration,
    command: impl Future<Output = redis::RedisResult<T>>,
) -> Outcome {
    match tokio::time::timeout(timeout, command).await {
        Ok(Ok(_)) => Outcome::Done,
        Ok(Err(e))
            if !(e.is_io_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.is_unrecoverable_error()) =>
        {
            tracing::debug!(error = %e, "release subscriber command refused");
            Outcome::Refused
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "release subscriber command failed");
            Outcome::Lost
        }
        Err(_) => {
            tracing::debug!("release subscriber command timed out");
            Outcome::Lost
        }
    }
}
