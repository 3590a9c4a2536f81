//! Lock engine v2: one test per defect the adversarial review found in v1
//! (issue 10), each provoked for real against real Redis and, where replicas
//! matter, real service processes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{
    OwnRedis, Storm, acquire_body, app_on, assert_conserved, client, eventually, granted,
    info_field, inspect, kill_wake_connections, lock_key, metrics_text, post_lock, raise_fd_limit,
    raw_post, redis_command, redis_url, release, service_replicas, spawn_app, spawn_app_with,
    wait_until_waiting, waiter,
};

/// Defect 1, first trigger: a replica stopped while a slot was offered to its
/// waiter; Redis restarts empty; a new client takes the mutex; the replica
/// resumes. v1 let it claim "slot 1" of the re-created lock (two holders, and
/// a free list of ["1","1"] for good). Now the old offer is refused and the
/// waiter queues again behind the new holder.
#[tokio::test(flavor = "multi_thread")]
async fn a_claim_from_before_redis_lost_its_data_is_refused() {
    let mut redis = OwnRedis::start().await;
    let fleet = service_replicas(&redis.url(), 2).await;
    let (stopped, live) = (&fleet[0], &fleet[1]);
    let http = client();
    let first = granted(&http, &live.base, acquire_body("m", 0, 30_000)).await;
    let late = waiter(stopped.base.clone(), acquire_body("m", 30_000, 30_000));
    wait_until_waiting(&http, &live.base, "m", 1).await;

    stopped.process.pause();
    assert_eq!(
        release(&http, &live.base, "m", &first).await,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    redis.kill();
    redis.restart().await;
    let mut second = Value::Null;
    let relocked = eventually(Duration::from_secs(10), async || {
        let response = post_lock(&http, &live.base, &acquire_body("m", 0, 30_000)).await;
        if response.status() != StatusCode::OK {
            return false;
        }
        second = response.json().await.unwrap();
        true
    })
    .await;
    assert!(relocked, "the lock works again on the empty Redis");
    assert!(
        second["fence"].as_u64() > first["fence"].as_u64(),
        "fences go on increasing across the data loss"
    );

    stopped.process.signal(Signal::SIGCONT);
    tokio::time::sleep(Duration::from_secs(2)).await;
    if late.is_finished() {
        let outcome = late.await.unwrap();
        panic!(
            "the resumed replica's waiter must not hold the mutex too: {outcome:?}\n{}",
            stopped.logs()
        );
    }
    let state = inspect(&http, &live.base, "m").await;
    assert_eq!(
        (state["held"].as_u64(), state["waiting"].as_u64()),
        (Some(1), Some(1)),
        "one holder, the old waiter queued again: {state}"
    );

    assert_eq!(
        release(&http, &live.base, "m", &second).await,
        StatusCode::OK
    );
    let outcome = late.await.unwrap();
    assert_eq!(outcome.status, Some(StatusCode::OK));
    assert!(outcome.body["fence"].as_u64() > second["fence"].as_u64());
    assert_eq!(
        release(&http, &live.base, "m", &outcome.body).await,
        StatusCode::OK
    );
    assert_conserved(&live.base, "m", 1).await;
}

/// Defect 1, second trigger: eviction takes only the `meta` key of a held
/// lock. The lock starts a new incarnation with exactly its permits; tokens
/// of the old one are refused and cannot free a new grant.
#[tokio::test(flavor = "multi_thread")]
async fn an_evicted_meta_key_starts_a_new_incarnation_that_refuses_old_tokens() {
    let app = spawn_app().await;
    for permits in [1u64, 2] {
        let name = format!("evicted-{permits}");
        let body = json!({"op": "acquire", "name": name, "permits": permits, "lease_ms": 30_000});
        let mut old = Vec::new();
        for _ in 0..permits {
            old.push(granted(&app.client, &app.address, body.clone()).await);
        }
        let meta = lock_key(&app.key_prefix, &name, "meta");
        let deleted: i64 = redis_command(&redis_url(), &["DEL", &meta]).await;
        assert_eq!(deleted, 1);

        let mut new = Vec::new();
        for _ in 0..permits {
            new.push(granted(&app.client, &app.address, body.clone()).await);
        }
        let newest_old = old.iter().filter_map(|g| g["fence"].as_u64()).max();
        assert!(
            new.iter().all(|g| g["fence"].as_u64() > newest_old),
            "fences go on increasing"
        );
        assert_eq!(
            post_lock(&app.client, &app.address, &body).await.status(),
            StatusCode::LOCKED,
            "exactly {permits} slots"
        );
        for grant in &old {
            let response = app.release(&name, &grant["token"]).await;
            let problem =
                crate::helpers::assert_problem(response, StatusCode::CONFLICT, "not-held").await;
            assert_eq!(problem["reason"], "unknown");
        }
        let state = app.inspect(&name).await;
        assert_eq!(
            (state["permits"].as_u64(), state["held"].as_u64()),
            (Some(permits), Some(permits))
        );
        for grant in &new {
            assert_eq!(
                app.release(&name, &grant["token"]).await.status(),
                StatusCode::OK
            );
        }
        assert_conserved(&app.address, &name, permits).await;
    }
}

/// Defect 2: a waiter whose caller closed its connection 0–10 ms before its
/// slot came free. v1 wrote the grant to the dead socket and the slot stayed
/// held by nobody for the whole lease (7 of 8 tries). Now the next waiter
/// gets it within 100 ms.
#[tokio::test(flavor = "multi_thread")]
async fn a_waiter_that_hangs_up_just_before_its_turn_does_not_keep_the_slot() {
    let app = spawn_app().await;
    for delay_ms in [0u64, 2, 4, 6, 8, 10] {
        let name = format!("ghost-{delay_ms}");
        let holder = app.grant(&name, 0, 30_000).await;
        let quitter = raw_post(&app.address, &acquire_body(&name, 30_000, 30_000)).await;
        wait_until_waiting(&app.client, &app.address, &name, 1).await;
        let next = waiter(app.address.clone(), acquire_body(&name, 30_000, 30_000));
        wait_until_waiting(&app.client, &app.address, &name, 2).await;

        drop(quitter);
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let released = Instant::now();
        assert_eq!(
            app.release(&name, &holder["token"]).await.status(),
            StatusCode::OK
        );
        let outcome = next.await.unwrap();
        let took = released.elapsed();
        assert_eq!(outcome.status, Some(StatusCode::OK), "{delay_ms} ms");
        // Kept by the gone waiter, the slot would come back only at the
        // offer's 2 s claim deadline; half of it allows for a busy machine.
        assert!(
            took < Duration::from_millis(1000),
            "{delay_ms} ms before: the next waiter got the slot {took:?} after the release"
        );
    }
}

/// Defect 3: the acquire script ran but its reply came too late (Redis
/// stalled past the 2 s call bound). v1 answered 503 and the grant stayed
/// held until its lease ended. Now the grant is handed back as soon as Redis
/// answers again, whichever of the two calls reaches it first.
#[tokio::test(flavor = "multi_thread")]
async fn a_grant_whose_reply_came_too_late_is_handed_back() {
    let redis = OwnRedis::start().await;
    let app = app_on(&redis).await;
    assert_eq!(app.acquire("slow", 0, 1_000).await.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // Redis holds every write (scripts included) for 2.5 s.
    let _: String = redis_command(&redis.url(), &["CLIENT", "PAUSE", "2500", "WRITE"]).await;
    let started = Instant::now();
    let response = app.acquire("slow", 0, 60_000).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let free = eventually(Duration::from_secs(5), async || {
        app.acquire("slow", 0, 60_000).await.status() == StatusCode::OK
    })
    .await;
    assert!(free, "the late grant was handed back");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "free {:?} after the stall began (it ended at 2.5 s), not after the 60 s lease",
        started.elapsed()
    );
}

/// Defect 4: the blocking connection dropped while requests waited. v1
/// failed every local waiter of that name with 503 (CLIENT KILL of 99
/// connections: 1,762 × 503 while Redis was up). Now the replica reconnects
/// and every waiter keeps its place.
#[tokio::test(flavor = "multi_thread")]
async fn waiters_keep_their_places_when_the_blocking_connection_is_killed() {
    let redis = OwnRedis::start().await;
    let app = app_on(&redis).await;
    let mut holders = Vec::new();
    for n in 0..5 {
        holders.push(app.grant(&format!("kill-{n}"), 0, 30_000).await);
    }
    let waiters: Vec<_> = (0..50)
        .map(|w| {
            waiter(
                app.address.clone(),
                acquire_body(&format!("kill-{}", w % 5), 20_000, 100),
            )
        })
        .collect();
    for n in 0..5 {
        wait_until_waiting(&app.client, &app.address, &format!("kill-{n}"), 10).await;
    }
    for _ in 0..3 {
        assert_eq!(kill_wake_connections(&redis.url()).await, 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for (n, holder) in holders.iter().enumerate() {
        assert_eq!(
            app.release(&format!("kill-{n}"), &holder["token"])
                .await
                .status(),
            StatusCode::OK
        );
    }
    let mut statuses = BTreeMap::new();
    for w in waiters {
        *statuses
            .entry(w.await.unwrap().status.map(|s| s.as_u16()))
            .or_insert(0) += 1;
    }
    assert_eq!(
        statuses,
        [(Some(200), 50)].into(),
        "every waiter kept its place"
    );
}

/// Defect 5: places are fleet-wide. v1 let Redis order replicas, not
/// requests: 20 waiters on replica 1, then one on replica 2, and the late one
/// was served first (5 of 5 trials). Now the order is arrival order.
#[tokio::test(flavor = "multi_thread")]
async fn waiters_are_served_in_arrival_order_across_replicas() {
    let fleet = service_replicas(&redis_url(), 2).await;
    let http = client();
    let holder = granted(&http, &fleet[0].base, acquire_body("fifo", 0, 30_000)).await;
    let (order_tx, mut order_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut waiters = Vec::new();
    for position in 0..21u64 {
        // The last one arrives at the other replica.
        let base = fleet[usize::from(position == 20)].base.clone();
        let order_tx = order_tx.clone();
        waiters.push(tokio::spawn(async move {
            let http = client();
            let grant = granted(&http, &base, acquire_body("fifo", 30_000, 30_000)).await;
            order_tx.send(position).unwrap();
            assert_eq!(release(&http, &base, "fifo", &grant).await, StatusCode::OK);
        }));
        wait_until_waiting(&http, &fleet[0].base, "fifo", position + 1).await;
    }
    assert_eq!(
        release(&http, &fleet[0].base, "fifo", &holder).await,
        StatusCode::OK
    );
    for w in waiters {
        w.await.unwrap();
    }
    drop(order_tx);
    let mut order = Vec::new();
    while let Some(position) = order_rx.recv().await {
        order.push(position);
    }
    assert_eq!(order, (0..21).collect::<Vec<_>>());
}

/// Defect 6: idle waiting polled Redis (a reaper per name every 50 ms:
/// 1,500 idle names cost 267,000 commands/s). Now waiting requests cost
/// Redis nothing until something happens to their lock.
#[tokio::test(flavor = "multi_thread")]
async fn idle_waiters_cost_redis_nothing() {
    raise_fd_limit();
    let redis = OwnRedis::start().await;
    let app = app_on(&redis).await;
    let mut waiters = Vec::new();
    for n in 0..200 {
        let name = format!("idle-{n}");
        app.grant(&name, 0, 60_000).await;
        waiters.push(waiter(
            app.address.clone(),
            acquire_body(&name, 30_000, 1_000),
        ));
    }
    let queued = eventually(Duration::from_secs(20), async || {
        metrics_text(&app.admin_address)
            .await
            .contains("middleway_lock_waiters 200")
    })
    .await;
    assert!(queued, "200 waiters queued");
    let before = info_field(&redis.url(), "total_commands_processed").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = info_field(&redis.url(), "total_commands_processed").await;
    // At most one PING of the wake connection, plus this test's own INFO connection.
    assert!(
        after - before <= 10,
        "{} Redis commands in 3 s of 200 idle waiters",
        after - before
    );
    for w in waiters {
        w.abort();
    }
}

/// The wake connection PINGs every 5 s while silent. Subscribed, Redis
/// answers `["pong", ""]`; read as a string, that failed, and the replica
/// dropped its subscription every 5 s and re-checked every lock waited on.
/// Over three PING periods the same connection stays subscribed.
#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_wake_connection_outlives_its_pings() {
    let redis = OwnRedis::start().await;
    let _app = app_on(&redis).await;
    let wake_id = async || {
        crate::helpers::client_list(&redis.url())
            .await
            .iter()
            .find_map(|l| crate::helpers::wake_connection_id(l).map(str::to_owned))
    };
    let subscribed = eventually(Duration::from_secs(5), async || wake_id().await.is_some()).await;
    assert!(subscribed, "the replica subscribed");
    let first = wake_id().await;
    tokio::time::sleep(Duration::from_secs(16)).await;
    assert_eq!(
        wake_id().await,
        first,
        "the same wake connection, 3 PINGs later"
    );
}

/// Defect 7: every wait episode opened a Redis connection (100 clients on 50
/// mutexes: 400–600 connections a second, 10,405 sockets in TIME_WAIT in
/// 28 s). Now waiting uses the replica's one blocking connection and its pools.
#[tokio::test(flavor = "multi_thread")]
async fn wait_episodes_open_no_redis_connections() {
    let redis = OwnRedis::start().await;
    let url = redis.url();
    let app = spawn_app_with(|env| {
        env.insert("REDIS_URL".into(), url.clone());
        env.insert("REDIS_POOL_MAX".into(), "8".into());
    })
    .await;
    let before = info_field(&url, "total_connections_received").await;
    let stop = Instant::now() + Duration::from_secs(5);
    let grants = Arc::new(AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..100 {
        let (base, grants) = (app.address.clone(), Arc::clone(&grants));
        clients.spawn(async move {
            let http = client();
            let name = format!("churn-{}", c % 50);
            while Instant::now() < stop {
                let response = post_lock(&http, &base, &acquire_body(&name, 1_000, 1_000)).await;
                if response.status() == StatusCode::OK {
                    grants.fetch_add(1, Ordering::Relaxed);
                    let grant: Value = response.json().await.unwrap();
                    release(&http, &base, &name, &grant).await;
                }
            }
        });
    }
    while clients.join_next().await.is_some() {}
    let after = info_field(&url, "total_connections_received").await;
    assert!(grants.load(Ordering::Relaxed) > 500, "the churn ran");
    // The pools (at most 8) and this test's two INFO connections.
    assert!(
        after - before <= 10,
        "{} new Redis connections during a 5 s churn",
        after - before
    );
}

/// Defect 9: the wait timer started after the first Redis call, so a slow
/// call made the 423 late by its own duration. Now the wait counts from the
/// request's arrival.
#[tokio::test(flavor = "multi_thread")]
async fn a_wait_counts_its_first_redis_call() {
    let redis = OwnRedis::start().await;
    let app = app_on(&redis).await;
    app.grant("late", 0, 30_000).await;
    let _: String = redis_command(&redis.url(), &["CLIENT", "PAUSE", "300", "WRITE"]).await;
    let started = Instant::now();
    let response = app.acquire("late", 500, 30_000).await;
    let elapsed = started.elapsed();
    assert_eq!(response.status(), StatusCode::LOCKED);
    assert!(
        elapsed >= Duration::from_millis(500) && elapsed < Duration::from_millis(600),
        "423 after {elapsed:?}, for wait_ms 500 with a first call held 300 ms"
    );
}

/// Half-close is legal HTTP/1.1: a waiter that shuts its sending side keeps
/// its place and gets its grant (after an interim 102, which a closed socket
/// would have reset).
#[tokio::test(flavor = "multi_thread")]
async fn a_half_closed_waiter_keeps_waiting_and_gets_its_grant() {
    let app = spawn_app().await;
    let holder = app.grant("half", 0, 30_000).await;
    let mut stream = raw_post(&app.address, &acquire_body("half", 30_000, 30_000)).await;
    wait_until_waiting(&app.client, &app.address, "half", 1).await;
    stream.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.inspect("half").await["waiting"], 1, "still waiting");
    assert_eq!(
        app.release("half", &holder["token"]).await.status(),
        StatusCode::OK
    );
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 200 OK\r\n"),
        "{answer}"
    );
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").last().unwrap()).unwrap();
    assert_eq!(body["name"], "half");
    assert_eq!(
        app.release("half", &body["token"]).await.status(),
        StatusCode::OK
    );
}

/// The storm of issue 10: three replicas, 150 clients, random hang-ups;
/// mid-storm one replica is stopped, Redis restarts empty, the replica
/// resumes. Within each incarnation nobody overlaps, fences only grow, and
/// afterwards every lock has exactly its permits.
#[tokio::test(flavor = "multi_thread")]
async fn a_storm_with_redis_restarted_empty_under_a_stopped_replica_keeps_each_incarnation_exclusive()
 {
    raise_fd_limit();
    let mut redis = OwnRedis::start().await;
    let fleet = service_replicas(&redis.url(), 3).await;
    let bases: Vec<String> = fleet.iter().map(|r| r.base.clone()).collect();
    let names: Vec<(String, usize)> = vec![("m0".into(), 1), ("m1".into(), 1), ("s0".into(), 3)];
    let storm = Storm::start(bases.clone(), names.clone(), 150, Duration::from_secs(8));
    tokio::time::sleep(Duration::from_secs(3)).await;
    fleet[0].process.pause();
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.kill();
    redis.restart().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    fleet[0].process.signal(Signal::SIGCONT);
    storm.finish(300).await;
    // Leases are 2 s: once they have run out, every lock has exactly its permits.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (name, permits) in names.iter() {
        assert_conserved(&bases[1], name, *permits as u64).await;
    }
}

/// A replica killed with waiters queued: its first ticket's offer goes
/// unclaimed for the 2 s claim deadline, then the replica counts as gone and
/// its other tickets are skipped, so a waiter behind them on a live replica
/// waits one claim deadline, not one per dead ticket.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_killed_with_waiters_queued_costs_the_others_one_claim_deadline() {
    let mut fleet = service_replicas(&redis_url(), 2).await;
    let http = client();
    let holder = granted(&http, &fleet[1].base, acquire_body("orphans", 0, 30_000)).await;
    let mut doomed = Vec::new();
    for n in 0..5u64 {
        doomed.push(waiter(
            fleet[0].base.clone(),
            acquire_body("orphans", 60_000, 30_000),
        ));
        wait_until_waiting(&http, &fleet[1].base, "orphans", n + 1).await;
    }
    let survivor = waiter(
        fleet[1].base.clone(),
        acquire_body("orphans", 60_000, 30_000),
    );
    wait_until_waiting(&http, &fleet[1].base, "orphans", 6).await;
    fleet[0].process.kill();
    let released = Instant::now();
    assert_eq!(
        release(&http, &fleet[1].base, "orphans", &holder).await,
        StatusCode::OK
    );
    let outcome = survivor.await.unwrap();
    let took = released.elapsed();
    assert_eq!(outcome.status, Some(StatusCode::OK));
    assert!(
        took > Duration::from_millis(1900) && took < Duration::from_millis(3500),
        "served {took:?} after the release: one 2 s claim deadline, not five"
    );
    drop(doomed);
}

/// Fences of a re-created lock start above the highest fence this replica
/// has seen, even when Redis' clock (x 1000) is lower than that.
#[tokio::test(flavor = "multi_thread")]
async fn a_recreated_lock_keeps_fences_above_what_this_replica_saw() {
    let app = spawn_app().await;
    app.grant("floor", 0, 100).await;
    let meta = lock_key(&app.key_prefix, "floor", "meta");
    // As if the lock had granted ten billion times since its creation.
    let far: u64 = redis_command::<Vec<Option<u64>>>(&redis_url(), &["HMGET", &meta, "fence"])
        .await[0]
        .unwrap()
        + 10_000_000_000;
    let _: i64 = redis_command(&redis_url(), &["HSET", &meta, "fence", &far.to_string()]).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let high = app.grant("floor", 0, 100).await;
    assert_eq!(high["fence"].as_u64(), Some(far + 1));
    // The lock's state is lost; Redis' clock x 1000 is far below that fence.
    let _: i64 = redis_command(&redis_url(), &["DEL", &meta]).await;
    let recreated = app.grant("floor", 0, 100).await;
    assert!(
        recreated["fence"].as_u64() > high["fence"].as_u64(),
        "{} after {}",
        recreated["fence"],
        high["fence"]
    );
}
