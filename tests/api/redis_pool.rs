//! The Redis pool: shared connections, no PING on fresh checkouts, and
//! dead connections replaced, against real Redis servers.

use std::time::Duration;

use middleway::pools::redis::{RedisConnection, RedisPool};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{
    OwnRedis, assert_every_connection_sends_without_delay, redis_connection, redis_url,
    spawn_app_with,
};

async fn client_id(conn: &mut RedisConnection) -> redis::RedisResult<i64> {
    redis::cmd("CLIENT").arg("ID").query_async(conn).await
}

async fn kill_client(url: &str, id: i64) {
    let mut admin = redis_connection(url).await.unwrap();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(id)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(killed, 1);
}

/// A pool of one connection that Redis has just closed, and that connection's id.
async fn pool_whose_connection_was_killed() -> (RedisPool, i64) {
    let url = redis_url();
    let pool = RedisPool::new(url.as_str(), 1).unwrap();
    let mut conn = pool.connection().await.unwrap();
    let id = client_id(&mut conn).await.unwrap();
    drop(conn);
    kill_client(&url, id).await;
    (pool, id)
}

#[tokio::test]
async fn a_checked_out_connection_is_shared_not_held() {
    let pool = RedisPool::new(redis_url().as_str(), 1).unwrap();
    let mut first = pool.connection().await.unwrap();
    // With one connection in the pool, a second checkout while the first
    // handle lives would wait out the pool timeout if checkouts were exclusive.
    let mut second = tokio::time::timeout(Duration::from_millis(500), pool.connection())
        .await
        .expect("the second checkout waited for the first")
        .unwrap();
    assert_eq!(
        client_id(&mut first).await.unwrap(),
        client_id(&mut second).await.unwrap()
    );
    assert_eq!(pool.status().0, 1);
}

#[tokio::test]
async fn connections_that_just_answered_are_not_pinged_on_checkout() {
    let redis = OwnRedis::start().await;
    let pool = RedisPool::new(redis.url().as_str(), 2).unwrap();
    for i in 0..200 {
        let mut conn = pool.connection().await.unwrap();
        let _: () = redis::cmd("SET")
            .arg("k")
            .arg(i)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let mut admin = redis_connection(&redis.url()).await.unwrap();
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(stats.contains("cmdstat_set:calls=200,"), "{stats}");
    assert!(!stats.contains("cmdstat_ping"), "{stats}");
}

#[tokio::test]
async fn a_connection_that_failed_in_use_is_replaced() {
    let (pool, dead) = pool_whose_connection_was_killed().await;
    // Checked out within the freshness window, so no PING finds it dead:
    // the failed call itself must get it replaced.
    let mut conn = pool.connection().await.unwrap();
    let mut failures = 0;
    while client_id(&mut conn).await.is_err() {
        failures += 1;
        assert!(failures < 3, "the dead connection was handed out again");
        conn = pool.connection().await.unwrap();
    }
    assert_eq!(failures, 1);
    assert_ne!(client_id(&mut conn).await.unwrap(), dead);
    assert_eq!(pool.status().0, 1);
}

#[tokio::test]
async fn an_idle_connection_that_died_is_checked_and_replaced_before_use() {
    let (pool, dead) = pool_whose_connection_was_killed().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut conn = pool.connection().await.unwrap();
    let id = client_id(&mut conn)
        .await
        .expect("a stale connection is checked before it is handed out");
    assert_ne!(id, dead);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_connection_the_service_opens_to_redis_sends_without_delay() {
    let redis = OwnRedis::start().await;
    let app = spawn_app_with(|env| {
        env.insert("REDIS_URL".into(), redis.url());
    })
    .await;
    // A hand-off uses every kind of connection: the HTTP workers' pools
    // (acquire, release), the wake subscription (the offer) and the
    // background pool (the waiter's claim).
    let first = app.grant("no-nagle", 0, 30_000).await;
    let body = json!({"op": "acquire", "name": "no-nagle", "wait_ms": 10_000, "lease_ms": 30_000});
    let waiter = app.queued_waiter("no-nagle", body).await;
    assert_eq!(
        app.release("no-nagle", &first["token"]).await.status(),
        StatusCode::OK
    );
    assert_eq!(waiter.await.unwrap().status, Some(StatusCode::OK));

    // Without TCP_NODELAY, a call written while another is on its way waits
    // for that one's acknowledgement (see `redis_target::tcp_settings`).
    // At least: worker, background and wake connections.
    assert_every_connection_sends_without_delay(&[redis.port], 3);
}
