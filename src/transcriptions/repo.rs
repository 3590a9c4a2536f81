//! The only SQL middleway runs against `transcriptions`.

use std::rc::Rc;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use futures_util::future::Either;
use tracing::Instrument;

use crate::metrics::Metrics;
use crate::pools::mysql::{AcquireError, WorkerPool};
use crate::telemetry::otel;

use super::domain::{MAX_IDS_PER_BATCH, Transcription, TranscriptionId};

/// Longest one read (up to a hundred primary keys) may take once a connection is in hand;
/// past it the server is treated as hung and the connection discarded.
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

/// Reads transcriptions over one HTTP worker's bounded pool.
#[derive(Clone)]
pub(crate) struct TranscriptionRepo {
    worker: Rc<WorkerPool>,
    metrics: Metrics,
}

impl TranscriptionRepo {
    /// A repository over the worker's pool.
    pub(crate) fn new(worker: Rc<WorkerPool>, metrics: Metrics) -> Self {
        Self { worker, metrics }
    }

    /// The rows with these ids (at most [`MAX_IDS_PER_QUERY`]), in no
    /// particular order; ids with no row are simply absent. One query.
    ///
    /// A pooled connection can be dead without the pool knowing (MySQL
    /// restarted, `wait_timeout` passed): such a connection is discarded and
    /// the read retried once on a fresh one, so callers see no error for it.
    pub(crate) async fn get_many(
        &self,
        ids: &[TranscriptionId],
    ) -> Result<Vec<Transcription>, ReadError> {
        if !otel::enabled() {
            return self.query(ids).await;
        }
        let span = tracing::debug_span!(
            "mysql.read",
            otel.kind = "client",
            db.system.name = "mysql",
            db.operation.name = "SELECT",
            db.collection.name = "transcriptions",
            ids = ids.len(),
        );
        self.query(ids).instrument(span).await
    }

    async fn query(&self, ids: &[TranscriptionId]) -> Result<Vec<Transcription>, ReadError> {
        let (Some(&last), Some(slot)) = (
            ids.last(),
            ARITIES.iter().position(|&arity| arity >= ids.len()),
        ) else {
            return Ok(Vec::new());
        };
        // The pool does not close (at shutdown) while this read runs.
        let _read = self.worker.begin_read();
        for _attempt in 0..2 {
            let waiting = Instant::now();
            let acquired = self.worker.acquire().await;
            self.metrics
                .mysql_acquire_wait
                .observe(waiting.elapsed().as_secs_f64());
            let mut conn = acquired.map_err(|error| match error {
                AcquireError::Exhausted => ReadError::PoolExhausted,
                AcquireError::Unreachable => ReadError::Unreachable,
                AcquireError::Closed => ReadError::ShuttingDown,
            })?;
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
            match tokio::time::timeout(QUERY_TIMEOUT, fetch).await {
                Ok(Ok(rows)) => return Ok(rows),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "MySQL read failed; discarding the connection");
                    conn.discard();
                }
                Err(_elapsed) => {
                    tracing::warn!("MySQL read timed out; discarding the connection");
                    conn.discard();
                    return Err(ReadError::Unreachable);
                }
            }
        }
        Err(ReadError::Unreachable)
    }
}
