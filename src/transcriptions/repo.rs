//! The only SQL middleway runs against `transcriptions`.

use std::time::{Duration, Instant};

use sqlx::MySqlPool;

use crate::metrics::Metrics;

use super::domain::{Transcription, TranscriptionId};

/// Longest a single primary-key read may take once a connection is in hand;
/// past it the server is treated as hung and the connection discarded.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

const SELECT_BY_ID: &str = "SELECT transcription_id, call_id, language, CAST(status AS CHAR) AS status, \
     duration_ms, confidence, content, created_at, updated_at \
     FROM transcriptions WHERE transcription_id = ?";

/// Why a read failed; every case is the database's fault, not the caller's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ReadError {
    /// No pooled connection came free within the acquire timeout.
    #[error("MySQL pool exhausted")]
    PoolExhausted,
    /// MySQL refused, dropped or did not answer.
    #[error("MySQL unreachable")]
    Unreachable,
}

/// Reads transcriptions over the bounded pool.
#[derive(Clone)]
pub(crate) struct TranscriptionRepo {
    pool: MySqlPool,
    metrics: Metrics,
}

impl TranscriptionRepo {
    /// A repository over `pool`.
    pub(crate) fn new(pool: MySqlPool, metrics: Metrics) -> Self {
        Self { pool, metrics }
    }

    /// The row with this id, if any.
    ///
    /// A pooled connection can be dead without the pool knowing (MySQL
    /// restarted, `wait_timeout` passed): such a connection is discarded and
    /// the read retried once on a fresh one, so callers see no error for it.
    pub(crate) async fn get(
        &self,
        id: TranscriptionId,
    ) -> Result<Option<Transcription>, ReadError> {
        for _attempt in 0..2 {
            let waiting = Instant::now();
            let acquired = self.pool.acquire().await;
            self.metrics
                .mysql_acquire_wait
                .observe(waiting.elapsed().as_secs_f64());
            let mut conn = match acquired {
                Ok(conn) => conn,
                Err(sqlx::Error::PoolTimedOut) => return Err(ReadError::PoolExhausted),
                Err(error) => {
                    tracing::warn!(%error, "MySQL connection failed");
                    return Err(ReadError::Unreachable);
                }
            };
            let query = sqlx::query_as::<_, Transcription>(SELECT_BY_ID)
                .bind(id.get())
                .fetch_optional(&mut *conn);
            match tokio::time::timeout(QUERY_TIMEOUT, query).await {
                Ok(Ok(row)) => return Ok(row),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "MySQL read failed; discarding the connection");
                }
                Err(_elapsed) => {
                    tracing::warn!("MySQL read timed out; discarding the connection");
                    conn.close_on_drop();
                    return Err(ReadError::Unreachable);
                }
            }
            conn.close_on_drop();
        }
        Err(ReadError::Unreachable)
    }
}
