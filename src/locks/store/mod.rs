//! The Redis side of locks: key names and the Lua scripts, one method each;
//! replies are read in `replies`. Every key of a lock shares the `{name}`
//! hash tag, so a lock lives on one Redis Cluster node.
//!
//! With `LOCK_REPLICA_ACKS`, every call that grants, extends or releases is
//! followed on the same connection by `WAIT n timeout`, which covers the
//! script's write. A short count fails the call as if its reply had been
//! lost, so the callers' existing "it may have run: undo it" paths apply: an
//! unconfirmed grant is released again and its caller gets 503; an
//! unconfirmed extend or release is answered 503.

mod replies;

use std::future::Future;
use std::time::Duration;

use futures_util::future::Either;
use redis::aio::ConnectionLike;
use redis::{RedisResult, Script, ScriptInvocation, Value};
use tracing::Instrument;
use tracing::instrument::Instrumented;

pub use self::replies::AcquireOutcome;
pub(crate) use self::replies::{Claimed, Reaped, Synced, TicketState};
use super::domain::{Grant, LockName, LockState, LockToken, NotHeldReason};
use crate::config::ReplicaAcks;
use crate::pools::redis::{Checkout, WaitForReplicas};

/// The detail of the error a call fails with when too few replicas confirmed it.
const NOT_REPLICATED: &str = "too few Redis replicas acknowledged the change";

/// Whether `error` is a short `WAIT` count (see the module documentation).
pub(crate) fn is_not_replicated(error: &redis::RedisError) -> bool {
    error
        .detail()
        .is_some_and(|d| d.starts_with(NOT_REPLICATED))
}

/// A script: `common.lua`, then the script's own files.
macro_rules! lock_script {
    ($($file:literal),+) => {
        script(concat!(
            include_str!("scripts/common.lua"),
            $("\n", include_str!(concat!("scripts/", $file))),+
        ))
    };
}

fn script(text: &str) -> Script {
    #[cfg(debug_assertions)]
    if let Some(broken) = sabotage::apply(text) {
        return Script::new(&broken);
    }
    Script::new(text)
}

/// Debug builds only: a deliberately broken engine, so the lock checker
/// (bench/lockcheck) can show that it finds what it is meant to find.
/// `MIDDLEWAY_TEST_SABOTAGE_LOCKS=permits` grants without checking permits;
/// `=fences` grants the last fence + 1, with no floor (the Redis clock, the
/// replica's highest seen), as v2 did. Release builds have no such switch.
#[cfg(debug_assertions)]
mod sabotage {
    /// The variable that picks a sabotage.
    const VARIABLE: &str = "MIDDLEWAY_TEST_SABOTAGE_LOCKS";

    /// `text` broken as the variable asks, or `None`.
    pub(super) fn apply(text: &str) -> Option<String> {
        let kind = std::env::var(VARIABLE).ok()?;
        let (sound, broken) = match kind.as_str() {
            "permits" => (
                "if held_count(s) < s.permits and s.waiting == 0 then",
                "if s.waiting == 0 then",
            ),
            "fences" => (
                "local fence = math.max(s.fence + 1, now.us, (floor or 0) + 1)",
                "local fence = s.fence + 1",
            ),
            other => panic!("{VARIABLE}={other}: expected permits or fences"),
        };
        text.contains(sound).then(|| {
            tracing::warn!("{VARIABLE}={kind}: THE LOCK ENGINE IS BROKEN ON PURPOSE");
            text.replace(sound, broken)
        })
    }
}

/// The five keys of one lock (see scripts/common.lua).
pub struct LockKeys {
    keys: [String; 5],
}

impl LockKeys {
    /// The lock's `meta` hash (the key a lock's WAIT is routed by).
    pub(crate) fn meta(&self) -> &str {
        &self.keys[0]
    }
}

/// 64 random bits as 16 hex digits: nonces, tickets, incarnations, replica ids.
pub(crate) fn random_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// What an acquire needs besides the lock's keys.
pub(crate) struct AcquireCall {
    pub permits: u32,
    pub lease_ms: u64,
    /// Time left to wait (0: try once).
    pub wait_ms: u64,
    /// The replica the ticket belongs to (its wake channel is named after it).
    pub replica: String,
    /// The ticket the waiter would queue under.
    pub ticket: String,
    /// Ends the token of the grant, so the grant can be found again.
    pub nonce: String,
    /// Fences granted now are above this (the highest this replica has seen).
    pub fence_floor: u64,
}

/// One call of `batch.lua`: many requests' acquires and releases go to
/// Redis in one script run (see `locks::batch`).
pub(crate) enum LockCall {
    Acquire(LockName, AcquireCall),
    Release(LockName, LockToken),
}

impl LockCall {
    /// The lock the call is on.
    pub(crate) fn name(&self) -> &LockName {
        match self {
            Self::Acquire(name, _) | Self::Release(name, _) => name,
        }
    }
}

/// What one call of a batch answered.
#[derive(Debug)]
pub(crate) enum LockReply {
    Acquire(AcquireOutcome),
    Release(Result<(), NotHeldReason>),
}

impl LockReply {
    /// Whether it changed the lock in a way `LOCK_REPLICA_ACKS` must confirm
    /// (a grant made, a grant ended); refusals need no confirmation.
    pub(crate) fn changed_the_lock(&self) -> bool {
        matches!(
            self,
            Self::Acquire(AcquireOutcome::Granted(_)) | Self::Release(Ok(()))
        )
    }
}

/// One local waiter, as `sync` re-checks it.
pub(crate) struct SyncTicket {
    pub ticket: String,
    pub lease_ms: u64,
    pub wait_left_ms: u64,
    pub nonce: String,
    /// Its place in line, once it had one (Redis clock, µs).
    pub arrival_us: Option<u64>,
}

/// What `sync` needs besides the tickets.
pub(crate) struct SyncCall<'a> {
    pub permits: u32,
    pub replica: &'a str,
    pub fence_floor: u64,
    pub tickets: &'a [SyncTicket],
}

/// The loaded scripts, the key prefix and the replica acknowledgements wanted.
pub struct LockStore {
    prefix: String,
    acks: ReplicaAcks,
    scripts: Scripts,
}

struct Scripts {
    batch: Script,
    claim: Script,
    cancel: Script,
    forget: Script,
    decline: Script,
    extend: Script,
    reap: Script,
    sync: Script,
    inspect: Script,
}

impl Scripts {
    fn load() -> Self {
        Self {
            batch: lock_script!("acquire.lua", "release.lua", "batch.lua"),
            claim: lock_script!("claim.lua"),
            cancel: lock_script!("cancel.lua"),
            forget: lock_script!("forget.lua"),
            decline: lock_script!("decline.lua"),
            extend: lock_script!("extend.lua"),
            reap: lock_script!("reap.lua"),
            sync: lock_script!("sync.lua"),
            inspect: lock_script!("inspect.lua"),
        }
    }
}

impl LockStore {
    /// Scripts loaded once; keys under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            acks: ReplicaAcks::OFF,
            scripts: Scripts::load(),
        }
    }

    /// The same store, confirming every change with `acks` replicas.
    pub fn with_replica_acks(self, acks: ReplicaAcks) -> Self {
        Self { acks, ..self }
    }

    /// The keys of lock `name`.
    pub fn keys(&self, name: &LockName) -> LockKeys {
        // Built by hand: `format!` showed in the lock path's profile (2 % of
        // the service's CPU for these six strings per call).
        let base_len = self.prefix.len() + "lock3:{}".len() + name.as_str().len();
        LockKeys {
            keys: ["meta", "held", "queue", "ended", "gone"].map(|suffix| {
                let mut key = String::with_capacity(base_len + 1 + suffix.len());
                key.push_str(&self.prefix);
                key.push_str("lock3:{");
                key.push_str(name.as_str());
                key.push_str("}:");
                key.push_str(suffix);
                key
            }),
        }
    }

    /// The Pub/Sub channel of replica `id`: its offers, alarms and skipped tickets.
    pub(crate) fn wake_channel(&self, id: &str) -> String {
        format!("{}wake:{id}", self.prefix)
    }

    /// The channel every replica hears: locks created (again).
    pub(crate) fn events_channel(&self) -> String {
        format!("{}lock-events", self.prefix)
    }

    /// With replica acknowledgements on: waits (WAIT) until enough replicas
    /// have every write this connection made, and fails the call if they do
    /// not within the timeout. A multiplexed connection's other callers may
    /// have written meanwhile; WAIT then covers their writes too, never fewer.
    async fn replicated<C: WaitForReplicas>(
        &self,
        conn: &mut C,
        keys: &LockKeys,
    ) -> RedisResult<()> {
        self.confirm_replicated(conn, &keys.keys[0]).await
    }

    /// Whether changes must be confirmed by replicas (`LOCK_REPLICA_ACKS`).
    pub(crate) fn confirms_changes(&self) -> bool {
        self.acks.replicas > 0
    }

    /// How a call that may change a lock takes its connection: held when a
    /// WAIT follows the change, so the WAIT holds up no other call.
    pub(crate) fn checkout_for_changes(&self) -> Checkout {
        if self.confirms_changes() {
            Checkout::Held
        } else {
            Checkout::Shared
        }
    }

    /// With replica acknowledgements on, waits until enough replicas have
    /// every write this connection made to the node of `key` (see
    /// [`Self::replicated`]).
    pub(crate) async fn confirm_replicated<C: WaitForReplicas>(
        &self,
        conn: &mut C,
        key: &str,
    ) -> RedisResult<()> {
        if self.acks.replicas == 0 {
            return Ok(());
        }
        let timeout_ms = self.acks.timeout.as_millis() as u64;
        let acked = conn
            .wait_for_replicas(key, self.acks.replicas, timeout_ms)
            .await?;
        if acked >= self.acks.replicas {
            return Ok(());
        }
        Err(redis::RedisError::from((
            redis::ErrorKind::Client,
            "lock change not replicated",
            format!("{NOT_REPLICATED}: {acked} of {}", self.acks.replicas),
        )))
    }

    fn invocation<'a>(
        &self,
        script: &'a Script,
        keys: &LockKeys,
        name: &LockName,
    ) -> ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        for key in &keys.keys {
            invocation.key(key);
        }
        invocation.arg(name.as_str());
        invocation
    }

    /// Runs `calls` in one script run (`batch.lua`): what each answered,
    /// in order, or the Redis error of that call alone. Changes are not
    /// confirmed by replicas here: see [`Self::confirm_replicated`].
    pub(crate) async fn batch<C: ConnectionLike>(
        &self,
        conn: &mut C,
        calls: &[&LockCall],
    ) -> RedisResult<Vec<RedisResult<LockReply>>> {
        let mut invocation = self.scripts.batch.prepare_invoke();
        for call in calls {
            for key in &self.keys(call.name()).keys {
                invocation.key(key);
            }
            match call {
                LockCall::Acquire(name, a) => invocation
                    .arg("a")
                    .arg(name.as_str())
                    .arg(a.permits)
                    .arg(a.lease_ms)
                    .arg(a.wait_ms)
                    .arg(&a.replica)
                    .arg(&a.ticket)
                    .arg(&a.nonce)
                    .arg(a.fence_floor),
                LockCall::Release(name, token) => {
                    invocation.arg("r").arg(name.as_str()).arg(token.as_str())
                }
            };
        }
        let first = calls.first().map(|call| call.name());
        let reply: Value = match first {
            Some(name) => invocation.invoke_async(conn).traced("batch", name).await?,
            None => return Ok(Vec::new()),
        };
        let Value::Array(replies) = reply else {
            return Err(replies::unexpected("batch", &reply));
        };
        if replies.len() != calls.len() {
            return Err(replies::unexpected("batch", &Value::Array(replies)));
        }
        Ok(calls
            .iter()
            .zip(&replies)
            .map(|(call, reply)| {
                replies::call_failure(reply)?;
                match call {
                    LockCall::Acquire(..) => replies::acquire(reply).map(LockReply::Acquire),
                    LockCall::Release(..) => replies::release(reply).map(LockReply::Release),
                }
            })
            .collect())
    }

    /// One call alone (a batch of one), its change confirmed by replicas
    /// when `LOCK_REPLICA_ACKS` asks for it.
    async fn single<C: WaitForReplicas>(
        &self,
        conn: &mut C,
        call: LockCall,
    ) -> RedisResult<LockReply> {
        let reply = self.batch(conn, &[&call]).await?.pop();
        let reply = reply.unwrap_or_else(|| Err(replies::unexpected("batch", &Value::Nil)))?;
        if reply.changed_the_lock() {
            self.replicated(conn, &self.keys(call.name())).await?;
        }
        Ok(reply)
    }

    /// Creates the lock if needed, checks permits, grants at once when a slot
    /// is free and nobody waits, else queues the ticket (when waiting).
    pub(crate) async fn acquire<C: WaitForReplicas>(
        &self,
        conn: &mut C,
        name: &LockName,
        call: AcquireCall,
    ) -> RedisResult<AcquireOutcome> {
        match self
            .single(conn, LockCall::Acquire(name.clone(), call))
            .await?
        {
            LockReply::Acquire(outcome) => Ok(outcome),
            LockReply::Release(_) => Err(replies::unexpected("acquire", &Value::Nil)),
        }
    }

    /// The simplest use, for the benchmark's direct strategy: a slot now or `None`.
    pub async fn try_acquire<C: WaitForReplicas>(
        &self,
        conn: &mut C,
        name: &LockName,
        permits: u32,
        lease: Duration,
    ) -> RedisResult<Option<Grant>> {
        let call = AcquireCall {
            permits,
            lease_ms: lease.as_millis() as u64,
            wait_ms: 0,
            replica: "direct".into(),
            ticket: String::new(),
            nonce: random_id(),
            fence_floor: 0,
        };
        Ok(match self.acquire(conn, name, call).await? {
            AcquireOutcome::Granted(grant) => Some(grant),
            _ => None,
        })
    }

    /// The ticket's replica takes the slot offered to it; the lease starts now.
    pub(crate) async fn claim<C: WaitForReplicas>(
        &self,
        conn: &mut C,
        name: &LockName,
        ticket: &str,
        offer: &LockToken,
        lease_ms: u64,
        replica: &str,
    ) -> RedisResult<Claimed> {
        let keys = self.keys(name);
        let reply: Value = self
            .invocation(&self.scripts.claim, &keys, name)
            .arg(ticket)
            .arg(offer.as_str())
            .arg(lease_ms)
            .arg(replica)
            .invoke_async(conn)
            .traced("claim", name)
            .await?;
        let claimed = replies::claim(&reply, offer)?;
        if matches!(claimed, Claimed::Granted(_)) {
            self.replicated(conn, &keys).await?;
        }
        Ok(claimed)
    }

    /// A wait ran out: takes a slot offered meanwhile, or leaves the queue.
    pub(crate) async fn cancel<C: WaitForReplicas>(
        &self,
        conn: &mut C,
        name: &LockName,
        ticket: &str,
        lease_ms: u64,
    ) -> RedisResult<Claimed> {
        let keys = self.keys(name);
        let reply: Value = self
            .invocation(&self.scripts.cancel, &keys, name)
            .arg(ticket)
            .arg(lease_ms)
            .invoke_async(conn)
            .traced("cancel", name)
            .await?;
        let claimed = replies::cancel(&reply)?;
        if matches!(claimed, Claimed::Granted(_)) {
            self.replicated(conn, &keys).await?;
        }
        Ok(claimed)
    }

    /// A request gave up: late calls of it grant nothing, its ticket leaves,
    /// an offer to it moves on, and with `scan` a grant made for `nonce` is
    /// released. Returns the slots handed back.
    pub(crate) async fn forget<C: ConnectionLike>(
        &self,
        conn: &mut C,
        name: &LockName,
        ticket: &str,
        nonce: &str,
        scan: bool,
    ) -> RedisResult<u64> {
        self.invocation(&self.scripts.forget, &self.keys(name), name)
            .arg(ticket)
            .arg(nonce)
            .arg(if scan { "1" } else { "0" })
            .invoke_async(conn)
            .traced("forget", name)
            .await
    }

    /// An offer reached a replica whose waiter has gone: pass it on, unless claimed.
    pub(crate) async fn decline<C: ConnectionLike>(
        &self,
        conn: &mut C,
        name: &LockName,
        ticket: &str,
        offer: &LockToken,
    ) -> RedisResult<bool> {
        let passed: i64 = self
            .invocation(&self.scripts.decline, &self.keys(name), name)
            .arg(ticket)
            .arg(offer.as_str())
            .invoke_async(conn)
            .traced("decline", name)
            .await?;
        Ok(passed == 1)
    }

    /// Ends the grant `token` if it holds the lock now.
    pub async fn release<C: WaitForReplicas>(
        &self,
        conn: &mut C,
        name: &LockName,
        token: &LockToken,
    ) -> RedisResult<Result<(), NotHeldReason>> {
        match self
            .single(conn, LockCall::Release(name.clone(), token.clone()))
            .await?
        {
            LockReply::Release(released) => Ok(released),
            LockReply::Acquire(_) => Err(replies::unexpected("release", &Value::Nil)),
        }
    }

    /// Moves a live grant's deadline to now + `lease_ms`; the new deadline.
    pub(crate) async fn extend<C: WaitForReplicas>(
        &self,
        conn: &mut C,
        name: &LockName,
        token: &LockToken,
        lease_ms: u64,
    ) -> RedisResult<Result<u64, NotHeldReason>> {
        let keys = self.keys(name);
        let reply: Value = self
            .invocation(&self.scripts.extend, &keys, name)
            .arg(token.as_str())
            .arg(lease_ms)
            .invoke_async(conn)
            .traced("extend", name)
            .await?;
        let extended = replies::extend(&reply)?;
        if extended.is_ok() {
            self.replicated(conn, &keys).await?;
        }
        Ok(extended)
    }

    /// Ends what expired and serves the queue; says when the next deadline is.
    pub(crate) async fn reap<C: ConnectionLike>(
        &self,
        conn: &mut C,
        name: &LockName,
        replica: &str,
    ) -> RedisResult<Reaped> {
        let reply: Value = self
            .invocation(&self.scripts.reap, &self.keys(name), name)
            .arg(replica)
            .invoke_async(conn)
            .traced("reap", name)
            .await?;
        replies::reap(&reply)
    }

    /// Re-checks a replica's tickets of `name`; queues again those Redis lost.
    pub(crate) async fn sync<C: ConnectionLike>(
        &self,
        conn: &mut C,
        name: &LockName,
        call: &SyncCall<'_>,
    ) -> RedisResult<Synced> {
        let mut invocation = self.invocation(&self.scripts.sync, &self.keys(name), name);
        invocation
            .arg(call.permits)
            .arg(call.replica)
            .arg(call.fence_floor)
            .arg(random_id());
        for t in call.tickets {
            invocation
                .arg(&t.ticket)
                .arg(t.lease_ms)
                .arg(t.wait_left_ms)
                .arg(&t.nonce)
                .arg(t.arrival_us.unwrap_or(0));
        }
        let reply: Value = invocation.invoke_async(conn).traced("sync", name).await?;
        replies::sync(&reply)
    }

    /// The lock as it is now; with `token`, whether that token holds it;
    /// with `list_holders`, every live grant (else only their count).
    pub(crate) async fn inspect<C: ConnectionLike>(
        &self,
        conn: &mut C,
        name: &LockName,
        token: Option<&LockToken>,
        list_holders: bool,
    ) -> RedisResult<LockState> {
        let reply: Value = self
            .invocation(&self.scripts.inspect, &self.keys(name), name)
            .arg(token.map_or("", LockToken::as_str))
            .arg(if list_holders { "1" } else { "0" })
            .invoke_async(conn)
            .traced("inspect", name)
            .await?;
        replies::inspect(&reply)
    }
}

/// A script call, as a span of its own when traces are exported (and as
/// itself, at no cost, when they are not).
trait Traced: Future + Sized {
    fn traced(self, script: &'static str, name: &LockName) -> Either<Self, Instrumented<Self>> {
        if !crate::telemetry::otel::enabled() {
            return Either::Left(self);
        }
        let span = tracing::debug_span!(
            "redis.script",
            otel.kind = "client",
            db.system.name = "redis",
            db.operation.name = script,
            lock.name = name.as_str(),
        );
        Either::Right(self.instrument(span))
    }
}

impl<F: Future> Traced for F {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locks_keys_share_its_hash_tag_and_the_prefix_common_lua_strips() {
        let store = LockStore::new("app:");
        let name = LockName::parse("device-42").expect("valid name");
        assert_eq!(
            store.keys(&name).keys,
            ["meta", "held", "queue", "ended", "gone"]
                .map(|k| format!("app:lock3:{{device-42}}:{k}"))
        );
    }
}
