//! AWS IAM bearers against moto's STS server (issue 24): a function's role
//! session authenticates as the principal of its role, one STS call per
//! token however many requests carry it at once, every bad token a 401
//! saying why (forged, for another audience, too old, another endpoint, no
//! principal), and an STS that is down or silent fails only IAM requests.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{
    MountedSecret, StsEmulator, TestApp, assert_problem, free_port, metrics_text, series_value,
    spawn_app_with_auth_file,
};

const AUDIENCE: &str = "middleway-test";
const FILE: &str = r#"
[[principals]]
name = "reports"
aws = { arn = "arn:aws:iam::123456789012:role/reports-fn" }
scopes = ["transcriptions:read"]
"#;

struct Setup {
    sts: StsEmulator,
    _file: MountedSecret,
    app: TestApp,
}

/// The service accepting IAM tokens for moto and for `others` endpoints.
async fn setup(others: &[&str]) -> Setup {
    let sts = StsEmulator::start().await;
    let file = MountedSecret::with_files(&[("auth.toml", FILE)]);
    let mut endpoints = vec![sts.url.clone()];
    endpoints.extend(others.iter().map(|s| s.to_string()));
    let endpoints = endpoints.join(",");
    let app = spawn_app_with_auth_file(
        &file.file("auth.toml"),
        &[
            ("AUTH_AWS_AUDIENCE", AUDIENCE),
            ("AUTH_AWS_STS_ENDPOINTS", &endpoints),
        ],
    )
    .await;
    Setup {
        sts,
        _file: file,
        app,
    }
}

async fn read_as(app: &TestApp, token: &str) -> reqwest::Response {
    app.client
        .get(format!("{}/transcriptions/999999999", app.address))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

const VERIFIED: &str = r#"middleway_auth_verifications_total{method="aws",outcome="verified"}"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_role_session_authenticates_as_its_role_with_one_sts_call_per_token() {
    let s = setup(&[]).await;
    let dead = format!("http://127.0.0.1:{}/", free_port());
    let tokens = s.sts.tokens(AUDIENCE, &dead);

    // 50 requests at once with one new token: one STS call.
    let mut requests = Vec::new();
    for _ in 0..50 {
        let (client, url, token) = (
            s.app.client.clone(),
            format!("{}/transcriptions/999999999", s.app.address),
            tokens["reports"].clone(),
        );
        requests.push(tokio::spawn(async move {
            client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    for request in requests {
        assert_eq!(request.await.unwrap(), StatusCode::NOT_FOUND);
    }
    let scrape = metrics_text(&s.app.admin_address).await;
    assert_eq!(series_value(&scrape, VERIFIED), 1);

    // A second token of the same role is the same principal.
    let again = read_as(&s.app, &tokens["reports_again"]).await;
    assert_problem(again, StatusCode::NOT_FOUND, "not-found").await;
    // Its scopes are the principal's.
    let lock = s
        .app
        .client
        .post(format!("{}/locks", s.app.address))
        .bearer_auth(&tokens["reports"])
        .json(&serde_json::json!({"op": "inspect", "name": "x"}))
        .send()
        .await
        .unwrap();
    assert_problem(lock, StatusCode::FORBIDDEN, "forbidden").await;

    let scrape = metrics_text(&s.app.admin_address).await;
    assert_eq!(series_value(&scrape, VERIFIED), 2);
    assert_eq!(
        series_value(
            &scrape,
            r#"middleway_http_requests_by_principal_total{principal="reports",status="404"}"#
        ),
        51
    );
    for token in tokens.values() {
        assert!(!scrape.contains(token.as_str()));
    }
}

/// `token` with its signed request's `url` replaced.
fn pointing_at(token: &str, url: &str) -> String {
    let json = URL_SAFE_NO_PAD
        .decode(token.strip_prefix("mw-aws-v1.").unwrap())
        .unwrap();
    let mut request: Value = serde_json::from_slice(&json).unwrap();
    request["url"] = url.into();
    format!("mw-aws-v1.{}", URL_SAFE_NO_PAD.encode(request.to_string()))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_iam_token_is_a_401_that_says_why() {
    let s = setup(&[]).await;
    let dead = format!("http://127.0.0.1:{}/", free_port());
    let tokens = s.sts.tokens(AUDIENCE, &dead);
    let cases = [
        (tokens["stranger"].clone(), "no principal"),
        (tokens["forged"].clone(), "STS refused"),
        (tokens["other_audience"].clone(), "wrong audience"),
        (tokens["aged"].clone(), "expired"),
        (tokens["other_endpoint"].clone(), "endpoint"),
        (
            pointing_at(&tokens["reports"], "http://169.254.169.254/"),
            "endpoint",
        ),
        ("mw-aws-v1.!!!not-base64".to_owned(), "malformed"),
        (
            format!("mw-aws-v1.{}", URL_SAFE_NO_PAD.encode("{}")),
            "malformed",
        ),
    ];
    for (token, why) in &cases {
        let response = read_as(&s.app, token).await;
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let body = assert_problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(why), "wanted {why:?}, got {detail:?}");
        assert!(!body.to_string().contains(token.as_str()));
    }
    // The good token still works after all that.
    assert_eq!(
        read_as(&s.app, &tokens["reports"]).await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_sts_that_is_down_or_silent_fails_only_iam_requests() {
    // One endpoint where nothing listens, one that accepts and never answers.
    let dead = format!("http://127.0.0.1:{}/", free_port());
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}/", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let s = setup(&[&dead, &silent_url]).await;
    let to_dead = s.sts.tokens(AUDIENCE, &dead)["other_endpoint"].clone();
    let to_silent = s.sts.tokens(AUDIENCE, &silent_url)["other_endpoint"].clone();

    let started = Instant::now();
    let refused = read_as(&s.app, &to_dead).await;
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_problem(refused, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    assert!(started.elapsed() < Duration::from_secs(3));

    // While an IAM request waits on the silent STS, keys are served.
    let waiting = {
        let (client, url) = (
            s.app.client.clone(),
            format!("{}/transcriptions/999999999", s.app.address),
        );
        tokio::spawn(async move {
            let started = Instant::now();
            let status = client
                .get(url)
                .bearer_auth(to_silent)
                .send()
                .await
                .unwrap()
                .status();
            (status, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        s.app.get("/transcriptions/999999999").await.status(),
        StatusCode::NOT_FOUND
    );
    let (status, took) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(took < Duration::from_secs(8), "gave up after {took:?}");
    let scrape = metrics_text(&s.app.admin_address).await;
    assert_eq!(
        series_value(
            &scrape,
            r#"middleway_auth_verifications_total{method="aws",outcome="unavailable"}"#
        ),
        2
    );
    held.abort();
}
