//! Locks under failure: Redis outages, many replicas, killed processes,
//! clients that hang up, and the bound on Redis connections.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    OwnRedis, ServiceProcess, Storm, TEST_KEY, assert_conserved, base_env, client, client_list,
    create_database, eventually, metrics_text, mysql_admin_url, raise_fd_limit, random_suffix,
    redis_url, spawn_app_with,
};

#[tokio::test(flavor = "multi_thread")]
async fn redis_stopping_gives_fast_503s_and_its_return_recovers_without_restart() {
    let mut redis = OwnRedis::start().await;
    let url = redis.url();
    let app = spawn_app_with(|env| {
        env.insert("REDIS_URL".into(), url.clone());
    })
    .await;
    let acquire = json!({"op": "acquire", "name": "outage", "lease_ms": 100});
    assert_eq!(app.lock(acquire.clone()).await.status(), StatusCode::OK);

    // A waiter queued when Redis dies is answered too, not left hanging.
    let _held = app.lock(json!({"op": "acquire", "name": "queued"})).await;
    let waiter = {
        let (http, url) = (client(), format!("{}/locks", app.address));
        tokio::spawn(async move {
            let started = Instant::now();
            let response = http
                .post(url)
                .bearer_auth(TEST_KEY)
                .json(&json!({"op": "acquire", "name": "queued", "wait_ms": 60_000}))
                .send()
                .await
                .unwrap();
            (response.status(), started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.kill();

    for _ in 0..5 {
        let started = Instant::now();
        let response = app.lock(acquire.clone()).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key("retry-after"));
        assert!(
            started.elapsed() < Duration::from_millis(2500),
            "503 took {:?}",
            started.elapsed()
        );
    }
    let (status, waited) = waiter.await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        waited < Duration::from_secs(10),
        "the waiter heard within {waited:?}"
    );
    // Reads do not need Redis: the replica stays ready, and says which
    // capability is down (the verdict may be up to a second old).
    let locks_down = eventually(Duration::from_secs(5), async || {
        let ready = app.get_without_key("/readyz").await;
        ready.status() == StatusCode::OK
            && ready.json::<Value>().await.unwrap()
                == json!({"status": "ok", "transcriptions": "ok", "locks": "unavailable: redis unreachable"})
    })
    .await;
    assert!(locks_down, "readiness names the locks as unavailable");
    let locks = app.get_without_key("/readyz?capability=locks").await;
    assert_eq!(locks.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(locks.headers().contains_key("retry-after"));
    assert_eq!(
        locks.json::<Value>().await.unwrap()["detail"],
        "locks: redis unreachable"
    );
    let id = app
        .insert_transcription(&crate::helpers::NewRow::default())
        .await;
    assert_eq!(
        app.get(&format!("/transcriptions/{id}")).await.status(),
        StatusCode::OK,
        "reads are served through a Redis outage"
    );

    redis.restart().await;
    let recovered = eventually(Duration::from_secs(20), async || {
        app.lock(acquire.clone()).await.status() == StatusCode::OK
    })
    .await;
    assert!(
        recovered,
        "locks work again once Redis is back, with no restart"
    );
    let ready = eventually(Duration::from_secs(5), async || {
        app.get_without_key("/readyz?capability=locks")
            .await
            .status()
            == StatusCode::OK
    })
    .await;
    assert!(ready, "readiness for locks returns with Redis");
}

#[tokio::test(flavor = "multi_thread")]
async fn waiters_past_the_cap_get_503_and_shutdown_answers_waiters_at_once() {
    let app = spawn_app_with(|env| {
        env.insert("LOCK_MAX_WAITERS".into(), "5".into());
    })
    .await;
    assert_eq!(
        app.lock(json!({"op": "acquire", "name": "capped"}))
            .await
            .status(),
        StatusCode::OK
    );
    let mut waiters = Vec::new();
    for _ in 0..5 {
        let (http, url) = (client(), format!("{}/locks", app.address));
        waiters.push(tokio::spawn(async move {
            let body = json!({"op": "acquire", "name": "capped", "wait_ms": 60_000});
            let started = Instant::now();
            let response = http
                .post(url)
                .bearer_auth(TEST_KEY)
                .json(&body)
                .send()
                .await
                .unwrap();
            (response.status(), started.elapsed())
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let sixth = app
        .lock(json!({"op": "acquire", "name": "capped", "wait_ms": 60_000}))
        .await;
    assert_eq!(sixth.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(sixth.headers().contains_key("retry-after"));

    app.shutdown.trigger();
    for waiter in waiters {
        let (status, waited) = waiter.await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            waited < Duration::from_secs(5),
            "waiter answered after {waited:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_waiters_on_ten_names_share_one_blocking_connection_and_all_get_the_lock() {
    raise_fd_limit();
    let redis = OwnRedis::start().await;
    let url = redis.url();
    let app = Arc::new(
        spawn_app_with(|env| {
            env.insert("REDIS_URL".into(), url.clone());
            env.insert("REDIS_POOL_MAX".into(), "4".into());
        })
        .await,
    );
    let mut holders = Vec::new();
    for n in 0..10 {
        let held: Value = app
            .lock(json!({"op": "acquire", "name": format!("n{n}")}))
            .await
            .json()
            .await
            .unwrap();
        holders.push(held);
    }
    let mut waiters = tokio::task::JoinSet::new();
    for w in 0..1000 {
        let (http, url) = (client(), format!("{}/locks", app.address));
        waiters.spawn(async move {
            let body = json!({"op": "acquire", "name": format!("n{}", w % 10), "wait_ms": 20_000, "lease_ms": 100});
            http.post(url).bearer_auth(TEST_KEY).json(&body).send().await.unwrap().status()
        });
    }
    let all_waiting = eventually(Duration::from_secs(30), async || {
        let metrics = metrics_text(&app.admin_address).await;
        metrics.contains("middleway_lock_waiters 1000")
    })
    .await;
    assert!(all_waiting, "1000 waiters queued");
    let clients = client_list(&url).await;
    let blocking = clients
        .iter()
        .filter(|l| crate::helpers::wake_connection_id(l).is_some())
        .count();
    let total = clients.len();
    assert_eq!(
        blocking, 1,
        "one wake connection for the replica:\n{clients:#?}"
    );
    // 1 blocking + at most 4 pooled + this inspector.
    assert!(total <= 6, "{total} Redis connections:\n{clients:#?}");

    for (n, held) in holders.iter().enumerate() {
        let release = json!({"op": "release", "name": format!("n{n}"), "token": held["token"]});
        assert_eq!(app.lock(release).await.status(), StatusCode::OK);
    }
    // Waiters get the slot in turn, each lease (100 ms) expiring unreleased:
    // 100 per name take about 10 s, well inside their 20 s wait. Every one
    // is granted; none times out, and none gets a 503 while Redis is up.
    let mut statuses = std::collections::BTreeMap::new();
    while let Some(status) = waiters.join_next().await {
        *statuses.entry(status.unwrap().as_u16()).or_insert(0) += 1;
    }
    assert_eq!(statuses, [(200, 1000)].into(), "every waiter granted");
}

#[tokio::test(flavor = "multi_thread")]
async fn storm_of_three_replicas_with_disconnects_and_a_kill_keeps_exclusion_and_conserves_slots() {
    raise_fd_limit();
    let (_db, database_url) = create_database(&mysql_admin_url()).await;
    let prefix = format!("mwtest:{}:", random_suffix());
    let mut env = base_env(&database_url, &redis_url(), &prefix);
    env.insert("DB_POOL_MAX".into(), "2".into());
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(ServiceProcess::start(env.clone()).await);
    }
    let bases: Vec<String> = replicas.iter().map(|r| r.base.clone()).collect();
    let names: Vec<(String, usize)> = vec![
        ("m0".into(), 1),
        ("m1".into(), 1),
        ("m2".into(), 1),
        ("s0".into(), 3),
        ("s1".into(), 3),
    ];
    let storm = Storm::start(bases.clone(), names.clone(), 300, Duration::from_secs(8));
    tokio::time::sleep(Duration::from_secs(4)).await;
    storm.first_live.store(1, Ordering::Relaxed);
    replicas[0].process.kill();
    let hang_ups = storm.finish(300).await;
    assert!(hang_ups >= 10, "too few clients hung up mid-wait");

    // Every name is still acquirable, and once every lease (2 s) has run
    // out, every name has exactly its permits.
    let http = client();
    let live = bases[1].clone();
    for (name, permits) in names.iter() {
        let body = json!({"op": "acquire", "name": name, "permits": permits, "wait_ms": 15_000, "lease_ms": 1000});
        let response = http
            .post(format!("{live}/locks"))
            .bearer_auth(TEST_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{name} acquirable after the storm"
        );
        let granted: Value = response.json().await.unwrap();
        let release = json!({"op": "release", "name": name, "token": granted["token"]});
        assert_eq!(
            http.post(format!("{live}/locks"))
                .bearer_auth(TEST_KEY)
                .json(&release)
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (name, permits) in names.iter() {
        assert_conserved(&live, name, *permits as u64).await;
    }
}
