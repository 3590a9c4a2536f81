//! Locks across a Redis failover: whichever server is promoted, and however
//! far behind it was, fences never go back.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{
    OwnRedis, Proxy, acquire_body, client, eventually, free_port, granted, post_lock,
    redis_command, release, service_replicas,
};

/// Issue 23, defect 1. Two service replicas; the Redis replica stops
/// following; 50 grants through service replica 1; the primary dies and the
/// lagging replica is promoted (its copy of the lock has an older `fence`).
/// v2 then granted `old fence + 1` through service replica 2: 49 below the
/// highest fence already answered. Now the next grant is above all of them.
#[tokio::test(flavor = "multi_thread")]
async fn fences_stay_above_every_answered_fence_after_a_failover_to_a_lagging_replica() {
    let mut primary = OwnRedis::start().await;
    // The replica follows through a link the test can cut.
    let link = Proxy::start(primary.port).await;
    let lagging = OwnRedis::start_replica_of_port(link.port).await;
    let proxy = Proxy::start(primary.port).await;
    let fleet = service_replicas(&proxy.redis_url(), 2).await;
    let http = client();

    // Both service replicas and the Redis replica know the lock.
    let first = granted(&http, &fleet[1].base, acquire_body("f", 0, 30_000)).await;
    assert_eq!(
        release(&http, &fleet[1].base, "f", &first).await,
        StatusCode::OK
    );
    let replicated = eventually(Duration::from_secs(5), async || {
        let keys: Vec<String> = redis_command(&lagging.url(), &["KEYS", "*{f}*"]).await;
        !keys.is_empty()
    })
    .await;
    assert!(replicated, "the Redis replica has the lock");

    // The Redis replica stops following (its link to the primary is cut and
    // cannot be made again); the primary goes on alone.
    link.switch_to(free_port());
    let mut highest = 0;
    for _ in 0..50 {
        let grant = granted(&http, &fleet[0].base, acquire_body("f", 0, 30_000)).await;
        highest = highest.max(grant["fence"].as_u64().unwrap());
        assert_eq!(
            release(&http, &fleet[0].base, "f", &grant).await,
            StatusCode::OK
        );
    }

    // The primary dies; the lagging replica is promoted behind the same address.
    primary.kill();
    let _: String = redis_command(&lagging.url(), &["REPLICAOF", "NO", "ONE"]).await;
    proxy.switch_to(lagging.port);

    let mut next = Value::Null;
    let served = eventually(Duration::from_secs(10), async || {
        let response = post_lock(&http, &fleet[1].base, &acquire_body("f", 0, 30_000)).await;
        if response.status() != StatusCode::OK {
            return false;
        }
        next = response.json().await.unwrap();
        true
    })
    .await;
    assert!(served, "the lock works on the promoted replica");
    let next_fence = next["fence"].as_u64().unwrap();
    assert!(
        next_fence > highest,
        "fence {next_fence} after {highest} was answered before the failover"
    );
}
