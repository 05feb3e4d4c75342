//! A real Redis server for tests and benchmarks (feature `testkit`).
//!
//! [`RedisServer::shared`] gives every test of a test binary the same server
//! (only its URL is shared: make pools per test, inside the test's runtime).
//! [`RedisServer::start`] starts a dedicated one that a fault test may stop,
//! restart and pause. Where the server comes from, in order:
//!
//! 1. `DISTLOCK_REDIS_URL` (shared server only): use that server as is.
//! 2. A reachable Docker engine: a container of the image
//!    `DISTLOCK_REDIS_IMAGE` (default `redis:7`), started with
//!    testcontainers, command `--protected-mode no --bind 0.0.0.0 --save ""
//!    --appendonly no`, labelled `distlock.test=1`. On a machine that cannot
//!    pull images, build a local one first:
//!    `export DISTLOCK_REDIS_IMAGE="$(bash scripts/build-redis-image.sh | tail -n 1)"`.
//!    Shared containers live in a static that is never dropped; a small
//!    `sh` watcher removes them with `docker rm -f` when the test process
//!    exits (if the `docker` CLI is installed). Remove any leftovers with
//!    `docker rm -f $(docker ps -aq --filter label=distlock.test)`.
//! 3. `redis-server` on `PATH`: spawned on a free loopback port, and stopped
//!    when the handle drops or the test process exits.
//!
//! Without any of them, the call panics and says how to get Redis; Redis
//! tests never skip silently.
//!
//! [`RedisServer::start_process`] starts a dedicated `redis-server` from
//! `PATH` (never a container) with extra arguments, for tests that need a
//! password, ACL users or TLS: the arguments may name local files
//! (certificates) that the process reads as they are, which a container
//! could not without mounts. [`TestCertificates`] makes a throwaway CA,
//! server and client certificate with the `openssl` command-line tool for
//! such a TLS server.
//!
//! [`SentinelGroup::start`] and [`RedisCluster::start`] start whole
//! topologies of `redis-server`/`redis-sentinel` processes from `PATH` on
//! free loopback ports (a primary with two replicas and three sentinels; a
//! cluster of three primaries with a replica each), with the faults the
//! failover tests need: `SIGKILL` of a primary, `SENTINEL FAILOVER` /
//! `CLUSTER FAILOVER`, waiting for the new primary, moving a slot.
//!
//! ```no_run
//! use distlock_redis::{testkit::RedisServer, RedisBackend};
//!
//! let url = RedisServer::shared().url();
//! let runtime = tokio::runtime::Runtime::new().unwrap();
//! runtime.block_on(async {
//!     let backend = RedisBackend::from_url(url).unwrap(); // a pool per runtime
//!     # let _ = backend;
//! });
//! ```

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

mod certs;
mod cluster;
mod container;
mod process;
mod sentinel;
mod tamper;

pub use certs::TestCertificates;
pub use cluster::{ClusterNode, RedisCluster, NODE_TIMEOUT};
pub use process::ProcessOptions;
pub use sentinel::{SentinelGroup, DOWN_AFTER, MASTER_NAME};
pub use tamper::{
    closed_loopback_port, delete_lock, holder_call, kill_client_connections, wait_until_ready,
    TAMPER_TIMEOUT,
};

use container::{docker_reachable, ContainerServer};
use process::ProcessServer;

/// The environment variable naming an existing Redis server for the shared
/// fixture, e.g. `redis://127.0.0.1:6379/0`.
pub const URL_ENV: &str = "DISTLOCK_REDIS_URL";
/// The environment variable naming the Docker image (`name:tag`) to start.
pub const IMAGE_ENV: &str = "DISTLOCK_REDIS_IMAGE";
/// The image started when [`IMAGE_ENV`] is unset.
pub const DEFAULT_IMAGE: &str = "redis:7";
/// The label every container started here carries (value `1`).
pub const CONTAINER_LABEL: &str = "distlock.test";
/// The arguments Redis is started with in a container.
pub const CONTAINER_ARGS: [&str; 8] = [
    "--protected-mode",
    "no",
    "--bind",
    "0.0.0.0",
    "--save",
    "",
    "--appendonly",
    "no",
];

const HOW_TO_GET_REDIS: &str = "the Redis tests need a Redis server and never skip. Do one of: \
(a) with Docker and no image registry, build the local image and point the tests at it: \
`export DISTLOCK_REDIS_IMAGE=\"$(bash scripts/build-redis-image.sh | tail -n 1)\"`; \
(b) install redis-server (`apt-get install redis-server`) so it is on PATH; \
(c) set DISTLOCK_REDIS_URL=redis://HOST:PORT/DB to use a running server";

/// A Redis server for tests. See the [module docs](self).
pub struct RedisServer {
    url: String,
    backing: Backing,
}

enum Backing {
    External,
    Container(Box<ContainerServer>),
    Process(ProcessServer),
}

impl RedisServer {
    /// The server every test of this binary shares, started on first use
    /// (safe to call from any thread, inside or outside a runtime).
    ///
    /// # Panics
    ///
    /// When no Redis can be found or started; the message says how to get one.
    pub fn shared() -> &'static RedisServer {
        static SHARED: OnceLock<RedisServer> = OnceLock::new();
        SHARED.get_or_init(|| {
            if let Ok(url) = std::env::var(URL_ENV) {
                if !url.trim().is_empty() {
                    eprintln!("distlock testkit: using {URL_ENV}");
                    return RedisServer {
                        url,
                        backing: Backing::External,
                    };
                }
            }
            on_own_thread(|| Self::launch(false))
        })
    }

    /// A dedicated server, owned by the caller: stopped and removed when
    /// dropped. Ignores `DISTLOCK_REDIS_URL` (a fault test must control its
    /// server). Its URL stays the same across [`stop`](Self::stop) and
    /// [`restart`](Self::restart).
    ///
    /// # Panics
    ///
    /// When neither Docker nor `redis-server` is available.
    pub fn start() -> RedisServer {
        on_own_thread(|| Self::launch(true))
    }

    /// A dedicated `redis-server` process from `PATH`, started with the
    /// testkit's usual arguments plus `options` (a password, ACL users, TLS
    /// files…). Owned by the caller like [`start`](Self::start), and
    /// restarted with the same arguments by [`restart`](Self::restart).
    /// Ignores `DISTLOCK_REDIS_URL` and Docker.
    ///
    /// The [`url`](Self::url) carries no credentials:
    /// `redis://127.0.0.1:PORT`, or `rediss://127.0.0.1:PORT` with
    /// [`ProcessOptions::tls_only`].
    ///
    /// ```no_run
    /// use distlock_redis::testkit::{ProcessOptions, RedisServer};
    ///
    /// let server = RedisServer::start_process(
    ///     ProcessOptions::new().args(["--requirepass", "s3cret"]),
    /// );
    /// let url = server.url().replace("redis://", "redis://:s3cret@");
    /// # let _ = url;
    /// ```
    ///
    /// # Panics
    ///
    /// When `redis-server` is not on `PATH` or does not answer within 15 s
    /// (for example because an argument is wrong: run the same command by
    /// hand to see its log).
    pub fn start_process(options: ProcessOptions) -> RedisServer {
        if !redis_server_on_path() {
            panic!("redis-server is not on PATH; {HOW_TO_GET_REDIS}");
        }
        match ProcessServer::start_with(options) {
            Ok(server) => {
                let url = server.url();
                eprintln!("distlock testkit: dedicated redis-server process at {url}");
                RedisServer {
                    url,
                    backing: Backing::Process(server),
                }
            }
            Err(e) => panic!("cannot start redis-server: {e}"),
        }
    }

    fn launch(fixed_port: bool) -> RedisServer {
        let explicit_image = std::env::var(IMAGE_ENV)
            .ok()
            .filter(|s| !s.trim().is_empty());
        if docker_reachable() {
            let image = explicit_image
                .clone()
                .unwrap_or_else(|| DEFAULT_IMAGE.to_owned());
            match ContainerServer::start(&image, fixed_port) {
                Ok((server, url)) => {
                    eprintln!("distlock testkit: Redis container of {image} at {url}");
                    return RedisServer {
                        url,
                        backing: Backing::Container(Box::new(server)),
                    };
                }
                Err(e) if explicit_image.is_none() && redis_server_on_path() => {
                    eprintln!(
                        "distlock testkit: cannot start {image} ({e}); \
                         falling back to redis-server from PATH"
                    );
                }
                Err(e) => {
                    panic!("cannot start a Redis container of {image:?}: {e}; {HOW_TO_GET_REDIS}")
                }
            }
        }
        if redis_server_on_path() {
            match ProcessServer::start() {
                Ok(server) => {
                    let url = server.url();
                    eprintln!("distlock testkit: redis-server process at {url}");
                    return RedisServer {
                        url,
                        backing: Backing::Process(server),
                    };
                }
                Err(e) => panic!("cannot start redis-server: {e}; {HOW_TO_GET_REDIS}"),
            }
        }
        panic!("no Redis: {URL_ENV} is unset, no Docker engine is reachable and redis-server is not on PATH; {HOW_TO_GET_REDIS}");
    }

    /// The server's URL, `redis://HOST:PORT` (or `DISTLOCK_REDIS_URL`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// How the server runs: `"external"`, `"container"` or `"process"`.
    pub fn kind(&self) -> &'static str {
        match self.backing {
            Backing::External => "external",
            Backing::Container(_) => "container",
            Backing::Process(_) => "process",
        }
    }

    /// Stops the server (connections drop, new ones are refused).
    ///
    /// # Panics
    ///
    /// On an external server, or when Docker fails.
    pub fn stop(&self) {
        match &self.backing {
            Backing::External => panic!("cannot stop an external server"),
            Backing::Container(c) => on_own_thread(|| c.run(|c| c.stop_with_timeout(Some(0)))),
            Backing::Process(p) => p.stop(),
        }
    }

    /// Starts a stopped server again on the same port (data is gone).
    ///
    /// # Panics
    ///
    /// On an external server, or when the restart fails.
    pub fn restart(&self) {
        match &self.backing {
            Backing::External => panic!("cannot restart an external server"),
            Backing::Container(c) => on_own_thread(|| c.run(|c| c.start())),
            Backing::Process(p) => {
                if let Err(e) = p.restart() {
                    panic!("cannot restart redis-server: {e}");
                }
            }
        }
    }

    /// Freezes the server: connections stay open but nothing is answered.
    ///
    /// # Panics
    ///
    /// On an external server, or when pausing fails.
    pub fn pause(&self) {
        match &self.backing {
            Backing::External => panic!("cannot pause an external server"),
            Backing::Container(c) => on_own_thread(|| c.run(|c| c.pause())),
            Backing::Process(p) => p.signal("STOP"),
        }
    }

    /// Resumes a paused server.
    ///
    /// # Panics
    ///
    /// On an external server, or when resuming fails.
    pub fn unpause(&self) {
        match &self.backing {
            Backing::External => panic!("cannot unpause an external server"),
            Backing::Container(c) => on_own_thread(|| c.run(|c| c.unpause())),
            Backing::Process(p) => p.signal("CONT"),
        }
    }
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("url", &crate::config::redact(&self.url))
            .field("kind", &self.kind())
            .finish()
    }
}

/// Runs `f` on a fresh thread: starting runtimes or blocking is then fine
/// even when the caller is inside a tokio runtime.
pub(crate) fn on_own_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

fn redis_server_on_path() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The ports [`free_port`] hands out: below Linux's default ephemeral
/// range (32768–60999), from which the kernel picks the local ports of
/// outgoing connections and Docker picks the host ports of containers
/// started without a fixed mapping (with its iptables mapping nothing
/// listens on those, so a bind test cannot see them). A port from the
/// ephemeral range could be taken between the check and the server's
/// bind; CI failed once on that ("Bind for :::32925 failed: port is
/// already allocated").
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A TCP port that nothing of this machine uses when this returns (it
/// binds on all interfaces, as Docker does), from [`PORTS`]. Successive
/// calls of one process hand out successive ports, and processes start at
/// places spread by their id, so concurrent tests rarely try the same one.
fn free_port() -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = u32::from(PORTS.end - PORTS.start);
    let start = std::process::id().wrapping_mul(97) % span;
    for _ in 0..span {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = PORTS.start + u16::try_from(offset).unwrap_or(0);
        if TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free port in {PORTS:?}"),
    ))
}

/// Waits until Redis at `addr` answers `PING`.
fn wait_for_ping(addr: SocketAddr, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        let pong = TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            .ok()
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
                s.write_all(b"PING\r\n").ok()?;
                let mut line = String::new();
                BufReader::new(s).read_line(&mut line).ok()?;
                // A server with a password answers, but refuses.
                Some(line.starts_with("+PONG") || line.starts_with("-NOAUTH"))
            });
        if pong == Some(true) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "Redis at {addr} did not answer PING within {within:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Waits until something accepts TCP connections at `addr` (a TLS-only
/// server cannot be pinged in plain text).
fn wait_for_listen(addr: SocketAddr, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() >= deadline {
            return Err(format!("nothing listens at {addr} after {within:?}"));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Ok(())
}

/// A directory for a topology's files (configuration files the servers
/// rewrite, `nodes.conf`), removed when dropped.
pub(crate) struct ScratchDir {
    path: std::path::PathBuf,
}

impl ScratchDir {
    pub(crate) fn new(what: &str) -> Result<Self, String> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        if NEXT.load(Ordering::Relaxed) == 0 {
            Self::remove_stale();
        }
        let path = std::env::temp_dir().join(format!(
            "distlock-{what}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        Ok(Self { path })
    }

    /// Removes the directories of test processes that have exited
    /// (topologies kept in statics are never dropped). Linux only: it
    /// checks `/proc/PID`.
    fn remove_stale() {
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("distlock-") else {
                continue;
            };
            // distlock-WHAT-PID-N
            let mut parts = rest.rsplit('-');
            let (Some(_n), Some(pid)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Ok(pid) = pid.parse::<u32>() else {
                continue;
            };
            if std::path::Path::new("/proc/self").exists()
                && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    pub(crate) fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Writes `name` in the directory and returns its path.
    pub(crate) fn write(&self, name: &str, text: &str) -> Result<std::path::PathBuf, String> {
        let file = self.path.join(name);
        std::fs::write(&file, text).map_err(|e| format!("writing {}: {e}", file.display()))?;
        Ok(file)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Runs one command on the server at `url` (plain TCP) with a blocking
/// connection, within 5 s.
pub(crate) fn query<T: redis::FromRedisValue>(url: &str, cmd: &redis::Cmd) -> Result<T, String> {
    let timeout = Duration::from_secs(5);
    let client = redis::Client::open(url).map_err(|e| format!("{url}: {e}"))?;
    let mut con = client
        .get_connection_with_timeout(timeout)
        .map_err(|e| format!("{url}: {e}"))?;
    con.set_read_timeout(Some(timeout))
        .and_then(|()| con.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("{url}: {e}"))?;
    cmd.query(&mut con).map_err(|e| format!("{url}: {e}"))
}

/// Polls `check` every 50 ms until it answers `Some`, for at most `within`.
pub(crate) fn wait_until<T>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!("{what}: not within {within:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
