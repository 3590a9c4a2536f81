//! What waiting costs, beyond throughput: Redis commands and connections of
//! idle waiters, fairness between replicas, connections opened by churn, and
//! the script cost of a hand-off on a large semaphore.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use redis::aio::MultiplexedConnection;

use crate::Target;
use crate::http::HttpConnection;
use crate::scenarios::{lock_waiters, post_lock};

async fn redis(url: &str) -> anyhow::Result<MultiplexedConnection> {
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?)
}

/// A numeric field of Redis `INFO` (any section).
async fn info(conn: &mut MultiplexedConnection, field: &str) -> anyhow::Result<f64> {
    let text: String = redis::cmd("INFO")
        .arg("everything")
        .query_async(conn)
        .await?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("INFO has no {field}"))
}

/// `calls` and `usec` of EVALSHA in `INFO commandstats`.
async fn evalsha_stats(conn: &mut MultiplexedConnection) -> anyhow::Result<(f64, f64)> {
    let text: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:"))
        .unwrap_or("calls=0,usec=0");
    let field = |name: &str| {
        line.split(',')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok((field("calls"), field("usec")))
}

/// `waiters` requests wait, one per lock, on locks held for minutes: Redis
/// commands per second and connections while nothing happens.
pub async fn idle(
    target: &Target,
    redis_url: &str,
    waiters: usize,
    seconds: u64,
) -> anyhow::Result<()> {
    let prefix = format!("idle-{}", rand::random::<u32>());
    let mut http = HttpConnection::new(&target.service);
    let mut holders = Vec::new();
    for n in 0..waiters {
        let name = format!("{prefix}-{n}");
        let (status, grant) = post_lock(
            &mut http,
            target,
            serde_json::json!({"op": "acquire", "name": name, "lease_ms": 600_000}),
        )
        .await?;
        anyhow::ensure!(status == StatusCode::OK, "holder {n}: {status}");
        holders.push((name, grant));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (name, _) in &holders {
        let (target, name) = (target.clone(), name.clone());
        tasks.spawn(async move {
            let mut http = HttpConnection::new(&target.service);
            let body = serde_json::json!({"op": "acquire", "name": name, "wait_ms": 120_000, "lease_ms": 1000});
            let _ = post_lock(&mut http, &target, body).await;
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while lock_waiters(target).await < waiters && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut conn = redis(redis_url).await?;
    let before = info(&mut conn, "total_commands_processed").await?;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let after = info(&mut conn, "total_commands_processed").await?;
    let per_second = (after - before) / started.elapsed().as_secs_f64();
    let clients = info(&mut conn, "connected_clients").await?;
    println!(
        "idle waiters={} names={waiters} seconds={seconds} redis_commands_per_s={per_second:.1} (incl. this probe's INFO) redis_connected_clients={clients} (incl. this probe)",
        lock_waiters(target).await
    );
    for (name, grant) in holders {
        let _ = post_lock(
            &mut http,
            target,
            serde_json::json!({"op": "release", "name": name, "token": grant["token"]}),
        )
        .await;
    }
    tasks.abort_all();
    Ok(())
}

/// Clients on two replicas share one mutex: each loops acquire → 1 ms →
/// release. Fair queuing gives every client about the same number of grants,
/// whichever replica it talks to.
pub async fn fairness(
    first: &Target,
    second: &str,
    clients_first: usize,
    clients_second: usize,
    seconds: u64,
) -> anyhow::Result<()> {
    let name = format!("fair-{}", rand::random::<u32>());
    let stop = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients_first + clients_second {
        let mut target = first.clone();
        if c >= clients_first {
            target.service = second.to_owned();
        }
        let name = name.clone();
        tasks.spawn(async move {
            let mut http = HttpConnection::new(&target.service);
            let mut grants = 0u64;
            while Instant::now() < stop {
                let acquire = serde_json::json!({"op": "acquire", "name": name, "wait_ms": 60_000, "lease_ms": 10_000});
                let Ok((StatusCode::OK, grant)) = post_lock(&mut http, &target, acquire).await else { continue };
                grants += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
                let release = serde_json::json!({"op": "release", "name": name, "token": grant["token"]});
                let _ = post_lock(&mut http, &target, release).await;
            }
            (c < clients_first, grants)
        });
    }
    let (mut first_grants, mut second_grants) = (Vec::new(), Vec::new());
    while let Some(joined) = tasks.join_next().await {
        let (on_first, grants) = joined?;
        if on_first {
            first_grants.push(grants)
        } else {
            second_grants.push(grants)
        }
    }
    let mean = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
    let (a, b) = (mean(&first_grants), mean(&second_grants));
    println!(
        "fairness seconds={seconds} replica1_clients={clients_first} grants_per_client={a:.1} replica2_clients={clients_second} grants_per_client={b:.1} ratio={:.2} total_grants={}",
        b / a.max(f64::MIN_POSITIVE),
        first_grants.iter().sum::<u64>() + second_grants.iter().sum::<u64>()
    );
    Ok(())
}

/// `clients` loop acquire → release on `names` mutexes for `seconds`:
/// how many Redis connections the service opens meanwhile.
pub async fn churn(
    target: &Target,
    redis_url: &str,
    clients: usize,
    names: usize,
    seconds: u64,
) -> anyhow::Result<()> {
    let prefix = format!("churn-{}", rand::random::<u32>());
    let mut conn = redis(redis_url).await?;
    let before = info(&mut conn, "total_connections_received").await?;
    let stop = Instant::now() + Duration::from_secs(seconds);
    let grants = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let (target, grants) = (target.clone(), grants.clone());
        let name = format!("{prefix}-{}", c % names);
        tasks.spawn(async move {
            let mut http = HttpConnection::new(&target.service);
            while Instant::now() < stop {
                let acquire = serde_json::json!({"op": "acquire", "name": name, "wait_ms": 1_000, "lease_ms": 1_000});
                let Ok((StatusCode::OK, grant)) = post_lock(&mut http, &target, acquire).await else { continue };
                grants.fetch_add(1, Ordering::Relaxed);
                let release = serde_json::json!({"op": "release", "name": name, "token": grant["token"]});
                let _ = post_lock(&mut http, &target, release).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let after = info(&mut conn, "total_connections_received").await?;
    println!(
        "churn clients={clients} names={names} seconds={seconds} grants={} redis_connections_opened={}",
        grants.load(Ordering::Relaxed),
        after - before
    );
    Ok(())
}

/// The script cost (Redis µs per call) of a busy acquire on a 1024-permit
/// semaphore, with and without a hand-off in progress: an offer to a waiter
/// on a stopped replica (`second_pid`) stays unclaimed meanwhile.
pub async fn handoff_cost(
    target: &Target,
    second: &str,
    second_pid: i32,
    redis_url: &str,
) -> anyhow::Result<()> {
    let name = format!("wide-{}", rand::random::<u32>());
    let mut http = HttpConnection::new(&target.service);
    let mut held = Vec::new();
    for _ in 0..1024 {
        let (status, grant) = post_lock(&mut http, target, serde_json::json!({"op": "acquire", "name": name, "permits": 1024, "lease_ms": 600_000})).await?;
        anyhow::ensure!(status == StatusCode::OK, "fill: {status}");
        held.push(grant);
    }
    let mut conn = redis(redis_url).await?;
    let busy = serde_json::json!({"op": "acquire", "name": name, "permits": 1024, "wait_ms": 0});
    let mut measure = async |label: &str| -> anyhow::Result<f64> {
        let (calls, usec) = evalsha_stats(&mut conn).await?;
        for _ in 0..2000 {
            let (status, _) = post_lock(&mut http, target, busy.clone()).await?;
            anyhow::ensure!(status == StatusCode::LOCKED, "{label}: {status}");
        }
        let (calls_after, usec_after) = evalsha_stats(&mut conn).await?;
        Ok((usec_after - usec) / (calls_after - calls).max(1.0))
    };
    let quiet = measure("no hand-off").await?;
    // A waiter on the second replica, which stops before the slot is offered to it.
    let mut second_target = target.clone();
    second_target.service = second.to_owned();
    let waiting = tokio::spawn(async move {
        let mut http = HttpConnection::new(&second_target.service);
        let body = serde_json::json!({"op": "acquire", "name": name, "permits": 1024, "wait_ms": 60_000, "lease_ms": 1_000});
        post_lock(&mut http, &second_target, body).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(second_pid, "STOP")?;
    let mut http2 = HttpConnection::new(&target.service);
    let first = held.pop().expect("1024 grants");
    let (status, _) = post_lock(
        &mut http2,
        target,
        serde_json::json!({"op": "release", "name": first["name"], "token": first["token"]}),
    )
    .await?;
    anyhow::ensure!(status == StatusCode::OK);
    let started = Instant::now();
    let handing_off = measure("hand-off in progress").await?;
    let window = started.elapsed();
    signal(second_pid, "CONT")?;
    let _ = waiting.await;
    println!(
        "handoff-cost permits=1024 held=1024 busy_acquire_script_us={quiet:.1} during_unclaimed_offer_us={handing_off:.1} (2000 calls each; the second batch took {:.0} ms)",
        window.as_secs_f64() * 1000.0
    );
    Ok(())
}

/// Sends `SIG<name>` to `pid` with the `kill` command.
fn signal(pid: i32, name: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "kill -{name} {pid}");
    Ok(())
}
