//! Runs the multi-process `counter` example against a real Redis and checks
//! that no increment was lost.

use std::process::Command;

use distlock_redis::testkit::RedisServer;

#[test]
fn counter_example_four_processes_lose_no_update() {
    let server = RedisServer::shared();
    let output = Command::new(env!("CARGO_BIN_EXE_counter"))
        .args(["4", "25"])
        .env("REDIS_URL", server.url())
        .output()
        .expect("run the counter example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "counter example failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("final count: 100, expected: 100"),
        "unexpected output:\n{stdout}"
    );
    // Every one of the four processes reported its increments.
    for id in 0..4 {
        assert!(
            stdout.contains(&format!("process {id}: 25 increments")),
            "process {id} missing:\n{stdout}"
        );
    }
}

#[test]
fn quickstart_runs_against_redis() {
    let server = RedisServer::shared();
    let output = Command::new(env!("CARGO_BIN_EXE_quickstart"))
        .env("REDIS_URL", server.url())
        .output()
        .expect("run the quickstart example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "quickstart failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("backend: Redis"), "{stdout}");
    assert!(stdout.contains("done: 12 critical sections"), "{stdout}");
}
