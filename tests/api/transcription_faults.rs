//! MySQL outages and shutdown, against a mariadbd each test owns.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use reqwest::StatusCode;
use sqlx::mysql::MySqlPoolOptions;

use crate::helpers::{
    NewRow, OwnMariaDb, ServiceProcess, TEST_KEY, base_env, client, create_database, eventually,
    random_suffix, redis_url, spawn_app_on,
};

#[tokio::test(flavor = "multi_thread")]
async fn mysql_stopping_gives_fast_503s_and_its_return_recovers_without_restart() {
    let mut mysql = OwnMariaDb::start().await;
    let (db_name, url) = create_database(&mysql.admin_url()).await;
    let prefix = format!("mwtest:{}:", random_suffix());
    let mut env = base_env(&url, &redis_url(), &prefix);
    env.insert("DB_ACQUIRE_TIMEOUT_MS".into(), "500".into());
    let app = spawn_app_on(env, db_name, prefix).await;
    let id = app.insert_transcription(&NewRow::default()).await;
    app.db.close().await;
    let path = format!("/transcriptions/{id}");
    assert_eq!(app.get(&path).await.status(), StatusCode::OK);

    mysql.kill();
    for _ in 0..5 {
        let started = Instant::now();
        let response = app.get(&path).await;
        let elapsed = started.elapsed();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key("retry-after"));
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        assert!(
            elapsed < Duration::from_millis(1000),
            "503 took {elapsed:?}, over acquire timeout + 500 ms"
        );
    }
    // Locks do not need MySQL: they are served, and the replica stays ready
    // (the verdict may be up to a second old).
    let acquire = serde_json::json!({"op": "acquire", "name": "through-a-mysql-outage"});
    assert_eq!(app.lock(acquire).await.status(), StatusCode::OK);
    let reads_down = eventually(Duration::from_secs(5), async || {
        let ready = app.get_without_key("/readyz").await;
        ready.status() == StatusCode::OK
            && ready.json::<serde_json::Value>().await.unwrap()
                == serde_json::json!({"status": "ok", "transcriptions": "unavailable: mysql unreachable", "locks": "ok"})
    })
    .await;
    assert!(reads_down, "readiness names the reads as unavailable");
    let reads = app
        .get_without_key("/readyz?capability=transcriptions")
        .await;
    assert_eq!(reads.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(reads.headers().contains_key("retry-after"));
    let body: serde_json::Value = reads.json().await.unwrap();
    assert_eq!(
        body["detail"], "transcriptions: mysql unreachable",
        "{body}"
    );
    assert_eq!(
        app.get_without_key("/readyz?capability=locks")
            .await
            .status(),
        StatusCode::OK
    );

    mysql.restart().await;
    let recovered = eventually(Duration::from_secs(20), async || {
        app.get(&path).await.status() == StatusCode::OK
    })
    .await;
    assert!(
        recovered,
        "the same service answers 200 again once MySQL is back"
    );
    let ready = eventually(Duration::from_secs(5), async || {
        app.get_without_key("/readyz?capability=transcriptions")
            .await
            .status()
            == StatusCode::OK
    })
    .await;
    assert!(ready, "readiness for reads returns with MySQL");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_200_in_flight_requests_finish_and_aborts_no_mysql_connection() {
    let mysql = OwnMariaDb::start().await;
    let (_db_name, url) = create_database(&mysql.admin_url()).await;
    // 200 distinct rows of 200 KB each: no coalescing, real bytes to send.
    let seed = MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    let content = "x".repeat(200 * 1024);
    for n in 0..200 {
        sqlx::query(
            "INSERT INTO transcriptions (call_id, language, status, content, created_at, updated_at) \
             VALUES (?, 'en-US', 'completed', ?, NOW(3), NOW(3))",
        )
        .bind(format!("CA-{n}"))
        .bind(&content)
        .execute(&seed)
        .await
        .unwrap();
    }
    seed.close().await;

    let prefix = format!("mwtest:{}:", random_suffix());
    let mut env = base_env(&url, &redis_url(), &prefix);
    env.insert("DB_POOL_MAX".into(), "2".into());
    env.insert("DB_ACQUIRE_TIMEOUT_MS".into(), "20000".into());
    env.insert("SHUTDOWN_TIMEOUT_S".into(), "20".into());
    let service = ServiceProcess::start(env).await;
    let base = service.base.clone();
    let http = client();
    let aborted_before = mysql.status("Aborted_clients").await;

    // Hold every read inside MySQL (a table lock), so all 200 requests are
    // provably in flight when SIGTERM arrives.
    let blocker = MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    let mut lock_holder = blocker.acquire().await.unwrap();
    sqlx::query("LOCK TABLES transcriptions WRITE")
        .execute(&mut *lock_holder)
        .await
        .unwrap();
    let mut in_flight = tokio::task::JoinSet::new();
    for id in 1..=200 {
        let (http, url) = (http.clone(), format!("{base}/transcriptions/{id}"));
        in_flight.spawn(async move {
            let response = http.get(url).bearer_auth(TEST_KEY).send().await.unwrap();
            (response.status(), response.bytes().await.unwrap().len())
        });
    }
    let metrics = format!("{}/metrics", service.admin);
    let all_in = eventually(Duration::from_secs(20), async || {
        let text = http
            .get(&metrics)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.contains("middleway_http_requests_in_flight 200")
    })
    .await;
    assert!(all_in, "200 requests in flight");
    service.process.signal(Signal::SIGTERM);
    // Let the drain begin (listener closed) while every read is still blocked.
    tokio::time::sleep(Duration::from_millis(200)).await;
    sqlx::query("UNLOCK TABLES")
        .execute(&mut *lock_holder)
        .await
        .unwrap();
    drop(lock_holder);
    blocker.close().await;
    let aborted_mid = mysql.status("Aborted_clients").await;

    let mut completed = 0;
    while let Some(outcome) = in_flight.join_next().await {
        let (status, len) = outcome.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(len > 200 * 1024);
        completed += 1;
    }
    assert_eq!(completed, 200);
    drop(http);

    let mut service = service;
    let exit = tokio::task::spawn_blocking(move || service.process.child().wait().unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0), "the service exits 0 after draining");
    let aborted_after = mysql.status("Aborted_clients").await;
    assert_eq!(
        (aborted_mid, aborted_after),
        (aborted_before, aborted_before),
        "MySQL counted aborted connections:\n{}",
        mysql.error_log()
    );
}

#[test]
fn a_missing_database_url_exits_2_naming_it() {
    let output = Command::new(env!("CARGO_BIN_EXE_middleway"))
        .arg("serve")
        .env_clear()
        .env("REDIS_URL", "redis://127.0.0.1:1/0")
        .env("AUTH_DISABLED", "true")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

#[test]
fn a_bad_setting_exits_2_naming_the_variable_and_hiding_secrets() {
    let output = Command::new(env!("CARGO_BIN_EXE_middleway"))
        .arg("serve")
        .env_clear()
        .env("DATABASE_URL", "mysql://user:hunter2-secret@127.0.0.1:1/db")
        .env("REDIS_URL", "redis://127.0.0.1:1/0")
        .env("AUTH_DISABLED", "true")
        .env("DB_POOL_MAX", "lots")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("DB_POOL_MAX"), "{stderr}");
    assert!(!stderr.contains("hunter2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_is_idempotent_and_seed_fills_varied_rows() {
    let (_db_name, url) = create_database(&crate::helpers::mysql_admin_url()).await;
    for _ in 0..2 {
        let status = Command::new(env!("CARGO_BIN_EXE_middleway"))
            .arg("migrate")
            .env("DATABASE_URL", &url)
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(0));
    }
    let status = Command::new(env!("CARGO_BIN_EXE_middleway"))
        .args(["seed", "--rows", "3000"])
        .env("DATABASE_URL", &url)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let pool = MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    let (rows, languages, statuses, null_content, min_len, max_len): (i64, i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(DISTINCT language), COUNT(DISTINCT status), CAST(SUM(content IS NULL) AS SIGNED), \
         MIN(LENGTH(content)), MAX(LENGTH(content)) FROM transcriptions",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(rows, 3000);
    assert!(
        languages >= 5 && statuses == 4,
        "{languages} languages, {statuses} statuses"
    );
    assert!(null_content > 0, "some NULL content");
    assert!(
        min_len >= 200 && max_len >= 2000,
        "content from {min_len} to {max_len} bytes"
    );
}
