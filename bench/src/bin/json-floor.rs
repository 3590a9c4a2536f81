//! The JSON floor of a lock pair: the least any lock service built on
//! actix-web pays per acquire + release before it locks anything. One
//! `POST /locks` route on the same HTTP stack and worker count as the
//! service, no middleware, no authentication, no Redis: it reads the
//! operation from the JSON body as the service does (`op` names it) and
//! answers a body of the service's shape, a grant or a release.
//!
//! It grants every acquire and releases every token: it is a measuring stick
//! for `bench/run.sh locks` (the `json-floor` cells), never a lock service.
//!
//!   json-floor ADDRESS        e.g. 127.0.0.1:18390; WORKERS=n as the service

use std::sync::atomic::{AtomicU64, Ordering};

use actix_web::{App, HttpResponse, HttpServer, web};
use serde::{Deserialize, Serialize};

/// The two operations of a pair, as the service reads them.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Operation {
    Acquire {
        name: String,
        #[allow(dead_code)]
        wait_ms: u64,
        lease_ms: u64,
    },
    Release {
        name: String,
        #[allow(dead_code)]
        token: String,
    },
}

/// A grant's body, shaped as the service's (a token of the same length).
#[derive(Serialize)]
struct GrantBody<'a> {
    name: &'a str,
    token: String,
    fence: u64,
    lease_ms: u64,
    expires_at: &'static str,
}

#[derive(Serialize)]
struct ReleasedBody<'a> {
    name: &'a str,
    released: bool,
}

/// Fences of the grants answered, so each token differs as the service's do.
static FENCES: AtomicU64 = AtomicU64::new(1_790_000_000_000_000);

async fn locks(operation: web::Json<Operation>) -> HttpResponse {
    match operation.into_inner() {
        Operation::Acquire { name, lease_ms, .. } => {
            let fence = FENCES.fetch_add(1, Ordering::Relaxed);
            HttpResponse::Ok().json(GrantBody {
                name: &name,
                token: format!("9f2c4e1a7b3d5f60.{fence}.{fence}.0123456789abcdef0123456789abcdef"),
                fence,
                lease_ms,
                expires_at: "2026-12-05T12:00:00.000Z",
            })
        }
        Operation::Release { name, .. } => HttpResponse::Ok().json(ReleasedBody {
            name: &name,
            released: true,
        }),
    }
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18390".into());
    let mut server = HttpServer::new(|| App::new().route("/locks", web::post().to(locks)));
    if let Some(workers) = std::env::var("WORKERS").ok().and_then(|w| w.parse().ok()) {
        server = server.workers(workers);
    }
    server.bind(address)?.run().await
}
