//! The Redis side of locks: key names and the Lua scripts, one method each,
//! with typed replies. Every key of a lock shares the `{name}` hash tag.
//!
//! With `LOCK_REPLICA_ACKS`, every call that grants, extends or releases is
//! followed on the same connection by `WAIT n timeout`, which covers the
//! script's write. A short count fails the call as if its reply had been
//! lost, so the callers' existing "it may have run: undo it" paths apply: an
//! unconfirmed grant is released again and its caller gets 503; an
//! unconfirmed extend or release is answered 503.

use std::future::Future;
use std::time::Duration;

use futures_util::future::Either;
use tracing::Instrument;
use tracing::instrument::Instrumented;

use redis::aio::ConnectionLike;
use redis::{RedisResult, Script, ScriptInvocation, Value};

use super::domain::{Grant, Holder, LockName, LockState, LockToken, NotHeldReason};
use crate::config::ReplicaAcks;
use crate::pools::redis::WaitForReplicas;

/// The detail of the error a call fails with when too few replicas confirmed it.
const NOT_REPLICATED: &str = "too few Redis replicas acknowledged the change";

/// Whether `error` is a short `WAIT` count (see the module documentation).
pub(crate) fn is_not_replicated(error: &redis::RedisError) -> bool {
    error
        .detail()
        .is_some_and(|d| d.starts_with(NOT_REPLICATED))
}

macro_rules! lock_script {
    ($file:literal) => {
        Script::new(concat!(
            include_str!("scripts/common.lua"),
            "\n",
            include_str!(concat!("scripts/", $file))
        ))
    };
}

/// The five keys of one lock (see scripts/common.lua).
pub struct LockKeys {
    keys: [String; 5],
}

/// One replica's identity in the scripts: its id and its wake list.
#[derive(Debug, Clone)]
pub(crate) struct Replica {
    /// 16 random hex digits, new at every start.
    pub id: String,
    /// The list the scripts push offers and alarms to, or on a cluster
    /// `!` and the channel they publish them to (see scripts/common.lua).
    pub wake: String,
}

impl Replica {
    /// The wake channel on a cluster (the wake address without its `!`).
    pub(crate) fn wake_channel(&self) -> &str {
        self.wake.strip_prefix('!').unwrap_or(&self.wake)
    }
}

/// What the acquire script needs besides the keys.
pub(crate) struct AcquireCall<'a> {
    pub permits: u32,
    pub lease_ms: u64,
    /// Time left to wait (0: try once).
    pub wait_ms: u64,
    pub replica: &'a Replica,
    /// The ticket the waiter would queue under.
    pub ticket: &'a str,
    /// Ends the token of the grant, so the grant can be found again.
    pub nonce: &'a str,
    /// Fences of a lock created now start above this.
    pub fence_floor: u64,
}

/// What the acquire script did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquireOutcome {
    /// A free slot was granted at once.
    Granted(Grant),
    /// The lock exists with another permits value.
    PermitsMismatch(u32),
    /// No free slot, and waiting was not asked for.
    Busy,
    /// The ticket is queued; the earliest deadline of the lock (Redis ms, if
    /// any) and Redis' clock now.
    Queued {
        earliest_ms: Option<u64>,
        now_ms: u64,
    },
    /// The request had already given up (this call reached Redis too late).
    GaveUp,
}

/// What a claim or a cancel at the deadline did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claimed {
    /// The slot is the waiter's.
    Granted(Grant),
    /// Nothing was offered to this ticket (any longer).
    Nothing,
}

/// What reaping found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reaped {
    /// Leases that ran out.
    pub expired: u64,
    /// How long until the lock's earliest deadline, if any.
    pub next_in: Option<Duration>,
}

/// One local waiter, as `sync` re-checks it.
pub(crate) struct SyncTicket<'a> {
    pub ticket: &'a str,
    pub lease_ms: u64,
    pub wait_left_ms: u64,
    pub nonce: &'a str,
}

/// What `sync` says of one ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TicketState {
    /// Still queued.
    Queued,
    /// Queued again at the back (Redis had lost or skipped it).
    Requeued,
    /// A slot waits for it: claim it.
    Offered { token: LockToken, fence: u64 },
    /// The lock now has another permits value.
    Mismatch,
    /// The request had given up already.
    GaveUp,
}

/// What `sync` found.
pub(crate) struct Synced {
    /// How long until the lock's earliest deadline, if any.
    pub next_in: Option<Duration>,
    /// The lock's permits now.
    pub permits: u32,
    /// One per ticket asked about, in order.
    pub tickets: Vec<TicketState>,
}

/// The loaded scripts, the key prefix and the replica acknowledgements wanted.
pub struct LockStore {
    prefix: String,
    acks: ReplicaAcks,
    /// On a Redis Cluster: wake messages are published, not pushed.
    cluster: bool,
    acquire: Script,
    claim: Script,
    cancel: Script,
    forget: Script,
    decline: Script,
    release: Script,
    extend: Script,
    reap: Script,
    sync: Script,
    inspect: Script,
}

fn unexpected(what: &str, value: &Value) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Client,
        "unexpected lock script reply",
        format!("{what}: {value:?}"),
    ))
}

fn items<'a>(what: &str, reply: &'a Value) -> RedisResult<&'a [Value]> {
    match reply {
        Value::Array(items) => Ok(items),
        other => Err(unexpected(what, other)),
    }
}

fn at<T: redis::FromRedisValue>(items: &[Value], i: usize, reply: &Value) -> RedisResult<T> {
    let value = items
        .get(i)
        .ok_or_else(|| unexpected("short reply", reply))?;
    Ok(redis::from_redis_value_ref(value)?)
}

/// `deadline - now` as a duration; `None` for "no deadline" (-1).
fn until(deadline_ms: i64, now_ms: i64) -> Option<Duration> {
    (deadline_ms >= 0)
        .then(|| Duration::from_millis(deadline_ms.saturating_sub(now_ms).max(0) as u64))
}

/// 64 random bits as 16 hex digits: nonces, tickets, incarnations, replica ids.
pub(crate) fn random_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl LockStore {
    /// Scripts loaded once; keys under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            acks: ReplicaAcks::OFF,
            cluster: false,
            acquire: lock_script!("acquire.lua"),
            claim: lock_script!("claim.lua"),
            cancel: lock_script!("cancel.lua"),
            forget: lock_script!("forget.lua"),
            decline: lock_script!("decline.lua"),
            release: lock_script!("release.lua"),
            extend: lock_script!("extend.lua"),
            reap: lock_script!("reap.lua"),
            sync: lock_script!("sync.lua"),
            inspect: lock_script!("inspect.lua"),
        }
    }

    /// The same store, confirming every change with `acks` replicas.
    pub fn with_replica_acks(self, acks: ReplicaAcks) -> Self {
        Self { acks, ..self }
    }

    /// The same store, for a Redis Cluster.
    pub fn on_cluster(self, cluster: bool) -> Self {
        Self { cluster, ..self }
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
        if self.acks.replicas == 0 {
            return Ok(());
        }
        let key = &keys.keys[0];
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

    /// The keys of lock `name`.
    pub fn keys(&self, name: &LockName) -> LockKeys {
        let base = format!("{}lock:{{{}}}", self.prefix, name.as_str());
        LockKeys {
            keys: ["meta", "held", "queue", "ended", "gone"].map(|k| format!("{base}:{k}")),
        }
    }

    /// The wake address of replica `id`: its list (Redis without cluster
    /// mode lets a script push to any key), or `!` and its channel on a cluster.
    pub(crate) fn wake_key(&self, id: &str) -> String {
        let channel = if self.cluster { "!" } else { "" };
        format!("{channel}{}wake:{id}", self.prefix)
    }

    fn call<'a>(
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

    /// Creates the lock if needed, checks permits, grants at once when a slot
    /// is free and nobody waits, else queues the ticket (when waiting).
    pub(crate) async fn acquire<C: WaitForReplicas>(
        &self,
        conn: &mut C,
        name: &LockName,
        call: &AcquireCall<'_>,
    ) -> RedisResult<AcquireOutcome> {
        let keys = self.keys(name);
        let reply: Value = self
            .call(&self.acquire, &keys, name)
            .arg(call.permits)
            .arg(call.lease_ms)
            .arg(call.wait_ms)
            .arg(&call.replica.id)
            .arg(&call.replica.wake)
            .arg(call.ticket)
            .arg(call.nonce)
            .arg(call.fence_floor)
            .invoke_async(conn)
            .traced("acquire", name)
            .await?;
        let items = items("acquire", &reply)?;
        let tag: String = at(items, 0, &reply)?;
        Ok(match tag.as_str() {
            "granted" => {
                self.replicated(conn, &keys).await?;
                AcquireOutcome::Granted(Grant {
                    token: LockToken::minted(at(items, 1, &reply)?),
                    fence: at(items, 2, &reply)?,
                    deadline_ms: at(items, 3, &reply)?,
                })
            }
            "mismatch" => AcquireOutcome::PermitsMismatch(at(items, 1, &reply)?),
            "busy" => AcquireOutcome::Busy,
            "gone" => AcquireOutcome::GaveUp,
            "queued" => {
                let earliest: i64 = at(items, 1, &reply)?;
                AcquireOutcome::Queued {
                    earliest_ms: u64::try_from(earliest).ok(),
                    now_ms: at(items, 2, &reply)?,
                }
            }
            _ => return Err(unexpected("acquire", &reply)),
        })
    }

    /// The simplest use, for the benchmark's direct strategy: a slot now or `None`.
    pub async fn try_acquire<C: WaitForReplicas>(
        &self,
        conn: &mut C,
        name: &LockName,
        permits: u32,
        lease: Duration,
    ) -> RedisResult<Option<Grant>> {
        let replica = Replica {
            id: random_id(),
            wake: self.wake_key("direct"),
        };
        let call = AcquireCall {
            permits,
            lease_ms: lease.as_millis() as u64,
            wait_ms: 0,
            replica: &replica,
            ticket: "",
            nonce: &random_id(),
            fence_floor: 0,
        };
        Ok(match self.acquire(conn, name, &call).await? {
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
        offer: (&LockToken, u64),
        lease_ms: u64,
        replica: &Replica,
    ) -> RedisResult<Claimed> {
        let keys = self.keys(name);
        let reply: Value = self
            .call(&self.claim, &keys, name)
            .arg(ticket)
            .arg(offer.0.as_str())
            .arg(offer.1)
            .arg(lease_ms)
            .arg(&replica.id)
            .invoke_async(conn)
            .traced("claim", name)
            .await?;
        let items = items("claim", &reply)?;
        let tag: String = at(items, 0, &reply)?;
        Ok(match tag.as_str() {
            "granted" => {
                self.replicated(conn, &keys).await?;
                Claimed::Granted(Grant {
                    token: offer.0.clone(),
                    fence: offer.1,
                    deadline_ms: at(items, 1, &reply)?,
                })
            }
            _ => Claimed::Nothing,
        })
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
            .call(&self.cancel, &keys, name)
            .arg(ticket)
            .arg(lease_ms)
            .invoke_async(conn)
            .traced("cancel", name)
            .await?;
        let items = items("cancel", &reply)?;
        let tag: String = at(items, 0, &reply)?;
        Ok(match tag.as_str() {
            "granted" => {
                self.replicated(conn, &keys).await?;
                Claimed::Granted(Grant {
                    token: LockToken::minted(at(items, 1, &reply)?),
                    fence: at(items, 2, &reply)?,
                    deadline_ms: at(items, 3, &reply)?,
                })
            }
            _ => Claimed::Nothing,
        })
    }

    /// A waiter gave up: its ticket leaves, an offer to it moves on, and with
    /// `scan` a grant made for `nonce` is released. Returns the slots handed back.
    pub(crate) async fn forget<C: ConnectionLike>(
        &self,
        conn: &mut C,
        name: &LockName,
        ticket: &str,
        nonce: &str,
        scan: bool,
    ) -> RedisResult<u64> {
        self.call(&self.forget, &self.keys(name), name)
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
        offer: (&LockToken, u64),
    ) -> RedisResult<bool> {
        let passed: i64 = self
            .call(&self.decline, &self.keys(name), name)
            .arg(ticket)
            .arg(offer.0.as_str())
            .arg(offer.1)
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
        let keys = self.keys(name);
        let reply: Value = self
            .call(&self.release, &keys, name)
            .arg(token.as_str())
            .invoke_async(conn)
            .traced("release", name)
            .await?;
        let items = items("release", &reply)?;
        let tag: String = at(items, 0, &reply)?;
        Ok(match tag.as_str() {
            "released" => {
                self.replicated(conn, &keys).await?;
                Ok(())
            }
            _ => Err(NotHeldReason::from_script(&at::<String>(items, 1, &reply)?)),
        })
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
            .call(&self.extend, &keys, name)
            .arg(token.as_str())
            .arg(lease_ms)
            .invoke_async(conn)
            .traced("extend", name)
            .await?;
        let items = items("extend", &reply)?;
        let tag: String = at(items, 0, &reply)?;
        Ok(match tag.as_str() {
            "extended" => {
                let deadline = at(items, 1, &reply)?;
                self.replicated(conn, &keys).await?;
                Ok(deadline)
            }
            _ => Err(NotHeldReason::from_script(&at::<String>(items, 1, &reply)?)),
        })
    }

    /// Ends what expired and serves the queue; says when the next deadline is.
    pub(crate) async fn reap<C: ConnectionLike>(
        &self,
        conn: &mut C,
        name: &LockName,
        replica: &Replica,
    ) -> RedisResult<Reaped> {
        let (expired, earliest, now): (u64, i64, i64) = self
            .call(&self.reap, &self.keys(name), name)
            .arg(&replica.id)
            .invoke_async(conn)
            .traced("reap", name)
            .await?;
        Ok(Reaped {
            expired,
            next_in: until(earliest, now),
        })
    }

    /// Re-checks a replica's tickets of `name`; queues again those Redis lost.
    pub(crate) async fn sync<C: ConnectionLike>(
        &self,
        conn: &mut C,
        name: &LockName,
        permits: u32,
        replica: &Replica,
        fence_floor: u64,
        tickets: &[SyncTicket<'_>],
    ) -> RedisResult<Synced> {
        let mut call = self.call(&self.sync, &self.keys(name), name);
        call.arg(permits)
            .arg(&replica.id)
            .arg(&replica.wake)
            .arg(fence_floor)
            .arg(random_id());
        for t in tickets {
            call.arg(t.ticket)
                .arg(t.lease_ms)
                .arg(t.wait_left_ms)
                .arg(t.nonce);
        }
        let reply: Value = call.invoke_async(conn).traced("sync", name).await?;
        let items = items("sync", &reply)?;
        let (earliest, now): (i64, i64) = (at(items, 0, &reply)?, at(items, 1, &reply)?);
        let mut states = Vec::with_capacity(tickets.len());
        for i in 3..items.len() {
            let word: String = at(items, i, &reply)?;
            states.push(match word.as_str() {
                "q" => TicketState::Queued,
                "r" => TicketState::Requeued,
                "x" => TicketState::Mismatch,
                "g" => TicketState::GaveUp,
                offer => {
                    // "o|<fence>|<token>"
                    let mut parts = offer.splitn(3, '|').skip(1);
                    let fence = parts.next().and_then(|f| f.parse().ok());
                    let token = parts.next();
                    match (fence, token) {
                        (Some(fence), Some(token)) => TicketState::Offered {
                            token: LockToken::minted(token.to_owned()),
                            fence,
                        },
                        _ => return Err(unexpected("sync", &reply)),
                    }
                }
            });
        }
        Ok(Synced {
            next_in: until(earliest, now),
            permits: at(items, 2, &reply)?,
            tickets: states,
        })
    }

    /// The lock as it is now; with `token`, whether that token holds it.
    pub(crate) async fn inspect<C: ConnectionLike>(
        &self,
        conn: &mut C,
        name: &LockName,
        token: Option<&LockToken>,
    ) -> RedisResult<LockState> {
        let reply: Value = self
            .call(&self.inspect, &self.keys(name), name)
            .arg(token.map_or("", LockToken::as_str))
            .invoke_async(conn)
            .traced("inspect", name)
            .await?;
        let items = items("inspect", &reply)?;
        let permits: i64 = at(items, 0, &reply)?;
        let fence: i64 = at(items, 3, &reply)?;
        let pairs: Vec<u64> = at(items, 5, &reply)?;
        let holders = pairs
            .chunks_exact(2)
            .map(|pair| Holder {
                fence: pair[0],
                deadline_ms: pair[1],
            })
            .collect();
        let token_state: String = at(items, 6, &reply)?;
        let token_deadline: i64 = at(items, 7, &reply)?;
        Ok(LockState {
            permits: u32::try_from(permits).ok(),
            holders,
            waiting: at(items, 2, &reply)?,
            fence: (permits >= 0).then_some(fence as u64),
            token: match token_state.as_str() {
                "" => None,
                "held" => Some(Ok(token_deadline.max(0) as u64)),
                reason => Some(Err(NotHeldReason::from_script(reason))),
            },
        })
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
