//! Redis topology figures for BENCHMARKS.md: distlock on one server, on a
//! Sentinel group and on a Cluster, each without and with replica
//! acknowledgement (`replica_ack` = 1 replica), in one run on one machine.
//!
//! ```text
//! cargo bench -p distlock-examples --bench topologies
//! ```
//!
//! The servers are `redis-server`/`redis-sentinel` processes from `PATH`
//! started by the test kit: a Sentinel group (1 primary, 2 replicas, 3
//! sentinels) and a Cluster (3 primaries, 3 replicas). "single" is the
//! Sentinel group's primary addressed directly with the default topology,
//! so all rows use the same kind of server and the single rows can use its
//! replicas for `WAIT`.
//!
//! Scenarios: `uncontended` (one task, lock + release of one name in a
//! loop: pairs per second and the latency of one pair) and `manykeys` (64
//! tasks, each on its own name: pairs per second).
//!
//! Environment: `DISTLOCK_BENCH_SECS`, seconds per scenario and row
//! (default 3; fractions allowed).

use std::time::{Duration, Instant};

use distlock_redis::testkit::{RedisCluster, SentinelGroup};
use distlock_redis::{LockOptions, Locker, RedisBackend, RedisConfig, ReplicaAck};

const TASKS: usize = 64;

fn secs() -> Duration {
    std::env::var("DISTLOCK_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map_or(Duration::from_secs(3), Duration::from_secs_f64)
}

fn locker(config: &RedisConfig) -> Locker<RedisBackend> {
    Locker::new(RedisBackend::from_config(config).expect("backend"))
        .with_defaults(LockOptions::default().with_ttl(Duration::from_secs(30)))
        .expect("options")
}

async fn pair(locker: &Locker<RedisBackend>, name: &str) {
    let guard = locker.lock(name).await.expect("lock");
    let released = guard.release().await.expect("release");
    assert_eq!(released, distlock_redis::Release::Released);
}

/// (pairs per second, median, p99) of one task.
async fn uncontended(config: &RedisConfig, len: Duration, run: &str) -> (f64, Duration, Duration) {
    let locker = locker(config);
    let name = format!("bench-topo-u-{run}");
    pair(&locker, &name).await; // connect, load scripts
    let mut lat = Vec::new();
    let started = Instant::now();
    while started.elapsed() < len {
        let t = Instant::now();
        pair(&locker, &name).await;
        lat.push(t.elapsed());
    }
    let rate = lat.len() as f64 / started.elapsed().as_secs_f64();
    lat.sort();
    let at = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
    (rate, at(0.5), at(0.99))
}

/// Pairs per second of 64 tasks on their own names through one backend.
async fn many_keys(config: &RedisConfig, len: Duration, run: &str) -> f64 {
    let locker = locker(config);
    for t in 0..TASKS {
        pair(&locker, &format!("bench-topo-m-{run}-{t}")).await;
    }
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let locker = locker.clone();
            let name = format!("bench-topo-m-{run}-{t}");
            tokio::spawn(async move {
                let mut n = 0u64;
                while started.elapsed() < len {
                    pair(&locker, &name).await;
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("task");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    let len = secs();
    let group = SentinelGroup::start();
    let cluster = RedisCluster::start();
    let nodes = cluster.node_urls();
    let ack = ReplicaAck::new(1);
    let single = RedisConfig::new(group.primary_url());
    let sentinel = RedisConfig::new("redis://primary")
        .with_sentinel(group.master_name(), group.sentinel_urls());
    let clustered = RedisConfig::new(nodes[0].clone()).with_cluster(nodes[1..].to_vec());
    let rows = [
        ("single", single.clone()),
        ("single + replica_ack 1", single.with_replica_ack(ack)),
        ("sentinel", sentinel.clone()),
        ("sentinel + replica_ack 1", sentinel.with_replica_ack(ack)),
        ("cluster", clustered.clone()),
        ("cluster + replica_ack 1", clustered.with_replica_ack(ack)),
    ];
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("topologies: {len:?} per scenario and row, loopback, redis-server 7.0.15");
    println!("| topology | uncontended pairs/s | median pair | p99 pair | many keys ({TASKS} tasks) pairs/s |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (i, (label, config)) in rows.iter().enumerate() {
        let run = format!("{}-{i}", std::process::id());
        let (rate, p50, p99) = runtime.block_on(uncontended(config, len, &run));
        let many = runtime.block_on(many_keys(config, len, &run));
        println!(
            "| {label} | {rate:.0} | {} | {} | {many:.0} |",
            us(p50),
            us(p99)
        );
    }
}
