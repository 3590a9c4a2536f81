//! Lock requests and arrangements shared by the lock test areas.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{
    OwnRedis, ServiceProcess, TEST_KEY, TestApp, base_env, create_database, eventually, inspect,
    mysql_admin_url, post_lock, random_suffix, redis_command, spawn_app_with,
};

/// Now, in Unix ms (the clock Redis' TIME reads on this machine).
pub fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Parses `expires_at` (RFC 3339 with ms, UTC) to Unix ms.
pub fn unix_ms(rfc3339: &str) -> i64 {
    let at = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap();
    (at.unix_timestamp_nanos() / 1_000_000) as i64
}

/// `n` replicas of the service (separate processes) on the Redis at `url`,
/// sharing one database and one key prefix.
pub async fn service_replicas(url: &str, n: usize) -> Vec<ServiceProcess> {
    let (_db, database_url) = create_database(&mysql_admin_url()).await;
    let prefix = format!("mwtest:{}:", random_suffix());
    let mut env = base_env(&database_url, url, &prefix);
    env.insert("DB_POOL_MAX".into(), "2".into());
    env.insert("RUST_LOG".into(), "warn,middleway::locks=debug".into());
    let mut started = Vec::new();
    for _ in 0..n {
        started.push(ServiceProcess::start_logged(env.clone()).await);
    }
    started
}

/// An in-process app on a Redis of the test's own.
pub async fn app_on(redis: &OwnRedis) -> TestApp {
    let url = redis.url();
    spawn_app_with(|env| {
        env.insert("REDIS_URL".into(), url);
    })
    .await
}

/// An acquire body of a mutex.
pub fn acquire_body(name: &str, wait_ms: u64, lease_ms: u64) -> Value {
    json!({"op": "acquire", "name": name, "wait_ms": wait_ms, "lease_ms": lease_ms})
}

/// An acquire at `base` that must succeed; the grant's body.
pub async fn granted(http: &reqwest::Client, base: &str, body: Value) -> Value {
    let response = post_lock(http, base, &body).await;
    assert_eq!(response.status(), StatusCode::OK, "{body}");
    response.json().await.unwrap()
}

/// Releases `grant` of `name` at `base`; the status.
pub async fn release(http: &reqwest::Client, base: &str, name: &str, grant: &Value) -> StatusCode {
    post_lock(
        http,
        base,
        &json!({"op": "release", "name": name, "token": grant["token"]}),
    )
    .await
    .status()
}

/// Waits until `n` requests wait on `name` (fleet-wide, as inspect counts them).
pub async fn wait_until_waiting(http: &reqwest::Client, base: &str, name: &str, n: u64) {
    let queued = eventually(Duration::from_secs(10), async || {
        inspect(http, base, name).await["waiting"] == n
    })
    .await;
    assert!(queued, "{n} waiting on {name}");
}

/// `POST /locks` of `body` written by hand on a connection the test controls.
pub async fn raw_post(base: &str, body: &Value) -> TcpStream {
    let mut stream = TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    let body = body.to_string();
    let request = format!(
        "POST /locks HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {TEST_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// Deletes the Redis keys `parts` (`meta`, `held`...) of lock `name` under
/// `prefix`, as eviction or a partial loss would; how many existed.
pub async fn delete_lock_keys(url: &str, prefix: &str, name: &str, parts: &[&str]) -> i64 {
    let mut deleted = 0;
    for part in parts {
        let key = lock_key(prefix, name, part);
        deleted += redis_command::<i64>(url, &["DEL", &key]).await;
    }
    deleted
}

/// Every key a lock has (docs/locks.md).
pub const LOCK_KEY_PARTS: [&str; 5] = ["meta", "held", "queue", "ended", "gone"];

/// The name of one of lock `name`'s Redis keys (`meta`, `held`, `queue`,
/// `ended`, `gone`: docs/locks.md) under `prefix`.
pub fn lock_key(prefix: &str, name: &str, part: &str) -> String {
    format!("{prefix}lock3:{{{name}}}:{part}")
}

/// Whether a `CLIENT LIST` line is a replica's wake connection (subscribed
/// to its wake channel); its client id if so.
pub fn wake_connection_id(client_list_line: &str) -> Option<&str> {
    let fields: Vec<&str> = client_list_line.split_whitespace().collect();
    let field = |name: &str| fields.iter().find_map(|f| f.strip_prefix(name));
    field("flags=")
        .is_some_and(|flags| flags.contains('P'))
        .then(|| field("id="))
        .flatten()
}

/// Kills the replicas' wake connections on the server at `url`; how many.
pub async fn kill_wake_connections(url: &str) -> usize {
    let mut killed = 0;
    for line in super::client_list(url).await {
        if let Some(id) = wake_connection_id(&line) {
            let _: i64 = redis_command(url, &["CLIENT", "KILL", "ID", id]).await;
            killed += 1;
        }
    }
    killed
}
