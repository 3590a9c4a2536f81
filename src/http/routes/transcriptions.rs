//! `GET /transcriptions/{id}`: strict id, coalesced read, ETag / 304.
//! `GET /transcriptions?ids=...`: up to a hundred rows in one query.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};

use crate::http::error::ApiError;
use serde::Serialize;

use crate::transcriptions::{
    ReadError, Transcription, TranscriptionId, TranscriptionReader, parse_id_list,
};

impl From<ReadError> for ApiError {
    fn from(error: ReadError) -> Self {
        ApiError::Unavailable(match error {
            ReadError::PoolExhausted => "the MySQL connection pool is exhausted",
            ReadError::Unreachable => "MySQL is unreachable",
            ReadError::ShuttingDown => "the service is shutting down",
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
        (status = 403, description = "The caller's scopes do not cover this request (AUTH_FILE)", body = inline(crate::http::error::ProblemSchema), content_type = "application/problem+json"),
        (status = 429, description = "The caller already has its max_in_flight requests (or max_waiters lock waiters), with Retry-After", body = inline(crate::http::error::ProblemSchema), content_type = "application/problem+json",
            headers(("Retry-After" = String, description = "Seconds"))),
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

/// The answer to a batch read.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct TranscriptionBatch {
    /// The rows found, in the order their ids were asked.
    transcriptions: Vec<Transcription>,
    /// The ids asked that have no row, in the order asked.
    #[schema(value_type = Vec<u64>)]
    missing: Vec<u64>,
}

/// The ids of `?ids=42,43,7`: exactly one `ids` parameter (percent-encoded
/// commas are commas) and nothing else, so a typo is a 400, not a silent default.
fn batch_ids(query: &str) -> Result<Vec<TranscriptionId>, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|_| ApiError::invalid_field("ids", "the query string is not form-encoded"))?;
    let mut ids = None;
    for (name, value) in pairs {
        if name != "ids" {
            return Err(ApiError::invalid_field(
                "query",
                format!(
                    "unknown parameter {:?}; only `ids` is accepted",
                    name.chars().take(32).collect::<String>()
                ),
            ));
        }
        if ids.replace(value).is_some() {
            return Err(ApiError::invalid_field(
                "ids",
                "give `ids` once, as a comma-separated list",
            ));
        }
    }
    let ids = ids.ok_or_else(|| {
        ApiError::invalid_field("ids", "required: a comma-separated list of 1 to 100 ids")
    })?;
    parse_id_list(&ids).map_err(|why| ApiError::invalid_field("ids", why))
}

/// `GET /transcriptions?ids=...`.
#[utoipa::path(
    get,
    path = "/transcriptions",
    tag = "transcriptions",
    security(("bearer" = [])),
    params(
        ("ids" = Vec<u64>, Query, style = Form, explode = false,
            description = "1 to 100 distinct ids, comma-separated (ids=42,43,7), each written as [1-9][0-9]*; a bad, repeated or 101st id is 400"),
        ("x-request-id" = Option<String>, Header, description = "Echoed back when 1-64 chars of [A-Za-z0-9._-]"),
    ),
    responses(
        (status = 200, description = "The rows found in the order asked, and the ids with no row", body = TranscriptionBatch),
        (status = 400, description = "A bad, repeated or 101st id, or a parameter other than `ids`", body = inline(crate::http::error::ProblemSchema), content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong key", body = inline(crate::http::error::ProblemSchema), content_type = "application/problem+json"),
        (status = 403, description = "The caller's scopes do not cover this request (AUTH_FILE)", body = inline(crate::http::error::ProblemSchema), content_type = "application/problem+json"),
        (status = 429, description = "The caller already has its max_in_flight requests (or max_waiters lock waiters), with Retry-After", body = inline(crate::http::error::ProblemSchema), content_type = "application/problem+json",
            headers(("Retry-After" = String, description = "Seconds"))),
        (status = 503, description = "MySQL unreachable or pool exhausted", body = inline(crate::http::error::ProblemSchema), content_type = "application/problem+json",
            headers(("Retry-After" = String, description = "Seconds"))),
    )
)]
pub(crate) async fn get_transcriptions(
    request: HttpRequest,
    reader: web::Data<TranscriptionReader>,
) -> Result<HttpResponse, ApiError> {
    let ids = batch_ids(request.query_string())?;
    let (transcriptions, missing) = reader.read_many(&ids).await?;
    let batch = TranscriptionBatch {
        transcriptions,
        missing: missing.into_iter().map(TranscriptionId::get).collect(),
    };
    // Only strings and numbers: serialization cannot fail.
    let body = serde_json::to_vec(&batch).unwrap_or_default();
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}
