//! `redis-server` (and `redis-sentinel`) child processes on loopback ports.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{free_port, wait_for_listen, wait_for_ping};

/// Extra settings for [`RedisServer::start_process`](super::RedisServer::start_process).
#[derive(Clone, Debug, Default)]
pub struct ProcessOptions {
    /// Appended to the testkit's own arguments (`--port`, `--bind
    /// 127.0.0.1`, `--save ""`, …), e.g. `["--requirepass", "pw"]`.
    pub args: Vec<String>,
    /// Serve TLS only: the port is given as `--tls-port` (with `--port 0`)
    /// and the URL is `rediss://`. The certificate arguments go in
    /// [`args`](Self::args) (see [`TestCertificates::server_args`](super::TestCertificates::server_args)).
    pub tls_only: bool,
    /// A configuration file passed as the first argument (before the
    /// testkit's own), e.g. a sentinel's writable `sentinel.conf`.
    /// Default: none.
    pub config_file: Option<PathBuf>,
    /// Run `redis-sentinel` instead of `redis-server` (needs
    /// [`config_file`](Self::config_file)). Default: false.
    pub sentinel: bool,
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

    /// Passes `path` as the configuration file (see
    /// [`config_file`](Self::config_file)).
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config_file = Some(path.into());
        self
    }

    /// Serves TLS only (see [`tls_only`](Self::tls_only)).
    pub fn tls_only(mut self) -> Self {
        self.tls_only = true;
        self
    }
}

/// A `redis-server` (or `redis-sentinel`) child process. It runs under a small shell that kills
/// it when our end of its stdin closes, i.e. when this handle drops or the
/// test process exits for any reason.
pub(super) struct ProcessServer {
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
    pub(super) fn start() -> Result<Self, String> {
        Self::start_with(ProcessOptions::default())
    }

    pub(super) fn start_with(options: ProcessOptions) -> Result<Self, String> {
        let port = free_port().map_err(|e| format!("finding a free port: {e}"))?;
        let server = Self {
            port,
            options,
            running: Mutex::new(None),
        };
        server.restart()?;
        Ok(server)
    }

    pub(super) fn url(&self) -> String {
        let scheme = if self.options.tls_only {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub(super) fn restart(&self) -> Result<(), String> {
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
        let script = r#"prog="$1"; shift; "$prog" "$@" >/dev/null 2>&1 & pid=$!
echo "$pid"
trap 'kill -CONT $pid 2>/dev/null; kill $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
while read -r _line; do :; done
"#;
        let mut shell = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("redis-server-wrapper")
            .arg(if self.options.sentinel {
                "redis-sentinel"
            } else {
                "redis-server"
            })
            .args(self.options.config_file.iter())
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

    pub(super) fn stop(&self) {
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

    /// Whether the process was started and not stopped or killed since.
    pub(super) fn is_running(&self) -> bool {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// The loopback port it listens on.
    pub(super) fn port(&self) -> u16 {
        self.port
    }

    /// Kills the process with `SIGKILL` (no shutdown, no goodbye to
    /// clients or replicas); [`restart`](Self::restart) starts it again.
    pub(super) fn kill(&self) {
        self.signal("KILL");
        self.stop();
    }

    pub(super) fn signal(&self, signal: &str) {
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
