//! The Lua scripts (one per operation, one round trip each), the commands
//! that run them, and the parsing of their replies.
//!
//! A script is sent as `EVALSHA`; when Redis answers `NOSCRIPT` (after a
//! restart, a `SCRIPT FLUSH`, or a failover to a server that never saw the
//! script) it is sent once more as `EVAL` with its body, which runs it and
//! caches it again. There is no `SCRIPT LOAD` in between, so no second flush
//! can slip between loading and running: a call survives any number of
//! flushes.

use std::sync::LazyLock;
use std::time::Duration;

use distlock::{Acquire, BackendError, BackendErrorKind, LockInfo, RaiseFence, WaiterId};
use redis::{Cmd, Value};

/// The source of the acquire script (the fence helper of `lib.lua`, then
/// `acquire.lua`; not the line of waiters' helpers of `queue.lua`, which
/// every run would define again for nothing).
pub const ACQUIRE_LUA: &str = concat!(
    include_str!("../lua/lib.lua"),
    include_str!("../lua/acquire.lua")
);
/// The source of the script a waiting `lock()` call runs
/// ([`LockBackend::try_acquire_queued`](distlock::LockBackend::try_acquire_queued)):
/// `lib.lua`, `queue.lua` (the line of waiters' helpers), then
/// `acquire_queued.lua`.
pub const ACQUIRE_QUEUED_LUA: &str = concat!(
    include_str!("../lua/lib.lua"),
    include_str!("../lua/queue.lua"),
    include_str!("../lua/acquire_queued.lua")
);
/// The source of the extend script.
pub const EXTEND_LUA: &str = include_str!("../lua/extend.lua");
/// The source of the release script (`lib.lua`, `queue.lua`, then
/// `release.lua`): it hands the lock to the first live waiter in line, if
/// any.
pub const RELEASE_LUA: &str = concat!(
    include_str!("../lua/lib.lua"),
    include_str!("../lua/queue.lua"),
    include_str!("../lua/release.lua")
);
/// The source of the inspect script.
pub const INSPECT_LUA: &str = include_str!("../lua/inspect.lua");
/// The source of the raise_fence script (quorum fencing).
pub const RAISE_FENCE_LUA: &str = include_str!("../lua/raise_fence.lua");

pub(crate) static ACQUIRE: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new(ACQUIRE_LUA));
pub(crate) static ACQUIRE_QUEUED: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new(ACQUIRE_QUEUED_LUA));
pub(crate) static EXTEND: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new(EXTEND_LUA));
pub(crate) static RELEASE: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new(RELEASE_LUA));
pub(crate) static INSPECT: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new(INSPECT_LUA));
pub(crate) static RAISE_FENCE: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new(RAISE_FENCE_LUA));

/// A script's body and its SHA1 (the name `EVALSHA` runs it by).
pub(crate) struct LuaScript {
    body: &'static str,
    sha: String,
}

impl LuaScript {
    fn new(body: &'static str) -> Self {
        Self {
            body,
            // The SHA1 of the body, as Redis computes it.
            sha: redis::Script::new(body).get_hash().to_owned(),
        }
    }

    /// One run of this script with `keys` and `args`.
    pub(crate) fn call(&'static self, keys: Vec<String>, args: Vec<String>) -> ScriptCall {
        let bytes = keys.iter().chain(&args).map(String::len).sum();
        let mut items = ScriptArgs::with_capacity(bytes, keys.len() + args.len());
        for key in &keys {
            items.push(&[key]);
        }
        items.end_keys();
        for arg in &args {
            items.push(&[arg]);
        }
        self.call_with(items)
    }

    /// One run of this script with the keys and arguments of `items`.
    pub(crate) fn call_with(&'static self, items: ScriptArgs) -> ScriptCall {
        ScriptCall {
            script: self,
            items,
        }
    }
}

/// The keys, then the arguments, of one script run, in one buffer: one
/// allocation for all of them instead of one `String` each (the hot path
/// builds a call per acquire and per release).
pub(crate) struct ScriptArgs {
    buf: String,
    /// The end of each item in `buf`.
    ends: Vec<usize>,
    /// How many of the items are keys.
    keys: usize,
}

impl ScriptArgs {
    /// Room for `bytes` bytes in `count` items.
    pub(crate) fn with_capacity(bytes: usize, count: usize) -> Self {
        Self {
            buf: String::with_capacity(bytes),
            ends: Vec::with_capacity(count),
            keys: 0,
        }
    }

    /// Adds one item, the concatenation of `parts`.
    pub(crate) fn push(&mut self, parts: &[&str]) {
        for part in parts {
            self.buf.push_str(part);
        }
        self.ends.push(self.buf.len());
    }

    /// The items so far are the keys; the next ones are arguments.
    pub(crate) fn end_keys(&mut self) {
        self.keys = self.ends.len();
    }

    fn items(&self) -> impl Iterator<Item = &str> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let item = &self.buf[start..end];
            start = end;
            item
        })
    }
}

/// One run of a [`LuaScript`]: the same keys and arguments, sent as
/// `EVALSHA` or as `EVAL`.
pub(crate) struct ScriptCall {
    script: &'static LuaScript,
    items: ScriptArgs,
}

impl ScriptCall {
    /// `EVALSHA sha numkeys keys… args…`.
    pub(crate) fn evalsha(&self) -> Cmd {
        self.command("EVALSHA", &self.script.sha)
    }

    /// `EVAL body numkeys keys… args…`: runs the script and caches it, for
    /// the answer `NOSCRIPT`.
    pub(crate) fn eval(&self) -> Cmd {
        self.command("EVAL", self.script.body)
    }

    fn command(&self, name: &str, script: &str) -> Cmd {
        // Sized up front: one allocation each for the bytes and the
        // argument list, not a regrowth per argument.
        let count = 3 + self.items.ends.len();
        let bytes = name.len() + script.len() + 20 + self.items.buf.len();
        let mut cmd = Cmd::with_capacity(count, bytes);
        cmd.arg(name).arg(script).arg(self.items.keys);
        for item in self.items.items() {
            cmd.arg(item);
        }
        cmd
    }
}

fn protocol(op: &str, reply: &Value) -> BackendError {
    BackendError::new(
        BackendErrorKind::Protocol,
        format!("unexpected reply to the {op} script: {reply:?}"),
    )
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// A PTTL reply as a remaining lease: `None` for "no expiry" or "no key".
fn remaining(pttl: i64) -> Option<Duration> {
    u64::try_from(pttl).ok().map(Duration::from_millis)
}

fn optional_fence(v: &Value) -> Option<Option<u64>> {
    match v {
        Value::Nil => Some(None),
        other => int(other).and_then(|n| u64::try_from(n).ok()).map(Some),
    }
}

/// Parses `{1, fence}` / `{0, pttl}`.
pub(crate) fn parse_acquire(reply: &Value) -> Result<Acquire, BackendError> {
    let bad = || protocol("acquire", reply);
    let Value::Array(items) = reply else {
        return Err(bad());
    };
    match items.as_slice() {
        [flag, n] => match (int(flag), int(n)) {
            (Some(1), Some(fence)) => Ok(Acquire::Acquired {
                fence: u64::try_from(fence).map_err(|_| bad())?,
            }),
            (Some(0), Some(pttl)) => Ok(Acquire::Held {
                remaining: remaining(pttl),
            }),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

/// Parses the `1` / `0` of extend and release.
pub(crate) fn parse_flag(op: &str, reply: &Value) -> Result<bool, BackendError> {
    match int(reply) {
        Some(1) => Ok(true),
        Some(0) => Ok(false),
        _ => Err(protocol(op, reply)),
    }
}

/// What the release script did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Released {
    /// `0`: the token does not hold the lock (its place in line, if any,
    /// was given back).
    NotHeld,
    /// `1`: released; nobody live was in line, so the release channel heard
    /// of it.
    Freed,
    /// `"BACKEND WAITER"`: released and handed over to this waiter of the
    /// backend with this id.
    HandedOver {
        /// The id of the backend whose waiter got the lock.
        backend: u64,
        /// The waiter.
        waiter: WaiterId,
    },
}

/// Parses the `0` / `1` / `"BACKEND WAITER"` of release.
pub(crate) fn parse_release(reply: &Value) -> Result<Released, BackendError> {
    let bad = || protocol("release", reply);
    match reply {
        Value::Int(0) => Ok(Released::NotHeld),
        Value::Int(1) => Ok(Released::Freed),
        Value::BulkString(b) => {
            let text = std::str::from_utf8(b).map_err(|_| bad())?;
            let (backend, waiter) = text.split_once(' ').ok_or_else(bad)?;
            let backend = WaiterId::from_hex(backend).ok_or_else(bad)?.to_u64();
            let waiter = WaiterId::from_hex(waiter).ok_or_else(bad)?;
            Ok(Released::HandedOver { backend, waiter })
        }
        _ => Err(bad()),
    }
}

/// Parses `{1, fence}` / `{0}` of raise_fence.
pub(crate) fn parse_raise_fence(reply: &Value) -> Result<RaiseFence, BackendError> {
    let bad = || protocol("raise_fence", reply);
    let Value::Array(items) = reply else {
        return Err(bad());
    };
    match items.as_slice() {
        [flag] if int(flag) == Some(0) => Ok(RaiseFence::NotHeld),
        [flag, fence] if int(flag) == Some(1) => {
            let fence = int(fence)
                .and_then(|n| u64::try_from(n).ok())
                .ok_or_else(bad)?;
            Ok(RaiseFence::Raised { fence })
        }
        _ => Err(bad()),
    }
}

/// Parses `{held, pttl, owner, fence}`.
pub(crate) fn parse_inspect(reply: &Value) -> Result<LockInfo, BackendError> {
    let bad = || protocol("inspect", reply);
    let Value::Array(items) = reply else {
        return Err(bad());
    };
    let [held, pttl, owner, fence] = items.as_slice() else {
        return Err(bad());
    };
    let last_fence = optional_fence(fence).ok_or_else(bad)?;
    match int(held) {
        Some(0) => Ok(LockInfo::free(last_fence)),
        Some(1) => {
            let owner = match owner {
                Value::Nil => None,
                Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => return Err(bad()),
            };
            let pttl = int(pttl).ok_or_else(bad)?;
            Ok(LockInfo::held(owner, remaining(pttl), last_fence))
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn replies_parse() {
        let acquired = Value::Array(vec![Value::Int(1), Value::Int(7)]);
        assert_eq!(
            parse_acquire(&acquired).unwrap(),
            Acquire::Acquired { fence: 7 }
        );
        let held = Value::Array(vec![Value::Int(0), Value::Int(1500)]);
        assert_eq!(
            parse_acquire(&held).unwrap(),
            Acquire::Held {
                remaining: Some(Duration::from_millis(1500))
            }
        );
        let forever = Value::Array(vec![Value::Int(0), Value::Int(-1)]);
        assert_eq!(
            parse_acquire(&forever).unwrap(),
            Acquire::Held { remaining: None }
        );
        assert!(parse_flag("extend", &Value::Int(1)).unwrap());
        assert_eq!(parse_release(&Value::Int(0)).unwrap(), Released::NotHeld);
        assert_eq!(parse_release(&Value::Int(1)).unwrap(), Released::Freed);
        assert_eq!(
            parse_release(&bulk("00000000000000ff 0123456789abcdef")).unwrap(),
            Released::HandedOver {
                backend: 0xff,
                waiter: WaiterId::from_u64(0x0123_4567_89ab_cdef)
            }
        );

        let info = Value::Array(vec![Value::Int(1), Value::Int(900), bulk("w1"), bulk("3")]);
        let info = parse_inspect(&info).unwrap();
        assert!(info.held);
        assert_eq!(info.owner.as_deref(), Some("w1"));
        assert_eq!(info.last_fence, Some(3));
        let free = Value::Array(vec![Value::Int(0), Value::Int(-2), Value::Nil, Value::Nil]);
        assert_eq!(parse_inspect(&free).unwrap(), LockInfo::free(None));
    }

    #[test]
    fn garbage_is_a_protocol_error_not_a_panic() {
        for v in [
            Value::Nil,
            Value::Int(5),
            Value::Array(vec![]),
            Value::Array(vec![Value::Int(1), Value::Int(-3)]),
            Value::Array(vec![Value::Int(2), Value::Int(1)]),
            Value::Array(vec![bulk("x"), Value::Nil]),
        ] {
            let e = parse_acquire(&v).unwrap_err();
            assert_eq!(e.kind(), BackendErrorKind::Protocol);
            assert_eq!(
                parse_inspect(&v).unwrap_err().kind(),
                BackendErrorKind::Protocol
            );
        }
        assert!(parse_flag("extend", &Value::Int(2)).is_err());
        for v in [
            Value::Nil,
            Value::Int(2),
            bulk(""),
            bulk("00000000000000ff"),
            bulk("ff 0123456789abcdef"),
            bulk("00000000000000ff 0123456789abcdeg"),
            bulk("00000000000000ff  0123456789abcdef"),
            Value::BulkString(vec![0xff, 0xfe]),
        ] {
            let e = parse_release(&v).unwrap_err();
            assert_eq!(e.kind(), BackendErrorKind::Protocol, "{v:?}");
        }
        for v in [
            Value::Nil,
            Value::Array(vec![]),
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Int(1), bulk("-4")]),
            Value::Array(vec![Value::Int(2), bulk("4")]),
        ] {
            let e = parse_raise_fence(&v).unwrap_err();
            assert_eq!(e.kind(), BackendErrorKind::Protocol, "{v:?}");
        }
        assert_eq!(
            parse_raise_fence(&Value::Array(vec![Value::Int(1), bulk("1764000000000123")]))
                .unwrap(),
            RaiseFence::Raised {
                fence: 1_764_000_000_000_123
            }
        );
        assert_eq!(
            parse_raise_fence(&Value::Array(vec![Value::Int(0)])).unwrap(),
            RaiseFence::NotHeld
        );
    }
}
