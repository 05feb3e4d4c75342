//! A Sentinel group of real processes: one primary, two replicas and three
//! sentinels on loopback ports.

use std::collections::HashMap;
use std::time::Duration;

use super::process::{ProcessOptions, ProcessServer};
use super::{on_own_thread, query, wait_until, ScratchDir};

/// The master name the sentinels of a [`SentinelGroup`] monitor.
pub const MASTER_NAME: &str = "distlock-primary";

/// How long a sentinel waits without answers before it considers the
/// primary down (`down-after-milliseconds`), in the group's configuration.
pub const DOWN_AFTER: Duration = Duration::from_millis(1000);

/// A Redis Sentinel group of `redis-server` and `redis-sentinel` processes
/// from `PATH` on free loopback ports: node 0 starts as the primary, nodes
/// 1 and 2 replicate it, and three sentinels monitor it as
/// [`MASTER_NAME`] with quorum 2, [`DOWN_AFTER`] and a 10 s failover
/// timeout. Every process stops when the group drops or the test process
/// exits (the processes run under the same watchdog shell as
/// [`RedisServer::start_process`](super::RedisServer::start_process)).
///
/// [`start`](Self::start) returns once every replica is in sync and every
/// sentinel knows both replicas and the two other sentinels, so a failover
/// can be started at once.
pub struct SentinelGroup {
    nodes: Vec<ProcessServer>,
    sentinels: Vec<ProcessServer>,
    // Last: the processes stop before their files go.
    _dir: ScratchDir,
}

impl SentinelGroup {
    /// Starts the group (takes a few seconds: sentinels find each other
    /// through hello messages every 2 s).
    ///
    /// # Panics
    ///
    /// When `redis-server`/`redis-sentinel` are missing or the group does
    /// not form within 60 s.
    pub fn start() -> SentinelGroup {
        match on_own_thread(Self::launch) {
            Ok(group) => group,
            Err(e) => panic!(
                "cannot start a Redis Sentinel group: {e} (it needs redis-server and \
                 redis-sentinel on PATH: `apt-get install redis-server redis-sentinel`)"
            ),
        }
    }

    fn launch() -> Result<SentinelGroup, String> {
        let dir = ScratchDir::new("sentinel")?;
        let mut nodes: Vec<ProcessServer> = Vec::new();
        for i in 0..3 {
            // A (rewritable) configuration file, so that sentinels can
            // `CONFIG REWRITE` the role they give a node.
            let conf = dir.write(&format!("node{i}.conf"), "")?;
            // Its own directory: a replica writes the RDB it syncs to disk.
            let node_dir = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir)
                .map_err(|e| format!("creating {}: {e}", node_dir.display()))?;
            let mut options = ProcessOptions::new()
                .config_file(conf)
                .args(["--dir".to_owned(), node_dir.display().to_string()]);
            if let Some(primary) = nodes.first() {
                options = options.args([
                    "--replicaof".to_owned(),
                    "127.0.0.1".to_owned(),
                    primary.port().to_string(),
                ]);
            }
            nodes.push(ProcessServer::start_with(options)?);
        }
        let primary = nodes[0].url();
        wait_until("both replicas in sync", Duration::from_secs(30), || {
            let info: String = query(&primary, redis::cmd("INFO").arg("replication")).ok()?;
            (info.matches("state=online").count() == 2).then_some(())
        })?;
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let conf = dir.write(
                &format!("sentinel{i}.conf"),
                &format!(
                    "sentinel monitor {MASTER_NAME} 127.0.0.1 {port} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} {down}\n\
                     sentinel failover-timeout {MASTER_NAME} 10000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n",
                    port = nodes[0].port(),
                    down = DOWN_AFTER.as_millis(),
                ),
            )?;
            let mut options = ProcessOptions::new().config_file(conf);
            options.sentinel = true;
            sentinels.push(ProcessServer::start_with(options)?);
        }
        let group = SentinelGroup {
            nodes,
            sentinels,
            _dir: dir,
        };
        for s in &group.sentinels {
            let url = s.url();
            wait_until(
                &format!("sentinel {url} knows 2 replicas and 2 other sentinels"),
                Duration::from_secs(60),
                || {
                    let master = sentinel_master(&url).ok()?;
                    let ok = master.get("num-slaves").map(String::as_str) == Some("2")
                        && master.get("num-other-sentinels").map(String::as_str) == Some("2");
                    ok.then_some(())
                },
            )?;
        }
        eprintln!(
            "distlock testkit: Sentinel group, primary {primary}, sentinels {:?}",
            group.sentinel_urls()
        );
        Ok(group)
    }

    /// The master name the sentinels monitor ([`MASTER_NAME`]).
    pub fn master_name(&self) -> &str {
        MASTER_NAME
    }

    /// The sentinels' URLs, `redis://127.0.0.1:PORT`.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(ProcessServer::url).collect()
    }

    /// The data nodes' URLs (index 0 was the first primary).
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes.iter().map(ProcessServer::url).collect()
    }

    /// The primary's URL as the first answering sentinel reports it
    /// (`SENTINEL GET-MASTER-ADDR-BY-NAME`).
    ///
    /// # Panics
    ///
    /// When no sentinel answers.
    pub fn primary_url(&self) -> String {
        self.sentinel_urls()
            .iter()
            .find_map(|s| reported_primary(s).ok())
            .expect("no sentinel answers")
    }

    /// The index of the node that is primary according to the sentinels.
    pub fn primary_index(&self) -> usize {
        let url = self.primary_url();
        self.nodes
            .iter()
            .position(|n| n.url() == url)
            .unwrap_or_else(|| panic!("the sentinels report an unknown primary {url}"))
    }

    /// Kills the current primary with `SIGKILL` and returns its index and
    /// URL. The sentinels notice after [`DOWN_AFTER`] and fail over.
    pub fn kill_primary(&self) -> (usize, String) {
        let index = self.primary_index();
        let url = self.nodes[index].url();
        self.nodes[index].kill();
        (index, url)
    }

    /// Starts a killed node again (empty: no persistence). It comes back
    /// as a primary of nothing until the sentinels make it a replica of
    /// the current primary.
    ///
    /// # Panics
    ///
    /// When it does not start.
    pub fn restart_node(&self, index: usize) {
        if let Err(e) = self.nodes[index].restart() {
            panic!("cannot restart node {index}: {e}");
        }
    }

    /// Asks a sentinel for a clean failover (`SENTINEL FAILOVER`): a
    /// replica is promoted without waiting for the primary to fail. Returns
    /// the old primary's URL.
    ///
    /// # Panics
    ///
    /// When no sentinel accepts it.
    pub fn failover(&self) -> String {
        let old = self.primary_url();
        let sentinels = self.sentinel_urls();
        let mut last_error = String::new();
        // A sentinel refuses while an earlier failover still reconfigures
        // the replicas (INPROG) or no replica is in sync yet (NOGOODSLAVE).
        let accepted = wait_until(
            "a sentinel to accept SENTINEL FAILOVER",
            Duration::from_secs(60),
            || {
                sentinels.iter().find_map(|s| {
                    query::<String>(s, redis::cmd("SENTINEL").arg("FAILOVER").arg(MASTER_NAME))
                        .map_err(|e| last_error = e)
                        .ok()
                })
            },
        );
        if let Err(e) = accepted {
            panic!("{e}; last refusal: {last_error}");
        }
        old
    }

    /// Waits until every answering sentinel reports a primary other than
    /// `old_url`, and that node answers `ROLE` as a master; returns its URL.
    ///
    /// # Panics
    ///
    /// When that does not happen within `within`.
    pub fn wait_for_new_primary(&self, old_url: &str, within: Duration) -> String {
        let sentinels = self.sentinel_urls();
        let found = wait_until("a new primary", within, || {
            let reported: Vec<String> = sentinels
                .iter()
                .filter_map(|s| reported_primary(s).ok())
                .collect();
            let first = reported.first()?.clone();
            if first == old_url || reported.iter().any(|r| *r != first) {
                return None;
            }
            let role: Vec<redis::Value> = query(&first, &redis::cmd("ROLE")).ok()?;
            matches!(role.first(), Some(redis::Value::BulkString(b)) if b == b"master")
                .then_some(first)
        });
        found.unwrap_or_else(|e| panic!("{e}"))
    }
}

impl SentinelGroup {
    /// Waits until the current primary has `replicas` replicas online
    /// (`INFO replication`), e.g. after [`restart_node`](Self::restart_node)
    /// once the sentinels made the restarted node a replica.
    ///
    /// # Panics
    ///
    /// When that does not happen within `within`.
    pub fn wait_for_replicas(&self, replicas: usize, within: Duration) {
        let found = wait_until("replicas online", within, || {
            let primary = self
                .sentinel_urls()
                .iter()
                .find_map(|s| reported_primary(s).ok())?;
            let info: String = query(&primary, redis::cmd("INFO").arg("replication")).ok()?;
            (info.matches("state=online").count() >= replicas).then_some(())
        });
        found.unwrap_or_else(|e| panic!("{e}"))
    }
}

impl std::fmt::Debug for SentinelGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelGroup")
            .field("nodes", &self.node_urls())
            .field("sentinels", &self.sentinel_urls())
            .finish()
    }
}

/// `SENTINEL MASTER name` as a field map.
fn sentinel_master(sentinel_url: &str) -> Result<HashMap<String, String>, String> {
    let flat: Vec<String> = query(
        sentinel_url,
        redis::cmd("SENTINEL").arg("MASTER").arg(MASTER_NAME),
    )?;
    Ok(flat
        .chunks(2)
        .filter_map(|kv| match kv {
            [k, v] => Some((k.clone(), v.clone())),
            _ => None,
        })
        .collect())
}

/// The primary a sentinel reports, as `redis://HOST:PORT`.
fn reported_primary(sentinel_url: &str) -> Result<String, String> {
    let (host, port): (String, u16) = query(
        sentinel_url,
        redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(MASTER_NAME),
    )?;
    Ok(format!("redis://{host}:{port}"))
}
