//! Test harness: a real service on port 0 against real MariaDB and Redis,
//! each test with its own database and Redis key prefix.

// Shared by every test area; not every area uses every helper.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use middleway::config::Settings;
use middleway::startup::{Application, ShutdownTrigger};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{Executor, MySqlPool};

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

/// A short random lowercase suffix for database names and key prefixes.
pub fn random_suffix() -> String {
    format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
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

/// An HTTP/1.1 keep-alive client with a generous timeout (tests assert behaviour, not speed).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
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
    pub async fn lock(&self, body: serde_json::Value) -> reqwest::Response {
        self.client
            .post(format!("{}/locks", self.address))
            .bearer_auth(TEST_KEY)
            .json(&body)
            .send()
            .await
            .expect("request sent")
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

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a: SocketAddr| a.port())
        .expect("free port")
}

/// A folder under target/ for test-owned server data.
pub fn scratch_dir(kind: &str) -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{kind}-{}", random_suffix()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Polls `check` until it is true or `within` passes.
pub async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A MariaDB server owned by one test, so the test can stop and restart it.
pub struct OwnMariaDb {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl OwnMariaDb {
    /// Initialises a data directory and starts the server.
    pub async fn start() -> Self {
        let dir = scratch_dir("mariadb");
        let status = Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .arg(format!("--datadir={}", dir.join("data").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("mariadb-install-db runs");
        assert!(status.success(), "mariadb-install-db failed");
        let mut db = Self {
            port: free_port(),
            dir,
            child: None,
        };
        db.restart().await;
        let root = MySqlPoolOptions::new()
            .max_connections(1)
            .connect(&format!("mysql://root@127.0.0.1:{}", db.port))
            .await
            .expect("root");
        root.execute("CREATE USER 'middleway'@'127.0.0.1' IDENTIFIED BY 'middleway'; GRANT ALL ON *.* TO 'middleway'@'127.0.0.1';").await.expect("create user");
        root.close().await;
        db
    }

    /// `mysql://middleway:middleway@127.0.0.1:<port>` (no database).
    pub fn admin_url(&self) -> String {
        format!("mysql://middleway:middleway@127.0.0.1:{}", self.port)
    }

    /// Starts the server on its port and waits until it answers.
    pub async fn restart(&mut self) {
        let child = Command::new("/usr/sbin/mariadbd")
            .args([
                "--no-defaults",
                "--user=root",
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=32M",
            ])
            .arg(format!("--port={}", self.port))
            .arg(format!("--datadir={}", self.dir.join("data").display()))
            .arg(format!(
                "--socket={}",
                self.dir.join("mysqld.sock").display()
            ))
            .arg(format!(
                "--pid-file={}",
                self.dir.join("mysqld.pid").display()
            ))
            .arg(format!(
                "--log-error={}",
                self.dir.join("error.log").display()
            ))
            .arg("--log-warnings=4")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd starts");
        self.child = Some(child);
        let url = format!("mysql://root@127.0.0.1:{}", self.port);
        let up = eventually(
            Duration::from_secs(30),
            async || match MySqlPoolOptions::new()
                .max_connections(1)
                .connect(&url)
                .await
            {
                Ok(pool) => {
                    pool.close().await;
                    true
                }
                Err(_) => false,
            },
        )
        .await;
        assert!(up, "own mariadbd did not come up");
    }

    /// Stops the server (SIGKILL: the harshest outage) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's error log (aborted connections are reported there).
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// A global status counter, read over a fresh root connection.
    pub async fn status(&self, name: &str) -> u64 {
        let pool = MySqlPoolOptions::new()
            .max_connections(1)
            .connect(&format!("mysql://root@127.0.0.1:{}", self.port))
            .await
            .expect("root");
        let value: String = sqlx::query_scalar(
            "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = ?",
        )
        .bind(name)
        .fetch_one(&pool)
        .await
        .expect("status");
        pool.close().await;
        value.parse().expect("numeric status")
    }
}

impl Drop for OwnMariaDb {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis server owned by one test, so the test can stop and restart it.
pub struct OwnRedis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl OwnRedis {
    /// Starts a throwaway redis-server on a free port.
    pub async fn start() -> Self {
        let mut redis = Self {
            port: free_port(),
            dir: scratch_dir("redis"),
            child: None,
        };
        redis.restart().await;
        redis
    }

    /// `redis://127.0.0.1:<port>/0`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts the server (empty: no persistence) and waits until it answers.
    pub async fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--port",
            ])
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let url = self.url();
        let up = eventually(Duration::from_secs(10), async || {
            redis_connection(&url).await.is_some()
        })
        .await;
        assert!(up, "own redis-server did not come up");
    }

    /// Kills the server and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A plain connection for inspecting Redis from a test.
pub async fn redis_connection(url: &str) -> Option<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url).ok()?;
    client.get_multiplexed_async_connection().await.ok()
}

/// `free + held` of a lock, as LOCKS.md's conservation check reads it.
pub async fn slots_accounted(url: &str, prefix: &str, name: &str) -> (i64, i64) {
    let mut conn = redis_connection(url).await.expect("redis");
    let free: i64 = redis::cmd("LLEN")
        .arg(format!("{prefix}lock:{{{name}}}:free"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let held: i64 = redis::cmd("ZCARD")
        .arg(format!("{prefix}lock:{{{name}}}:held"))
        .query_async(&mut conn)
        .await
        .unwrap();
    (free, held)
}

/// A spawned `middleway serve` process (for kill -9 and multi-replica tests).
pub struct ServiceProcess {
    pub child: Child,
    pub base: String,
}

impl ServiceProcess {
    /// Starts the binary with `env` on a free port and waits until /readyz is 200.
    pub async fn start(env: HashMap<String, String>) -> Self {
        Self::start_on(env, free_port()).await
    }

    /// Starts the binary with `env` on `port` and waits until /readyz is 200.
    pub async fn start_on(mut env: HashMap<String, String>, port: u16) -> Self {
        env.insert("BIND_ADDR".into(), format!("127.0.0.1:{port}"));
        let child = Command::new(env!("CARGO_BIN_EXE_middleway"))
            .arg("serve")
            .env_clear()
            .envs(&env)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn middleway");
        let base = format!("http://127.0.0.1:{port}");
        let http = client();
        let ready = eventually(Duration::from_secs(20), async || {
            matches!(http.get(format!("{base}/readyz")).send().await, Ok(r) if r.status() == reqwest::StatusCode::OK)
        })
        .await;
        assert!(ready, "service process became ready");
        Self { child, base }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
