//! The shipped dashboard and alerts (k8s/observability) only use metrics the
//! service really exports: every `middleway_*` name they query is checked
//! against a live scrape.

use std::collections::BTreeSet;

use serde_json::json;

use crate::helpers::{metrics_text, spawn_app_with};

/// Every `middleway_...` metric name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("middleway_") {
        let name: String = rest[start..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[start + name.len()..];
        names.insert(name);
    }
    names
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
