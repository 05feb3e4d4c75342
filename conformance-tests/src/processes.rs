//! Stress across OS processes: the test binary re-runs itself as children,
//! each runs the [`stress`](crate::history::stress) driver against the
//! shared store and streams its holds back; the parent checks the merged
//! history.
//!
//! Two tests make a multi-process stress run: a *child test*, which does
//! the work when [`child_process`] says it runs as a child, and the parent
//! test, which starts the children with [`ProcessStress::run`] and checks
//! what they recorded with [`check`](crate::history::check). The children
//! write one record per line, each framed by [`RECORD_MARKER`], so that
//! whatever the test harness prints around them (libtest writes
//! `test stress_child ... ` without a newline before the first record) is
//! skipped, not misread; the parent fails if a child sent fewer hold
//! records than its closing summary counts.
//!
//! The protected counter must be visible to every process. Keep it in the
//! store under test if it can hold one, or in files: [`FileCounter`] works
//! beside any backend, for processes on one host.
//!
//! ```no_run
//! use std::time::Duration;
//! use distlock::Locker;
//! use distlock_conformance::history::{check, StressConfig};
//! use distlock_conformance::processes::{child_process, run_child, FileCounter, ProcessStress};
//! # use distlock_memory::MemoryBackend as MyBackend;
//! # fn connect() -> MyBackend { MyBackend::new() }
//!
//! const COUNTER_DIR: &str = "MY_STRESS_COUNTER_DIR";
//!
//! #[test]
//! fn stress_child() {
//!     let Some(process) = child_process() else { return }; // only as a child
//!     let dir = std::env::var(COUNTER_DIR).unwrap();
//!     let config = StressConfig::new(process, ["a", "b"]);
//!     tokio::runtime::Runtime::new().unwrap().block_on(async {
//!         let lockers = [Locker::new(connect()), Locker::new(connect())];
//!         run_child(&lockers, FileCounter::new(dir), &config).await.unwrap();
//!     });
//! }
//!
//! #[test]
//! fn stress_across_processes() {
//!     let counter = FileCounter::temporary().unwrap();
//!     let run = ProcessStress::new("stress_child", 4)
//!         .env(COUNTER_DIR, counter.path())
//!         .timeout(Duration::from_secs(120))
//!         .run()
//!         .unwrap();
//!     let report = check(&run.holds);
//!     assert!(report.is_clean(), "{report}");
//!     for (name, holds) in &report.holds_per_name {
//!         assert_eq!(counter.get(name).unwrap() as usize, *holds, "{name}");
//!     }
//! }
//! # fn main() {}
//! ```

use std::ffi::OsString;
use std::fmt;
use std::io::{BufRead, BufReader, Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use distlock::{LockBackend, Locker};
use serde::{Deserialize, Serialize};

use crate::harness::BoxError;
use crate::history::{Hold, SharedCounter, StressConfig, StressError, StressRun};

/// The environment variable that makes a process a child, holding its
/// process number.
pub const CHILD_ENV: &str = "DISTLOCK_CONFORMANCE_CHILD";

/// The marker in front of every record a child writes. A line counts only
/// from its first marker on; text before it is ignored.
pub const RECORD_MARKER: &str = "@@distlock-conformance-record@@ ";

/// In a child started by [`ProcessStress`]: its process number (0-based).
/// `None` in any other process.
pub fn child_process() -> Option<u32> {
    std::env::var(CHILD_ENV).ok()?.parse().ok()
}

/// One record of a child's output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Record {
    /// One hold, sent as soon as it was released.
    Hold(Hold),
    /// The child's closing figures.
    Summary(ChildSummary),
}

/// A child's closing figures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildSummary {
    /// The child's process number.
    pub process: u32,
    /// How many holds it recorded (and sent).
    pub holds: usize,
    /// Releases that reported `NotHeld`.
    pub released_not_held: usize,
    /// Holds that ran their lease out on purpose.
    pub planned_expiries: usize,
    /// How long its run took, in milliseconds.
    pub elapsed_ms: u64,
}

impl Record {
    /// The record as one output line: [`RECORD_MARKER`], then JSON, then a
    /// newline.
    pub fn to_line(&self) -> String {
        // Records hold only strings, numbers and options: this cannot fail.
        let json = serde_json::to_string(self).unwrap_or_default();
        format!("{RECORD_MARKER}{json}\n")
    }

    /// Finds a record in one line of a child's output: `None` for a line
    /// without [`RECORD_MARKER`], an error for a marked line that does not
    /// parse.
    pub fn parse_line(line: &str) -> Option<Result<Record, serde_json::Error>> {
        let at = line.find(RECORD_MARKER)?;
        let json = line[at + RECORD_MARKER.len()..].trim_end();
        Some(serde_json::from_str(json))
    }

    /// Writes the record to this process's stdout in one write (not
    /// through `print!`, so libtest never captures it).
    pub fn emit(&self) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(self.to_line().as_bytes());
        let _ = out.flush();
    }
}

/// The child side: runs [`stress_streaming`](crate::history::stress_streaming)
/// over `lockers`, writes every hold as a [`Record`] as soon as it is
/// released, and a [`ChildSummary`] at the end.
///
/// Refuses (with [`StressError::Config`]) a backend that is not
/// [`distributed`](distlock::Capabilities::distributed): processes could
/// not share its locks.
pub async fn run_child<B, C>(
    lockers: &[Locker<B>],
    counter: C,
    config: &StressConfig,
) -> Result<StressRun, StressError>
where
    B: LockBackend,
    C: SharedCounter,
{
    if let Some(l) = lockers.first() {
        if !l.backend().capabilities().distributed {
            return Err(StressError::Config(
                "the backend is not distributed (Capabilities::distributed): separate \
                 processes would not share its locks"
                    .into(),
            ));
        }
    }
    let run = crate::history::stress_streaming(lockers, counter, config, |hold| {
        Record::Hold(hold.clone()).emit();
    })
    .await?;
    Record::Summary(ChildSummary {
        process: config.process,
        holds: run.holds.len(),
        released_not_held: run.released_not_held,
        planned_expiries: run.planned_expiries,
        elapsed_ms: u64::try_from(run.elapsed.as_millis()).unwrap_or(u64::MAX),
    })
    .emit();
    Ok(run)
}

/// Starts children and gathers their records; see the [module](self).
#[derive(Clone, Debug)]
pub struct ProcessStress {
    child_test: String,
    processes: u32,
    timeout: Duration,
    env: Vec<(String, OsString)>,
}

/// What the children of a [`ProcessStress`] run recorded.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ProcessRun {
    /// Every hold of every child.
    pub holds: Vec<Hold>,
    /// Each child's summary, by process number.
    pub children: Vec<ChildSummary>,
    /// Wall time from starting the first child to the end of the last.
    pub elapsed: Duration,
}

impl ProcessRun {
    /// Releases that reported `NotHeld`, over all children.
    pub fn released_not_held(&self) -> usize {
        self.children.iter().map(|c| c.released_not_held).sum()
    }

    /// Leases run out on purpose, over all children.
    pub fn planned_expiries(&self) -> usize {
        self.children.iter().map(|c| c.planned_expiries).sum()
    }
}

/// Why a [`ProcessStress`] run failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ProcessError {
    /// A child could not be started.
    Spawn(std::io::Error),
    /// A child failed, timed out, or sent bad or missing records. Every
    /// child was killed; the text has the failing child's stderr tail.
    Child(String),
}

impl fmt::Display for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcessError::Spawn(e) => write!(f, "starting a child process: {e}"),
            ProcessError::Child(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ProcessError {}

/// A running child and the threads that drain its output.
struct Running {
    process: u32,
    child: Child,
    stdout: Option<JoinHandle<Vec<String>>>,
    stderr: Option<JoinHandle<String>>,
}

impl Running {
    /// The marked lines it wrote and its stderr, once it ended.
    fn output(&mut self) -> (Vec<String>, String) {
        let lines = self
            .stdout
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        (lines, stderr)
    }
}

impl ProcessStress {
    /// `processes` children, each running the test named `child_test` of
    /// this test binary (exactly that test, one thread, output not
    /// captured). Default timeout 120 s.
    pub fn new(child_test: impl Into<String>, processes: u32) -> Self {
        Self {
            child_test: child_test.into(),
            processes,
            timeout: Duration::from_secs(120),
            env: Vec::new(),
        }
    }

    /// Sets an environment variable for every child (a URL, a run id, a
    /// counter directory).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Kills every child and fails if they are not all done after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Starts the children, waits for them (blocking the thread: call it
    /// outside an async runtime, or in `spawn_blocking`), and returns their
    /// records. Fails, after killing every child it started, if one cannot
    /// start, exits unsuccessfully, outlives the timeout, or sent a record
    /// that does not parse or fewer holds than its summary counts.
    pub fn run(&self) -> Result<ProcessRun, ProcessError> {
        let exe = std::env::current_exe().map_err(ProcessError::Spawn)?;
        let started = Instant::now();
        let mut children = Vec::new();
        for process in 0..self.processes {
            match self.spawn(&exe, process) {
                Ok(c) => children.push(c),
                Err(e) => {
                    kill_all(&mut children);
                    return Err(ProcessError::Spawn(e));
                }
            }
        }
        if let Err(why) = wait_all(&mut children, started + self.timeout) {
            kill_all(&mut children);
            return Err(ProcessError::Child(format!(
                "{why}{}",
                stderr_tails(&mut children)
            )));
        }
        let elapsed = started.elapsed();
        let mut run = ProcessRun {
            elapsed,
            ..ProcessRun::default()
        };
        for c in &mut children {
            let (lines, stderr) = c.output();
            let fail = |why: String| {
                ProcessError::Child(format!(
                    "child {}: {why}\n--- stderr (tail) ---\n{}",
                    c.process,
                    tail(&stderr, 30)
                ))
            };
            let mut own = 0usize;
            let mut summary = None;
            for line in &lines {
                match Record::parse_line(line) {
                    None => {}
                    Some(Err(e)) => return Err(fail(format!("bad record {line:?}: {e}"))),
                    Some(Ok(Record::Hold(hold))) => {
                        if hold.holder.process != c.process {
                            return Err(fail(format!("a hold of another process: {line}")));
                        }
                        run.holds.push(hold);
                        own += 1;
                    }
                    Some(Ok(Record::Summary(s))) => summary = Some(s),
                }
            }
            let summary = summary.ok_or_else(|| fail("no summary record".into()))?;
            if summary.holds != own {
                return Err(fail(format!(
                    "recorded {} holds but sent {own}",
                    summary.holds
                )));
            }
            run.children.push(summary);
        }
        Ok(run)
    }

    fn spawn(&self, exe: &Path, process: u32) -> std::io::Result<Running> {
        let mut command = Command::new(exe);
        command
            .args([
                self.child_test.as_str(),
                "--exact",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_ENV, process.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in &self.env {
            command.env(key, value);
        }
        let mut child = command.spawn()?;
        let out = child.stdout.take();
        let err = child.stderr.take();
        let stdout = out.map(|out| {
            std::thread::spawn(move || {
                BufReader::new(out)
                    .lines()
                    .map_while(Result::ok)
                    .filter(|line| line.contains(RECORD_MARKER))
                    .collect()
            })
        });
        let stderr = err.map(|err| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = BufReader::new(err).read_to_string(&mut text);
                text
            })
        });
        Ok(Running {
            process,
            child,
            stdout,
            stderr,
        })
    }
}

/// Waits until every child exited successfully, or one failed, or the
/// deadline passed.
fn wait_all(children: &mut [Running], deadline: Instant) -> Result<(), String> {
    let mut done = vec![false; children.len()];
    while done.iter().any(|d| !d) {
        for (i, c) in children.iter_mut().enumerate() {
            if done[i] {
                continue;
            }
            match c.child.try_wait() {
                Ok(Some(status)) if status.success() => done[i] = true,
                Ok(Some(status)) => {
                    return Err(format!("child {} exited with {status}", c.process))
                }
                Ok(None) => {}
                Err(e) => return Err(format!("waiting for child {}: {e}", c.process)),
            }
        }
        if done.iter().any(|d| !d) {
            if Instant::now() >= deadline {
                return Err("children still running at the timeout".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// Kills the children (by their handles: only processes this run started).
fn kill_all(children: &mut [Running]) {
    for c in children.iter_mut() {
        let _ = c.child.kill();
        let _ = c.child.wait();
    }
}

fn stderr_tails(children: &mut [Running]) -> String {
    let mut text = String::new();
    for c in children.iter_mut() {
        let (lines, stderr) = c.output();
        text.push_str(&format!(
            "\n--- child {} (sent {} records) stderr (tail) ---\n{}",
            c.process,
            lines.len(),
            tail(&stderr, 30)
        ));
    }
    text
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A [`SharedCounter`] in files, one per name, in one directory: shared by
/// every process on the host whatever the backend. Reads and writes are
/// plain (a write replaces the file through a rename, so a reader never
/// sees half a number): only the lock keeps increments from being lost.
#[derive(Clone, Debug)]
pub struct FileCounter {
    dir: PathBuf,
}

impl FileCounter {
    /// Counters in `dir` (created when first written).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Counters in a new, empty directory under the system's temporary
    /// directory (the caller removes it when done, if it cares).
    pub fn temporary() -> std::io::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "distlock-counter-{}-{nanos}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The counter of `name` now (zero if never written).
    pub fn get(&self, name: &str) -> std::io::Result<u64> {
        match std::fs::read_to_string(self.file(name)) {
            Ok(text) => text
                .trim()
                .parse()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{hex}.count"))
    }
}

#[async_trait]
impl SharedCounter for FileCounter {
    async fn read(&self, name: &str) -> Result<u64, BoxError> {
        Ok(self.get(name)?)
    }

    async fn write(&self, name: &str, value: u64) -> Result<(), BoxError> {
        std::fs::create_dir_all(&self.dir)?;
        let file = self.file(name);
        let tmp = file.with_extension(format!(
            "tmp-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::write(&tmp, value.to_string())?;
        std::fs::rename(&tmp, &file)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{HolderId, Stamp};

    fn hold() -> Hold {
        Hold {
            name: "job".into(),
            holder: HolderId {
                process: 2,
                task: 7,
            },
            fence: 42,
            acquire_sent: Stamp::from_nanos(1),
            acquired: Stamp::from_nanos(2),
            valid_until: Stamp::from_nanos(3),
            release_called: Some(Stamp::from_nanos(3)),
        }
    }

    #[test]
    fn records_survive_the_libtest_prefix_and_other_output() {
        let record = Record::Hold(hold());
        let line = record.to_line();
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        // libtest prints the test name without a newline before the first
        // record; a plain prefix strip would lose that hold.
        let prefixed = format!("test stress_child ... {}", line.trim_end());
        assert_eq!(Record::parse_line(&prefixed).unwrap().unwrap(), record);
        assert!(Record::parse_line("test stress_child ... ok").is_none());
        assert!(Record::parse_line("running 1 test").is_none());
        let broken = format!("{RECORD_MARKER}{{\"record\":\"hold\"");
        assert!(Record::parse_line(&broken).unwrap().is_err());
        let summary = Record::Summary(ChildSummary {
            process: 1,
            holds: 3,
            released_not_held: 1,
            planned_expiries: 1,
            elapsed_ms: 10,
        });
        assert_eq!(
            Record::parse_line(&summary.to_line()).unwrap().unwrap(),
            summary
        );
    }

    #[tokio::test]
    async fn file_counter_round_trips_any_name() {
        let counter = FileCounter::temporary().unwrap();
        for name in ["a", "ключ/../x", "{}%"] {
            assert_eq!(counter.read(name).await.unwrap(), 0);
            counter.write(name, 41).await.unwrap();
            counter.write(name, 42).await.unwrap();
            assert_eq!(counter.read(name).await.unwrap(), 42);
        }
        std::fs::remove_dir_all(counter.path()).unwrap();
    }

    #[tokio::test]
    async fn a_backend_that_is_not_distributed_is_refused() {
        let lockers = [Locker::new(distlock_memory::MemoryBackend::new())];
        let config = StressConfig::new(0, ["a"]);
        let refused = run_child(&lockers, crate::history::MemoryCounter::new(), &config).await;
        assert!(
            matches!(refused, Err(StressError::Config(_))),
            "{refused:?}"
        );
    }
}
