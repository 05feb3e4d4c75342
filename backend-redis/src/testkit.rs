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

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use testcontainers::core::{ContainerPort, IntoContainerPort};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, ImageExt};
use testcontainers_modules::redis::Redis;

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

/// Extra settings for [`RedisServer::start_process`].
#[derive(Clone, Debug, Default)]
pub struct ProcessOptions {
    /// Appended to the testkit's own arguments (`--port`, `--bind
    /// 127.0.0.1`, `--save ""`, …), e.g. `["--requirepass", "pw"]`.
    pub args: Vec<String>,
    /// Serve TLS only: the port is given as `--tls-port` (with `--port 0`)
    /// and the URL is `rediss://`. The certificate arguments go in
    /// [`args`](Self::args) (see [`TestCertificates::server_args`]).
    pub tls_only: bool,
}

impl ProcessOptions {
    /// No extra arguments, plain TCP.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Serves TLS only (see [`tls_only`](Self::tls_only)).
    pub fn tls_only(mut self) -> Self {
        self.tls_only = true;
        self
    }
}

/// A throwaway certificate authority with a server certificate (for
/// `127.0.0.1` and `localhost`) and a client certificate, made with the
/// `openssl` command-line tool. All files are PEM; keys are unencrypted
/// ECDSA P-256, valid for two days.
#[derive(Clone, Debug)]
pub struct TestCertificates {
    /// The CA certificate: what clients pass as `tls_ca_cert`.
    pub ca_cert: PathBuf,
    /// The server certificate, signed by the CA.
    pub server_cert: PathBuf,
    /// The server's private key.
    pub server_key: PathBuf,
    /// A client certificate signed by the CA, for mutual TLS.
    pub client_cert: PathBuf,
    /// The client's private key.
    pub client_key: PathBuf,
}

impl TestCertificates {
    /// Generates a new CA and certificates into `dir` (created if needed;
    /// existing files are overwritten). Takes well under a second.
    pub fn generate(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let file = |name: &str| dir.join(name);
        let certs = Self {
            ca_cert: file("ca.pem"),
            server_cert: file("server.pem"),
            server_key: file("server.key"),
            client_cert: file("client.pem"),
            client_key: file("client.key"),
        };
        let ca_key = file("ca.key");
        let p = |path: &Path| path.display().to_string();
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=distlock test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &p(&ca_key),
            "-out",
            &p(&certs.ca_cert),
        ])?;
        for (name, cert, key, ext) in [
            (
                "server",
                &certs.server_cert,
                &certs.server_key,
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
            ),
            (
                "client",
                &certs.client_cert,
                &certs.client_key,
                "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
            ),
        ] {
            let csr = file(&format!("{name}.csr"));
            let ext_file = file(&format!("{name}.ext"));
            std::fs::write(&ext_file, ext)
                .map_err(|e| format!("writing {}: {e}", ext_file.display()))?;
            openssl(&[
                "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-subj", &format!("/CN=distlock test {name}"),
                "-keyout", &p(key), "-out", &p(&csr),
            ])?;
            openssl(&[
                "x509", "-req", "-in", &p(&csr), "-CA", &p(&certs.ca_cert),
                "-CAkey", &p(&ca_key), "-CAcreateserial", "-days", "2",
                "-extfile", &p(&ext_file), "-out", &p(cert),
            ])?;
        }
        Ok(certs)
    }

    /// The `redis-server` arguments that serve TLS with these files;
    /// `require_client_cert` sets `--tls-auth-clients yes` (mutual TLS),
    /// otherwise `no`.
    pub fn server_args(&self, require_client_cert: bool) -> Vec<String> {
        let p = |path: &Path| path.display().to_string();
        vec![
            "--tls-cert-file".into(),
            p(&self.server_cert),
            "--tls-key-file".into(),
            p(&self.server_key),
            "--tls-ca-cert-file".into(),
            p(&self.ca_cert),
            "--tls-auth-clients".into(),
            if require_client_cert { "yes" } else { "no" }.into(),
        ]
    }
}

/// Runs `openssl ARGS`, with its error output in the error.
fn openssl(args: &[&str]) -> Result<(), String> {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run openssl ({e}); install it (`apt-get install openssl`)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "openssl {} failed: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `f` on a fresh thread: starting runtimes or blocking is then fine
/// even when the caller is inside a tokio runtime.
fn on_own_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
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

/// Whether a Docker engine answers `/_ping` (on `DOCKER_HOST` or the usual
/// sockets).
fn docker_reachable() -> bool {
    let timeout = Duration::from_secs(2);
    let request = b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n";
    let answered = |reply: &[u8]| String::from_utf8_lossy(reply).contains(" 200 ");
    if let Ok(host) = std::env::var("DOCKER_HOST") {
        if let Some(addr) = host.strip_prefix("tcp://") {
            let Ok(addr) = addr.trim_end_matches('/').parse::<SocketAddr>() else {
                // A host name: let testcontainers try.
                return true;
            };
            return TcpStream::connect_timeout(&addr, timeout)
                .ok()
                .and_then(|s| http_ping(s, request, timeout))
                .is_some_and(|r| answered(&r));
        }
        if let Some(path) = host.strip_prefix("unix://") {
            return unix_ping(path, request, timeout).is_some_and(|r| answered(&r));
        }
        // ssh://, npipe:// …: let testcontainers try.
        return true;
    }
    let mut sockets = vec!["/var/run/docker.sock".to_owned()];
    if let Ok(home) = std::env::var("HOME") {
        sockets.push(format!("{home}/.docker/run/docker.sock"));
    }
    if let Ok(dir) = std::env::var("XDG_RUNTIME_DIR") {
        sockets.push(format!("{dir}/docker.sock"));
    }
    sockets
        .iter()
        .any(|p| unix_ping(p, request, timeout).is_some_and(|r| answered(&r)))
}

#[cfg(unix)]
fn unix_ping(path: &str, request: &[u8], timeout: Duration) -> Option<Vec<u8>> {
    let stream = std::os::unix::net::UnixStream::connect(path).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    let mut stream = stream;
    stream.write_all(request).ok()?;
    let mut reply = Vec::new();
    let _ = stream.take(4096).read_to_end(&mut reply);
    Some(reply)
}

#[cfg(not(unix))]
fn unix_ping(_: &str, _: &[u8], _: Duration) -> Option<Vec<u8>> {
    None
}

fn http_ping(mut stream: TcpStream, request: &[u8], timeout: Duration) -> Option<Vec<u8>> {
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    stream.write_all(request).ok()?;
    let mut reply = Vec::new();
    let _ = stream.take(4096).read_to_end(&mut reply);
    Some(reply)
}

/// `name:tag` → (name, tag); a missing tag is `latest`. A registry port
/// (`host:5000/redis`) is not a tag.
fn split_image(image: &str) -> (String, String) {
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name.to_owned(), tag.to_owned()),
        _ => (image.to_owned(), "latest".to_owned()),
    }
}

/// A free TCP port on the loopback interface (free when this returns).
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
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

/// A container, with the runtime its async handle lives on.
struct ContainerServer {
    runtime: tokio::runtime::Runtime,
    container: Option<ContainerAsync<Redis>>,
    /// Keeps the reaper waiting; see [`spawn_reaper`].
    _reaper: Option<ChildStdin>,
}

/// Starts `sh` waiting on a pipe from this process; when the pipe closes
/// (this process exits, however it ends, or the handle drops) it runs
/// `docker rm -f ID`. This removes shared containers, which live in a static
/// that is never dropped. Best effort: without a `docker` CLI nothing is
/// started and the `distlock.test` label is left for cleanup scripts.
fn spawn_reaper(id: &str) -> Option<ChildStdin> {
    let script = r#"while read -r _line; do :; done; docker rm -f "$1" >/dev/null 2>&1"#;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("distlock-redis-reaper")
        .arg(id)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let docker_cli = Command::new("docker")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !docker_cli {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    }
    child.stdin.take()
}

impl ContainerServer {
    fn start(image: &str, fixed_port: bool) -> Result<(Self, String), String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("building a runtime: {e}"))?;
        let (name, tag) = split_image(image);
        let port: ContainerPort = 6379.tcp();
        let mut request = Redis::default()
            .with_name(name)
            .with_tag(tag)
            .with_cmd(CONTAINER_ARGS)
            .with_label(CONTAINER_LABEL, "1")
            .with_label(
                format!("{CONTAINER_LABEL}.pid"),
                std::process::id().to_string(),
            )
            .with_startup_timeout(Duration::from_secs(60));
        if fixed_port {
            // A restarted container keeps its host port only if it is fixed.
            let host_port = free_port().map_err(|e| format!("finding a free port: {e}"))?;
            request = request.with_mapped_port(host_port, port);
        }
        let (container, url) = runtime.block_on(async {
            let container = request.start().await.map_err(|e| e.to_string())?;
            let host = container.get_host().await.map_err(|e| e.to_string())?;
            let host_port = container
                .get_host_port_ipv4(port)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((container, format!("redis://{host}:{host_port}")))
        })?;
        let reaper = spawn_reaper(container.id());
        Ok((
            Self {
                runtime,
                container: Some(container),
                _reaper: reaper,
            },
            url,
        ))
    }

    /// Runs a container operation to completion, panicking on failure.
    fn run<'a, F, Fut>(&'a self, op: F)
    where
        F: FnOnce(&'a ContainerAsync<Redis>) -> Fut,
        Fut: std::future::Future<Output = testcontainers::core::error::Result<()>>,
    {
        let Some(container) = self.container.as_ref() else {
            return;
        };
        if let Err(e) = self.runtime.block_on(op(container)) {
            panic!("Docker operation on the Redis container failed: {e}");
        }
    }
}

impl Drop for ContainerServer {
    fn drop(&mut self) {
        if let Some(container) = self.container.take() {
            let runtime = &self.runtime;
            on_own_thread(move || {
                let _ = runtime.block_on(container.rm());
            });
        }
    }
}

/// A `redis-server` child process. It runs under a small shell that kills
/// it when our end of its stdin closes, i.e. when this handle drops or the
/// test process exits for any reason.
struct ProcessServer {
    port: u16,
    options: ProcessOptions,
    running: Mutex<Option<RunningProcess>>,
}

struct RunningProcess {
    shell: Child,
    stdin: Option<ChildStdin>,
    pid: String,
}

impl ProcessServer {
    fn start() -> Result<Self, String> {
        Self::start_with(ProcessOptions::default())
    }

    fn start_with(options: ProcessOptions) -> Result<Self, String> {
        let port = free_port().map_err(|e| format!("finding a free port: {e}"))?;
        let server = Self {
            port,
            options,
            running: Mutex::new(None),
        };
        server.restart()?;
        Ok(server)
    }

    fn url(&self) -> String {
        let scheme = if self.options.tls_only {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    fn restart(&self) -> Result<(), String> {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if running.is_some() {
            return Ok(());
        }
        let port = self.port.to_string();
        let port_args: Vec<&str> = if self.options.tls_only {
            vec!["--port", "0", "--tls-port", &port]
        } else {
            vec!["--port", &port]
        };
        let script = r#"redis-server "$@" >/dev/null 2>&1 & pid=$!
echo "$pid"
trap 'kill -CONT $pid 2>/dev/null; kill $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
while read -r _line; do :; done
"#;
        let mut shell = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("redis-server-wrapper")
            .args(port_args)
            .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(&self.options.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawning sh: {e}"))?;
        let stdin = shell.stdin.take();
        let mut pid = String::new();
        if let Some(out) = shell.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut pid);
        }
        let pid = pid.trim().to_owned();
        *running = Some(RunningProcess { shell, stdin, pid });
        drop(running);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let ready = if self.options.tls_only {
            wait_for_listen(addr, Duration::from_secs(15))
        } else {
            wait_for_ping(addr, Duration::from_secs(15))
        };
        ready.inspect_err(|_| self.stop())
    }

    fn stop(&self) {
        let taken = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut p) = taken {
            drop(p.stdin.take()); // the shell kills redis-server and exits
            let _ = p.shell.wait();
            // Wait until the port is free again.
            let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline
                && TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn signal(&self, signal: &str) {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(p) = running.as_ref() else {
            panic!("redis-server is not running");
        };
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(&p.pid)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} {} failed", p.pid);
    }
}

impl Drop for ProcessServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_split() {
        assert_eq!(split_image("redis:7"), ("redis".into(), "7".into()));
        assert_eq!(
            split_image("distlock-redis:7-local"),
            ("distlock-redis".into(), "7-local".into())
        );
        assert_eq!(
            split_image("localhost:5000/redis"),
            ("localhost:5000/redis".into(), "latest".into())
        );
    }
}
