//! `GET /transcriptions/{id}`: strict id, coalesced read, ETag / 304.

use std::sync::Arc;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;

use super::coalesce::Coalescer;
use super::domain::{Transcription, TranscriptionId};
use super::repo::{ReadError, TranscriptionRepo};
use crate::error::ApiError;
use crate::metrics::Metrics;

/// A transcription serialized once and shared by every coalesced caller.
#[derive(Debug)]
pub struct RenderedTranscription {
    body: Bytes,
    etag: HeaderValue,
}

type ReadOutcome = Result<Option<Arc<RenderedTranscription>>, ReadError>;

/// Coalesced, rendered reads: the domain side of the route.
pub struct TranscriptionReader {
    repo: TranscriptionRepo,
    coalescer: Coalescer<TranscriptionId, ReadOutcome>,
    metrics: Metrics,
}

impl TranscriptionReader {
    /// A reader over `repo`.
    pub fn new(repo: TranscriptionRepo, metrics: Metrics, runtime: tokio::runtime::Handle) -> Self {
        Self {
            repo,
            coalescer: Coalescer::new(runtime),
            metrics,
        }
    }

    /// The rendered row, sharing the query with concurrent reads of the same id.
    pub async fn read(&self, id: TranscriptionId) -> ReadOutcome {
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

fn render(row: Option<super::Transcription>) -> ReadOutcome {
    let Some(row) = row else { return Ok(None) };
    // Only strings and numbers: serialization cannot fail.
    let body = Bytes::from(serde_json::to_vec(&row).unwrap_or_default());
    let digest = xxhash_rust::xxh3::xxh3_128(&body);
    let etag = HeaderValue::from_str(&format!("\"{digest:032x}\""))
        .unwrap_or(HeaderValue::from_static("\"0\""));
    Ok(Some(Arc::new(RenderedTranscription { body, etag })))
}

/// Whether `If-None-Match` lists this ETag (weak comparison, RFC 9110 §13.1.2).
fn if_none_match_hits(request: &HttpRequest, etag: &HeaderValue) -> bool {
    let ours = etag.as_bytes();
    request
        .headers()
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|v| v.to_str().ok())
        .any(|list| {
            list.split(',')
                .map(str::trim)
                .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag).as_bytes() == ours)
        })
}

/// `GET /transcriptions/{id}`.
#[utoipa::path(
    get,
    path = "/transcriptions/{id}",
    tag = "transcriptions",
    security(("bearer" = [])),
    params(
        ("id" = u64, Path, minimum = 1, description = "Decimal id in 1..=18446744073709551615, written as [1-9][0-9]*; anything else is 400"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier 200"),
        ("x-request-id" = Option<String>, Header, description = "Echoed back when 1-64 chars of [A-Za-z0-9._-]"),
    ),
    responses(
        (status = 200, description = "The transcription", body = Transcription,
            headers(("ETag" = String, description = "Entity tag of this representation"))),
        (status = 304, description = "Unchanged since the given ETag"),
        (status = 400, description = "Malformed id", body = inline(crate::error::ProblemSchema), content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong key", body = inline(crate::error::ProblemSchema), content_type = "application/problem+json"),
        (status = 404, description = "No such transcription", body = inline(crate::error::ProblemSchema), content_type = "application/problem+json"),
        (status = 503, description = "MySQL unreachable or pool exhausted", body = inline(crate::error::ProblemSchema), content_type = "application/problem+json",
            headers(("Retry-After" = String, description = "Seconds"))),
    )
)]
pub async fn get_transcription(
    request: HttpRequest,
    reader: web::Data<TranscriptionReader>,
) -> Result<HttpResponse, ApiError> {
    let raw = request.match_info().query("id");
    let id = TranscriptionId::parse(raw).map_err(|why| ApiError::invalid_field("id", why))?;
    let rendered = reader
        .read(id)
        .await
        .map_err(|error| {
            ApiError::unavailable(match error {
                ReadError::PoolExhausted => "the MySQL connection pool is exhausted",
                ReadError::Unreachable => "MySQL is unreachable",
            })
        })?
        .ok_or_else(|| ApiError::NotFound(format!("no transcription has id {id}")))?;
    if if_none_match_hits(&request, &rendered.etag) {
        return Ok(HttpResponse::NotModified()
            .insert_header((header::ETAG, rendered.etag.clone()))
            .finish());
    }
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((header::ETAG, rendered.etag.clone()))
        .body(rendered.body.clone()))
}
