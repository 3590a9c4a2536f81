//! Coalesced, rendered reads: the domain side of `GET /transcriptions/{id}`.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use actix_web::http::header::HeaderValue;
use bytes::Bytes;

use super::batcher::ReadBatcher;
use super::coalesce::Coalescer;
use super::domain::{Transcription, TranscriptionId};
use super::repo::{ReadError, TranscriptionRepo};
use crate::metrics::Metrics;
use crate::pools::replicas::WorkerReads;
use crate::telemetry::otel;

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

/// Reads of one id in flight, shared by every worker's reader.
pub(crate) type ReadCoalescer = Coalescer<TranscriptionId, ReadOutcome>;

/// Reads rows through the worker's batcher, one read per id in flight.
pub(crate) struct TranscriptionReader {
    repo: TranscriptionRepo,
    batcher: ReadBatcher,
    coalescer: ReadCoalescer,
    metrics: Metrics,
}

impl TranscriptionReader {
    /// The reader of one HTTP worker: over its pools, coalescing through
    /// `coalescer` (shared by the workers).
    pub(crate) fn for_worker(
        reads: Rc<WorkerReads>,
        coalescer: ReadCoalescer,
        metrics: Metrics,
    ) -> Self {
        let queue_limit = reads.acquire_timeout();
        let repo = TranscriptionRepo::new(reads, metrics.clone());
        Self {
            batcher: ReadBatcher::new(repo.clone(), metrics.clone(), queue_limit),
            repo,
            coalescer,
            metrics,
        }
    }

    /// The rendered row, sharing the query with concurrent reads of the same id.
    pub(crate) async fn read(&self, id: TranscriptionId) -> ReadOutcome {
        let batcher = self.batcher.clone();
        // The coalesced read runs as a task of its own: it takes the
        // caller's span along, so its MySQL span joins the caller's trace.
        let caller = otel::enabled().then(tracing::Span::current);
        let (outcome, joined) = self
            .coalescer
            .run(
                id,
                move || async move { render(batcher.read(id, caller).await?) },
                || Err(ReadError::Unreachable),
            )
            .await;
        if joined {
            self.metrics.coalesced_reads.inc();
        }
        outcome
    }
}

impl TranscriptionReader {
    /// The rows for a batch of distinct ids, in the order asked, and the ids
    /// with no row: one query of its own (a batch is already a batch, so it
    /// neither queues behind single reads nor coalesces with them).
    pub(crate) async fn read_many(
        &self,
        ids: &[TranscriptionId],
    ) -> Result<(Vec<Transcription>, Vec<TranscriptionId>), ReadError> {
        let mut found: HashMap<u64, Transcription> = self
            .repo
            .get_many(ids)
            .await?
            .into_iter()
            .map(|row| (row.transcription_id, row))
            .collect();
        let (mut rows, mut missing) = (Vec::with_capacity(found.len()), Vec::new());
        for &id in ids {
            match found.remove(&id.get()) {
                Some(row) => rows.push(row),
                None => missing.push(id),
            }
        }
        Ok((rows, missing))
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
