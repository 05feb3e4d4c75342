//! Bad input, one table: every row names the input, the exact error it
//! must give, and is followed by a check that no lock was left behind.
//!
//! Run with `cargo test -p distlock-redis --test bad_input -- --nocapture`
//! to see each row's result.
//!
//! The table runs against a dedicated `redis-server` (from `PATH`) whose
//! default user has a password and which has an ACL user `locker` limited to
//! `~distlock:*`, so that credentials and permissions are rows too. Each row
//! works in its own lock namespace (a `Locker` prefix); after the row, no key
//! of that namespace may exist except those the row planted itself (checked
//! with `SCAN` on the server), and a fresh `try_lock` of the row's lock name
//! must succeed.
//!
//! Lock names are taken as `impl AsRef<[u8]>`: `&str` and raw bytes are both
//! accepted, so invalid UTF-8 is a row (refused as `InvalidName`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use distlock_redis::distlock::{
    MAX_NAME_LEN, MAX_OWNER_LEN, MAX_PREFIX_LEN, MAX_TTL, MAX_WAIT_TIMEOUT, MIN_TTL,
};
use distlock_redis::redis::{self, aio::MultiplexedConnection, AsyncCommands};
use distlock_redis::testkit::{ProcessOptions, RedisServer};
use distlock_redis::{
    BackendError, BackendErrorKind, KeyLayout, LockBackend, LockError, LockKey, LockOptions,
    LockToken, Locker, RedisBackend, RedisConfig, Release,
};

const ADMIN_PASSWORD: &str = "table-admin-pw";
const LOCKER_PASSWORD: &str = "table-locker-pw";

/// What a row must give.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// `LockError::InvalidName`.
    InvalidName,
    /// `LockError::InvalidTtl`.
    InvalidTtl,
    /// `LockError::InvalidOptions`.
    InvalidOptions,
    /// `LockError::Backend` (or a `BackendError`) of this kind.
    Backend(BackendErrorKind),
    /// The configuration file does not deserialize; the serde message
    /// contains this text. (Loading a file is serde's job: there is no
    /// `LockError` for it.)
    Toml(&'static str),
}

/// What a row got.
#[derive(Debug)]
enum Failure {
    Lock(LockError),
    Toml(toml::de::Error),
}

impl From<LockError> for Failure {
    fn from(e: LockError) -> Self {
        Failure::Lock(e)
    }
}

impl From<BackendError> for Failure {
    fn from(e: BackendError) -> Self {
        Failure::Lock(LockError::Backend(e))
    }
}

impl From<toml::de::Error> for Failure {
    fn from(e: toml::de::Error) -> Self {
        Failure::Toml(e)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Lock(e) => write!(f, "LockError::{}", variant(e)),
            Failure::Toml(e) => write!(f, "toml: {}", e.message()),
        }
    }
}

fn variant(e: &LockError) -> String {
    match e {
        LockError::InvalidName { reason } => format!("InvalidName ({reason})"),
        LockError::InvalidTtl { ttl, reason } => format!("InvalidTtl ({ttl:?} {reason})"),
        LockError::InvalidOptions(m) => format!("InvalidOptions ({m})"),
        LockError::Backend(b) => format!("Backend({:?}) ({})", b.kind(), b.message()),
        other => format!("{other:?}"),
    }
}

impl Expect {
    fn matches(self, got: &Failure) -> bool {
        match (self, got) {
            (Expect::InvalidName, Failure::Lock(LockError::InvalidName { .. }))
            | (Expect::InvalidTtl, Failure::Lock(LockError::InvalidTtl { .. }))
            | (Expect::InvalidOptions, Failure::Lock(LockError::InvalidOptions(_))) => true,
            (Expect::Backend(kind), Failure::Lock(LockError::Backend(e))) => e.kind() == kind,
            (Expect::Toml(text), Failure::Toml(e)) => e.message().contains(text),
            _ => false,
        }
    }
}

/// What a row can use. Everything is per row: its own namespace and name.
#[derive(Clone)]
struct Cx {
    /// `redis://127.0.0.1:PORT`, no credentials.
    server: String,
    /// The row's `Locker` prefix (its namespace).
    prefix: String,
    /// A valid lock name for the row.
    name: String,
    /// Keys the row planted on purpose (left alone by the leftover check).
    planted: Arc<Mutex<Vec<String>>>,
}

impl Cx {
    fn url(&self, user: &str, password: &str) -> String {
        self.server
            .replacen("redis://", &format!("redis://{user}:{password}@"), 1)
    }
    fn admin_url(&self) -> String {
        self.url("default", ADMIN_PASSWORD)
    }
    fn backend(&self) -> RedisBackend {
        RedisBackend::from_url(&self.admin_url()).expect("the admin URL is valid")
    }
    fn locker(&self) -> Locker<RedisBackend> {
        Locker::new(self.backend())
            .with_prefix(&self.prefix)
            .expect("the row prefix is valid")
    }
    fn key(&self) -> LockKey {
        LockKey::new(&self.prefix, &self.name).expect("the row name is valid")
    }
    async fn admin(&self) -> MultiplexedConnection {
        redis::Client::open(self.admin_url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("admin connection")
    }
    fn plant(&self, key: &str) {
        self.planted.lock().unwrap().push(key.to_owned());
    }
    /// A `RedisConfig` of the admin URL with TOML `extra` lines, parsed.
    fn config_toml(&self, extra: &str) -> Result<RedisConfig, toml::de::Error> {
        toml::from_str(&format!("url = \"{}\"\n{extra}", self.admin_url()))
    }
}

type RowFuture = Pin<Box<dyn Future<Output = Result<(), Failure>> + Send>>;

struct Row {
    input: &'static str,
    expect: Expect,
    /// Text the error message must contain, if any.
    mentions: Option<fn(&Cx) -> String>,
    run: Box<dyn Fn(Cx) -> RowFuture>,
}

macro_rules! row {
    ($input:expr, $expect:expr, |$cx:ident| $body:expr) => {
        Row {
            input: $input,
            expect: $expect,
            mentions: None,
            run: Box::new(|$cx: Cx| Box::pin(async move { $body })),
        }
    };
    ($input:expr, $expect:expr, mentions $mentions:expr, |$cx:ident| $body:expr) => {
        Row {
            input: $input,
            expect: $expect,
            mentions: Some($mentions),
            run: Box::new(|$cx: Cx| Box::pin(async move { $body })),
        }
    };
}

/// `try_lock` with options; a lock that was (wrongly) taken is released so
/// the row reports "accepted" and the leftover check still runs.
async fn try_lock_opts(cx: &Cx, name: &[u8], opts: LockOptions) -> Result<(), Failure> {
    if let Some(guard) = cx.locker().try_lock_with(name, |_| opts.clone()).await? {
        guard.release().await?;
    }
    Ok(())
}

fn opts() -> LockOptions {
    LockOptions::default()
}

fn rows() -> Vec<Row> {
    use BackendErrorKind::{Auth, Config, Permission, WrongType};
    use Expect::{Backend, InvalidName, InvalidOptions, InvalidTtl, Toml};
    vec![
        // ---- lock names
        row!("empty name \"\"", InvalidName, |cx| {
            try_lock_opts(&cx, b"", opts()).await
        }),
        row!("name of MAX_NAME_LEN + 1 bytes", InvalidName, |cx| {
            try_lock_opts(&cx, "n".repeat(MAX_NAME_LEN + 1).as_bytes(), opts()).await
        }),
        row!(
            "name of MAX_NAME_LEN bytes plus one 2-byte char",
            InvalidName,
            |cx| {
                let name = format!("{}é", "n".repeat(MAX_NAME_LEN - 1));
                try_lock_opts(&cx, name.as_bytes(), opts()).await
            }
        ),
        row!("name with a NUL inside \"a\\0b\"", InvalidName, |cx| {
            try_lock_opts(&cx, b"a\0b", opts()).await
        }),
        row!("name that is one NUL byte", InvalidName, |cx| {
            try_lock_opts(&cx, b"\0", opts()).await
        }),
        row!("name bytes not UTF-8 (FF FE)", InvalidName, |cx| {
            try_lock_opts(&cx, b"\xff\xfe", opts()).await
        }),
        row!("name bytes: truncated UTF-8 (E2 82)", InvalidName, |cx| {
            try_lock_opts(&cx, b"euro \xe2\x82", opts()).await
        }),
        row!("name bytes: overlong '/' (C0 AF)", InvalidName, |cx| {
            try_lock_opts(&cx, b"a\xc0\xafb", opts()).await
        }),
        row!(
            "name bytes: UTF-8 encoded surrogate (ED A0 80)",
            InvalidName,
            |cx| try_lock_opts(&cx, b"\xed\xa0\x80", opts()).await
        ),
        row!(
            "empty name through lock() (waiting path)",
            InvalidName,
            |cx| {
                cx.locker().lock("").await?.release().await?;
                Ok(())
            }
        ),
        row!(
            "NUL name through with_lock(): closure never runs",
            InvalidName,
            |cx| {
                let ran = Arc::new(AtomicBool::new(false));
                let flag = ran.clone();
                let result = cx
                    .locker()
                    .with_lock("x\0", |_| async move { flag.store(true, Ordering::SeqCst) })
                    .await;
                assert!(!ran.load(Ordering::SeqCst), "the closure ran");
                result.map_err(Failure::from)
            }
        ),
        row!("inspect() of an empty name", InvalidName, |cx| {
            cx.locker().inspect("").await?;
            Ok(())
        }),
        // ---- TTLs
        row!("TTL zero", InvalidTtl, |cx| {
            try_lock_opts(&cx, cx.name.as_bytes(), opts().with_ttl(Duration::ZERO)).await
        }),
        row!("TTL 1 ns", InvalidTtl, |cx| {
            try_lock_opts(
                &cx,
                cx.name.as_bytes(),
                opts().with_ttl(Duration::from_nanos(1)),
            )
            .await
        }),
        row!("TTL MIN_TTL - 1 ns", InvalidTtl, |cx| {
            let ttl = MIN_TTL - Duration::from_nanos(1);
            try_lock_opts(&cx, cx.name.as_bytes(), opts().with_ttl(ttl)).await
        }),
        row!("TTL MAX_TTL + 1 ms", InvalidTtl, |cx| {
            let ttl = MAX_TTL + Duration::from_millis(1);
            try_lock_opts(&cx, cx.name.as_bytes(), opts().with_ttl(ttl)).await
        }),
        row!("TTL Duration::MAX (beyond Redis PX)", InvalidTtl, |cx| {
            try_lock_opts(&cx, cx.name.as_bytes(), opts().with_ttl(Duration::MAX)).await
        }),
        row!("TTL zero through lock() (waiting path)", InvalidTtl, |cx| {
            cx.locker()
                .lock_with(&cx.name, |_| opts().with_ttl(Duration::ZERO))
                .await?
                .release()
                .await?;
            Ok(())
        }),
        row!(
            "extend(0) of a held guard (released after)",
            InvalidTtl,
            |cx| {
                let mut guard = cx.locker().try_lock(&cx.name).await?.expect("free");
                // Taken on purpose: its fence key stays (fence keys never expire).
                cx.plant(&KeyLayout::default().keys(&cx.key()).fence);
                let result = guard.extend(Duration::ZERO).await;
                assert!(guard.is_valid(), "a refused extend must keep the lease");
                assert_eq!(guard.release().await?, Release::Released);
                result.map_err(Failure::from)
            }
        ),
        row!(
            "extend(Duration::MAX) of a held guard (released after)",
            InvalidTtl,
            |cx| {
                let mut guard = cx.locker().try_lock(&cx.name).await?.expect("free");
                // Taken on purpose: its fence key stays (fence keys never expire).
                cx.plant(&KeyLayout::default().keys(&cx.key()).fence);
                let result = guard.extend(Duration::MAX).await;
                assert_eq!(guard.release().await?, Release::Released);
                result.map_err(Failure::from)
            }
        ),
        row!(
            "backend try_acquire, TTL 500 µs (under PX's 1 ms)",
            Backend(Config),
            |cx| {
                let ttl = Duration::from_micros(500);
                cx.backend()
                    .try_acquire(&cx.key(), &LockToken::generate(), ttl, None)
                    .await?;
                Ok(())
            }
        ),
        row!(
            "backend try_acquire, TTL Duration::MAX (PX overflow)",
            Backend(Config),
            |cx| {
                cx.backend()
                    .try_acquire(&cx.key(), &LockToken::generate(), Duration::MAX, None)
                    .await?;
                Ok(())
            }
        ),
        row!("backend extend, TTL Duration::MAX", Backend(Config), |cx| {
            cx.backend()
                .extend(&cx.key(), &LockToken::generate(), Duration::MAX)
                .await?;
            Ok(())
        }),
        // ---- waiting and other options
        row!(
            "wait_timeout MAX_WAIT_TIMEOUT + 1 s",
            InvalidOptions,
            |cx| {
                let wait = MAX_WAIT_TIMEOUT + Duration::from_secs(1);
                cx.locker()
                    .lock_with(&cx.name, |_| opts().with_wait_timeout(wait))
                    .await?
                    .release()
                    .await?;
                Ok(())
            }
        ),
        row!(
            "wait_timeout Duration::MAX (deadline overflows)",
            InvalidOptions,
            |cx| {
                cx.locker()
                    .lock_with(&cx.name, |_| opts().with_wait_timeout(Duration::MAX))
                    .await?
                    .release()
                    .await?;
                Ok(())
            }
        ),
        row!(
            "owner label of MAX_OWNER_LEN + 1 bytes",
            InvalidOptions,
            |cx| {
                let owner = "o".repeat(MAX_OWNER_LEN + 1);
                try_lock_opts(&cx, cx.name.as_bytes(), opts().with_owner(owner)).await
            }
        ),
        row!("retry_min zero", InvalidOptions, |cx| {
            let o = opts().with_retry(Duration::ZERO, Duration::from_millis(10));
            try_lock_opts(&cx, cx.name.as_bytes(), o).await
        }),
        row!("retry_min above retry_max", InvalidOptions, |cx| {
            let o = opts().with_retry(Duration::from_secs(2), Duration::from_secs(1));
            try_lock_opts(&cx, cx.name.as_bytes(), o).await
        }),
        row!("retry_max Duration::MAX", InvalidOptions, |cx| {
            let o = opts().with_retry(Duration::from_millis(1), Duration::MAX);
            try_lock_opts(&cx, cx.name.as_bytes(), o).await
        }),
        row!("max_hold zero", InvalidOptions, |cx| {
            let o = opts().with_auto_renew(true).with_max_hold(Duration::ZERO);
            try_lock_opts(&cx, cx.name.as_bytes(), o).await
        }),
        row!("max_hold Duration::MAX", InvalidOptions, |cx| {
            let o = opts().with_auto_renew(true).with_max_hold(Duration::MAX);
            try_lock_opts(&cx, cx.name.as_bytes(), o).await
        }),
        row!("Locker prefix with a NUL", InvalidOptions, |cx| {
            Locker::new(cx.backend()).with_prefix(format!("{}\0", cx.prefix))?;
            Ok(())
        }),
        row!(
            "Locker prefix of MAX_PREFIX_LEN + 1 bytes",
            InvalidOptions,
            |cx| {
                Locker::new(cx.backend()).with_prefix("p".repeat(MAX_PREFIX_LEN + 1))?;
                Ok(())
            }
        ),
        row!("Locker defaults with TTL zero", InvalidTtl, |cx| {
            cx.locker().with_defaults(opts().with_ttl(Duration::ZERO))?;
            Ok(())
        }),
        // ---- URLs
        row!("URL \"\"", Backend(Config), |_cx| {
            RedisBackend::from_url("")?;
            Ok(())
        }),
        row!("URL \"not a url\"", Backend(Config), |_cx| {
            RedisBackend::from_url("not a url")?;
            Ok(())
        }),
        row!(
            "URL with a broken host \"redis://[::1\"",
            Backend(Config),
            |_cx| {
                RedisBackend::from_url("redis://[::1")?;
                Ok(())
            }
        ),
        row!("URL with port 99999", Backend(Config), |_cx| {
            RedisBackend::from_url("redis://127.0.0.1:99999")?;
            Ok(())
        }),
        row!("URL with database \"notadb\"", Backend(Config), |_cx| {
            RedisBackend::from_url("redis://127.0.0.1:6379/notadb")?;
            Ok(())
        }),
        row!("URL scheme http://", Backend(Config), |_cx| {
            RedisBackend::from_url("http://127.0.0.1:6379")?;
            Ok(())
        }),
        row!("URL scheme memcached://", Backend(Config), |_cx| {
            RedisBackend::from_url("memcached://127.0.0.1:11211")?;
            Ok(())
        }),
        row!(
            "URL with database 99 (the server has 16), used",
            Backend(Config),
            mentions | _ | "DB index is out of range".into(),
            |cx| {
                let url = format!("{}/99", cx.admin_url().trim_end_matches('/'));
                try_lock_with_backend(&cx, RedisBackend::from_url(&url)?).await
            }
        ),
        // ---- credentials and permissions
        row!(
            "wrong password",
            Backend(Auth),
            mentions | _ | "refused the credentials".into(),
            |cx| {
                let url = cx.url("default", "not-the-password");
                try_lock_with_backend(&cx, RedisBackend::from_url(&url)?).await
            }
        ),
        row!(
            "no password on a server that needs one",
            Backend(Auth),
            |cx| try_lock_with_backend(&cx, RedisBackend::from_url(&cx.server)?).await
        ),
        row!(
            "no password on a server that needs one, with an owner label",
            Backend(Auth),
            mentions | _ | "refused the credentials".into(),
            |cx| {
                // A longer command: Redis refuses more than 10 arguments
                // from a client that has not authenticated with a protocol
                // error ("unauthenticated multibulk length"), not NOAUTH.
                let locker = Locker::new(RedisBackend::from_url(&cx.server)?)
                    .with_prefix(&cx.prefix)?
                    .with_defaults(LockOptions::default().with_owner("job-7"))?;
                if let Some(guard) = locker.try_lock(&cx.name).await? {
                    guard.release().await?;
                }
                Ok(())
            }
        ),
        row!("unknown ACL user", Backend(Auth), |cx| {
            let url = cx.url("nobody", LOCKER_PASSWORD);
            try_lock_with_backend(&cx, RedisBackend::from_url(&url)?).await
        }),
        row!("ACL user, wrong password", Backend(Auth), |cx| {
            let url = cx.url("locker", "not-the-password");
            try_lock_with_backend(&cx, RedisBackend::from_url(&url)?).await
        }),
        row!(
            "ACL user, key prefix outside ~distlock:*",
            Backend(Permission),
            mentions | cx | format!("other:{}{{", cx.prefix),
            |cx| {
                let config =
                    RedisConfig::new(cx.url("locker", LOCKER_PASSWORD)).with_key_prefix("other:");
                try_lock_with_backend(&cx, RedisBackend::from_config(&config)?).await
            }
        ),
        // ---- keys of another type
        row!(
            "lock key holds a hash (WRONGTYPE)",
            Backend(WrongType),
            mentions | cx | KeyLayout::default().lock_key(&cx.key()),
            |cx| {
                let lock = KeyLayout::default().lock_key(&cx.key());
                let _: () = cx.admin().await.hset(&lock, "f", "v").await.unwrap();
                cx.plant(&lock);
                try_lock_opts(&cx, cx.name.as_bytes(), opts()).await
            }
        ),
        row!(
            "fence key holds a list (WRONGTYPE)",
            Backend(WrongType),
            mentions | cx | KeyLayout::default().keys(&cx.key()).fence,
            |cx| {
                let fence = KeyLayout::default().keys(&cx.key()).fence;
                let _: () = cx.admin().await.rpush(&fence, "x").await.unwrap();
                cx.plant(&fence);
                try_lock_opts(&cx, cx.name.as_bytes(), opts()).await
            }
        ),
        row!(
            "fence key holds a non-number string",
            Backend(WrongType),
            mentions | cx | KeyLayout::default().keys(&cx.key()).fence,
            |cx| {
                let fence = KeyLayout::default().keys(&cx.key()).fence;
                let _: () = cx.admin().await.set(&fence, "not a number").await.unwrap();
                cx.plant(&fence);
                try_lock_opts(&cx, cx.name.as_bytes(), opts()).await
            }
        ),
        row!(
            "lock key holds a set; inspect (WRONGTYPE)",
            Backend(WrongType),
            |cx| {
                let lock = KeyLayout::default().lock_key(&cx.key());
                let _: () = cx.admin().await.sadd(&lock, "m").await.unwrap();
                cx.plant(&lock);
                cx.locker().inspect(&cx.name).await?;
                Ok(())
            }
        ),
        // ---- configuration files (TOML through serde) and settings
        row!(
            "RedisConfig TOML with unknown field pool_sise",
            Toml("unknown field `pool_sise`"),
            |cx| {
                cx.config_toml("pool_sise = 3")?;
                Ok(())
            }
        ),
        row!(
            "RedisConfig TOML command_timeout = \"30 parsecs\"",
            Toml("invalid value: string \"30 parsecs\", expected a duration"),
            |cx| {
                cx.config_toml("command_timeout = \"30 parsecs\"")?;
                Ok(())
            }
        ),
        row!(
            "RedisConfig TOML command_timeout = \"-1s\"",
            Toml("invalid value: string \"-1s\", expected a duration"),
            |cx| {
                cx.config_toml("command_timeout = \"-1s\"")?;
                Ok(())
            }
        ),
        row!(
            "RedisConfig TOML command_timeout = 5 (no unit)",
            Toml("invalid type: integer `5`"),
            |cx| {
                cx.config_toml("command_timeout = 5")?;
                Ok(())
            }
        ),
        row!(
            "RedisConfig TOML pool_size = \"many\"",
            Toml("invalid type: string \"many\""),
            |cx| {
                cx.config_toml("pool_size = \"many\"")?;
                Ok(())
            }
        ),
        row!(
            "RedisConfig TOML pool_size = -1",
            Toml("invalid value: integer `-1`"),
            |cx| {
                cx.config_toml("pool_size = -1")?;
                Ok(())
            }
        ),
        row!(
            "RedisConfig TOML without url",
            Toml("missing field `url`"),
            |_cx| {
                toml::from_str::<RedisConfig>("pool_size = 3")?;
                Ok(())
            }
        ),
        row!(
            "LockOptions TOML with unknown field tll",
            Toml("unknown field `tll`"),
            |_cx| {
                toml::from_str::<LockOptions>("tll = \"10s\"")?;
                Ok(())
            }
        ),
        row!(
            "LockOptions TOML ttl = \"0s\", used as defaults",
            InvalidTtl,
            |cx| {
                let defaults: LockOptions = toml::from_str("ttl = \"0s\"")?;
                cx.locker().with_defaults(defaults)?;
                Ok(())
            }
        ),
        row!(
            "LockOptions TOML wait_timeout = \"100years\", used",
            InvalidOptions,
            |cx| {
                let o: LockOptions = toml::from_str("wait_timeout = \"100years\"")?;
                try_lock_opts(&cx, cx.name.as_bytes(), o).await
            }
        ),
        row!("RedisConfig pool_size = 0", Backend(Config), |cx| {
            let config = cx.config_toml("pool_size = 0")?;
            RedisBackend::from_config(&config)?;
            Ok(())
        }),
        row!(
            "RedisConfig command_timeout = \"0s\"",
            Backend(Config),
            |cx| {
                let config = cx.config_toml("command_timeout = \"0s\"")?;
                RedisBackend::from_config(&config)?;
                Ok(())
            }
        ),
        row!("key_prefix of 257 bytes", Backend(Config), |cx| {
            let config = RedisConfig::new(cx.admin_url()).with_key_prefix("k".repeat(257));
            RedisBackend::from_config(&config)?;
            Ok(())
        }),
        row!(
            "key_prefix with braces \"locks{x}:\"",
            Backend(Config),
            |cx| {
                let config = RedisConfig::new(cx.admin_url()).with_key_prefix("locks{x}:");
                RedisBackend::from_config(&config)?;
                Ok(())
            }
        ),
        row!("key_prefix with a newline", Backend(Config), |cx| {
            let config = RedisConfig::new(cx.admin_url()).with_key_prefix("locks\n:");
            RedisBackend::from_config(&config)?;
            Ok(())
        }),
        row!("tls_ca_cert with a redis:// URL", Backend(Config), |cx| {
            let config = cx.config_toml("tls_ca_cert = \"/etc/ssl/ca.pem\"")?;
            RedisBackend::from_config(&config)?;
            Ok(())
        }),
        row!(
            "RedisConfig TOML topology single with nodes (a cluster meant)",
            Toml("does not take the field `nodes`"),
            |_cx| {
                toml::from_str::<RedisConfig>(
                    "url = \"redis://h\"\n[topology]\nmode = \"single\"\nnodes = [\"redis://h2\"]",
                )?;
                Ok(())
            }
        ),
        row!(
            "RedisConfig TOML topology cluster with master_name",
            Toml("does not take the field `master_name`"),
            |_cx| {
                toml::from_str::<RedisConfig>(
                    "url = \"redis://h\"\n[topology]\nmode = \"cluster\"\nmaster_name = \"m\"",
                )?;
                Ok(())
            }
        ),
        row!(
            "topology cluster with a url selecting database 3",
            Backend(Config),
            |_cx| {
                let config: RedisConfig = toml::from_str(
                    "url = \"redis://127.0.0.1:1/3\"\n[topology]\nmode = \"cluster\"",
                )?;
                RedisBackend::from_config(&config)?;
                Ok(())
            }
        ),
        row!(
            "topology cluster with a unix socket among the nodes",
            Backend(Config),
            |_cx| {
                let config: RedisConfig = toml::from_str(
                    "url = \"redis://127.0.0.1:1\"\n[topology]\nmode = \"cluster\"\nnodes = [\"redis+unix:///tmp/x.sock\"]",
                )?;
                RedisBackend::from_config(&config)?;
                Ok(())
            }
        ),
        row!(
            "topology cluster with a unix socket url",
            Backend(Config),
            |_cx| {
                let config: RedisConfig = toml::from_str(
                    "url = \"redis+unix:///tmp/distlock-none.sock\"\n[topology]\nmode = \"cluster\"",
                )?;
                RedisBackend::from_config(&config)?;
                Ok(())
            }
        ),
        row!(
            "tls_client_cert without tls_client_key",
            Backend(Config),
            |_cx| {
                let config: RedisConfig = toml::from_str(
                    "url = \"rediss://127.0.0.1:1\"\ntls_client_cert = \"/etc/ssl/client.pem\"",
                )?;
                RedisBackend::from_config(&config)?;
                Ok(())
            }
        ),
    ]
}

async fn try_lock_with_backend(cx: &Cx, backend: RedisBackend) -> Result<(), Failure> {
    let locker = Locker::new(backend).with_prefix(&cx.prefix)?;
    if let Some(guard) = locker.try_lock(&cx.name).await? {
        guard.release().await?;
    }
    Ok(())
}

/// Keys of `cx`'s namespace under any backend prefix, except release
/// tombstones (the background release of a failed acquire leaves one so
/// that a late copy of the acquire cannot take the lock): those are checked
/// here to expire within `RELEASE_TOMBSTONE_TTL`, and are not lock state.
async fn namespace_keys(cx: &Cx) -> Vec<String> {
    let mut admin = cx.admin().await;
    let mut found = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("*{}{{*", cx.prefix))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut admin)
            .await
            .unwrap();
        for key in keys {
            if key.contains(distlock_redis::TOMBSTONE_INFIX) {
                let pttl: i64 = admin.pttl(&key).await.unwrap();
                let limit = distlock_redis::RELEASE_TOMBSTONE_TTL.as_millis() as i64;
                assert!(pttl > 0 && pttl <= limit, "tombstone {key} PTTL {pttl}");
            } else {
                found.push(key);
            }
        }
        if next == 0 {
            return found;
        }
        cursor = next;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_table() {
    let server =
        RedisServer::start_process(ProcessOptions::new().args(["--requirepass", ADMIN_PASSWORD]));
    let setup = Cx {
        server: server.url().to_owned(),
        prefix: String::new(),
        name: String::new(),
        planted: Arc::default(),
    };
    let () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("locker")
        .arg("reset")
        .arg("on")
        .arg(format!(">{LOCKER_PASSWORD}"))
        .arg("~distlock:*")
        .arg("&distlock:*")
        .arg("+@all")
        .query_async(&mut setup.admin().await)
        .await
        .unwrap();

    let rows = rows();
    assert!(rows.len() >= 20, "the table needs at least 20 rows");
    let mut wrong = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let cx = Cx {
            prefix: format!("bad{i:02}.{}", std::process::id()),
            name: format!("lock-{i:02}"),
            planted: Arc::default(),
            server: setup.server.clone(),
        };
        let outcome = tokio::time::timeout(Duration::from_secs(20), (row.run)(cx.clone()))
            .await
            .unwrap_or_else(|_| panic!("row {i} ({}) hung", row.input));
        let (ok, got) = match &outcome {
            Ok(()) => (false, "accepted (no error)".to_owned()),
            Err(failure) => {
                let mentioned = match (row.mentions, failure) {
                    (Some(text), Failure::Lock(e)) => e.to_string().contains(&text(&cx)),
                    (Some(_), Failure::Toml(_)) => false,
                    (None, _) => true,
                };
                (
                    row.expect.matches(failure) && mentioned,
                    failure.to_string(),
                )
            }
        };

        // No lock left behind: only what the row planted is in its namespace.
        let planted = cx.planted.lock().unwrap().clone();
        let mut left: Vec<String> = namespace_keys(&cx).await;
        left.retain(|k| !planted.contains(k));
        let mut admin = cx.admin().await;
        for key in &planted {
            let kind: String = redis::cmd("TYPE")
                .arg(key)
                .query_async(&mut admin)
                .await
                .unwrap();
            assert_ne!(kind, "none", "row {i}: the planted {key} is gone");
            let _: i64 = admin.del(key).await.unwrap();
        }
        // And the row's lock name is free.
        let probe = cx
            .locker()
            .try_lock(&cx.name)
            .await
            .unwrap_or_else(|e| panic!("row {i}: probe failed: {e}"));
        let free = match probe {
            Some(guard) => guard.release().await.unwrap() == Release::Released,
            None => false,
        };

        let verdict = if ok && left.is_empty() && free {
            "ok"
        } else {
            "WRONG"
        };
        println!(
            "row {i:02} {verdict:5} | {:<52} | expect {:<22} | got {got}{}",
            row.input,
            format!("{:?}", row.expect),
            if left.is_empty() && free {
                String::new()
            } else {
                format!(" | LEFT BEHIND: {left:?}, name free: {free}")
            }
        );
        if verdict != "ok" {
            wrong.push(format!("row {i:02}: {}", row.input));
        }
    }
    println!("{} rows, {} wrong", rows.len(), wrong.len());
    assert!(wrong.is_empty(), "rows with the wrong outcome: {wrong:#?}");
}
