//! What tests do behind a client's back: end a lease early on the server,
//! and point a client at an address where nothing listens.

use std::time::Duration;

use crate::LockKeys;

/// How long [`delete_lock`] waits for the connection and for the answer.
pub const TAMPER_TIMEOUT: Duration = Duration::from_secs(5);

/// Deletes a lock's key and owner label on the server at `url`, as if the
/// lease had run out: no release notification is published and the
/// fencing counter stays. The conformance harnesses' `expire_now`.
///
/// # Errors
///
/// A connection or command error, or a timeout after [`TAMPER_TIMEOUT`]
/// (as `redis::RedisError` of kind `IoError`).
pub async fn delete_lock(url: &str, keys: &LockKeys) -> redis::RedisResult<()> {
    let work = async {
        let mut conn = redis::Client::open(url)?
            .get_multiplexed_async_connection()
            .await?;
        redis::cmd("DEL")
            .arg(&keys.lock)
            .arg(&keys.owner)
            .query_async::<i64>(&mut conn)
            .await
            .map(drop)
    };
    match tokio::time::timeout(TAMPER_TIMEOUT, work).await {
        Ok(result) => result,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "deleting {} at {url}: no answer within {TAMPER_TIMEOUT:?}",
                keys.lock
            ),
        ))),
    }
}

/// A loopback port that nothing listens on (bound, then closed), for a
/// client that can never connect. Another process could take the port
/// afterwards; on a test machine that is rare enough.
///
/// # Errors
///
/// When no loopback port can be bound.
pub fn closed_loopback_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until the server at `url` answers `PING` (a restarted container
/// accepts connections on its mapped port a moment before Redis is ready),
/// trying every `every` with a 1 s bound on each try.
///
/// # Errors
///
/// When it did not answer within `within`; the message names the URL.
pub async fn wait_until_ready(url: &str, within: Duration, every: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Ok(client) = redis::Client::open(url) {
            let ping = async {
                let mut c = client.get_multiplexed_async_connection().await?;
                redis::cmd("PING").query_async::<String>(&mut c).await
            };
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), ping).await {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "Redis at {url} did not answer PING within {within:?}"
            ));
        }
        tokio::time::sleep(every).await;
    }
}

/// Kills the connections of ordinary clients of the server at `url`
/// (`CLIENT KILL ID`), as a restart does to them, sparing the sentinels'
/// links (named `sentinel-…`), replicas, pub/sub connections and its own;
/// returns how many it killed. Every step is bounded by [`TAMPER_TIMEOUT`].
///
/// # Errors
///
/// A connection or command error, or a timeout.
pub async fn kill_client_connections(url: &str) -> redis::RedisResult<usize> {
    let work = async {
        let mut admin = redis::Client::open(url)?
            .get_multiplexed_async_connection()
            .await?;
        let me: i64 = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut admin)
            .await?;
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .arg("TYPE")
            .arg("normal")
            .query_async(&mut admin)
            .await?;
        let mut killed = 0;
        for line in list.lines() {
            let field = |name: &str| {
                line.split(' ')
                    .find_map(|f| f.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
                    .unwrap_or_default()
            };
            let Ok(id) = field("id").parse::<i64>() else {
                continue;
            };
            if id == me || field("name").starts_with("sentinel-") {
                continue;
            }
            let n: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(id)
                .query_async(&mut admin)
                .await?;
            killed += usize::try_from(n).unwrap_or(0);
        }
        Ok(killed)
    };
    match tokio::time::timeout(TAMPER_TIMEOUT, work).await {
        Ok(result) => result,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("killing client connections at {url}: no answer within {TAMPER_TIMEOUT:?}"),
        ))),
    }
}

/// One call of kind `op` (`"acquire"`, `"extend"`, `"release"`, else
/// inspect) of `token` on `key`, checked against what it must answer when
/// `token` holds `key` (for acquire: when the key is free); the fault
/// tests run it as the first call after a connection died.
///
/// # Errors
///
/// The backend's error.
///
/// # Panics
///
/// When the call answers something else than that.
pub async fn holder_call(
    backend: &crate::RedisBackend,
    op: &str,
    key: &distlock::LockKey,
    token: &distlock::LockToken,
    ttl: Duration,
) -> Result<(), distlock::BackendError> {
    use distlock::{Acquire, Extend, LockBackend, Release};
    match op {
        "acquire" => backend
            .try_acquire(key, token, ttl, None)
            .await
            .map(|a| assert!(matches!(a, Acquire::Acquired { .. }), "{a:?}")),
        "extend" => backend
            .extend(key, token, ttl)
            .await
            .map(|e| assert_eq!(e, Extend::Extended)),
        "release" => backend
            .release(key, token)
            .await
            .map(|r| assert_eq!(r, Release::Released)),
        _ => backend.inspect(key).await.map(drop),
    }
}
