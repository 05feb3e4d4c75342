//! Recorded lock histories and a checker for them.
//!
//! A stress test records one [`Hold`] per acquisition: who held which name,
//! with which fencing token, when the acquire request went out and came
//! back, until when the guard said the lease was certainly valid, and when
//! release was called. [`check`] then verifies, from the records alone:
//!
//! - **exclusion**: no two holds of one name overlap while both were within
//!   their validity deadline ([`Violation::Overlap`]);
//! - **fencing**: fencing tokens strictly increase in acquisition order per
//!   name ([`Violation::FenceOrder`]).
//!
//! Timestamps are [`Stamp`]s on the host's monotonic clock (Linux
//! `CLOCK_MONOTONIC`), so records from several processes on one machine
//! can be checked together; [`Hold`] is `serde`-serializable and
//! [`Hold::to_json_line`] / [`Hold::from_json_line`] carry records from
//! child processes to the parent as JSON lines.
//!
//! [`stress`] is a ready-made driver: many tasks take a few names in turn
//! and increment a non-atomic counter under the lock, recording every hold.
//! Third-party backends can run it (and [`check`]) in their own tests.
//!
//! # The protected interval
//!
//! Each hold counts as *protected* from the moment its acquire call
//! returned to the earlier of its validity deadline and the moment release
//! was called ([`Hold::protected`]). A correct lock can never be flagged:
//! the lease was granted before the call returned, it cannot end before
//! the guard's deadline (the deadline counts from the moment the request
//! was sent, minus a drift allowance), and after release is called the
//! holder no longer acts under the lock. Intervals that merely touch (one
//! ends exactly when the next starts) do not overlap.
//!
//! # Acquisition order
//!
//! The server's order of acquisitions is not observed directly, so the
//! checker compares fences only where the order is certain:
//!
//! - two holds whose acquire windows (`acquire_sent ..= acquired`) do not
//!   intersect were acquired in the order of those windows;
//! - if hold A's non-empty protected interval ends no later than hold B's
//!   begins, a lock that excludes correctly granted A first: had it granted
//!   B first, B's lease would have ended before A's was granted, so before
//!   A's acquire returned, and B's protected interval would be empty;
//! - no two acquisitions of one name share a fencing token.
//!
//! ```
//! use distlock_conformance::history::{check, Hold, HolderId, Stamp};
//!
//! let hold = |task, fence, from: u64, to: u64| Hold {
//!     name: "job".into(),
//!     holder: HolderId { process: 1, task },
//!     fence,
//!     acquire_sent: Stamp::from_nanos(from - 5),
//!     acquired: Stamp::from_nanos(from),
//!     valid_until: Stamp::from_nanos(from + 1_000),
//!     release_called: Some(Stamp::from_nanos(to)),
//! };
//! // Task 1 releases at 200; task 2 acquires at 200: touching, not overlapping.
//! let report = check(&[hold(1, 1, 100, 200), hold(2, 2, 200, 300)]);
//! assert!(report.is_clean(), "{report}");
//! // Task 3 acquires at 250 while task 2 still holds: caught.
//! let report = check(&[hold(1, 1, 100, 200), hold(2, 2, 200, 300), hold(3, 3, 250, 400)]);
//! assert_eq!(report.overlaps(), 1);
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::stress::{
    stress, stress_streaming, BoxError, MemoryCounter, SharedCounter, StressConfig, StressError,
    StressRun,
};

/// A reading of the host's monotonic clock, in nanoseconds.
///
/// On Unix this is `CLOCK_MONOTONIC` (read with `rustix`, no `unsafe`):
/// readings from different processes on one host are comparable. Elsewhere
/// it counts from the first reading in this process, so only one process's
/// records can be compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Stamp(u64);

impl Stamp {
    /// The clock now.
    pub fn now() -> Self {
        Self(monotonic_nanos())
    }

    /// A stamp at `nanos` nanoseconds on the clock (for hand-made histories).
    pub const fn from_nanos(nanos: u64) -> Self {
        Self(nanos)
    }

    /// The reading in nanoseconds.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Converts an instant of tokio's clock, such as
    /// [`LockGuard::valid_until`](distlock::LockGuard::valid_until), to a
    /// stamp, by its offset from a paired reading of both clocks.
    ///
    /// The stamp is read first, so the result is never later than the true
    /// value by more than clock granularity: a converted deadline errs
    /// towards earlier, which keeps [`check`] from flagging a correct lock.
    /// Only meaningful while tokio's clock runs in real time (not under
    /// `tokio::time::pause()`).
    pub fn from_tokio(instant: tokio::time::Instant) -> Self {
        let stamp = Self::now();
        let tokio_now = tokio::time::Instant::now();
        if instant >= tokio_now {
            stamp.saturating_add(instant - tokio_now)
        } else {
            stamp.saturating_sub(tokio_now - instant)
        }
    }

    /// This stamp plus `d` (saturating).
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(duration_nanos(d)))
    }

    /// This stamp minus `d` (saturating at zero).
    pub fn saturating_sub(self, d: Duration) -> Self {
        Self(self.0.saturating_sub(duration_nanos(d)))
    }

    /// How long after `earlier` this stamp is (zero if it is not later).
    pub fn saturating_duration_since(self, earlier: Stamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:09}s",
            self.0 / 1_000_000_000,
            self.0 % 1_000_000_000
        )
    }
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(unix)]
fn monotonic_nanos() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

#[cfg(not(unix))]
fn monotonic_nanos() -> u64 {
    use std::sync::OnceLock;
    static ANCHOR: OnceLock<std::time::Instant> = OnceLock::new();
    // Start at one second so that small offsets never saturate at zero.
    duration_nanos(ANCHOR.get_or_init(std::time::Instant::now).elapsed()) + 1_000_000_000
}

/// Who held a lock: a process (any number the test assigns, such as the
/// child's index or its pid) and a task within it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HolderId {
    /// The process.
    pub process: u32,
    /// The task within the process.
    pub task: u32,
}

impl fmt::Display for HolderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}/t{}", self.process, self.task)
    }
}

/// One acquisition of a lock, as its holder saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// The lock name.
    pub name: String,
    /// Who held it.
    pub holder: HolderId,
    /// The fencing token the guard reported.
    pub fence: u64,
    /// When the holder asked for the lock (at or before the acquire request
    /// that succeeded was sent).
    pub acquire_sent: Stamp,
    /// When the acquire call returned the guard.
    pub acquired: Stamp,
    /// The validity deadline the guard reported last before release (after
    /// any extend or renewal).
    pub valid_until: Stamp,
    /// When release was called, if it was (a holder that crashed or dropped
    /// its guard has none; its hold then ends at the deadline).
    pub release_called: Option<Stamp>,
}

impl Hold {
    /// A record for a guard just acquired: `acquire_sent` is when the holder
    /// called `lock`/`try_lock`, `acquired` when the call returned. Call
    /// [`Hold::before_release`] right before releasing it.
    pub fn from_guard(
        holder: HolderId,
        acquire_sent: Stamp,
        acquired: Stamp,
        guard: &distlock::LockGuard,
    ) -> Self {
        Self {
            name: guard.name().to_owned(),
            holder,
            fence: guard.fence(),
            acquire_sent,
            acquired,
            valid_until: Stamp::from_tokio(guard.valid_until()),
            release_called: None,
        }
    }

    /// Records the guard's final validity deadline and the release time
    /// (now). Call it immediately before `guard.release()`.
    pub fn before_release(&mut self, guard: &distlock::LockGuard) {
        self.valid_until = Stamp::from_tokio(guard.valid_until());
        self.release_called = Some(Stamp::now());
    }

    /// The interval during which this hold was certainly protected by the
    /// lock: from `acquired` to the earlier of `valid_until` and
    /// `release_called`. `None` if it is empty (the lease was already over
    /// when the guard arrived, or release came at the same instant).
    pub fn protected(&self) -> Option<(Stamp, Stamp)> {
        let end = match self.release_called {
            Some(released) => released.min(self.valid_until),
            None => self.valid_until,
        };
        (end > self.acquired).then_some((self.acquired, end))
    }

    /// This record as one line of JSON (no trailing newline).
    pub fn to_json_line(&self) -> String {
        // A Hold has only strings, numbers and options: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a record written by [`Hold::to_json_line`].
    pub fn from_json_line(line: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(line.trim())
    }
}

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} by {} fence {}: asked {}, acquired {}, valid until {}, release ",
            self.name, self.holder, self.fence, self.acquire_sent, self.acquired, self.valid_until
        )?;
        match self.release_called {
            Some(at) => write!(f, "{at}"),
            None => f.write_str("never called"),
        }
    }
}

/// A property of the lock that a history shows broken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Two holds of one name were protected at the same time.
    Overlap {
        /// The lock name.
        name: String,
        /// The hold whose protected interval started first.
        first: Hold,
        /// The hold that started while `first` was still protected.
        second: Hold,
        /// How long both were protected.
        overlap: Duration,
    },
    /// `later` was acquired after `earlier` (see the [module docs](self)
    /// for when the order is certain) but its fencing token is not greater.
    /// Each hold is reported as `later` at most once.
    FenceOrder {
        /// The lock name.
        name: String,
        /// The hold acquired first.
        earlier: Hold,
        /// The hold acquired after it, with a fence not greater than
        /// `earlier`'s.
        later: Hold,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Overlap {
                name,
                first,
                second,
                overlap,
            } => write!(
                f,
                "overlap on {name:?} for {overlap:?}: [{first}] and [{second}]"
            ),
            Violation::FenceOrder {
                name,
                earlier,
                later,
            } => write!(
                f,
                "fence order on {name:?}: fence {} acquired after fence {}: [{earlier}] then [{later}]",
                later.fence, earlier.fence
            ),
        }
    }
}

/// What [`check_with`] verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckOptions {
    /// Check fencing tokens (default true). Turn off for a backend without
    /// [`Capabilities::fencing`](distlock::Capabilities).
    pub fences: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self { fences: true }
    }
}

impl CheckOptions {
    /// Sets [`fences`](CheckOptions::fences).
    pub const fn with_fences(mut self, on: bool) -> Self {
        self.fences = on;
        self
    }
}

/// The result of [`check`]: how many holds each name had and every
/// violation found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Holds per lock name.
    pub holds_per_name: BTreeMap<String, usize>,
    /// Holds per lock name whose protected interval was empty (the lease was
    /// over before the guard arrived or release was called at once).
    pub empty_per_name: BTreeMap<String, usize>,
    /// Every violation found, by name, then in time order.
    pub violations: Vec<Violation>,
}

impl Report {
    /// True when no violation was found.
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }

    /// The number of holds checked.
    pub fn total_holds(&self) -> usize {
        self.holds_per_name.values().sum()
    }

    /// The number of [`Violation::Overlap`]s.
    pub fn overlaps(&self) -> usize {
        self.violations
            .iter()
            .filter(|v| matches!(v, Violation::Overlap { .. }))
            .count()
    }

    /// The number of [`Violation::FenceOrder`]s.
    pub fn fence_violations(&self) -> usize {
        self.violations
            .iter()
            .filter(|v| matches!(v, Violation::FenceOrder { .. }))
            .count()
    }
}

impl fmt::Display for Report {
    /// A summary line per name, then at most 20 violations.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} holds on {} names, {} violations ({} overlaps, {} fence order)",
            self.total_holds(),
            self.holds_per_name.len(),
            self.violations.len(),
            self.overlaps(),
            self.fence_violations()
        )?;
        for (name, count) in &self.holds_per_name {
            let empty = self.empty_per_name.get(name).copied().unwrap_or(0);
            writeln!(
                f,
                "  {name:?}: {count} holds ({empty} with an empty protected interval)"
            )?;
        }
        for v in self.violations.iter().take(20) {
            writeln!(f, "  {v}")?;
        }
        if self.violations.len() > 20 {
            writeln!(f, "  … and {} more", self.violations.len() - 20)?;
        }
        Ok(())
    }
}

/// Checks a history for overlapping holds and fence order; see the
/// [module docs](self).
pub fn check(holds: &[Hold]) -> Report {
    check_with(holds, CheckOptions::default())
}

/// [`check`] with options.
pub fn check_with(holds: &[Hold], options: CheckOptions) -> Report {
    let mut by_name: BTreeMap<&str, Vec<&Hold>> = BTreeMap::new();
    for hold in holds {
        by_name.entry(hold.name.as_str()).or_default().push(hold);
    }
    let mut report = Report::default();
    for (name, group) in by_name {
        report.holds_per_name.insert(name.to_owned(), group.len());
        let mut protected: Vec<(Stamp, Stamp, &Hold)> = group
            .iter()
            .filter_map(|h| h.protected().map(|(s, e)| (s, e, *h)))
            .collect();
        let empty = group.len() - protected.len();
        if empty > 0 {
            report.empty_per_name.insert(name.to_owned(), empty);
        }
        protected.sort_by_key(|&(start, end, h)| (start, end, h.holder, h.fence));
        check_overlaps(name, &protected, &mut report.violations);
        if options.fences {
            check_fences(name, &group, &protected, &mut report.violations);
        }
    }
    report
}

/// Sweeps the protected intervals in start order, remembering the one that
/// reaches furthest: every interval that starts before that one ends
/// overlaps it.
fn check_overlaps(name: &str, sorted: &[(Stamp, Stamp, &Hold)], out: &mut Vec<Violation>) {
    let mut reach: Option<(Stamp, &Hold)> = None;
    for &(start, end, hold) in sorted {
        match reach {
            Some((reach_end, reaching)) if start < reach_end => {
                out.push(Violation::Overlap {
                    name: name.to_owned(),
                    first: reaching.clone(),
                    second: hold.clone(),
                    overlap: end.min(reach_end).saturating_duration_since(start),
                });
                if end > reach_end {
                    reach = Some((end, hold));
                }
            }
            _ => reach = Some((end, hold)),
        }
    }
}

fn check_fences(
    name: &str,
    group: &[&Hold],
    protected: &[(Stamp, Stamp, &Hold)],
    out: &mut Vec<Violation>,
) {
    // Holds already reported as `later` (by address): one violation each.
    let mut seen: BTreeSet<usize> = BTreeSet::new();
    let mut report = |earlier: &Hold, later: &Hold, out: &mut Vec<Violation>| {
        if seen.insert(std::ptr::from_ref(later) as usize) {
            out.push(Violation::FenceOrder {
                name: name.to_owned(),
                earlier: earlier.clone(),
                later: later.clone(),
            });
        }
    };

    // 1. Disjoint acquire windows: A returned before B asked, so A came first.
    let mut by_returned: Vec<&Hold> = group.to_vec();
    by_returned.sort_by_key(|h| (h.acquired, h.fence));
    let mut by_asked: Vec<&Hold> = group.to_vec();
    by_asked.sort_by_key(|h| (h.acquire_sent, h.fence));
    let mut next = 0;
    let mut max_before: Option<&Hold> = None;
    for later in by_asked {
        while next < by_returned.len() && by_returned[next].acquired < later.acquire_sent {
            let candidate = by_returned[next];
            if max_before.is_none_or(|m| candidate.fence > m.fence) {
                max_before = Some(candidate);
            }
            next += 1;
        }
        if let Some(earlier) = max_before {
            if earlier.fence >= later.fence {
                report(earlier, later, out);
            }
        }
    }

    // 2. Non-overlapping protected intervals, in time order.
    let mut prev: Option<(Stamp, &Hold)> = None;
    for &(start, end, hold) in protected {
        if let Some((prev_end, earlier)) = prev {
            if prev_end <= start && earlier.fence >= hold.fence {
                report(earlier, hold, out);
            }
        }
        prev = Some((end, hold));
    }

    // 3. No fence twice.
    let mut first_with: HashMap<u64, &Hold> = HashMap::new();
    for hold in by_returned {
        match first_with.get(&hold.fence) {
            Some(earlier) => report(earlier, hold, out),
            None => {
                first_with.insert(hold.fence, hold);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// A hold of `name` acquired at `from` ms (asked 1 ms earlier), valid
    /// until `valid` ms, released at `to` ms.
    fn hold(name: &str, task: u32, fence: u64, from: u64, valid: u64, to: u64) -> Hold {
        Hold {
            name: name.into(),
            holder: HolderId { process: 0, task },
            fence,
            acquire_sent: Stamp::from_nanos((from - 1) * MS),
            acquired: Stamp::from_nanos(from * MS),
            valid_until: Stamp::from_nanos(valid * MS),
            release_called: Some(Stamp::from_nanos(to * MS)),
        }
    }

    #[test]
    fn sequential_holds_are_clean_and_counted() {
        let holds = [
            hold("a", 1, 1, 10, 1000, 20),
            hold("a", 2, 2, 21, 1000, 30),
            hold("b", 1, 1, 15, 1000, 25),
            hold("a", 3, 5, 31, 1000, 40),
        ];
        let report = check(&holds);
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.holds_per_name["a"], 3);
        assert_eq!(report.holds_per_name["b"], 1);
        assert_eq!(report.total_holds(), 4);
    }

    #[test]
    fn overlap_is_caught_with_both_holds_and_its_length() {
        let a = hold("a", 1, 1, 10, 1000, 50);
        let b = hold("a", 2, 2, 40, 1000, 60);
        let report = check(&[b.clone(), a.clone()]);
        assert_eq!(report.overlaps(), 1, "{report}");
        assert_eq!(report.fence_violations(), 0, "{report}");
        assert_eq!(
            report.violations[0],
            Violation::Overlap {
                name: "a".into(),
                first: a,
                second: b,
                overlap: Duration::from_millis(10),
            }
        );
    }

    #[test]
    fn a_hold_inside_another_is_caught() {
        let report = check(&[
            hold("a", 1, 1, 10, 1000, 100),
            hold("a", 2, 2, 20, 1000, 30),
            hold("a", 3, 3, 40, 1000, 50),
        ]);
        assert_eq!(report.overlaps(), 2, "{report}");
    }

    #[test]
    fn touching_but_not_overlapping_is_accepted() {
        let report = check(&[hold("a", 1, 1, 10, 1000, 20), hold("a", 2, 2, 20, 1000, 30)]);
        assert!(report.is_clean(), "{report}");
    }

    #[test]
    fn expired_then_taken_over_is_accepted() {
        // Task 1's lease was valid until 30 but it called release at 80;
        // task 2 took over at 40, after the deadline.
        let report = check(&[hold("a", 1, 1, 10, 30, 80), hold("a", 2, 2, 40, 1000, 60)]);
        assert!(report.is_clean(), "{report}");
    }

    #[test]
    fn takeover_before_the_deadline_is_caught() {
        let report = check(&[hold("a", 1, 1, 10, 50, 80), hold("a", 2, 2, 40, 1000, 60)]);
        assert_eq!(report.overlaps(), 1, "{report}");
    }

    #[test]
    fn guard_that_arrived_after_its_deadline_protects_nothing() {
        let late = hold("a", 1, 1, 50, 40, 90);
        assert_eq!(late.protected(), None);
        let report = check(&[late, hold("a", 2, 2, 60, 1000, 70)]);
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.empty_per_name["a"], 1);
    }

    #[test]
    fn hold_never_released_ends_at_its_deadline() {
        let mut crashed = hold("a", 1, 1, 10, 50, 0);
        crashed.release_called = None;
        assert_eq!(
            crashed.protected(),
            Some((Stamp::from_nanos(10 * MS), Stamp::from_nanos(50 * MS)))
        );
        let ok = check(&[crashed.clone(), hold("a", 2, 2, 50, 1000, 60)]);
        assert!(ok.is_clean(), "{ok}");
        let bad = check(&[crashed, hold("a", 2, 2, 49, 1000, 60)]);
        assert_eq!(bad.overlaps(), 1, "{bad}");
    }

    #[test]
    fn different_names_never_conflict() {
        let report = check(&[hold("a", 1, 1, 10, 1000, 50), hold("b", 2, 1, 20, 1000, 60)]);
        assert!(report.is_clean(), "{report}");
    }

    #[test]
    fn fence_out_of_order_is_caught() {
        let report = check(&[
            hold("a", 1, 5, 10, 1000, 20),
            hold("a", 2, 4, 21, 1000, 30),
            hold("a", 3, 6, 31, 1000, 40),
        ]);
        assert_eq!(report.overlaps(), 0, "{report}");
        assert_eq!(report.fence_violations(), 1, "{report}");
        match &report.violations[0] {
            Violation::FenceOrder { earlier, later, .. } => {
                assert_eq!((earlier.fence, later.fence), (5, 4));
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn repeated_fence_is_caught() {
        let report = check(&[hold("a", 1, 3, 10, 1000, 20), hold("a", 2, 3, 21, 1000, 30)]);
        assert_eq!(report.fence_violations(), 1, "{report}");
    }

    #[test]
    fn repeated_fence_with_empty_intervals_and_overlapping_windows_is_caught() {
        // Neither interval nor the order is known, but a fence repeats.
        let mut a = hold("a", 1, 3, 10, 5, 20);
        let mut b = hold("a", 2, 3, 12, 5, 22);
        a.acquire_sent = Stamp::from_nanos(0);
        b.acquire_sent = Stamp::from_nanos(0);
        let report = check(&[a, b]);
        assert_eq!(report.fence_violations(), 1, "{report}");
    }

    #[test]
    fn fence_order_known_from_acquire_windows_alone() {
        // Both intervals empty (leases over on arrival): the order comes from
        // the disjoint acquire windows.
        let first = hold("a", 1, 9, 10, 5, 20);
        let second = hold("a", 2, 8, 30, 5, 40);
        let report = check(&[first, second]);
        assert_eq!(report.fence_violations(), 1, "{report}");
    }

    #[test]
    fn fence_order_with_uncertain_order_is_not_judged() {
        // Both asked at 0 and both leases were over on arrival: either may
        // have been granted first, so lower-after-higher is not a violation.
        let mut a = hold("a", 1, 9, 10, 5, 20);
        let mut b = hold("a", 2, 8, 30, 5, 40);
        a.acquire_sent = Stamp::from_nanos(0);
        b.acquire_sent = Stamp::from_nanos(0);
        let report = check(&[a, b]);
        assert!(report.is_clean(), "{report}");
    }

    #[test]
    fn fences_can_be_left_unchecked() {
        let holds = [hold("a", 1, 0, 10, 1000, 20), hold("a", 2, 0, 21, 1000, 30)];
        assert_eq!(check(&holds).fence_violations(), 1);
        let report = check_with(&holds, CheckOptions::default().with_fences(false));
        assert!(report.is_clean(), "{report}");
    }

    #[test]
    fn json_lines_round_trip() {
        let mut h = hold("odd \"name\"\n", 7, 42, 10, 30, 20);
        let line = h.to_json_line();
        assert!(!line.contains('\n'));
        assert_eq!(Hold::from_json_line(&line).unwrap(), h);
        h.release_called = None;
        assert_eq!(Hold::from_json_line(&h.to_json_line()).unwrap(), h);
        assert!(Hold::from_json_line("{\"name\":1}").is_err());
    }

    #[test]
    fn report_display_names_the_violation() {
        let report = check(&[hold("a", 1, 1, 10, 1000, 50), hold("a", 2, 2, 40, 1000, 60)]);
        let text = report.to_string();
        assert!(text.contains("1 overlaps"), "{text}");
        assert!(text.contains("p0/t1") && text.contains("p0/t2"), "{text}");
    }

    #[tokio::test]
    async fn tokio_instants_convert_by_offset() {
        let before = Stamp::now();
        let converted = Stamp::from_tokio(tokio::time::Instant::now());
        let after = Stamp::now();
        // The two clocks are read one after the other: allow a little skew.
        let skew = Duration::from_millis(1);
        assert!(before <= converted.saturating_add(skew) && converted <= after);
        let later = Stamp::from_tokio(tokio::time::Instant::now() + Duration::from_secs(5));
        let distance = later.saturating_duration_since(after);
        assert!(
            distance > Duration::from_millis(4_900) && distance <= Duration::from_secs(5) + skew,
            "{distance:?}"
        );
        let earlier = Stamp::from_tokio(tokio::time::Instant::now() - Duration::from_millis(50));
        assert!(earlier < before);
    }

    #[test]
    fn stamps_are_monotonic_and_display_in_seconds() {
        let a = Stamp::now();
        let b = Stamp::now();
        assert!(a <= b);
        assert_eq!(Stamp::from_nanos(1_500_000_000).to_string(), "1.500000000s");
    }
}
