//! OpenTelemetry: the caller's trace continues through the service into
//! MySQL and Redis, spans reach a real OTLP/HTTP receiver (decoded with
//! `opentelemetry-proto`), and SQL carries the trace in a comment.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{
    ServiceProcess, TEST_KEY, base_env, client, create_database, eventually, free_port,
    metrics_text, mysql_admin_url, random_suffix, redis_url,
};

/// A span as the receiver got it.
#[derive(Debug, Clone)]
struct Received {
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    kind: i32,
    attributes: HashMap<String, String>,
}

/// An OTLP/HTTP receiver on a free port: `POST /v1/traces` (protobuf).
async fn receiver() -> (String, Arc<Mutex<Vec<Received>>>) {
    let spans: Arc<Mutex<Vec<Received>>> = Arc::default();
    let port = free_port();
    let stored = Arc::clone(&spans);
    let server = HttpServer::new(move || {
        let stored = Arc::clone(&stored);
        App::new().route(
            "/v1/traces",
            web::post().to(move |body: web::Bytes| {
                let stored = Arc::clone(&stored);
                async move {
                    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                    let mut stored = stored.lock().unwrap();
                    for span in request
                        .resource_spans
                        .iter()
                        .flat_map(|r| &r.scope_spans)
                        .flat_map(|s| &s.spans)
                    {
                        let attributes = span
                            .attributes
                            .iter()
                            .map(|kv| {
                                let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                                    Some(AnyValue::StringValue(s)) => s.clone(),
                                    Some(AnyValue::IntValue(i)) => i.to_string(),
                                    Some(AnyValue::BoolValue(b)) => b.to_string(),
                                    Some(AnyValue::DoubleValue(d)) => d.to_string(),
                                    other => format!("{other:?}"),
                                };
                                (kv.key.clone(), value)
                            })
                            .collect();
                        stored.push(Received {
                            trace_id: hex(&span.trace_id),
                            span_id: hex(&span.span_id),
                            parent_span_id: hex(&span.parent_span_id),
                            name: span.name.clone(),
                            kind: span.kind,
                            attributes,
                        });
                    }
                    HttpResponse::Ok()
                        .content_type("application/x-protobuf")
                        .finish()
                }
            }),
        )
    })
    .workers(1)
    .bind(("127.0.0.1", port))
    .expect("bind receiver")
    .run();
    tokio::spawn(server);
    (format!("http://127.0.0.1:{port}"), spans)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A traced service on its own database (20 seeded rows), exporting to `endpoint`.
async fn traced_service(endpoint: &str) -> (ServiceProcess, String, String) {
    let (db_name, url) = create_database(&mysql_admin_url()).await;
    let seeded = std::process::Command::new(env!("CARGO_BIN_EXE_middleway"))
        .args(["seed", "--rows", "20"])
        .env("DATABASE_URL", &url)
        .output()
        .expect("run seed");
    assert!(seeded.status.success());
    let mut env = base_env(&url, &redis_url(), &format!("mwtest:{}:", random_suffix()));
    env.insert("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.into());
    env.insert("OTEL_TRACES_SAMPLER".into(), "always_on".into());
    env.insert("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into());
    env.insert("OTEL_SERVICE_NAME".into(), "middleway-test".into());
    let service = ServiceProcess::start(env).await;
    let admin = service.admin.clone();
    (service, admin, db_name)
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread")]
async fn a_read_continues_the_callers_trace_with_a_child_mysql_span() {
    let (endpoint, spans) = receiver().await;
    let (service, _admin, _db) = traced_service(&endpoint).await;
    let response = client()
        .get(format!("{}/transcriptions/3", service.base))
        .bearer_auth(TEST_KEY)
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let find = |name: &str| {
        spans
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.trace_id == TRACE_ID && s.name == name)
            .cloned()
    };
    let arrived = eventually(Duration::from_secs(10), async || {
        find("GET /transcriptions/{id}").is_some() && find("mysql.read").is_some()
    })
    .await;
    assert!(arrived, "spans received: {:?}", spans.lock().unwrap());
    let server = find("GET /transcriptions/{id}").unwrap();
    assert_eq!(
        server.parent_span_id, PARENT_ID,
        "the caller's span is the parent"
    );
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(server.attributes["http.response.status_code"], "200");
    // The principal (the key's name), never the key.
    assert_eq!(server.attributes["enduser.id"], "tests");
    assert!(!format!("{server:?}").contains(TEST_KEY));
    let mysql = find("mysql.read").unwrap();
    assert_eq!(
        mysql.parent_span_id, server.span_id,
        "the MySQL read is the request's child"
    );
    assert_eq!(mysql.kind, SpanKind::Client as i32);
    assert_eq!(mysql.attributes["db.system.name"], "mysql");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lock_wait_is_a_span_with_name_outcome_and_fence_but_never_the_token() {
    let (endpoint, spans) = receiver().await;
    let (service, _admin, _db) = traced_service(&endpoint).await;
    let http = client();
    let post = |body: serde_json::Value| {
        http.post(format!("{}/locks", service.base))
            .bearer_auth(TEST_KEY)
            .json(&body)
            .send()
    };
    let held: serde_json::Value = post(json!({"op": "acquire", "name": "traced", "lease_ms": 300}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let granted: serde_json::Value =
        post(json!({"op": "acquire", "name": "traced", "wait_ms": 5000}))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let fence = granted["fence"].as_u64().unwrap().to_string();
    let wait = || {
        spans
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.name == "lock.wait")
            .cloned()
    };
    assert!(eventually(Duration::from_secs(10), async || wait().is_some()).await);
    let wait = wait().unwrap();
    assert_eq!(wait.attributes["lock.name"], "traced");
    assert_eq!(wait.attributes["outcome"], "granted");
    assert_eq!(wait.attributes["fence"], fence);
    let all = spans.lock().unwrap().clone();
    assert!(
        all.iter()
            .any(|s| s.name == "redis.script" && s.trace_id == wait.trace_id)
    );
    for token in [&held["token"], &granted["token"]] {
        let token = token.as_str().unwrap();
        assert!(
            all.iter()
                .all(|s| s.attributes.values().all(|v| !v.contains(token))),
            "a token reached a span"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sampled_query_carries_its_traceparent_in_a_sql_comment() {
    let (endpoint, _spans) = receiver().await;
    let (service, _admin, db_name) = traced_service(&endpoint).await;
    // Hold the read inside MySQL, where the process list shows its text.
    let admin = sqlx::MySqlPool::connect(&format!("{}/{db_name}", mysql_admin_url()))
        .await
        .unwrap();
    let mut blocker = admin.acquire().await.unwrap();
    sqlx::query("LOCK TABLES transcriptions WRITE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let read = tokio::spawn({
        let url = format!("{}/transcriptions/5", service.base);
        async move {
            client()
                .get(url)
                .bearer_auth(TEST_KEY)
                .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    let statement = || async {
        sqlx::query_scalar::<_, Option<String>>(
            "SELECT CAST(INFO AS CHAR) FROM information_schema.PROCESSLIST \
             WHERE DB = ? AND INFO LIKE 'SELECT transcription_id%'",
        )
        .bind(&db_name)
        .fetch_optional(&admin)
        .await
        .unwrap()
        .flatten()
    };
    assert!(
        eventually(Duration::from_secs(10), async || statement()
            .await
            .is_some())
        .await
    );
    let text = statement().await.unwrap();
    sqlx::query("UNLOCK TABLES")
        .execute(&mut *blocker)
        .await
        .unwrap();
    assert_eq!(read.await.unwrap(), StatusCode::OK);
    assert!(
        text.contains(&format!("/*traceparent='00-{TRACE_ID}-")),
        "the query names its trace: {text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_collector_unreachable_requests_are_unaffected_and_drops_are_counted() {
    let closed = format!("http://127.0.0.1:{}", free_port());
    let (service, admin, _db) = traced_service(&closed).await;
    let http = client();
    for id in 1..=20 {
        let response = http
            .get(format!("{}/transcriptions/{id}", service.base))
            .bearer_auth(TEST_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let counted = eventually(Duration::from_secs(15), async || {
        metrics_text(&admin)
            .await
            .lines()
            .find_map(|l| l.strip_prefix("middleway_otel_dropped_spans_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .is_some_and(|n| n >= 1.0)
    })
    .await;
    assert!(counted, "the dropped-spans counter moved");
}
