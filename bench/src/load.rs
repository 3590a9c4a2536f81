//! The driver: N concurrent workers share a fixed amount of work; latency
//! goes into an HDR histogram, failures are counted by kind.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Why one operation failed, as the report groups it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    /// MySQL error 1040.
    TooManyConnections,
    /// No answer within the per-operation timeout.
    Timeout,
    /// An HTTP 5xx.
    Http5xx,
    /// Any other HTTP status that is not the expected one.
    HttpOther,
    /// Could not connect (refused, reset, ...).
    Connect,
    /// Anything else.
    Other,
}

impl Failure {
    /// The report's column name.
    pub fn label(self) -> &'static str {
        match self {
            Self::TooManyConnections => "too_many_connections",
            Self::Timeout => "timeout",
            Self::Http5xx => "5xx",
            Self::HttpOther => "other_status",
            Self::Connect => "connect",
            Self::Other => "other",
        }
    }
}

/// One worker: a simulated function instance that handles one request at a time.
pub trait Worker: Send + 'static {
    /// Performs one operation.
    fn run_once(&mut self) -> impl Future<Output = Result<(), Failure>> + Send;
}

/// What one cell of the matrix measured.
#[derive(Debug, Clone)]
pub struct CellResult {
    /// Concurrent workers.
    pub concurrency: usize,
    /// Successful operations per second over the whole cell.
    pub throughput: f64,
    /// Latency percentiles of successful operations, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Wall time of the cell.
    pub total: Duration,
    /// Successful operations.
    pub ok: u64,
    /// Failures by kind.
    pub failures: BTreeMap<Failure, u64>,
    /// Highest MySQL Threads_connected seen during the cell (if sampled).
    pub peak_mysql_connections: Option<u64>,
}

/// Per-operation bound: a stuck operation counts as a timeout, never a hang.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `total` operations over `concurrency` workers made by `make`.
pub async fn run_cell<W, F, Fut>(concurrency: usize, total: u64, make: F) -> CellResult
where
    W: Worker,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = W>,
{
    let mut workers = Vec::with_capacity(concurrency);
    for i in 0..concurrency {
        workers.push(make(i).await);
    }
    let remaining = Arc::new(AtomicU64::new(total));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut worker in workers {
        let remaining = Arc::clone(&remaining);
        tasks.spawn(async move {
            let mut histogram =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let mut failures: BTreeMap<Failure, u64> = BTreeMap::new();
            // Claim one unit of work at a time until none is left.
            while remaining
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok()
            {
                let t0 = Instant::now();
                match tokio::time::timeout(OPERATION_TIMEOUT, worker.run_once()).await {
                    Ok(Ok(())) => {
                        let micros = t0.elapsed().as_micros().clamp(1, 60_000_000) as u64;
                        let _ = histogram.record(micros);
                    }
                    Ok(Err(kind)) => *failures.entry(kind).or_default() += 1,
                    Err(_) => *failures.entry(Failure::Timeout).or_default() += 1,
                }
            }
            (histogram, failures)
        });
    }
    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let mut failures: BTreeMap<Failure, u64> = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (h, f) = joined.expect("worker task");
        histogram.add(&h).expect("same bounds");
        for (kind, n) in f {
            *failures.entry(kind).or_default() += n;
        }
    }
    let total_time = started.elapsed();
    let ok = histogram.len();
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    CellResult {
        concurrency,
        throughput: ok as f64 / total_time.as_secs_f64(),
        p50_ms: ms(0.50),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        total: total_time,
        ok,
        failures,
        peak_mysql_connections: None,
    }
}
