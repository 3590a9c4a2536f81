//! Coalesced, rendered reads: the domain side of `GET /transcriptions/{id}`.

use std::sync::Arc;

use actix_web::http::header::HeaderValue;
use bytes::Bytes;

use super::coalesce::Coalescer;
use super::domain::{Transcription, TranscriptionId};
use super::repo::{ReadError, TranscriptionRepo};
use crate::metrics::Metrics;

/// A transcription serialized once and shared by every coalesced caller.
#[derive(Debug)]
pub(crate) struct RenderedTranscription {
    /// The JSON body.
    pub body: Bytes,
    /// Its entity tag (a hash of the body).
    pub etag: HeaderValue,
}

/// What a read yields: the rendered row, none, or why MySQL could not say.
pub(crate) type ReadOutcome = Result<Option<Arc<RenderedTranscription>>, ReadError>;

/// Reads rows through the repository, one query per id in flight.
pub(crate) struct TranscriptionReader {
    repo: TranscriptionRepo,
    coalescer: Coalescer<TranscriptionId, ReadOutcome>,
    metrics: Metrics,
}

impl TranscriptionReader {
    /// A reader over `repo`; queries run on `runtime` (the pool's).
    pub(crate) fn new(
        repo: TranscriptionRepo,
        metrics: Metrics,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Self {
            repo,
            coalescer: Coalescer::new(runtime),
            metrics,
        }
    }

    /// The rendered row, sharing the query with concurrent reads of the same id.
    pub(crate) async fn read(&self, id: TranscriptionId) -> ReadOutcome {
        let repo = self.repo.clone();
        let (outcome, joined) = self
            .coalescer
            .run(
                id,
                move || async move { render(repo.get(id).await?) },
                || Err(ReadError::Unreachable),
            )
            .await;
        if joined {
            self.metrics.coalesced_reads.inc();
        }
        outcome
    }
}

fn render(row: Option<Transcription>) -> ReadOutcome {
    let Some(row) = row else { return Ok(None) };
    // Only strings and numbers: serialization cannot fail.
    let body = Bytes::from(serde_json::to_vec(&row).unwrap_or_default());
    let digest = xxhash_rust::xxh3::xxh3_128(&body);
    let etag = HeaderValue::from_str(&format!("\"{digest:032x}\""))
        .unwrap_or(HeaderValue::from_static("\"0\""));
    Ok(Some(Arc::new(RenderedTranscription { body, etag })))
}
