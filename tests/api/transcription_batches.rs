//! Many rows per query: `GET /transcriptions?ids=...`, and single reads
//! queued while the pool is busy sharing one query.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    NewRow, TestApp, assert_problem, eventually, metrics_text, mysql_admin_url, spawn_app,
    spawn_app_with,
};

async fn insert_rows(app: &TestApp, count: usize) -> Vec<u64> {
    let mut ids = Vec::with_capacity(count);
    for n in 0..count {
        let call_id = format!("CA-batch-{n}");
        let row = NewRow {
            call_id: &call_id,
            ..NewRow::default()
        };
        ids.push(app.insert_transcription(&row).await);
    }
    ids
}

fn id_list(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

/// The statements the service is running in `db_name`, seen from a
/// connection outside it (a prepared statement shows its `?` placeholders).
async fn running_selects(db_name: &str) -> Vec<String> {
    let sampler = sqlx::MySqlPool::connect(&mysql_admin_url()).await.unwrap();
    let statements: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT CAST(INFO AS CHAR) FROM information_schema.PROCESSLIST \
         WHERE DB = ? AND INFO LIKE 'SELECT transcription_id%'",
    )
    .bind(db_name)
    .fetch_all(&sampler)
    .await
    .unwrap();
    sampler.close().await;
    statements.into_iter().flatten().collect()
}

/// Holds `LOCK TABLES transcriptions WRITE` until dropped or released, so
/// the service's reads wait inside MySQL where the test can see them.
struct TableLock(sqlx::pool::PoolConnection<sqlx::MySql>);

impl TableLock {
    async fn take(app: &TestApp) -> Self {
        let mut conn = app.db.acquire().await.unwrap();
        sqlx::query("LOCK TABLES transcriptions WRITE")
            .execute(&mut *conn)
            .await
            .unwrap();
        Self(conn)
    }

    async fn release(mut self) {
        sqlx::query("UNLOCK TABLES")
            .execute(&mut *self.0)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_come_back_in_the_order_asked_and_absent_ids_are_listed_missing() {
    let app = spawn_app().await;
    let ids = insert_rows(&app, 3).await;
    let absent = 18_446_744_073_709_551_615u64;
    let asked = [ids[2], absent, ids[0], ids[1]];
    let response = app
        .get(&format!("/transcriptions?ids={}", id_list(&asked)))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    let order: Vec<u64> = body["transcriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["transcription_id"].as_u64().unwrap())
        .collect();
    assert_eq!(order, [ids[2], ids[0], ids[1]]);
    assert_eq!(body["missing"], json!([absent]));
    // Each row is exactly what the single read answers.
    let single: Value = app
        .get(&format!("/transcriptions/{}", ids[0]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["transcriptions"][1], single);

    // Percent-encoded commas are commas; nothing found is still a 200.
    let body: Value = app
        .get(&format!("/transcriptions?ids={}%2C{}", ids[1], absent - 1))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["transcriptions"].as_array().unwrap().len(), 1);
    assert_eq!(body["missing"], json!([absent - 1]));
    let body: Value = app
        .get("/transcriptions?ids=999999999")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        body,
        json!({"transcriptions": [], "missing": [999_999_999]})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_ids_are_one_query_and_the_101st_is_400() {
    let app = spawn_app().await;
    let ids = insert_rows(&app, 101).await;
    let lock = TableLock::take(&app).await;
    let hundred = format!("/transcriptions?ids={}", id_list(&ids[..100]));
    let read = tokio::spawn({
        let (client, url) = (app.client.clone(), format!("{}{hundred}", app.address));
        async move {
            client
                .get(url)
                .bearer_auth(crate::helpers::TEST_KEY)
                .send()
                .await
                .unwrap()
        }
    });
    let waiting = eventually(Duration::from_secs(10), async || {
        !running_selects(&app.db_name).await.is_empty()
    })
    .await;
    assert!(waiting, "the batch reached MySQL");
    let statements = running_selects(&app.db_name).await;
    assert_eq!(
        statements.len(),
        1,
        "one query for the batch: {statements:?}"
    );
    let placeholders = statements[0].matches('?').count();
    assert_eq!(
        placeholders, 100,
        "one query for all hundred ids: {}",
        statements[0]
    );
    lock.release().await;
    let response = read.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["transcriptions"].as_array().unwrap().len(), 100);
    assert_eq!(body["missing"], json!([]));

    let response = app
        .get(&format!("/transcriptions?ids={}", id_list(&ids)))
        .await;
    let problem = assert_problem(response, StatusCode::BAD_REQUEST, "invalid-request").await;
    assert_eq!(problem["errors"][0]["field"], "ids");
    assert!(problem["detail"].as_str().unwrap().contains("at most 100"));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_repeated_or_missing_ids_and_unknown_parameters_are_400() {
    let app = spawn_app().await;
    let twenty_one_digits = "1".repeat(21);
    let cases = [
        ("/transcriptions", "ids", "required"),
        ("/transcriptions?ids=", "ids", "1 to 100"),
        ("/transcriptions?ids=1,2,1", "ids", "repeated"),
        ("/transcriptions?ids=7,07", "ids", "leading zeros"),
        ("/transcriptions?ids=1,,2", "ids", "#2"),
        ("/transcriptions?ids=1,", "ids", "#2"),
        ("/transcriptions?ids=1%2C-2", "ids", "#2"),
        ("/transcriptions?ids=1+2", "ids", "#1"),
        ("/transcriptions?ids=0", "ids", "#1"),
        (
            &format!("/transcriptions?ids=3,{twenty_one_digits}"),
            "ids",
            "#2",
        ),
        ("/transcriptions?ids=1&ids=2", "ids", "once"),
        ("/transcriptions?ids=1&limit=5", "query", "limit"),
        ("/transcriptions?id=1", "query", "only `ids`"),
        ("/transcriptions?ids=%FF", "ids", "#1"),
    ];
    for (path, field, says) in cases {
        let response = app.get(path).await;
        let problem = assert_problem(response, StatusCode::BAD_REQUEST, "invalid-request").await;
        assert_eq!(problem["errors"][0]["field"], field, "{path}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains(says),
            "{path}: {detail:?} should say {says:?}"
        );
    }
    let response = app
        .client
        .delete(format!("{}/transcriptions?ids=1", app.address))
        .bearer_auth(crate::helpers::TEST_KEY)
        .send()
        .await
        .unwrap();
    assert_problem(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
    )
    .await;
    let response = app.get_without_key("/transcriptions?ids=1").await;
    assert_problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_queued_behind_a_busy_connection_share_one_query() {
    let app = Arc::new(
        spawn_app_with(|env| {
            env.insert("DB_POOL_MAX".into(), "1".into());
            env.insert("DB_ACQUIRE_TIMEOUT_MS".into(), "10000".into());
        })
        .await,
    );
    let ids = insert_rows(&app, 21).await;
    let lock = TableLock::take(&app).await;
    let mut readers = tokio::task::JoinSet::new();
    let read = |id: u64| {
        let app = Arc::clone(&app);
        async move { app.get(&format!("/transcriptions/{id}")).await.status() }
    };
    readers.spawn(read(ids[0]));
    let first_in_mysql = eventually(Duration::from_secs(10), async || {
        running_selects(&app.db_name).await.len() == 1
    })
    .await;
    assert!(first_in_mysql, "the first read holds the only connection");
    for &id in &ids[1..] {
        readers.spawn(read(id));
    }
    let all_queued = eventually(Duration::from_secs(10), async || {
        metrics_text(&app.admin_address)
            .await
            .contains("middleway_http_requests_in_flight 21")
    })
    .await;
    assert!(all_queued, "21 reads in flight");
    lock.release().await;
    while let Some(status) = readers.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    let metrics = metrics_text(&app.admin_address).await;
    assert!(
        metrics.contains("middleway_mysql_read_batch_size_count 2")
            && metrics.contains("middleway_mysql_read_batch_size_sum 21"),
        "the first read, then the twenty queued behind it in one query:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("batch_size"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_that_cannot_get_a_connection_in_time_are_503_and_the_pool_recovers() {
    let app = Arc::new(
        spawn_app_with(|env| {
            env.insert("DB_POOL_MAX".into(), "1".into());
            env.insert("DB_ACQUIRE_TIMEOUT_MS".into(), "300".into());
        })
        .await,
    );
    let ids = insert_rows(&app, 3).await;
    let lock = TableLock::take(&app).await;
    let holder = tokio::spawn({
        let app = Arc::clone(&app);
        let id = ids[0];
        async move { app.get(&format!("/transcriptions/{id}")).await.status() }
    });
    let held = eventually(Duration::from_secs(10), async || {
        running_selects(&app.db_name).await.len() == 1
    })
    .await;
    assert!(held, "the first read holds the only connection");
    for path in [
        format!("/transcriptions/{}", ids[1]),
        format!("/transcriptions?ids={},{}", ids[1], ids[2]),
    ] {
        let asked = Instant::now();
        let response = app.get(&path).await;
        let waited = asked.elapsed();
        assert!(response.headers().contains_key("retry-after"), "{path}");
        let problem =
            assert_problem(response, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("pool is exhausted"),
            "{path}"
        );
        // Refused once the acquire timeout passes, not when the held read ends.
        assert!(waited < Duration::from_secs(4), "{path} waited {waited:?}");
    }
    lock.release().await;
    assert_eq!(holder.await.unwrap(), StatusCode::OK);
    let response = app
        .get(&format!("/transcriptions?ids={},{}", ids[1], ids[2]))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        app.get(&format!("/transcriptions/{}", ids[1]))
            .await
            .status(),
        StatusCode::OK
    );
}
