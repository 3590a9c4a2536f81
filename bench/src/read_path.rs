//! What a read costs the service (CPU per GET) and what latency callers see
//! at a fixed offered rate (open loop, corrected for coordinated omission).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use tokio::sync::{Mutex, mpsc};

use crate::Target;
use crate::http::HttpConnection;
use crate::load::{Worker, run_cell};
use crate::strategies::MiddlewayRead;

/// User plus system CPU time of `pid`, from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc_sysconf_clk_tck() };
    Ok(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

unsafe fn libc_sysconf_clk_tck() -> i64 {
    unsafe extern "C" {
        fn sysconf(name: i32) -> i64;
    }
    // _SC_CLK_TCK is 2 on Linux.
    unsafe { sysconf(2) }
}

/// Makes warm keep-alive readers of random ids.
fn middleway_reader(
    target: &Target,
    rows: u64,
) -> impl Fn(usize) -> std::pin::Pin<Box<dyn Future<Output = MiddlewayRead> + Send>> + Clone {
    let (host, key) = (target.service.clone(), target.key.clone());
    move |_| {
        let (host, key) = (host.clone(), key.clone());
        Box::pin(async move {
            let http = HttpConnection::warm(&host).await;
            MiddlewayRead {
                http,
                host,
                key,
                rows,
                keep_alive: true,
            }
        })
    }
}

/// CPU time the service process spends per `GET /transcriptions/{id}` at
/// `concurrency` keep-alive connections (a warm-up first, not counted).
pub async fn cpu_per_get(
    target: &Target,
    pid: u32,
    rows: u64,
    concurrency: usize,
    requests: u64,
) -> anyhow::Result<()> {
    let make = middleway_reader(target, rows);
    let _ = run_cell(concurrency, requests / 10, make.clone()).await;
    let before = cpu_time(pid)?;
    let cell = run_cell(concurrency, requests, make).await;
    let spent = cpu_time(pid)? - before;
    let per_get_us = spent.as_secs_f64() * 1e6 / cell.ok.max(1) as f64;
    println!(
        "cpu-per-get c={concurrency} gets={} failures={:?} service_cpu={:.2}s per_get={per_get_us:.1}us throughput={:.0}/s p99={:.2}ms",
        cell.ok,
        cell.failures,
        spent.as_secs_f64(),
        cell.throughput,
        cell.p99_ms
    );
    Ok(())
}

/// What one open-loop run measured.
struct OpenLoopResult {
    sent: u64,
    failed: u64,
    histogram: Histogram<u64>,
}

/// Offers `rate` GETs per second for `seconds` over `connections` keep-alive
/// connections. Each request has an intended start on a fixed schedule; its
/// latency is measured from that instant, so time spent queued behind a slow
/// answer counts (wrk2's correction for coordinated omission).
async fn open_loop_run(
    target: &Target,
    rows: u64,
    rate: u64,
    seconds: u64,
    connections: usize,
) -> OpenLoopResult {
    let (schedule, queue) = mpsc::unbounded_channel::<Instant>();
    let queue = Arc::new(Mutex::new(queue));
    let mut senders = tokio::task::JoinSet::new();
    let make = middleway_reader(target, rows);
    for i in 0..connections {
        let queue = Arc::clone(&queue);
        let mut reader = make(i).await;
        senders.spawn(async move {
            let mut histogram =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            let mut failed = 0u64;
            loop {
                let intended = { queue.lock().await.recv().await };
                let Some(intended) = intended else { break };
                match tokio::time::timeout(Duration::from_secs(10), reader.run_once()).await {
                    Ok(Ok(())) => {
                        let micros = intended.elapsed().as_micros().clamp(1, 60_000_000) as u64;
                        let _ = histogram.record(micros);
                    }
                    _ => failed += 1,
                }
            }
            (histogram, failed)
        });
    }
    let total = rate * seconds;
    let start = Instant::now() + Duration::from_millis(50);
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    for n in 0..total {
        let intended = start + interval.mul_f64(n as f64);
        tokio::time::sleep_until(intended.into()).await;
        let _ = schedule.send(intended);
    }
    drop(schedule);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let mut failed = 0;
    while let Some(joined) = senders.join_next().await {
        let (h, f) = joined.expect("sender task");
        histogram.add(&h).expect("same bounds");
        failed += f;
    }
    OpenLoopResult {
        sent: total,
        failed,
        histogram,
    }
}

fn print_open_loop(rate: u64, result: &OpenLoopResult) {
    let ms = |q: f64| result.histogram.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "open-loop rate={rate}/s sent={} ok={} failed={} p50={:.2}ms p99={:.2}ms p99.9={:.2}ms max={:.2}ms",
        result.sent,
        result.histogram.len(),
        result.failed,
        ms(0.5),
        ms(0.99),
        ms(0.999),
        result.histogram.max() as f64 / 1000.0
    );
}

/// Latency at each offered rate of `rates` (the first is the headline
/// 5,000/s); then the lowest of them whose p99 passes `p99_limit_ms`.
pub async fn open_loop(
    target: &Target,
    rows: u64,
    rates: &[u64],
    seconds: u64,
    connections: usize,
    p99_limit_ms: f64,
) -> anyhow::Result<()> {
    // Warm the connections' server side and MySQL's buffer pool.
    let _ = open_loop_run(target, rows, 1000, 1, connections).await;
    let mut crossed = None;
    for &rate in rates {
        let result = open_loop_run(target, rows, rate, seconds, connections).await;
        print_open_loop(rate, &result);
        let p99 = result.histogram.value_at_quantile(0.99) as f64 / 1000.0;
        if p99 > p99_limit_ms && crossed.is_none() {
            crossed = Some(rate);
        }
    }
    match crossed {
        Some(rate) => println!("open-loop p99 first above {p99_limit_ms} ms at {rate}/s"),
        None => println!(
            "open-loop p99 stayed under {p99_limit_ms} ms up to {}/s",
            rates.iter().max().unwrap_or(&0)
        ),
    }
    Ok(())
}

/// `GET /transcriptions/{id}` from `concurrency` keep-alive callers spread
/// over several replicas (the fleet-budget row): errors, peak MySQL
/// connections (sampled from `root_url`), p99.
pub async fn fleet(
    services: &[String],
    key: &str,
    root_url: &str,
    rows: u64,
    concurrency: usize,
    requests: u64,
    label: &str,
) -> anyhow::Result<()> {
    let root = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .connect(root_url)
        .await
        .context("root connection")?;
    let replicas = services.len();
    let services = services.to_vec();
    let key = key.to_owned();
    let make = move |i: usize| {
        let (host, key) = (services[i % services.len()].clone(), key.clone());
        async move {
            let http = HttpConnection::warm(&host).await;
            MiddlewayRead {
                http,
                host,
                key,
                rows,
                keep_alive: true,
            }
        }
    };
    let cell = crate::scenarios::best_of(1, concurrency, requests, Some(&root), make).await;
    println!(
        "fleet {label} replicas={} callers={concurrency} ok={} failures={:?} peak_mysql_connections={} throughput={:.0}/s p99={:.2}ms",
        replicas,
        cell.ok,
        cell.failures,
        cell.peak_mysql_connections.unwrap_or(0),
        cell.throughput,
        cell.p99_ms
    );
    Ok(())
}
