//! Service replicas over time: paused ones, restarted ones, ones whose wake
//! connection drops. Every waiter is answered in time and keeps its place,
//! and a lock's bookkeeping stays bounded however many replicas come and go.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use reqwest::StatusCode;

use crate::helpers::{
    OwnRedis, Proxy, ServiceProcess, acquire_body, app_on, base_env, client, create_database,
    eventually, granted, inspect, kill_wake_connections, lock_key, mysql_admin_url, random_suffix,
    redis_command, redis_url, release, service_replicas, spawn_app_on, wait_until_waiting, waiter,
};

/// Issue 23, defect 4. Replica 1 is paused (SIGSTOP) while a slot is offered
/// to the first of its two waiters: after the 2 s claim deadline it counts as
/// gone, its second waiter is skipped and a waiter on replica 2 is served.
/// The first waiter's own wait runs out during the pause. v2 never queued
/// the skipped second waiter again: once replica 1 resumed, it waited out
/// its 20 s and got 423. Now it is served once replica 2's holder releases.
#[tokio::test(flavor = "multi_thread")]
async fn waiters_of_a_replica_that_was_only_paused_are_served_when_it_resumes() {
    let fleet = service_replicas(&redis_url(), 2).await;
    let (paused, live) = (&fleet[0], &fleet[1]);
    let http = client();
    let holder = granted(&http, &live.base, acquire_body("p", 0, 30_000)).await;
    let first = waiter(paused.base.clone(), acquire_body("p", 2_500, 30_000));
    wait_until_waiting(&http, &live.base, "p", 1).await;
    let second = waiter(paused.base.clone(), acquire_body("p", 20_000, 30_000));
    wait_until_waiting(&http, &live.base, "p", 2).await;
    let third = waiter(live.base.clone(), acquire_body("p", 20_000, 30_000));
    wait_until_waiting(&http, &live.base, "p", 3).await;
    let started = Instant::now();

    paused.process.pause();
    assert_eq!(
        release(&http, &live.base, "p", &holder).await,
        StatusCode::OK
    );
    let third = third.await.unwrap();
    assert_eq!(
        third.status,
        Some(StatusCode::OK),
        "the live replica's waiter is served"
    );
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    paused.process.signal(Signal::SIGCONT);
    let first = first.await.unwrap();
    // Its wait ran out while its replica was stopped: 423 (or 503 had the
    // stop frozen a claim of its in the middle).
    assert!(
        matches!(first.status.map(|s| s.as_u16()), Some(423 | 503)),
        "the first waiter: {:?}",
        first.body
    );
    assert_eq!(
        release(&http, &live.base, "p", &third.body).await,
        StatusCode::OK
    );

    let second = second.await.unwrap();
    assert_eq!(
        second.status,
        Some(StatusCode::OK),
        "the paused replica's skipped waiter: {:?}",
        second.body
    );
    assert_eq!(
        release(&http, &live.base, "p", &second.body).await,
        StatusCode::OK
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "served after {:?}, not at its deadline",
        started.elapsed()
    );
}

/// Issue 23, defect 6. Replica 1's Redis answers arrive 3 s late (its wake
/// connection is unaffected): a waiter's first call times out after its
/// ticket was queued, its offer arrives and is taken for claiming, the claim
/// cannot be confirmed until the offer has been passed on to a waiter of
/// replica 2. v2 left the first request waiting for an outcome with no
/// deadline of its own (for ever, once its ticket had lapsed). Now every
/// request is answered by its deadline plus the bound of one Redis call.
#[tokio::test(flavor = "multi_thread")]
async fn a_wait_is_answered_by_its_deadline_even_when_its_offer_was_passed_on_during_a_slow_claim()
{
    let (_db, database_url) = create_database(&mysql_admin_url()).await;
    let prefix = format!("mwtest:{}:", random_suffix());
    let proxy = Proxy::start(OwnRedis::shared_port()).await;
    let mut env = base_env(&database_url, &proxy.redis_url(), &prefix);
    env.insert("DB_POOL_MAX".into(), "1".into());
    let slow = ServiceProcess::start_logged(env.clone()).await;
    env.insert("REDIS_URL".into(), redis_url());
    let live = ServiceProcess::start_logged(env).await;
    let http = client();

    let holder = granted(&http, &live.base, acquire_body("late", 0, 30_000)).await;
    granted(&http, &slow.base, acquire_body("warm-up", 0, 100)).await;
    proxy.delay_replies(Duration::from_secs(3));
    let started = Instant::now();
    let first = waiter(slow.base.clone(), acquire_body("late", 8_000, 30_000));
    wait_until_waiting(&http, &live.base, "late", 1).await;
    let second = waiter(live.base.clone(), acquire_body("late", 30_000, 30_000));
    wait_until_waiting(&http, &live.base, "late", 2).await;
    // Offered to the slow replica's waiter; unclaimed after 2 s, passed on.
    assert_eq!(
        release(&http, &live.base, "late", &holder).await,
        StatusCode::OK
    );
    let second = second.await.unwrap();
    assert_eq!(second.status, Some(StatusCode::OK));
    proxy.delay_replies(Duration::ZERO);

    let answered = tokio::time::timeout(Duration::from_secs(15), first).await;
    let outcome = answered
        .expect("the request got an answer within 15 s")
        .unwrap();
    assert!(outcome.status.is_some(), "answered");
    assert!(
        started.elapsed() < Duration::from_secs(8 + 3),
        "answered {:?} after it was sent, for an 8 s wait: {:?}",
        started.elapsed(),
        outcome.status
    );
    assert_eq!(
        release(&http, &live.base, "late", &second.body).await,
        StatusCode::OK
    );
}

/// Issue 23, defect 7. An offer arrives on the wake connection and, after
/// that connection is killed, again from the re-check of every waiting lock.
/// v2 could decline the duplicate while the first copy was being claimed,
/// passing the slot to the next waiter. Now the first waiter is served first,
/// every time.
#[tokio::test(flavor = "multi_thread")]
async fn an_offer_seen_twice_after_a_reconnect_is_claimed_once_and_never_passed_on() {
    let redis = OwnRedis::start().await;
    let app = app_on(&redis).await;
    for round in 0..20 {
        let name = format!("twice-{round}");
        let holder = app.grant(&name, 0, 30_000).await;
        let first = waiter(app.address.clone(), acquire_body(&name, 10_000, 30_000));
        wait_until_waiting(&app.client, &app.address, &name, 1).await;
        let second = waiter(app.address.clone(), acquire_body(&name, 10_000, 30_000));
        wait_until_waiting(&app.client, &app.address, &name, 2).await;

        assert_eq!(
            app.release(&name, &holder["token"]).await.status(),
            StatusCode::OK
        );
        kill_wake_connections(&redis.url()).await;
        let first = first.await.unwrap();
        assert_eq!(
            first.status,
            Some(StatusCode::OK),
            "round {round}: the first waiter keeps its turn: {:?}",
            first.body
        );
        assert_eq!(
            inspect(&app.client, &app.address, &name).await["waiting"],
            1,
            "round {round}: the second still waits"
        );
        assert_eq!(
            app.release(&name, &first.body["token"]).await.status(),
            StatusCode::OK
        );
        let second = second.await.unwrap();
        assert_eq!(second.status, Some(StatusCode::OK));
        assert_eq!(
            app.release(&name, &second.body["token"]).await.status(),
            StatusCode::OK
        );
    }
}

/// Issue 23, defect 8. A lock that always has a waiter sees 1,000 replicas
/// come, queue a waiter, and go. v2 kept every replica that ever waited in
/// the lock's watcher list (and told each of them every alarm). Now the
/// lock's keys stay the size of what is queued now.
#[tokio::test(flavor = "multi_thread")]
async fn a_lock_keeps_its_bookkeeping_bounded_across_a_thousand_replica_restarts() {
    let redis = OwnRedis::start().await;
    let stayer = app_on(&redis).await;
    let _holder = stayer.grant("busy", 0, 600_000).await;
    let _loyal = waiter(stayer.address.clone(), acquire_body("busy", 120_000, 1_000));
    wait_until_waiting(&stayer.client, &stayer.address, "busy", 1).await;
    let database_url = format!("{}/{}", mysql_admin_url(), stayer.db_name);
    let env = base_env(&database_url, &redis.url(), &stayer.key_prefix);

    const AT_ONCE: usize = 10;
    for _ in 0..1000 / AT_ONCE {
        let mut batch = Vec::new();
        for _ in 0..AT_ONCE {
            let app = spawn_app_on(
                env.clone(),
                stayer.db_name.clone(),
                stayer.key_prefix.clone(),
            )
            .await;
            let queued = waiter(app.address.clone(), acquire_body("busy", 60_000, 1_000));
            batch.push((app, queued));
        }
        // Generous: this asserts what is queued, not how fast ten replicas start.
        let all_queued = eventually(Duration::from_secs(30), async || {
            inspect(&stayer.client, &stayer.address, "busy").await["waiting"]
                .as_u64()
                .is_some_and(|n| n > AT_ONCE as u64)
        })
        .await;
        assert!(all_queued, "the batch's waiters queued");
        for (app, queued) in batch {
            app.shutdown.trigger();
            app.stopped.await.unwrap().unwrap();
            let outcome = queued.await.unwrap();
            assert_eq!(outcome.status, Some(StatusCode::SERVICE_UNAVAILABLE));
        }
    }

    let settled = eventually(Duration::from_secs(10), async || {
        inspect(&stayer.client, &stayer.address, "busy").await["waiting"] == 1
    })
    .await;
    assert!(settled, "only the stayer's waiter is left");
    // `gone` is left out: it remembers each request that gave up for a
    // minute, whichever replica it came through.
    let keys = ["meta", "held", "queue"].map(|part| lock_key(&stayer.key_prefix, "busy", part));
    let mut bytes = 0;
    for key in &keys {
        let used: Option<u64> = redis_command(&redis.url(), &["MEMORY", "USAGE", key]).await;
        bytes += used.unwrap_or(0);
    }
    assert!(
        bytes < 2048,
        "{bytes} bytes in {keys:?} after 1,000 replicas came and went"
    );
}
