//! `/healthz` (the process serves) and `/readyz` (dependencies answer and we are not draining).

use std::time::Duration;

use actix_web::{HttpResponse, web};
use serde_json::json;
use sqlx::MySqlPool;

use crate::http::error::ApiError;
use crate::pools::redis::RedisPool;

/// A readiness probe must answer well inside Kubernetes' probe timeout.
const CHECK_TIMEOUT: Duration = Duration::from_millis(800);

/// What readiness looks at.
#[derive(Clone)]
pub(crate) struct Readiness {
    /// MySQL pool to ping.
    pub mysql: MySqlPool,
    /// Redis pool to ping.
    pub redis: RedisPool,
    /// True once shutdown begins: the load balancer must stop sending traffic.
    pub draining: tokio::sync::watch::Receiver<bool>,
    /// The runtime that owns pool connections (see `startup`): a connection
    /// opened on an HTTP worker would die with that worker instead of closing cleanly.
    pub runtime: tokio::runtime::Handle,
}

impl Readiness {
    async fn mysql_answers(&self) -> bool {
        let ping = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&self.mysql);
        matches!(tokio::time::timeout(CHECK_TIMEOUT, ping).await, Ok(Ok(1)))
    }

    async fn redis_answers(&self) -> bool {
        let ping = async {
            let mut conn = self.redis.connection().await.ok()?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .ok()
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
    if *readiness.draining.borrow() {
        return Err(ApiError::Unavailable(
            "draining: the service is shutting down",
        ));
    }
    let checks = readiness.get_ref().clone();
    let (mysql, redis) = readiness
        .runtime
        .spawn(async move { tokio::join!(checks.mysql_answers(), checks.redis_answers()) })
        .await
        .unwrap_or((false, false));
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
