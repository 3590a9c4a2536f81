//! What every request carries from the start: its id (the caller's
//! `x-request-id` when it is 1–64 chars of `[A-Za-z0-9._-]`, otherwise a new
//! one, echoed on every response), when it arrived, and its route template.

use std::sync::{Arc, LazyLock};
use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage};

use crate::telemetry;

/// The response header carrying the request id.
pub(crate) const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The request id, in request extensions (for the access log span).
#[derive(Clone, Debug)]
pub(crate) struct RequestId(pub Arc<str>);

/// When the request arrived, in request extensions (for the access log's latency).
#[derive(Clone, Copy)]
pub(crate) struct RequestStart(pub Instant);

/// The route template the request matched (`/transcriptions/{id}`), or
/// `unmatched`: never the raw path, so labels and log fields stay a closed set.
///
/// Found once here: actix answers `match_pattern` by running the router
/// again (a regex match per dynamic route), and the access log and the
/// metrics both need it.
#[derive(Clone, Debug)]
pub(crate) struct Route(pub Arc<str>);

impl Route {
    fn of(req: &ServiceRequest) -> Self {
        req.match_pattern()
            .map_or_else(Self::unmatched, |pattern| Self(pattern.into()))
    }

    /// What requests no route matched are labelled.
    pub(crate) fn unmatched() -> Self {
        static UNMATCHED: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("unmatched"));
        Self(Arc::clone(&UNMATCHED))
    }
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
/// rendering and logging, notes arrival and route, and stamps the id on
/// every response (errors included). Inner middlewares answer errors as
/// responses (never `Err`) so none escapes this.
pub(crate) async fn stamp_request_context(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let id: Arc<str> = match req.headers().get(&REQUEST_ID_HEADER) {
        Some(v) if is_acceptable(v.as_bytes()) => Arc::from(v.to_str().unwrap_or_default()),
        _ => new_request_id(),
    };
    let route = Route::of(&req);
    {
        let mut extensions = req.extensions_mut();
        extensions.insert(RequestId(Arc::clone(&id)));
        extensions.insert(RequestStart(Instant::now()));
        extensions.insert(route);
    }
    let mut response = telemetry::serving(Arc::clone(&id), next.call(req))
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
