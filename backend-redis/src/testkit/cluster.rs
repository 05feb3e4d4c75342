//! A Redis Cluster of real processes: three primaries and three replicas on
//! loopback ports.

use std::process::{Command, Stdio};
use std::time::Duration;

use super::process::{ProcessOptions, ProcessServer};
use super::{free_port, on_own_thread, query, wait_until, ScratchDir};

/// The cluster node timeout the nodes run with (`cluster-node-timeout`): a
/// primary unreachable for this long is failed over by its replica.
pub const NODE_TIMEOUT: Duration = Duration::from_millis(2000);

/// A Redis Cluster of six `redis-server` processes from `PATH` on free
/// loopback ports (each with its cluster bus on a second free port): three
/// primaries that share the 16384 slots and one replica each, created with
/// `redis-cli --cluster create --cluster-replicas 1`. Every process stops
/// when the cluster drops or the test process exits.
///
/// [`start`](Self::start) returns once every node reports `cluster_state:ok`
/// and knows all six nodes, and every replica is in sync.
pub struct RedisCluster {
    nodes: Vec<ProcessServer>,
    // Last: the processes stop before their files go.
    _dir: ScratchDir,
}

/// One line of `CLUSTER NODES`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNode {
    /// The node ID.
    pub id: String,
    /// `redis://127.0.0.1:PORT`.
    pub url: String,
    /// Whether it is a primary (otherwise a replica).
    pub primary: bool,
    /// For a replica, the ID of its primary.
    pub primary_id: Option<String>,
    /// The slot ranges it serves (primaries), inclusive.
    pub slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// Starts the cluster (a few seconds).
    ///
    /// # Panics
    ///
    /// When `redis-server`/`redis-cli` are missing or the cluster does not
    /// form within 60 s.
    pub fn start() -> RedisCluster {
        match on_own_thread(Self::launch) {
            Ok(cluster) => cluster,
            Err(e) => panic!(
                "cannot start a Redis Cluster: {e} (it needs redis-server and redis-cli on \
                 PATH: `apt-get install redis-server redis-tools`)"
            ),
        }
    }

    fn launch() -> Result<RedisCluster, String> {
        let dir = ScratchDir::new("cluster")?;
        let mut nodes = Vec::new();
        for i in 0..6 {
            let bus = free_port().map_err(|e| format!("finding a free port: {e}"))?;
            // Its own directory: a replica writes the RDB it syncs to disk.
            let node_dir = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir)
                .map_err(|e| format!("creating {}: {e}", node_dir.display()))?;
            let options = ProcessOptions::new().args([
                "--cluster-enabled".to_owned(),
                "yes".to_owned(),
                "--cluster-config-file".to_owned(),
                dir.path()
                    .join(format!("nodes{i}.conf"))
                    .display()
                    .to_string(),
                "--cluster-port".to_owned(),
                bus.to_string(),
                "--cluster-node-timeout".to_owned(),
                NODE_TIMEOUT.as_millis().to_string(),
                "--dir".to_owned(),
                node_dir.display().to_string(),
            ]);
            nodes.push(ProcessServer::start_with(options)?);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let out = Command::new("timeout")
            .arg("60")
            .arg("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running redis-cli --cluster create: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let cluster = RedisCluster { nodes, _dir: dir };
        cluster.wait_stable(Duration::from_secs(60))?;
        eprintln!(
            "distlock testkit: Redis Cluster at {:?}",
            cluster.node_urls()
        );
        Ok(cluster)
    }

    /// Waits until every running node says `cluster_state:ok`, they all
    /// agree on the same three primaries covering all slots, and every
    /// primary has an in-sync replica (or none is running for it).
    fn wait_stable(&self, within: Duration) -> Result<(), String> {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .map(ProcessServer::url)
            .collect();
        wait_until("the cluster to become stable", within, || {
            let mut views = Vec::new();
            for url in &urls {
                let info: String = query(url, redis::cmd("CLUSTER").arg("INFO")).ok()?;
                if !info.contains("cluster_state:ok") {
                    return None;
                }
                let mut primaries: Vec<(String, Vec<(u16, u16)>)> = cluster_nodes(url)
                    .ok()?
                    .into_iter()
                    .filter(|n| n.primary && !n.slots.is_empty())
                    .map(|n| (n.url, n.slots))
                    .collect();
                primaries.sort();
                views.push(primaries);
            }
            let first = views.first()?;
            let covered: u32 = first
                .iter()
                .flat_map(|(_, s)| s.iter().map(|(a, b)| u32::from(b - a) + 1))
                .sum();
            if covered != 16384 || views.iter().any(|v| v != first) {
                return None;
            }
            for (primary, _) in first {
                let info: String = query(primary, redis::cmd("INFO").arg("replication")).ok()?;
                if info.contains("state=wait_bgsave") || info.contains("state=send_bulk") {
                    return None;
                }
            }
            Some(())
        })
    }

    /// Every node's URL, `redis://127.0.0.1:PORT` (seed nodes for a client).
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes.iter().map(ProcessServer::url).collect()
    }

    /// The nodes as the first answering running node sees them
    /// (`CLUSTER NODES`).
    ///
    /// # Panics
    ///
    /// When no node answers.
    pub fn nodes(&self) -> Vec<ClusterNode> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .find_map(|n| cluster_nodes(&n.url()).ok())
            .expect("no cluster node answers CLUSTER NODES")
    }

    /// The primaries that serve slots.
    pub fn primaries(&self) -> Vec<ClusterNode> {
        self.nodes()
            .into_iter()
            .filter(|n| n.primary && !n.slots.is_empty())
            .collect()
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub fn key_slot(&self, key: &str) -> u16 {
        let url = self.any_running_url();
        query(&url, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
            .unwrap_or_else(|e| panic!("CLUSTER KEYSLOT: {e}"))
    }

    /// The primary serving `slot`.
    pub fn primary_of_slot(&self, slot: u16) -> ClusterNode {
        self.primaries()
            .into_iter()
            .find(|n| n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .unwrap_or_else(|| panic!("no primary serves slot {slot}"))
    }

    fn index_of(&self, url: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.url() == url)
            .unwrap_or_else(|| panic!("{url} is not a node of this cluster"))
    }

    fn any_running_url(&self) -> String {
        self.nodes
            .iter()
            .find(|n| n.is_running())
            .map(ProcessServer::url)
            .expect("no cluster node is running")
    }

    /// Kills the node at `url` with `SIGKILL`. Killing a primary makes its
    /// replica take over after [`NODE_TIMEOUT`] (see
    /// [`wait_for_new_primary`](Self::wait_for_new_primary)).
    pub fn kill_node(&self, url: &str) {
        self.nodes[self.index_of(url)].kill();
    }

    /// Asks the replica of the primary at `primary_url` to take over
    /// cleanly (`CLUSTER FAILOVER` on the replica: the primary stops
    /// writes, the replica catches up and is promoted). Returns the
    /// replica's URL.
    pub fn failover(&self, primary_url: &str) -> String {
        let nodes = self.nodes();
        let primary = nodes
            .iter()
            .find(|n| n.url == primary_url)
            .unwrap_or_else(|| panic!("{primary_url} is not a known node"));
        let replica = nodes
            .iter()
            .find(|n| n.primary_id.as_deref() == Some(primary.id.as_str()))
            .unwrap_or_else(|| panic!("{primary_url} has no replica"));
        let _: String = query(&replica.url, redis::cmd("CLUSTER").arg("FAILOVER"))
            .unwrap_or_else(|e| panic!("CLUSTER FAILOVER: {e}"));
        replica.url.clone()
    }

    /// Waits until the slot `slot` is served by a primary other than
    /// `old_url` according to every running node, and the cluster is
    /// stable again; returns the new primary's URL.
    ///
    /// # Panics
    ///
    /// When that does not happen within `within`.
    pub fn wait_for_new_primary(&self, slot: u16, old_url: &str, within: Duration) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .map(ProcessServer::url)
            .collect();
        let new = wait_until("a new primary for the slot", within, || {
            let mut owner = None;
            for url in &urls {
                let nodes = cluster_nodes(url).ok()?;
                let serving = nodes.into_iter().find(|n| {
                    n.primary && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
                })?;
                if serving.url == old_url || owner.as_ref().is_some_and(|o| *o != serving.url) {
                    return None;
                }
                owner = Some(serving.url);
            }
            owner
        })
        .unwrap_or_else(|e| panic!("{e}"));
        self.wait_stable(within)
            .unwrap_or_else(|e| panic!("after the failover: {e}"));
        new
    }

    /// Starts a killed node again. With its `nodes.conf` it rejoins the
    /// cluster (as a replica if its slots moved meanwhile).
    pub fn restart_node(&self, url: &str) {
        if let Err(e) = self.nodes[self.index_of(url)].restart() {
            panic!("cannot restart {url}: {e}");
        }
    }

    /// Moves `slot` with its keys to the primary at `to_url`, the way
    /// `redis-cli --cluster reshard` does: `SETSLOT IMPORTING` on the
    /// target, `MIGRATING` on the source, `MIGRATE` of the keys in batches,
    /// then `SETSLOT NODE` on both and the other primaries. Clients see
    /// `ASK` while the keys move and `MOVED` afterwards.
    ///
    /// # Panics
    ///
    /// When a step fails.
    pub fn migrate_slot(&self, slot: u16, to_url: &str) {
        let source = self.primary_of_slot(slot);
        let nodes = self.nodes();
        let target = nodes
            .iter()
            .find(|n| n.url == to_url && n.primary)
            .unwrap_or_else(|| panic!("{to_url} is not a primary"));
        if source.id == target.id {
            return;
        }
        let step = |url: &str, cmd: &redis::Cmd| {
            query::<redis::Value>(url, cmd).unwrap_or_else(|e| panic!("migrating slot {slot}: {e}"))
        };
        let setslot = |state: &str, id: &str| {
            let mut c = redis::cmd("CLUSTER");
            c.arg("SETSLOT").arg(slot).arg(state).arg(id);
            c
        };
        step(&target.url, &setslot("IMPORTING", &source.id));
        step(&source.url, &setslot("MIGRATING", &target.id));
        let port = target.url.rsplit(':').next().unwrap_or_default().to_owned();
        loop {
            let keys: Vec<String> = query(
                &source.url,
                redis::cmd("CLUSTER")
                    .arg("GETKEYSINSLOT")
                    .arg(slot)
                    .arg(100),
            )
            .unwrap_or_else(|e| panic!("GETKEYSINSLOT: {e}"));
            if keys.is_empty() {
                break;
            }
            let mut migrate = redis::cmd("MIGRATE");
            migrate
                .arg("127.0.0.1")
                .arg(&port)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("REPLACE")
                .arg("KEYS")
                .arg(&keys);
            step(&source.url, &migrate);
        }
        step(&target.url, &setslot("NODE", &target.id));
        step(&source.url, &setslot("NODE", &target.id));
        for other in self.primaries() {
            if other.id != source.id && other.id != target.id {
                step(&other.url, &setslot("NODE", &target.id));
            }
        }
    }
}

impl std::fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCluster")
            .field("nodes", &self.node_urls())
            .finish()
    }
}

/// `CLUSTER NODES` of the node at `url`, without failed nodes.
fn cluster_nodes(url: &str) -> Result<Vec<ClusterNode>, String> {
    let text: String = query(url, redis::cmd("CLUSTER").arg("NODES"))?;
    Ok(text.lines().filter_map(parse_node_line).collect())
}

/// `<id> <ip:port@bus> <flags> <primary> <ping> <pong> <epoch> <link> <slot>...`
fn parse_node_line(line: &str) -> Option<ClusterNode> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 8 {
        return None;
    }
    let flags = fields[2];
    if flags.contains("fail") && !flags.contains("fail?") || flags.contains("noaddr") {
        return None;
    }
    let addr = fields[1].split('@').next()?;
    let primary = flags.contains("master");
    let slots = fields[8..]
        .iter()
        .filter(|s| !s.starts_with('['))
        .filter_map(|s| match s.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => s.parse().ok().map(|n| (n, n)),
        })
        .collect();
    Some(ClusterNode {
        id: fields[0].to_owned(),
        url: format!("redis://{addr}"),
        primary,
        primary_id: (fields[3] != "-").then(|| fields[3].to_owned()),
        slots,
    })
}
