//! Running the `distlock` binary against real Redis.

#![allow(dead_code)] // each test binary uses part of it

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use distlock_redis::{LockInfo, Locker, RedisBackend};

/// Exit codes, as documented in the README and `distlock --help`.
pub const USAGE: i32 = 64;
pub const BACKEND: i32 = 69;
pub const CONFLICT: i32 = 75;
pub const CONFIG: i32 = 78;
pub const LOST: i32 = 79;

/// The longest any step may take before the test gives up: generous, the
/// machine is shared and slow; only a hang reaches it.
pub const PATIENCE: Duration = Duration::from_secs(90);

/// The `distlock` binary with `--url url` and no connection settings from
/// the test's own environment.
pub fn distlock(url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_distlock"));
    command
        .env_remove("REDIS_URL")
        .env_remove("DISTLOCK_CONFIG")
        .arg("--url")
        .arg(url);
    command
}

/// Runs to completion (bounded by [`PATIENCE`]).
pub fn output(command: &mut Command) -> Output {
    finish(spawn(command))
}

/// Starts with piped stdout and stderr.
pub fn spawn(command: &mut Command) -> Child {
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the distlock binary starts")
}

/// Waits for a spawned child (bounded by [`PATIENCE`]) and collects its output.
pub fn finish(mut child: Child) -> Output {
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > PATIENCE {
            let _ = child.kill();
            panic!("distlock did not finish within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// The exit code (panics on a signal death, with the output).
pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or_else(|| {
        panic!(
            "distlock died of a signal: {:?}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A lock name no other test (or earlier run) uses.
pub fn unique(what: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "cli-test:{what}:{}:{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh directory for the files the children write.
pub fn scratch(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(what).replace(':', "-"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A command held at a gate: `sh -c script` writes its pid to `ready`, then
/// runs until the test creates `go`.
pub struct Gated {
    pub ready: PathBuf,
    pub go: PathBuf,
    pub script: String,
}

/// A [`Gated`] command whose files are in `dir`, named with `tag`.
pub fn gated(dir: &Path, tag: &str) -> Gated {
    let (ready, go) = (
        dir.join(format!("ready-{tag}")),
        dir.join(format!("go-{tag}")),
    );
    let script = format!(
        "echo $$ > {ready}; while [ ! -e {go} ]; do sleep 0.05; done",
        ready = ready.display(),
        go = go.display()
    );
    Gated { ready, go, script }
}

/// Waits until `path` exists and is not empty (bounded by [`PATIENCE`]).
pub fn wait_for_file(path: &Path) -> String {
    let started = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if !text.is_empty() {
                return text;
            }
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a process with this id exists.
pub fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Whether a process with this id runs: it exists and is not a zombie (an
/// orphan whose new parent, PID 1 in a container, may never reap it).
pub fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// Waits up to 5 s for a process to stop running ([`running`]).
pub fn stops_running(pid: i32) -> bool {
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < until {
        if !running(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A runtime for library calls from the test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The library's view of a lock (no prefix, as the CLI without --prefix).
pub fn inspect(url: &str, name: &str) -> LockInfo {
    runtime().block_on(async {
        let locker = Locker::new(RedisBackend::from_url(url).unwrap());
        locker.inspect(name).await.unwrap()
    })
}

/// The Redis key of the lock `name` (default key prefix, no lock prefix).
pub fn lock_key(url: &str, name: &str) -> String {
    runtime().block_on(async {
        let backend = RedisBackend::from_url(url).unwrap();
        let key = distlock_redis::LockKey::new("", name).unwrap();
        backend.keys(&key).lock
    })
}

/// One Redis command from the test (its own connection).
pub fn redis_cmd<T: distlock_redis::redis::FromRedisValue>(url: &str, args: &[&str]) -> T {
    runtime().block_on(async {
        let client = distlock_redis::redis::Client::open(url).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut cmd = distlock_redis::redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut conn).await.unwrap()
    })
}

/// Waits until some client waits for `name`: it is in the lock's line of
/// waiters, or subscribed to its release channel (a `distlock` waiting for
/// it has then registered its signal handlers).
pub fn wait_for_waiter(url: &str, name: &str) {
    let (channel, waiters) = runtime().block_on(async {
        let backend = RedisBackend::from_url(url).unwrap();
        let key = distlock_redis::LockKey::new("", name).unwrap();
        (backend.release_channel(&key), backend.keys(&key).waiters)
    });
    let started = Instant::now();
    loop {
        let counts: Vec<(String, i64)> = redis_cmd(url, &["PUBSUB", "NUMSUB", &channel]);
        let in_line: i64 = redis_cmd(url, &["ZCARD", &waiters]);
        if in_line > 0 || counts.iter().any(|(_, n)| *n > 0) {
            return;
        }
        assert!(started.elapsed() < PATIENCE, "nobody waits for {name}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The state letter of a process (`R`, `S`, `T` for stopped, `Z`…), if it exists.
pub fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}
