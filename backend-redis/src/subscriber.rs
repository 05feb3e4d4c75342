//! The one pub/sub connection per backend that turns release and grant
//! messages into [`ReleaseHub`] events.
//!
//! Every lock name has its own release channel (the lock key +
//! `:released`), and per backend its grant channel (the lock key +
//! `:grant:` + the backend's id), on which a release that hands the lock to
//! one of this backend's waiters in the line names that waiter
//! ([`ReleaseHub::notify_waiter`]). The connection subscribes to a name's
//! release channel when the first local plain waiter of that name starts
//! watching ([`Subscriber::watch`]), to its grant channel when the first
//! waiter in the line does ([`Subscriber::watch_grant`]), before the
//! waiter's next attempt, and unsubscribes about a second after the last
//! waiter of the name leaves, so a process only receives messages of locks
//! it waits for. After a reconnect it subscribes again to every channel
//! still watched and wakes the waiters of each (a message may have been
//! missed while it was down).
//!
//! Redis delivers a message to a channel's subscribers in the order they
//! subscribed, so among several processes waiting for one lock the first
//! subscriber would win nearly every handoff. When a plain waiter of this
//! backend acquires, the subscriber moves its subscription of that lock's
//! release channel to the back ([`Subscriber::rotate`]), and handoffs rotate
//! among the waiting processes. (Waiters in the line need no moves: the
//! server orders them and addresses each grant.) Subscribing, moving, pruning and pings run beside the message
//! stream, so they never delay a release message.
//!
//! The connection runs one command at a time, so the work waiting for it is
//! ordered ([`Pending`]): new subscriptions first (a waiter's `watch()` is
//! blocked on each), all of them in one `SUBSCRIBE`; then every pending move
//! together, as one `UNSUBSCRIBE` of all their channels and one `SUBSCRIBE`
//! of all of them. A new `watch()` therefore waits for at most the one
//! command batch already running, however many names are contended, and a
//! move costs two commands per batch rather than per name.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::topology::pubsub::{Event, Sink as PubSubSink, Source, Stream as PubSubStream};
use distlock::{LockKey, ReleaseHub, ReleaseWatch, WaiterId};
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

/// Which of a lock's channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    /// The lock key + `:released`: releases that handed the lock to nobody.
    Released,
    /// The lock key + `:grant:` + this backend's id: handovers to waiters
    /// of this backend.
    Grant,
}

/// One subscription: a lock's channel of one kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Sub {
    /// The [`LockKey::encoded`] form of the watched key.
    encoded_key: String,
    kind: Kind,
}

/// A request to the subscriber task.
enum Request {
    /// Subscribe to a channel of a watched key.
    Subscribe {
        /// The key and which of its channels.
        sub: Sub,
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

/// Counts of the subscription moves sent (for tests and debugging).
#[derive(Debug, Default)]
pub(crate) struct MoveStats {
    /// `UNSUBSCRIBE` + `SUBSCRIBE` batches sent.
    batches: AtomicU64,
    /// Channels in those batches.
    channels: AtomicU64,
    /// Channels whose move has completed.
    moved: AtomicU64,
}

impl MoveStats {
    /// (batches sent, channels in them, channels whose move completed)
    /// so far.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn get(&self) -> (u64, u64, u64) {
        (
            self.batches.load(Ordering::Relaxed),
            self.channels.load(Ordering::Relaxed),
            self.moved.load(Ordering::Relaxed),
        )
    }
}

/// Owns the hub and, once the first waiter watches, the subscriber task.
pub(crate) struct Subscriber {
    client: Option<Source>,
    layout: KeyLayout,
    /// This backend's id: the tail of its grant channels.
    backend_id: u64,
    hub: ReleaseHub,
    connect_timeout: Duration,
    running: Mutex<Option<Running>>,
    moves: Arc<MoveStats>,
}

impl Subscriber {
    /// A subscriber of the release channels of `layout` through `client`
    /// (`None`: no notifications).
    pub(crate) fn new(
        client: Option<Source>,
        layout: KeyLayout,
        connect_timeout: Duration,
        backend_id: u64,
    ) -> Self {
        Self {
            client,
            layout,
            backend_id,
            hub: ReleaseHub::new(),
            connect_timeout,
            running: Mutex::new(None),
            moves: Arc::default(),
        }
    }

    /// The subscription moves sent so far.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn moves(&self) -> &MoveStats {
        &self.moves
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
        self.subscribe(client, key, Kind::Released, watch).await
    }

    /// Registers the watcher of `waiter`, a waiter of this backend in the
    /// line of `key`, and subscribes to the key's grant channel for this
    /// backend (as [`watch`](Self::watch) does to its release channel). A
    /// grant to `waiter` wakes only this watch; a release of `key` heard
    /// by this backend wakes it too.
    pub(crate) async fn watch_grant(
        &self,
        key: &LockKey,
        waiter: WaiterId,
    ) -> Option<ReleaseWatch> {
        let client = self.client.as_ref()?;
        let watch = self.hub.watch_waiter(key, waiter);
        self.subscribe(client, key, Kind::Grant, watch).await
    }

    /// Makes sure `kind`'s channel of `key` is subscribed (waiting at most
    /// the connect timeout), then hands back `watch`.
    async fn subscribe(
        &self,
        client: &Source,
        key: &LockKey,
        kind: Kind,
        watch: ReleaseWatch,
    ) -> Option<ReleaseWatch> {
        let Some((status, requests)) = self.ensure_running(client) else {
            // Not inside a tokio runtime: no subscriber, waiters poll.
            return Some(watch);
        };
        let (done, subscribed) = oneshot::channel();
        let request = Request::Subscribe {
            sub: Sub {
                encoded_key: key.encoded().to_owned(),
                kind,
            },
            done,
        };
        // Sent also while the connection is down: the task keeps it and
        // subscribes once it reconnects. Only then is it not waited for.
        let down = *status.borrow() == Status::Down;
        if requests.send(request).is_ok() && !down {
            let _ = tokio::time::timeout(self.connect_timeout, subscribed).await;
        }
        Some(watch)
    }

    /// Moves this backend's subscription of `key`'s channel behind the other
    /// subscribers of that channel, in the background and without a moment
    /// unsubscribed. The backend calls this when one of its waiters has just
    /// acquired `key`: the winner goes to the back of the line, so handoffs
    /// rotate among the waiting processes. Moves requested while others
    /// wait are sent together, after any new subscriptions.
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
                backend_id: self.backend_id,
                known: HashSet::new(),
                hub: self.hub.clone(),
                timeout: self.connect_timeout,
                status: status_tx,
                count: count_tx,
                requests: requests_rx,
                moves: self.moves.clone(),
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
    backend_id: u64,
    /// Every subscription asked for, kept across reconnects (pruned with
    /// the subscriptions once nobody watches the key).
    known: HashSet<Sub>,
    hub: ReleaseHub,
    timeout: Duration,
    status: watch::Sender<Status>,
    count: watch::Sender<usize>,
    requests: mpsc::UnboundedReceiver<Request>,
    moves: Arc<MoveStats>,
}

/// How long a subscriber connection must have served for its loss to be
/// followed by an immediate reconnect (and the backoff to start over).
const STABLE_FOR: Duration = Duration::from_secs(5);

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
                    let started = tokio::time::Instant::now();
                    match self.serve(sink, stream, reconnecting).await {
                        Ended::Closed => return,
                        Ended::Lost => {
                            self.count.send_replace(0);
                            self.status.send_replace(Status::Connecting);
                            reconnecting = true;
                            // A connection that served for a while
                            // reconnects at once; one lost soon after it
                            // was made waits out the backoff, so a server
                            // refusing subscriptions for now (`BUSY`, a
                            // shard without a primary) is not asked in a
                            // tight loop (found in review: 3,681
                            // connections in 3.5 s).
                            if started.elapsed() >= STABLE_FOR {
                                backoff = BACKOFF_MIN;
                                tracing::debug!(
                                    "release subscriber lost its connection; reconnecting"
                                );
                                continue;
                            }
                            tracing::debug!(
                                ?backoff,
                                "release subscriber lost a new connection; backing off"
                            );
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
                        Some(Request::Subscribe { sub, done }) => {
                            self.known.insert(sub);
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
        // subscription -> its channel, for every subscribed channel.
        let mut channels: HashMap<Sub, String> = HashMap::new();
        // Every subscription asked for so far (also those still queued:
        // they are answered once their channel is subscribed below),
        // while someone still watches its key. A watch always sends its
        // request, so nothing watched is missing here for long.
        let mut pending = Pending::default();
        while let Ok(request) = self.requests.try_recv() {
            self.remember(&request);
            pending.push(request);
        }
        let watched: HashSet<String> = self.hub.watched_keys().into_iter().collect();
        self.known.retain(|sub| watched.contains(&sub.encoded_key));
        let wanted: Vec<Sub> = self.known.iter().cloned().collect();
        for sub in wanted {
            let channel = self.channel_of(&sub);
            match call(self.timeout, sink.subscribe(&channel)).await {
                Outcome::Done => {
                    channels.insert(sub, channel);
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
        // Our own unsubscribes whose confirmation has not come yet, per
        // channel (cluster: a confirmation looks like the server dropping
        // the channel).
        let mut ours = OwnUnsubscribes::new(stream.is_sharded());
        loop {
            if let Some(idle) = sink.take() {
                match self.next_job(idle, &mut pending, &channels, &mut ours) {
                    Ok(next) => job = Some(next),
                    Err(idle) => sink = Some(idle),
                }
            }
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(Event::Released(encoded_key)) => self.hub.notify(&encoded_key),
                    Some(Event::Granted(encoded_key, waiter)) => {
                        self.hub.notify_waiter(&encoded_key, waiter);
                    }
                    Some(Event::Malformed(e)) => tracing::debug!(error = %e, "ignoring a malformed release message"),
                    // A node connection of the cluster client dropped.
                    // The client does not follow the subscriptions that
                    // were on it to their slots' new owners (a dead
                    // primary's slots move to a replica): start over on a
                    // fresh connection, which subscribes every watched
                    // channel where its slot is now and wakes every waiter
                    // (found in review: releases went unheard for good).
                    Some(Event::Reconnected) => return Ended::Lost,
                    // The server dropped a shard channel whose slot moved
                    // (resharding, failover), which the client does not
                    // follow either: start over likewise. A confirmation
                    // of our own unsubscribe is not that.
                    Some(Event::ShardUnsubscribed(channel)) => {
                        if !ours.confirmed(&channel) && channels.values().any(|c| *c == channel) {
                            tracing::debug!(%channel, "a shard channel's slot moved; subscribing again");
                            return Ended::Lost;
                        }
                    }
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
                    match after {
                        After::Subscribed(subscribed) => {
                            let mut waiters = Vec::with_capacity(subscribed.len());
                            for (sub, channel, done) in subscribed {
                                if outcome == Outcome::Done {
                                    channels.insert(sub, channel);
                                }
                                waiters.push(done);
                            }
                            // The count first: a woken waiter may read it.
                            self.count.send_replace(channels.len());
                            // Refused: the waiters fall back on their backoff.
                            for done in waiters {
                                let _ = done.send(());
                            }
                        }
                        After::Moved(n) => {
                            if outcome == Outcome::Done {
                                self.moves.moved.fetch_add(n, Ordering::Relaxed);
                            }
                        }
                        After::Nothing => {}
                    }
                },
                // Always read requests, also while a job runs, so the next
                // job sees everything that waits and picks by priority.
                request = self.requests.recv() => {
                    let Some(request) = request else { return Ended::Closed };
                    self.remember(&request);
                    pending.accept(request, &channels);
                    while let Ok(request) = self.requests.try_recv() {
                        self.remember(&request);
                        pending.accept(request, &channels);
                    }
                },
                _ = prune.tick(), if sink.is_some() => {
                    let idle: Vec<Sub> = channels
                        .keys()
                        .filter(|s| !self.hub.is_watched(&s.encoded_key))
                        .cloned()
                        .collect();
                    if idle.is_empty() {
                        continue;
                    }
                    for sub in &idle {
                        self.known.remove(sub);
                    }
                    let gone: Vec<String> = idle.iter().filter_map(|s| channels.remove(s)).collect();
                    ours.sent(&gone);
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

impl Task {
    /// The channel of `sub`.
    fn channel_of(&self, sub: &Sub) -> String {
        match sub.kind {
            Kind::Released => self.layout.channel_of_encoded(&sub.encoded_key),
            Kind::Grant => self
                .layout
                .grant_channel_of_encoded(&sub.encoded_key, self.backend_id),
        }
    }

    /// Keeps the subscription a request asks for, for reconnects.
    fn remember(&mut self, request: &Request) {
        if let Request::Subscribe { sub, .. } = request {
            self.known.insert(sub.clone());
        }
    }

    /// The next command batch for the idle `sink`, by priority: new
    /// subscriptions, then moves. With nothing to send the sink comes back
    /// as the error.
    fn next_job(
        &self,
        sink: PubSubSink,
        pending: &mut Pending,
        channels: &HashMap<Sub, String>,
        ours: &mut OwnUnsubscribes,
    ) -> Result<SinkJob, PubSubSink> {
        loop {
            match pending.next() {
                None => return Err(sink),
                Some(Next::Subscribe(requests)) => {
                    let mut new = Vec::with_capacity(requests.len());
                    for (sub, done) in requests {
                        if channels.contains_key(&sub) {
                            let _ = done.send(());
                        } else {
                            let channel = self.channel_of(&sub);
                            new.push((sub, channel, done));
                        }
                    }
                    if !new.is_empty() {
                        return Ok(Box::pin(subscribe(sink, new, self.timeout)));
                    }
                }
                Some(Next::Move(keys)) => {
                    // Only channels still subscribed. Not only those still
                    // waited on: the waiter that won has usually stopped
                    // watching by now, and the move is what puts this
                    // process behind the others for the next release.
                    // Release channels only: grants go to one waiter named
                    // by the server, so their order does not matter.
                    let moved: Vec<String> = keys
                        .into_iter()
                        .filter_map(|encoded_key| {
                            let sub = Sub {
                                encoded_key,
                                kind: Kind::Released,
                            };
                            channels.get(&sub).cloned()
                        })
                        .collect();
                    if !moved.is_empty() {
                        self.moves.batches.fetch_add(1, Ordering::Relaxed);
                        self.moves
                            .channels
                            .fetch_add(moved.len() as u64, Ordering::Relaxed);
                        ours.sent(&moved);
                        return Ok(Box::pin(move_to_back(sink, moved, self.timeout)));
                    }
                }
            }
        }
    }
}

/// Our own unsubscribes on one subscriber connection whose confirmation
/// has not been read yet, per channel. On a sharded (cluster) connection
/// the confirmation is the same push as the server dropping a channel whose
/// slot moved; only the second calls for subscribing again.
struct OwnUnsubscribes {
    /// Only a sharded connection reports them.
    sharded: bool,
    awaited: HashMap<String, u32>,
}

impl OwnUnsubscribes {
    /// Most confirmations awaited per channel.
    const MAX_PER_CHANNEL: u32 = 64;
    /// Most channels tracked: should confirmations go missing, the map is
    /// emptied rather than grow (a slot move seen as a confirmation then
    /// costs only the waiters' polling, as before this was tracked).
    const MAX_CHANNELS: usize = 10_000;

    fn new(sharded: bool) -> Self {
        Self {
            sharded,
            awaited: HashMap::new(),
        }
    }

    /// Unsubscribes of `channels` were sent.
    fn sent(&mut self, channels: &[String]) {
        if !self.sharded {
            return;
        }
        if self.awaited.len() + channels.len() > Self::MAX_CHANNELS {
            self.awaited.clear();
        }
        for channel in channels {
            let n = self.awaited.entry(channel.clone()).or_default();
            *n = (*n + 1).min(Self::MAX_PER_CHANNEL);
        }
    }

    /// Whether the end of `channel`'s subscription just read confirms one
    /// of ours (and counts it).
    fn confirmed(&mut self, channel: &str) -> bool {
        match self.awaited.get_mut(channel) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            Some(_) => {
                self.awaited.remove(channel);
                true
            }
            None => false,
        }
    }
}

/// Requests waiting for the subscriber connection.
#[derive(Default)]
struct Pending {
    /// New subscriptions, in arrival order; each has a waiter blocked on it.
    subscribes: Vec<(Sub, oneshot::Sender<()>)>,
    /// Keys whose subscription is to move to the back, each once.
    moves: Vec<String>,
    queued_moves: HashSet<String>,
}

/// The next batch of [`Pending`] work.
enum Next {
    /// Subscribe to the channels of these keys (one `SUBSCRIBE`).
    Subscribe(Vec<(Sub, oneshot::Sender<()>)>),
    /// Move the subscriptions of these keys to the back (one `UNSUBSCRIBE`
    /// and one `SUBSCRIBE` of all their channels).
    Move(Vec<String>),
}

impl Pending {
    /// Queues `request`, or answers it at once when its key's channel is
    /// subscribed already (`channels`), even while a command runs.
    fn accept(&mut self, request: Request, channels: &HashMap<Sub, String>) {
        match request {
            Request::Subscribe { sub, done } if channels.contains_key(&sub) => {
                let _ = done.send(());
            }
            request => self.push(request),
        }
    }

    fn push(&mut self, request: Request) {
        match request {
            Request::Subscribe { sub, done } => self.subscribes.push((sub, done)),
            Request::Rotate { encoded_key } => {
                if self.queued_moves.insert(encoded_key.clone()) {
                    self.moves.push(encoded_key);
                }
            }
        }
    }

    /// Everything of the most urgent kind: all new subscriptions if any
    /// wait, else all moves.
    fn next(&mut self) -> Option<Next> {
        if !self.subscribes.is_empty() {
            return Some(Next::Subscribe(std::mem::take(&mut self.subscribes)));
        }
        if !self.moves.is_empty() {
            self.queued_moves.clear();
            return Some(Next::Move(std::mem::take(&mut self.moves)));
        }
        None
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
    /// These keys' channels (encoded key, channel, the waiter to tell) are
    /// subscribed if the outcome is `Done`.
    Subscribed(Vec<(Sub, String, oneshot::Sender<()>)>),
    /// This many channels were moved to the back if the outcome is `Done`.
    Moved(u64),
}

/// Subscribes to all `new` channels with one command.
async fn subscribe(
    mut sink: PubSubSink,
    new: Vec<(Sub, String, oneshot::Sender<()>)>,
    timeout: Duration,
) -> (PubSubSink, Outcome, After) {
    let channels: Vec<String> = new.iter().map(|(_, c, _)| c.clone()).collect();
    let ok = call(timeout, sink.subscribe_all(&channels)).await;
    (sink, ok, After::Subscribed(new))
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

/// Re-subscribes to `channels` (one `UNSUBSCRIBE` and one `SUBSCRIBE` of
/// all of them) so that the server lists this connection last for each.
/// Requested right after a waiter of this backend acquired the lock, so
/// the only releases of it in the short gap between `UNSUBSCRIBE` and
/// `SUBSCRIBE` would be this process's own, and those reach the hub
/// directly; a release by another process in the gap (when the move waited
/// behind other commands) is missed, and the waiters fall back on their
/// polling. (A pattern subscription could cover the gap, but Redis ACLs
/// only allow `PSUBSCRIBE` of patterns identical to a permitted one.)
async fn move_to_back(
    mut sink: PubSubSink,
    channels: Vec<String>,
    timeout: Duration,
) -> (PubSubSink, Outcome, After) {
    let steps = async {
        sink.unsubscribe(&channels).await?;
        sink.subscribe_all(&channels).await
    };
    let outcome = call(timeout, steps).await;
    (sink, outcome, After::Moved(channels.len() as u64))
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

/// Whether the server refused a subscriber command for good (an ACL
/// without the channel, say), rather than the connection failing or the
/// cluster being in flux: a `MOVED`/`ASK` (the slot map is stale: a slot
/// moved, a failover), `TRYAGAIN`, `CLUSTERDOWN` and other transient
/// answers reconnect and try again, where the next connection's slot map
/// routes it right (found testing the review fix: a `SSUBSCRIBE` right
/// after the slot's primary was killed answered `MOVED` and the channel
/// was left unsubscribed).
fn refused(e: &redis::RedisError) -> bool {
    let lost = e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || matches!(e.code(), Some("MOVED" | "ASK"))
        || crate::errors::redis_kind(e).is_transient();
    !lost
}

/// Runs one command on the subscriber connection within the timeout.
async fn call<T>(
    timeout: Duration,
    command: impl Future<Output = redis::RedisResult<T>>,
) -> Outcome {
    match tokio::time::timeout(timeout, command).await {
        Ok(Ok(_)) => Outcome::Done,
        Ok(Err(e)) if refused(&e) => {
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

#[cfg(test)]
mod pending_tests {
    use super::*;

    fn subscribe(key: &str) -> Request {
        let (done, _) = oneshot::channel();
        Request::Subscribe {
            sub: Sub {
                encoded_key: key.to_owned(),
                kind: Kind::Released,
            },
            done,
        }
    }

    fn rotate(key: &str) -> Request {
        Request::Rotate {
            encoded_key: key.to_owned(),
        }
    }

    /// A subscription requested after 300 moves goes first, and the moves
    /// follow as one batch, each key once.
    #[test]
    fn a_new_subscription_goes_before_any_number_of_moves() {
        let mut pending = Pending::default();
        for i in 0..300 {
            pending.push(rotate(&format!("k{i}")));
        }
        pending.push(rotate("k7"));
        pending.push(subscribe("new"));
        match pending.next() {
            Some(Next::Subscribe(s)) => {
                let keys: Vec<&str> = s.iter().map(|(k, _)| k.encoded_key.as_str()).collect();
                assert_eq!(keys, ["new"]);
            }
            _ => panic!("the new subscription did not go first"),
        }
        match pending.next() {
            Some(Next::Move(keys)) => {
                assert_eq!(keys.len(), 300);
                assert_eq!(keys[0], "k0");
            }
            _ => panic!("the moves did not follow as one batch"),
        }
        assert!(pending.next().is_none());
        // A key moved before may be queued again.
        pending.push(rotate("k7"));
        assert!(matches!(pending.next(), Some(Next::Move(k)) if k == ["k7"]));
    }

    /// Subscriptions waiting together go as one batch.
    #[test]
    fn waiting_subscriptions_go_together() {
        let mut pending = Pending::default();
        pending.push(subscribe("a"));
        pending.push(rotate("x"));
        pending.push(subscribe("b"));
        assert!(matches!(pending.next(), Some(Next::Subscribe(s)) if s.len() == 2));
        assert!(matches!(pending.next(), Some(Next::Move(k)) if k == ["x"]));
    }
}

#[cfg(all(test, feature = "testkit"))]
mod tests {
    use super::*;
    use crate::testkit::RedisServer;
    use std::time::Instant;

    /// With 300 moves queued on the subscriber connection, the `watch()` of
    /// a new key is served before them (none has completed when it
    /// returns); the moves go as one batch, each channel once, and a moved
    /// channel still hears releases. Counts, not timings. On the
    /// current-thread runtime the subscriber task cannot run while the test
    /// queues the moves, so all 300 and the new subscription wait together.
    #[tokio::test]
    async fn a_new_watch_does_not_wait_behind_moves() {
        let url = RedisServer::shared().url();
        let client = redis::Client::open(url).unwrap();
        let prefix = "distlock:";
        let sub = Subscriber::new(
            Some(Source::Client(client.clone())),
            KeyLayout::new(prefix).unwrap(),
            Duration::from_secs(10),
            7,
        );
        let tag = format!("moves:{}:{:?}", std::process::id(), Instant::now());
        let keys: Vec<LockKey> = (0..300)
            .map(|i| LockKey::new(prefix, format!("{tag}:{i}")).unwrap())
            .collect();
        let mut watches = Vec::new();
        for key in &keys {
            watches.push(sub.watch(key).await.unwrap());
        }
        assert_eq!(sub.subscribed_count(), 300);
        assert_eq!(sub.moves().get(), (0, 0, 0));

        for key in &keys {
            sub.rotate(key);
        }
        let new = LockKey::new(prefix, format!("{tag}:new")).unwrap();
        let _new_watch = sub.watch(&new).await.unwrap();
        let (batches, _, moved) = sub.moves().get();
        assert!(
            batches <= 1 && moved == 0,
            "the new watch() waited behind moves: {batches} batches, {moved} channels moved"
        );
        assert_eq!(sub.subscribed_count(), 301, "the new key is not subscribed");

        let deadline = Instant::now() + Duration::from_secs(10);
        // Until every move has completed (its `SUBSCRIBE` answered).
        while sub.moves().get().2 < 300 {
            assert!(Instant::now() < deadline, "moves: {:?}", sub.moves().get());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (batches, sent, moved) = sub.moves().get();
        assert_eq!(
            (sent, moved),
            (300, 300),
            "a channel moved twice or was left out"
        );
        assert_eq!(batches, 1, "300 moves took {batches} batches");
        assert_eq!(sub.subscribed_count(), 301);

        let mut publisher = client.get_multiplexed_async_connection().await.unwrap();
        let layout = KeyLayout::new(prefix).unwrap();
        let _: i64 = redis::cmd("PUBLISH")
            .arg(layout.channel(&keys[299]))
            .arg(keys[299].encoded())
            .query_async(&mut publisher)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), watches[299].released())
            .await
            .expect("a moved channel no longer hears releases");
    }
}
