//! Read replicas (`DATABASE_READ_URLS`) with real GTID replication: reads
//! go to caught-up replicas, a lagging one gets none, a row a replica lacks
//! is found on the primary, and replicas or the primary failing under load
//! cost no read.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{
    HostName, NewRow, ReplicatedMariaDb, TestApp, base_env, eventually, metrics_text,
    random_suffix, redis_url, series_value, spawn_app_on,
};

/// A service reading from `cluster`'s replicas, with `extra` settings.
async fn spawn_on(cluster: &ReplicatedMariaDb, extra: &[(&str, &str)]) -> TestApp {
    let prefix = format!("mwtest:{}:", random_suffix());
    let mut env = base_env(&cluster.primary_url(), &redis_url(), &prefix);
    env.insert("DATABASE_READ_URLS".into(), cluster.read_urls());
    for (name, value) in extra {
        env.insert((*name).into(), (*value).into());
    }
    spawn_app_on(env, cluster.db_name.clone(), prefix).await
}

/// Inserts `count` rows on the primary and returns their ids.
async fn insert_rows(app: &TestApp, count: usize) -> Vec<u64> {
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        ids.push(app.insert_transcription(&NewRow::default()).await);
    }
    ids
}

/// Inserts `count` rows on the primary, waits until every replica has them
/// and takes reads, and returns the rows' ids.
async fn rows_on_every_replica(
    app: &TestApp,
    cluster: &ReplicatedMariaDb,
    count: usize,
) -> Vec<u64> {
    let ids = insert_rows(app, count).await;
    for n in 0..cluster.replicas.len() {
        cluster.wait_caught_up(n).await;
        wait_serving(
            app,
            &format!("replica-{}", n + 1),
            true,
            Duration::from_secs(5),
        )
        .await;
    }
    ids
}

async fn series(app: &TestApp, series: &str) -> u64 {
    series_value(&metrics_text(&app.admin_address).await, series)
}

fn reads_on(endpoint: &str) -> String {
    format!("middleway_mysql_reads_total{{endpoint=\"{endpoint}\"}}")
}

fn serving(endpoint: &str) -> String {
    format!("middleway_mysql_endpoint_serving{{endpoint=\"{endpoint}\"}}")
}

/// Waits until `endpoint` is (or is not) in rotation.
async fn wait_serving(app: &TestApp, endpoint: &str, wanted: bool, within: Duration) {
    let name = serving(endpoint);
    let reached = eventually(within, async || (series(app, &name).await == 1) == wanted).await;
    assert!(
        reached,
        "{endpoint} serving should be {wanted} within {within:?}"
    );
}

/// GETs every id once, asserting 200 each time.
async fn read_all(app: &TestApp, ids: &[u64]) {
    for id in ids {
        let response = app.get(&format!("/transcriptions/{id}")).await;
        assert_eq!(response.status(), StatusCode::OK, "id {id}");
    }
}

/// `readers` concurrent callers GETting `ids` (singles and batches) until
/// stopped; every answer that is not a 200 with the right rows is counted.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Option<String>>>,
}

impl Load {
    fn start(app: &TestApp, ids: &[u64], readers: usize) -> Self {
        let (stop, ok, failed) = (Arc::default(), Arc::default(), Arc::default());
        let tasks = (0..readers)
            .map(|reader| {
                let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed))
                    as (Arc<AtomicBool>, Arc<AtomicUsize>, Arc<AtomicUsize>);
                let (client, base, ids) = (app.client.clone(), app.address.clone(), ids.to_vec());
                tokio::spawn(async move {
                    let mut first_failure = None;
                    let mut turn = reader;
                    while !stop.load(Ordering::Relaxed) {
                        turn += 1;
                        let id = ids[turn % ids.len()];
                        let batch = turn % 4 == 0;
                        let url = if batch {
                            let other = ids[(turn + 1) % ids.len()];
                            format!("{base}/transcriptions?ids={id},{other}")
                        } else {
                            format!("{base}/transcriptions/{id}")
                        };
                        let response = client
                            .get(&url)
                            .bearer_auth(crate::helpers::TEST_KEY)
                            .send()
                            .await;
                        let good = match response {
                            Ok(r) if r.status() == StatusCode::OK => {
                                let body: Value = r.json().await.unwrap_or_default();
                                if batch {
                                    body["transcriptions"]
                                        .as_array()
                                        .is_some_and(|rows| rows.len() == 2)
                                } else {
                                    body["transcription_id"] == id
                                }
                            }
                            Ok(r) => {
                                first_failure.get_or_insert(format!("{url}: {}", r.status()));
                                false
                            }
                            Err(e) => {
                                first_failure.get_or_insert(format!("{url}: {e}"));
                                false
                            }
                        };
                        if good { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
                    }
                    first_failure
                })
            })
            .collect();
        Self {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    /// Stops the callers and asserts that no read failed and that they ran.
    async fn finish_without_failures(self) {
        let (ok, failed, first) = self.finish().await;
        assert_eq!(
            failed,
            0,
            "{failed} of {} reads failed; first: {first:?}",
            ok + failed
        );
        assert!(ok > 200, "the load ran ({ok} reads)");
    }

    /// Stops the callers; (reads answered 200, reads failed, a first failure).
    async fn finish(self) -> (usize, usize, Option<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut first = None;
        for task in self.tasks {
            if let Some(failure) = task.await.expect("reader") {
                first.get_or_insert(failure);
            }
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            first,
        )
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_go_to_caught_up_replicas_and_one_that_stops_applying_gets_none_until_it_catches_up()
{
    let cluster = ReplicatedMariaDb::start(2).await;
    let app = spawn_on(&cluster, &[("DB_REPLICA_MAX_LAG_MS", "500")]).await;
    let ids = rows_on_every_replica(&app, &cluster, 20).await;

    // Both replicas take reads; the primary none (every row is on them).
    for _ in 0..5 {
        read_all(&app, &ids).await;
    }
    let (r1, r2) = (
        series(&app, &reads_on("replica-1")).await,
        series(&app, &reads_on("replica-2")).await,
    );
    assert!(
        r1 > 0 && r2 > 0,
        "reads spread over both replicas: {r1}, {r2}"
    );
    assert_eq!(series(&app, &reads_on("primary")).await, 0);

    // Replica 1 stops applying: the heartbeat shows it falling behind, and
    // past DB_REPLICA_MAX_LAG_MS it leaves the rotation.
    cluster.stop_applying(0).await;
    let stopped = Instant::now();
    wait_serving(&app, "replica-1", false, Duration::from_secs(5)).await;
    assert!(
        stopped.elapsed() >= Duration::from_millis(500),
        "left the rotation before it was 500 ms behind"
    );
    let lag = metrics_text(&app.admin_address).await;
    assert!(lag.contains("middleway_mysql_replica_lag_seconds{endpoint=\"replica-1\"}"));
    let before = series(&app, &reads_on("replica-1")).await;
    for _ in 0..3 {
        read_all(&app, &ids).await;
    }
    assert_eq!(
        series(&app, &reads_on("replica-1")).await,
        before,
        "a lagging replica got reads"
    );

    // It applies again: back in rotation, and reads reach it.
    cluster.resume_applying(0).await;
    wait_serving(&app, "replica-1", true, Duration::from_secs(5)).await;
    for _ in 0..5 {
        read_all(&app, &ids).await;
    }
    assert!(series(&app, &reads_on("replica-1")).await > before);
    assert_eq!(series(&app, &reads_on("primary")).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_the_replicas_lack_is_found_on_the_primary_not_answered_404() {
    let cluster = ReplicatedMariaDb::start(2).await;
    // Lag allowed: the replicas stay in rotation while they lack the row.
    let app = spawn_on(&cluster, &[("DB_REPLICA_MAX_LAG_MS", "600000")]).await;
    let old = rows_on_every_replica(&app, &cluster, 1).await[0];
    cluster.stop_applying(0).await;
    cluster.stop_applying(1).await;

    let new = app
        .insert_transcription(&NewRow {
            call_id: "CA-just-written",
            ..NewRow::default()
        })
        .await;
    let response = app.get(&format!("/transcriptions/{new}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["call_id"], "CA-just-written");

    // A batch rechecks only its missing ids, and a truly absent id stays missing.
    let absent = new + 1000;
    let response = app
        .get(&format!("/transcriptions?ids={old},{new},{absent}"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let found: Vec<u64> = body["transcriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["transcription_id"].as_u64().unwrap())
        .collect();
    assert_eq!(found, [old, new]);
    assert_eq!(body["missing"], serde_json::json!([absent]));
    assert_eq!(
        app.get(&format!("/transcriptions/{absent}")).await.status(),
        StatusCode::NOT_FOUND
    );
    let scrape = metrics_text(&app.admin_address).await;
    let rechecked = |outcome: &str| {
        series_value(
            &scrape,
            &format!("middleway_mysql_read_miss_rechecks_total{{outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(rechecked("found"), 2, "the single read and the batch");
    assert_eq!(rechecked("missing"), 2, "the batch and the single 404");
    // The old row came from a replica, not the primary.
    assert!(
        series(&app, &reads_on("replica-1")).await + series(&app, &reads_on("replica-2")).await
            >= 3
    );

    // With DB_READ_MISS_PRIMARY=false, a replica's answer stands.
    let trusting = spawn_on(
        &cluster,
        &[
            ("DB_REPLICA_MAX_LAG_MS", "600000"),
            ("DB_READ_MISS_PRIMARY", "false"),
        ],
    )
    .await;
    wait_serving(&trusting, "replica-1", true, Duration::from_secs(5)).await;
    assert_eq!(
        trusting
            .get(&format!("/transcriptions/{new}"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_killed_under_200_readers_fails_no_read_and_returns_when_restarted() {
    let mut cluster = ReplicatedMariaDb::start(2).await;
    let app = spawn_on(&cluster, &[]).await;
    let ids = rows_on_every_replica(&app, &cluster, 50).await;

    let load = Load::start(&app, &ids, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = series(&app, &reads_on("replica-1")).await;
    assert!(before > 0, "replica 1 took reads before it was killed");
    cluster.replicas[0].kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.finish_without_failures().await;
    assert_eq!(series(&app, &serving("replica-1")).await, 0);
    assert!(
        series(&app, "middleway_mysql_read_retries_total").await > 0,
        "reads on the killed replica were retried elsewhere"
    );

    // Restarted, it is probed back into rotation and takes reads again.
    cluster.replicas[0].restart().await;
    wait_serving(&app, "replica-1", true, Duration::from_secs(15)).await;
    let back = series(&app, &reads_on("replica-1")).await;
    for _ in 0..3 {
        read_all(&app, &ids).await;
    }
    assert!(series(&app, &reads_on("replica-1")).await > back);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_primary_restarting_under_200_readers_fails_no_read() {
    let mut cluster = ReplicatedMariaDb::start(2).await;
    let app = spawn_on(&cluster, &[]).await;
    let ids = rows_on_every_replica(&app, &cluster, 50).await;

    let load = Load::start(&app, &ids, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.primary.kill();
    wait_serving(&app, "primary", false, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.primary.restart().await;
    wait_serving(&app, "primary", true, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    load.finish_without_failures().await;
    // The replicas kept serving throughout.
    assert_eq!(series(&app, &serving("replica-1")).await, 1);
    assert_eq!(series(&app, &serving("replica-2")).await, 1);

    // Written after the restart, a row is read (from a replica once it has
    // it, from the primary before).
    let new = insert_rows(&app, 1).await[0];
    let response = app.get(&format!("/transcriptions/{new}")).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_endpoint_down_gives_fast_503s_and_one_returning_serves_again() {
    let mut cluster = ReplicatedMariaDb::start(2).await;
    let app = spawn_on(&cluster, &[("DB_ACQUIRE_TIMEOUT_MS", "500")]).await;
    let ids = rows_on_every_replica(&app, &cluster, 5).await;
    read_all(&app, &ids).await;

    // The primary first, so the replicas have everything it acknowledged.
    cluster.primary.kill();
    wait_serving(&app, "primary", false, Duration::from_secs(5)).await;
    // The replicas serve what they have; a miss cannot be rechecked, so it
    // is a 503, never a 404 that may be false.
    read_all(&app, &ids).await;
    let absent = app.get(&format!("/transcriptions/{}", ids[4] + 1000)).await;
    assert_eq!(absent.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(absent.headers().contains_key("retry-after"));
    // Reads are ready while a replica serves, the primary down or not.
    let ready = eventually(Duration::from_secs(5), async || {
        let body: Value = app.get("/readyz").await.json().await.unwrap_or_default();
        body["transcriptions"] == "ok" && body["status"] == "ok"
    })
    .await;
    assert!(
        ready,
        "reads stay ready with the primary down and replicas up"
    );
    cluster.replicas[0].kill();
    cluster.replicas[1].kill();
    for id in &ids {
        let started = Instant::now();
        let response = app.get(&format!("/transcriptions/{id}")).await;
        let elapsed = started.elapsed();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key("retry-after"));
        assert!(
            elapsed < Duration::from_millis(1500),
            "503 took {elapsed:?}"
        );
    }
    // (The verdict is shared for a second, so it may take that long.)
    let unready = eventually(Duration::from_secs(5), async || {
        let body: Value = app.get("/readyz").await.json().await.unwrap_or_default();
        body["transcriptions"].as_str().is_some_and(|s| s != "ok")
    })
    .await;
    assert!(unready, "readiness says reads cannot be served");

    // One replica returns: it had everything, so it serves (with the
    // primary still away), and readiness follows.
    cluster.replicas[1].restart().await;
    wait_serving(&app, "replica-2", true, Duration::from_secs(15)).await;
    read_all(&app, &ids).await;
    let ready = eventually(Duration::from_secs(5), async || {
        let body: Value = app.get("/readyz").await.json().await.unwrap_or_default();
        body["transcriptions"] == "ok"
    })
    .await;
    assert!(ready, "reads are ready again with one replica back");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_endpoint_has_its_own_pool_and_fleet_budget() {
    let cluster = ReplicatedMariaDb::start(1).await;
    let app = spawn_on(
        &cluster,
        &[
            ("DB_POOL_MAX", "4"),
            ("DB_FLEET_MAX", "2"),
            ("WORKERS", "2"),
        ],
    )
    .await;
    let ids = rows_on_every_replica(&app, &cluster, 50).await;

    let load = Load::start(&app, &ids, 50);
    let mut most = 0;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let scrape = metrics_text(&app.admin_address).await;
        let open = series_value(
            &scrape,
            "middleway_mysql_endpoint_connections{endpoint=\"replica-1\",state=\"open\"}",
        );
        let slots = series_value(
            &scrape,
            "middleway_mysql_fleet_permits{endpoint=\"replica-1\"}",
        );
        assert!(
            open <= 2,
            "replica-1 has {open} connections, its budget is 2"
        );
        assert!(slots <= 2, "replica-1 holds {slots} slots of 2");
        most = most.max(open);
    }
    // Fifty callers over two connections: some wait past the acquire
    // timeout and get the budget's documented 503; the bound is the point.
    let (ok, _failed, _first) = load.finish().await;
    assert!(ok > 0 && most >= 1, "the replica's pool was used");
    // The replica's budget is its own: the primary's is untouched by its reads.
    let scrape = metrics_text(&app.admin_address).await;
    // DB_POOL_MAX per endpoint: what the summed pool gauges are measured against.
    assert_eq!(
        series_value(&scrape, "middleway_mysql_pool_max_connections"),
        8
    );
    assert!(scrape.contains(
        "middleway_mysql_fleet_leases_total{endpoint=\"replica-1\",outcome=\"granted\"}"
    ));
    assert_eq!(
        series_value(
            &scrape,
            "middleway_mysql_endpoint_connections{endpoint=\"primary\",state=\"open\"}"
        ),
        0
    );
}

/// An Aurora failover turns the old writer into a reader while the writer
/// endpoint's name moves to the new one: the service must not keep using
/// connections made to the old server. Here the primary turns read-only.
#[tokio::test(flavor = "multi_thread")]
async fn a_primary_turned_read_only_has_its_connections_replaced_not_reused() {
    let cluster = ReplicatedMariaDb::start(1).await;
    let db = &cluster.db_name;
    // A user as in production: no privilege that bypasses read_only.
    cluster
        .on_primary(&format!(
            "CREATE USER 'mwapp'@'127.0.0.1' IDENTIFIED BY 'mwapp'; \
             GRANT SELECT, INSERT, DELETE ON `{db}`.* TO 'mwapp'@'127.0.0.1'"
        ))
        .await;
    cluster.wait_caught_up(0).await;
    let url = |port: u16| format!("mysql://mwapp:mwapp@127.0.0.1:{port}/{db}");
    let prefix = format!("mwtest:{}:", random_suffix());
    let mut env = base_env(&url(cluster.primary.port), &redis_url(), &prefix);
    env.insert("DATABASE_READ_URLS".into(), url(cluster.replicas[0].port));
    let app = spawn_app_on(env, cluster.db_name.clone(), prefix).await;
    wait_serving(&app, "replica-1", true, Duration::from_secs(5)).await;

    // A miss is rechecked on the primary: a pooled connection to it opens.
    let absent = 424_242;
    assert_eq!(
        app.get(&format!("/transcriptions/{absent}")).await.status(),
        StatusCode::NOT_FOUND
    );
    let before = cluster.connections_of("mwapp").await;
    assert!(!before.is_empty());

    cluster.on_primary("SET GLOBAL read_only = 1").await;
    // The heartbeat is refused: no lag can be measured, the replica leaves
    // the rotation, and the primary's connections are to be replaced.
    wait_serving(&app, "replica-1", false, Duration::from_secs(5)).await;
    assert_eq!(
        app.get(&format!("/transcriptions/{absent}")).await.status(),
        StatusCode::NOT_FOUND
    );
    let replaced = eventually(Duration::from_secs(5), async || {
        let now = cluster.connections_of("mwapp").await;
        before.iter().all(|id| !now.contains(id))
    })
    .await;
    assert!(replaced, "a connection made before the failover was reused");

    // Writable again: the heartbeat is taken and the replica serves.
    cluster.on_primary("SET GLOBAL read_only = 0").await;
    wait_serving(&app, "replica-1", true, Duration::from_secs(5)).await;
}

/// An Aurora-style failover: the old writer dies, a replica is promoted and
/// the writer's DNS name moves to it. Reads never fail, and the primary is
/// found again by its name, not at its old address.
#[tokio::test(flavor = "multi_thread")]
async fn a_failover_that_moves_the_primarys_name_is_followed_with_no_failed_read() {
    let mut cluster = ReplicatedMariaDb::start_sharing_a_port().await;
    let writer = HostName::pointing_at(&cluster.primary.address);
    let (db, port) = (&cluster.db_name, cluster.primary.port);
    let by_name = format!("mysql://middleway:middleway@{}:{port}/{db}", writer.name);
    let prefix = format!("mwtest:{}:", random_suffix());
    let mut env = base_env(&by_name, &redis_url(), &prefix);
    env.insert("DATABASE_READ_URLS".into(), cluster.read_urls());
    let app = spawn_app_on(env, cluster.db_name.clone(), prefix).await;
    let ids = rows_on_every_replica(&app, &cluster, 50).await;
    wait_serving(&app, "primary", true, Duration::from_secs(5)).await;

    let load = Load::start(&app, &ids, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.primary.kill();
    wait_serving(&app, "primary", false, Duration::from_secs(5)).await;
    cluster.promote(0).await;
    writer.point_at(&cluster.replicas[0].address);
    // The heartbeat reaches the new writer by name.
    wait_serving(&app, "primary", true, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    load.finish_without_failures().await;

    // A row written through the name after the failover is on the new
    // writer, and read.
    let new = insert_rows(&app, 1).await[0];
    let response = app.get(&format!("/transcriptions/{new}")).await;
    assert_eq!(response.status(), StatusCode::OK);
}
