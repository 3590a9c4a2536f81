//! The acquires and releases of concurrent requests reach Redis together,
//! in one script run per batch, and each still gets its own answer: a call
//! that fails in Redis fails alone, and with `LOCK_REPLICA_ACKS` a refusal
//! is not held up by the confirmation its batch's grants wait for.

use std::time::Duration;

use futures_util::future::join_all;
use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::helpers::{
    Outcome, OwnRedis, TestApp, eventually, lock_key, metrics_text, pause_redis_writes,
    series_value, spawn_app_with, stall_redis,
};

/// A service with one HTTP worker (so every call meets in one batcher) on
/// `redis`, with `extra` settings.
async fn one_worker_on(redis: &OwnRedis, extra: &[(&str, &str)]) -> TestApp {
    let url = redis.url();
    let app = spawn_app_with(|env| {
        env.insert("REDIS_URL".into(), url);
        env.insert("WORKERS".into(), "1".into());
        for (key, value) in extra {
            env.insert((*key).into(), (*value).into());
        }
    })
    .await;
    // Warm: the worker's Redis connection and 100 HTTP connections are open.
    app.grant("warm-up", 0, 100).await;
    join_all((0..100).map(|_| app.get("/healthz"))).await;
    app
}

/// How many scripts `redis` ran since the last reset: EVALSHA calls, less
/// those that failed (a script's first call on a new server is NOSCRIPT).
async fn script_runs(redis: &OwnRedis) -> u64 {
    let info = info(redis, "commandstats").await;
    let Some(stats) = info
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:"))
    else {
        return 0;
    };
    let field = |name: &str| -> u64 {
        stats
            .split(',')
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
            .map_or(0, |v| v.trim().parse().unwrap())
    };
    field("calls") - field("failed_calls")
}

/// One section of `redis`'s INFO.
async fn info(redis: &OwnRedis, section: &str) -> String {
    let mut conn = redis.connection().await.expect("redis");
    redis::cmd("INFO")
        .arg(section)
        .query_async(&mut conn)
        .await
        .expect("INFO")
}

/// Clients of `redis` blocked in a command (here: WAIT).
async fn blocked_clients(redis: &OwnRedis) -> u64 {
    info(redis, "clients")
        .await
        .lines()
        .find_map(|line| line.strip_prefix("blocked_clients:"))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or(0)
}

/// A primary whose replica is stopped (it confirms nothing) and a service
/// with one worker that waits up to `ack_timeout_ms` for it; `taken` was
/// granted (and confirmed) before the replica stopped.
struct StoppedReplica {
    primary: OwnRedis,
    replica: OwnRedis,
    app: TestApp,
    taken: Value,
}

impl StoppedReplica {
    async fn start(ack_timeout_ms: u64) -> Self {
        let primary = OwnRedis::start().await;
        let replica = OwnRedis::start_replica_of(&primary).await;
        let timeout = ack_timeout_ms.to_string();
        let app = one_worker_on(
            &primary,
            &[
                ("LOCK_REPLICA_ACKS", "1"),
                ("LOCK_REPLICA_ACK_TIMEOUT_MS", timeout.as_str()),
            ],
        )
        .await;
        let taken = app.grant("taken", 0, 60_000).await;
        replica.signal(Signal::SIGSTOP);
        Self {
            primary,
            replica,
            app,
            taken,
        }
    }

    /// A grant the stopped replica never confirmed: 503 once its WAIT ends.
    async fn unconfirmed(grant: JoinHandle<Outcome>) {
        let unconfirmed = grant.await.unwrap();
        assert_eq!(
            unconfirmed.status,
            Some(StatusCode::SERVICE_UNAVAILABLE),
            "{}",
            unconfirmed.body
        );
    }

    /// The replica confirms again, and `taken` is released.
    async fn resume(self) {
        self.replica.signal(Signal::SIGCONT);
        assert_eq!(
            self.app
                .release("taken", &self.taken["token"])
                .await
                .status(),
            StatusCode::OK
        );
    }
}

async fn reset_stats(redis: &OwnRedis) {
    let mut conn = redis.connection().await.expect("redis");
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// Runs `calls` at once while Redis sleeps for 1.5 s, so that every call is
/// made before the first script run returns; their answers, in order.
async fn during_a_stall<F: Future<Output = reqwest::Response>>(
    redis: &OwnRedis,
    calls: impl IntoIterator<Item = F>,
) -> Vec<(StatusCode, Value)> {
    let url = redis.url();
    let stall = tokio::spawn(async move { stall_redis(&url, 1.5).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answers = join_all(calls.into_iter().map(|call| async {
        let response = call.await;
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }))
    .await;
    stall.await.unwrap();
    answers
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_acquires_and_releases_made_at_once_share_a_few_script_runs() {
    let redis = OwnRedis::start().await;
    let app = one_worker_on(&redis, &[]).await;
    let names: Vec<String> = (0..100).map(|n| format!("batched-{n}")).collect();

    reset_stats(&redis).await;
    let grants = during_a_stall(&redis, names.iter().map(|n| app.acquire(n, 0, 30_000))).await;
    for (status, body) in &grants {
        assert_eq!(*status, StatusCode::OK, "{body}");
    }
    // Two runs were on their way when Redis slept; the 98 calls made
    // meanwhile went in the next runs, at most 64 to a run.
    let runs = script_runs(&redis).await;
    assert!(runs <= 4, "100 acquires took {runs} script runs");
    let mut tokens: Vec<&str> = grants
        .iter()
        .map(|(_, b)| b["token"].as_str().unwrap())
        .collect();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), 100, "every grant has its own token");

    reset_stats(&redis).await;
    let releases = names
        .iter()
        .zip(&grants)
        .map(|(name, (_, grant))| app.release(name, &grant["token"]));
    for (status, body) in during_a_stall(&redis, releases).await {
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let runs = script_runs(&redis).await;
    assert!(runs <= 4, "100 releases took {runs} script runs");
    for name in &names {
        assert_eq!(
            app.inspect(name).await["holders"],
            serde_json::json!([]),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_that_fails_in_redis_fails_alone_and_its_batch_is_answered() {
    let redis = OwnRedis::start().await;
    let app = one_worker_on(&redis, &[]).await;
    // A lock whose last fence is not a number: an acquire of it fails in
    // its script (Lua cannot add 1 to it), its clean-up does not.
    let mut conn = redis.connection().await.expect("redis");
    let key = |part| lock_key(&app.key_prefix, "broken", part);
    let _: () = redis::pipe()
        .hset_multiple(
            key("meta"),
            &[
                ("inc", "0123456789abcdef"),
                ("permits", "1"),
                ("fence", "garbage"),
                ("seq", "0"),
                ("arr", "0"),
            ],
        )
        .zadd(key("held"), "~", "+inf")
        .zadd(key("queue"), "~", "+inf")
        .query_async(&mut conn)
        .await
        .unwrap();

    let names: Vec<String> = std::iter::once("broken".to_owned())
        .chain((0..20).map(|n| format!("beside-broken-{n}")))
        .collect();
    reset_stats(&redis).await;
    let answers = during_a_stall(&redis, names.iter().map(|n| app.acquire(n, 0, 30_000))).await;
    // Two runs on their way, one for the 19 calls queued behind them, and
    // the failed call's clean-up (it may have run: its request is forgotten).
    let runs = script_runs(&redis).await;
    assert!(runs <= 4, "21 calls took {runs} script runs: {answers:?}");
    let problem = &answers[0].1;
    assert_eq!(
        problem["type"], "urn:middleway:problem:unavailable",
        "{problem}"
    );
    assert_eq!(
        answers[0].0,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answers[0].1
    );
    for ((status, body), name) in answers.iter().zip(&names).skip(1) {
        assert_eq!(*status, StatusCode::OK, "{name}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_replica_acks_a_refusal_batched_with_unconfirmed_grants_is_answered_at_once() {
    // Every grant's WAIT lasts the full 3 s.
    let setup = StoppedReplica::start(3000).await;
    let (primary, app) = (&setup.primary, &setup.app);

    // Writes (the scripts) wait 1.5 s; connections can still be opened, and
    // with replica acks each run holds one of its own.
    pause_redis_writes(&primary.url(), 1500).await;
    let in_flight = || async {
        series_value(
            &metrics_text(&app.admin_address).await,
            "middleway_http_requests_in_flight",
        )
    };
    // Two refusals go first and hold the worker's run, paused by Redis (a
    // refusal changes nothing, so no WAIT follows it) ...
    let fillers: Vec<_> = (0..2)
        .map(|_| {
            app.lock_in_background(serde_json::json!(
                {"op": "acquire", "name": "taken", "wait_ms": 0, "lease_ms": 60_000}))
        })
        .collect();
    let sent = eventually(Duration::from_secs(1), async || in_flight().await >= 2).await;
    assert!(sent, "the two first acquires are in flight");
    // ... so a grant and a refusal made now queue and share a later run.
    let grant = app.lock_in_background(
        serde_json::json!({"op": "acquire", "name": "free", "wait_ms": 0, "lease_ms": 60_000}),
    );
    let refusal = app.lock_in_background(
        serde_json::json!({"op": "acquire", "name": "taken", "wait_ms": 0, "lease_ms": 60_000}),
    );
    let refused = refusal.await.unwrap();
    assert_eq!(refused.status, Some(StatusCode::LOCKED), "{}", refused.body);
    assert!(
        !grant.is_finished(),
        "the refusal was answered while its batch's grant still waited for the replica"
    );
    StoppedReplica::unconfirmed(grant).await;
    for filler in fillers {
        assert_eq!(filler.await.unwrap().status, Some(StatusCode::LOCKED));
    }
    setup.resume().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_replica_acks_a_grant_waiting_for_its_confirmation_holds_up_no_other_call() {
    // The next grant's WAIT lasts 5 s.
    let setup = StoppedReplica::start(5000).await;
    let (primary, app) = (&setup.primary, &setup.app);
    let grant = app.lock_in_background(
        serde_json::json!({"op": "acquire", "name": "free", "wait_ms": 0, "lease_ms": 60_000}),
    );
    let blocked = eventually(Duration::from_secs(2), async || {
        blocked_clients(primary).await >= 1
    })
    .await;
    assert!(blocked, "the grant's WAIT is blocked in Redis");

    // Calls of the same worker that need no confirmation go on other
    // connections: an inspect, and an acquire that is refused.
    // (Queued behind the WAIT, the inspect would fail: 503 after 2 s.)
    assert_eq!(app.inspect("taken").await["held"], 1);
    let refused = app.acquire("taken", 0, 60_000).await;
    assert_eq!(refused.status(), StatusCode::LOCKED);
    assert!(
        !grant.is_finished(),
        "both were answered while the grant still waited for the replica"
    );
    StoppedReplica::unconfirmed(grant).await;
    setup.resume().await;
}
