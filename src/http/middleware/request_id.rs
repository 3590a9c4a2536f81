//! The request id every response carries: the caller's `x-request-id` when it
//! is 1–64 chars of `[A-Za-z0-9._-]`, otherwise a new one.

use std::sync::Arc;
use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage};

/// The response header carrying the request id.
pub(crate) const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    /// The id of the request being served, so error bodies can quote it
    /// without every handler threading it through.
    static REQUEST_ID: Arc<str>;
}

/// The request id, in request extensions (for the access log span).
#[derive(Clone, Debug)]
pub(crate) struct RequestId(pub Arc<str>);

/// When the request arrived, in request extensions (for the access log's latency).
#[derive(Clone, Copy)]
pub(crate) struct RequestStart(pub Instant);

/// The id of the request this task is serving, if any.
pub(crate) fn current() -> Option<Arc<str>> {
    REQUEST_ID.try_with(Arc::clone).ok()
}

/// A caller's id is kept when it is 1–64 chars of `[A-Za-z0-9._-]`.
fn is_acceptable(value: &[u8]) -> bool {
    (1..=64).contains(&value.len())
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn new_request_id() -> Arc<str> {
    format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
    .into()
}

/// Outermost middleware: picks the request id, makes it visible to error
/// rendering, and stamps it on every response (errors included). Inner
/// middlewares answer errors as responses (never `Err`) so none escapes this.
pub(crate) async fn stamp_request_id(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let id: Arc<str> = match req.headers().get(&REQUEST_ID_HEADER) {
        Some(v) if is_acceptable(v.as_bytes()) => Arc::from(v.to_str().unwrap_or_default()),
        _ => new_request_id(),
    };
    req.extensions_mut().insert(RequestId(Arc::clone(&id)));
    req.extensions_mut().insert(RequestStart(Instant::now()));
    let mut response = REQUEST_ID
        .scope(Arc::clone(&id), next.call(req))
        .await?
        .map_into_boxed_body();
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::is_acceptable;

    #[test]
    fn request_ids_follow_the_contract() {
        assert!(is_acceptable(b"abc-DEF_1.2"));
        assert!(is_acceptable(&[b'a'; 64]));
        assert!(!is_acceptable(&[b'a'; 65]));
        assert!(!is_acceptable(b""));
        assert!(!is_acceptable(b"a b"));
        assert!(!is_acceptable("é".as_bytes()));
    }
}
