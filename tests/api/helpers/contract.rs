//! Assertions on the contract's error shape (problem+json).

use reqwest::StatusCode;
use serde_json::Value;

/// Asserts `response` is a problem+json `status` of type `slug` carrying the
/// request id; returns the body.
pub async fn assert_problem(response: reqwest::Response, status: StatusCode, slug: &str) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], format!("urn:middleway:problem:{slug}"));
    assert_eq!(body["status"], status.as_u16());
    assert_eq!(body["request_id"], request_id);
    body
}

/// The names of the fields a 400 body lists.
pub fn named_fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .filter_map(|e| e["field"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
