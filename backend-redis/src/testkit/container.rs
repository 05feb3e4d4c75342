//! Redis in a Docker container (testcontainers), and the Docker probe.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{ChildStdin, Command, Stdio};
use std::time::Duration;

use testcontainers::core::{ContainerPort, IntoContainerPort};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, ImageExt};
use testcontainers_modules::redis::Redis;

use super::{free_port, on_own_thread, CONTAINER_ARGS, CONTAINER_LABEL};

/// Whether a Docker engine answers `/_ping` (on `DOCKER_HOST` or the usual
/// sockets).
pub(super) fn docker_reachable() -> bool {
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

/// A container, with the runtime its async handle lives on.
pub(super) struct ContainerServer {
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
    pub(super) fn start(image: &str, fixed_port: bool) -> Result<(Self, String), String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("building a runtime: {e}"))?;
        let (name, tag) = split_image(image);
        let port: ContainerPort = 6379.tcp();
        let request = || {
            Redis::default()
                .with_name(name.clone())
                .with_tag(tag.clone())
                .with_cmd(CONTAINER_ARGS)
                .with_label(CONTAINER_LABEL, "1")
                .with_label(
                    format!("{CONTAINER_LABEL}.pid"),
                    std::process::id().to_string(),
                )
                .with_startup_timeout(Duration::from_secs(60))
        };
        let (container, url) = runtime.block_on(async {
            let container = if fixed_port {
                // A restarted container keeps its host port only if it is
                // fixed. Another program may take the port between the
                // check and Docker's bind: try another one then.
                let mut tries = 0;
                loop {
                    tries += 1;
                    let host_port = free_port().map_err(|e| format!("finding a free port: {e}"))?;
                    match request().with_mapped_port(host_port, port).start().await {
                        Ok(container) => break container,
                        Err(e) if tries < 3 && e.to_string().contains("already allocated") => {
                            continue
                        }
                        Err(e) => return Err(e.to_string()),
                    }
                }
            } else {
                request().start().await.map_err(|e| e.to_string())?
            };
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
    pub(super) fn run<'a, F, Fut>(&'a self, op: F)
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
