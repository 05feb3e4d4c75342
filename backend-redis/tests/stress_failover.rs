//! A history-checked stress across OS processes on a Redis Sentinel group,
//! with a `SIGKILL` of the primary in the middle: once without and once
//! with replica acknowledgement.
//!
//! `failover_during_a_stress_across_processes` starts a Sentinel group and
//! re-runs this binary as 3 child processes (the test `failover_worker`,
//! in child mode through environment variables). Each child runs 6 tasks on
//! 2 lock names until its stdin closes: lock (retrying transient errors,
//! which the failover causes), hold 5 ms, release; every hold is printed as
//! a JSON line. After 4 s the parent kills the primary with `SIGKILL`,
//! waits for the sentinels to promote a replica, restarts the killed node,
//! waits until the sentinels made it a replica again and lets the children
//! run 4 s more. The merged history is checked with
//! `history::check`: overlapping protected intervals (the lock granted
//! twice) and fencing tokens that did not increase.
//!
//! With `replica_ack` = 2 (every replica) and the kill after the
//! acknowledgement, the check must be clean. Without it the figures are
//! printed (`--nocapture`), not asserted: asynchronous replication may lose
//! a lock in the failover.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use distlock_conformance::history::{check, Hold, HolderId, Stamp};
use distlock_redis::testkit::SentinelGroup;
use distlock_redis::{
    BackendErrorKind, LockError, LockOptions, Locker, RedisBackend, RedisConfig, ReplicaAck,
};

const CHILD_ENV: &str = "DISTLOCK_FAILOVER_CHILD";
const SENTINELS_ENV: &str = "DISTLOCK_FAILOVER_SENTINELS";
const ACK_ENV: &str = "DISTLOCK_FAILOVER_ACK";
const HOLD_LINE: &str = "distlock-failover-hold ";
const PROCESSES: u32 = 3;
const TASKS: u32 = 6;
const NAMES: [&str; 2] = ["fo-alpha", "fo-beta"];
const KILL_AFTER: Duration = Duration::from_secs(4);
const RUN_ON: Duration = Duration::from_secs(4);

fn config(sentinels: &str, ack: bool) -> RedisConfig {
    let config = RedisConfig::new("redis://primary")
        .with_sentinel(
            distlock_redis::testkit::MASTER_NAME,
            sentinels.split(',').map(str::to_owned),
        )
        .with_connect_timeout(Duration::from_secs(1))
        .with_command_timeout(Duration::from_secs(1));
    if ack {
        config.with_replica_ack(ReplicaAck::new(2).with_timeout(Duration::from_millis(500)))
    } else {
        config
    }
}

fn transient(e: &LockError) -> bool {
    matches!(e, LockError::Backend(b) if b.kind().is_transient()
        || b.kind() == BackendErrorKind::ReplicationIncomplete)
}

/// The child entry point (does nothing when run alone).
#[test]
fn failover_worker() {
    let Ok(process) = std::env::var(CHILD_ENV) else {
        return;
    };
    let process: u32 = process.parse().expect("child number");
    let sentinels = std::env::var(SENTINELS_ENV).expect("sentinels");
    let ack = std::env::var(ACK_ENV).is_ok_and(|v| v == "1");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let locker = Locker::new(RedisBackend::from_config(&config(&sentinels, ack)).unwrap())
            .with_defaults(
                LockOptions::default()
                    .with_ttl(Duration::from_secs(3))
                    .with_retry(Duration::from_millis(5), Duration::from_millis(100))
                    .with_wait_timeout(Duration::from_secs(30)),
            )
            .unwrap();
        // The parent closes our stdin to stop us.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            let mut sink = String::new();
            while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
            flag.store(true, std::sync::atomic::Ordering::Release);
        });
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let locker = locker.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let holder = HolderId { process, task };
                    let mut n = task as usize;
                    while !stop.load(std::sync::atomic::Ordering::Acquire) {
                        let name = NAMES[n % NAMES.len()];
                        n += 1;
                        let asked = Stamp::now();
                        let guard = match locker.lock(name).await {
                            Ok(g) => g,
                            Err(e) if transient(&e) => {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                            Err(e) => panic!("{holder}: {e}"),
                        };
                        let mut hold = Hold::from_guard(holder, asked, Stamp::now(), &guard);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        hold.before_release(&guard);
                        // A release may fail in the failover; the lease ends anyway.
                        let _ = guard.release().await;
                        println!("{HOLD_LINE}{}", hold.to_json_line());
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("a worker task panicked");
        }
    });
}

/// Runs one round and returns (holds, holds acquired after the kill,
/// overlaps, fence violations).
fn round(ack: bool) -> (usize, usize, usize, usize) {
    let group = SentinelGroup::start();
    let sentinels = group.sentinel_urls().join(",");
    let children: Vec<_> = (0..PROCESSES)
        .map(|p| {
            Command::new(std::env::current_exe().expect("current exe"))
                .args([
                    "failover_worker",
                    "--exact",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env(CHILD_ENV, p.to_string())
                .env(SENTINELS_ENV, &sentinels)
                .env(ACK_ENV, if ack { "1" } else { "0" })
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawning a worker")
        })
        .collect();
    std::thread::sleep(KILL_AFTER);
    let killed_at = Stamp::now();
    let (index, old) = group.kill_primary();
    let new = group.wait_for_new_primary(&old, Duration::from_secs(60));
    let promoted_after = Stamp::now().saturating_duration_since(killed_at);
    group.restart_node(index);
    group.wait_for_replicas(2, Duration::from_secs(60));
    let rejoined_after = Stamp::now().saturating_duration_since(killed_at);
    let rejoined_at = Stamp::now();
    println!(
        "failover: {old} killed, {new} promoted after {promoted_after:?}, the old node \
         restarted and back as a replica after {rejoined_after:?}"
    );
    std::thread::sleep(RUN_ON);
    let mut holds = Vec::new();
    for mut child in children {
        drop(child.stdin.take());
        let out = child.stdout.take().expect("stdout");
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(at) = line.find(HOLD_LINE) {
                holds.push(Hold::from_json_line(&line[at + HOLD_LINE.len()..]).expect("hold line"));
            }
        }
        let status = child.wait().expect("waiting for a worker");
        assert!(status.success(), "a worker failed: {status}");
    }
    let after = holds.iter().filter(|h| h.acquired > killed_at).count();
    let between = holds
        .iter()
        .filter(|h| h.acquired > killed_at && h.acquired < rejoined_at)
        .count();
    let report = check(&holds);
    println!(
        "FIGURE stress with failover, replica_ack {}: {} holds ({after} after the kill, \
         {between} of them before the old node was a replica again), {} overlaps, {} \
         fence-order violations\n{report}",
        if ack { "2" } else { "off" },
        holds.len(),
        report.overlaps(),
        report.fence_violations()
    );
    (
        holds.len(),
        after,
        report.overlaps(),
        report.fence_violations(),
    )
}

#[test]
fn failover_during_a_stress_across_processes() {
    let (holds, after, _overlaps, _fences) = round(false);
    assert!(holds > 0 && after > 0, "no holds after the failover");
    let (holds, after, overlaps, fences) = round(true);
    assert!(
        holds > 0 && after > 0,
        "no holds after the failover (with ack)"
    );
    assert_eq!(
        overlaps, 0,
        "the lock was granted twice with replica acknowledgement"
    );
    assert_eq!(
        fences, 0,
        "fences went backwards with replica acknowledgement"
    );
}
