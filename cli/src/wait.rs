//! Waiting: for the lock (`run`), or until it is free (`wait`), and
//! `inspect`.

use std::time::Duration;

use distlock::{LockBackend, LockError, LockGuard, LockOptions, Locker, MAX_WAIT_TIMEOUT};
use distlock_redis::RedisBackend;
use serde::Serialize;
use tokio::time::Instant;

use crate::args::{InspectArgs, WaitArgs};
use crate::exit::Failure;

/// The longest sleep between two looks at a held lock in `wait`, in case a
/// release notification is missed (the holder crashed: its lease runs out
/// without a release).
const POLL_MAX: Duration = Duration::from_millis(500);

/// Takes the lock, waiting at most `limit` (`None`: no limit; zero: one
/// attempt). `Ok(None)` when it stayed held.
pub async fn acquire(
    locker: &Locker<RedisBackend>,
    name: &str,
    opts: &LockOptions,
    limit: Option<Duration>,
) -> Result<Option<LockGuard>, LockError> {
    // The first attempt does not wait: a backend that cannot be reached
    // (or refuses the credentials) when the command starts is an error at
    // once (exit 69), not a wait. Once waiting, the library waits through
    // passing backend errors (a restart, a failover) until the wait ends.
    if let Some(guard) = locker.try_lock_with(name, |_| opts.clone()).await? {
        return Ok(Some(guard));
    }
    if limit == Some(Duration::ZERO) {
        return Ok(None);
    }
    let deadline = limit.map(|l| Instant::now() + l);
    loop {
        // The library waits at most a day per call; longer waits take turns.
        let left = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => MAX_WAIT_TIMEOUT,
        };
        let opts = opts.clone().with_wait_timeout(left.min(MAX_WAIT_TIMEOUT));
        match locker.lock_with(name, |_| opts.clone()).await {
            Ok(guard) => return Ok(Some(guard)),
            Err(LockError::TimedOut { .. }) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(None);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// The first and the longest pause before another look after a passing
/// backend error in `wait`.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// `distlock wait`: 0 once the lock is free, the conflict code if it stays
/// held for the whole wait.
///
/// As in `run`, a backend error on the first look ends it at once (exit
/// 69); once waiting, transient errors ([`BackendError::is_transient`]: a
/// restart, a failover, a paused server) are waited through, with a
/// bounded backoff, until the wait ends; then the last one is the answer
/// (the lock's state is unknown). Other errors end the wait at once.
///
/// [`BackendError::is_transient`]: distlock::BackendError::is_transient
pub async fn wait(locker: &Locker<RedisBackend>, args: &WaitArgs) -> Result<u8, Failure> {
    let key = locker.key(&args.name)?;
    let deadline = args.wait.limit().map(|l| Instant::now() + l);
    // Registered before each look, so a release in between is not missed.
    let mut watch = locker.backend().watch(&key).await?;
    let mut first = true;
    let mut retry_delay = RETRY_MIN;
    loop {
        let info = match locker.inspect(&args.name).await {
            Ok(info) => {
                retry_delay = RETRY_MIN;
                info
            }
            Err(e) if !first && e.backend_error().is_some_and(|b| b.is_transient()) => {
                let now = Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    return Err(e.into());
                }
                if retry_delay == RETRY_MIN {
                    tracing::warn!(lock = %key, error = %e, "backend error while waiting; retrying");
                } else {
                    tracing::debug!(lock = %key, error = %e, "backend error while waiting; retrying");
                }
                let mut wake_at = now + retry_delay;
                if let Some(d) = deadline {
                    wake_at = wake_at.min(d);
                }
                retry_delay = (retry_delay * 2).min(RETRY_MAX);
                tokio::time::sleep_until(wake_at).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        first = false;
        if !info.held {
            return Ok(0);
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Err(Failure::new(
                args.wait.conflict_exit_code,
                format!("lock {:?} is still held; gave up waiting", args.name),
            ));
        }
        let mut wake_at = now + POLL_MAX;
        if let Some(remaining) = info.remaining {
            wake_at = wake_at.min(now + remaining + Duration::from_millis(1));
        }
        if let Some(d) = deadline {
            wake_at = wake_at.min(d);
        }
        match watch.as_mut() {
            Some(w) => {
                tokio::select! {
                    _ = w.released() => {}
                    _ = tokio::time::sleep_until(wake_at) => {}
                }
            }
            None => tokio::time::sleep_until(wake_at).await,
        }
    }
}

/// What `inspect --json` prints.
#[derive(Debug, Serialize)]
struct Shown<'a> {
    name: &'a str,
    /// The Redis key of the lock (to find it with `redis-cli`).
    key: &'a str,
    held: bool,
    owner: Option<&'a str>,
    remaining_ms: Option<u128>,
    last_fence: Option<u64>,
}

/// `distlock inspect`: prints the lock's state, exits 0.
pub async fn inspect(locker: &Locker<RedisBackend>, args: &InspectArgs) -> Result<u8, Failure> {
    let info = locker.inspect(&args.name).await?;
    let keys = locker.backend().keys(&locker.key(&args.name)?);
    let shown = Shown {
        name: &args.name,
        key: &keys.lock,
        held: info.held,
        owner: info.owner.as_deref(),
        remaining_ms: info.remaining.map(|r| r.as_millis()),
        last_fence: info.last_fence,
    };
    let text = if args.json {
        let line = serde_json::to_string(&shown)
            .map_err(|e| Failure::new(crate::exit::INTERNAL, e.to_string()))?;
        format!("{line}\n")
    } else {
        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
        format!(
            "name:       {}\nkey:        {}\nheld:       {}\nowner:      {}\nremaining:  {}\nlast fence: {}\n",
            shown.name,
            shown.key,
            if shown.held { "yes" } else { "no" },
            or_dash(shown.owner.map(str::to_owned)),
            or_dash(info.remaining.map(|r| format!("{:.3}s", r.as_secs_f64()))),
            or_dash(shown.last_fence.map(|f| f.to_string())),
        )
    };
    print_out(&text)?;
    Ok(0)
}

/// Writes `text` to standard output. A reader that went away early
/// (`distlock inspect name | head -1`) is not an error: the output ends
/// quietly with exit code 0, as with other Unix tools. Any other write
/// error is [`INTERNAL`](crate::exit::INTERNAL).
fn print_out(text: &str) -> Result<(), Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::new(
            crate::exit::INTERNAL,
            format!("cannot write to standard output: {e}"),
        )),
    }
}
