//! Group lock calls: the acquires and releases one worker's requests make
//! while its earlier calls are on their way to Redis go together, in one
//! run of `batch.lua`, as soon as one of those comes back.
//!
//! A script run's fixed costs in Redis (reading the command, finding the
//! script, running `common.lua`'s prelude, the reply, the syscalls) were most
//! of an uncontended acquire's cost; paid once per batch they shrink with
//! load. Nothing waits on purpose: a call made while the worker has fewer
//! than [`MAX_RUNS_IN_FLIGHT`] runs on their way and none queued goes alone
//! and at once, from its caller's own task, so batching costs no latency
//! when idle (group commit, as the read path's `transcriptions::batcher`).
//!
//! Each call's caller waits at most [`REDIS_CALL_TIMEOUT`] from the moment it
//! queued, whatever Redis does. A caller that left before its call was sent
//! takes it out (its request's clean-up covers the rest). With
//! `LOCK_REPLICA_ACKS`, the calls that changed a lock wait for the replicas'
//! confirmation in a task of their own; the others are answered at once.
//!
//! On a Redis Cluster every call goes alone, at once: calls rarely share a
//! hash slot (a script's keys must), the cluster connection already keeps
//! many in flight per node, and a run waiting on a node that is failing
//! over must not hold up calls to the others.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;
use tracing::Instrument;

use super::call::{CallFailed, REDIS_CALL_TIMEOUT, failed, timed_out};
use super::core::Core;
use super::domain::{LockName, LockToken, NotHeldReason};
use super::error::LockError;
use super::store::{AcquireCall, AcquireOutcome, LockCall, LockReply};
use crate::pools::redis::{RedisConnection, RedisPool};
use crate::telemetry::otel;

/// Most calls in one script run: a run blocks Redis while it lasts, and 64
/// uncontended calls take about a millisecond of script time (20 µs each).
const MAX_CALLS_PER_RUN: usize = 64;

/// Script runs one worker keeps on their way at once: one, so the calls made
/// while it is out all go in the next, and none waits for more than one run.
/// (Measured against two in `bench/lock-cpu.sh`, three paired rounds: one
/// gave 10–23 % more pairs/s at 10 callers, 4–6 % at 64, 1–16 % at 250,
/// with 2.4 calls per run at 10 callers instead of 1.5; four lost 7–14 %
/// against two in `bench/run.sh locks`.)
const MAX_RUNS_IN_FLIGHT: usize = 1;

/// One worker's lock calls, sent in as few script runs as its load allows.
#[derive(Clone)]
pub(crate) struct CallBatcher {
    inner: Arc<Inner>,
}

struct Inner {
    /// The store (scripts, keys, replica acknowledgements) of the engine.
    core: Arc<Core>,
    /// The worker's connections.
    pool: RedisPool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Calls not sent yet, in the order made.
    queue: VecDeque<Pending>,
    /// Sender tasks running (each sends one run at a time).
    senders: usize,
}

/// A call and its caller.
struct Pending {
    call: LockCall,
    caller: Caller,
    /// The caller's span, when traces are exported: a run's span is a child
    /// of its first call's request.
    span: Option<tracing::Span>,
}

/// Where a call's answer goes, typed by the kind of call.
enum Caller {
    Acquire(oneshot::Sender<Result<AcquireOutcome, CallFailed>>),
    Release(oneshot::Sender<Result<Result<(), NotHeldReason>, CallFailed>>),
}

impl Caller {
    fn left(&self) -> bool {
        match self {
            Self::Acquire(tx) => tx.is_closed(),
            Self::Release(tx) => tx.is_closed(),
        }
    }

    /// Answers with the call's reply (of the kind the call was) or its failure.
    fn answer(self, reply: Result<LockReply, CallFailed>) {
        let mismatch = || failed(&mismatched_reply(), true);
        match self {
            Self::Acquire(tx) => {
                let _ = tx.send(reply.and_then(|r| match r {
                    LockReply::Acquire(outcome) => Ok(outcome),
                    LockReply::Release(_) => Err(mismatch()),
                }));
            }
            Self::Release(tx) => {
                let _ = tx.send(reply.and_then(|r| match r {
                    LockReply::Release(released) => Ok(released),
                    LockReply::Acquire(_) => Err(mismatch()),
                }));
            }
        }
    }
}

fn mismatched_reply() -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Client,
        "lock script reply of another kind of call",
    ))
}

impl CallBatcher {
    /// Calls through `pool` (one worker's), with `core`'s store.
    pub(crate) fn new(core: Arc<Core>, pool: RedisPool) -> Self {
        Self {
            inner: Arc::new(Inner {
                core,
                pool,
                state: Mutex::default(),
            }),
        }
    }

    /// The acquire script's outcome for `call` on `name`.
    pub(crate) async fn acquire(
        &self,
        name: &LockName,
        call: AcquireCall,
    ) -> Result<AcquireOutcome, CallFailed> {
        let (tx, rx) = oneshot::channel();
        self.call(
            LockCall::Acquire(name.clone(), call),
            Caller::Acquire(tx),
            rx,
        )
        .await
    }

    /// The release script's outcome for `token` on `name`.
    pub(crate) async fn release(
        &self,
        name: &LockName,
        token: &LockToken,
    ) -> Result<Result<(), NotHeldReason>, CallFailed> {
        let (tx, rx) = oneshot::channel();
        let call = LockCall::Release(name.clone(), token.clone());
        self.call(call, Caller::Release(tx), rx).await
    }

    /// Sends `call` and waits for its answer (through `rx`), within
    /// [`REDIS_CALL_TIMEOUT`]. When the worker has a run to spare and no
    /// call queued, the call goes at once, alone, from the caller's own task
    /// (no hop through another task: an idle service answers as fast as
    /// without batching); otherwise it queues for the next run.
    async fn call<T>(
        &self,
        call: LockCall,
        caller: Caller,
        rx: oneshot::Receiver<Result<T, CallFailed>>,
    ) -> Result<T, CallFailed> {
        let deadline = tokio::time::Instant::now() + REDIS_CALL_TIMEOUT;
        let span = otel::enabled().then(tracing::Span::current);
        let pending = Pending { call, caller, span };
        let alone = {
            let mut state = self.inner.state();
            if self.inner.pool.is_cluster() {
                // Each call alone: see the module documentation.
                state.senders += 1;
                Some(pending)
            } else if state.queue.is_empty() && state.senders < MAX_RUNS_IN_FLIGHT {
                state.senders += 1;
                Some(pending)
            } else {
                state.queue.push_back(pending);
                self.inner.start_sender(&mut state);
                None
            }
        };
        if let Some(pending) = alone {
            // The run slot is given back as soon as the script answered (a
            // WAIT that follows does not hold it), or if this caller leaves.
            let _slot = RunSlot(&self.inner);
            let sent = self.inner.send(vec![pending]);
            if tokio::time::timeout_at(deadline, sent).await.is_err() {
                return Err(timed_out());
            }
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(answer)) => answer,
            // The sender task ended without answering (its runtime is stopping).
            Ok(Err(_)) => Err(CallFailed {
                error: LockError::RedisUnavailable,
                maybe_ran: true,
            }),
            Err(_) => Err(timed_out()),
        }
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding it leaves a consistent queue: keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a sender task for the queue, if the worker has a run to spare.
    fn start_sender(self: &Arc<Self>, state: &mut State) {
        if state.queue.is_empty() || state.senders >= MAX_RUNS_IN_FLIGHT {
            return;
        }
        // No runtime: it is gone, and its callers with it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            state.senders += 1;
            runtime.spawn(Arc::clone(self).send_while_queued());
        }
    }

    /// One sender: runs what is queued, one script run at a time, until
    /// nothing is.
    async fn send_while_queued(self: Arc<Self>) {
        let mut slot = SenderSlot(Some(&self));
        while let Some(batch) = self.next_batch(&mut slot) {
            self.send(batch).await;
        }
    }

    /// The next calls to send (those whose callers are still there), or
    /// `None` when the queue is empty: then this sender ends, in the same
    /// step, so a call queued meanwhile starts another.
    fn next_batch(&self, slot: &mut SenderSlot<'_>) -> Option<Vec<Pending>> {
        let mut state = self.state();
        let mut batch = Vec::new();
        while batch.len() < MAX_CALLS_PER_RUN {
            let Some(pending) = state.queue.pop_front() else {
                break;
            };
            if !pending.caller.left() {
                batch.push(pending);
            }
        }
        if batch.is_empty() {
            state.senders -= 1;
            slot.0 = None;
            return None;
        }
        Some(batch)
    }

    /// Sends `batch` in one script run.
    async fn send(&self, batch: Vec<Pending>) {
        let checkout = self.pool.checkout(self.core.store.checkout_for_changes());
        let conn = match tokio::time::timeout(REDIS_CALL_TIMEOUT, checkout).await {
            Ok(Ok(conn)) => conn,
            // No connection: nothing reached Redis.
            Ok(Err(error)) => return answer_all(batch, failed(&error, false)),
            Err(_) => {
                return answer_all(
                    batch,
                    CallFailed {
                        maybe_ran: false,
                        ..timed_out()
                    },
                );
            }
        };
        self.run(conn, batch).await;
    }

    /// One script run of `batch` on `conn`, and its answers.
    async fn run(&self, mut conn: RedisConnection, batch: Vec<Pending>) {
        let store = &self.core.store;
        let calls: Vec<&LockCall> = batch.iter().map(|p| &p.call).collect();
        let span = batch[0].span.clone().unwrap_or_else(tracing::Span::none);
        let running = store.batch(&mut conn, &calls).instrument(span);
        let replies = tokio::time::timeout(REDIS_CALL_TIMEOUT, running).await;
        let replies = match replies {
            Ok(Ok(replies)) => replies,
            Ok(Err(error)) => return answer_all(batch, failed(&error, true)),
            Err(_) => return answer_all(batch, timed_out()),
        };
        let mut to_confirm = Vec::new();
        for (pending, reply) in batch.into_iter().zip(replies) {
            match reply {
                Ok(reply) if store.confirms_changes() && reply.changed_the_lock() => {
                    to_confirm.push((pending, reply));
                }
                Ok(reply) => pending.caller.answer(Ok(reply)),
                Err(error) => pending.caller.answer(Err(failed(&error, true))),
            }
        }
        if !to_confirm.is_empty() {
            tokio::spawn(confirm(Arc::clone(&self.core), conn, to_confirm));
        }
    }
}

/// Waits for the replicas to confirm the changes of one script run, then
/// answers their callers (with the changes, or with the failure).
async fn confirm(core: Arc<Core>, mut conn: RedisConnection, changed: Vec<(Pending, LockReply)>) {
    let key = core.store.keys(changed[0].0.call.name()).meta().to_owned();
    let confirming = core.store.confirm_replicated(&mut conn, &key);
    let failure = match tokio::time::timeout(REDIS_CALL_TIMEOUT, confirming).await {
        Ok(Ok(())) => {
            for (pending, reply) in changed {
                pending.caller.answer(Ok(reply));
            }
            return;
        }
        Ok(Err(error)) => failed(&error, true),
        Err(_) => timed_out(),
    };
    answer_all(changed.into_iter().map(|(pending, _)| pending), failure);
}

fn answer_all(batch: impl IntoIterator<Item = Pending>, failure: CallFailed) {
    for pending in batch {
        pending.caller.answer(Err(failure));
    }
}

/// A call sent alone, counted in `State::senders` while its script runs:
/// when it ends (answered, timed out, or its caller gone) the slot goes back,
/// and the calls that queued meanwhile get a sender.
struct RunSlot<'a>(&'a Arc<Inner>);

impl Drop for RunSlot<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.senders -= 1;
        self.0.start_sender(&mut state);
    }
}

/// A running sender, counted in `State::senders`: if its task is dropped
/// before the queue emptied (its runtime stopping), the count goes down so
/// that a later call starts a sender again.
struct SenderSlot<'a>(Option<&'a Inner>);

impl Drop for SenderSlot<'_> {
    fn drop(&mut self) {
        if let Some(inner) = self.0 {
            inner.state().senders -= 1;
        }
    }
}
