//! `DB_FLEET_MAX`: replicas lease their MySQL connections from one budget in
//! Redis, so the fleet never holds more than the budget, whatever it does.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use reqwest::StatusCode;

use crate::helpers::{
    OwnRedis, Proxy, ServiceProcess, TEST_KEY, base_env, client, create_database, eventually,
    metrics_text, mysql_admin_url, random_suffix, redis_url,
};

const ROWS: u64 = 2000;

/// A database with `ROWS` seeded rows; its name and URL.
async fn seeded_database() -> (String, String) {
    let (name, url) = create_database(&mysql_admin_url()).await;
    let seeded = std::process::Command::new(env!("CARGO_BIN_EXE_middleway"))
        .args(["seed", "--rows", &ROWS.to_string()])
        .env("DATABASE_URL", &url)
        .output()
        .expect("run seed");
    assert!(seeded.status.success(), "seed: {seeded:?}");
    (name, url)
}

/// A replica of the fleet and its admin address.
struct Replica {
    service: ServiceProcess,
    admin: String,
}

async fn start_replicas(count: usize, env: &HashMap<String, String>) -> Vec<Replica> {
    let mut replicas = Vec::new();
    for _ in 0..count {
        let service = ServiceProcess::start(env.clone()).await;
        replicas.push(Replica {
            admin: service.admin.clone(),
            service,
        });
    }
    replicas
}

/// `middleway_mysql_fleet_permits` of each replica (0 when it does not answer).
async fn permits(replicas: &[&Replica]) -> u64 {
    let mut total = 0;
    for replica in replicas {
        let Ok(response) = reqwest::get(format!("{}/metrics", replica.admin)).await else {
            continue;
        };
        let text = response.text().await.unwrap_or_default();
        total += text
            .lines()
            .find_map(|l| l.strip_prefix("middleway_mysql_fleet_permits{endpoint=\"primary\"} "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// Makes MySQL slow, as a busy database is: holds a write lock on the table
/// 100 ms out of every 150, so reads pile up and every replica wants all the
/// connections `DB_POOL_MAX` lets it open. Returns the locker's connection id
/// (not one of the service's) and its stop flag.
async fn slow_mysql(url: &str) -> (u64, Arc<AtomicBool>) {
    use sqlx::Connection;
    let mut locker = sqlx::MySqlConnection::connect(url).await.unwrap();
    let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
        .fetch_one(&mut locker)
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    tokio::spawn(async move {
        while !stopped.load(Ordering::Relaxed) {
            let _ = sqlx::query("LOCK TABLES transcriptions WRITE")
                .execute(&mut locker)
                .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = sqlx::query("UNLOCK TABLES").execute(&mut locker).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (id, stop)
}

/// Samples the connections MariaDB has open to `db_name` (but `except`)
/// every 20 ms; the peak so far is in the returned counter.
fn sample_connections(db_name: String, except: u64) -> (Arc<AtomicU64>, Arc<AtomicBool>) {
    let (peak, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let (seen, stopped) = (Arc::clone(&peak), Arc::clone(&stop));
    tokio::spawn(async move {
        let sampler = sqlx::MySqlPool::connect(&mysql_admin_url()).await.unwrap();
        while !stopped.load(Ordering::Relaxed) {
            let open: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> ?",
            )
            .bind(&db_name)
            .bind(except)
            .fetch_one(&sampler)
            .await
            .unwrap();
            seen.fetch_max(u64::try_from(open).unwrap_or(0), Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (peak, stop)
}

/// What the callers saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    unavailable: AtomicU64,
    /// Refused or reset connections to a replica the test killed.
    to_killed: AtomicU64,
    other: AtomicU64,
    /// What the first few other answers were, for the failure message.
    others_seen: std::sync::Mutex<Vec<String>>,
}

/// `callers` tasks reading random ids from the replicas `targets` names,
/// until `stop`; `targets` may change while they run.
fn callers(
    count: usize,
    bases: Arc<Vec<String>>,
    targets: Arc<std::sync::Mutex<Vec<usize>>>,
    killed: Arc<std::sync::Mutex<Vec<usize>>>,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinSet<()> {
    let mut tasks = tokio::task::JoinSet::new();
    let next = Arc::new(AtomicUsize::new(0));
    for _ in 0..count {
        let (bases, targets, killed, tally, stop, next) = (
            bases.clone(),
            targets.clone(),
            killed.clone(),
            tally.clone(),
            stop.clone(),
            next.clone(),
        );
        tasks.spawn(async move {
            let http = client();
            while !stop.load(Ordering::Relaxed) {
                let replica = {
                    let targets = targets.lock().unwrap();
                    targets[next.fetch_add(1, Ordering::Relaxed) % targets.len()]
                };
                let id = 1 + rand::random::<u64>() % ROWS;
                let answer = http
                    .get(format!("{}/transcriptions/{id}", bases[replica]))
                    .bearer_auth(TEST_KEY)
                    .send()
                    .await;
                let counter = match answer {
                    Ok(r) if r.status() == StatusCode::OK => &tally.ok,
                    Ok(r)
                        if r.status() == StatusCode::SERVICE_UNAVAILABLE
                            && r.headers().contains_key("retry-after") =>
                    {
                        &tally.unavailable
                    }
                    Err(_) if killed.lock().unwrap().contains(&replica) => &tally.to_killed,
                    other => {
                        let mut seen = tally.others_seen.lock().unwrap();
                        if seen.len() < 5 {
                            seen.push(match other {
                                Ok(r) => format!("replica {replica}: {}", r.status()),
                                Err(e) => format!("replica {replica}: {e:?}"),
                            });
                        }
                        &tally.other
                    }
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    tasks
}

#[tokio::test(flavor = "multi_thread")]
async fn storm_of_six_replicas_never_holds_more_mysql_connections_than_the_fleet_budget() {
    crate::helpers::raise_fd_limit();
    let (db_name, url) = seeded_database().await;
    let mut env = base_env(&url, &redis_url(), &format!("mwtest:{}:", random_suffix()));
    env.insert("DB_POOL_MAX".into(), "32".into());
    env.insert("DB_FLEET_MAX".into(), "40".into());
    let mut replicas = start_replicas(6, &env).await;
    let bases = Arc::new(
        replicas
            .iter()
            .map(|r| r.service.base.clone())
            .collect::<Vec<_>>(),
    );
    let (locker, stop_slowing) = slow_mysql(&url).await;
    let (peak, stop_sampling) = sample_connections(db_name, locker);
    let targets = Arc::new(std::sync::Mutex::new(vec![0, 1, 2]));
    let killed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tally, stop) = (Arc::new(Tally::default()), Arc::new(AtomicBool::new(false)));
    let load = callers(
        600,
        bases,
        targets.clone(),
        killed.clone(),
        tally.clone(),
        stop.clone(),
    );

    // Load on replicas 1-3: they take the budget.
    let first_three = eventually(Duration::from_secs(10), async || {
        permits(&[&replicas[0], &replicas[1], &replicas[2]]).await >= 30
    })
    .await;
    assert!(
        first_three,
        "replicas 1-3 under load hold most of the budget"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The load moves to replicas 4-6: the slots follow within a few seconds.
    *targets.lock().unwrap() = vec![3, 4, 5];
    let moved = Instant::now();
    let followed = eventually(Duration::from_secs(8), async || {
        permits(&[&replicas[3], &replicas[4], &replicas[5]]).await >= 30
    })
    .await;
    assert!(followed, "slots followed the load to replicas 4-6");
    let follow_time = moved.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // kill -9 two of the loaded replicas: their slots come back after the lease.
    *targets.lock().unwrap() = vec![0, 1, 2, 5];
    *killed.lock().unwrap() = vec![3, 4];
    replicas[3].service.process.signal(Signal::SIGKILL);
    replicas[4].service.process.signal(Signal::SIGKILL);
    let survivors = [&replicas[0], &replicas[1], &replicas[2], &replicas[5]];
    let refilled = eventually(Duration::from_secs(20), async || {
        permits(&survivors).await >= 36
    })
    .await;
    assert!(
        refilled,
        "the survivors reach the budget again once the killed replicas' leases end"
    );

    stop.store(true, Ordering::Relaxed);
    let mut load = load;
    while load.join_next().await.is_some() {}
    stop_sampling.store(true, Ordering::Relaxed);
    stop_slowing.store(true, Ordering::Relaxed);
    let peak = peak.load(Ordering::Relaxed);
    let (ok, unavailable, other) = (
        tally.ok.load(Ordering::Relaxed),
        tally.unavailable.load(Ordering::Relaxed),
        tally.other.load(Ordering::Relaxed),
    );
    eprintln!(
        "fleet storm: peak {peak} connections, {ok} ok, {unavailable} 503, {} to killed replicas, \
         {other} other; slots followed the load in {follow_time:?}",
        tally.to_killed.load(Ordering::Relaxed)
    );
    assert!(peak >= 30, "the sampler saw the budget in use ({peak})");
    assert!(peak <= 40, "{peak} MySQL connections: over DB_FLEET_MAX=40");
    assert_eq!(
        other,
        0,
        "only 200s and 503 + Retry-After; others: {:?}",
        tally.others_seen.lock().unwrap()
    );
    assert!(
        ok > unavailable,
        "most requests succeed ({ok} ok, {unavailable} 503)"
    );
    for replica in &mut replicas {
        replica.service.process.kill();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_redis_down_replicas_keep_their_slots_until_the_lease_ends_then_fall_back_to_one() {
    let (db_name, url) = seeded_database().await;
    let mut redis = OwnRedis::start().await;
    let mut env = base_env(&url, &redis.url(), &format!("mwtest:{}:", random_suffix()));
    env.insert("DB_POOL_MAX".into(), "8".into());
    env.insert("DB_FLEET_MAX".into(), "6".into());
    let replicas = start_replicas(2, &env).await;
    let bases = Arc::new(
        replicas
            .iter()
            .map(|r| r.service.base.clone())
            .collect::<Vec<_>>(),
    );
    let targets = Arc::new(std::sync::Mutex::new(vec![0, 1]));
    let (tally, stop) = (Arc::new(Tally::default()), Arc::new(AtomicBool::new(false)));
    let none = Arc::new(std::sync::Mutex::new(Vec::new()));
    let load = callers(64, bases, targets, none, tally.clone(), stop.clone());
    let all = [&replicas[0], &replicas[1]];
    assert!(
        eventually(Duration::from_secs(10), async || permits(&all).await == 6).await,
        "the replicas hold the whole budget"
    );

    redis.kill();
    let killed_at = Instant::now();
    // Within the lease they keep what they hold: never over the budget.
    let (peak, stop_sampling) = sample_connections(db_name.clone(), 0);
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop_sampling.store(true, Ordering::Relaxed);
    assert!(
        peak.load(Ordering::Relaxed) <= 6,
        "kept within the budget while the leases last"
    );
    // After the lease: one connection each, and reads still answered.
    let until_lapsed = Duration::from_secs(11).saturating_sub(killed_at.elapsed());
    tokio::time::sleep(until_lapsed).await;
    let ok_before = tally.ok.load(Ordering::Relaxed);
    let (peak, stop_sampling) = sample_connections(db_name.clone(), 0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_sampling.store(true, Ordering::Relaxed);
    let fallback_peak = peak.load(Ordering::Relaxed);
    assert!(
        fallback_peak <= 2,
        "one connection per replica after the lease ({fallback_peak})"
    );
    assert!(
        tally.ok.load(Ordering::Relaxed) > ok_before,
        "reads still succeed on the fallback"
    );
    assert!(permits(&all).await == 0, "no slots are held without Redis");

    // Redis is back (empty): the budget is leased afresh.
    redis.restart().await;
    assert!(
        eventually(Duration::from_secs(15), async || permits(&all).await >= 4).await,
        "slots are leased again once Redis answers"
    );
    stop.store(true, Ordering::Relaxed);
    let mut load = load;
    while load.join_next().await.is_some() {}
    assert_eq!(
        tally.other.load(Ordering::Relaxed),
        0,
        "only 200s and 503 + Retry-After"
    );
    let text = metrics_text(&replicas[0].admin).await;
    assert!(
        text.contains(
            "middleway_mysql_fleet_leases_total{endpoint=\"primary\",outcome=\"granted\"}"
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spent_budget_is_503_with_retry_after_and_leaves_readiness_alone() {
    let (_db_name, url) = seeded_database().await;
    let mut env = base_env(&url, &redis_url(), &format!("mwtest:{}:", random_suffix()));
    env.insert("DB_FLEET_MAX".into(), "1".into());
    // One worker per replica: a replica's slot is then its one worker's.
    env.insert("DB_POOL_MAX".into(), "1".into());
    env.insert("DB_ACQUIRE_TIMEOUT_MS".into(), "300".into());
    let replicas = start_replicas(2, &env).await;
    let http = client();
    let read = |replica: &Replica| {
        http.get(format!("{}/transcriptions/1", replica.service.base))
            .bearer_auth(TEST_KEY)
            .send()
    };
    // The first replica took the only slot (its readiness check read) and, idle, keeps it.
    assert_eq!(read(&replicas[0]).await.unwrap().status(), StatusCode::OK);
    let refused = read(&replicas[1]).await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    let ready = http
        .get(format!("{}/readyz", replicas[1].service.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        StatusCode::OK,
        "an exhausted budget is load, not failure"
    );
    assert_eq!(permits(&[&replicas[0]]).await, 1);
    assert_eq!(permits(&[&replicas[1]]).await, 0);
    let text = metrics_text(&replicas[1].admin).await;
    assert!(text.contains(
        "middleway_mysql_fleet_leases_total{endpoint=\"primary\",outcome=\"exhausted\"}"
    ));
}

/// `middleway_mysql_fleet_permits` of one replica reaches `at_least` within `within`.
async fn holds_within(replica: &Replica, at_least: u64, within: Duration) -> bool {
    eventually(within, async || permits(&[replica]).await >= at_least).await
}

/// `count` reads of different rows at once, each on a connection of its own
/// (so they land on every HTTP worker), while MySQL is held by `blocker`.
fn concurrent_reads(base: &str, count: u64) -> tokio::task::JoinSet<()> {
    let mut reads = tokio::task::JoinSet::new();
    for id in 1..=count {
        let url = format!("{base}/transcriptions/{id}");
        reads.spawn(async move {
            let _ = client().get(url).bearer_auth(TEST_KEY).send().await;
        });
    }
    reads
}

/// Holds a write lock on the table until dropped: reads wait on their connections.
async fn table_locked(url: &str) -> sqlx::MySqlConnection {
    use sqlx::Connection;
    let mut blocker = sqlx::MySqlConnection::connect(url).await.unwrap();
    sqlx::query("LOCK TABLES transcriptions WRITE")
        .execute(&mut blocker)
        .await
        .unwrap();
    blocker
}

/// Issue 23, defect 2. The budget's wake messages name `~mysql-fleet`,
/// which v2's wake loop could not parse: a slot freed on one replica reached
/// a replica queued for it only when that replica's own wait ran out (5 s
/// here). Now it follows the load within a second.
#[tokio::test(flavor = "multi_thread")]
async fn a_slot_freed_on_one_replica_reaches_a_replica_queued_for_it_within_a_second() {
    let (_db_name, url) = seeded_database().await;
    let mut env = base_env(&url, &redis_url(), &format!("mwtest:{}:", random_suffix()));
    env.insert("DB_FLEET_MAX".into(), "3".into());
    // Two workers per replica, one connection each.
    env.insert("DB_POOL_MAX".into(), "2".into());
    env.insert("DB_ACQUIRE_TIMEOUT_MS".into(), "5000".into());
    let replicas = start_replicas(2, &env).await;
    let (a, b) = (&replicas[0], &replicas[1]);

    // A takes the free slot (a second connection); then it idles with both.
    let blocker = table_locked(&url).await;
    let mut reads = concurrent_reads(&a.service.base, 4);
    assert!(
        holds_within(a, 2, Duration::from_secs(5)).await,
        "A holds two slots"
    );
    drop(blocker);
    while reads.join_next().await.is_some() {}
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(permits(&[a]).await, 2, "idle, A keeps its open connections");

    // B needs a second connection: it queues, A hands one back.
    let blocker = table_locked(&url).await;
    let queued = Instant::now();
    let mut reads = concurrent_reads(&b.service.base, 4);
    let followed = holds_within(b, 2, Duration::from_millis(1500)).await;
    let took = queued.elapsed();
    drop(blocker);
    while reads.join_next().await.is_some() {}
    assert!(
        followed,
        "B got A's spare slot in {took:?}, not within 1.5 s"
    );
    assert_eq!(permits(&[a]).await, 1);
}

/// Issue 23, defect 5 (fleet). A readiness check opens a MySQL connection,
/// which leases a budget slot; Redis answers late, and the check gives up
/// (0.8 s) in the middle of the lease, after the grant was made. v2 left
/// the slot granted to nobody for its whole 10 s lease (reads 503
/// meanwhile). Now it is handed back as soon as Redis answers.
#[tokio::test(flavor = "multi_thread")]
async fn a_readiness_check_that_gives_up_mid_lease_leaves_no_slot_behind() {
    let redis = OwnRedis::start().await;
    let proxy = Proxy::start(redis.port).await;
    let url = proxy.redis_url();
    let app = crate::helpers::spawn_app_with(|env| {
        env.insert("REDIS_URL".into(), url.clone());
        env.insert("DB_FLEET_MAX".into(), "1".into());
        env.insert("DB_POOL_MAX".into(), "1".into());
        env.insert("DB_ACQUIRE_TIMEOUT_MS".into(), "1000".into());
    })
    .await;
    let id = app
        .insert_transcription(&crate::helpers::NewRow::default())
        .await;
    // The worker's Redis connection is warm: the slow answer meets the script.
    let warm = crate::helpers::acquire_body("warm-up", 0, 100);
    let response = crate::helpers::post_lock(&app.client, &app.address, &warm).await;
    assert_eq!(response.status(), StatusCode::OK);
    proxy.delay_replies(Duration::from_secs(1));
    // The verdict of a second ago may answer first; then a check runs and
    // gives up on both (MySQL's connection waits for its slot from Redis).
    let gave_up = eventually(Duration::from_secs(5), async || {
        app.get_without_key("/readyz").await.status() == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert!(gave_up, "a readiness check gave up");
    proxy.delay_replies(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let read = eventually(Duration::from_secs(2), async || {
        app.get(&format!("/transcriptions/{id}")).await.status() == StatusCode::OK
    })
    .await;
    assert!(
        read,
        "the slot the abandoned check leased went back to the budget"
    );
}
