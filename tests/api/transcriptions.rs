//! GET /transcriptions/{id}: the contract, against a real MariaDB.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{NewRow, TEST_KEY, assert_problem, spawn_app};

#[tokio::test(flavor = "multi_thread")]
async fn every_malformed_id_is_400() {
    let app = spawn_app().await;
    let ten_kb = "9".repeat(10 * 1024);
    let bad = [
        "0",
        "-1",
        "+1",
        "01",
        "1.0",
        "1e3",
        "abc",
        "%201",
        "1%20",
        "%20",
        "18446744073709551616",
        "123456789012345678901",
        &ten_kb,
        "%D9%A1%D9%A2",
        "%EF%BC%91",
        "1%00",
        "0x10",
    ];
    for id in bad {
        let response = app.get(&format!("/transcriptions/{id}")).await;
        let shown: String = id.chars().take(40).collect();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "id {shown:?}");
        let body = assert_problem(response, StatusCode::BAD_REQUEST, "invalid-request").await;
        assert_eq!(body["errors"][0]["field"], "id", "id {shown:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_largest_id_is_valid_and_missing_rows_are_404() {
    let app = spawn_app().await;
    let response = app.get("/transcriptions/18446744073709551615").await;
    assert_problem(response, StatusCode::NOT_FOUND, "not-found").await;
    let response = app.get("/transcriptions/7").await;
    assert_problem(response, StatusCode::NOT_FOUND, "not-found").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_comes_back_field_by_field() {
    let app = spawn_app().await;
    let id = app
        .insert_transcription(&NewRow {
            call_id: "CA-9f1c2e",
            ..NewRow::default()
        })
        .await;
    let response = app.get(&format!("/transcriptions/{id}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert!(response.headers().contains_key("etag"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({
            "transcription_id": id,
            "call_id": "CA-9f1c2e",
            "language": "en-US",
            "status": "completed",
            "duration_ms": 61234,
            "confidence": 0.93,
            "content": "Hello, thanks for calling ...",
            "created_at": "2026-11-22T10:00:00.000Z",
            "updated_at": "2026-11-22T10:01:02.345Z"
        })
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn null_columns_are_null() {
    let app = spawn_app().await;
    let id = app
        .insert_transcription(&NewRow {
            status: "queued",
            duration_ms: None,
            confidence: None,
            content: None,
            ..NewRow::default()
        })
        .await;
    let body: Value = app
        .get(&format!("/transcriptions/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["status"], "queued");
    assert_eq!(body["duration_ms"], Value::Null);
    assert_eq!(body["confidence"], Value::Null);
    assert_eq!(body["content"], Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_one_mebibyte_multibyte_content_comes_back_intact() {
    let app = spawn_app().await;
    // 4-, 3- and 2-byte UTF-8 characters, repeated to 1 MiB.
    let unit = "📞 llamada — 通話 ünd ";
    let content: String = unit.repeat(1024 * 1024 / unit.len());
    assert!(content.len() > 1_000_000);
    let id = app
        .insert_transcription(&NewRow {
            content: Some(&content),
            ..NewRow::default()
        })
        .await;
    let response = app.get(&format!("/transcriptions/{id}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["content"].as_str().unwrap(), content);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_matching_etag_gets_304_and_a_changed_row_a_new_etag() {
    let app = spawn_app().await;
    let id = app.insert_transcription(&NewRow::default()).await;
    let path = format!("/transcriptions/{id}");
    let first = app.get(&path).await;
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();

    let if_none_match = |tag: String| {
        let url = format!("{}{path}", app.address);
        app.client
            .get(url)
            .bearer_auth(TEST_KEY)
            .header("If-None-Match", tag)
            .send()
    };
    let cached = if_none_match(etag.clone()).await.unwrap();
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(cached.headers()["etag"].to_str().unwrap(), etag);
    assert!(cached.bytes().await.unwrap().is_empty());

    // A list and a weak form match too; another tag does not.
    let listed = if_none_match(format!("\"x\", W/{etag}")).await.unwrap();
    assert_eq!(listed.status(), StatusCode::NOT_MODIFIED);
    let other = if_none_match("\"other\"".into()).await.unwrap();
    assert_eq!(other.status(), StatusCode::OK);

    sqlx::query("UPDATE transcriptions SET updated_at = '2026-11-23 08:00:00.001' WHERE transcription_id = ?")
        .bind(id)
        .execute(&app.db)
        .await
        .unwrap();
    let changed = if_none_match(etag.clone()).await.unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    assert_ne!(changed.headers()["etag"].to_str().unwrap(), etag);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_request_id_is_echoed_and_a_bad_one_replaced() {
    let app = spawn_app().await;
    let url = format!("{}/transcriptions/1", app.address);
    let kept = app
        .client
        .get(&url)
        .bearer_auth(TEST_KEY)
        .header("x-request-id", "lambda-req.42_A")
        .send()
        .await
        .unwrap();
    assert_eq!(kept.headers()["x-request-id"], "lambda-req.42_A");
    let body: Value = kept.json().await.unwrap();
    assert_eq!(body["request_id"], "lambda-req.42_A");
    for bad in ["has space", &"x".repeat(65), "semi;colon"] {
        let replaced = app
            .client
            .get(&url)
            .bearer_auth(TEST_KEY)
            .header("x-request-id", bad)
            .send()
            .await
            .unwrap();
        let id = replaced.headers()["x-request-id"].to_str().unwrap();
        assert_ne!(id, bad);
        assert!(!id.is_empty() && id.len() <= 64);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_routes_are_404_and_wrong_methods_405() {
    let app = spawn_app().await;
    let response = app.get("/nope").await;
    assert_problem(response, StatusCode::NOT_FOUND, "not-found").await;
    let response = app.get("/transcriptions/1/extra").await;
    assert_problem(response, StatusCode::NOT_FOUND, "not-found").await;
    let response = app
        .client
        .delete(format!("{}/transcriptions/1", app.address))
        .bearer_auth(TEST_KEY)
        .send()
        .await
        .unwrap();
    assert_problem(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn five_hundred_concurrent_reads_never_open_more_than_the_pool_bound() {
    let app = crate::helpers::spawn_app_with(|env| {
        env.insert("DB_POOL_MAX".into(), "3".into());
        env.insert("DB_ACQUIRE_TIMEOUT_MS".into(), "10000".into());
    })
    .await;
    let mut ids = Vec::new();
    for n in 0..50 {
        let call_id = format!("CA-{n}");
        ids.push(
            app.insert_transcription(&NewRow {
                call_id: &call_id,
                ..NewRow::default()
            })
            .await,
        );
    }
    // Sample the server's own view of connections to this test's database,
    // from a connection that is not in that database itself.
    app.db.close().await;
    let sampler_db = sqlx::MySqlPool::connect(&crate::helpers::mysql_admin_url())
        .await
        .unwrap();
    let db_name = app.db_name.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_flag = stop.clone();
    let sampler = tokio::spawn(async move {
        let mut peak = 0i64;
        while !stop_flag.load(std::sync::atomic::Ordering::Relaxed) {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = ?",
            )
            .bind(&db_name)
            .fetch_one(&sampler_db)
            .await
            .unwrap();
            peak = peak.max(n);
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        peak
    });
    let mut requests = tokio::task::JoinSet::new();
    for n in 0..500 {
        let client = crate::helpers::client();
        let url = format!("{}/transcriptions/{}", app.address, ids[n % ids.len()]);
        requests.spawn(async move {
            client
                .get(url)
                .bearer_auth(TEST_KEY)
                .send()
                .await
                .unwrap()
                .status()
        });
    }
    while let Some(status) = requests.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.await.unwrap();
    assert!(peak >= 1, "the sampler saw the pool at work");
    assert!(
        peak <= 3,
        "peak connections {peak} exceed DB_POOL_MAX=3 (split 2 + 1 between the two workers)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_reads_of_one_id_share_one_query() {
    let app = std::sync::Arc::new(spawn_app().await);
    let id = app.insert_transcription(&NewRow::default()).await;
    // Hold the first query inside MySQL so the others arrive while it runs.
    let mut blocker = app.db.acquire().await.unwrap();
    sqlx::query("LOCK TABLES transcriptions WRITE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let app = app.clone();
        readers.spawn(async move { app.get(&format!("/transcriptions/{id}")).await.status() });
    }
    let all_in = crate::helpers::eventually(std::time::Duration::from_secs(10), async || {
        crate::helpers::metrics_text(&app.admin_address)
            .await
            .contains("middleway_http_requests_in_flight 20")
    })
    .await;
    assert!(all_in, "20 reads in flight");
    sqlx::query("UNLOCK TABLES")
        .execute(&mut *blocker)
        .await
        .unwrap();
    while let Some(status) = readers.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    let metrics = crate::helpers::metrics_text(&app.admin_address).await;
    assert!(
        metrics.contains("middleway_transcription_coalesced_reads_total 19"),
        "19 of 20 reads joined the first one's query"
    );
}
