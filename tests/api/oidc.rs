//! OIDC / JWT bearers against an issuer the test serves (issue 24): each
//! allowed algorithm, the principal chosen by subject, every bad token a
//! 401 saying why (and never fetching anything for a token of an unknown
//! issuer), rotation by `kid`, a `kid` flood bounded to one fetch per 10 s,
//! and an unreachable issuer failing only JWT requests.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    MountedSecret, SigningKey, TestApp, TestIssuer, assert_problem, eventually, free_port,
    metrics_text, now_s, spawn_app_with_auth_file,
};

const AUDIENCE: &str = "middleway";

fn auth_file(issuer: &str, dead_issuer: &str) -> String {
    format!(
        r#"
[[principals]]
name = "ingest"
oidc = {{ issuer = "{issuer}", subject = "system:serviceaccount:media:*" }}
scopes = ["locks:ingest-*"]

[[principals]]
name = "ci"
oidc = {{ issuer = "{issuer}", subject = "repo:example/app" }}
scopes = ["transcriptions:read"]

[[principals]]
name = "elsewhere"
oidc = {{ issuer = "{dead_issuer}", subject = "anyone" }}
scopes = ["transcriptions:read"]

[oidc."{issuer}"]
audience = "{AUDIENCE}"

[oidc."{dead_issuer}"]
audience = "{AUDIENCE}"
jwks_uri = "{dead_issuer}/keys"
"#
    )
}

async fn inspect_as(app: &TestApp, token: &str, name: &str) -> reqwest::Response {
    app.client
        .post(format!("{}/locks", app.address))
        .bearer_auth(token)
        .json(&json!({"op": "inspect", "name": name}))
        .send()
        .await
        .unwrap()
}

async fn read_as(app: &TestApp, token: &str) -> reqwest::Response {
    app.client
        .get(format!("{}/transcriptions/999999999", app.address))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// Asserts a 401 whose detail contains `why` and does not echo the token.
async fn assert_refused(response: reqwest::Response, token: &str, why: &str) {
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let body = assert_problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains(why), "wanted {why:?}, got {detail:?}");
    assert!(!body.to_string().contains(token), "the token was echoed");
}

struct Setup {
    issuer: TestIssuer,
    rsa: SigningKey,
    ec: SigningKey,
    ed: SigningKey,
    file: MountedSecret,
    app: TestApp,
    dead_issuer: String,
}

async fn setup() -> Setup {
    let (rsa, ec, ed) = (
        SigningKey::rsa("rsa-1"),
        SigningKey::ec("ec-1"),
        SigningKey::ed25519("ed-1"),
    );
    let issuer = TestIssuer::start(&[&rsa, &ec, &ed]);
    let dead_issuer = format!("http://127.0.0.1:{}", free_port());
    let file = MountedSecret::with_files(&[("auth.toml", &auth_file(&issuer.url, &dead_issuer))]);
    let app = spawn_app_with_auth_file(&file.file("auth.toml"), &[]).await;
    Setup {
        issuer,
        rsa,
        ec,
        ed,
        file,
        app,
        dead_issuer,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_of_each_algorithm_authenticates_as_the_principal_its_subject_names() {
    let s = setup().await;
    let subject = "system:serviceaccount:media:ingest";
    for key in [&s.rsa, &s.ec, &s.ed] {
        let token = key.sign(&s.issuer.claims(subject, AUDIENCE));
        let inspected = inspect_as(&s.app, &token, "ingest-1").await;
        assert_eq!(inspected.status(), StatusCode::OK, "{:?}", key.alg);
        // Scopes are the principal's: no reads, no other lock names.
        let reads = read_as(&s.app, &token).await;
        assert_problem(reads, StatusCode::FORBIDDEN, "forbidden").await;
        let other = inspect_as(&s.app, &token, "billing-1").await;
        assert_problem(other, StatusCode::FORBIDDEN, "forbidden").await;
    }
    // The keys were fetched once (through discovery); tokens seen before
    // are not verified again.
    assert_eq!(s.issuer.discovery_fetches(), 1);
    assert_eq!(s.issuer.key_fetches(), 1);

    let ci = s.ec.sign(&s.issuer.claims("repo:example/app", AUDIENCE));
    assert_problem(
        read_as(&s.app, &ci).await,
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;
    // `aud` may be a list; 60 s of skew on either side.
    let mut claims = s.issuer.claims("repo:example/app", AUDIENCE);
    claims["aud"] = json!(["another-service", AUDIENCE]);
    claims["exp"] = json!(now_s() - 30);
    claims["nbf"] = json!(now_s() + 30);
    let skewed = s.rsa.sign(&claims);
    assert_eq!(
        read_as(&s.app, &skewed).await.status(),
        StatusCode::NOT_FOUND
    );

    let scrape = metrics_text(&s.app.admin_address).await;
    for series in [
        r#"middleway_http_requests_by_principal_total{principal="ingest",status="200"} 3"#,
        r#"middleway_http_requests_by_principal_total{principal="ingest",status="403"} 6"#,
        r#"middleway_http_requests_by_principal_total{principal="ci",status="404"} 2"#,
    ] {
        assert!(scrape.contains(series), "{series} missing");
    }
    assert!(!scrape.contains(&ci) && !scrape.contains(subject));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_token_is_a_401_that_says_why_and_unknown_issuers_are_never_asked() {
    let s = setup().await;
    let subject = "system:serviceaccount:media:ingest";
    let good = || s.issuer.claims(subject, AUDIENCE);
    // Warm the key cache so the fetch count below means something.
    let warm = s.ec.sign(&good());
    assert_eq!(
        inspect_as(&s.app, &warm, "ingest-1").await.status(),
        StatusCode::OK
    );
    let fetches = s.issuer.key_fetches();

    let with = |edit: &dyn Fn(&mut Value)| {
        let mut claims = good();
        edit(&mut claims);
        claims
    };
    let stranger = SigningKey::ec("ec-1");
    let encode = |header: &str, claims: &Value| {
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    };
    let rsa_pem = s.rsa.public_pem.clone().unwrap();
    let mut hmac = Header::new(jsonwebtoken::Algorithm::HS256);
    hmac.kid = Some("rsa-1".into());
    let cases: Vec<(String, &str)> = vec![
        (
            s.ec.sign(&with(&|c| c["exp"] = json!(now_s() - 120))),
            "expired",
        ),
        (
            s.ec.sign(&with(&|c| c["nbf"] = json!(now_s() + 120))),
            "not valid yet",
        ),
        (
            s.ec.sign(&with(&|c| c["aud"] = json!("another-service"))),
            "wrong audience",
        ),
        (
            s.ec.sign(&with(&|c| {
                c["iss"] = json!("https://issuer.attacker.example")
            })),
            "unknown issuer",
        ),
        (
            s.ec.sign(&with(&|c| {
                c["sub"] = json!("system:serviceaccount:other:x")
            })),
            "no principal",
        ),
        (
            s.ec.sign(&with(&|c| {
                c.as_object_mut().unwrap().remove("sub");
            })),
            "required claim",
        ),
        // Signed by a key the issuer never published, naming a kid it did.
        (stranger.sign(&good()), "bad signature"),
        // An RS256 header naming the EC key.
        (s.rsa.sign_as("ec-1", &good()), "does not match"),
        (s.ec.sign_as("made-up", &good()), "unknown key id"),
        (
            format!("{}.", encode(r#"{"alg":"none","kid":"rsa-1"}"#, &good())),
            "malformed",
        ),
        // The RSA public key used as an HMAC secret.
        (
            jsonwebtoken::encode(
                &hmac,
                &good(),
                &EncodingKey::from_secret(rsa_pem.as_bytes()),
            )
            .unwrap(),
            "algorithm not allowed",
        ),
        ("eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln".into(), "malformed"),
        (
            format!("eyJ{}.a.b", "A".repeat(9 * 1024)),
            "longer than 8 KiB",
        ),
    ];
    for (token, why) in &cases {
        assert_refused(inspect_as(&s.app, token, "ingest-1").await, token, why).await;
    }
    // A made-up kid may refetch once (10 s after the warm-up it would);
    // nothing else asked the issuer, and the attacker's issuer was never
    // contacted (the service only knows configured issuers).
    assert!(s.issuer.key_fetches() <= fetches + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_key_is_picked_up_and_a_kid_flood_costs_at_most_one_fetch_per_ten_seconds() {
    let s = setup().await;
    let subject = "system:serviceaccount:media:ingest";
    let first = s.rsa.sign(&s.issuer.claims(subject, AUDIENCE));
    assert_eq!(
        inspect_as(&s.app, &first, "ingest-1").await.status(),
        StatusCode::OK
    );
    assert_eq!(s.issuer.key_fetches(), 1);

    // The issuer publishes a new key and starts signing with it; within
    // 10 s of the last fetch the service may not fetch again, after that
    // the first token naming it does.
    let next = SigningKey::ec("ec-2");
    s.issuer.add_key(&next);
    let rotated = next.sign(&s.issuer.claims(subject, AUDIENCE));
    assert!(
        eventually(Duration::from_secs(15), async || {
            inspect_as(&s.app, &rotated, "ingest-1").await.status() == StatusCode::OK
        })
        .await,
        "a token of the new key was never accepted"
    );
    let after_rotation = s.issuer.key_fetches();
    assert_eq!(after_rotation, 2, "one fetch for the rotation");

    // 200 tokens naming made-up kids, all at once: one fetch at most.
    let mut flood = Vec::new();
    for i in 0..200 {
        let token =
            s.ec.sign_as(&format!("made-up-{i}"), &s.issuer.claims(subject, AUDIENCE));
        let client = s.app.client.clone();
        let url = format!("{}/locks", s.app.address);
        flood.push(tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(token)
                .json(&json!({"op": "inspect", "name": "ingest-1"}))
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    for request in flood {
        assert_eq!(request.await.unwrap(), StatusCode::UNAUTHORIZED);
    }
    assert!(s.issuer.key_fetches() <= after_rotation + 1);
    assert_eq!(
        s.issuer.discovery_fetches(),
        1,
        "the discovered jwks_uri is kept"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_issuer_fails_only_its_jwt_requests() {
    let s = setup().await;
    // Nothing listens at the second issuer: its tokens are 503, fast.
    let signer = SigningKey::ec("dead-1");
    let mut claims = s.issuer.claims("anyone", AUDIENCE);
    claims["iss"] = json!(s.dead_issuer);
    let orphan = signer.sign(&claims);
    let started = std::time::Instant::now();
    let refused = read_as(&s.app, &orphan).await;
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_problem(refused, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    assert!(started.elapsed() < Duration::from_secs(6));

    // API keys and the other issuer's tokens are served meanwhile.
    assert_eq!(
        s.app.get("/transcriptions/999999999").await.status(),
        StatusCode::NOT_FOUND
    );
    let ci = s.rsa.sign(&s.issuer.claims("repo:example/app", AUDIENCE));
    assert_eq!(read_as(&s.app, &ci).await.status(), StatusCode::NOT_FOUND);

    // An issuer that goes away after its keys were fetched: new tokens of
    // known keys still verify with the keys already held.
    s.issuer.stop().await;
    let later = s.ed.sign(&s.issuer.claims("repo:example/app", AUDIENCE));
    assert_eq!(
        read_as(&s.app, &later).await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_issuer_setting_applies_to_tokens_already_verified() {
    let mut s = setup().await;
    let token = s.ec.sign(&s.issuer.claims("repo:example/app", AUDIENCE));
    assert_eq!(
        read_as(&s.app, &token).await.status(),
        StatusCode::NOT_FOUND
    );
    // The issuer's audience changes in AUTH_FILE (the kubelet's swap): the
    // cached verdict goes with the old file.
    let changed = auth_file(&s.issuer.url, &s.dead_issuer).replace(
        &format!("audience = \"{AUDIENCE}\"\n\n[oidc.\"{}\"]", s.dead_issuer),
        &format!(
            "audience = \"another-service\"\n\n[oidc.\"{}\"]",
            s.dead_issuer
        ),
    );
    assert_ne!(changed, auth_file(&s.issuer.url, &s.dead_issuer));
    s.file.replace(&[("auth.toml", &changed)]);
    assert!(
        eventually(Duration::from_secs(5), async || {
            read_as(&s.app, &token).await.status() == StatusCode::UNAUTHORIZED
        })
        .await,
        "the token was still accepted for the old audience"
    );
    assert_refused(read_as(&s.app, &token).await, &token, "wrong audience").await;
}
