//! `GET /transcriptions/{id}`: strict id, coalesced read, ETag / 304.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};

use crate::http::error::ApiError;
use crate::transcriptions::{ReadError, Transcription, TranscriptionId, TranscriptionReader};

impl From<ReadError> for ApiError {
    fn from(error: ReadError) -> Self {
        ApiError::Unavailable(match error {
            ReadError::PoolExhausted => "the MySQL connection pool is exhausted",
            ReadError::Unreachable => "MySQL is unreachable",
        })
    }
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
        (status = 400, description = "Malformed id", body = inline(crate::http::error::ProblemSchema), content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong key", body = inline(crate::http::error::ProblemSchema), content_type = "application/problem+json"),
        (status = 404, description = "No such transcription", body = inline(crate::http::error::ProblemSchema), content_type = "application/problem+json"),
        (status = 503, description = "MySQL unreachable or pool exhausted", body = inline(crate::http::error::ProblemSchema), content_type = "application/problem+json",
            headers(("Retry-After" = String, description = "Seconds"))),
    )
)]
pub(crate) async fn get_transcription(
    request: HttpRequest,
    reader: web::Data<TranscriptionReader>,
) -> Result<HttpResponse, ApiError> {
    let raw = request.match_info().query("id");
    let id = TranscriptionId::parse(raw).map_err(|why| ApiError::invalid_field("id", why))?;
    let rendered = reader
        .read(id)
        .await?
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
