//! The in-process service a test talks to, and the requests tests send it.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use middleway::config::Settings;
use middleway::startup::{Application, ShutdownTrigger};
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{Executor, MySqlPool};
use tokio::task::JoinHandle;

use super::random_suffix;

/// The key every test app accepts.
pub const TEST_KEY: &str = "test-key-0123456789";

/// The shared MariaDB started by `scripts/services.sh` (user with CREATE rights, no database).
pub fn mysql_admin_url() -> String {
    std::env::var("TEST_MYSQL_ADMIN_URL")
        .unwrap_or_else(|_| "mysql://middleway:middleway@127.0.0.1:13306".into())
}

/// The shared Redis started by `scripts/services.sh`.
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:16379/0".into())
}

/// Creates a fresh database on the server at `admin_url` and migrates it.
pub async fn create_database(admin_url: &str) -> (String, String) {
    let name = format!("mw_test_{}", random_suffix());
    let admin = MySqlPoolOptions::new()
        .max_connections(1)
        .connect(admin_url)
        .await
        .expect("MariaDB for tests is up (run scripts/services.sh start)");
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
        .await
        .expect("create test database");
    admin.close().await;
    let url = format!("{admin_url}/{name}");
    let pool = MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("connect test database");
    middleway::MIGRATOR
        .run(&pool)
        .await
        .expect("migrate test database");
    pool.close().await;
    (name, url)
}

/// A running in-process service and what a test needs to talk to it.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`
    pub address: String,
    /// `http://127.0.0.1:<admin port>`
    pub admin_address: String,
    /// A pool on the test's own database, for arranging rows.
    pub db: MySqlPool,
    /// The test's database name.
    pub db_name: String,
    /// The test's Redis key prefix.
    pub key_prefix: String,
    /// Starts graceful shutdown.
    pub shutdown: ShutdownTrigger,
    /// Keep-alive HTTP client.
    pub client: reqwest::Client,
    /// Resolves when the service has stopped.
    pub stopped: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Environment for a test app; tests override entries before spawning.
pub fn base_env(database_url: &str, redis: &str, key_prefix: &str) -> HashMap<String, String> {
    HashMap::from([
        ("DATABASE_URL".into(), database_url.into()),
        ("REDIS_URL".into(), redis.into()),
        ("BIND_ADDR".into(), "127.0.0.1:0".into()),
        ("ADMIN_BIND_ADDR".into(), "127.0.0.1:0".into()),
        ("API_KEYS".into(), format!("tests:{TEST_KEY}")),
        ("REDIS_KEY_PREFIX".into(), key_prefix.into()),
        ("DB_POOL_MAX".into(), "8".into()),
        ("SHUTDOWN_TIMEOUT_S".into(), "5".into()),
    ])
}

/// A service on its own database and key prefix, with default settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A service whose environment `adjust` may change first.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut HashMap<String, String>)) -> TestApp {
    let (db_name, database_url) = create_database(&mysql_admin_url()).await;
    let key_prefix = format!("mwtest:{}:", random_suffix());
    let mut env = base_env(&database_url, &redis_url(), &key_prefix);
    adjust(&mut env);
    spawn_app_on(env, db_name, key_prefix).await
}

/// A service whose principals come from the `AUTH_FILE` at `file`, with
/// `extra` settings.
pub async fn spawn_app_with_auth_file(file: &std::path::Path, extra: &[(&str, &str)]) -> TestApp {
    let path = file.display().to_string();
    spawn_app_with(|env| {
        env.insert("AUTH_FILE".into(), path);
        for (name, value) in extra {
            env.insert((*name).into(), (*value).into());
        }
    })
    .await
}

/// A counter's value in a scrape, by its series (`name{labels}`); 0 when absent.
pub fn series_value(scrape: &str, series: &str) -> u64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// A service with exactly this environment.
pub async fn spawn_app_on(
    env: HashMap<String, String>,
    db_name: String,
    key_prefix: String,
) -> TestApp {
    middleway::telemetry::init(middleway::config::LogFormat::Json);
    let settings = Settings::from_lookup(|k| env.get(k).cloned()).expect("valid test settings");
    let app = Application::build(settings).await.expect("build app");
    let address = format!("http://{}", app.public_addr());
    let admin_address = format!("http://{}", app.admin_addr());
    let shutdown = app.shutdown_trigger();
    let stopped = tokio::spawn(app.run_until_stopped());
    let db = MySqlPoolOptions::new()
        .max_connections(2)
        .connect_lazy_with(MySqlConnectOptions::from_str(&env["DATABASE_URL"]).expect("url"));
    TestApp {
        address,
        admin_address,
        db,
        db_name,
        key_prefix,
        shutdown,
        client: client(),
        stopped,
    }
}

/// A reqwest client builder, after the service's TLS provider is installed
/// (reqwest is built without one of its own).
pub fn http_client_builder() -> reqwest::ClientBuilder {
    middleway::crypto::install_provider();
    reqwest::Client::builder()
}

/// An HTTP/1.1 keep-alive client with a generous timeout (tests assert behaviour, not speed).
pub fn client() -> reqwest::Client {
    http_client_builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1024)
        .build()
        .expect("client")
}

impl TestApp {
    /// GET with the test key.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .bearer_auth(TEST_KEY)
            .send()
            .await
            .expect("request sent")
    }

    /// GET without any key (health, readiness, OpenAPI, unknown routes).
    pub async fn get_without_key(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("request sent")
    }

    /// POST /locks with the test key and a JSON body.
    pub async fn lock(&self, body: Value) -> reqwest::Response {
        post_lock(&self.client, &self.address, &body).await
    }

    /// An acquire of `name` waiting up to `wait_ms` for a `lease_ms` lease.
    pub async fn acquire(&self, name: &str, wait_ms: u64, lease_ms: u64) -> reqwest::Response {
        self.lock(serde_json::json!({"op": "acquire", "name": name, "wait_ms": wait_ms, "lease_ms": lease_ms}))
            .await
    }

    /// An acquire that must succeed; the grant's body.
    pub async fn grant(&self, name: &str, wait_ms: u64, lease_ms: u64) -> Value {
        let response = self.acquire(name, wait_ms, lease_ms).await;
        assert_eq!(response.status(), StatusCode::OK, "acquire {name}");
        response.json().await.expect("grant body")
    }

    /// A release of `token`.
    pub async fn release(&self, name: &str, token: &Value) -> reqwest::Response {
        self.lock(serde_json::json!({"op": "release", "name": name, "token": token}))
            .await
    }

    /// `{"op": "inspect"}` of `name`: the lock's state.
    pub async fn inspect(&self, name: &str) -> Value {
        inspect(&self.client, &self.address, name).await
    }

    /// Sends `body` to `/locks` from a task of its own, on a connection of its
    /// own (so aborting the task hangs that connection up).
    pub fn lock_in_background(&self, body: Value) -> JoinHandle<Outcome> {
        waiter(self.address.clone(), body)
    }

    /// Sends the acquire `body` from a task of its own (as
    /// [`Self::lock_in_background`]) and waits until it is the one request
    /// queued on `name`.
    pub async fn queued_waiter(&self, name: &str, body: Value) -> JoinHandle<Outcome> {
        let waiter = self.lock_in_background(body);
        let queued = super::eventually(Duration::from_secs(5), async || {
            self.inspect(name).await["waiting"] == 1
        })
        .await;
        assert!(queued, "{name}: the acquire waits");
        waiter
    }

    /// Inserts a row and returns its id.
    pub async fn insert_transcription(&self, row: &NewRow<'_>) -> u64 {
        sqlx::query(
            "INSERT INTO transcriptions (call_id, language, status, duration_ms, confidence, content, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(row.call_id)
        .bind(row.language)
        .bind(row.status)
        .bind(row.duration_ms)
        .bind(row.confidence)
        .bind(row.content)
        .bind(row.created_at)
        .bind(row.updated_at)
        .execute(&self.db)
        .await
        .expect("insert row")
        .last_insert_id()
    }
}

/// A row to insert; times are `YYYY-MM-DD HH:MM:SS.mmm` UTC.
pub struct NewRow<'a> {
    pub call_id: &'a str,
    pub language: &'a str,
    pub status: &'a str,
    pub duration_ms: Option<u32>,
    pub confidence: Option<f32>,
    pub content: Option<&'a str>,
    pub created_at: &'a str,
    pub updated_at: &'a str,
}

impl Default for NewRow<'_> {
    fn default() -> Self {
        Self {
            call_id: "CA-test",
            language: "en-US",
            status: "completed",
            duration_ms: Some(61234),
            confidence: Some(0.93),
            content: Some("Hello, thanks for calling ..."),
            created_at: "2026-11-22 10:00:00.000",
            updated_at: "2026-11-22 10:01:02.345",
        }
    }
}

/// The Prometheus text of an admin listener (`http://127.0.0.1:<port>`).
pub async fn metrics_text(admin_address: &str) -> String {
    reqwest::get(format!("{admin_address}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body")
}

/// How a background lock request ended.
#[derive(Debug)]
pub struct Outcome {
    /// The status, or `None` when the request failed to complete.
    pub status: Option<StatusCode>,
    /// The body (JSON), when there was one.
    pub body: Value,
    /// From sending to the end of the answer.
    pub took: Duration,
}

/// `POST /locks` of `body` to the service at `base`, from a task of its own
/// with a client of its own: what a separate function instance does.
pub fn waiter(base: String, body: Value) -> JoinHandle<Outcome> {
    tokio::spawn(async move {
        let started = Instant::now();
        let http = client();
        match http
            .post(format!("{base}/locks"))
            .bearer_auth(TEST_KEY)
            .json(&body)
            .send()
            .await
        {
            Ok(response) => {
                let status = response.status();
                let body = response.json().await.unwrap_or(Value::Null);
                Outcome {
                    status: Some(status),
                    body,
                    took: started.elapsed(),
                }
            }
            Err(_) => Outcome {
                status: None,
                body: Value::Null,
                took: started.elapsed(),
            },
        }
    })
}

/// `POST /locks` with the test key.
pub async fn post_lock(http: &reqwest::Client, base: &str, body: &Value) -> reqwest::Response {
    http.post(format!("{base}/locks"))
        .bearer_auth(TEST_KEY)
        .json(body)
        .send()
        .await
        .expect("request sent")
}

/// `{"op": "inspect"}` of `name` at the service at `base`.
pub async fn inspect(http: &reqwest::Client, base: &str, name: &str) -> Value {
    let response = post_lock(
        http,
        base,
        &serde_json::json!({"op": "inspect", "name": name}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK, "inspect {name}");
    response.json().await.expect("inspect body")
}

/// Slots are conserved: nothing is held, exactly `permits` try-once acquires
/// succeed and the next is refused (then everything is released again).
pub async fn assert_conserved(base: &str, name: &str, permits: u64) {
    let http = client();
    let state = inspect(&http, base, name).await;
    assert_eq!(
        state["held"], 0,
        "{name}: nothing held once leases ended: {state}"
    );
    let mut tokens = Vec::new();
    for _ in 0..permits {
        let body = serde_json::json!({"op": "acquire", "name": name, "permits": permits, "lease_ms": 30_000});
        let response = post_lock(&http, base, &body).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{name}: a slot of {permits}"
        );
        tokens.push(response.json::<Value>().await.unwrap()["token"].clone());
    }
    let body = serde_json::json!({"op": "acquire", "name": name, "permits": permits});
    assert_eq!(
        post_lock(&http, base, &body).await.status(),
        StatusCode::LOCKED,
        "{name}: no slot past {permits}"
    );
    for token in tokens {
        let body = serde_json::json!({"op": "release", "name": name, "token": token});
        assert_eq!(post_lock(&http, base, &body).await.status(), StatusCode::OK);
    }
}
