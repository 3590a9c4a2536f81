//! The Redis side of locks: key names and the Lua scripts, one method each.

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{RedisResult, Script, Value};

use super::domain::{LockName, LockToken};

/// A slot handed to a replica by BLPOP and not yet claimed is recreated after
/// this long: long enough that a busy but alive replica claims in time, short
/// enough that a killed one costs waiters a few seconds at most.
pub(super) const HANDOFF_GRACE: Duration = Duration::from_secs(5);

macro_rules! lock_script {
    ($file:literal) => {
        Script::new(concat!(
            include_str!("scripts/common.lua"),
            "\n",
            include_str!(concat!("scripts/", $file))
        ))
    };
}

/// The five keys of one lock, all sharing the `{name}` hash tag.
pub struct LockKeys {
    keys: [String; 5],
}

impl LockKeys {
    /// The list of free slot ids (BLPOP here).
    pub fn free(&self) -> &str {
        &self.keys[0]
    }
}

/// A successful grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The bearer token for release/extend.
    pub token: LockToken,
    /// Strictly increasing per name.
    pub fence: u64,
    /// Lease deadline, Unix ms on the Redis clock.
    pub deadline_ms: u64,
}

/// What the acquire script found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquireOutcome {
    /// A free slot was granted at once.
    Granted(Grant),
    /// The lock exists with another permits value.
    PermitsMismatch(u32),
    /// No free slot: wait (leases end at `earliest_deadline_ms`, if any).
    Empty,
}

/// What reaping found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReapOutcome {
    /// Expired grants moved back to free.
    pub expired: u64,
    /// Milliseconds until the earliest remaining lease ends, if any.
    pub next_deadline_in: Option<Duration>,
}

/// The loaded scripts and the key prefix.
pub struct LockStore {
    prefix: String,
    acquire: Script,
    claim: Script,
    give_back: Script,
    release: Script,
    extend: Script,
    reap: Script,
}

fn grace_ms() -> u64 {
    HANDOFF_GRACE.as_millis() as u64
}

fn unexpected(what: &str, value: &Value) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Client,
        "unexpected lock script reply",
        format!("{what}: {value:?}"),
    ))
}

fn parse_grant(items: &[Value], reply: &Value) -> RedisResult<Grant> {
    match items {
        [_, token, fence, deadline] => Ok(Grant {
            token: LockToken::minted(redis::from_redis_value_ref(token)?),
            fence: redis::from_redis_value_ref(fence)?,
            deadline_ms: redis::from_redis_value_ref(deadline)?,
        }),
        _ => Err(unexpected("grant", reply)),
    }
}

fn tag(items: &[Value]) -> Option<String> {
    items
        .first()
        .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
}

impl LockStore {
    /// Scripts loaded once; keys under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            acquire: lock_script!("acquire.lua"),
            claim: lock_script!("claim.lua"),
            give_back: lock_script!("give_back.lua"),
            release: lock_script!("release.lua"),
            extend: lock_script!("extend.lua"),
            reap: lock_script!("reap.lua"),
        }
    }

    /// The keys of lock `name`.
    pub fn keys(&self, name: &LockName) -> LockKeys {
        let base = format!("{}lock:{{{}}}", self.prefix, name.as_str());
        let keys = ["free", "held", "meta", "slots", "handoff"].map(|k| format!("{base}:{k}"));
        LockKeys { keys }
    }

    fn invocation<'a>(&self, script: &'a Script, keys: &LockKeys) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        for key in &keys.keys {
            invocation.key(key);
        }
        invocation
    }

    /// Creates the lock if new, checks permits, reaps, and grants a free slot when `take` is set.
    pub async fn acquire<C: ConnectionLike>(
        &self,
        conn: &mut C,
        keys: &LockKeys,
        permits: u32,
        lease: Duration,
        take: bool,
    ) -> RedisResult<AcquireOutcome> {
        let reply: Value = self
            .invocation(&self.acquire, keys)
            .arg(permits)
            .arg(lease.as_millis() as u64)
            .arg(nonce())
            .arg(grace_ms())
            .arg(if take { "1" } else { "0" })
            .invoke_async(conn)
            .await?;
        let Value::Array(items) = &reply else {
            return Err(unexpected("acquire", &reply));
        };
        match tag(items).as_deref() {
            Some("granted") => Ok(AcquireOutcome::Granted(parse_grant(items, &reply)?)),
            Some("mismatch") => Ok(AcquireOutcome::PermitsMismatch(
                redis::from_redis_value_ref(&items[1])?,
            )),
            Some("empty") => Ok(AcquireOutcome::Empty),
            _ => Err(unexpected("acquire", &reply)),
        }
    }

    /// Grants `slot` (just popped by BLPOP); `None` if the slot was recreated meanwhile.
    pub async fn claim<C: ConnectionLike>(
        &self,
        conn: &mut C,
        keys: &LockKeys,
        slot: &str,
        lease: Duration,
    ) -> RedisResult<Option<Grant>> {
        let reply: Value = self
            .invocation(&self.claim, keys)
            .arg(slot)
            .arg(lease.as_millis() as u64)
            .arg(nonce())
            .invoke_async(conn)
            .await?;
        let Value::Array(items) = &reply else {
            return Err(unexpected("claim", &reply));
        };
        match tag(items).as_deref() {
            Some("granted") => parse_grant(items, &reply).map(Some),
            Some("gone") => Ok(None),
            _ => Err(unexpected("claim", &reply)),
        }
    }

    /// Puts an unclaimed `slot` back at the front of free.
    pub async fn give_back<C: ConnectionLike>(
        &self,
        conn: &mut C,
        keys: &LockKeys,
        slot: &str,
    ) -> RedisResult<()> {
        let _: i64 = self
            .invocation(&self.give_back, keys)
            .arg(slot)
            .invoke_async(conn)
            .await?;
        Ok(())
    }

    /// Ends the grant `token` if it is live; `false` when it does not hold the lock.
    pub async fn release<C: ConnectionLike>(
        &self,
        conn: &mut C,
        keys: &LockKeys,
        token: &LockToken,
    ) -> RedisResult<bool> {
        let released: i64 = self
            .invocation(&self.release, keys)
            .arg(token.as_str())
            .arg(grace_ms())
            .invoke_async(conn)
            .await?;
        Ok(released == 1)
    }

    /// Moves a live grant's deadline to now + `lease`; `None` when it does not hold the lock.
    pub async fn extend<C: ConnectionLike>(
        &self,
        conn: &mut C,
        keys: &LockKeys,
        token: &LockToken,
        lease: Duration,
    ) -> RedisResult<Option<u64>> {
        let deadline: i64 = self
            .invocation(&self.extend, keys)
            .arg(token.as_str())
            .arg(lease.as_millis() as u64)
            .arg(grace_ms())
            .invoke_async(conn)
            .await?;
        Ok(u64::try_from(deadline).ok())
    }

    /// Reaps expired grants and lost slots; says when the next lease ends.
    pub async fn reap<C: ConnectionLike>(
        &self,
        conn: &mut C,
        keys: &LockKeys,
    ) -> RedisResult<ReapOutcome> {
        let (expired, earliest, now): (u64, i64, i64) = self
            .invocation(&self.reap, keys)
            .arg(grace_ms())
            .invoke_async(conn)
            .await?;
        let next_deadline_in = (earliest >= 0)
            .then(|| Duration::from_millis(earliest.saturating_sub(now).max(0) as u64));
        Ok(ReapOutcome {
            expired,
            next_deadline_in,
        })
    }
}

/// 64 random bits in every token: tokens cannot be guessed from slot and fence.
fn nonce() -> String {
    format!("{:016x}", rand::random::<u64>())
}
