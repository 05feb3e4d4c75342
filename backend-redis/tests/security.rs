//! Security against real Redis: a password, an ACL user restricted to the
//! key prefix, TLS with a private CA (and mutual TLS), and secrets (passwords,
//! tokens) kept out of `Debug`, errors and logs. Also the Redis Cluster slot
//! property of the key layout.
//!
//! The servers are dedicated `redis-server` processes from `PATH`
//! ([`RedisServer::start_process`]): they need extra arguments and local
//! certificate files. `scripts/test.sh` installs Debian's `redis-server`
//! (built with TLS) when it is missing. Certificates are made during the test
//! with the `openssl` command-line tool ([`TestCertificates`]).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use distlock_conformance::log_capture::LogCapture;
use distlock_conformance::{scenarios, BoxError, Harness, SetupError};
use distlock_redis::deadpool_redis;
use distlock_redis::redis::{self, aio::MultiplexedConnection};
use distlock_redis::testkit::{ProcessOptions, RedisServer, TestCertificates};
use distlock_redis::{
    Acquire, BackendError, BackendErrorKind, KeyLayout, LockBackend, LockError, LockKey,
    LockOptions, LockToken, Locker, RedisBackend, RedisConfig, Release, Waiter, WaiterId,
};
use proptest::prelude::*;

/// The smallest ACL that distlock-redis needs, for a user `locker` with
/// password `PASSWORD` and the default key prefix `distlock:` (documented on
/// `RedisConfig`; this test proves it is enough):
///
/// ```text
/// ACL SETUSER locker reset on >PASSWORD ~distlock:* &distlock:* -@all
///     +evalsha +eval +get +set +del +incr +time +pttl
///     +pexpire +type +publish +subscribe +unsubscribe +ping +unwatch
///     +zadd +zrem +zrange +hset +hget +hdel
/// ```
///
/// - `~distlock:*`: the lock, fence, owner, tombstone and waiter-line keys;
///   `&distlock:*`: the release and grant channels (lock key + `:released`,
///   and + `:grant:` + a backend id; with another `key_prefix`, use it in
///   both patterns).
/// - `evalsha` and `eval` run the scripts (`EVAL` with the script's body
///   after `NOSCRIPT`, e.g. after a restart or `SCRIPT FLUSH`).
/// - `get set del incr time pttl pexpire type publish`: the commands
///   the Lua scripts call (Redis checks them against the caller's ACL;
///   `time` starts a missing fencing counter from the clock); `zadd zrem
///   zrange hset hget hdel`: the line of waiters (`zrange` on every
///   release, the others when a waiter joins, leaves or is handed the lock).
/// - `subscribe unsubscribe`: the release subscriber (also to move a
///   subscription to the back of the delivery order); `ping`: the check of
///   idle pooled connections and of the subscriber.
/// - `unwatch`: only for a pool handed to `RedisBackend::from_pool`
///   (deadpool-redis checks each checkout with `UNWATCH` + `PING`).
/// - Add `+select` for a URL with a database number other than 0.
///   `CLIENT SETINFO` (Redis 7.2+) may stay denied: the client ignores its
///   answer.
const MINIMAL_ACL: [&str; 22] = [
    "-@all",
    "+evalsha",
    "+eval",
    "+get",
    "+set",
    "+del",
    "+incr",
    "+time",
    "+pttl",
    "+pexpire",
    "+type",
    "+publish",
    "+subscribe",
    "+unsubscribe",
    "+ping",
    "+unwatch",
    "+zadd",
    "+zrem",
    "+zrange",
    "+hset",
    "+hget",
    "+hdel",
];

/// The commands of [`MINIMAL_ACL`] that only the line of waiters uses.
const QUEUE_COMMANDS: [&str; 6] = ["+zadd", "+zrem", "+zrange", "+hset", "+hget", "+hdel"];

const ADMIN_PASSWORD: &str = "admin-Pa55-7c1e";
const LOCKER_PASSWORD: &str = "locker-Pa55-93ab";
const TTL: Duration = Duration::from_secs(30);

fn unique(case: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "security:{case}:{}:{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `redis://127.0.0.1:P` → `redis://USER:PASSWORD@127.0.0.1:P`.
fn with_credentials(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    format!("{scheme}://{user}:{password}@{rest}")
}

async fn connect(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .expect("a valid URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connecting as admin")
}

/// A server whose default user needs [`ADMIN_PASSWORD`], with the ACL user
/// `locker` holding exactly [`MINIMAL_ACL`] on `distlock:*`.
fn acl_server() -> (RedisServer, String) {
    let server =
        RedisServer::start_process(ProcessOptions::new().args(["--requirepass", ADMIN_PASSWORD]));
    let admin = with_credentials(server.url(), "default", ADMIN_PASSWORD);
    (server, admin)
}

async fn create_locker_user(admin: &mut MultiplexedConnection, name: &str, commands: &[&str]) {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER")
        .arg(name)
        .arg("reset")
        .arg("on")
        .arg(format!(">{LOCKER_PASSWORD}"))
        .arg("~distlock:*")
        .arg("&distlock:*");
    for c in commands {
        cmd.arg(*c);
    }
    let () = cmd.query_async(admin).await.expect("ACL SETUSER");
}

/// One lock cycle through `locker`: take, see it held, extend, inspect
/// (with an owner label), release; then a waiter woken by a release.
async fn lock_cycle(locker: &Locker<RedisBackend>) -> u64 {
    let name = unique("cycle");
    let opts = LockOptions::default()
        .with_ttl(TTL)
        .with_owner("security-test");
    let mut guard = locker
        .try_lock_with(&name, |_| opts.clone())
        .await
        .expect("try_lock")
        .expect("a free lock");
    assert!(locker.try_lock(&name).await.expect("try_lock").is_none());
    guard.extend(TTL).await.expect("extend");
    let info = locker.inspect(&name).await.expect("inspect");
    assert!(info.held);
    assert_eq!(info.owner.as_deref(), Some("security-test"));
    let fence = guard.fence();
    assert!(fence > 0);

    // A waiter, woken by the release notification.
    let holder = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        guard.release().await
    });
    let waited = locker
        .lock_with(&name, |_| {
            opts.clone().with_wait_timeout(Duration::from_secs(10))
        })
        .await
        .expect("the waiter gets the lock");
    assert_eq!(
        holder.await.expect("holder task").expect("release"),
        Release::Released
    );
    assert!(waited.fence() > fence);
    assert!(
        locker.backend().release_subscriber_connected(),
        "the release subscriber must work for this user"
    );
    let fence = waited.fence();
    assert_eq!(waited.release().await.expect("release"), Release::Released);
    queue_cycle(locker.backend(), &name)
        .await
        .expect("the line of waiters");
    fence
}

/// The line of waiters through the backend: join, leave, join again, a
/// handover by the release and its claim, then the release.
async fn queue_cycle(backend: &RedisBackend, name: &str) -> Result<(), BackendError> {
    let key = LockKey::new("", name).unwrap();
    let holder = LockToken::generate();
    let queued = LockToken::generate();
    let waiter = Waiter::new(WaiterId::generate(), Duration::from_secs(10));
    let Acquire::Acquired { .. } = backend.try_acquire(&key, &holder, TTL, None).await? else {
        panic!("the lock was not free");
    };
    let leaving = LockToken::generate();
    backend
        .try_acquire_queued(&key, &leaving, TTL, None, &waiter)
        .await?;
    assert_eq!(backend.release(&key, &leaving).await?, Release::NotHeld);
    let joined = backend
        .try_acquire_queued(&key, &queued, TTL, Some("queued"), &waiter)
        .await?;
    assert!(matches!(joined, Acquire::Held { .. }), "{joined:?}");
    assert_eq!(backend.release(&key, &holder).await?, Release::Released);
    let claimed = backend
        .try_acquire_queued(&key, &queued, TTL, Some("queued"), &waiter)
        .await?;
    assert!(matches!(claimed, Acquire::Acquired { .. }), "{claimed:?}");
    assert_eq!(backend.release(&key, &queued).await?, Release::Released);
    Ok(())
}

fn backend_error(err: &LockError) -> (BackendErrorKind, String) {
    match err.backend_error() {
        Some(e) => (e.kind(), e.to_string()),
        None => panic!("expected a backend error, got {err:?}"),
    }
}

/// Everything a user could print about an error: Display, Debug, sources.
fn everything_shown(err: &(dyn std::error::Error + 'static)) -> String {
    let mut shown = format!("{err} {err:?}");
    let mut source = err.source();
    while let Some(e) = source {
        let _ = write!(shown, " | {e} {e:?}");
        source = e.source();
    }
    shown
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_server_right_password_works_wrong_one_is_auth() {
    let server =
        RedisServer::start_process(ProcessOptions::new().args(["--requirepass", "s3cret-Pw"]));
    let good = with_credentials(server.url(), "", "s3cret-Pw");
    let locker = Locker::new(RedisBackend::from_url(&good).unwrap());
    lock_cycle(&locker).await;

    for (case, url) in [
        (
            "wrong password",
            with_credentials(server.url(), "", "WRONG-pw-42"),
        ),
        ("no password", server.url().to_owned()),
        (
            "default user, wrong password",
            with_credentials(server.url(), "default", "WRONG-pw-42"),
        ),
    ] {
        let locker = Locker::new(RedisBackend::from_url(&url).unwrap());
        let name = unique("password");
        let err = locker.try_lock(&name).await.unwrap_err();
        let (kind, message) = backend_error(&err);
        println!("{case}: {message}");
        assert_eq!(kind, BackendErrorKind::Auth, "{case}: {message}");
        assert!(!err.is_transient(), "{case}");
        assert!(message.contains("refused the credentials"), "{message}");
        let shown = everything_shown(&err);
        assert!(!shown.contains("WRONG-pw-42"), "{shown}");
        assert!(!shown.contains("s3cret-Pw"), "{shown}");
        // Nothing was taken: the right client gets the lock at once.
        let guard = Locker::new(RedisBackend::from_url(&good).unwrap())
            .try_lock(&name)
            .await
            .unwrap()
            .expect("nothing was left behind");
        guard.release().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_restricted_to_the_prefix_works_and_is_refused_elsewhere() {
    let (_server, admin_url) = acl_server();
    let mut admin = connect(&admin_url).await;
    create_locker_user(&mut admin, "locker", &MINIMAL_ACL).await;
    let () = redis::cmd("ACL")
        .arg("LOG")
        .arg("RESET")
        .query_async(&mut admin)
        .await
        .unwrap();

    let url = with_credentials(_server.url(), "locker", LOCKER_PASSWORD);
    let locker = Locker::new(RedisBackend::from_url(&url).unwrap());
    let first = lock_cycle(&locker).await;

    // After SCRIPT FLUSH the scripts run again (EVAL after NOSCRIPT).
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(lock_cycle(&locker).await > 0);
    assert!(first > 0);

    // A guard dropped without release is released in the background.
    let name = unique("dropped");
    drop(locker.try_lock(&name).await.unwrap().expect("free"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while locker.inspect(&name).await.unwrap().held {
        assert!(tokio::time::Instant::now() < deadline, "never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A deadpool-redis pool of the application (UNWATCH + PING per checkout).
    let pool = deadpool_redis::Config::from_url(url.clone())
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .unwrap();
    let given = Locker::new(RedisBackend::from_pool(pool, &RedisConfig::new(&url)).unwrap());
    lock_cycle(&given).await;

    // The pool's and the subscriber's idle check.
    let mut raw = connect(&url).await;
    let pong: String = redis::cmd("PING").query_async(&mut raw).await.unwrap();
    assert_eq!(pong, "PONG");

    // Nothing was denied along the way: MINIMAL_ACL is enough.
    let log: Vec<redis::Value> = redis::cmd("ACL")
        .arg("LOG")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(log.is_empty(), "ACL denials with the minimal set: {log:?}");
    println!(
        "minimal ACL (no denial in ACL LOG): ~distlock:* &distlock:* {}",
        MINIMAL_ACL.join(" ")
    );

    // Unknown user or wrong password: Auth.
    for (case, bad) in [
        (
            "unknown ACL user",
            with_credentials(_server.url(), "nobody", LOCKER_PASSWORD),
        ),
        (
            "wrong password",
            with_credentials(_server.url(), "locker", "WRONG-pw-42"),
        ),
    ] {
        let err = Locker::new(RedisBackend::from_url(&bad).unwrap())
            .try_lock(unique("acl-auth"))
            .await
            .unwrap_err();
        let (kind, message) = backend_error(&err);
        println!("{case}: {message}");
        assert_eq!(kind, BackendErrorKind::Auth, "{case}: {message}");
        assert!(!everything_shown(&err).contains("WRONG-pw-42"));
        assert!(!everything_shown(&err).contains(LOCKER_PASSWORD));
    }

    // A key prefix outside ~distlock:*: Permission, and nothing is written.
    let outside =
        RedisBackend::from_config(&RedisConfig::new(&url).with_key_prefix("other:")).unwrap();
    let name = unique("outside");
    let err = Locker::new(outside).try_lock(&name).await.unwrap_err();
    let (kind, message) = backend_error(&err);
    println!("key prefix outside the ACL pattern: {message}");
    assert_eq!(kind, BackendErrorKind::Permission, "{message}");
    assert!(message.contains("ACL user lacks a permission"), "{message}");
    assert!(message.contains("other:{"), "names the key: {message}");
    let written: Vec<String> = redis::cmd("KEYS")
        .arg("other:*")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(written.is_empty(), "{written:?}");

    // A user that may touch the keys but lacks a command the scripts call:
    // Redis refuses inside the script with an ERR; still Permission.
    let without_incr: Vec<&str> = MINIMAL_ACL
        .iter()
        .copied()
        .filter(|c| *c != "+incr")
        .collect();
    create_locker_user(&mut admin, "noincr", &without_incr).await;
    let url = with_credentials(_server.url(), "noincr", LOCKER_PASSWORD);
    let name = unique("noincr");
    let err = Locker::new(RedisBackend::from_url(&url).unwrap())
        .try_lock(&name)
        .await
        .unwrap_err();
    let (kind, message) = backend_error(&err);
    println!("user without +incr: {message}");
    assert_eq!(kind, BackendErrorKind::Permission, "{message}");
    // The acquisition was undone: the lock key SET before INCR is gone.
    let key = LockKey::new("", &name).unwrap();
    let lock_key = KeyLayout::default().lock_key(&key);
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&lock_key)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(exists, 0, "{lock_key} left behind");

    // Each command of the line is needed: without it the line's cycle
    // fails with Permission.
    for command in QUEUE_COMMANDS {
        let without: Vec<&str> = MINIMAL_ACL
            .iter()
            .copied()
            .filter(|c| *c != command)
            .collect();
        let user = format!("no{}", &command[1..]);
        create_locker_user(&mut admin, &user, &without).await;
        let url = with_credentials(_server.url(), &user, LOCKER_PASSWORD);
        let backend = RedisBackend::from_url(&url).unwrap();
        let err = queue_cycle(&backend, &unique(&user))
            .await
            .expect_err(&format!("the line works without {command}"));
        println!("user without {command}: {err}");
        assert_eq!(err.kind(), BackendErrorKind::Permission, "{command}: {err}");
    }
}

/// The Redis Cluster hash slot of a key: CRC16 (XMODEM) of the hash tag
/// (the text between the first `{` and the next `}`, if non-empty) or of the
/// whole key, modulo 16384.
fn cluster_slot(key: &[u8]) -> u16 {
    let mut hashed = key;
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                hashed = &key[open + 1..open + 1 + len];
            }
        }
    }
    crc16(hashed) % 16384
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[test]
fn cluster_slot_matches_the_redis_specification() {
    // Test vector of the Redis Cluster specification, and known slots.
    assert_eq!(crc16(b"123456789"), 0x31C3);
    assert_eq!(cluster_slot(b"foo"), 12182);
    assert_eq!(
        cluster_slot(b"{user1000}.following"),
        cluster_slot(b"user1000")
    );
    assert_eq!(cluster_slot(b"foo{}{bar}"), cluster_slot(b"foo{}{bar}"));
    assert_ne!(cluster_slot(b"foo{}{bar}"), cluster_slot(b"bar"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Lock, fence, owner, waiters and leases keys (and the release and
    /// grant channels) share one hash tag (the whole encoded name) and so
    /// one Cluster slot, whatever the name and prefixes.
    #[test]
    fn lock_fence_and_owner_keys_share_one_cluster_slot(
        backend_prefix in "[a-z:._-]{0,12}",
        namespace in "\\PC{0,8}",
        name in "[{}:%a-zA-Z \\x01-\\x1f\u{e9}\u{1F512}]{1,16}",
    ) {
        let layout = KeyLayout::new(&backend_prefix).unwrap();
        let key = LockKey::new(&namespace, &name).unwrap();
        let keys = layout.keys(&key);
        let slot = cluster_slot(keys.lock.as_bytes());
        prop_assert_eq!(cluster_slot(keys.fence.as_bytes()), slot);
        prop_assert_eq!(cluster_slot(keys.owner.as_bytes()), slot);
        prop_assert_eq!(cluster_slot(layout.channel(&key).as_bytes()), slot);
        prop_assert_eq!(cluster_slot(keys.waiters.as_bytes()), slot);
        prop_assert_eq!(cluster_slot(keys.leases.as_bytes()), slot);
        prop_assert_eq!(cluster_slot(layout.grant_channel(&key, u64::MAX).as_bytes()), slot);
        // The tag is exactly the encoded name (between the only braces).
        let encoded = key.encoded();
        let open = encoded.find('{').unwrap();
        let tag = &encoded[open + 1..encoded.len() - 1];
        prop_assert_eq!(slot, crc16(tag.as_bytes()) % 16384);
        prop_assert_eq!(keys.lock.matches('{').count(), 1);
        prop_assert_eq!(keys.fence.matches('}').count(), 1);
    }
}

// ---------------------------------------------------------------- TLS

/// The TLS fixture: certificates and a TLS-only server, shared by the TLS
/// tests of this binary.
struct Tls {
    certs: TestCertificates,
    server: RedisServer,
}

fn tls() -> &'static Tls {
    static TLS: OnceLock<Tls> = OnceLock::new();
    TLS.get_or_init(|| {
        let dir = tls_dir("server");
        let certs = TestCertificates::generate(&dir).expect("making test certificates");
        let server = RedisServer::start_process(
            ProcessOptions::new()
                .tls_only()
                .args(certs.server_args(false)),
        );
        Tls { certs, server }
    })
}

fn tls_dir(what: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("distlock-tls-{what}-{}", std::process::id()))
}

/// The conformance harness over `rediss://` with the test CA.
struct TlsHarness;

#[distlock_conformance::async_trait]
impl Harness for TlsHarness {
    type Backend = RedisBackend;

    async fn setup() -> Result<Self, SetupError> {
        Ok(TlsHarness)
    }

    async fn client(&self) -> Result<RedisBackend, BoxError> {
        let t = tls();
        let config = RedisConfig::new(t.server.url()).with_tls_ca_cert(&t.certs.ca_cert);
        Ok(RedisBackend::from_config(&config)?)
    }

    async fn expire_now(&self, client: &RedisBackend, key: &LockKey) -> Result<(), BoxError> {
        let t = tls();
        let ca = std::fs::read(&t.certs.ca_cert).unwrap();
        let certificates = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca),
        };
        let keys = client.keys(key);
        let mut conn = redis::Client::build_with_tls(t.server.url(), certificates)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("admin connection over TLS");
        let _: i64 = redis::cmd("DEL")
            .arg(&keys.lock)
            .arg(&keys.owner)
            .query_async(&mut conn)
            .await
            .unwrap();
        Ok(())
    }

    fn registered_waiters(&self, client: &RedisBackend) -> Option<usize> {
        Some(client.registered_waiters())
    }

    fn timing_slack(&self) -> Duration {
        Duration::from_millis(400)
    }
}

/// One `#[test]` per conformance scenario, over TLS.
macro_rules! tls_conformance {
    ($($case:ident),* $(,)?) => {
        mod tls_conformance {
            use super::*;
            $(
                #[test]
                fn $case() {
                    distlock_conformance::run_case::<TlsHarness>(stringify!($case), |h| {
                        Box::pin(scenarios::$case(h))
                    });
                }
            )*
        }
    };
}

tls_conformance!(
    acquire_free_then_held_then_free,
    not_reentrant,
    inspect_reports_owner_and_remaining,
    wrong_token_changes_nothing,
    stale_guard_cannot_touch_new_holder,
    double_release_is_harmless,
    extend_really_extends,
    fences_strictly_increase,
    lock_times_out_while_held,
    lock_succeeds_after_release,
    waiter_woken_by_release_notification,
    racing_try_lock_has_one_winner,
    mutual_exclusion_counter,
    unusual_names_work,
    dropped_guard_released_promptly,
    lost_fires_when_lock_taken_away,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_without_the_ca_is_rejected_with_a_clear_error() {
    let t = tls();
    let name = unique("tls-no-ca");

    // The built-in roots do not include the test CA.
    let err = Locker::new(RedisBackend::from_url(t.server.url()).unwrap())
        .try_lock(&name)
        .await
        .unwrap_err();
    let (kind, message) = backend_error(&err);
    println!("rediss:// without the CA: {message}");
    assert_eq!(kind, BackendErrorKind::Config, "{message}");
    assert!(!err.is_transient());
    assert!(message.contains("TLS handshake"), "{message}");
    assert!(message.contains("invalid peer certificate"), "{message}");
    assert!(message.contains("tls_ca_cert"), "{message}");

    // Another CA: rejected the same way.
    let other = TestCertificates::generate(&tls_dir("other-ca")).unwrap();
    let config = RedisConfig::new(t.server.url()).with_tls_ca_cert(&other.ca_cert);
    let err = Locker::new(RedisBackend::from_config(&config).unwrap())
        .try_lock(&name)
        .await
        .unwrap_err();
    let (kind, message) = backend_error(&err);
    println!("rediss:// with another CA: {message}");
    assert_eq!(kind, BackendErrorKind::Config, "{message}");
    assert!(message.contains("invalid peer certificate"), "{message}");

    // A missing CA file: Config when the backend is built.
    let missing = RedisConfig::new(t.server.url()).with_tls_ca_cert("/nonexistent/ca.pem");
    let err = RedisBackend::from_config(&missing).unwrap_err();
    println!("missing CA file: {err}");
    assert_eq!(err.kind(), BackendErrorKind::Config);
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");

    // With the CA it works, and nothing was left behind by the failures.
    let good = RedisConfig::new(t.server.url()).with_tls_ca_cert(&t.certs.ca_cert);
    let locker = Locker::new(RedisBackend::from_config(&good).unwrap());
    lock_cycle(&locker).await;
    let guard = locker.try_lock(&name).await.unwrap().expect("free");
    guard.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_the_client_certificate() {
    let certs = TestCertificates::generate(&tls_dir("mtls")).unwrap();
    let server = RedisServer::start_process(
        ProcessOptions::new()
            .tls_only()
            .args(certs.server_args(true)),
    );

    let with_cert = RedisConfig::new(server.url())
        .with_tls_ca_cert(&certs.ca_cert)
        .with_tls_client_cert(&certs.client_cert, &certs.client_key);
    lock_cycle(&Locker::new(RedisBackend::from_config(&with_cert).unwrap())).await;

    let without = RedisConfig::new(server.url())
        .with_connect_timeout(Duration::from_secs(1))
        .with_tls_ca_cert(&certs.ca_cert);
    let err = Locker::new(RedisBackend::from_config(&without).unwrap())
        .try_lock(unique("mtls"))
        .await
        .unwrap_err();
    let (kind, message) = backend_error(&err);
    println!("mutual TLS without a client certificate: {message}");
    assert_eq!(kind, BackendErrorKind::Config, "{message}");
    assert!(message.contains("tls_client_cert"), "{message}");
}

// ---------------------------------------------------------------- secrecy

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_show_in_debug_or_errors() {
    const PW: &str = "Hunter2-secret-pw";
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = RedisConfig::new(format!("redis://locker:{PW}@127.0.0.1:{port}/0"))
        .with_connect_timeout(Duration::from_millis(300));
    let backend = RedisBackend::from_config(&config).unwrap();
    let locker = Locker::new(backend.clone());
    let mut shown = vec![
        format!("{config:?}"),
        format!("{config:#?}"),
        config.to_string(),
        format!("{backend:?}"),
        format!("{locker:?}"),
    ];
    // Nothing listens: the connection error.
    let err = locker.try_lock("x").await.unwrap_err();
    shown.push(everything_shown(&err));
    // Malformed URLs with a password.
    for bad in [
        format!("redis://:{PW}@[::1"),
        format!("redis://u:{PW}@host:99999"),
        format!("http://u:{PW}@host"),
        format!("redis://u:{PW}@host/notadb"),
    ] {
        let err = RedisBackend::from_url(&bad).unwrap_err();
        assert_eq!(err.kind(), BackendErrorKind::Config, "{err}");
        shown.push(everything_shown(&err));
    }
    // A refused password.
    let server = RedisServer::start_process(ProcessOptions::new().args(["--requirepass", "right"]));
    let wrong =
        Locker::new(RedisBackend::from_url(&with_credentials(server.url(), "", PW)).unwrap());
    let err = wrong.try_lock("x").await.unwrap_err();
    shown.push(everything_shown(&err));
    shown.push(format!("{wrong:?}"));
    for s in &shown {
        println!("{s}");
        assert!(!s.contains(PW), "the password leaked: {s}");
    }
    assert!(shown[0].contains("***"), "{}", shown[0]);
}

#[test]
fn logs_of_a_lock_cycle_hold_neither_password_nor_token() {
    const PW: &str = "Log-secret-pw-5150";
    let server = RedisServer::start_process(ProcessOptions::new().args(["--requirepass", PW]));
    let url = with_credentials(server.url(), "", PW);
    let capture = LogCapture::default();
    let _default = tracing::subscriber::set_default(capture.clone());
    // Other tests of this binary may be registering the same callsites on
    // other threads right now, with no subscriber; recompute their interest
    // so none stays cached as "never".
    tracing::callsite::rebuild_interest_cache();
    // One thread: every task of the cycle logs to this thread's subscriber.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tokens = rt.block_on(async {
        let backend = RedisBackend::from_url(&url).unwrap();
        let locker = Locker::new(backend.clone());
        lock_cycle(&locker).await;
        tracing::callsite::rebuild_interest_cache();
        // A dropped guard: the background release logs its token (short).
        let name = unique("log");
        let guard = locker.try_lock(&name).await.unwrap().expect("free");
        let fence = guard.fence();
        drop(guard);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while locker.inspect(&name).await.unwrap().held {
            assert!(tokio::time::Instant::now() < deadline, "never released");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(fence > 0);
        // Tokens stored in Redis by this cycle's locks, read back raw: take
        // one more lock and read its token from its key.
        let guard = locker.try_lock(&name).await.unwrap().expect("free");
        let keys = backend.keys(&locker.key(&name).unwrap());
        let mut raw = connect(&url).await;
        let token: String = redis::cmd("GET")
            .arg(&keys.lock)
            .query_async(&mut raw)
            .await
            .unwrap();
        drop(guard); // logged by the background release
        tokio::time::sleep(Duration::from_millis(300)).await;
        vec![token]
    });
    drop(rt);
    let text = capture.text();
    println!("captured log:\n{text}");
    assert!(
        text.contains("background release"),
        "the capture must see the library's events: {text}"
    );
    assert!(text.contains("release subscriber"), "{text}");
    assert!(!text.contains(PW), "password in the log");
    for token in tokens {
        assert_eq!(token.len(), 32);
        assert!(!text.contains(&token), "full token in the log");
        assert!(
            !text.contains(&token[..8]),
            "more than 4 hex digits of a token"
        );
        assert!(text.contains(&token[..4]), "the short form is logged");
    }
}
