//! Differential testing of the Redis backend against the in-memory backend
//! (the reference) through the `LockBackend` trait: random call sequences
//! (seeded, many seeds) over a few names, tokens and waiters, applied to
//! both, answers compared (fencing tokens relative to each backend's first
//! per name; remaining leases within a tolerance). A divergence is replayed
//! to rule out timing, shrunk to a minimal sequence and printed with its
//! seed. Written by a helper in stop 25; its first runs found five
//! divergences, fixed then (the minimal cases at the end of this file).
//!
//! Two modes: long TTLs (nothing expires), and short TTLs and waiter leases
//! with sleeps past them (expiry, lapsed places and handovers).
//!
//! Longer runs: `DIFF_SEEDS` (sequences per mode; 300 and 64 by default),
//! `DIFF_STEPS` (calls per sequence; 60 and 40), `DIFF_SEED0` (first seed),
//! `DIFF_PARALLEL` (sequences at once), `DIFF_STRICT=1` (keep using a token
//! after a release that found it not holding: the Redis tombstone the
//! trait allows then diverges everywhere), `DIFF_LAPSED=0` (no renewed
//! lapsed places). For example:
//! `DIFF_SEEDS=5000 cargo test -p distlock-redis --test differential --
//! --nocapture` (with `DOCKER_HOST=unix:///nonexistent-distlock` the test kit
//! starts a local `redis-server`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use distlock_memory::MemoryBackend;
use distlock_redis::testkit::RedisServer;
use distlock_redis::{
    Acquire, BackendError, BackendErrorKind, Extend, LockBackend, LockInfo, LockKey, LockToken,
    RaiseFence, RedisBackend, Release, Waiter, WaiterId,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const NAMES: usize = 3;
const TOKENS: usize = 4;
const WAITERS: usize = 3;

fn redis() -> RedisBackend {
    RedisBackend::from_url(RedisServer::shared().url()).unwrap()
}

fn unique_key(tag: &str) -> LockKey {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    LockKey::new(
        "diff",
        format!(
            "{tag}:{}:{}:{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ),
    )
    .unwrap()
}

#[derive(Clone, Debug, PartialEq)]
enum Op {
    Acquire {
        n: usize,
        t: usize,
        ttl: u64,
        owner: Option<&'static str>,
    },
    Queued {
        n: usize,
        t: usize,
        ttl: u64,
        owner: Option<&'static str>,
        w: usize,
        lease: u64,
    },
    Extend {
        n: usize,
        t: usize,
        ttl: u64,
    },
    Release {
        n: usize,
        t: usize,
    },
    GiveBack {
        n: usize,
        t: usize,
    },
    Inspect {
        n: usize,
    },
    Raise {
        n: usize,
        t: usize,
        delta: i64,
    },
    Sleep {
        ms: u64,
    },
}

/// A backend's answer, with fences relative to the first fence this backend
/// answered for the name.
#[derive(Clone, Debug)]
enum Out {
    Acquired(i64),
    Held(Option<Duration>),
    Extended,
    ExtendNotHeld,
    Released,
    ReleaseNotHeld,
    Info {
        held: bool,
        owner: Option<String>,
        remaining: Option<Duration>,
        fence: Option<i64>,
    },
    Raised(i64),
    RaiseNotHeld,
    RaiseUnsupported,
    /// The kind is compared; the message is shown in a divergence report.
    Err(BackendErrorKind, #[allow(dead_code)] String),
    Slept,
}

fn close(a: Option<Duration>, b: Option<Duration>, tol: Duration) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.abs_diff(b) <= tol,
        _ => false,
    }
}

fn same(m: &Out, r: &Out, tol: Duration) -> bool {
    use Out::*;
    match (m, r) {
        (Acquired(a), Acquired(b)) | (Raised(a), Raised(b)) => a == b,
        (Held(a), Held(b)) => close(*a, *b, tol),
        (Extended, Extended)
        | (ExtendNotHeld, ExtendNotHeld)
        | (Released, Released)
        | (ReleaseNotHeld, ReleaseNotHeld)
        | (RaiseNotHeld, RaiseNotHeld)
        | (RaiseUnsupported, RaiseUnsupported)
        | (Slept, Slept) => true,
        (
            Info {
                held: h1,
                owner: o1,
                remaining: r1,
                fence: f1,
            },
            Info {
                held: h2,
                owner: o2,
                remaining: r2,
                fence: f2,
            },
        ) => {
            // A free key's last fence is "if the backend still knows it"
            // (memory forgets it, Redis keeps the counter): compared only
            // while held.
            h1 == h2 && o1 == o2 && close(*r1, *r2, tol) && (!*h1 || f1 == f2)
        }
        (Err(a, _), Err(b, _)) => a == b,
        _ => false,
    }
}

/// One backend's view of the names (fence bases).
#[derive(Default)]
struct Side {
    first: [Option<u64>; NAMES],
    max_rel: [i64; NAMES],
}

impl Side {
    fn rel(&mut self, n: usize, fence: u64) -> i64 {
        let first = *self.first[n].get_or_insert(fence);
        let rel = fence as i64 - first as i64;
        self.max_rel[n] = self.max_rel[n].max(rel);
        rel
    }
    fn at_least(&self, n: usize, delta: i64) -> u64 {
        match self.first[n] {
            Some(first) => (first as i64 + self.max_rel[n] + delta).max(0) as u64,
            None => 0,
        }
    }
}

struct World {
    mem: Vec<MemoryBackend>, // one store per name: per-name fence counters
    red: RedisBackend,
    keys: Vec<LockKey>,
    tokens: Vec<Vec<LockToken>>,
    waiters: Vec<Vec<WaiterId>>,
    ms: Side,
    rs: Side,
    strict: bool,
    /// Generation hints (see `gen`).
    in_line: Vec<Vec<bool>>,
    dirty: Vec<Vec<bool>>,
    /// In line with a short lease / and a sleep since: its place lapsed.
    short: Vec<Vec<bool>>,
    lapsed: Vec<Vec<bool>>,
    /// Avoid places that lapse and are renewed (`DIFF_LAPSED=0`; they
    /// diverged before stop 25).
    avoid_lapsed: bool,
}

impl World {
    fn new(red: &RedisBackend, tag: &str, strict: bool) -> Self {
        World {
            mem: (0..NAMES).map(|_| MemoryBackend::new()).collect(),
            red: red.clone(),
            keys: (0..NAMES).map(|_| unique_key(tag)).collect(),
            tokens: (0..NAMES)
                .map(|_| (0..TOKENS).map(|_| LockToken::generate()).collect())
                .collect(),
            waiters: (0..NAMES)
                .map(|_| (0..WAITERS).map(|_| WaiterId::generate()).collect())
                .collect(),
            ms: Side::default(),
            rs: Side::default(),
            strict,
            in_line: vec![vec![false; TOKENS]; NAMES],
            dirty: vec![vec![false; TOKENS]; NAMES],
            short: vec![vec![false; TOKENS]; NAMES],
            lapsed: vec![vec![false; TOKENS]; NAMES],
            avoid_lapsed: std::env::var("DIFF_LAPSED").is_ok_and(|v| v == "0"),
        }
    }

    fn retire(&mut self, n: usize, t: usize) {
        self.tokens[n][t] = LockToken::generate();
        self.in_line[n][t] = false;
        self.dirty[n][t] = false;
        self.lapsed[n][t] = false;
    }

    async fn apply(&mut self, op: &Op) -> (Out, Out) {
        let (m, r) = match *op {
            Op::Sleep { ms } => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                return (Out::Slept, Out::Slept);
            }
            Op::Acquire { n, t, ttl, owner } => {
                let (k, tok, ttl) = (
                    &self.keys[n],
                    &self.tokens[n][t],
                    Duration::from_millis(ttl),
                );
                let m = self.mem[n].try_acquire(k, tok, ttl, owner).await;
                let r = self.red.try_acquire(k, tok, ttl, owner).await;
                (acq(&mut self.ms, n, m), acq(&mut self.rs, n, r))
            }
            Op::Queued {
                n,
                t,
                ttl,
                owner,
                w,
                lease,
            } => {
                let (k, tok, ttl) = (
                    &self.keys[n],
                    &self.tokens[n][t],
                    Duration::from_millis(ttl),
                );
                let waiter = Waiter::new(self.waiters[n][w], Duration::from_millis(lease));
                let m = self.mem[n]
                    .try_acquire_queued(k, tok, ttl, owner, &waiter)
                    .await;
                let r = self
                    .red
                    .try_acquire_queued(k, tok, ttl, owner, &waiter)
                    .await;
                (acq(&mut self.ms, n, m), acq(&mut self.rs, n, r))
            }
            Op::Extend { n, t, ttl } => {
                let (k, tok, ttl) = (
                    &self.keys[n],
                    &self.tokens[n][t],
                    Duration::from_millis(ttl),
                );
                let m = self.mem[n].extend(k, tok, ttl).await;
                let r = self.red.extend(k, tok, ttl).await;
                (ext(m), ext(r))
            }
            Op::Release { n, t } | Op::GiveBack { n, t } => {
                let (k, tok) = (&self.keys[n], &self.tokens[n][t]);
                let give = matches!(op, Op::GiveBack { .. });
                let (m, r) = if give {
                    (
                        self.mem[n].give_back(k, tok).await,
                        self.red.give_back(k, tok).await,
                    )
                } else {
                    (
                        self.mem[n].release(k, tok).await,
                        self.red.release(k, tok).await,
                    )
                };
                let (m, r) = (rel(m), rel(r));
                // A given-back token is dead for good on Redis (documented);
                // a token whose release found nothing is dead there for 60 s
                // (the tombstone), unless in strict mode.
                if give || (!self.strict && matches!(r, Out::ReleaseNotHeld)) {
                    self.retire(n, t);
                }
                (m, r)
            }
            Op::Inspect { n } => {
                let k = &self.keys[n];
                let m = self.mem[n].inspect(k).await;
                let r = self.red.inspect(k).await;
                (info(&mut self.ms, n, m), info(&mut self.rs, n, r))
            }
            Op::Raise { n, t, delta } => {
                let (k, tok) = (&self.keys[n], &self.tokens[n][t]);
                let (am, ar) = (self.ms.at_least(n, delta), self.rs.at_least(n, delta));
                let m = self.mem[n].raise_fence(k, tok, am).await;
                let r = self.red.raise_fence(k, tok, ar).await;
                (raise(&mut self.ms, n, m), raise(&mut self.rs, n, r))
            }
        };
        (m, r)
    }

    /// Draws the next call. Avoids the known divergence (a plain acquire by
    /// a token that holds the key and still has a place in its line).
    async fn gen(&mut self, rng: &mut StdRng, expiry: bool) -> Op {
        let n = rng.random_range(0..if expiry { 2 } else { NAMES });
        let t = rng.random_range(0..TOKENS);
        let ttl = if expiry {
            *pick(rng, &[150, 30_000])
        } else {
            *pick(rng, &[5_000, 30_000, 60_000])
        };
        let lease = if expiry {
            *pick(rng, &[150, 20_000])
        } else {
            *pick(rng, &[10_000, 20_000])
        };
        let owner = *pick(rng, &[None, Some("a"), Some("b"), Some("")]);
        if expiry && rng.random_bool(0.1) {
            return Op::Sleep { ms: 400 };
        }
        let p = rng.random_range(0..100);
        let p = if expiry && p >= 82 && rng.random_bool(0.5) {
            30
        } else {
            p
        };
        let mut op = match p {
            0..=24 => Op::Acquire { n, t, ttl, owner },
            25..=49 => Op::Queued {
                n,
                t,
                ttl,
                owner,
                w: rng.random_range(0..WAITERS),
                lease,
            },
            50..=59 => Op::Extend { n, t, ttl },
            60..=77 => Op::Release { n, t },
            78..=81 => Op::GiveBack { n, t },
            82..=92 => Op::Inspect { n },
            _ => Op::Raise {
                n,
                t,
                delta: *pick(rng, &[-1, 0, 1, 3]),
            },
        };
        if let Op::Queued { n, t, .. } = op {
            if self.avoid_lapsed && self.lapsed[n][t] {
                // Calling again would revive the lapsed place (memory) or
                // join at the tail (Redis): the divergence found already.
                return Op::Release { n, t };
            }
        }
        if let Op::Acquire { n, t, .. } = op {
            if self.in_line[n][t] {
                let holds = matches!(
                    self.mem[n]
                        .raise_fence(&self.keys[n], &self.tokens[n][t], 0)
                        .await,
                    Ok(RaiseFence::Raised { .. })
                );
                if holds && !self.dirty[n][t] {
                    // Handed over: the handover took its place.
                    self.in_line[n][t] = false;
                } else if holds {
                    op = Op::Queued {
                        n,
                        t,
                        ttl,
                        owner,
                        w: rng.random_range(0..WAITERS),
                        lease,
                    };
                }
            }
        }
        op
    }

    fn note(&mut self, op: &Op, m: &Out) {
        match *op {
            Op::Sleep { .. } => {
                for n in 0..NAMES {
                    for t in 0..TOKENS {
                        if self.in_line[n][t] && self.short[n][t] {
                            self.lapsed[n][t] = true;
                        }
                    }
                }
            }
            Op::Queued { n, t, lease, .. } => match m {
                Out::Held(_) => {
                    self.in_line[n][t] = true;
                    self.short[n][t] = lease < 1000;
                    self.lapsed[n][t] = false;
                }
                Out::Acquired(_) => {
                    self.in_line[n][t] = false;
                    self.dirty[n][t] = false;
                    self.lapsed[n][t] = false;
                }
                _ => {}
            },
            Op::Acquire { n, t, .. } if self.in_line[n][t] && matches!(m, Out::Acquired(_)) => {
                self.dirty[n][t] = true;
            }
            Op::Release { n, t } => {
                self.in_line[n][t] = false;
                self.dirty[n][t] = false;
                self.lapsed[n][t] = false;
            }
            _ => {}
        }
    }
}

fn pick<'a, T>(rng: &mut StdRng, xs: &'a [T]) -> &'a T {
    &xs[rng.random_range(0..xs.len())]
}

fn err(e: BackendError) -> Out {
    Out::Err(e.kind(), e.to_string())
}

fn acq(side: &mut Side, n: usize, r: Result<Acquire, BackendError>) -> Out {
    match r {
        Ok(Acquire::Acquired { fence }) => Out::Acquired(side.rel(n, fence)),
        Ok(Acquire::Held { remaining }) => Out::Held(remaining),
        Err(e) => err(e),
    }
}

fn ext(r: Result<Extend, BackendError>) -> Out {
    match r {
        Ok(Extend::Extended) => Out::Extended,
        Ok(Extend::NotHeld) => Out::ExtendNotHeld,
        Err(e) => err(e),
    }
}

fn rel(r: Result<Release, BackendError>) -> Out {
    match r {
        Ok(Release::Released) => Out::Released,
        Ok(Release::NotHeld) => Out::ReleaseNotHeld,
        Err(e) => err(e),
    }
}

fn info(side: &mut Side, n: usize, r: Result<LockInfo, BackendError>) -> Out {
    match r {
        Ok(i) => Out::Info {
            held: i.held,
            owner: i.owner,
            remaining: i.remaining,
            fence: if i.held {
                i.last_fence.map(|f| side.rel(n, f))
            } else {
                None
            },
        },
        Err(e) => err(e),
    }
}

fn raise(side: &mut Side, n: usize, r: Result<RaiseFence, BackendError>) -> Out {
    match r {
        Ok(RaiseFence::Raised { fence }) => Out::Raised(side.rel(n, fence)),
        Ok(RaiseFence::NotHeld) => Out::RaiseNotHeld,
        Ok(RaiseFence::Unsupported) => Out::RaiseUnsupported,
        Err(e) => err(e),
    }
}

/// What diverged: the call kind and both answers' kinds.
fn signature(op: &Op, m: &Out, r: &Out) -> String {
    let name = |o: &Out| {
        format!("{o:?}")
            .split(['(', ' '])
            .next()
            .unwrap()
            .to_owned()
    };
    let opn = format!("{op:?}").split(' ').next().unwrap().to_owned();
    format!("{opn}: mem {} / redis {}", name(m), name(r))
}

struct Divergence {
    step: usize,
    sig: String,
    mem: Out,
    red: Out,
}

/// Replays `ops` on fresh names; the first divergence, if any.
async fn replay(red: &RedisBackend, ops: &[Op], strict: bool, tol: Duration) -> Option<Divergence> {
    let mut w = World::new(red, "replay", strict);
    for (i, op) in ops.iter().enumerate() {
        let (m, r) = w.apply(op).await;
        if !same(&m, &r, tol) {
            return Some(Divergence {
                step: i,
                sig: signature(op, &m, &r),
                mem: m,
                red: r,
            });
        }
    }
    None
}

/// Shrinks `ops` (cut after the divergence, then drop calls one by one, and
/// shorten sleeps' neighbours) while the same divergence signature shows.
async fn shrink(
    red: &RedisBackend,
    ops: Vec<Op>,
    sig: &str,
    strict: bool,
    tol: Duration,
) -> Vec<Op> {
    let mut ops = ops;
    let still = |d: &Option<Divergence>| d.as_ref().is_some_and(|d| d.sig == sig);
    loop {
        let mut progress = false;
        let mut i = 0;
        while i < ops.len() {
            let mut cand = ops.clone();
            cand.remove(i);
            let d = replay(red, &cand, strict, tol).await;
            if still(&d) {
                cand.truncate(d.unwrap().step + 1);
                ops = cand;
                progress = true;
            } else {
                i += 1;
            }
        }
        if !progress {
            return ops;
        }
    }
}

/// One generated sequence: its calls, and the first divergence if any.
async fn run_seed(
    red: RedisBackend,
    seed: u64,
    steps: usize,
    expiry: bool,
    strict: bool,
    tol: Duration,
) -> (u64, Vec<Op>, Option<(String, Out, Out)>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut w = World::new(&red, "gen", strict);
    let mut ops = Vec::new();
    for _ in 0..steps {
        let op = w.gen(&mut rng, expiry).await;
        let (m, r) = w.apply(&op).await;
        w.note(&op, &m);
        ops.push(op.clone());
        if !same(&m, &r, tol) {
            return (seed, ops, Some((signature(&op, &m, &r), m, r)));
        }
    }
    (seed, ops, None)
}

async fn run_mode(expiry: bool) {
    let red = redis();
    assert!(red.capabilities().waiter_queue, "the line of waiters is on");
    let seeds: u64 = env("DIFF_SEEDS", if expiry { 64 } else { 300 });
    let steps: usize = env("DIFF_STEPS", if expiry { 40 } else { 60 }) as usize;
    let seed0: u64 = env("DIFF_SEED0", if expiry { 1_000_000 } else { 0 });
    // Sequences run side by side (the expiry mode mostly sleeps).
    let parallel: u64 = env("DIFF_PARALLEL", if expiry { 8 } else { 1 });
    let strict = std::env::var("DIFF_STRICT").is_ok_and(|v| v == "1");
    let tol = Duration::from_millis(if expiry { 120 } else { 300 });
    let mut found: BTreeMap<String, (u64, Vec<Op>, Out, Out)> = BTreeMap::new();
    let mut calls = 0usize;
    let mut clean = 0u64;
    let mut diverged = Vec::new();
    let mut next = seed0;
    while next < seed0 + seeds {
        let batch: Vec<_> = (next..(next + parallel).min(seed0 + seeds))
            .map(|seed| tokio::spawn(run_seed(red.clone(), seed, steps, expiry, strict, tol)))
            .collect();
        next += parallel;
        for task in batch {
            let (seed, ops, d) = task.await.unwrap();
            calls += ops.len();
            match d {
                None => clean += 1,
                Some((sig, m, r)) => {
                    eprintln!(
                        "seed {seed}: divergence {sig} after {} calls: mem {m:?} / redis {r:?}",
                        ops.len()
                    );
                    diverged.push((seed, ops, sig, m, r));
                }
            }
        }
    }
    for (seed, ops, sig, m, r) in diverged {
        if found.contains_key(&sig) {
            continue;
        }
        // Confirm (timing) before shrinking.
        match replay(&red, &ops, strict, tol).await {
            Some(d) if d.sig == sig => {}
            _ => {
                eprintln!("seed {seed}: did not reproduce on replay (timing?)");
                continue;
            }
        }
        let min = shrink(&red, ops, &sig, strict, tol).await;
        let d = replay(&red, &min, strict, tol).await;
        let (mm, rr) = d.map(|d| (d.mem, d.red)).unwrap_or((m, r));
        found.insert(sig, (seed, min, mm, rr));
    }
    eprintln!(
        "mode {}: {seeds} sequences, {calls} calls, {clean} sequences without divergence",
        if expiry { "expiry" } else { "long-ttl" }
    );
    for (sig, (seed, ops, m, r)) in &found {
        eprintln!("\n=== {sig} (first seed {seed}); minimal sequence:");
        for op in ops {
            eprintln!("    {op:?}");
        }
        eprintln!("  -> mem   {m:?}\n  -> redis {r:?}");
    }
    assert!(found.is_empty(), "{} divergence kind(s) found", found.len());
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_long_ttls() {
    run_mode(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_with_expiry() {
    run_mode(true).await;
}

// ---------------------------------------------------------------------------
// The divergences the random runs found (stop 25), each as its minimal
// sequence on both backends, asserting what the trait docs ask for.

fn both_backends() -> Vec<(&'static str, Box<dyn LockBackend>)> {
    vec![
        ("memory", Box::new(MemoryBackend::new())),
        ("redis", Box::new(redis())),
    ]
}

/// D1. "A waiter whose place lapses (no call within its lease) leaves the
/// line": calling again must join at the tail. Memory keeps the lapsed place
/// and revives it ahead of a waiter that joined later; Redis does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d1_a_lapsed_place_is_not_revived() {
    let long = Duration::from_secs(30);
    let mut failures = Vec::new();
    for (name, b) in both_backends() {
        let k = unique_key("d1");
        let (h, t1, t2) = (
            LockToken::generate(),
            LockToken::generate(),
            LockToken::generate(),
        );
        let w1 = WaiterId::generate();
        let w2 = Waiter::new(WaiterId::generate(), long);
        b.try_acquire(&k, &h, long, None).await.unwrap();
        let a = b
            .try_acquire_queued(
                &k,
                &t1,
                long,
                None,
                &Waiter::new(w1, Duration::from_millis(150)),
            )
            .await
            .unwrap();
        assert!(matches!(a, Acquire::Held { .. }));
        tokio::time::sleep(Duration::from_millis(400)).await; // t1's place lapses
        b.try_acquire_queued(&k, &t2, long, None, &w2)
            .await
            .unwrap(); // t2 joins
        b.try_acquire_queued(&k, &t1, long, None, &Waiter::new(w1, long))
            .await
            .unwrap(); // t1 again: behind t2
        assert_eq!(b.release(&k, &h).await.unwrap(), Release::Released); // hands over to the first live waiter
        let first = b.try_acquire(&k, &t2, long, None).await.unwrap();
        eprintln!("{name}: t2 after the release: {first:?}");
        if !matches!(first, Acquire::Acquired { .. }) {
            failures.push(format!("{name}: t2 (first in line) got {first:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

/// D2. "Fencing tokens are at most MAX_FENCE": a raise above it must not
/// produce a fence above it. Memory answers Raised{i64::MAX + 1}; Redis
/// refuses (Config).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d2_raise_fence_never_exceeds_max_fence() {
    let mut failures = Vec::new();
    for (name, b) in both_backends() {
        let (k, t) = (unique_key("d2"), LockToken::generate());
        b.try_acquire(&k, &t, Duration::from_secs(30), None)
            .await
            .unwrap();
        let r = b.raise_fence(&k, &t, distlock_redis::MAX_FENCE + 1).await;
        eprintln!("{name}: raise_fence(MAX_FENCE + 1) = {r:?}");
        if let Ok(RaiseFence::Raised { fence }) = r {
            if fence > distlock_redis::MAX_FENCE {
                failures.push(format!("{name}: Raised {{ fence: {fence} }} > MAX_FENCE"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

/// D3. Once the counter is at MAX_FENCE no acquisition can get a strictly
/// greater fence within MAX_FENCE: it must fail. Memory answers Acquired
/// {i64::MAX + 1}; Redis answers an error (Other: INCR overflow).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d3_no_fence_above_max_fence_after_a_raise_to_it() {
    let ttl = Duration::from_secs(30);
    let mut failures = Vec::new();
    for (name, b) in both_backends() {
        let (k, t1, t2) = (
            unique_key("d3"),
            LockToken::generate(),
            LockToken::generate(),
        );
        b.try_acquire(&k, &t1, ttl, None).await.unwrap();
        let r = b
            .raise_fence(&k, &t1, distlock_redis::MAX_FENCE)
            .await
            .unwrap();
        assert_eq!(
            r,
            RaiseFence::Raised {
                fence: distlock_redis::MAX_FENCE
            }
        );
        assert_eq!(b.release(&k, &t1).await.unwrap(), Release::Released);
        let a = b.try_acquire(&k, &t2, ttl, None).await;
        eprintln!("{name}: acquire after the raise to MAX_FENCE = {a:?}");
        if let Ok(Acquire::Acquired { fence }) = a {
            if fence > distlock_redis::MAX_FENCE {
                failures.push(format!("{name}: Acquired {{ fence: {fence} }} > MAX_FENCE"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

/// D3b. Same, raised to u64::MAX: memory accepts the raise, then the next
/// acquire overflows its counter (a panic in debug builds; in release the
/// fence wraps to 0, below every earlier one). Redis refuses the raise
/// (Config) and goes on with increasing fences.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d3b_raise_to_u64_max_then_acquire() {
    let ttl = Duration::from_secs(30);
    let mut failures = Vec::new();
    for (name, b) in both_backends() {
        let (k, t1, t2) = (
            unique_key("d3b"),
            LockToken::generate(),
            LockToken::generate(),
        );
        let Acquire::Acquired { fence: f1 } = b.try_acquire(&k, &t1, ttl, None).await.unwrap()
        else {
            panic!()
        };
        let r = b.raise_fence(&k, &t1, u64::MAX).await;
        b.release(&k, &t1).await.unwrap();
        let a = tokio::spawn(async move { b.try_acquire(&k, &t2, ttl, None).await }).await;
        eprintln!("{name}: raise(u64::MAX) = {r:?}; then acquire = {a:?}");
        match a {
            Err(join) => failures.push(format!("{name}: the acquire panicked: {join}")),
            Ok(Ok(Acquire::Acquired { fence }))
                if fence <= f1 || fence > distlock_redis::MAX_FENCE =>
            {
                failures.push(format!("{name}: fence {fence} after {f1}"))
            }
            _ => {}
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

/// D5. TTLs the Redis backend refuses (Config) and memory accepts: above
/// MAX_TTL, and under 1 ms but not zero (zero is known). The trait is silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d5_ttl_bounds_agree() {
    let mut rows = Vec::new();
    for ttl in [
        Duration::from_micros(500),
        distlock_redis::MAX_TTL + Duration::from_millis(1),
    ] {
        let mut answers = Vec::new();
        for (_, b) in both_backends() {
            let (k, t) = (unique_key("d5"), LockToken::generate());
            answers.push(match b.try_acquire(&k, &t, ttl, None).await {
                Ok(a) => format!(
                    "Ok({})",
                    if matches!(a, Acquire::Acquired { .. }) {
                        "Acquired"
                    } else {
                        "Held"
                    }
                ),
                Err(e) => format!("Err({:?})", e.kind()),
            });
        }
        if answers[0] != answers[1] {
            rows.push(format!(
                "ttl {ttl:?}: memory {} / redis {}",
                answers[0], answers[1]
            ));
        }
    }
    assert!(rows.is_empty(), "{rows:#?}");
}
