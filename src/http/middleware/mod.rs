//! The middlewares of the public listener, one concern each, listed from the
//! outside in as `http::public_app` wraps them.

pub(crate) mod access_log;
pub(crate) mod auth;
pub(crate) mod compact_headers;
pub(crate) mod edge_guard;
pub(crate) mod metrics;
pub(crate) mod overload;
pub(crate) mod request_context;
