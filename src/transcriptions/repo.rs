//! The only SQL middleway runs against `transcriptions`.

use std::collections::HashSet;
use std::rc::Rc;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use futures_util::future::Either;
use tracing::Instrument;

use crate::metrics::Metrics;
use crate::pools::mysql::{AcquireError, describe};
use crate::pools::replicas::{Endpoint, WorkerReads};
use crate::telemetry::otel;

use super::domain::{MAX_IDS_PER_BATCH, Transcription, TranscriptionId};

/// Longest one read (up to a hundred primary keys, and its one retry) may
/// take once a connection is in hand; past it the server is treated as hung
/// and the connection discarded.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Most ids one query asks for: the batch endpoint's limit.
pub(crate) const MAX_IDS_PER_QUERY: usize = MAX_IDS_PER_BATCH;

/// How many ids a query asks for: a query for `n` ids uses the first arity
/// at least `n`, repeating its last id to fill. Each arity is one prepared
/// statement per connection, so a connection holds at most these eight, not
/// a hundred (`max_prepared_stmt_count` is shared by every client of MySQL).
const ARITIES: [usize; 8] = [1, 2, 4, 8, 16, 32, 64, MAX_IDS_PER_QUERY];

/// `SELECT ... WHERE transcription_id IN (?, ...)`, one text per arity.
static SELECT_BY_IDS: LazyLock<[String; ARITIES.len()]> =
    LazyLock::new(|| ARITIES.map(|arity| select_for(&vec!["?"; arity].join(", "))));

/// The query of a sampled trace: the same SELECT with a sqlcommenter comment
/// carrying its `traceparent`, so MySQL's process list and slow log lead
/// back to the trace. Sent as text (the ids are integers, written by us):
/// a prepared statement per distinct comment would fill MySQL's statement
/// cache, while text queries leave the prepared ones of untraced reads alone.
async fn commented(
    ids: &[TranscriptionId],
    traceparent: String,
    conn: &mut sqlx::MySqlConnection,
) -> Result<Vec<Transcription>, sqlx::Error> {
    use sqlx::FromRow;
    let list = ids
        .iter()
        .map(|id| id.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let sql = format!("{} /*traceparent='{traceparent}'*/", select_for(&list));
    let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .fetch_all(conn)
        .await?;
    rows.iter().map(Transcription::from_row).collect()
}

fn select_for(list: &str) -> String {
    format!(
        "SELECT transcription_id, call_id, language, CAST(status AS CHAR) AS status, \
         duration_ms, confidence, content, created_at, updated_at \
         FROM transcriptions WHERE transcription_id IN ({list})"
    )
}

/// Why a read failed; every case is the database's fault, not the caller's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ReadError {
    /// No pooled connection came free within the acquire timeout.
    #[error("MySQL pool exhausted")]
    PoolExhausted,
    /// MySQL refused, dropped or did not answer.
    #[error("MySQL unreachable")]
    Unreachable,
    /// The service is shutting down: its pools are closed.
    #[error("shutting down")]
    ShuttingDown,
}

/// Reads transcriptions over one HTTP worker's pools of the read endpoints.
#[derive(Clone)]
pub(crate) struct TranscriptionRepo {
    reads: Rc<WorkerReads>,
    metrics: Metrics,
}

/// How one attempt on one endpoint failed.
enum AttemptError {
    /// A pooled connection broke (dead server, or dropped while idle):
    /// another endpoint, or a fresh connection, may answer.
    Broken,
    /// No connection could be made, or the query did not finish in time:
    /// another endpoint may answer; the same one will not, soon.
    Down,
    /// Nothing another endpoint would change (pool exhausted, shutting down).
    Final(ReadError),
}

impl TranscriptionRepo {
    /// A repository over the worker's pools.
    pub(crate) fn new(reads: Rc<WorkerReads>, metrics: Metrics) -> Self {
        Self { reads, metrics }
    }

    /// Queries this worker may run at once (see [`WorkerReads::max_queries`]).
    pub(crate) fn max_queries(&self) -> usize {
        self.reads.max_queries()
    }

    /// The rows with these ids (at most [`MAX_IDS_PER_QUERY`]), in no
    /// particular order; ids with no row are simply absent.
    ///
    /// One query on a reader (a replica in rotation, else the primary). A
    /// read that fails there (a dead pooled connection, a dead server, a
    /// timeout) is retried once, on another endpoint when there is one and
    /// on a fresh connection otherwise, so callers see no error for it.
    /// Ids a replica lacks are looked up on the primary before they are
    /// called missing (`DB_READ_MISS_PRIMARY`): the replica may be behind.
    pub(crate) async fn get_many(
        &self,
        ids: &[TranscriptionId],
    ) -> Result<Vec<Transcription>, ReadError> {
        if !otel::enabled() {
            return self.read(ids).await;
        }
        let span = tracing::debug_span!(
            "mysql.read",
            otel.kind = "client",
            db.system.name = "mysql",
            db.operation.name = "SELECT",
            db.collection.name = "transcriptions",
            ids = ids.len(),
        );
        self.read(ids).instrument(span).await
    }

    async fn read(&self, ids: &[TranscriptionId]) -> Result<Vec<Transcription>, ReadError> {
        let (mut rows, from) = self.read_with_retry(ids).await?;
        if rows.len() == ids.len() || !self.reads.recheck_misses(from) {
            return Ok(rows);
        }
        let found: HashSet<u64> = rows.iter().map(|row| row.transcription_id).collect();
        let mut missing: Vec<TranscriptionId> = ids
            .iter()
            .filter(|id| !found.contains(&id.get()))
            .copied()
            .collect();
        missing.dedup();
        if missing.is_empty() {
            return Ok(rows);
        }
        let late = self.on_primary(&missing).await?;
        let rechecks = &self.metrics.mysql_read_miss_rechecks;
        rechecks
            .with_label_values(&["found"])
            .inc_by(late.len() as u64);
        rechecks
            .with_label_values(&["missing"])
            .inc_by((missing.len() - late.len()) as u64);
        rows.extend(late);
        Ok(rows)
    }

    /// One attempt on a reader and, if that endpoint fails, one more on
    /// another (or on a fresh connection of the same, when it is the only one).
    async fn read_with_retry(
        &self,
        ids: &[TranscriptionId],
    ) -> Result<(Vec<Transcription>, Endpoint), ReadError> {
        let first = self.reads.reader(None);
        // With somewhere else to go, a hung endpoint gets half the time.
        let patience = if self.reads.has_alternative(first) {
            QUERY_TIMEOUT / 2
        } else {
            QUERY_TIMEOUT
        };
        let down = match self.attempt(first, ids, patience).await {
            Ok(rows) => return Ok((rows, first)),
            Err(AttemptError::Final(error)) => return Err(error),
            Err(AttemptError::Broken) => false,
            Err(AttemptError::Down) => true,
        };
        self.reads.failed(first);
        let second = self.reads.reader(Some(first));
        if second == first && down {
            // Nowhere else to go, and no reason to think it is back already.
            return Err(ReadError::Unreachable);
        }
        if second != first {
            self.metrics.mysql_read_retries.inc();
        }
        match self.attempt(second, ids, patience).await {
            Ok(rows) => Ok((rows, second)),
            Err(AttemptError::Final(error)) => Err(error),
            Err(AttemptError::Broken | AttemptError::Down) => {
                self.reads.failed(second);
                Err(ReadError::Unreachable)
            }
        }
    }

    /// `ids` on the primary (on a fresh connection if a pooled one broke).
    async fn on_primary(&self, ids: &[TranscriptionId]) -> Result<Vec<Transcription>, ReadError> {
        for _attempt in 0..2 {
            match self
                .attempt(Endpoint::Primary, ids, QUERY_TIMEOUT / 2)
                .await
            {
                Ok(rows) => return Ok(rows),
                Err(AttemptError::Final(error)) => return Err(error),
                Err(AttemptError::Down) => break,
                Err(AttemptError::Broken) => self.reads.failed(Endpoint::Primary),
            }
        }
        Err(ReadError::Unreachable)
    }

    /// One query on `endpoint`, bounded by `patience` once a connection is in hand.
    async fn attempt(
        &self,
        endpoint: Endpoint,
        ids: &[TranscriptionId],
        patience: Duration,
    ) -> Result<Vec<Transcription>, AttemptError> {
        let (Some(&last), Some(slot)) = (
            ids.last(),
            ARITIES.iter().position(|&arity| arity >= ids.len()),
        ) else {
            return Ok(Vec::new());
        };
        let pool = self.reads.pool(endpoint);
        // The pool does not close (at shutdown) while this read runs, and
        // the read counts toward the endpoint's load.
        let _read = pool.begin_read();
        let waiting = Instant::now();
        let acquired = pool.acquire().await;
        self.metrics
            .mysql_acquire_wait
            .observe(waiting.elapsed().as_secs_f64());
        let mut conn = acquired.map_err(|error| match error {
            AcquireError::Exhausted => AttemptError::Final(ReadError::PoolExhausted),
            AcquireError::Unreachable => AttemptError::Down,
            AcquireError::Closed => AttemptError::Final(ReadError::ShuttingDown),
        })?;
        self.reads.count_read(endpoint);
        let fetch = match otel::sampled_traceparent(&tracing::Span::current()) {
            Some(traceparent) => Either::Left(commented(ids, traceparent, conn.conn())),
            None => {
                // Built once from constants, with placeholders only.
                let sql: &'static str = &SELECT_BY_IDS[slot];
                let mut query = sqlx::query_as::<_, Transcription>(sql);
                for id in ids
                    .iter()
                    .chain(std::iter::repeat(&last))
                    .take(ARITIES[slot])
                {
                    query = query.bind(id.get());
                }
                Either::Right(query.fetch_all(conn.conn()))
            }
        };
        match tokio::time::timeout(patience, fetch).await {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(error)) => {
                tracing::warn!(error = %describe(&error), ?endpoint, "MySQL read failed; discarding the connection");
                conn.discard();
                Err(AttemptError::Broken)
            }
            Err(_elapsed) => {
                tracing::warn!(?endpoint, "MySQL read timed out; discarding the connection");
                conn.discard();
                Err(AttemptError::Down)
            }
        }
    }
}
