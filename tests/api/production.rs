//! Production edges: API keys, load shedding, metrics, many connections.

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{
    ServiceProcess, TEST_KEY, base_env, client, create_database, eventually, mysql_admin_url,
    random_suffix, redis_url, scratch_dir, spawn_app, spawn_app_with,
};

#[tokio::test(flavor = "multi_thread")]
async fn every_protected_route_refuses_missing_malformed_wrong_and_revoked_keys() {
    // "old-key..." was rotated out: only the new key is configured now.
    let app = spawn_app_with(|env| {
        env.insert("API_KEYS".into(), "new:new-key-0123456789abcdef".into());
    })
    .await;
    let protected = [
        app.client.get(format!("{}/transcriptions/1", app.address)),
        app.client
            .post(format!("{}/locks", app.address))
            .json(&json!({"op": "acquire", "name": "a"})),
    ];
    let headers: [Option<&str>; 7] = [
        None,
        Some("Bearer"),
        Some("Bearer "),
        Some("Basic bmV3Om5ldy1rZXk="),
        Some("new-key-0123456789abcdef"),
        Some("Bearer wrong-key-0123456789abcdef"),
        Some("Bearer old-key-0123456789abcdef"),
    ];
    for request in &protected {
        for header in headers {
            let mut request = request.try_clone().unwrap();
            if let Some(value) = header {
                request = request.header("Authorization", value);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{header:?}");
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            assert_eq!(
                response.headers()["content-type"],
                "application/problem+json"
            );
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["type"], "urn:middleway:problem:unauthorized");
        }
        let ok = request
            .try_clone()
            .unwrap()
            .bearer_auth("new-key-0123456789abcdef")
            .send()
            .await
            .unwrap();
        assert_ne!(ok.status(), StatusCode::UNAUTHORIZED);
    }
    for open in ["/healthz", "/readyz", "/openapi.json"] {
        let response = app
            .client
            .get(format!("{}{open}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{open} needs no key");
    }
    // The document says which credentials the bearer may be.
    let spec: serde_json::Value = app
        .client
        .get(format!("{}/openapi.json", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bearer = &spec["components"]["securitySchemes"]["bearer"];
    assert_eq!(bearer["scheme"], "bearer");
    let description = bearer["description"].as_str().unwrap();
    assert!(description.contains("OIDC JWT") && description.contains("mw-aws-v1."));
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_from_a_file_work_alongside_keys_from_the_environment() {
    let dir = scratch_dir("keys");
    let path = dir.join("api-keys");
    let mut file = std::fs::File::create(&path).unwrap();
    writeln!(file, "# mounted from a Kubernetes Secret\nfunctions:file-key-0123456789abcdef\n\njobs:jobs-key-0123456789abcdef").unwrap();
    let app = spawn_app_with(|env| {
        env.insert("API_KEYS_FILE".into(), path.display().to_string());
    })
    .await;
    for key in [
        "file-key-0123456789abcdef",
        "jobs-key-0123456789abcdef",
        TEST_KEY,
    ] {
        let response = app
            .client
            .get(format!("{}/transcriptions/1", app.address))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::NOT_FOUND,
            "{key} authenticates"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_service_refuses_to_start_without_keys_unless_auth_is_disabled() {
    let output = Command::new(env!("CARGO_BIN_EXE_middleway"))
        .arg("serve")
        .env_clear()
        .env("DATABASE_URL", "mysql://u:p@127.0.0.1:1/db")
        .env("REDIS_URL", "redis://127.0.0.1:1/0")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("API_KEYS"));
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_never_reach_the_logs_but_their_names_do() {
    let (_db, url) = create_database(&mysql_admin_url()).await;
    let mut env = base_env(&url, &redis_url(), &format!("mwtest:{}:", random_suffix()));
    env.insert(
        "API_KEYS".into(),
        "lambda-fleet:super-secret-key-0123456789".into(),
    );
    env.insert("RUST_LOG".into(), "debug".into());
    let mut service = ServiceProcess::start_logged(env).await;
    let http = client();
    for key in [
        "super-secret-key-0123456789",
        "guessed-wrong-key-0123456789",
    ] {
        let _ = http
            .get(format!("{}/transcriptions/1", service.base))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        let _ = http
            .post(format!("{}/locks", service.base))
            .bearer_auth(key)
            .json(&json!({"op": "acquire", "name": "a"}))
            .send()
            .await
            .unwrap();
    }
    service.process.signal(Signal::SIGTERM);
    drop(http);
    let _ = service.process.child().wait();
    let logs = service.logs();
    assert!(logs.contains("lambda-fleet"), "the key name is logged");
    assert!(
        !logs.contains("super-secret-key"),
        "a key leaked into the logs"
    );
    assert!(
        !logs.contains("guessed-wrong-key"),
        "a presented key leaked into the logs"
    );
    assert!(
        !logs.contains("middleway:middleway@"),
        "the database password leaked"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn at_info_each_request_writes_one_json_line_with_its_id_route_status_and_latency() {
    let (_db, url) = create_database(&mysql_admin_url()).await;
    let mut env = base_env(&url, &redis_url(), &format!("mwtest:{}:", random_suffix()));
    env.insert("RUST_LOG".into(), "info".into());
    let mut service = ServiceProcess::start_logged(env).await;
    let http = client();
    for (request_id, path) in [
        ("line-single-1", "/transcriptions/424242"),
        ("line-batch-1", "/transcriptions?ids=424242,7"),
        ("line-bad-1", "/transcriptions/042"),
    ] {
        let _ = http
            .get(format!("{}{path}", service.base))
            .bearer_auth(TEST_KEY)
            .header("x-request-id", request_id)
            .send()
            .await
            .unwrap();
    }
    service.process.signal(Signal::SIGTERM);
    drop(http);
    let _ = service.process.child().wait();
    let logs = service.logs();
    let lines: Vec<Value> = logs
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    for (request_id, route, status) in [
        ("line-single-1", "/transcriptions/{id}", 404),
        ("line-batch-1", "/transcriptions", 200),
        ("line-bad-1", "/transcriptions/{id}", 400),
    ] {
        let mine: Vec<&Value> = lines
            .iter()
            .filter(|l| l["request_id"] == request_id)
            .collect();
        assert_eq!(mine.len(), 1, "one line for {request_id}:\n{logs}");
        let line = mine[0];
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "request completed");
        assert_eq!(line["route"], route);
        assert_eq!(line["method"], "GET");
        assert_eq!(line["status"], status);
        assert_eq!(line["api_key"], "tests");
        assert_eq!(line["principal"], "tests");
        assert!(
            line["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
            "{line}"
        );
        let at = line["timestamp"].as_str().unwrap();
        assert!(at.ends_with('Z') && at.len() >= 20, "RFC 3339 UTC: {at}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_in_flight_cap_requests_are_shed_at_once_while_the_rest_succeed() {
    let app = std::sync::Arc::new(
        spawn_app_with(|env| {
            env.insert("MAX_IN_FLIGHT".into(), "10".into());
        })
        .await,
    );
    // Ten requests that stay in flight: acquires waiting on ten locks whose
    // holders' 2 s leases run out (a release would itself be shed).
    for n in 0..10 {
        let held = app
            .lock(json!({"op": "acquire", "name": format!("cap{n}"), "lease_ms": 2000}))
            .await;
        assert_eq!(held.status(), StatusCode::OK);
    }
    let mut waiting = Vec::new();
    for n in 0..10 {
        let app = app.clone();
        waiting.push(tokio::spawn(async move {
            app.lock(json!({"op": "acquire", "name": format!("cap{n}"), "wait_ms": 20_000}))
                .await
                .status()
        }));
    }
    let all_in = eventually(Duration::from_secs(10), async || {
        let metrics = crate::helpers::metrics_text(&app.admin_address).await;
        metrics.contains("middleway_http_requests_in_flight 10")
    })
    .await;
    assert!(all_in);
    for _ in 0..5 {
        let started = Instant::now();
        let response = app.get("/transcriptions/1").await;
        let elapsed = started.elapsed();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key("retry-after"));
        assert!(
            elapsed < Duration::from_millis(50),
            "shed after {elapsed:?}"
        );
    }
    // Health stays answerable under shedding (probes must not kill a busy pod).
    assert_eq!(
        app.get_without_key("/healthz").await.status(),
        StatusCode::OK
    );
    for waiter in waiting {
        assert_eq!(waiter.await.unwrap(), StatusCode::OK);
    }
    let metrics = crate::helpers::metrics_text(&app.admin_address).await;
    assert!(
        metrics.contains("middleway_http_requests_shed_total 5"),
        "{metrics}"
    );
}

/// Every sample as (family, labels, value); a histogram's value is its count.
type Samples = Vec<(String, std::collections::HashMap<String, String>, f64)>;

/// Parses the exposition with an independent Prometheus text-format parser.
async fn scrape(admin: &str) -> Samples {
    use openmetrics_parser::PrometheusValue;
    let text = crate::helpers::metrics_text(admin).await;
    let exposition =
        openmetrics_parser::prometheus::parse_prometheus(&text).expect("valid Prometheus text");
    let mut samples = Vec::new();
    for (family, metrics) in &exposition.families {
        for sample in metrics.iter_samples() {
            let labels = sample
                .get_labelset()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let value = match &sample.value {
                PrometheusValue::Counter(c) => c.value.as_f64(),
                PrometheusValue::Gauge(g) | PrometheusValue::Unknown(g) => g.as_f64(),
                PrometheusValue::Histogram(h) => h.count.unwrap_or_default() as f64,
                PrometheusValue::Summary(s) => s.count.unwrap_or_default() as f64,
            };
            samples.push((family.clone(), labels, value));
        }
    }
    samples
}

fn metric(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(family, l, _)| {
            family == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, value)| value)
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_live_on_the_admin_port_only_parse_and_move_with_traffic() {
    let app = spawn_app().await;
    let public = app.get_without_key("/metrics").await;
    assert_eq!(public.status(), StatusCode::NOT_FOUND);

    let before = scrape(&app.admin_address).await;
    let route = [("route", "/transcriptions/{id}"), ("status", "404")];
    for _ in 0..3 {
        app.get("/transcriptions/424242").await;
    }
    let granted: Value = app
        .lock(json!({"op": "acquire", "name": "metered"}))
        .await
        .json()
        .await
        .unwrap();
    app.lock(json!({"op": "acquire", "name": "metered"})).await;
    app.lock(json!({"op": "release", "name": "metered", "token": granted["token"]}))
        .await;
    let after = scrape(&app.admin_address).await;

    let moved = |name: &str, labels: &[(&str, &str)]| {
        metric(&after, name, labels) - metric(&before, name, labels)
    };
    assert_eq!(moved("middleway_http_requests_total", &route), 3.0);
    assert_eq!(
        moved("middleway_http_request_duration_seconds", &route),
        3.0
    );
    assert_eq!(
        moved(
            "middleway_lock_operations_total",
            &[("op", "acquire"), ("outcome", "granted")]
        ),
        1.0
    );
    assert_eq!(
        moved(
            "middleway_lock_operations_total",
            &[("op", "acquire"), ("outcome", "timeout")]
        ),
        1.0
    );
    assert_eq!(
        moved(
            "middleway_lock_operations_total",
            &[("op", "release"), ("outcome", "released")]
        ),
        1.0
    );
    assert_eq!(
        moved(
            "middleway_http_requests_by_principal_total",
            &[("principal", "tests")]
        ),
        6.0
    );
    assert!(metric(&after, "middleway_mysql_pool_max_connections", &[]) > 0.0);
    assert_eq!(metric(&after, "middleway_build_info", &[]), 1.0);
    for family in [
        "middleway_mysql_pool_connections",
        "middleway_redis_pool_connections",
        "middleway_lock_waiters",
        "middleway_transcription_coalesced_reads_total",
    ] {
        assert!(
            after.iter().any(|(f, _, _)| f == family),
            "{family} is exported"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_keep_alive_connections_all_get_answers_in_bounded_memory() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard.min(65_536), hard).unwrap();
    let (_db, url) = create_database(&mysql_admin_url()).await;
    let env = base_env(&url, &redis_url(), &format!("mwtest:{}:", random_suffix()));
    // The child inherits the raised descriptor limit.
    let service = crate::helpers::ServiceProcess::start(env).await;
    let port = service.port();

    const CONNECTIONS: usize = 10_000;
    let request = b"GET /healthz HTTP/1.1\r\nHost: middleway\r\n\r\n";
    let mut sockets = Vec::with_capacity(CONNECTIONS);
    // Connect in waves so the listen backlog never overflows.
    for wave in 0..(CONNECTIONS / 500) {
        let mut connecting = tokio::task::JoinSet::new();
        for _ in 0..500 {
            connecting.spawn(async move {
                let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .expect("connect");
                socket.write_all(request).await.unwrap();
                read_response(&mut socket).await;
                socket
            });
        }
        while let Some(socket) = connecting.join_next().await {
            sockets.push(socket.unwrap_or_else(|e| panic!("wave {wave}: {e}")));
        }
    }
    assert_eq!(sockets.len(), CONNECTIONS);
    let rss_mib = rss_kib(service.process.pid().as_raw() as u32) / 1024;
    // Every connection is still open and answers a second request.
    let mut answering = tokio::task::JoinSet::new();
    for mut socket in sockets {
        answering.spawn(async move {
            socket.write_all(request).await.unwrap();
            read_response(&mut socket).await
        });
    }
    let mut answered = 0;
    while let Some(status_line) = answering.join_next().await {
        assert!(status_line.unwrap().starts_with("HTTP/1.1 200"));
        answered += 1;
    }
    assert_eq!(answered, CONNECTIONS);
    assert!(
        rss_mib < 300,
        "RSS {rss_mib} MiB with {CONNECTIONS} connections"
    );
}

/// Reads one small HTTP/1.1 response (headers + Content-Length body); returns its status line.
async fn read_response(socket: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = socket.read(&mut chunk).await.expect("read");
        assert!(n > 0, "connection closed before a response");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return text.lines().next().unwrap_or_default().to_owned();
            }
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// `SHUTDOWN_DELAY_S` (issue 25, item 3): after SIGTERM the replica turns
/// unready at once but keeps accepting and serving new connections for the
/// delay, as endpoints and load balancers take a while to drop it; then it
/// drains and exits 0. This replaces a preStop `sleep`, which needs
/// Kubernetes 1.30+ or a shell in the image.
#[tokio::test(flavor = "multi_thread")]
async fn after_sigterm_it_serves_new_connections_unready_for_the_shutdown_delay_then_exits() {
    let (_db, url) = create_database(&mysql_admin_url()).await;
    let mut env = base_env(&url, &redis_url(), &format!("mwtest:{}:", random_suffix()));
    env.insert("SHUTDOWN_DELAY_S".into(), "2".into());
    let mut service = ServiceProcess::start(env).await;
    let base = service.base.clone();
    let signalled = Instant::now();
    service.process.signal(Signal::SIGTERM);

    // A new client (a new connection) each time: a load balancer that has
    // not yet heard of the shutdown opens new connections.
    let fresh = || {
        crate::helpers::http_client_builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    };
    let unready = eventually(Duration::from_millis(500), async || {
        let ready = fresh().get(format!("{base}/readyz")).send().await;
        matches!(ready, Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE)
    })
    .await;
    assert!(unready, "readiness turns 503 at once");
    let mut served = 0;
    while signalled.elapsed() < Duration::from_millis(1500) {
        let lock = fresh()
            .post(format!("{base}/locks"))
            .bearer_auth(TEST_KEY)
            .json(&json!({"op": "acquire", "name": format!("delay-{served}")}))
            .send()
            .await
            .expect("a new connection is accepted during the delay");
        assert_eq!(lock.status(), StatusCode::OK, "and served");
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served >= 5, "{served} requests served during the delay");

    let exit = tokio::task::spawn_blocking(move || service.process.child().wait().unwrap())
        .await
        .unwrap();
    let took = signalled.elapsed();
    assert_eq!(
        exit.code(),
        Some(0),
        "exits 0 after the delay and the drain"
    );
    assert!(
        took >= Duration::from_secs(2),
        "exited after {took:?}, before the 2 s delay was over"
    );
    let refused = fresh().get(format!("{base}/healthz")).send().await;
    assert!(refused.is_err(), "nothing listens after the exit");
}
