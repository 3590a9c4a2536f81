//! `/healthz` (the process serves) and `/readyz` (dependencies answer and we are not draining).

use std::rc::Rc;
use std::time::Duration;

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::http::error::ApiError;
use crate::metrics::Metrics;
use crate::pools::mysql::{AcquireError, WorkerPool};
use crate::pools::redis::RedisPool;

/// A readiness probe must answer well inside Kubernetes' probe timeout.
const CHECK_TIMEOUT: Duration = Duration::from_millis(800);

/// What readiness looks at: this HTTP worker's pools (their connections
/// close cleanly at shutdown, as the reads' do).
#[derive(Clone)]
pub(crate) struct Readiness {
    /// MySQL pool to ping.
    pub mysql: Rc<WorkerPool>,
    /// Redis pool to ping.
    pub redis: RedisPool,
    /// True once shutdown begins: the load balancer must stop sending traffic.
    pub draining: tokio::sync::watch::Receiver<bool>,
    /// Where each verdict is recorded (`middleway_ready`, for flapping alerts).
    pub metrics: Metrics,
}

impl Readiness {
    async fn mysql_answers(&self) -> bool {
        let _read = self.mysql.begin_read();
        let ping = async {
            let mut conn = match self.mysql.acquire().await {
                Ok(conn) => conn,
                // Every connection busy, or the fleet budget spent: that is
                // load, not failure; taking this replica out would shed more.
                Err(AcquireError::Exhausted) => return Some(1),
                Err(_) => return None,
            };
            let one = sqlx::query_scalar::<_, i32>("SELECT 1")
                .fetch_one(conn.conn())
                .await;
            if one.is_err() {
                conn.discard();
            }
            one.ok()
        };
        matches!(tokio::time::timeout(CHECK_TIMEOUT, ping).await, Ok(Some(1)))
    }

    async fn redis_answers(&self) -> bool {
        let ping = async {
            let mut conn = self.redis.connection().await.ok()?;
            conn.serves().await.then_some(())
        };
        matches!(tokio::time::timeout(CHECK_TIMEOUT, ping).await, Ok(Some(_)))
    }
}

/// `GET /healthz`.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process serves", body = inline(Object), example = json!({"status": "ok"}))))]
pub(crate) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 when both dependencies answer, else a 503 problem naming what fails.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "MySQL and Redis answer", body = inline(Object)),
        (status = 503, description = "A dependency fails, or the service is draining",
            body = inline(crate::http::error::ProblemSchema), content_type = "application/problem+json",
            headers(("Retry-After" = String, description = "Seconds"))),
    ))]
pub(crate) async fn readyz(readiness: web::Data<Readiness>) -> Result<HttpResponse, ApiError> {
    let verdict = check(&readiness).await;
    readiness.metrics.ready.set(i64::from(verdict.is_ok()));
    verdict
}

async fn check(readiness: &Readiness) -> Result<HttpResponse, ApiError> {
    if *readiness.draining.borrow() {
        return Err(ApiError::Unavailable(
            "draining: the service is shutting down",
        ));
    }
    let (mysql, redis) = tokio::join!(readiness.mysql_answers(), readiness.redis_answers());
    match (mysql, redis) {
        (true, true) => {
            Ok(HttpResponse::Ok().json(json!({"status": "ok", "mysql": "ok", "redis": "ok"})))
        }
        (false, true) => Err(ApiError::Unavailable("mysql: unreachable")),
        (true, false) => Err(ApiError::Unavailable("redis: unreachable")),
        (false, false) => Err(ApiError::Unavailable(
            "mysql: unreachable; redis: unreachable",
        )),
    }
}
