//! Runs the `charge_once` and `nightly_report` examples in memory and
//! against a real Redis (the testkit's), and checks what they print.

use std::process::{Command, Output};

use distlock_redis::testkit::RedisServer;

/// Runs an example binary; `redis_url` None means the memory backend.
fn run(bin: &str, args: &[&str], redis_url: Option<&str>) -> String {
    let mut command = Command::new(bin);
    command.args(args).env_remove("REDIS_URL");
    if let Some(url) = redis_url {
        command.env("REDIS_URL", url);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().expect("run the example");
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    println!("{stdout}");
    assert!(
        status.success(),
        "{bin} failed: {status}\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&stderr)
    );
    stdout
}

#[test]
fn charge_once_charges_every_order_once_in_memory_and_on_redis() {
    let server = RedisServer::shared();
    for url in [None, Some(server.url())] {
        let out = run(env!("CARGO_BIN_EXE_charge_once"), &[], url);
        let backend = if url.is_some() { "Redis" } else { "in-memory" };
        assert!(out.contains(&format!("backend: {backend}")), "{out}");
        assert!(
            out.contains("done: 5 orders, each charged exactly once by 4 racing workers"),
            "{out}"
        );
        assert_eq!(out.matches(": charged order-").count(), 5, "{out}");
    }
}

#[test]
fn nightly_report_runs_once_per_date_in_memory_and_across_processes_on_redis() {
    // In memory: two runs in one process, the second skips.
    let out = run(
        env!("CARGO_BIN_EXE_nightly_report"),
        &["2026-11-30", "2"],
        None,
    );
    assert!(
        out.contains("run 1: built the report for 2026-11-30"),
        "{out}"
    );
    assert!(
        out.contains("run 2: the report for 2026-11-30 is done"),
        "{out}"
    );

    // On Redis: separate processes, the second after the first has ended.
    let server = RedisServer::shared();
    // A date nobody else used on this server; kept for a minute only.
    let date = format!(
        "test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let first = run(
        env!("CARGO_BIN_EXE_nightly_report"),
        &[&date, "1", "60"],
        Some(server.url()),
    );
    assert!(
        first.contains(&format!("run 1: built the report for {date}")),
        "{first}"
    );
    let second = run(
        env!("CARGO_BIN_EXE_nightly_report"),
        &[&date, "1", "60"],
        Some(server.url()),
    );
    assert!(
        second.contains(&format!(
            "run 1: the report for {date} is done or running (held by "
        )),
        "{second}"
    );
    // The second names the first by its owner label, hostname:pid.
    let owner = first
        .split(" as ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .expect("the first run prints its owner label");
    assert!(owner.contains(':'), "{owner}");
    assert!(second.contains(&format!("held by {owner},")), "{second}");
    // The next date is free.
    let next = run(
        env!("CARGO_BIN_EXE_nightly_report"),
        &[&format!("{date}-next"), "1", "60"],
        Some(server.url()),
    );
    assert!(next.contains("built the report"), "{next}");
}
