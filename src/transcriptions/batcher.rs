//! Group reads: the ids asked for while a worker's connections are busy go
//! to MySQL together, in one `IN (...)` query, as soon as one comes free.
//!
//! A query's fixed costs (a round trip, the result's column definitions,
//! MySQL's per-statement work) dwarf the cost of one more primary key, so
//! under load most of a read's cost was that overhead, paid once per id.
//! Nothing waits on purpose: an id asked for while a connection is free goes
//! alone and at once; only ids that would have queued for a connection
//! anyway share the next query (group commit). So batching costs no latency
//! when idle and saves the most when busy (bench/README.md, "Read path").
//!
//! One batcher per HTTP worker, on that worker's thread, over its pools: as
//! many queries at once as the endpoints taking reads have connections for
//! this worker.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use tokio::sync::oneshot;

use tracing::Instrument;

use super::domain::{Transcription, TranscriptionId};
use super::repo::{MAX_IDS_PER_QUERY, ReadError, TranscriptionRepo};
use crate::metrics::Metrics;

/// The ids of one query, each with the callers waiting for its row.
type Batch = Vec<(TranscriptionId, Vec<oneshot::Sender<RowOutcome>>)>;

/// What one id's read yields.
pub(crate) type RowOutcome = Result<Option<Transcription>, ReadError>;

/// Groups one worker's reads into as few queries as its connections allow.
#[derive(Clone)]
pub(crate) struct ReadBatcher {
    inner: Rc<Inner>,
}

struct Inner {
    repo: TranscriptionRepo,
    metrics: Metrics,
    /// How long an id may wait for a connection before its caller gets 503.
    queue_limit: Duration,
    state: RefCell<State>,
}

#[derive(Default)]
struct State {
    /// Ids waiting for a query, in the order first asked.
    queue: VecDeque<TranscriptionId>,
    /// The callers of each queued id. An id not here was taken or withdrawn.
    callers: HashMap<TranscriptionId, Vec<oneshot::Sender<RowOutcome>>>,
    /// The request span of each id's first caller, when traces are exported:
    /// a query's span is a child of its first id's request.
    spans: HashMap<TranscriptionId, tracing::Span>,
    /// Flusher tasks running.
    flushers: usize,
    /// Flushers started that have not taken their first batch yet: while
    /// one exists, a new id will be picked up without starting another.
    starting: usize,
}

impl ReadBatcher {
    /// A batcher over `repo`, running at most as many queries at once as
    /// the repository's endpoints have connections for this worker.
    pub(crate) fn new(repo: TranscriptionRepo, metrics: Metrics, queue_limit: Duration) -> Self {
        Self {
            inner: Rc::new(Inner {
                repo,
                metrics,
                queue_limit,
                state: RefCell::default(),
            }),
        }
    }

    /// The row with this id, read in the next query this worker sends.
    ///
    /// The caller waits at most the acquire timeout for its id to be taken
    /// into a query (then 503, as when no pooled connection comes free);
    /// once taken, the query runs to its end (bounded by the repository)
    /// whether or not the caller is still there. `caller` is the request's
    /// span when traces are exported (the query's span becomes its child).
    pub(crate) async fn read(
        &self,
        id: TranscriptionId,
        caller: Option<tracing::Span>,
    ) -> RowOutcome {
        let mut answer = self.enqueue(id, caller);
        if let Ok(outcome) = tokio::time::timeout(self.inner.queue_limit, &mut answer).await {
            return outcome.unwrap_or(Err(ReadError::Unreachable));
        }
        match self.withdraw(id, answer) {
            None => Err(ReadError::PoolExhausted),
            // Taken into a query: the answer comes when it ends.
            Some(answer) => answer.await.unwrap_or(Err(ReadError::Unreachable)),
        }
    }

    fn enqueue(
        &self,
        id: TranscriptionId,
        caller: Option<tracing::Span>,
    ) -> oneshot::Receiver<RowOutcome> {
        let (tx, rx) = oneshot::channel();
        let mut state = self.inner.state.borrow_mut();
        let callers = state.callers.entry(id).or_default();
        let first = callers.is_empty();
        callers.push(tx);
        if first {
            state.queue.push_back(id);
            if let Some(span) = caller {
                state.spans.insert(id, span);
            }
        }
        if state.starting == 0 && state.flushers < self.inner.repo.max_queries().max(1) {
            state.flushers += 1;
            state.starting += 1;
            tokio::task::spawn_local(Rc::clone(&self.inner).flush());
        }
        rx
    }

    /// Takes a caller whose wait ran out off the queue, or hands its
    /// receiver back when its id was already taken into a query.
    fn withdraw(
        &self,
        id: TranscriptionId,
        answer: oneshot::Receiver<RowOutcome>,
    ) -> Option<oneshot::Receiver<RowOutcome>> {
        let mut state = self.inner.state.borrow_mut();
        let Some(callers) = state.callers.get_mut(&id) else {
            return Some(answer);
        };
        drop(answer);
        callers.retain(|caller| !caller.is_closed());
        if callers.is_empty() {
            state.callers.remove(&id);
            state.spans.remove(&id);
        }
        None
    }
}

/// A running flusher's place in the counts, given back however it ends.
struct FlusherSlot {
    inner: Rc<Inner>,
    starting: bool,
}

impl Drop for FlusherSlot {
    fn drop(&mut self) {
        let mut state = self.inner.state.borrow_mut();
        state.flushers -= 1;
        if self.starting {
            state.starting -= 1;
        }
    }
}

impl Inner {
    /// Sends queued ids to MySQL, up to a hundred per query, until none is left.
    async fn flush(self: Rc<Self>) {
        let mut slot = FlusherSlot {
            inner: Rc::clone(&self),
            starting: true,
        };
        loop {
            let (batch, parent) = self.take_batch(&mut slot);
            if batch.is_empty() {
                return;
            }
            let ids: Vec<TranscriptionId> = batch.iter().map(|(id, _)| *id).collect();
            self.metrics.mysql_read_batch_size.observe(ids.len() as f64);
            let read = self.repo.get_many(&ids);
            let rows = match parent {
                Some(span) => read.instrument(span).await,
                None => read.await,
            };
            match rows {
                Ok(rows) => {
                    let mut rows: HashMap<u64, Transcription> = rows
                        .into_iter()
                        .map(|row| (row.transcription_id, row))
                        .collect();
                    for (id, callers) in batch {
                        answer(callers, Ok(rows.remove(&id.get())));
                    }
                }
                Err(error) => {
                    for (_, callers) in batch {
                        answer(callers, Err(error));
                    }
                }
            }
        }
    }

    /// The next ids to query with their callers (the oldest first).
    fn take_batch(&self, slot: &mut FlusherSlot) -> (Batch, Option<tracing::Span>) {
        let mut state = self.state.borrow_mut();
        let mut parent = None;
        if std::mem::take(&mut slot.starting) {
            state.starting -= 1;
        }
        let mut batch = Vec::new();
        while batch.len() < MAX_IDS_PER_QUERY {
            let Some(id) = state.queue.pop_front() else {
                break;
            };
            // Absent: withdrawn, or taken already under an earlier entry.
            if let Some(callers) = state.callers.remove(&id) {
                batch.push((id, callers));
            }
            let span = state.spans.remove(&id);
            parent = parent.or(span);
        }
        (batch, parent)
    }
}

/// Sends `outcome` to every caller (a caller that went away is skipped).
fn answer(mut callers: Vec<oneshot::Sender<RowOutcome>>, outcome: RowOutcome) {
    let last = callers.pop();
    for caller in callers {
        let _gone = caller.send(outcome.clone());
    }
    if let Some(last) = last {
        let _gone = last.send(outcome);
    }
}
