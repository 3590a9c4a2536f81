//! The strategies a function fleet might use, each as a `Worker`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request};
use rand::RngExt;
use redis::aio::MultiplexedConnection;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool};
use sqlx::{Connection, MySqlConnection};

use crate::http::{HttpConnection, expect_ok};
use crate::load::{Failure, Worker};

/// The lookup every MySQL strategy runs: the service's own query.
pub const SELECT_BY_ID: &str = "SELECT transcription_id, call_id, language, CAST(status AS CHAR) AS status, \
     duration_ms, confidence, content, created_at, updated_at FROM transcriptions WHERE transcription_id = ?";

fn random_id(rows: u64) -> u64 {
    rand::rng().random_range(1..=rows)
}

fn mysql_failure(error: &sqlx::Error) -> Failure {
    match error {
        sqlx::Error::Database(db)
            if db.code().as_deref() == Some("08004")
                || db.message().contains("Too many connections") =>
        {
            Failure::TooManyConnections
        }
        sqlx::Error::Io(_) => Failure::Connect,
        sqlx::Error::PoolTimedOut => Failure::Timeout,
        _ => Failure::Other,
    }
}

/// 1. Open a connection, query, close: what most functions do.
pub struct ConnectPerRequest {
    pub options: MySqlConnectOptions,
    pub rows: u64,
}

impl Worker for ConnectPerRequest {
    async fn run_once(&mut self) -> Result<(), Failure> {
        let mut conn = MySqlConnection::connect_with(&self.options)
            .await
            .map_err(|e| mysql_failure(&e))?;
        let result = sqlx::query(SELECT_BY_ID)
            .bind(random_id(self.rows))
            .fetch_optional(&mut conn)
            .await;
        let _ = conn.close().await;
        result.map(|_| ()).map_err(|e| mysql_failure(&e))
    }
}

/// 2. One connection per instance, kept across requests (serverless-mysql).
/// Opened before the measured requests, it is also the strongest direct
/// baseline one process can build (`direct-persistent`): no pool, no
/// hand-off between tasks, the statement prepared once per connection.
pub struct ConnectionPerInstance {
    pub options: MySqlConnectOptions,
    pub rows: u64,
    pub conn: Option<MySqlConnection>,
}

impl Worker for ConnectionPerInstance {
    async fn run_once(&mut self) -> Result<(), Failure> {
        if self.conn.is_none() {
            self.conn = Some(
                MySqlConnection::connect_with(&self.options)
                    .await
                    .map_err(|e| mysql_failure(&e))?,
            );
        }
        let conn = self.conn.as_mut().expect("just set");
        match sqlx::query(SELECT_BY_ID)
            .bind(random_id(self.rows))
            .fetch_optional(conn)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                self.conn = None;
                Err(mysql_failure(&e))
            }
        }
    }
}

/// 5. The ceiling: one in-process pool of the service's size, no HTTP.
pub struct DirectPool {
    pub pool: MySqlPool,
    pub rows: u64,
}

impl Worker for DirectPool {
    async fn run_once(&mut self) -> Result<(), Failure> {
        sqlx::query(SELECT_BY_ID)
            .bind(random_id(self.rows))
            .fetch_optional(&self.pool)
            .await
            .map(|_| ())
            .map_err(|e| mysql_failure(&e))
    }
}

/// 3 and 4. `GET /transcriptions/{id}` through middleway, on a new
/// connection per request (cold function) or a kept-alive one (warm).
pub struct MiddlewayRead {
    pub http: HttpConnection,
    pub host: String,
    pub key: String,
    pub rows: u64,
    pub keep_alive: bool,
}

impl Worker for MiddlewayRead {
    async fn run_once(&mut self) -> Result<(), Failure> {
        let request = Request::builder()
            .uri(format!("/transcriptions/{}", random_id(self.rows)))
            .header("host", &self.host)
            .header("authorization", format!("Bearer {}", self.key))
            .header(
                "connection",
                if self.keep_alive {
                    "keep-alive"
                } else {
                    "close"
                },
            )
            .body(Full::new(Bytes::new()))
            .expect("valid request");
        let (status, _) = self.http.send(request, self.keep_alive).await?;
        expect_ok(status)
    }
}

/// `GET /transcriptions?ids=` with `batch` distinct random ids (keep-alive).
pub struct MiddlewayBatchRead {
    pub http: HttpConnection,
    pub host: String,
    pub key: String,
    pub rows: u64,
    pub batch: usize,
}

impl Worker for MiddlewayBatchRead {
    async fn run_once(&mut self) -> Result<(), Failure> {
        let mut ids: Vec<u64> = Vec::with_capacity(self.batch);
        while ids.len() < self.batch {
            let id = random_id(self.rows);
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        let list = ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        let request = Request::builder()
            .uri(format!("/transcriptions?ids={list}"))
            .header("host", &self.host)
            .header("authorization", format!("Bearer {}", self.key))
            .body(Full::new(Bytes::new()))
            .expect("valid request");
        let (status, _) = self.http.send(request, true).await?;
        expect_ok(status)
    }
}

/// A random lock name out of `names`.
fn lock_name(names: usize) -> String {
    format!("bench-{}", rand::rng().random_range(0..names))
}

/// acquire + release through middleway (keep-alive).
pub struct MiddlewayLockCycle {
    pub http: HttpConnection,
    pub host: String,
    pub key: String,
    pub names: usize,
}

impl MiddlewayLockCycle {
    async fn post(&mut self, body: serde_json::Value) -> Result<serde_json::Value, Failure> {
        let request = Request::builder()
            .method(Method::POST)
            .uri("/locks")
            .header("host", &self.host)
            .header("authorization", format!("Bearer {}", self.key))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("valid request");
        let (status, body) = self.http.send(request, true).await?;
        expect_ok(status)?;
        serde_json::from_slice(&body).map_err(|_| Failure::Other)
    }
}

impl Worker for MiddlewayLockCycle {
    async fn run_once(&mut self) -> Result<(), Failure> {
        let name = lock_name(self.names);
        let grant = self.post(serde_json::json!({"op": "acquire", "name": name, "wait_ms": 5000, "lease_ms": 10000})).await?;
        self.post(serde_json::json!({"op": "release", "name": name, "token": grant["token"]}))
            .await
            .map(|_| ())
    }
}

/// The floor of the HTTP hop: a pair of keep-alive `GET /healthz` (no Redis,
/// no auth, a constant body), made like `MiddlewayLockCycle`'s pair. No lock
/// engine behind this HTTP stack can make pairs faster than this on the same
/// machine.
pub struct HttpFloorPair {
    pub http: HttpConnection,
    pub host: String,
}

impl HttpFloorPair {
    async fn get(&mut self) -> Result<(), Failure> {
        let request = Request::builder()
            .uri("/healthz")
            .header("host", &self.host)
            .body(Full::new(Bytes::new()))
            .expect("valid request");
        let (status, _) = self.http.send(request, true).await?;
        expect_ok(status)
    }
}

impl Worker for HttpFloorPair {
    async fn run_once(&mut self) -> Result<(), Failure> {
        self.get().await?;
        self.get().await
    }
}

/// The ceiling for locks: the same Lua scripts over a pool of Redis connections, no HTTP.
pub struct DirectLockCycle {
    pub store: Arc<middleway::locks::LockStore>,
    pub pool: Arc<Vec<MultiplexedConnection>>,
    pub next: Arc<AtomicUsize>,
    pub names: usize,
}

impl Worker for DirectLockCycle {
    async fn run_once(&mut self) -> Result<(), Failure> {
        use middleway::locks::LockName;
        let name = LockName::parse(&lock_name(self.names)).map_err(|_| Failure::Other)?;
        let mut conn =
            self.pool[self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len()].clone();
        let lease = std::time::Duration::from_secs(10);
        // Uncontended cycles are the common case; a busy name is retried like a waiter would.
        loop {
            let granted = self
                .store
                .try_acquire(&mut conn, &name, 1, lease)
                .await
                .map_err(|_| Failure::Other)?;
            if let Some(grant) = granted {
                let released = self
                    .store
                    .release(&mut conn, &name, &grant.token)
                    .await
                    .map_err(|_| Failure::Other)?;
                return released.map_err(|_| Failure::Other);
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
}

/// The naive pattern: BLPOP the token, LPUSH it back, one connection per waiter.
pub struct NaiveBlpop {
    pub conn: MultiplexedConnection,
    pub names: usize,
}

impl Worker for NaiveBlpop {
    async fn run_once(&mut self) -> Result<(), Failure> {
        let key = format!("naive:{}", lock_name(self.names));
        let popped: Option<(String, String)> = redis::cmd("BLPOP")
            .arg(&key)
            .arg(5)
            .query_async(&mut self.conn)
            .await
            .map_err(|_| Failure::Other)?;
        let Some((_, token)) = popped else {
            return Err(Failure::Timeout);
        };
        redis::cmd("LPUSH")
            .arg(&key)
            .arg(token)
            .query_async::<i64>(&mut self.conn)
            .await
            .map_err(|_| Failure::Other)?;
        Ok(())
    }
}
