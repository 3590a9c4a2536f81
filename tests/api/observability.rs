//! The shipped dashboard and alerts (k8s/observability) only use metrics the
//! service really exports: every `middleway_*` name they query is checked
//! against a live scrape.

use std::collections::BTreeSet;

use serde_json::json;

use crate::helpers::{metrics_text, spawn_app, spawn_app_with};

/// Every `middleway_...` and `process_...` metric name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for prefix in ["middleway_", "process_"] {
        let mut rest = text;
        while let Some(start) = rest.find(prefix) {
            let name: String = rest[start..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            rest = &rest[start + name.len()..];
            // A bare prefix is prose ("process_* metrics"), not a name.
            if !name.ends_with('_') {
                names.insert(name);
            }
        }
    }
    names
}

/// The value of the sample `series` (name and labels exactly as exported).
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// Issue 25, item 7: what the Prometheus Operator's users expect to find:
/// the standard process metrics, lock latency per operation and outcome,
/// and pool states that add up (idle + in use = open).
#[tokio::test(flavor = "multi_thread")]
async fn process_metrics_lock_latency_by_outcome_and_pool_states_that_add_up() {
    let app = spawn_app().await;
    let _ = app.get("/transcriptions/1").await;
    let grant = app.grant("timed", 0, 5000).await;
    let busy = app
        .lock(json!({"op": "acquire", "name": "timed", "wait_ms": 0}))
        .await;
    assert_eq!(busy.status(), 423);
    let _ = app.release("timed", &grant["token"]).await;
    let _ = app.lock(json!({"op": "inspect", "name": "timed"})).await;
    let scrape = metrics_text(&app.admin_address).await;

    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        let value = sample(&scrape, name).unwrap_or_else(|| panic!("{name} is exported"));
        // CPU is counted in whole seconds: a young process may have none yet.
        let least = if name == "process_cpu_seconds_total" {
            0.0
        } else {
            1.0
        };
        assert!(value >= least, "{name} = {value}");
    }
    let latency = |op: &str, outcome: &str| {
        let series = format!(
            "middleway_lock_request_duration_seconds_count{{op=\"{op}\",outcome=\"{outcome}\"}}"
        );
        sample(&scrape, &series).unwrap_or(0.0)
    };
    assert_eq!(latency("acquire", "ok"), 1.0);
    assert_eq!(
        latency("acquire", "timeout"),
        1.0,
        "a 423 is its own outcome"
    );
    assert_eq!(latency("release", "ok"), 1.0);
    assert_eq!(latency("inspect", "ok"), 1.0);
    for pool in ["mysql", "redis"] {
        let state = |state: &str| {
            sample(
                &scrape,
                &format!("middleway_{pool}_pool_connections{{state=\"{state}\"}}"),
            )
            .unwrap_or_else(|| panic!("{pool} {state} exported"))
        };
        assert!(state("open") >= 1.0, "{pool}: a connection was used");
        assert_eq!(state("idle") + state("in_use"), state("open"), "{pool}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_and_the_alerts_query_only_metrics_the_service_exports() {
    let app = spawn_app_with(|env| {
        env.insert("DB_FLEET_MAX".into(), "4".into());
    })
    .await;
    // Traffic of every kind, so labelled series exist.
    let _ = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    let _ = app.get("/transcriptions/1").await;
    let grant = app.grant("observed", 0, 5000).await;
    let _ = app.release("observed", &grant["token"]).await;
    let _ = app.lock(json!({"op": "inspect", "name": "observed"})).await;
    let scrape = metrics_text(&app.admin_address).await;
    let exported: BTreeSet<&str> = scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let root = env!("CARGO_MANIFEST_DIR");
    let mut checked = 0;
    for file in [
        "k8s/observability/dashboard.json",
        "k8s/observability/prometheus-rule.yaml",
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let names = metric_names(&text);
        assert!(names.len() >= 8, "{file} queries the service's metrics");
        for name in names {
            assert!(
                exported.contains(name.as_str()),
                "{file} queries {name}, which /metrics does not export"
            );
            checked += 1;
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/k8s/observability/dashboard.json")).unwrap(),
    )
    .unwrap();
    assert!(dashboard["panels"].as_array().unwrap().len() >= 8);
    assert!(checked >= 16, "{checked} names checked");
}
