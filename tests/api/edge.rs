//! The HTTP edge against a hostile client (issue 16): bounded metric labels,
//! body deadlines, upgrades, edge errors, many waiters on distinct locks, and
//! the small contract points (HEAD, credentials, charsets, 100-continue).

use std::time::{Duration, Instant};

use rand::RngExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{
    ServiceProcess, TEST_KEY, assert_problem, base_env, client_list, create_database, metrics_text,
    mysql_admin_url, raise_fd_limit, random_suffix, redis_url, spawn_app,
};

/// Writes `request` on a fresh connection to `base` and reads what comes
/// back within `within` (the connection may stay open).
async fn exchange(base: &str, request: &[u8], within: Duration) -> String {
    let mut stream = TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    stream.write_all(request).await.unwrap();
    read_for(&mut stream, within).await
}

async fn read_for(stream: &mut TcpStream, within: Duration) -> String {
    let mut answer = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut buffer = [0u8; 65536];
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buffer[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

fn lock_request(body: &str, extra_headers: &str) -> Vec<u8> {
    format!(
        "POST /locks HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TEST_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n{extra_headers}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Item 1: the method is a metric label and a log field; 5,000 random
/// 1,000-character methods grew the scrape from 223 KB to 110 MB in v1.
#[tokio::test(flavor = "multi_thread")]
async fn junk_methods_never_grow_the_metrics_scrape() {
    let app = spawn_app().await;
    let before = metrics_text(&app.admin_address).await.len();
    let junk = |len: usize| -> String {
        (0..len)
            .map(|_| rand::rng().random_range(b'A'..=b'Z') as char)
            .collect()
    };
    let mut tasks = tokio::task::JoinSet::new();
    for batch in 0..50 {
        let base = app.address.clone();
        let methods: Vec<String> = (0..100)
            .map(|i| {
                if (batch + i) % 10 == 0 {
                    junk(7)
                } else {
                    junk(1000)
                }
            })
            .collect();
        tasks.spawn(async move {
            for method in methods {
                let request = format!(
                    "{method} /transcriptions/1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                );
                let answer = exchange(&base, request.as_bytes(), Duration::from_secs(2)).await;
                let status = &answer.get(9..12).unwrap_or_default();
                assert!(
                    ["400", "401", "405"].contains(status),
                    "{method:.20}: {answer:.200}"
                );
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let scrape = metrics_text(&app.admin_address).await;
    assert!(
        scrape.len() < before + 64 * 1024,
        "the scrape grew from {before} to {} bytes",
        scrape.len()
    );
    assert!(
        scrape.contains(r#"method="other""#),
        "short junk methods count as `other`"
    );
    // One enormous method: refused before anything keeps it.
    let request = format!("{} /healthz HTTP/1.1\r\nHost: t\r\n\r\n", junk(120_000));
    let answer = exchange(&app.address, request.as_bytes(), Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer:.100}");
    assert!(metrics_text(&app.admin_address).await.len() < before + 64 * 1024);
}

/// Item 2: a body must arrive within 5 s (408 problem+json), whether it
/// stalls or trickles; an Upgrade request to a plain route is refused at once.
#[tokio::test(flavor = "multi_thread")]
async fn stalled_and_trickled_bodies_get_408_and_upgrades_are_refused_at_once() {
    let app = spawn_app().await;
    let stalled = async {
        let started = Instant::now();
        let mut request = lock_request(r#"{"op":"inspect","name":"x"}"#, "");
        // Claim 100 bytes, send 5.
        let head_end = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        request.truncate(head_end);
        let request = String::from_utf8(request)
            .unwrap()
            .replace("Content-Length: 27", "Content-Length: 100")
            + r#"{"op""#;
        let answer = exchange(&app.address, request.as_bytes(), Duration::from_secs(8)).await;
        (answer, started.elapsed())
    };
    let trickled = async {
        let started = Instant::now();
        let mut stream = TcpStream::connect(app.address.trim_start_matches("http://"))
            .await
            .unwrap();
        let body = r#"{"op":"inspect","name":"trickle"}"#;
        let request = lock_request(body, "");
        let head = request.len() - body.len();
        stream.write_all(&request[..head]).await.unwrap();
        for byte in body.bytes() {
            if stream.write_all(&[byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            if started.elapsed() > Duration::from_secs(7) {
                break;
            }
        }
        (
            read_for(&mut stream, Duration::from_secs(3)).await,
            started.elapsed(),
        )
    };
    let upgrade = async {
        let started = Instant::now();
        let request = lock_request(
            r#"{"op":"inspect","name":"u"}"#,
            "Connection: Upgrade\r\nUpgrade: websocket\r\n",
        );
        let answer = exchange(&app.address, &request, Duration::from_secs(1)).await;
        (answer, started.elapsed())
    };
    let ((stalled, stalled_took), (trickled, trickled_took), (upgraded, _)) =
        tokio::join!(stalled, trickled, upgrade);
    for (answer, took) in [(&stalled, stalled_took), (&trickled, trickled_took)] {
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("application/problem+json"), "{answer}");
        assert!(
            answer.contains("urn:middleway:problem:request-timeout"),
            "{answer}"
        );
        assert!(took < Duration::from_secs(7), "answered after {took:?}");
    }
    assert!(
        upgraded.starts_with("HTTP/1.1 400"),
        "refused within 1 s: {upgraded}"
    );
    assert!(upgraded.contains(r#""field":"upgrade""#), "{upgraded}");
}

/// Item 3: the admin listener answers like the public one (request ids,
/// 405 for a wrong method); the parser's own errors are logged at WARN, not
/// ERROR (anyone can send them).
#[tokio::test(flavor = "multi_thread")]
async fn edge_errors_carry_request_ids_and_are_not_logged_as_errors() {
    let (_db, url) = create_database(&mysql_admin_url()).await;
    let mut env = base_env(&url, &redis_url(), &format!("mwtest:{}:", random_suffix()));
    env.insert("RUST_LOG".into(), "info".into());
    let mut service = ServiceProcess::start_logged(env).await;
    let admin = service.admin.clone();
    let http = crate::helpers::http_client_builder().build().unwrap();
    let posted = http.post(format!("{admin}/metrics")).send().await.unwrap();
    assert_eq!(posted.headers()["allow"], "GET, HEAD");
    assert_problem(posted, StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed").await;
    let missing = http.get(format!("{admin}/nothing")).send().await.unwrap();
    let body = assert_problem(missing, StatusCode::NOT_FOUND, "not-found").await;
    assert!(!body["request_id"].as_str().unwrap().is_empty());

    for malformed in [
        "POST /locks HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: a\0b\r\n\r\n",
    ] {
        let answer = exchange(&service.base, malformed.as_bytes(), Duration::from_secs(1)).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }
    // Too many headers (over 96): 431 from the parser.
    let crowded: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    let request = format!("GET /healthz HTTP/1.1\r\nHost: t\r\n{crowded}\r\n");
    let answer = exchange(&service.base, request.as_bytes(), Duration::from_secs(1)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // Headers that never end: 408 after 5 s.
    let started = Instant::now();
    let answer = exchange(
        &service.base,
        b"GET /healthz HTTP/1.1\r\nHost: t\r\n",
        Duration::from_secs(7),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    service.process.signal(nix::sys::signal::Signal::SIGTERM);
    let _ = service.process.child().wait();
    let logs = service.logs();
    assert!(
        !logs.contains(r#""level":"ERROR""#),
        "no ERROR line:\n{logs}"
    );
    assert!(
        logs.contains("a client's connection failed"),
        "one WARN line:\n{logs}"
    );
}

/// Item 4: waiting on many distinct locks costs neither Redis connections
/// nor the service's responsiveness. v1 held a Redis connection and a
/// descriptor per lock (9,980 waiters: 20,000 descriptors, 9,991 Redis
/// clients, a liveness probe stuck for 5 s).
#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_waiters_on_ten_thousand_locks_keep_redis_connections_bounded() {
    raise_fd_limit();
    let (_db, url) = create_database(&mysql_admin_url()).await;
    let prefix = format!("mwtest:{}:", random_suffix());
    let env = base_env(&url, &redis_url(), &prefix);
    let service = ServiceProcess::start(env).await;
    let http = crate::helpers::client();
    const N: usize = 10_000;
    // Every lock is held first, so that every waiter waits.
    let mut holders = tokio::task::JoinSet::new();
    for chunk in 0..20 {
        let (http, base) = (http.clone(), service.base.clone());
        holders.spawn(async move {
            for n in (chunk..N).step_by(20) {
                let body =
                    json!({"op": "acquire", "name": format!("distinct-{n}"), "lease_ms": 120_000});
                let response = crate::helpers::post_lock(&http, &base, &body).await;
                assert_eq!(response.status(), StatusCode::OK);
            }
        });
    }
    while let Some(done) = holders.join_next().await {
        done.unwrap();
    }
    // 2,500 arrive per second: a burst, but one a 2-core machine running
    // this test, the service (a debug build), Redis and MariaDB can take in.
    let mut waiters = Vec::with_capacity(N);
    for n in 0..N {
        let body = format!(r#"{{"op":"acquire","name":"distinct-{n}","wait_ms":60000}}"#);
        let mut stream = TcpStream::connect(service.base.trim_start_matches("http://"))
            .await
            .unwrap();
        stream.write_all(&lock_request(&body, "")).await.unwrap();
        waiters.push(stream);
        if n % 250 == 249 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let admin = service.admin.clone();
    let queued = crate::helpers::eventually(Duration::from_secs(30), async || {
        metrics_text(&admin)
            .await
            .contains(&format!("middleway_lock_waiters {N}"))
    })
    .await;
    assert!(queued, "{N} waiters queued at once");
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let started = Instant::now();
        let health = http
            .get(format!("{}/healthz", service.base))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), StatusCode::OK);
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(100),
        "/healthz took {slowest:?}"
    );
    let redis_clients = client_list(&redis_url())
        .await
        .iter()
        .filter(|line| !line.contains("cmd=client|list"))
        .count();
    // The shared Redis also serves other tests: this bound covers them too.
    assert!(redis_clients <= 300, "{redis_clients} Redis connections");
    drop(waiters);
}

/// Item 5: the small contract points.
#[tokio::test(flavor = "multi_thread")]
async fn head_works_wherever_get_does() {
    let app = spawn_app().await;
    let id = app.insert_transcription(&Default::default()).await;
    for path in [
        "/healthz",
        "/openapi.json",
        &format!("/transcriptions/{id}"),
    ] {
        let get = app.get(path).await;
        let head = app
            .client
            .head(format!("{}{path}", app.address))
            .bearer_auth(TEST_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), StatusCode::OK, "{path}");
        assert_eq!(
            head.headers().get("etag"),
            get.headers().get("etag"),
            "{path}"
        );
        assert_eq!(
            head.headers()["content-type"],
            get.headers()["content-type"]
        );
        assert!(
            head.bytes().await.unwrap().is_empty(),
            "{path}: HEAD has no body"
        );
    }
    let put = app
        .client
        .put(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(put.headers()["allow"], "GET, HEAD");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_authorization_headers_are_refused_not_guessed() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(format!("{}/transcriptions/1", app.address))
        .header("authorization", format!("Bearer {TEST_KEY}"))
        .header("authorization", "Bearer wrong-key-0123456789")
        .send()
        .await
        .unwrap();
    let problem = assert_problem(response, StatusCode::BAD_REQUEST, "invalid-request").await;
    assert_eq!(problem["errors"][0]["field"], "authorization");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_in_another_charset_is_415_and_ranges_are_said() {
    let app = spawn_app().await;
    let body = br#"{"op":"inspect","name":"charset"}"#.to_vec();
    for (content_type, status) in [
        (
            "application/json; charset=latin1",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "application/json; charset=utf-16",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        ("application/json; charset=UTF-8", StatusCode::OK),
        ("application/json", StatusCode::OK),
    ] {
        let response = app
            .client
            .post(format!("{}/locks", app.address))
            .bearer_auth(TEST_KEY)
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{content_type}");
    }
    for (field, value, range) in [
        ("wait_ms", json!(-1), "0..=120000"),
        ("wait_ms", json!(120_001), "0..=120000"),
        ("lease_ms", json!(99), "100..=3600000"),
        ("lease_ms", json!("soon"), "100..=3600000"),
    ] {
        let mut body = json!({"op": "acquire", "name": "ranges"});
        body[field] = value;
        let problem = assert_problem(
            app.lock(body).await,
            StatusCode::BAD_REQUEST,
            "invalid-request",
        )
        .await;
        let message = problem["errors"][0]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(range), "{field}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn continue_is_sent_only_after_the_key_is_checked() {
    let app = spawn_app().await;
    let body = r#"{"op":"inspect","name":"expect"}"#;
    let head = |key: &str| {
        format!(
            "POST /locks HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        )
    };
    let refused = exchange(
        &app.address,
        head("wrong-key-0123456789").as_bytes(),
        Duration::from_millis(500),
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    assert!(!refused.contains("100 Continue"), "{refused}");

    let mut stream = TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .unwrap();
    stream.write_all(head(TEST_KEY).as_bytes()).await.unwrap();
    let go_on = read_for(&mut stream, Duration::from_millis(500)).await;
    assert_eq!(go_on, "HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(body.as_bytes()).await.unwrap();
    let answer = read_for(&mut stream, Duration::from_millis(500)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let _: Value = serde_json::from_str(answer.split("\r\n\r\n").last().unwrap()).unwrap();
}
