//! The command line, declared with clap's derive API.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::exit;

const AFTER_HELP: &str = "\
Examples:
  # run tonight's report once across the fleet (cron on every machine)
  distlock --url redis://redis.internal:6379 run -n nightly-report -- /usr/local/bin/report

  # wait up to 5 minutes for the lock, then give up with exit code 75
  REDIS_URL=redis://redis.internal distlock run -w 300 deploy -- ./deploy.sh

  # who holds it?
  distlock inspect --json nightly-report

Exit codes: the command's own status (128+N if signal N killed it); \
64 usage error; 69 backend error (the message names the kind); \
70 distlock itself failed; 75 not acquired within the wait (-E changes it); 78 bad connection settings; \
79 lease lost, or --max-hold reached, while the command ran (it was stopped); 126/127 the command could \
not be executed / was not found.

Connection settings, highest precedence first: --url, the REDIS_URL environment \
variable, the `url` of --config FILE (a TOML file with the fields of \
distlock_redis::RedisConfig: url, key_prefix, pool_size, connect_timeout, \
command_timeout, pool_wait_timeout, tls_ca_cert, tls_client_cert, tls_client_key, \
fence_retention, waiter_queue, topology, replica_ack). \
Passwords are never printed.";

/// Distributed locks in Redis from the shell: flock(1) across machines.
#[derive(Debug, Parser)]
#[command(name = "distlock", version, after_help = AFTER_HELP, max_term_width = 100)]
pub struct Cli {
    /// Connection settings.
    #[command(flatten)]
    pub connection: Connection,
    /// Log more on stderr: -v info, -vv debug, -vvv trace (default: warnings
    /// only, such as a failed lease renewal). RUST_LOG, when set, overrides
    /// it (e.g. RUST_LOG=distlock=debug).
    #[arg(short = 'v', long = "verbose", global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Where Redis is.
#[derive(Debug, Args)]
pub struct Connection {
    /// The Redis URL: redis://[USER[:PASSWORD]@]HOST[:PORT][/DB], or rediss:// for TLS.
    /// Overrides REDIS_URL and the config file's url.
    #[arg(
        long,
        global = true,
        env = "REDIS_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub url: Option<String>,
    /// A TOML file with the Redis settings (distlock_redis::RedisConfig).
    #[arg(
        long,
        global = true,
        env = "DISTLOCK_CONFIG",
        hide_env_values = true,
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    /// The namespace of lock names: lockers with different prefixes never
    /// share a lock.
    #[arg(long, global = true, default_value = "", hide_default_value = true)]
    pub prefix: String,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run COMMAND while holding the lock NAME; exit with its status.
    ///
    /// The lease is renewed every third of its TTL while the command runs
    /// and released when it exits. The command gets DISTLOCK_NAME and
    /// DISTLOCK_FENCE (the fencing token: pass it to the resource you
    /// write to) in its environment. If the lease is lost, the command gets
    /// SIGTERM, then SIGKILL after --kill-grace, and distlock exits with 79.
    /// SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and SIGALRM are
    /// passed on to the command's process group; while distlock still waits
    /// for the lock they end the wait (exit 128+N, the command never runs),
    /// and once the command has ended, while the lock is released, they
    /// give exit 128+N (a second one gives up on the release).
    /// SIGTSTP (Ctrl-Z), SIGTTIN and SIGTTOU are ignored: a stopped distlock
    /// could not renew the lease. SIGSTOP (it cannot be caught), like
    /// SIGKILL, leaves the command running without renewal: the lease runs
    /// out after the TTL and another run may take the lock meanwhile.
    Run(RunArgs),
    /// Show the lock NAME: held, owner, remaining lease, last fencing token.
    Inspect(InspectArgs),
    /// Wait until the lock NAME is free (without taking it).
    Wait(WaitArgs),
}

/// How long to wait for a held lock.
#[derive(Debug, Args)]
pub struct WaitOpts {
    /// Wait at most SECONDS (fractions allowed) for the lock; default: no limit.
    #[arg(short = 'w', long = "wait", visible_alias = "timeout", value_name = "SECONDS",
          value_parser = parse_seconds, conflicts_with = "no_wait")]
    pub wait: Option<Duration>,
    /// Do not wait: fail at once if the lock is held (as -w 0).
    #[arg(short = 'n', long = "no-wait", visible_alias = "nonblock")]
    pub no_wait: bool,
    /// The exit code when the lock is not acquired (run) or stays held (wait).
    #[arg(short = 'E', long = "conflict-exit-code", value_name = "N",
          default_value_t = exit::CONFLICT)]
    pub conflict_exit_code: u8,
}

impl WaitOpts {
    /// The wait limit: `Some(ZERO)` for `-n`, `None` for no limit.
    pub fn limit(&self) -> Option<Duration> {
        if self.no_wait {
            Some(Duration::ZERO)
        } else {
            self.wait
        }
    }
}

/// `distlock run`.
#[derive(Debug, Args)]
#[command(arg_required_else_help = true)]
pub struct RunArgs {
    /// The lock name.
    pub name: String,
    /// Waiting and the conflict exit code.
    #[command(flatten)]
    pub wait: WaitOpts,
    /// The lease: how long the lock outlives a crashed distlock (renewed
    /// while the command runs). Seconds, or a duration such as 30s, 2m.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub ttl: Duration,
    /// The longest time the lock is held: renewal stops there, and a
    /// command still running is stopped as for a lost lease (SIGTERM, then
    /// SIGKILL after --kill-grace; exit 79), so a hung command cannot hold
    /// the lock forever. At least --ttl. Seconds or a duration (e.g. 2h).
    /// Default: no limit.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_hold: Option<Duration>,
    /// A label stored with the lock for `inspect` (default: HOST:PID).
    #[arg(long, value_name = "LABEL")]
    pub owner: Option<String>,
    /// After SIGTERM for a lost lease, how long the command may take to
    /// exit before it gets SIGKILL. Seconds or a duration.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub kill_grace: Duration,
    /// The command and its arguments (after `--`).
    #[arg(required = true, last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// `distlock inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The lock name.
    pub name: String,
    /// Print one JSON object: {"name", "held", "owner", "remaining_ms", "last_fence"}.
    #[arg(long)]
    pub json: bool,
}

/// `distlock wait`.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// The lock name.
    pub name: String,
    /// Waiting and the exit code if the lock stays held.
    #[command(flatten)]
    pub wait: WaitOpts,
}

/// The longest duration any option takes: 10 years. Beyond it a deadline
/// (now + the duration) could overflow the clock; nothing here needs more.
const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// Seconds as flock(1) takes them: a non-negative decimal number, at most
/// [`MAX_DURATION`].
fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("{s:?} is not a usable number of seconds"))
        .and_then(|d| at_most(s, d))
}

/// Seconds (`30`, `0.5`) or a humantime duration (`30s`, `1m 30s`, `250ms`),
/// at most [`MAX_DURATION`].
fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim().parse::<f64>().is_ok() {
        return parse_seconds(s);
    }
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration (seconds, or e.g. 30s, 2m): {e}"))
        .and_then(|d| at_most(s, d))
}

fn at_most(s: &str, d: Duration) -> Result<Duration, String> {
    if d > MAX_DURATION {
        return Err(format!(
            "{s:?} is longer than the longest duration taken (10 years)"
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Found in an operator trial: `run --help` named 3 of the 7 forwarded
    /// signals, and `--help` left out exit code 70.
    #[test]
    fn the_help_names_every_handled_signal_and_exit_code() {
        let mut cli = Cli::command();
        let top = cli.render_long_help().to_string();
        let numbers: Vec<&str> = top.split(|c: char| !c.is_ascii_digit()).collect();
        for code in [
            exit::USAGE,
            exit::BACKEND,
            exit::INTERNAL,
            exit::CONFLICT,
            exit::CONFIG,
            exit::LOST,
            exit::NOT_EXECUTABLE,
            exit::NOT_FOUND,
        ] {
            assert!(
                numbers.contains(&code.to_string().as_str()),
                "exit code {code} missing:\n{top}"
            );
        }
        let run = cli
            .find_subcommand_mut("run")
            .unwrap()
            .render_long_help()
            .to_string();
        // The help wraps lines: compare without line breaks.
        let run = run.split_whitespace().collect::<Vec<_>>().join(" ");
        for sig in crate::run::FORWARDED.iter().chain(&crate::run::IGNORED) {
            assert!(run.contains(sig.as_str()), "{sig} missing:\n{run}");
        }
        assert!(run.contains("SIGSTOP"), "{run}");
    }

    #[test]
    fn durations_take_seconds_or_units() {
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_seconds("0").unwrap(), Duration::ZERO);
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("soon").is_err());
        // Found in review: 1e19 s parsed, and `now + it` panicked.
        for huge in ["1e19", "1e10", "400y", "100000000000000s"] {
            let err = parse_duration(huge).unwrap_err();
            assert!(err.contains("10 years"), "{huge}: {err}");
        }
        assert!(parse_seconds("1e19").is_err());
        assert_eq!(
            parse_duration("3650d").unwrap(),
            Duration::from_secs(3650 * 86400)
        );
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn run_takes_flock_options_and_the_command_after_dashes() {
        let cli = Cli::try_parse_from([
            "distlock", "run", "-n", "-E", "3", "--ttl", "5s", "job", "--", "echo", "-n", "hi",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.name, "job");
        assert_eq!(run.wait.limit(), Some(Duration::ZERO));
        assert_eq!(run.wait.conflict_exit_code, 3);
        assert_eq!(run.ttl, Duration::from_secs(5));
        assert_eq!(run.command, ["echo", "-n", "hi"]);
        assert!(
            Cli::try_parse_from(["distlock", "run", "-n", "-w", "1", "job", "--", "x"]).is_err()
        );
        assert!(Cli::try_parse_from(["distlock", "run", "job"]).is_err());
    }
}
