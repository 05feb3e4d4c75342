//! Stress across OS processes against a quorum of three real Redis
//! servers, checked from the recorded history, once without faults and once
//! with one member stopped and restarted without persistence mid-run.
//!
//! `quorum_stress_across_processes_with_a_member_restart` starts three
//! `redis-server` processes and re-runs this test binary as 3 child
//! processes (only `quorum_stress_worker`, in child mode through
//! environment variables), each with 4 tasks on 2 names using the
//! `distlock_conformance::history::stress` driver (every hold increments a
//! counter on the first server with GET, a pause and SET, and is printed as
//! one JSON line). The parent checks the merged history with
//! `history::check`: there must be **no fence-order violation** in either
//! run; overlapping holds are printed for both runs (a restart without
//! persistence may let a second client in, which is what fencing is for)
//! and must be absent from the run without the restart; both runs' figures
//! are written to stderr (shown by `cargo test` whether or not the test
//! passes). The restart must fall inside the run: holds before and after.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use distlock::Quorum;
use distlock_conformance::history::{
    check, stress_streaming, BoxError, Hold, SharedCounter, Stamp, StressConfig,
};
use distlock_redis::redis::AsyncCommands;
use distlock_redis::testkit::{ProcessOptions, RedisServer};
use distlock_redis::{Locker, RedisBackend};

const CHILD_ENV: &str = "DISTLOCK_QSTRESS_CHILD";
const URLS_ENV: &str = "DISTLOCK_QSTRESS_URLS";
const RUN_ENV: &str = "DISTLOCK_QSTRESS_RUN";
const HOLD_LINE: &str = "distlock-qstress-hold ";

const PROCESSES: u32 = 3;
const NAMES: [&str; 2] = ["alpha", "beta"];
/// Children start no new hold after this long.
const CHILD_BUDGET: Duration = Duration::from_secs(8);
/// A child still running after this long fails the test.
const CHILD_TIMEOUT: Duration = Duration::from_secs(90);

fn config(process: u32) -> StressConfig {
    let mut config = StressConfig::new(process, NAMES);
    config.tasks = 4;
    config.holds_per_task = 1000;
    config.max_duration = Some(CHILD_BUDGET);
    config.ttl = Duration::from_secs(5);
    config.wait_timeout = Duration::from_secs(60);
    config.retry = (Duration::from_millis(2), Duration::from_millis(50));
    config.work = Duration::from_millis(1);
    config.renew_every = 4;
    config.renew_ttl = Duration::from_secs(1);
    config.overrun_every = 10;
    config.overrun_ttl = Duration::from_millis(30);
    config
}

#[derive(Clone)]
struct Counter {
    connection: distlock_redis::redis::aio::MultiplexedConnection,
    run: String,
}

#[distlock_conformance::async_trait]
impl SharedCounter for Counter {
    async fn read(&self, name: &str) -> Result<u64, BoxError> {
        let key = format!("qstress:{}:{name}", self.run);
        let value: Option<u64> = self.connection.clone().get(key).await?;
        Ok(value.unwrap_or(0))
    }

    async fn write(&self, name: &str, value: u64) -> Result<(), BoxError> {
        let key = format!("qstress:{}:{name}", self.run);
        let () = self.connection.clone().set(key, value).await?;
        Ok(())
    }
}

/// The child entry point (does nothing when not a child).
#[test]
fn quorum_stress_worker() {
    let Ok(process) = std::env::var(CHILD_ENV) else {
        return;
    };
    let process: u32 = process.parse().expect("child number");
    let urls: Vec<String> = std::env::var(URLS_ENV)
        .expect("urls")
        .split(',')
        .map(str::to_owned)
        .collect();
    let run = std::env::var(RUN_ENV).expect("run id");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let locker = || {
            let members = urls
                .iter()
                .map(|u| RedisBackend::from_url(u).expect("backend"))
                .collect::<Vec<_>>();
            Locker::new(Quorum::new(members).expect("quorum"))
                .with_prefix(format!("qstress-{run}"))
                .expect("prefix")
        };
        let lockers = [locker(), locker()];
        let connection = distlock_redis::redis::Client::open(urls[0].as_str())
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("counter connection");
        let counter = Counter {
            connection,
            run: run.clone(),
        };
        stress_streaming(&lockers, counter, &config(process), |hold| {
            println!("{HOLD_LINE}{}", hold.to_json_line());
        })
        .await
        .unwrap_or_else(|e| panic!("stress run failed: {e}"));
    });
}

/// Runs the children against `servers`; with `restart`, stops and
/// restarts `servers[1]` (no persistence) a third into the run. Returns
/// the holds and, with `restart`, when the member went down and when it
/// was back.
fn run(servers: &[RedisServer], restart: bool) -> (Vec<Hold>, Option<(Stamp, Stamp)>) {
    let urls: Vec<&str> = servers.iter().map(|s| s.url()).collect();
    let run = format!("{}-{}-{restart}", std::process::id(), rand_suffix());
    let children: Vec<_> = (0..PROCESSES)
        .map(|p| {
            Command::new(std::env::current_exe().expect("exe"))
                .args([
                    "quorum_stress_worker",
                    "--exact",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env(CHILD_ENV, p.to_string())
                .env(URLS_ENV, urls.join(","))
                .env(RUN_ENV, &run)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawning a worker")
        })
        .collect();
    let mut outage = None;
    if restart {
        std::thread::sleep(CHILD_BUDGET / 3);
        let down = Stamp::now();
        servers[1].stop();
        std::thread::sleep(Duration::from_millis(500));
        servers[1].restart();
        outage = Some((down, Stamp::now()));
    }
    let started = Instant::now();
    let mut holds = Vec::new();
    for mut child in children {
        let out = child.stdout.take().expect("stdout");
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(at) = line.find(HOLD_LINE) {
                let json = &line[at + HOLD_LINE.len()..];
                holds.push(Hold::from_json_line(json).expect("a hold line"));
            }
        }
        assert!(
            started.elapsed() < CHILD_TIMEOUT,
            "workers ran longer than {CHILD_TIMEOUT:?}"
        );
        assert!(child.wait().expect("wait").success(), "a worker failed");
    }
    (holds, outage)
}

/// Shown whether or not the test passes (the test harness hides what a
/// passing test prints with `println!`).
fn report(what: &str, report: &distlock_conformance::history::Report) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "quorum stress {what}: {} holds, {} overlaps, {} fence-order violations",
        report.total_holds(),
        report.overlaps(),
        report.fence_violations()
    );
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

#[test]
fn quorum_stress_across_processes_with_a_member_restart() {
    let servers: Vec<RedisServer> = (0..3)
        .map(|_| RedisServer::start_process(ProcessOptions::new()))
        .collect();

    let (holds, _) = run(&servers, false);
    let calm = check(&holds);
    report("without restart", &calm);
    let (holds, outage) = run(&servers, true);
    let restarted = check(&holds);
    report("with a member restarted mid-run", &restarted);
    assert!(calm.total_holds() > 0 && restarted.total_holds() > 0);
    assert!(calm.is_clean(), "{calm}");
    assert_eq!(restarted.fence_violations(), 0, "{restarted}");
    // The restart fell inside the run: locks were taken before the member
    // went down and after it was back.
    let (down, back) = outage.expect("the second run restarts a member");
    let before = holds.iter().filter(|h| h.acquired < down).count();
    let after = holds.iter().filter(|h| h.acquire_sent > back).count();
    assert!(
        before > 0 && after > 0,
        "{before} holds before the restart, {after} after: it did not fall inside the run"
    );
}
