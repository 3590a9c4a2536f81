//! Production backends (issue 11): MySQL and Redis over TLS with the test's
//! own CA, a certificate that does not verify stopping the start, and
//! `LOCK_REPLICA_ACKS` against a real primary and replica.

use std::time::Duration;

use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    NewRow, Outcome, OwnMariaDb, OwnRedis, TestApp, TestCertificates, assert_problem, base_env,
    client_list, create_database, eventually, failed_start, metrics_text, mysql_admin_url,
    random_suffix, redis_url, spawn_app_on,
};

/// A MariaDB that accepts TLS connections only, with the test CA's certificate.
async fn tls_mariadb(certs: &TestCertificates) -> OwnMariaDb {
    let path = |p: &std::path::Path| p.display().to_string();
    OwnMariaDb::start_with(vec![
        format!("--ssl-ca={}", path(&certs.ca)),
        format!("--ssl-cert={}", path(&certs.server_cert)),
        format!("--ssl-key={}", path(&certs.server_key)),
        "--require-secure-transport=ON".into(),
    ])
    .await
}

fn assert_one_line_naming(stderr: &str, variable: &str) {
    let line = stderr.trim();
    assert!(!line.contains('\n'), "one line, got: {stderr}");
    assert!(
        line.starts_with(&format!("middleway: configuration error: {variable}: ")),
        "names {variable}: {stderr}"
    );
    assert!(line.contains("certificate"), "says why: {stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_work_over_tls_to_a_mariadb_that_requires_it() {
    let certs = TestCertificates::new();
    let mysql = tls_mariadb(&certs).await;
    let (db_name, url) = create_database(&mysql.admin_url()).await;

    // The server really refuses plain connections.
    let plain = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{url}?ssl-mode=disabled"))
        .await;
    assert!(
        plain.is_err(),
        "require_secure_transport refuses plain connections"
    );

    let verified = format!(
        "{url}?ssl-mode=verify_identity&ssl-ca={}",
        certs.ca.display()
    );
    let prefix = format!("mwtest:{}:", random_suffix());
    let app = spawn_app_on(base_env(&verified, &redis_url(), &prefix), db_name, prefix).await;
    let id = app.insert_transcription(&NewRow::default()).await;
    let response = app.get(&format!("/transcriptions/{id}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["transcription_id"], id);
    let batch = app.get(&format!("/transcriptions?ids={id}")).await;
    assert_eq!(batch.status(), StatusCode::OK);
    assert_eq!(
        app.get_without_key("/readyz").await.status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mysql_certificate_that_does_not_verify_stops_the_start_with_exit_2() {
    let certs = TestCertificates::new();
    let mysql = tls_mariadb(&certs).await;
    let (_db_name, url) = create_database(&mysql.admin_url()).await;
    let prefix = format!("mwtest:{}:", random_suffix());

    let wrong_ca = format!(
        "{url}?ssl-mode=verify_ca&ssl-ca={}",
        certs.other_ca.display()
    );
    let (code, stderr) = failed_start(&base_env(&wrong_ca, &redis_url(), &prefix));
    assert_eq!(code, Some(2), "{stderr}");
    assert_one_line_naming(&stderr, "DATABASE_URL");

    let (code, stderr) = failed_start(&base_env(
        &format!("{url}?ssl-mode=verify_identity&ssl-ca=/nonexistent/ca.pem"),
        &redis_url(),
        &prefix,
    ));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("DATABASE_URL: ssl-ca file /nonexistent/ca.pem cannot be read"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_identity_refuses_a_certificate_made_for_another_host_name() {
    // Signed by the right CA, but for `localhost` only; the URL says 127.0.0.1.
    let certs = TestCertificates::for_names(&["localhost"]);
    let mysql = tls_mariadb(&certs).await;
    let (_db_name, url) = create_database(&mysql.admin_url()).await;
    let prefix = format!("mwtest:{}:", random_suffix());
    let ca = certs.ca.display();
    let (code, stderr) = failed_start(&base_env(
        &format!("{url}?ssl-mode=verify_identity&ssl-ca={ca}"),
        &redis_url(),
        &prefix,
    ));
    assert_eq!(code, Some(2), "{stderr}");
    assert_one_line_naming(&stderr, "DATABASE_URL");
    // verify_ca checks the chain only: the same server is accepted.
    let mut env = base_env(
        &format!("{url}?ssl-mode=verify_ca&ssl-ca={ca}"),
        &redis_url(),
        &prefix,
    );
    env.insert("BIND_ADDR".into(), "127.0.0.1:0".into());
    let service = crate::helpers::ServiceProcess::start(env).await;
    assert_eq!(
        crate::helpers::client()
            .get(format!("{}/readyz", service.base))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn locks_work_over_rediss_with_the_ca_file() {
    let certs = TestCertificates::new();
    let redis = OwnRedis::start_tls(&certs).await;
    let (db_name, url) = create_database(&mysql_admin_url()).await;
    let prefix = format!("mwtest:{}:", random_suffix());
    let mut env = base_env(&url, &redis.url(), &prefix);
    env.insert("REDIS_TLS_CA_FILE".into(), certs.ca.display().to_string());
    let app = spawn_app_on(env, db_name, prefix).await;
    assert_eq!(
        app.get_without_key("/readyz").await.status(),
        StatusCode::OK
    );

    let first = app.grant("tls-lock", 0, 30_000).await;
    // A waiter is woken over the TLS wake connection when the holder releases.
    let body = json!({"op": "acquire", "name": "tls-lock", "wait_ms": 10_000, "lease_ms": 30_000});
    let waiter = app.queued_waiter("tls-lock", body).await;
    assert_eq!(
        app.release("tls-lock", &first["token"]).await.status(),
        StatusCode::OK
    );
    let second = waiter.await.unwrap();
    assert_eq!(second.status, Some(StatusCode::OK));
    assert!(second.body["fence"].as_u64() > first["fence"].as_u64());

    // The keys really are in the TLS server.
    let mut conn = redis.connection().await.expect("TLS connection");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", app.key_prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!keys.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_certificate_that_does_not_verify_stops_the_start_with_exit_2() {
    let certs = TestCertificates::new();
    let redis = OwnRedis::start_tls(&certs).await;
    let (_db_name, url) = create_database(&mysql_admin_url()).await;
    let prefix = format!("mwtest:{}:", random_suffix());

    let mut env = base_env(&url, &redis.url(), &prefix);
    env.insert(
        "REDIS_TLS_CA_FILE".into(),
        certs.other_ca.display().to_string(),
    );
    let (code, stderr) = failed_start(&env);
    assert_eq!(code, Some(2), "{stderr}");
    assert_one_line_naming(&stderr, "REDIS_TLS_CA_FILE");
    // The line README quotes.
    assert_eq!(
        stderr.trim(),
        "middleway: configuration error: REDIS_TLS_CA_FILE: the Redis server's TLS certificate \
         does not verify: invalid peer certificate: UnknownIssuer"
    );

    // Without a CA file the system roots are used, and they do not know the test CA.
    env.remove("REDIS_TLS_CA_FILE");
    let (code, stderr) = failed_start(&env);
    assert_eq!(code, Some(2), "{stderr}");
    assert_one_line_naming(&stderr, "REDIS_URL");
}

/// A service whose locks live on `primary`, answering only what `acks` replicas have.
async fn service_on(primary: &OwnRedis, acks: u32) -> TestApp {
    let (db_name, url) = create_database(&mysql_admin_url()).await;
    let prefix = format!("mwtest:{}:", random_suffix());
    let mut env = base_env(&url, &primary.url(), &prefix);
    env.insert("LOCK_REPLICA_ACKS".into(), acks.to_string());
    env.insert("LOCK_REPLICA_ACK_TIMEOUT_MS".into(), "100".into());
    spawn_app_on(env, db_name, prefix).await
}

/// Whether the grant `token` of `name` is held in the Redis at `conn`.
async fn held_on(
    conn: &mut redis::aio::MultiplexedConnection,
    app: &TestApp,
    name: &str,
    token: &str,
) -> bool {
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(crate::helpers::lock_key(&app.key_prefix, name, "held"))
        .arg(token)
        .query_async(conn)
        .await
        .unwrap();
    score.is_some()
}

#[tokio::test(flavor = "multi_thread")]
async fn with_replica_acks_an_unconfirmed_change_is_answered_503_and_a_grant_undone() {
    let primary = OwnRedis::start().await;
    let replica = OwnRedis::start_replica_of(&primary).await;
    let app = service_on(&primary, 1).await;

    let held = app.grant("acked", 0, 30_000).await;
    let extended = app
        .lock(json!({"op": "extend", "name": "acked", "token": held["token"], "lease_ms": 30_000}))
        .await;
    assert_eq!(extended.status(), StatusCode::OK);

    // A stopped replica acknowledges nothing.
    replica.signal(Signal::SIGSTOP);
    let refused = app.acquire("unconfirmed", 0, 30_000).await;
    let problem = assert_problem(refused, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("replicas"),
        "{problem}"
    );
    // The grant the primary made is undone: nobody holds the lock.
    let undone = eventually(Duration::from_secs(3), async || {
        app.inspect("unconfirmed").await["holders"]
            .as_array()
            .is_some_and(Vec::is_empty)
    })
    .await;
    assert!(undone, "the unconfirmed grant was released again");
    let extend = app
        .lock(json!({"op": "extend", "name": "acked", "token": held["token"], "lease_ms": 30_000}))
        .await;
    assert_problem(extend, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;

    // A hand-off whose claim is not confirmed keeps trying until the waiter's
    // deadline: the replica comes back before it, and the waiter is granted.
    let body = json!({"op": "acquire", "name": "acked", "wait_ms": 8_000, "lease_ms": 30_000});
    let waiter = app.queued_waiter("acked", body).await;
    let release = app.release("acked", &held["token"]).await;
    assert_problem(release, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    replica.signal(Signal::SIGCONT);
    let next = waiter.await.unwrap();
    assert_eq!(next.status, Some(StatusCode::OK), "{}", next.body);
    assert!(next.body["fence"].as_u64() > held["fence"].as_u64());
    let mut on_replica = replica.connection().await.expect("replica");
    let token = next.body["token"].as_str().unwrap();
    assert!(held_on(&mut on_replica, &app, "acked", token).await);

    // With the replica back, the name whose grant was undone is free.
    app.grant("unconfirmed", 0, 30_000).await;
}

/// Whether `count` connections to the Redis at `url` are blocked in a `WAIT`.
async fn blocked_in_wait(url: &str, count: usize) -> bool {
    let blocked = client_list(url)
        .await
        .iter()
        .filter(|client| client.contains("cmd=wait") && client.contains("flags=b"))
        .count();
    blocked >= count
}

/// Stops `replica` and sends each request (from a task of its own); once
/// `waits` changes are blocked in their `WAIT` on `primary` (every call
/// that may change a lock has one), they stay blocked 300 ms more, past a
/// 100 ms lease, before the replica resumes and confirms them. The answers,
/// in order. `waits` must be exact: requests of one service may share a
/// script run (and its `WAIT`), which is why two services take part.
async fn confirmed_after_a_stall(
    primary: &OwnRedis,
    replica: &OwnRedis,
    requests: Vec<(&TestApp, Value)>,
    waits: usize,
) -> Vec<Outcome> {
    replica.signal(Signal::SIGSTOP);
    let answers: Vec<_> = requests
        .into_iter()
        .map(|(app, body)| app.lock_in_background(body))
        .collect();
    let blocked = eventually(Duration::from_secs(5), async || {
        blocked_in_wait(&primary.url(), waits).await
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    replica.signal(Signal::SIGCONT);
    assert!(blocked, "{waits} changes blocked in WAIT");
    let mut outcomes = Vec::new();
    for answer in answers {
        outcomes.push(answer.await.unwrap());
    }
    outcomes
}

fn assert_answered_too_late(outcome: &Outcome) {
    assert_eq!(
        outcome.status,
        Some(StatusCode::SERVICE_UNAVAILABLE),
        "{outcome:?}"
    );
    assert_eq!(outcome.body["type"], "urn:middleway:problem:unavailable");
    let detail = outcome.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("after the lease could have ended"),
        "{detail}"
    );
}

/// A service on `primary` whose replica may take up to 1.8 s to confirm a
/// change (a Redis call's whole bound is 2 s).
async fn patient_service_on(primary: &OwnRedis) -> TestApp {
    let (db_name, url) = create_database(&mysql_admin_url()).await;
    let prefix = format!("mwtest:{}:", random_suffix());
    let mut env = base_env(&url, &primary.url(), &prefix);
    env.insert("LOCK_REPLICA_ACKS".into(), "1".into());
    env.insert("LOCK_REPLICA_ACK_TIMEOUT_MS".into(), "1800".into());
    spawn_app_on(env, db_name, prefix).await
}

/// `app` counted `count` `op`s answered too late.
async fn counted_too_late(app: &TestApp, op: &str, count: u32) {
    let metrics = metrics_text(&app.admin_address).await;
    let line =
        format!("middleway_lock_operations_total{{op=\"{op}\",outcome=\"too_late\"}} {count}");
    assert!(metrics.contains(&line), "{line} in:\n{metrics}");
}

/// A grant or an extension that Redis confirms later than its lease is never
/// answered 200: the caller would count on a slot that may already be the
/// next holder's. Its lease began no earlier than the call was sent, so a
/// reply that took longer than the lease is answered 503, and a grant is
/// handed back. A stall shorter than the lease still grants.
#[tokio::test(flavor = "multi_thread")]
async fn with_replica_acks_a_grant_confirmed_after_its_lease_could_have_ended_is_never_answered() {
    let primary = OwnRedis::start().await;
    let replica = OwnRedis::start_replica_of(&primary).await;
    let (app, other) = (
        patient_service_on(&primary).await,
        patient_service_on(&primary).await,
    );

    // An extension to 100 ms, and an acquire with a lease longer than the stall.
    let extended = app.grant("extended", 0, 30_000).await;
    let answers = confirmed_after_a_stall(
        &primary,
        &replica,
        vec![
            (
                &app,
                json!({"op": "extend", "name": "extended", "token": extended["token"], "lease_ms": 100}),
            ),
            (&app, json!({"op": "acquire", "name": "long-lease", "lease_ms": 30_000})),
        ],
        2,
    )
    .await;
    assert_answered_too_late(&answers[0]);
    assert_eq!(answers[1].status, Some(StatusCode::OK), "{:?}", answers[1]);
    // The extension stood, and its 100 ms are over.
    let again = app
        .lock(json!({"op": "extend", "name": "extended", "token": extended["token"], "lease_ms": 30_000}))
        .await;
    let problem = assert_problem(again, StatusCode::CONFLICT, "not-held").await;
    assert_eq!(problem["reason"], "expired");
    let released = app.release("long-lease", &answers[1].body["token"]).await;
    assert_eq!(released.status(), StatusCode::OK);

    // An acquire granted at once, and (through the other service) a release
    // whose slot a waiter claims.
    let held = other.grant("handed", 0, 30_000).await;
    // Queued (a call that only queues is not followed by a WAIT).
    let body = json!({"op": "acquire", "name": "handed", "wait_ms": 10_000, "lease_ms": 100});
    let waiter = other.queued_waiter("handed", body).await;
    let answers = confirmed_after_a_stall(
        &primary,
        &replica,
        vec![
            (
                &app,
                json!({"op": "acquire", "name": "at-once", "lease_ms": 100}),
            ),
            (
                &other,
                json!({"op": "release", "name": "handed", "token": held["token"]}),
            ),
        ],
        3,
    )
    .await;
    assert_answered_too_late(&answers[0]);
    assert_eq!(answers[1].status, Some(StatusCode::OK), "{:?}", answers[1]);
    assert_answered_too_late(&waiter.await.unwrap());

    // The grants nobody was told of are gone: both locks can be taken.
    for (service, name) in [(&app, "at-once"), (&other, "handed")] {
        let free = eventually(Duration::from_secs(3), async || {
            let state = service.inspect(name).await;
            state["holders"].as_array().is_some_and(Vec::is_empty) && state["waiting"] == 0
        })
        .await;
        assert!(free, "{name} is free");
        service.grant(name, 0, 30_000).await;
    }
    counted_too_late(&app, "extend", 1).await;
    counted_too_late(&app, "acquire", 1).await;
    counted_too_late(&other, "acquire", 1).await;
}

/// Ten try-once acquires of `<round>-<n>`: the (name, token) of each 200;
/// anything else must be a 503.
async fn try_grants(app: &TestApp, round: &str) -> Vec<(String, String)> {
    let mut granted = Vec::new();
    for n in 0..10 {
        let name = format!("{round}-{n}");
        let response = app.acquire(&name, 0, 60_000).await;
        if response.status() == StatusCode::OK {
            let body: Value = response.json().await.unwrap();
            granted.push((name, body["token"].as_str().unwrap().to_owned()));
        } else {
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
    }
    granted
}

#[tokio::test(flavor = "multi_thread")]
async fn with_replica_acks_no_answered_grant_is_missing_from_the_replica_when_the_primary_dies() {
    let mut primary = OwnRedis::start().await;
    let replica = OwnRedis::start_replica_of(&primary).await;
    let acked = service_on(&primary, 1).await;
    // The same primary without acknowledgements: what the setting prevents.
    let unacked = service_on(&primary, 0).await;

    // Replica in sync: both services answer.
    let mut answered = try_grants(&acked, "healthy").await;
    let healthy_unacked = try_grants(&unacked, "healthy").await;
    assert_eq!(answered.len(), 10);
    assert_eq!(healthy_unacked.len(), 10);

    // The replication link breaks, the primary goes on taking writes, then
    // dies, and the replica is promoted with what it has (a failover).
    let mut on_replica = replica.connection().await.expect("replica");
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut on_replica)
        .await
        .unwrap();
    let detached = try_grants(&acked, "detached").await;
    let detached_unacked = try_grants(&unacked, "detached").await;
    primary.kill();

    assert!(detached.is_empty(), "no grant answered without a replica");
    answered.extend(detached);
    for (name, token) in &answered {
        assert!(
            held_on(&mut on_replica, &acked, name, token).await,
            "answered grant of {name} is on the replica"
        );
    }
    for (name, token) in &healthy_unacked {
        assert!(held_on(&mut on_replica, &unacked, name, token).await);
    }
    // Without acknowledgements the same moment loses every answered grant.
    assert_eq!(detached_unacked.len(), 10);
    for (name, token) in &detached_unacked {
        assert!(
            !held_on(&mut on_replica, &unacked, name, token).await,
            "the promoted replica never saw {name}, granted after the link broke"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_backends_that_are_down_at_start_are_waited_for() {
    // Nothing listens on these ports: not a certificate problem, so the
    // service starts unready and waits, as it does without TLS.
    let certs = TestCertificates::new();
    let (db_name, _url) = create_database(&mysql_admin_url()).await;
    let prefix = format!("mwtest:{}:", random_suffix());
    let mysql_down = format!(
        "mysql://middleway:middleway@127.0.0.1:{}/x?ssl-mode=verify_identity&ssl-ca={}",
        crate::helpers::free_port(),
        certs.ca.display()
    );
    let redis_down = format!("rediss://127.0.0.1:{}/0", crate::helpers::free_port());
    let mut env = base_env(&mysql_down, &redis_down, &prefix);
    env.insert("REDIS_TLS_CA_FILE".into(), certs.ca.display().to_string());
    let app = spawn_app_on(env, db_name, prefix).await;
    let readiness = app.get_without_key("/readyz").await;
    assert_eq!(readiness.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = readiness.json().await.unwrap();
    assert_eq!(
        body["detail"], "mysql: unreachable; redis: unreachable",
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rediss_checks_the_host_name_by_default() {
    // Signed by the CA the service trusts, but for 127.0.0.1 only; the URL says localhost.
    let certs = TestCertificates::for_names(&["127.0.0.1"]);
    let redis = OwnRedis::start_tls(&certs).await;
    let (_db_name, url) = create_database(&mysql_admin_url()).await;
    let prefix = format!("mwtest:{}:", random_suffix());
    let by_name = redis.url().replace("127.0.0.1", "localhost");
    let mut env = base_env(&url, &by_name, &prefix);
    env.insert("REDIS_TLS_CA_FILE".into(), certs.ca.display().to_string());
    let (code, stderr) = failed_start(&env);
    assert_eq!(code, Some(2), "{stderr}");
    assert_one_line_naming(&stderr, "REDIS_TLS_CA_FILE");
    assert!(
        stderr.contains("certificate not valid for name \"localhost\""),
        "{stderr}"
    );
}
