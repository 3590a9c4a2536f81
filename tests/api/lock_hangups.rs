//! Callers that hang up at any instant: nothing stays held by nobody.

use std::time::Duration;

use reqwest::StatusCode;

use crate::helpers::{OwnRedis, TEST_KEY, acquire_body, eventually, spawn_app_with, stall_redis};

/// Issue 23, defect 5. Redis stalls (`DEBUG SLEEP 1.5`) while a caller asks
/// for a free lock with a one-hour lease and gives up after 0.5 s. The grant
/// made when Redis wakes reaches nobody. v2 kept it for the hour (`inspect`
/// showed a holder, every acquire 423). Now it is handed back at once.
#[tokio::test(flavor = "multi_thread")]
async fn an_immediate_grant_for_a_caller_that_gave_up_during_a_redis_stall_is_handed_back() {
    let redis = OwnRedis::start().await;
    let url = redis.url();
    // One HTTP worker, whose Redis connection is warm: the stall meets the script.
    let app = spawn_app_with(|env| {
        env.insert("REDIS_URL".into(), url);
        env.insert("DB_POOL_MAX".into(), "1".into());
    })
    .await;
    app.grant("warm-up", 0, 100).await;

    let url = redis.url();
    let stall = tokio::spawn(async move { stall_redis(&url, 1.5).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let impatient = crate::helpers::http_client_builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let gave_up = impatient
        .post(format!("{}/locks", app.address))
        .bearer_auth(TEST_KEY)
        .json(&acquire_body("stalled", 0, 3_600_000))
        .send()
        .await;
    assert!(gave_up.is_err(), "the caller gave up during the stall");
    stall.await.unwrap();

    let free = eventually(Duration::from_secs(2), async || {
        app.acquire("stalled", 0, 1_000).await.status() == StatusCode::OK
    })
    .await;
    assert!(
        free,
        "the grant nobody received was handed back: {}",
        app.inspect("stalled").await
    );
}
