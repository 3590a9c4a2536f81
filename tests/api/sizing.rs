//! Sizing: `WORKERS` (default: the CPU quota of the process' cgroup) and the
//! pools split between the workers without passing `DB_POOL_MAX` or
//! `REDIS_POOL_MAX`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;

use crate::helpers::{
    NewRow, OwnMariaDb, OwnRedis, ServiceProcess, base_env, client_list, create_database,
    metrics_text, random_suffix, redis_url, spawn_app_on,
};

/// The value of an unlabelled metric in a scrape.
fn metric(scrape: &str, name: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Connections the service holds now: MySQL sessions on its database, and
/// Redis connections that are not subscriptions (nor this count's own).
async fn connections(mysql_admin: &str, db_name: &str, redis: &str) -> (usize, usize) {
    let mut admin = sqlx::MySqlConnection::connect(mysql_admin).await.unwrap();
    let mysql: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = ?")
            .bind(db_name)
            .fetch_one(&mut admin)
            .await
            .unwrap();
    let redis = client_list(redis)
        .await
        .iter()
        .filter(|l| !l.contains("flags=P") && !l.contains("cmd=client|list"))
        .count();
    (usize::try_from(mysql).unwrap(), redis)
}

/// For WORKERS=1 and WORKERS=3, with 3 MySQL and 2 Redis connections in
/// all: 400 concurrent reads and lock pairs all succeed, the most
/// connections seen while they run stay within both bounds (3 workers and
/// the background need 4 Redis pools: they share), and the workers are
/// what was asked for.
#[tokio::test(flavor = "multi_thread")]
async fn workers_share_the_pools_without_passing_db_pool_max_or_redis_pool_max() {
    let mysql = OwnMariaDb::start().await;
    for workers in [1, 3] {
        // A Redis of its own each time: the previous service's connections
        // must not count against this one's.
        let redis = OwnRedis::start().await;
        let (db_name, url) = create_database(&mysql.admin_url()).await;
        let prefix = format!("mwtest:{}:", random_suffix());
        let mut env = base_env(&url, &redis.url(), &prefix);
        env.insert("WORKERS".into(), workers.to_string());
        env.insert("DB_POOL_MAX".into(), "3".into());
        env.insert("REDIS_POOL_MAX".into(), "2".into());
        let app = spawn_app_on(env, db_name.clone(), prefix).await;
        let mut ids = Vec::new();
        for _ in 0..20 {
            ids.push(app.insert_transcription(&NewRow::default()).await);
        }
        app.db.close().await;
        let scrape = metrics_text(&app.admin_address).await;
        assert_eq!(
            metric(&scrape, "middleway_http_workers"),
            Some(f64::from(workers))
        );

        let running = Arc::new(AtomicBool::new(true));
        let (most_mysql, most_redis) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let sampler = {
            let (running, most_mysql, most_redis) =
                (running.clone(), most_mysql.clone(), most_redis.clone());
            let (admin, redis_url) = (mysql.admin_url(), redis.url());
            let db_name = db_name.clone();
            tokio::spawn(async move {
                while running.load(Ordering::Relaxed) {
                    let (mysql, redis) = connections(&admin, &db_name, &redis_url).await;
                    most_mysql.fetch_max(mysql, Ordering::Relaxed);
                    most_redis.fetch_max(redis, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        let statuses = futures_util::stream::iter(0..400)
            .map(|n| {
                let (app, id) = (&app, ids[n % ids.len()]);
                async move {
                    if n % 2 == 0 {
                        return vec![app.get(&format!("/transcriptions/{id}")).await.status()];
                    }
                    let name = format!("sizing-{}", n % 50);
                    let acquire = app
                        .lock(json!({"op": "acquire", "name": name, "wait_ms": 10_000}))
                        .await;
                    let status = acquire.status();
                    let token = acquire.json::<Value>().await.unwrap()["token"].clone();
                    vec![status, app.release(&name, &token).await.status()]
                }
            })
            .buffer_unordered(100)
            .collect::<Vec<_>>()
            .await;
        running.store(false, Ordering::Relaxed);
        sampler.await.unwrap();
        assert!(
            statuses.iter().flatten().all(|s| *s == StatusCode::OK),
            "WORKERS={workers}: {statuses:?}"
        );
        let (mysql_seen, redis_seen) = (
            most_mysql.load(Ordering::Relaxed),
            most_redis.load(Ordering::Relaxed),
        );
        assert!(
            mysql_seen <= 3,
            "WORKERS={workers}: {mysql_seen} MySQL connections"
        );
        assert!(
            redis_seen <= 2,
            "WORKERS={workers}: {redis_seen} Redis connections"
        );
        assert!(
            mysql_seen >= 1 && redis_seen >= 1,
            "the sampler saw the load"
        );
        app.shutdown.trigger();
        let _ = app.stopped.await;
    }
}

/// A CPU quota of one core, as a container limit sets it: a cgroup of the
/// `cpu` controller (v1, or v2's `cpu.max`) removed again when dropped.
struct OneCpuCgroup {
    dir: PathBuf,
}

impl OneCpuCgroup {
    fn create() -> Self {
        let name = format!("middleway-test-{}", random_suffix());
        let v1 = PathBuf::from("/sys/fs/cgroup/cpu");
        let v2 = PathBuf::from("/sys/fs/cgroup");
        if v1.join("cpu.cfs_quota_us").exists() {
            let dir = v1.join(name);
            std::fs::create_dir(&dir).expect("a cgroup (the tests run as root)");
            std::fs::write(dir.join("cpu.cfs_period_us"), "100000").unwrap();
            std::fs::write(dir.join("cpu.cfs_quota_us"), "100000").unwrap();
            Self { dir }
        } else {
            let controllers = std::fs::read_to_string(v2.join("cgroup.controllers"))
                .expect("cgroup v1 or v2 mounted at /sys/fs/cgroup");
            assert!(
                controllers.contains("cpu"),
                "cgroup v2 without the cpu controller"
            );
            let dir = v2.join(name);
            std::fs::create_dir(&dir).expect("a cgroup (the tests run as root)");
            std::fs::write(dir.join("cpu.max"), "100000 100000").unwrap();
            Self { dir }
        }
    }

    fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }
}

impl Drop for OneCpuCgroup {
    fn drop(&mut self) {
        // Its process may take a moment to be gone after the kill.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// On a machine with more cores than the quota, the default follows the
/// quota: one worker, not one per core of the node.
#[tokio::test(flavor = "multi_thread")]
async fn by_default_workers_follow_the_cgroup_cpu_quota_not_the_cores() {
    let cores = std::thread::available_parallelism().unwrap().get();
    assert!(cores >= 2, "this test needs a machine with 2 cores or more");
    let cgroup = OneCpuCgroup::create();
    let (_db_name, url) = create_database(&crate::helpers::mysql_admin_url()).await;
    let env = base_env(&url, &redis_url(), &format!("mwtest:{}:", random_suffix()));
    let mut service = ServiceProcess::start_in_cgroup(env, &cgroup.procs()).await;
    let scrape = metrics_text(&service.admin).await;
    assert_eq!(metric(&scrape, "middleway_http_workers"), Some(1.0));
    service.process.kill();
    drop(cgroup);
}
