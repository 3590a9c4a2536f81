//! Principals from `AUTH_FILE` (issue 24, API keys part): scopes (403, and a
//! refused request touches nothing), fair share per principal (429 with
//! Retry-After, the others served), the file reloaded when it changes or on
//! SIGHUP, a broken file refused (the last good one stays), exit 2 at startup.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    LOCK_KEY_PARTS, MountedSecret, ServiceProcess, TEST_KEY, TestApp, base_env, create_database,
    eventually, failed_start, lock_key, metrics_text, mysql_admin_url, random_suffix,
    redis_command, redis_url, scratch_dir, series_value, spawn_app_with_auth_file,
};

const BILLING: &str = "billing-key-0123456789";
const INGEST: &str = "ingest-key-0123456789";
const LATE: &str = "late-key-0123456789abc";

const FILE: &str = r#"
[[principals]]
name = "billing"
api_keys = ["billing-key-0123456789"]
scopes = ["transcriptions:read", "locks:billing-*"]
max_waiters = 1

[[principals]]
name = "ingest"
api_keys = ["ingest-key-0123456789"]
scopes = ["locks:ingest-*", "locks:shared"]
max_in_flight = 1
"#;

/// `AUTH_FILE` as a mounted Secret (the kubelet's symlink swap on change).
struct MountedFile(MountedSecret);

impl MountedFile {
    fn new(text: &str) -> Self {
        Self(MountedSecret::with_files(&[("auth.toml", text)]))
    }

    fn path(&self) -> PathBuf {
        self.0.file("auth.toml")
    }

    fn write(&mut self, text: &str) {
        self.0.replace(&[("auth.toml", text)]);
    }
}

async fn app_with_file(file: &Path) -> TestApp {
    spawn_app_with_auth_file(file, &[]).await
}

async fn get_as(app: &TestApp, key: &str, path: &str) -> reqwest::Response {
    app.client
        .get(format!("{}{path}", app.address))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

async fn lock_as(app: &TestApp, key: &str, body: Value) -> reqwest::Response {
    app.client
        .post(format!("{}/locks", app.address))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn problem_type(response: reqwest::Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["type"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn scopes_decide_per_principal_and_a_refused_request_touches_nothing() {
    let file = MountedFile::new(FILE);
    let app = app_with_file(&file.path()).await;

    assert_ne!(
        get_as(&app, BILLING, "/transcriptions/1").await.status(),
        StatusCode::FORBIDDEN
    );
    let billing_lock = json!({"op": "acquire", "name": "billing-1"});
    assert_eq!(
        lock_as(&app, BILLING, billing_lock).await.status(),
        StatusCode::OK
    );

    let outside = lock_as(&app, BILLING, json!({"op": "acquire", "name": "ingest-9"})).await;
    assert_eq!(outside.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        outside.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(
        problem_type(outside).await,
        "urn:middleway:problem:forbidden"
    );
    let inspect = lock_as(&app, BILLING, json!({"op": "inspect", "name": "ingest-9"})).await;
    assert_eq!(
        inspect.status(),
        StatusCode::FORBIDDEN,
        "every op is scoped"
    );
    // Every key a lock has, by name: a KEYS scan of the shared Redis would
    // block it for as long as its whole keyspace takes to walk.
    let keys = LOCK_KEY_PARTS.map(|part| lock_key(&app.key_prefix, "ingest-9", part));
    let mut exists = vec!["EXISTS"];
    exists.extend(keys.iter().map(String::as_str));
    let found: u64 = redis_command(&redis_url(), &exists).await;
    assert_eq!(found, 0, "a refused request touched Redis: {keys:?}");

    let reads = get_as(&app, INGEST, "/transcriptions/1").await;
    assert_eq!(reads.status(), StatusCode::FORBIDDEN);
    assert_eq!(problem_type(reads).await, "urn:middleway:problem:forbidden");
    let batch = get_as(&app, INGEST, "/transcriptions?ids=1,2").await;
    assert_eq!(batch.status(), StatusCode::FORBIDDEN);
    for name in ["ingest-1", "shared"] {
        let granted = lock_as(&app, INGEST, json!({"op": "acquire", "name": name})).await;
        assert_eq!(granted.status(), StatusCode::OK, "{name}");
    }
    assert_eq!(
        lock_as(&app, INGEST, json!({"op": "acquire", "name": "shared-2"}))
            .await
            .status(),
        StatusCode::FORBIDDEN,
        "an exact name is not a prefix"
    );
    // API_KEYS still work, with every scope.
    assert_eq!(
        lock_as(&app, TEST_KEY, json!({"op": "acquire", "name": "ingest-2"}))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        get_as(&app, "not-a-key-0123456789", "/transcriptions/1")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );

    let scrape = metrics_text(&app.admin_address).await;
    assert_eq!(
        series_value(
            &scrape,
            r#"middleway_auth_refusals_total{principal="billing",reason="forbidden"}"#
        ),
        2
    );
    assert_eq!(
        series_value(
            &scrape,
            r#"middleway_auth_refusals_total{principal="ingest",reason="forbidden"}"#
        ),
        3
    );
    assert!(
        series_value(
            &scrape,
            r#"middleway_http_requests_by_principal_total{principal="unauthenticated",status="401"}"#
        ) >= 1
    );
    assert!(
        !scrape.contains("not-a-key"),
        "a presented credential became a label"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_principal_past_its_share_gets_429_while_the_others_are_served() {
    let file = MountedFile::new(FILE);
    let app = app_with_file(&file.path()).await;
    let held = app.grant("billing-held", 0, 30_000).await;
    let shared = app.grant("shared", 0, 30_000).await;
    let wait = |key: &'static str, name: &'static str| {
        let (client, url) = (app.client.clone(), format!("{}/locks", app.address));
        tokio::spawn(async move {
            let body = json!({"op": "acquire", "name": name, "wait_ms": 8000});
            let response = client
                .post(url)
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap();
            response.status()
        })
    };
    let waiting = |count: i64| {
        let admin = app.admin_address.clone();
        async move {
            eventually(Duration::from_secs(5), async || {
                series_value(&metrics_text(&admin).await, "middleway_lock_waiters") == count as u64
            })
            .await
        }
    };

    // billing: max_waiters = 1.
    let billing_waiter = wait(BILLING, "billing-held");
    assert!(waiting(1).await);
    let second = lock_as(
        &app,
        BILLING,
        json!({"op": "acquire", "name": "billing-held", "wait_ms": 1000}),
    )
    .await;
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(second.headers()["retry-after"], "1");
    let body: Value = second.json().await.unwrap();
    assert_eq!(body["type"], "urn:middleway:problem:quota-exceeded");
    assert!(
        body["detail"].as_str().unwrap().contains("max_waiters"),
        "{body}"
    );
    let at_once = lock_as(
        &app,
        BILLING,
        json!({"op": "acquire", "name": "billing-now"}),
    )
    .await;
    assert_eq!(
        at_once.status(),
        StatusCode::OK,
        "an acquire that does not wait is no waiter"
    );

    // ingest: max_in_flight = 1, taken by its waiter; billing is served meanwhile.
    let ingest_waiter = wait(INGEST, "shared");
    assert!(waiting(2).await);
    let busy = lock_as(&app, INGEST, json!({"op": "acquire", "name": "ingest-5"})).await;
    assert_eq!(busy.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = busy.json().await.unwrap();
    assert!(
        body["detail"].as_str().unwrap().contains("max_in_flight"),
        "{body}"
    );
    assert_ne!(
        get_as(&app, BILLING, "/transcriptions/1").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_ne!(
        get_as(&app, TEST_KEY, "/transcriptions/1").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    // Slots come free: the waiters are served, and their shares free again.
    assert_eq!(
        app.release("shared", &shared["token"]).await.status(),
        StatusCode::OK
    );
    assert_eq!(ingest_waiter.await.unwrap(), StatusCode::OK);
    assert_eq!(
        lock_as(&app, INGEST, json!({"op": "acquire", "name": "ingest-5"}))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        app.release("billing-held", &held["token"]).await.status(),
        StatusCode::OK
    );
    assert_eq!(billing_waiter.await.unwrap(), StatusCode::OK);

    let scrape = metrics_text(&app.admin_address).await;
    assert_eq!(
        series_value(
            &scrape,
            r#"middleway_auth_refusals_total{principal="billing",reason="quota"}"#
        ),
        1
    );
    assert_eq!(
        series_value(
            &scrape,
            r#"middleway_auth_refusals_total{principal="ingest",reason="quota"}"#
        ),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_file_applies_within_seconds_and_a_broken_one_keeps_the_last_good() {
    let mut file = MountedFile::new(FILE);
    let app = app_with_file(&file.path()).await;
    assert_eq!(
        get_as(&app, LATE, "/transcriptions/1").await.status(),
        StatusCode::UNAUTHORIZED
    );

    let with_late = format!(
        "{FILE}\n[[principals]]\nname = \"late\"\napi_keys = [\"{LATE}\"]\nscopes = [\"transcriptions:read\"]\n"
    );
    file.write(&with_late);
    let applied = eventually(Duration::from_secs(5), async || {
        get_as(&app, LATE, "/transcriptions/1").await.status() != StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(applied, "the kubelet's symlink swap is picked up");

    file.write("[[principals]]\nname = \"late\"\nscopes = [\"everything\"]\n");
    let refused = eventually(Duration::from_secs(5), async || {
        series_value(
            &metrics_text(&app.admin_address).await,
            r#"middleway_auth_reloads_total{outcome="refused"}"#,
        ) == 1
    })
    .await;
    assert!(refused, "the broken file is refused and counted");
    assert_ne!(
        get_as(&app, LATE, "/transcriptions/1").await.status(),
        StatusCode::UNAUTHORIZED,
        "the last good file stays"
    );
    assert_ne!(
        get_as(&app, BILLING, "/transcriptions/1").await.status(),
        StatusCode::UNAUTHORIZED
    );

    // A principal removed loses access.
    file.write(FILE);
    let removed = eventually(Duration::from_secs(5), async || {
        get_as(&app, LATE, "/transcriptions/1").await.status() == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(removed);
    let scrape = metrics_text(&app.admin_address).await;
    assert_eq!(
        series_value(&scrape, r#"middleway_auth_reloads_total{outcome="loaded"}"#),
        2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_file_and_a_bad_file_at_startup_is_exit_2() {
    let file = MountedFile::new(FILE);
    let (_db, url) = create_database(&mysql_admin_url()).await;
    let mut env = base_env(&url, &redis_url(), &format!("mwtest:{}:", random_suffix()));
    env.insert("AUTH_FILE".into(), file.path().display().to_string());

    // Startup refusals first: exit 2, one line naming AUTH_FILE, no key in it.
    for (text, why) in [
        (None, "cannot read the file"),
        (
            Some(
                "[[principals]]\nname = \"x\"\napi_keys = [\"billing-key-0123456789\"]\nscopes = [\"root\"]\n",
            ),
            "\"root\"",
        ),
    ] {
        let mut bad = env.clone();
        let path = scratch_dir("bad-auth").join("auth.toml");
        if let Some(text) = text {
            std::fs::write(&path, text).unwrap();
        }
        bad.insert("AUTH_FILE".into(), path.display().to_string());
        let (code, stderr) = failed_start(&bad);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr
                .trim()
                .starts_with("middleway: configuration error: AUTH_FILE: "),
            "{stderr}"
        );
        assert!(stderr.contains(why), "{stderr}");
        assert!(!stderr.contains("billing-key"), "a key leaked: {stderr}");
    }

    let service = ServiceProcess::start(env).await;
    let loaded = || async {
        series_value(
            &metrics_text(&service.admin).await,
            r#"middleway_auth_reloads_total{outcome="loaded"}"#,
        )
    };
    assert_eq!(loaded().await, 0);
    service.process.signal(Signal::SIGHUP);
    let reloaded = eventually(Duration::from_secs(5), async || loaded().await == 1).await;
    assert!(reloaded, "SIGHUP re-reads the file, even unchanged");
    let http = crate::helpers::client();
    let response = http
        .get(format!("{}/transcriptions/1", service.base))
        .bearer_auth(BILLING)
        .send()
        .await
        .unwrap();
    assert_ne!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "and keeps serving"
    );
}
