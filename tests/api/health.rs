//! /healthz and /readyz.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::spawn_app;

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
