//! /healthz and /readyz.

use std::time::Instant;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::Connection;

use crate::helpers::{
    OwnMariaDb, base_env, create_database, random_suffix, redis_url, spawn_app, spawn_app_on,
};

#[tokio::test(flavor = "multi_thread")]
async fn health_and_readiness_answer_without_a_key() {
    let app = spawn_app().await;
    let health = app.get_without_key("/healthz").await;
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(
        health.json::<Value>().await.unwrap(),
        serde_json::json!({"status": "ok"})
    );
    let ready = app.get_without_key("/readyz").await;
    assert_eq!(ready.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_turns_503_as_soon_as_shutdown_begins() {
    let app = spawn_app().await;
    // Hold a keep-alive connection open so we can still ask after the listener stops accepting.
    let url = format!("{}/readyz", app.address);
    assert_eq!(
        app.client.get(&url).send().await.unwrap().status(),
        StatusCode::OK
    );
    app.shutdown.trigger();
    let response = app.client.get(&url).send().await;
    // Either the drained connection answers 503, or the server already closed it.
    if let Ok(response) = response {
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key("retry-after"));
        let body: Value = response.json().await.unwrap();
        assert!(body["detail"].as_str().unwrap().contains("draining"));
    }
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(10), app.stopped).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "service stops cleanly");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_capability_is_a_400_problem() {
    let app = spawn_app().await;
    let response = app.get_without_key("/readyz?capability=everything").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert!(
        body["detail"].as_str().unwrap().contains("capability"),
        "{body}"
    );
    for (asked, body) in [
        (
            "transcriptions",
            serde_json::json!({"status": "ok", "transcriptions": "ok"}),
        ),
        ("locks", serde_json::json!({"status": "ok", "locks": "ok"})),
    ] {
        let response = app
            .get_without_key(&format!("/readyz?capability={asked}"))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.json::<Value>().await.unwrap(), body);
    }
}

/// A flood of probes (a misconfigured probe, a scraper, many kubelets) is
/// answered from the shared verdict: MySQL sees at most one check per
/// second of flood, counted on a MariaDB this test owns.
#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_probes_cost_mysql_at_most_one_check_per_second() {
    let mysql = OwnMariaDb::start().await;
    let (db_name, url) = create_database(&mysql.admin_url()).await;
    let prefix = format!("mwtest:{}:", random_suffix());
    let app = spawn_app_on(base_env(&url, &redis_url(), &prefix), db_name, prefix).await;
    app.db.close().await;
    let selects = async || -> u64 {
        let mut admin = sqlx::MySqlConnection::connect(&mysql.admin_url())
            .await
            .unwrap();
        let (_, count): (String, String) = sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Com_select'")
            .fetch_one(&mut admin)
            .await
            .unwrap();
        count.parse().unwrap()
    };
    // What counting itself adds (a connection's set-up may select too).
    let first = selects().await;
    let before = selects().await;
    let counting = before - first;
    let started = Instant::now();
    let probes = futures_util::stream::iter(0..1000)
        .map(|_| {
            let (http, url) = (app.client.clone(), format!("{}/readyz", app.address));
            async move { http.get(url).send().await.unwrap().status() }
        })
        .buffer_unordered(50)
        .collect::<Vec<_>>()
        .await;
    let flood = started.elapsed();
    let checks = selects().await - before - counting;
    assert!(probes.iter().all(|s| *s == StatusCode::OK));
    let allowed = 1 + flood.as_secs();
    assert!(
        checks <= allowed,
        "{checks} MySQL checks for 1,000 probes in {flood:?} (at most {allowed})"
    );
}
