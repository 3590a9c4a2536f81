//! Everything HTTP: the route table of the public and admin listeners, the
//! two capabilities' routes, errors as problem+json, JSON bodies, the
//! middlewares, health, OpenAPI, and noticing clients that hang up.

pub(crate) mod admin;
pub(crate) mod body;
pub(crate) mod error;
pub(crate) mod health;
pub(crate) mod middleware;
pub(crate) mod openapi;
pub(crate) mod peer;
pub(crate) mod routes;
pub(crate) mod tls;

use std::net::TcpListener;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_http::{HttpMessage, HttpService, KeepAlive, Request};
use actix_service::{fn_service, map_config};
use actix_tls::accept::rustls_0_23::TlsStream;
use actix_web::body::MessageBody;
use actix_web::dev::{
    AppConfig, Extensions, Server, ServiceFactory, ServiceRequest, ServiceResponse,
};
use actix_web::middleware::from_fn;
use actix_web::rt::net::TcpStream;
use actix_web::{App, HttpResponse, HttpServer, web};
use tracing_actix_web::TracingLogger;

use self::admin::{AdminState, metrics_endpoint};
use self::error::ApiError;
use self::health::{Readiness, ReadinessCache, healthz, readyz};
use self::middleware::access_log::AccessLog;
use self::middleware::auth::{AuthPolicy, may_continue, require_api_key, require_reads};
use self::middleware::compact_headers::compact_headers;
use self::middleware::edge_guard::guard_edge;
use self::middleware::metrics::track_requests;
use self::middleware::overload::{InFlightLimit, shed_overload};
use self::middleware::request_context::stamp_request_context;
use self::openapi::openapi_json;
use self::peer::{PeerWatch, record_peer_socket};
use self::routes::locks::post_locks;
use self::routes::transcriptions::{get_transcription, get_transcriptions};
use crate::fleet::FleetBudget;
use crate::locks::LockEngine;
use crate::metrics::Metrics;
use crate::pools::redis::RedisPools;
use crate::pools::replicas::ReadEndpoints;
use crate::transcriptions::{ReadCoalescer, TranscriptionReader};

/// What the public listener's handlers and middlewares share, built once by
/// `startup`; each HTTP worker gets a clone for [`public_app`], which opens
/// that worker's own pools.
#[derive(Clone)]
pub(crate) struct AppState {
    /// The read endpoints (primary and replicas) and their per-worker pools.
    pub mysql: Arc<ReadEndpoints>,
    /// Reads of one id in flight, shared by every worker.
    pub coalescer: ReadCoalescer,
    /// The lock engine; each worker gets a copy making calls through its own Redis pool.
    pub locks: LockEngine,
    /// The per-worker Redis pools.
    pub redis: Arc<RedisPools>,
    /// The fleet-wide MySQL connection budget of each endpoint (primary
    /// first), when `DB_FLEET_MAX` is set; empty otherwise.
    pub fleet: Vec<Arc<FleetBudget>>,
    /// Flips to true when shutdown begins (readiness turns 503).
    pub leaving: tokio::sync::watch::Receiver<bool>,
    /// The readiness verdict, shared by every worker.
    pub readiness: Arc<ReadinessCache>,
    /// Which bearer keys are accepted.
    pub auth: web::Data<AuthPolicy>,
    /// The in-flight cap.
    pub limit: web::Data<Arc<InFlightLimit>>,
    /// Metrics registry.
    pub metrics: web::Data<Metrics>,
    /// Sockets of waiting requests.
    pub peers: web::Data<PeerWatch>,
}

/// The public server on `listener`: `workers` threads, each with its own
/// [`public_app`]; HTTPS when `certificate` is given (see [`tls`]).
///
/// Built on actix-http rather than `HttpServer` for one hook: an
/// `Expect: 100-continue` is answered only after the key is checked.
pub(crate) fn public_server(
    listener: TcpListener,
    state: AppState,
    workers: usize,
    certificate: Option<Arc<tls::ListenerCertificate>>,
) -> std::io::Result<Server> {
    let builder = actix_server::Server::build();
    let shutdown = builder.graceful_shutdown_signal();
    // One service definition for both transports; only the connection hook
    // (which socket lies under the stream) and the last step differ.
    macro_rules! public_service {
        ($stream:ty, $socket:expr, $encrypted:expr) => {{
            let (state, shutdown, auth) = (state.clone(), shutdown.clone(), state.auth.clone());
            HttpService::<$stream, _, _, _, _>::build()
                .graceful_shutdown_signal(move || {
                    let shutdown = shutdown.clone();
                    async move { shutdown.notified().await }
                })
                // Longer than the keep-alive of typical client agents, so the server
                // is not the side that closes a connection a client is about to reuse.
                .keep_alive(KeepAlive::Timeout(Duration::from_secs(75)))
                // Time to receive a request's headers; slow-loris clients are cut off.
                .client_request_timeout(Duration::from_secs(5))
                .client_disconnect_timeout(Duration::from_secs(1))
                .on_connect_ext(|io: &$stream, data: &mut Extensions| {
                    record_peer_socket($socket(io), $encrypted, data)
                })
                .expect(fn_service(move |request: Request| {
                    let auth = auth.clone();
                    async move {
                        match may_continue(&auth, request.headers()).await {
                            Ok(()) => Ok(request),
                            Err(refused) => Err(actix_web::Error::from(refused)),
                        }
                    }
                }))
                .finish(map_config(public_app(state), |_| AppConfig::default()))
        }};
    }
    let builder = builder
        .workers(workers)
        .disable_signals()
        // `startup` drains requests before it stops the server: what is left
        // then are idle keep-alive connections.
        .shutdown_timeout(1);
    let builder = match certificate {
        None => builder.listen("middleway", listener, move || {
            public_service!(TcpStream, plain_socket, false).tcp()
        })?,
        Some(certificate) => {
            let config = certificate.server_config();
            builder.listen("middleway", listener, move || {
                public_service!(TlsStream<TcpStream>, tls_socket, true)
                    .rustls_0_23_with_config(config.clone(), tls_acceptor_config())
            })?
        }
    };
    Ok(builder.run())
}

fn plain_socket(stream: &TcpStream) -> &TcpStream {
    stream
}

fn tls_socket(stream: &TlsStream<TcpStream>) -> &TcpStream {
    stream.get_ref().0
}

/// A TLS handshake must finish as fast as request headers must arrive.
fn tls_acceptor_config() -> actix_http::TlsAcceptorConfig {
    actix_http::TlsAcceptorConfig::default().handshake_timeout(Duration::from_secs(5))
}

/// The admin server on `listener`: one worker, `/metrics`.
pub(crate) fn admin_server(
    listener: TcpListener,
    state: web::Data<AdminState>,
) -> std::io::Result<Server> {
    Ok(HttpServer::new(move || admin_app(state.clone()))
        .listen(listener)?
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .run())
}

/// The public listener's app, for one HTTP worker.
fn public_app(
    state: AppState,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    // Called on the worker's runtime: its pools' connections live there.
    let redis = state.redis.for_worker();
    let budgets: Vec<_> = state
        .fleet
        .iter()
        .map(|fleet| fleet.for_worker(state.locks.for_worker(redis.clone())))
        .collect();
    let mysql = state.mysql.open_for_worker(|n| budgets.get(n).cloned());
    let metrics = state.metrics.get_ref().clone();
    let reader =
        TranscriptionReader::for_worker(Rc::clone(&mysql), state.coalescer, metrics.clone());
    let readiness = Readiness {
        mysql,
        redis: redis.clone(),
        cache: state.readiness,
        leaving: state.leaving,
        metrics: metrics.clone(),
    };
    App::new()
        .app_data(web::Data::new(reader))
        .app_data(web::Data::new(state.locks.for_worker(redis)))
        .app_data(web::Data::new(readiness))
        .app_data(state.auth)
        .app_data(state.limit)
        .app_data(state.metrics)
        .app_data(state.peers)
        .app_data(body::json_config())
        .wrap(from_fn(track_requests))
        .wrap(TracingLogger::<AccessLog>::new())
        .wrap(from_fn(guard_edge))
        .wrap(from_fn(stamp_request_context))
        .service(open_get("/healthz", healthz))
        .service(open_get("/readyz", readyz))
        .service(open_get("/openapi.json", openapi_json))
        .service(
            web::resource("/transcriptions")
                .wrap(from_fn(shed_overload))
                .wrap(from_fn(require_reads))
                .wrap(from_fn(require_api_key))
                .route(web::get().to(get_transcriptions))
                .route(web::head().to(get_transcriptions))
                .default_service(web::to(|| method_not_allowed("GET, HEAD"))),
        )
        .service(
            web::resource("/transcriptions/{id}")
                .wrap(from_fn(shed_overload))
                .wrap(from_fn(require_reads))
                .wrap(from_fn(require_api_key))
                .route(web::get().to(get_transcription))
                .route(web::head().to(get_transcription))
                .default_service(web::to(|| method_not_allowed("GET, HEAD"))),
        )
        .service(
            web::resource("/locks")
                .wrap(from_fn(compact_headers))
                .wrap(from_fn(shed_overload))
                .wrap(from_fn(require_api_key))
                .route(web::post().to(post_locks))
                .default_service(web::to(|| method_not_allowed("POST"))),
        )
        .default_service(web::to(not_found))
}

/// The admin listener's app: `/metrics` only.
fn admin_app(
    state: web::Data<AdminState>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(state)
        .wrap(from_fn(stamp_request_context))
        .service(open_get("/metrics", metrics_endpoint))
        .default_service(web::to(not_found))
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such route".into()))
}

async fn method_not_allowed(allow: &'static str) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed { allow })
}

/// A GET (and HEAD) route that needs no key, answering 405 to other methods.
fn open_get<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args> + Clone,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler.clone()))
        .route(web::head().to(handler))
        .default_service(web::to(|| method_not_allowed("GET, HEAD")))
}
