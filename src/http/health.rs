//! `/healthz` (the process serves) and `/readyz` (per capability: reads
//! need MySQL, locks need Redis; ready while either can be served and we
//! are not draining).
//!
//! MySQL and Redis are shared by every replica: a readiness that failed on
//! either would take every pod out of the Service at once and the other
//! capability down with it. And a probe is cheap to send: the verdict is
//! shared by the process and refreshed at most once per [`FRESH_FOR`], one
//! check at a time, so a flood of probes costs the backends nothing.

use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use crate::http::error::{ApiError, FieldError};
use crate::metrics::Metrics;
use crate::pools::mysql::AcquireError;
use crate::pools::redis::RedisPool;
use crate::pools::replicas::{Endpoint, WorkerReads};

/// A readiness probe must answer well inside Kubernetes' probe timeout.
const CHECK_TIMEOUT: Duration = Duration::from_millis(800);

/// A verdict younger than this answers every probe.
const FRESH_FOR: Duration = Duration::from_secs(1);

/// What the backends answered at the last check.
#[derive(Debug, Clone, Copy)]
struct Verdict {
    checked_at: Instant,
    mysql: bool,
    redis: bool,
}

/// The last verdict, shared by every HTTP worker, and the right to check.
#[derive(Default)]
pub(crate) struct ReadinessCache {
    last: Mutex<Option<Verdict>>,
    checking: tokio::sync::Mutex<()>,
}

impl ReadinessCache {
    fn fresh(&self) -> Option<Verdict> {
        self.last().filter(|v| v.checked_at.elapsed() < FRESH_FOR)
    }

    fn last(&self) -> Option<Verdict> {
        *self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn store(&self, verdict: Verdict) {
        *self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(verdict);
    }
}

/// What readiness looks at: this HTTP worker's pools (their connections
/// close cleanly at shutdown, as the reads' do), and the process' verdict.
#[derive(Clone)]
pub(crate) struct Readiness {
    /// MySQL pools: the primary's to ping, and whether a replica serves.
    pub mysql: Rc<WorkerReads>,
    /// Redis pool to ping.
    pub redis: RedisPool,
    /// The verdict every worker shares.
    pub cache: Arc<ReadinessCache>,
    /// True once shutdown begins (before the drain, during
    /// `SHUTDOWN_DELAY_S`): the load balancer must stop sending traffic.
    pub leaving: tokio::sync::watch::Receiver<bool>,
    /// Where each verdict is recorded (`middleway_ready`,
    /// `middleway_dependency_up`).
    pub metrics: Metrics,
}

impl Readiness {
    /// A verdict no older than [`FRESH_FOR`] when this probe may check;
    /// while another probe checks, the last verdict stands.
    async fn verdict(&self) -> Verdict {
        if let Some(verdict) = self.cache.fresh() {
            return verdict;
        }
        let _checking = match self.cache.checking.try_lock() {
            Ok(guard) => guard,
            Err(_) => match self.cache.last() {
                Some(verdict) => return verdict,
                // The first probe of all: nothing to answer with yet.
                None => self.cache.checking.lock().await,
            },
        };
        if let Some(verdict) = self.cache.fresh() {
            return verdict;
        }
        let (mysql, redis) = tokio::join!(self.mysql_answers(), self.redis_answers());
        let verdict = Verdict {
            checked_at: Instant::now(),
            mysql,
            redis,
        };
        self.cache.store(verdict);
        // Recorded once per check, not per probe: the verdict is what changed.
        self.metrics.ready.set(i64::from(mysql || redis));
        let up = &self.metrics.dependency_up;
        up.with_label_values(&["mysql"]).set(i64::from(mysql));
        up.with_label_values(&["redis"]).set(i64::from(redis));
        verdict
    }

    /// Reads can be served: the primary answers, or a replica takes reads
    /// (the probes in `pools::heartbeat` keep that state).
    async fn mysql_answers(&self) -> bool {
        self.mysql.any_replica_serving() || self.primary_answers().await
    }

    async fn primary_answers(&self) -> bool {
        let primary = self.mysql.pool(Endpoint::Primary);
        let _read = primary.begin_read();
        let ping = async {
            let mut conn = match primary.acquire().await {
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

/// What a probe may ask about.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Capability {
    /// `GET /transcriptions…`: needs MySQL.
    Transcriptions,
    /// `POST /locks`: needs Redis.
    Locks,
}

#[derive(Deserialize)]
struct ReadyQuery {
    capability: Option<Capability>,
}

/// `GET /readyz`: 200 while at least one capability (or the one asked
/// for) can be served; else a 503 problem naming what fails.
#[utoipa::path(get, path = "/readyz", tag = "health",
    params(("capability" = Option<Capability>, Query, description = "Answer for this capability only")),
    responses(
        (status = 200, description = "Ready; each capability's state", body = inline(Object),
            example = json!({"status": "ok", "transcriptions": "ok", "locks": "unavailable: redis unreachable"})),
        (status = 400, description = "An unknown capability",
            body = inline(crate::http::error::ProblemSchema), content_type = "application/problem+json"),
        (status = 503, description = "Draining, or no capability (not the one asked for) can be served",
            body = inline(crate::http::error::ProblemSchema), content_type = "application/problem+json",
            headers(("Retry-After" = String, description = "Seconds"))),
    ))]
pub(crate) async fn readyz(
    readiness: web::Data<Readiness>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let asked = web::Query::<ReadyQuery>::from_query(request.query_string())
        .map_err(|_| {
            ApiError::InvalidRequest(FieldError::new(
                "capability",
                "expected transcriptions or locks",
            ))
        })?
        .capability;
    if *readiness.leaving.borrow() {
        readiness.metrics.ready.set(0);
        return Err(ApiError::Unavailable(
            "draining: the service is shutting down",
        ));
    }
    answer(readiness.verdict().await, asked)
}

/// A capability's state in the body.
fn state(up: bool, dependency: &str) -> String {
    if up {
        "ok".into()
    } else {
        format!("unavailable: {dependency} unreachable")
    }
}

fn answer(verdict: Verdict, asked: Option<Capability>) -> Result<HttpResponse, ApiError> {
    let Verdict { mysql, redis, .. } = verdict;
    match asked {
        None if mysql || redis => Ok(HttpResponse::Ok().json(json!({
            "status": "ok",
            "transcriptions": state(mysql, "mysql"),
            "locks": state(redis, "redis"),
        }))),
        None => Err(ApiError::Unavailable(
            "mysql: unreachable; redis: unreachable",
        )),
        Some(Capability::Transcriptions) if mysql => {
            Ok(HttpResponse::Ok().json(json!({"status": "ok", "transcriptions": "ok"})))
        }
        Some(Capability::Transcriptions) => {
            Err(ApiError::Unavailable("transcriptions: mysql unreachable"))
        }
        Some(Capability::Locks) if redis => {
            Ok(HttpResponse::Ok().json(json!({"status": "ok", "locks": "ok"})))
        }
        Some(Capability::Locks) => Err(ApiError::Unavailable("locks: redis unreachable")),
    }
}
