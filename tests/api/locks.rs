//! POST /locks: the contract and the liveness promises, against a real Redis.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    TEST_KEY, assert_conserved, assert_problem, named_fields, spawn_app, unix_ms, unix_ms_now,
};

#[tokio::test(flavor = "multi_thread")]
async fn acquire_extend_release_follow_the_contract() {
    let app = spawn_app().await;
    let before = unix_ms_now();
    let first = app.grant("device-42", 0, 30_000).await;
    assert_eq!(first["name"], "device-42");
    assert_eq!(first["lease_ms"], 30_000);
    let token = first["token"].as_str().unwrap();
    assert!(!token.is_empty() && token.len() <= 128);
    let expires = unix_ms(first["expires_at"].as_str().unwrap());
    assert!(
        (expires - (before + 30_000)).abs() < 2_000,
        "expires_at is now + lease"
    );
    assert!(first["expires_at"].as_str().unwrap().ends_with('Z'));

    // Held: a try-once acquire gets 423 with Retry-After.
    let busy = app.acquire("device-42", 0, 30_000).await;
    assert!(busy.headers().contains_key("retry-after"));
    assert_problem(busy, StatusCode::LOCKED, "lock-timeout").await;

    let extended = app
        .lock(json!({"op": "extend", "name": "device-42", "token": token, "lease_ms": 60_000}))
        .await;
    assert_eq!(extended.status(), StatusCode::OK);
    let extended: Value = extended.json().await.unwrap();
    assert_eq!(extended["token"], first["token"]);
    assert_eq!(extended["fence"], first["fence"]);
    assert_eq!(extended["lease_ms"], 60_000);
    assert!(unix_ms(extended["expires_at"].as_str().unwrap()) > expires);

    let released = app.release("device-42", &first["token"]).await;
    assert_eq!(released.status(), StatusCode::OK);
    assert_eq!(
        released.json::<Value>().await.unwrap(),
        json!({"name": "device-42", "released": true})
    );

    // Gone: release and extend again are 409 not-held.
    assert_problem(
        app.release("device-42", &first["token"]).await,
        StatusCode::CONFLICT,
        "not-held",
    )
    .await;
    let again = app
        .lock(json!({"op": "extend", "name": "device-42", "token": token}))
        .await;
    assert_problem(again, StatusCode::CONFLICT, "not-held").await;

    // Free again, with a larger fence.
    let second = app.grant("device-42", 0, 30_000).await;
    assert!(second["fence"].as_u64().unwrap() > first["fence"].as_u64().unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_never_frees_a_slot_it_does_not_hold() {
    let app = spawn_app().await;
    let held = app.grant("shared", 0, 30_000).await;
    for forged in [
        json!("1.1.0000000000000000"),
        json!("garbage"),
        json!("9.9.9.9"),
    ] {
        let response = app.release("shared", &forged).await;
        assert_eq!(response.status(), StatusCode::CONFLICT, "{forged}");
    }
    // A real token of another lock does not release this one.
    let other = app.grant("other", 0, 30_000).await;
    assert_eq!(
        app.release("shared", &other["token"]).await.status(),
        StatusCode::CONFLICT
    );
    assert_eq!(
        app.acquire("shared", 0, 30_000).await.status(),
        StatusCode::LOCKED
    );
    assert_eq!(
        app.release("shared", &held["token"]).await.status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_semaphore_grants_exactly_its_permits() {
    let app = spawn_app().await;
    let mut fences = Vec::new();
    for _ in 0..3 {
        let response = app
            .lock(json!({"op": "acquire", "name": "pool", "permits": 3}))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        fences.push(
            response.json::<Value>().await.unwrap()["fence"]
                .as_u64()
                .unwrap(),
        );
    }
    assert!(
        fences.windows(2).all(|w| w[0] < w[1]),
        "fences increase: {fences:?}"
    );
    let fourth = app
        .lock(json!({"op": "acquire", "name": "pool", "permits": 3}))
        .await;
    assert_eq!(fourth.status(), StatusCode::LOCKED);
    let mismatch = app
        .lock(json!({"op": "acquire", "name": "pool", "permits": 2}))
        .await;
    assert_problem(mismatch, StatusCode::CONFLICT, "permits-mismatch").await;
    let state = app.inspect("pool").await;
    assert_eq!(
        (state["permits"].as_u64(), state["held"].as_u64()),
        (Some(3), Some(3))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_lock_request_is_a_clear_4xx() {
    let app = spawn_app().await;
    let url = format!("{}/locks", app.address);
    let long_name = "n".repeat(129);
    let bad: Vec<(Value, &str)> = vec![
        (json!({"name": "a"}), "op"),
        (json!({"op": "grab", "name": "a"}), "op"),
        (json!({"op": 7, "name": "a"}), "op"),
        (json!({"op": "acquire", "name": ""}), "name"),
        (json!({"op": "acquire", "name": long_name}), "name"),
        (json!({"op": "acquire", "name": "a b"}), "name"),
        (json!({"op": "acquire", "name": "ñame"}), "name"),
        (json!({"op": "acquire", "name": "{x}"}), "name"),
        (json!({"op": "acquire"}), "name"),
        (
            json!({"op": "acquire", "name": "a", "wait_ms": -1}),
            "wait_ms",
        ),
        (
            json!({"op": "acquire", "name": "a", "wait_ms": 120_001}),
            "wait_ms",
        ),
        (
            json!({"op": "acquire", "name": "a", "wait_ms": "5"}),
            "wait_ms",
        ),
        (
            json!({"op": "acquire", "name": "a", "wait_ms": 1.5}),
            "wait_ms",
        ),
        (
            json!({"op": "acquire", "name": "a", "wait_ms": null}),
            "wait_ms",
        ),
        (
            json!({"op": "acquire", "name": "a", "lease_ms": 99}),
            "lease_ms",
        ),
        (
            json!({"op": "acquire", "name": "a", "lease_ms": 3_600_001}),
            "lease_ms",
        ),
        (
            json!({"op": "acquire", "name": "a", "permits": 0}),
            "permits",
        ),
        (
            json!({"op": "acquire", "name": "a", "permits": 1025}),
            "permits",
        ),
        (
            json!({"op": "acquire", "name": "a", "extra": true}),
            "extra",
        ),
        (json!({"op": "release", "name": "a"}), "token"),
        (json!({"op": "release", "name": "a", "token": ""}), "token"),
        (json!({"op": "release", "name": "a", "token": 5}), "token"),
        (
            json!({"op": "extend", "name": "a", "token": "t".repeat(129)}),
            "token",
        ),
        (
            json!({"op": "extend", "name": "a", "token": "t", "lease_ms": 50}),
            "lease_ms",
        ),
        (json!("acquire"), "body"),
        (json!(null), "body"),
    ];
    for (body, field) in bad {
        let problem = assert_problem(
            app.lock(body.clone()).await,
            StatusCode::BAD_REQUEST,
            "invalid-request",
        )
        .await;
        assert!(
            named_fields(&problem).contains(&field.to_owned()),
            "{body}: {problem}"
        );
    }
    let post = |body: Vec<u8>, content_type: &'static str| {
        app.client
            .post(&url)
            .bearer_auth(TEST_KEY)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let cases: Vec<(Vec<u8>, &str, StatusCode)> = vec![
        (
            b"{not json".to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
        ),
        (b"".to_vec(), "application/json", StatusCode::BAD_REQUEST),
        // A key given twice is ambiguous: refused, never "the last one wins".
        (
            br#"{"op":"acquire","op":"release","name":"a","token":"t"}"#.to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
        ),
        (
            br#"{"op":"acquire","name":"a","name":"b"}"#.to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
        ),
        // Positional arrays are not objects, even when serde could read them.
        (
            br#"["acquire","a"]"#.to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
        ),
        (
            vec![0xff, 0xfe],
            "application/json",
            StatusCode::BAD_REQUEST,
        ),
        (
            br#"{"op":"acquire","name":"a"}"#.to_vec(),
            "text/plain",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            br#"{"op":"acquire","name":"a"}"#.to_vec(),
            "application/x-www-form-urlencoded",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            format!(
                r#"{{"op":"acquire","name":"a","pad":"{}"}}"#,
                "x".repeat(17 * 1024)
            )
            .into_bytes(),
            "application/json",
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for (body, content_type, status) in cases {
        let response = post(body, content_type).await.unwrap();
        assert_eq!(response.status(), status, "{content_type}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    let no_type = app
        .client
        .post(&url)
        .bearer_auth(TEST_KEY)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(no_type.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let get = app
        .client
        .get(&url)
        .bearer_auth(TEST_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
    // A charset parameter is fine.
    let ok = post(
        br#"{"op":"acquire","name":"charset"}"#.to_vec(),
        "application/json; charset=utf-8",
    )
    .await
    .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_holder_loses_the_slot_at_its_deadline() {
    let app = spawn_app().await;
    let holder = app.grant("expiring", 0, 1_000).await;
    let deadline = unix_ms(holder["expires_at"].as_str().unwrap());
    let waiter = app.grant("expiring", 5_000, 30_000).await;
    let granted_at = unix_ms_now();
    let late = granted_at - deadline;
    assert!(
        (0..100).contains(&late),
        "granted {late} ms after the deadline"
    );
    assert!(waiter["fence"].as_u64().unwrap() > holder["fence"].as_u64().unwrap());
    // The old token is dead: neither release nor extend revives it.
    assert_eq!(
        app.release("expiring", &holder["token"]).await.status(),
        StatusCode::CONFLICT
    );
    let extend = app
        .lock(json!({"op": "extend", "name": "expiring", "token": holder["token"]}))
        .await;
    assert_eq!(extend.status(), StatusCode::CONFLICT);
    assert_eq!(
        app.release("expiring", &waiter["token"]).await.status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_lease_is_not_revived_by_extend_even_when_nobody_waits() {
    let app = spawn_app().await;
    let holder = app.grant("lonely", 0, 100).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let extend = app
        .lock(json!({"op": "extend", "name": "lonely", "token": holder["token"]}))
        .await;
    let problem = assert_problem(extend, StatusCode::CONFLICT, "not-held").await;
    assert_eq!(problem["reason"], "expired");
    assert_conserved(&app.address, "lonely", 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wait_that_runs_out_answers_423_on_time() {
    let app = spawn_app().await;
    let _holder = app.grant("busy", 0, 30_000).await;
    let started = Instant::now();
    let response = app.acquire("busy", 500, 30_000).await;
    let elapsed = started.elapsed();
    assert_eq!(response.status(), StatusCode::LOCKED);
    assert!(response.headers().contains_key("retry-after"));
    assert!(
        elapsed >= Duration::from_millis(500) && elapsed < Duration::from_millis(650),
        "{elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn waiters_that_hang_up_do_not_lose_the_slot() {
    let app = spawn_app().await;
    let holder = app.grant("door", 0, 30_000).await;
    let mut quitters = Vec::new();
    for _ in 0..50 {
        let (client, url) = (crate::helpers::client(), format!("{}/locks", app.address));
        quitters.push(tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(TEST_KEY)
                .json(&json!({"op": "acquire", "name": "door", "wait_ms": 60_000}))
                .send()
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for quitter in &quitters {
        quitter.abort();
    }
    for quitter in quitters {
        let _ = quitter.await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let released = Instant::now();
    assert_eq!(
        app.release("door", &holder["token"]).await.status(),
        StatusCode::OK
    );
    let next = app.acquire("door", 5_000, 30_000).await;
    assert_eq!(next.status(), StatusCode::OK);
    // A slot offered to a waiter that hung up would come back only at the
    // offer's 2 s claim deadline (per waiter offered); passed on at once, it
    // comes within a few round trips. Half the deadline tells the two apart
    // on a machine busy enough to take 100 ms for the release alone.
    let waited = released.elapsed();
    assert!(
        waited < Duration::from_millis(1000),
        "next acquire after {waited:?}"
    );
    let next: Value = next.json().await.unwrap();
    assert_eq!(
        app.release("door", &next["token"]).await.status(),
        StatusCode::OK
    );
    assert_conserved(&app.address, "door", 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn waiters_are_served_in_arrival_order() {
    let app = std::sync::Arc::new(spawn_app().await);
    let holder = app.grant("queue", 0, 30_000).await;
    let (order_tx, mut order_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut waiters = Vec::new();
    for position in 0..20u64 {
        let (mine, order_tx) = (app.clone(), order_tx.clone());
        waiters.push(tokio::spawn(async move {
            let granted = mine.grant("queue", 30_000, 30_000).await;
            order_tx.send(position).unwrap();
            assert_eq!(
                mine.release("queue", &granted["token"]).await.status(),
                StatusCode::OK
            );
        }));
        // Each request is queued before the next one is sent.
        crate::helpers::wait_until_waiting(&app.client, &app.address, "queue", position + 1).await;
    }
    assert_eq!(
        app.release("queue", &holder["token"]).await.status(),
        StatusCode::OK
    );
    for waiter in waiters {
        waiter.await.unwrap();
    }
    drop(order_tx);
    let mut order = Vec::new();
    while let Some(position) = order_rx.recv().await {
        order.push(position);
    }
    assert_eq!(order, (0..20).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn locks_need_a_key_and_transcriptions_too() {
    let app = spawn_app().await;
    let url = format!("{}/locks", app.address);
    let response = app
        .client
        .post(&url)
        .json(&json!({"op": "acquire", "name": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_not_held_answer_says_why() {
    let app = spawn_app().await;
    // Released: a retried release after a lost reply can tell it succeeded.
    let grant = app.grant("why", 0, 30_000).await;
    assert_eq!(
        app.release("why", &grant["token"]).await.status(),
        StatusCode::OK
    );
    let again = assert_problem(
        app.release("why", &grant["token"]).await,
        StatusCode::CONFLICT,
        "not-held",
    )
    .await;
    assert_eq!(again["reason"], "released");
    // Expired, for release and extend alike.
    let short = app.grant("why", 0, 100).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let late = assert_problem(
        app.release("why", &short["token"]).await,
        StatusCode::CONFLICT,
        "not-held",
    )
    .await;
    assert_eq!(late["reason"], "expired");
    let extend = app
        .lock(json!({"op": "extend", "name": "why", "token": short["token"], "lease_ms": 1000}))
        .await;
    assert_eq!(
        assert_problem(extend, StatusCode::CONFLICT, "not-held").await["reason"],
        "expired"
    );
    // Unknown: never granted (a token of another lock, or no token at all).
    let other = app.grant("elsewhere", 0, 30_000).await;
    for token in [
        other["token"].clone(),
        json!("garbage"),
        json!("0123456789abcdef.1.0123456789abcdef"),
    ] {
        let problem = assert_problem(
            app.release("why", &token).await,
            StatusCode::CONFLICT,
            "not-held",
        )
        .await;
        assert_eq!(problem["reason"], "unknown", "{token}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn inspect_shows_holders_and_waiters_but_never_tokens() {
    let app = spawn_app().await;
    let missing = app.inspect("nobody").await;
    assert_eq!(
        missing,
        json!({"name": "nobody", "permits": null, "held": 0, "waiting": 0, "fence": null, "holders": []})
    );
    let first = app.grant("seen", 0, 30_000).await;
    let waiting = app
        .queued_waiter(
            "seen",
            json!({"op": "acquire", "name": "seen", "wait_ms": 30_000}),
        )
        .await;
    let state = app.inspect("seen").await;
    assert_eq!(state["permits"], 1);
    assert_eq!(state["held"], 1);
    assert_eq!(state["fence"], first["fence"]);
    assert_eq!(
        state["holders"],
        json!([{"fence": first["fence"], "expires_at": first["expires_at"]}])
    );
    assert!(
        !state.to_string().contains(first["token"].as_str().unwrap()),
        "no token listed"
    );

    let asked = app
        .lock(json!({"op": "inspect", "name": "seen", "token": first["token"]}))
        .await;
    let asked: Value = asked.json().await.unwrap();
    assert_eq!(
        (asked["token_held"].clone(), asked["expires_at"].clone()),
        (json!(true), first["expires_at"].clone())
    );

    assert_eq!(
        app.release("seen", &first["token"]).await.status(),
        StatusCode::OK
    );
    let second = waiting.await.unwrap();
    assert_eq!(second.status, Some(StatusCode::OK));
    let asked = app
        .lock(json!({"op": "inspect", "name": "seen", "token": first["token"]}))
        .await;
    let asked: Value = asked.json().await.unwrap();
    assert_eq!(
        (asked["token_held"].clone(), asked["reason"].clone()),
        (json!(false), json!("released"))
    );
    assert_eq!(app.inspect("seen").await["fence"], second.body["fence"]);
}
