//! Locks whose Redis keys vanish (eviction, a partial or total loss): the
//! lock starts afresh with exactly its permits, old tokens are refused, and
//! the requests that were waiting keep waiting and are served.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::helpers::{
    LOCK_KEY_PARTS, acquire_body, assert_problem, delete_lock_keys, redis_url, spawn_app,
    wait_until_waiting, waiter,
};

/// Issue 23, defect 3. A waiter queued at 0 s (8 s wait); the lock's keys
/// deleted at 0.5 s; a newcomer served at 1.0 s (it found no lock and nobody
/// queued) and released at 2 s. v2 stranded the old waiter until its 423 at
/// 8 s. Now it is served once the newcomer releases.
#[tokio::test(flavor = "multi_thread")]
async fn a_waiter_queued_before_its_lock_vanished_is_served_soon_after_not_at_its_deadline() {
    let app = spawn_app().await;
    let _holder = app.grant("vanish", 0, 30_000).await;
    let started = Instant::now();
    let early = waiter(app.address.clone(), acquire_body("vanish", 8_000, 30_000));
    wait_until_waiting(&app.client, &app.address, "vanish", 1).await;

    tokio::time::sleep(Duration::from_millis(500)).await;
    let deleted = delete_lock_keys(&redis_url(), &app.key_prefix, "vanish", &LOCK_KEY_PARTS).await;
    assert!(deleted >= 3, "the lock's keys are gone ({deleted})");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let newcomer = app.grant("vanish", 0, 30_000).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        app.release("vanish", &newcomer["token"]).await.status(),
        StatusCode::OK
    );

    let outcome = early.await.unwrap();
    assert_eq!(outcome.status, Some(StatusCode::OK), "{:?}", outcome.body);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "served {:?} after it queued, not at its 8 s deadline",
        outcome.took
    );
    assert_eq!(
        app.release("vanish", &outcome.body["token"]).await.status(),
        StatusCode::OK
    );
}

/// Issue 23, defect 3 (second part). Only the `held` key of a held lock is
/// lost. v2 answered the holder's release 409 `released`, which clients may
/// take for success, for a grant nobody holds any more. Now it is `unknown`,
/// and the lock works again.
#[tokio::test(flavor = "multi_thread")]
async fn a_release_after_the_held_key_was_lost_does_not_report_released() {
    let app = spawn_app().await;
    let grant = app.grant("lost-held", 0, 30_000).await;
    let deleted = delete_lock_keys(&redis_url(), &app.key_prefix, "lost-held", &["held"]).await;
    assert_eq!(deleted, 1);

    let response = app.release("lost-held", &grant["token"]).await;
    let problem = assert_problem(response, StatusCode::CONFLICT, "not-held").await;
    assert_eq!(problem["reason"], "unknown", "{problem}");

    let again = app.grant("lost-held", 0, 30_000).await;
    assert!(again["fence"].as_u64() > grant["fence"].as_u64());
    assert_eq!(
        app.release("lost-held", &again["token"]).await.status(),
        StatusCode::OK
    );
}
