//! The release subscriber's connection for each topology: plain
//! `SUBSCRIBE` on one server or on the primary Sentinel names, sharded
//! `SSUBSCRIBE` through a RESP3 cluster connection (each channel is
//! subscribed on the node that owns its slot, and followed by the `redis`
//! crate after slot moves and reconnects).

use std::sync::Arc;

use distlock::WaiterId;
use futures::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, RedisResult, Value};
use tokio::sync::mpsc;

use super::cluster::ClusterSettings;
use super::sentinel::SentinelRemote;

/// Where the subscriber connects.
#[derive(Clone)]
pub(crate) enum Source {
    /// One server.
    Client(redis::Client),
    /// The current primary of a Sentinel group, looked up at each connect.
    Sentinel(Arc<SentinelRemote>),
    /// A cluster: sharded pub/sub.
    Cluster(ClusterSettings),
}

impl Source {
    /// A new subscriber connection, split into commands and messages.
    pub(crate) async fn connect(&self) -> RedisResult<(Sink, Stream)> {
        match self {
            Source::Client(client) => {
                let (sink, stream) = client.get_async_pubsub().await?.split();
                Ok((Sink::Plain(sink), Stream::Plain(stream)))
            }
            Source::Sentinel(remote) => {
                let client = remote.primary_client().await.map_err(|e| {
                    redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "Sentinel lookup failed",
                        e.to_string(),
                    ))
                })?;
                let (sink, stream) = client.get_async_pubsub().await?.split();
                Ok((Sink::Plain(sink), Stream::Plain(stream)))
            }
            Source::Cluster(settings) => {
                let (tx, rx) = mpsc::unbounded_channel();
                let client = settings
                    .builder()
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(tx)
                    .build()?;
                let conn = client.get_async_connection().await?;
                Ok((Sink::Sharded(conn), Stream::Sharded(rx)))
            }
        }
    }
}

/// The command side of a subscriber connection.
pub(crate) enum Sink {
    Plain(PubSubSink),
    Sharded(ClusterConnection),
}

impl Sink {
    pub(crate) async fn subscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Sink::Plain(sink) => sink.subscribe(channel).await,
            Sink::Sharded(conn) => conn.ssubscribe(channel).await,
        }
    }

    /// Subscribes to all `channels`: one `SUBSCRIBE` on a single server;
    /// one `SSUBSCRIBE` each on a cluster (they may live on different
    /// nodes).
    pub(crate) async fn subscribe_all(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Sink::Plain(sink) => sink.subscribe(channels).await,
            Sink::Sharded(conn) => {
                for channel in channels {
                    conn.ssubscribe(channel).await?;
                }
                Ok(())
            }
        }
    }

    pub(crate) async fn unsubscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Sink::Plain(sink) => sink.unsubscribe(channels).await,
            Sink::Sharded(conn) => {
                // One by one: the channels may live on different nodes.
                for channel in channels {
                    conn.sunsubscribe(channel).await?;
                }
                Ok(())
            }
        }
    }

    pub(crate) async fn ping(&mut self) -> RedisResult<()> {
        match self {
            Sink::Plain(sink) => sink.ping::<Value>().await.map(drop),
            Sink::Sharded(conn) => redis::cmd("PING")
                .query_async::<Value>(conn)
                .await
                .map(drop),
        }
    }
}

/// What the message side of a subscriber connection delivered.
pub(crate) enum Event {
    /// A release message with this payload (the encoded lock key).
    Released(String),
    /// A grant message (`ENCODED-KEY WAITER`): the lock was handed to this
    /// waiter of this backend.
    Granted(String, WaiterId),
    /// A message that could not be read.
    Malformed(redis::RedisError),
    /// A node connection of the client dropped underneath (cluster):
    /// messages may have been missed meanwhile, and the subscriptions that
    /// were on it are not followed to their slots' new owners.
    Reconnected,
    /// The end of this shard channel's subscription (cluster): the
    /// confirmation of our own `SUNSUBSCRIBE`, or the server dropping it
    /// because its slot moved to another primary (resharding, failover).
    ShardUnsubscribed(String),
    /// Nothing for the subscriber (a subscription confirmation).
    Other,
}

impl Event {
    /// A message's payload: an encoded key (encoded keys never contain a
    /// space) for a release, `ENCODED-KEY WAITER` for a grant.
    fn from_payload(payload: String) -> Self {
        let Some((key, waiter)) = payload.rsplit_once(' ') else {
            return Event::Released(payload);
        };
        match WaiterId::from_hex(waiter) {
            Some(waiter) if !key.is_empty() && !key.contains(' ') => {
                Event::Granted(key.to_owned(), waiter)
            }
            _ => Event::Malformed(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "a grant message that is not `ENCODED-KEY WAITER`",
                payload,
            ))),
        }
    }
}

/// The message side of a subscriber connection.
pub(crate) enum Stream {
    Plain(PubSubStream),
    Sharded(mpsc::UnboundedReceiver<PushInfo>),
}

impl Stream {
    /// Whether this is a sharded (cluster) subscriber connection.
    pub(crate) fn is_sharded(&self) -> bool {
        matches!(self, Stream::Sharded(_))
    }

    /// The next event; `None` when the connection is gone.
    pub(crate) async fn next(&mut self) -> Option<Event> {
        match self {
            Stream::Plain(stream) => {
                let msg = stream.next().await?;
                Some(match msg.get_payload::<String>() {
                    Ok(payload) => Event::from_payload(payload),
                    Err(e) => Event::Malformed(e),
                })
            }
            Stream::Sharded(rx) => {
                let push = rx.recv().await?;
                Some(match push.kind {
                    PushKind::SMessage | PushKind::Message => match push.data.get(1) {
                        Some(payload) => match redis::from_redis_value_ref::<String>(payload) {
                            Ok(payload) => Event::from_payload(payload),
                            Err(e) => Event::Malformed(e.into()),
                        },
                        None => Event::Other,
                    },
                    PushKind::Disconnection => Event::Reconnected,
                    PushKind::SUnsubscribe => match push
                        .data
                        .first()
                        .and_then(|c| redis::from_redis_value_ref::<String>(c).ok())
                    {
                        Some(channel) => Event::ShardUnsubscribed(channel),
                        None => Event::Other,
                    },
                    _ => Event::Other,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_releases_or_grants() {
        assert!(matches!(
            Event::from_payload("p{k}".to_owned()),
            Event::Released(k) if k == "p{k}"
        ));
        match Event::from_payload("p{k} 00000000000000ab".to_owned()) {
            Event::Granted(k, w) => {
                assert_eq!(k, "p{k}");
                assert_eq!(w, WaiterId::from_u64(0xab));
            }
            _ => panic!("not a grant"),
        }
        for bad in [
            "p{k} xyz",
            " 00000000000000ab",
            "a b 00000000000000ab",
            "p{k} 00ab",
        ] {
            assert!(
                matches!(Event::from_payload(bad.to_owned()), Event::Malformed(_)),
                "{bad:?}"
            );
        }
    }
}
