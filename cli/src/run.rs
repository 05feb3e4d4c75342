//! `distlock run`: hold a lock while a child process runs.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use distlock::{LockGuard, LockOptions, Locker, Release};
use distlock_redis::RedisBackend;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;

use crate::args::RunArgs;
use crate::exit::{self, Failure};
use crate::wait::acquire;

/// How long a release after the command may take before distlock gives up
/// (the lease then runs out at its TTL). The backend's own command timeout
/// normally ends it sooner.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// The signals passed on to the command. Each would otherwise end
/// `distlock` at once and leave the command running without the lock
/// (SIGQUIT, SIGUSR1, SIGUSR2 and SIGALRM too, found in review).
pub const FORWARDED: [Signal; 7] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
];

/// The catchable job-control stop signals, caught and ignored: their
/// default action stops distlock, and a stopped distlock renews nothing,
/// so its lease ran out and another run took the lock while this run's
/// command (in its own process group, not stopped) went on (found in an
/// operator trial). SIGSTOP cannot be caught: like SIGKILL it leaves the
/// command running without renewal.
pub const IGNORED: [Signal; 3] = [Signal::SIGTSTP, Signal::SIGTTIN, Signal::SIGTTOU];

/// Runs the command under the lock; returns the exit code.
pub async fn run(locker: &Locker<RedisBackend>, args: RunArgs) -> Result<u8, Failure> {
    let owner = args.owner.clone().unwrap_or_else(default_owner);
    let mut opts = LockOptions::default()
        .with_ttl(args.ttl)
        .with_owner(owner)
        .with_auto_renew(true);
    if let Some(max_hold) = args.max_hold {
        opts = opts.with_max_hold(max_hold);
    }
    opts.validate()?;
    let conflict = args.wait.conflict_exit_code;
    let mut signals = Signals::new()?;

    // Waiting for the lock: a signal ends the wait (and distlock).
    let guard = tokio::select! {
        guard = acquire(locker, &args.name, &opts, args.wait.limit()) => {
            guard.map_err(|e| Failure::from_lock_error(e, conflict))?
        }
        sig = signals.recv() => {
            // The acquisition was dropped when this branch was chosen, which
            // queued the give-back of its token (a lock taken in flight, a
            // place in line). Wait for it before exiting, or the lock could
            // stay held for a TTL; bounded, and a second signal ends it.
            // (Before: a fixed 300 ms, too short for a slow server.)
            tokio::select! {
                _ = tokio::time::timeout(RELEASE_TIMEOUT, locker.flush()) => {}
                _ = signals.recv() => {}
            }
            return Ok(128 + sig as u8);
        }
    };
    let Some(guard) = guard else {
        return Err(Failure::new(
            conflict,
            conflict_message(locker, &args.name, args.wait.limit()).await,
        ));
    };
    // Shortly after the acquire request that --max-hold counts from.
    let acquired_at = Instant::now();
    let max_hold_reached = || {
        // Renewal stops there: the lease then runs out a drift allowance
        // before it (a second's slack for the acquire's round trip).
        args.max_hold.is_some_and(|m| {
            acquired_at.elapsed() + LockOptions::drift(args.ttl) + Duration::from_secs(1) >= m
        })
    };

    let mut command = Command::new(&args.command[0]);
    command
        .args(&args.command[1..])
        .env("DISTLOCK_NAME", &args.name)
        .env("DISTLOCK_FENCE", guard.fence().to_string())
        // Its own process group (as `timeout` runs it), so that stopping
        // it for a lost lease stops what it started too, not only its
        // first process (a shell script's running child survived that,
        // found in review).
        .process_group(0)
        // A last resort if distlock itself fails: never leave the child
        // running without the lock.
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                exit::NOT_FOUND
            } else {
                exit::NOT_EXECUTABLE
            };
            let _ = release(guard).await;
            return Err(Failure::new(
                code,
                format!("cannot run {:?}: {e}", args.command[0]),
            ));
        }
    };
    // The command's process group (its id is the command's pid).
    let group = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(|id| Pid::from_raw(-id));

    let lease = guard.lease();
    let mut lost = false;
    let mut kill_at: Option<Instant> = None;
    // A signal that reaches distlock after the command ended (see the
    // release stage below).
    let mut signalled: Option<Signal> = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            sig = signals.recv() => {
                // The command may have ended just before (both were ready
                // and the signal was picked): then the signal came after
                // it, is not passed on (what the command left running is
                // its own business), and is reported as in the release
                // stage, not lost (found in review: distlock exited 0, the
                // SIGTERM gone).
                if let Ok(Some(status)) = child.try_wait() {
                    signal_while_releasing(sig, "as the command ended", &args.name);
                    signalled = Some(sig);
                    break Ok(status);
                }
                if let Some(group) = group {
                    let _ = kill(group, sig);
                }
            }
            _ = lease.lost(), if !lost => {
                lost = true;
                let what = match args.max_hold {
                    Some(m) if max_hold_reached() => format!("ran out at --max-hold ({m:?})"),
                    _ => "was lost".to_owned(),
                };
                eprintln!(
                    "distlock: the lease on {:?} {what}; stopping the command (SIGTERM, SIGKILL after {:?})",
                    args.name, args.kill_grace
                );
                if let Some(group) = group {
                    let _ = kill(group, Signal::SIGTERM);
                }
                kill_at = Some(Instant::now() + args.kill_grace);
            }
            _ = sleep_until(kill_at) => {
                kill_at = None;
                if let Some(group) = group {
                    let _ = kill(group, Signal::SIGKILL);
                }
                let _ = child.start_kill();
            }
        }
    };
    let status = status
        .map_err(|e| Failure::new(exit::INTERNAL, format!("waiting for the command: {e}")))?;
    let stopped = lost;
    let lost = stopped || lease.is_lost();
    if lost {
        // What the command started and left running must not go on
        // without the lock either.
        if let Some(group) = group {
            let _ = kill(group, Signal::SIGKILL);
        }
    }
    // A signal while the lock is being released (a release can stall on
    // an unreachable Redis, up to RELEASE_TIMEOUT) is not swallowed: the
    // release goes on, bounded, and distlock then exits 128 + N, as for
    // a signal while waiting; a second signal gives up on the release (the
    // lease then runs out at its TTL). Before, distlock exited with the
    // command's status as if no signal had come (found in an operator
    // trial). Not passed on: the command has ended, and what it left
    // running is its own business (or was killed above).
    let released = {
        let releasing = release(guard);
        tokio::pin!(releasing);
        loop {
            tokio::select! {
                outcome = &mut releasing => break Some(outcome),
                sig = signals.recv() => {
                    if signalled.is_some() {
                        break None;
                    }
                    signalled = Some(sig);
                    signal_while_releasing(sig, "while releasing", &args.name);
                }
            }
        }
    };
    let code = match released {
        Some(Ok(Release::Released)) if !lost => status_code(status),
        Some(Ok(_)) => return Err(lost_failure(&args, stopped, max_hold_reached(), status)),
        _ if lost => return Err(lost_failure(&args, stopped, max_hold_reached(), status)),
        Some(Err(message)) => {
            // The command ran with a valid lease; only the release failed.
            eprintln!("distlock: warning: {message}; the lease will run out at its TTL");
            status_code(status)
        }
        None => {
            eprintln!(
                "distlock: warning: release given up on a second signal; the lease will run out at its TTL"
            );
            status_code(status)
        }
    };
    match signalled {
        Some(sig) => Err(Failure::new(
            128 + sig as u8,
            format!(
                "{sig} arrived before distlock exited; the command {}",
                how_it_ended(status)
            ),
        )),
        None => Ok(code),
    }
}

/// Exit 79, saying how the command ended: its own result is otherwise
/// hidden behind the lost lease (found in an operator trial).
fn lost_failure(args: &RunArgs, stopped: bool, max_hold: bool, status: ExitStatus) -> Failure {
    let name = &args.name;
    let ended = how_it_ended(status);
    let message = match args.max_hold {
        Some(m) if stopped && max_hold => format!(
            "held the lock on {name:?} for --max-hold ({m:?}); the command was stopped and {ended}"
        ),
        _ if stopped => {
            format!("lost the lease on {name:?} while the command ran; it was stopped and {ended}")
        }
        _ => {
            format!(
                "lost the lease on {name:?} before the command ended (exclusion was not \
             guaranteed until its end); the command {ended}"
            )
        }
    };
    Failure::new(exit::LOST, message)
}

/// "exited with status N" or "was killed by signal N (SIGNAME)".
fn how_it_ended(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(name) => format!("was killed by signal {sig} ({name})"),
            Err(_) => format!("was killed by signal {sig}"),
        },
        (None, None) => format!("ended ({status})"),
    }
}

/// Releases with a bound; the error message on failure.
async fn release(guard: LockGuard) -> Result<Release, String> {
    match tokio::time::timeout(RELEASE_TIMEOUT, guard.release()).await {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(e)) => Err(format!("release failed: {e}")),
        Err(_) => Err(format!("release took longer than {RELEASE_TIMEOUT:?}")),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The child's status as a shell reports it: its exit code, or 128 + the
/// signal that killed it.
fn status_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => (code & 0xff) as u8,
        (None, Some(sig)) => (128 + sig).clamp(0, 255) as u8,
        (None, None) => 255,
    }
}

/// One line about who holds the lock (best effort).
async fn conflict_message(
    locker: &Locker<RedisBackend>,
    name: &str,
    wait: Option<Duration>,
) -> String {
    let waited = match wait {
        Some(w) if w.is_zero() => "held".to_owned(),
        Some(w) => format!("still held after {w:?}"),
        None => "held".to_owned(),
    };
    let holder = match locker.inspect(name).await {
        Ok(info) if info.held => {
            let owner = info.owner.as_deref().unwrap_or("unknown owner");
            match info.remaining {
                Some(r) => format!(" by {owner} (lease {:.1}s left)", r.as_secs_f64()),
                None => format!(" by {owner}"),
            }
        }
        _ => String::new(),
    };
    format!("lock {name:?} is {waited}{holder}; not acquired")
}

/// `HOST:PID`.
fn default_owner() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}:{}", std::process::id())
}

/// The forwarded signals, registered before the lock is taken so that none
/// is missed (and none kills distlock with the lock held), and the ignored
/// stop signals ([`IGNORED`]).
struct Signals {
    forwarded: Vec<(Signal, tokio::signal::unix::Signal)>,
    ignored: Vec<(Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn new() -> Result<Self, Failure> {
        Ok(Self {
            forwarded: Self::catch(&FORWARDED)?,
            ignored: Self::catch(&IGNORED)?,
        })
    }

    fn catch(signals: &[Signal]) -> Result<Vec<(Signal, tokio::signal::unix::Signal)>, Failure> {
        signals
            .iter()
            .map(|&sig| {
                signal(SignalKind::from_raw(sig as i32))
                    .map(|s| (sig, s))
                    .map_err(|e| Failure::new(exit::INTERNAL, format!("cannot handle {sig}: {e}")))
            })
            .collect()
    }

    /// The next forwarded signal received. An ignored one received
    /// meanwhile is reported on stderr. Cancel safe.
    async fn recv(&mut self) -> Signal {
        fn any(
            list: &mut [(Signal, tokio::signal::unix::Signal)],
        ) -> impl std::future::Future<Output = Signal> + '_ {
            let waits = list.iter_mut().map(|(sig, s)| {
                let sig = *sig;
                Box::pin(async move {
                    s.recv().await;
                    sig
                })
            });
            async move { futures::future::select_all(waits).await.0 }
        }
        loop {
            tokio::select! {
                sig = any(&mut self.forwarded) => return sig,
                sig = any(&mut self.ignored) => {
                    eprintln!(
                        "distlock: {sig} ignored: a stopped distlock could not renew the lease \
                         (stop the command itself, or end it with SIGTERM)"
                    );
                }
            }
        }
    }
}

/// Says that `sig` came `when` (as the command ended, or while releasing):
/// the release goes on, bounded, and a second signal gives up on it.
fn signal_while_releasing(sig: Signal, when: &str, name: &str) {
    eprintln!(
        "distlock: {sig} {when}; finishing the release of the lock on {name:?} \
         (at most {RELEASE_TIMEOUT:?}, a second signal gives up on it)"
    );
}
