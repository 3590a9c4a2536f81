//! Prometheus metrics: every metric the service exports, in one registry.
//! The HTTP side (the per-request middleware, `/metrics`) lives in `http/`.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets in seconds: fine below 10 ms, where this service lives.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];

/// Every metric the service exports. Cloning is cheap (handles are shared).
#[derive(Clone)]
pub(crate) struct Metrics {
    registry: Registry,
    /// The standard `process_*` metrics (CPU, memory, fds, start time), kept
    /// apart so they carry no `middleway_` prefix.
    process: Registry,
    /// Requests by route, method and status.
    pub requests: IntCounterVec,
    /// Request latency by route, method and status.
    pub request_duration: HistogramVec,
    /// Requests being served now.
    pub requests_in_flight: IntGauge,
    /// Requests answered 503 by the in-flight cap.
    pub requests_shed: IntCounter,
    /// Protected requests by principal (configured names only, or
    /// `unauthenticated`) and status.
    pub requests_by_principal: IntCounterVec,
    /// MySQL connections open / idle / in use, over every endpoint (set at scrape time).
    pub mysql_pool_connections: IntGaugeVec,
    /// The same by endpoint (`primary`, `replica-1`, ...).
    pub mysql_endpoint_connections: IntGaugeVec,
    /// 1 while an endpoint takes reads (a replica: answering and caught up;
    /// the primary: answering its heartbeat). Set only with read replicas.
    pub mysql_endpoint_serving: IntGaugeVec,
    /// Each replica's lag at its last probe, in seconds.
    pub mysql_replica_lag: GaugeVec,
    /// MySQL read queries by endpoint.
    pub mysql_reads: IntCounterVec,
    /// Reads retried on another endpoint after a connection error or timeout.
    pub mysql_read_retries: IntCounter,
    /// Ids missing on a replica looked up on the primary, by outcome
    /// (`found`: the replica had not caught up; `missing`: no such row).
    pub mysql_read_miss_rechecks: IntCounterVec,
    /// Most MySQL connections allowed.
    pub mysql_pool_max: IntGauge,
    /// Time spent waiting for a pooled MySQL connection.
    pub mysql_acquire_wait: Histogram,
    /// Reads answered by joining a query already in flight.
    pub coalesced_reads: IntCounter,
    /// Ids per MySQL read query (reads queued together share one query).
    pub mysql_read_batch_size: Histogram,
    /// 1 when the last readiness check passed, 0 when it failed.
    pub ready: IntGauge,
    /// 1 when MySQL / Redis answered the last readiness check, else 0.
    pub dependency_up: IntGaugeVec,
    /// HTTP worker threads (`WORKERS`, or the cores the process may use).
    pub http_workers: IntGauge,
    /// `LOCK_MAX_WAITERS`, for alerts on `lock_waiters`.
    pub lock_max_waiters: IntGauge,
    /// Fleet budget permits this replica holds (`DB_FLEET_MAX`), by endpoint.
    pub mysql_fleet_permits: IntGaugeVec,
    /// Fleet budget leases by endpoint and outcome: granted, exhausted, fallback.
    pub mysql_fleet_leases: IntCounterVec,
    /// Redis pool connections open / idle (set at scrape time).
    pub redis_pool_connections: IntGaugeVec,
    /// The replica's wake connection (subscribed for lock messages): 1 while it is up.
    pub redis_blocking_connections: IntGauge,
    /// Lock operations by op and outcome (granted, timeout, released, not_held, ...).
    pub lock_operations: IntCounterVec,
    /// Leases found expired and reclaimed by this replica.
    pub lock_expiries: IntCounter,
    /// Lock requests waiting now.
    pub lock_waiters: IntGauge,
    /// Changed `AUTH_FILE`s, by outcome (loaded, refused).
    pub auth_reloads: IntCounterVec,
    /// JWT signature checks and STS calls (cache hits excluded), by method and outcome.
    pub auth_verifications: IntCounterVec,
    /// Requests refused by a principal's scopes (403) or share (429), by principal and reason.
    pub auth_refusals: IntCounterVec,
    /// Reloads of the listener's certificate pair, by outcome (loaded, refused).
    pub tls_reloads: IntCounterVec,
    /// When the served certificate expires (Unix seconds; 0 without TLS).
    pub tls_certificate_expiry: IntGauge,
    /// `POST /locks` latency by op and outcome (`ok` or the error's type).
    pub lock_request_duration: HistogramVec,
    /// Lock clean-ups dropped because too many were pending (a long Redis outage under load).
    pub lock_cleanups_dropped: IntCounter,
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub(crate) fn new() -> Self {
        let registry = Registry::new_custom(Some("middleway".into()), None)
            .expect("static metric prefix is valid");
        let labels = &["route", "method", "status"];
        let requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests served"),
            labels,
        )
        .expect("static metric definition");
        let request_duration = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency")
                .buckets(LATENCY_BUCKETS.into()),
            labels,
        )
        .expect("static metric definition");
        let metrics = Self {
            requests,
            request_duration,
            requests_in_flight: IntGauge::new(
                "http_requests_in_flight",
                "HTTP requests being served",
            )
            .expect("static"),
            requests_shed: IntCounter::new(
                "http_requests_shed_total",
                "Requests refused by the in-flight cap",
            )
            .expect("static"),
            requests_by_principal: IntCounterVec::new(
                Opts::new(
                    "http_requests_by_principal_total",
                    "Requests to /transcriptions and /locks by principal (configured names, or \"unauthenticated\") and status",
                ),
                &["principal", "status"],
            )
            .expect("static"),
            mysql_pool_connections: IntGaugeVec::new(
                Opts::new("mysql_pool_connections", "MySQL pool connections by state"),
                &["state"],
            )
            .expect("static"),
            mysql_endpoint_connections: IntGaugeVec::new(
                Opts::new(
                    "mysql_endpoint_connections",
                    "MySQL pool connections by endpoint and state",
                ),
                &["endpoint", "state"],
            )
            .expect("static"),
            mysql_endpoint_serving: IntGaugeVec::new(
                Opts::new(
                    "mysql_endpoint_serving",
                    "1 while a MySQL endpoint takes reads (replica answering and within DB_REPLICA_MAX_LAG_MS; primary answering its heartbeat)",
                ),
                &["endpoint"],
            )
            .expect("static"),
            mysql_replica_lag: GaugeVec::new(
                Opts::new(
                    "mysql_replica_lag_seconds",
                    "How far a read replica was behind the primary at its last probe (heartbeat)",
                ),
                &["endpoint"],
            )
            .expect("static"),
            mysql_reads: IntCounterVec::new(
                Opts::new("mysql_reads_total", "MySQL read queries by endpoint"),
                &["endpoint"],
            )
            .expect("static"),
            mysql_read_retries: IntCounter::new(
                "mysql_read_retries_total",
                "Reads retried on another endpoint after a connection error or timeout",
            )
            .expect("static"),
            mysql_read_miss_rechecks: IntCounterVec::new(
                Opts::new(
                    "mysql_read_miss_rechecks_total",
                    "Ids missing on a replica looked up on the primary, by outcome (found, missing)",
                ),
                &["outcome"],
            )
            .expect("static"),
            mysql_pool_max: IntGauge::new(
                "mysql_pool_max_connections",
                "Most MySQL connections this replica may open (DB_POOL_MAX per MySQL endpoint)",
            )
            .expect("static"),
            mysql_acquire_wait: Histogram::with_opts(
                HistogramOpts::new(
                    "mysql_acquire_wait_seconds",
                    "Wait for a pooled MySQL connection",
                )
                .buckets(LATENCY_BUCKETS.into()),
            )
            .expect("static"),
            coalesced_reads: IntCounter::new(
                "transcription_coalesced_reads_total",
                "Reads that joined a query in flight",
            )
            .expect("static"),
            mysql_read_batch_size: Histogram::with_opts(
                HistogramOpts::new(
                    "mysql_read_batch_size",
                    "Ids per MySQL read query (reads queued together share one)",
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 100.0]),
            )
            .expect("static"),
            ready: IntGauge::new(
                "ready",
                "1 when the last readiness check found a capability to serve, else 0",
            )
            .expect("static"),
            http_workers: IntGauge::new(
                "http_workers",
                "HTTP worker threads (WORKERS, or the cores the process may use)",
            )
            .expect("static"),
            dependency_up: IntGaugeVec::new(
                Opts::new(
                    "dependency_up",
                    "1 when the dependency answered the last readiness check, else 0",
                ),
                &["dependency"],
            )
            .expect("static"),
            lock_max_waiters: IntGauge::new(
                "lock_max_waiters",
                "Most lock requests that may wait at once (LOCK_MAX_WAITERS)",
            )
            .expect("static"),
            mysql_fleet_permits: IntGaugeVec::new(
                Opts::new(
                    "mysql_fleet_permits",
                    "Slots of the fleet-wide MySQL connection budget this replica holds, by endpoint",
                ),
                &["endpoint"],
            )
            .expect("static"),
            mysql_fleet_leases: IntCounterVec::new(
                Opts::new(
                    "mysql_fleet_leases_total",
                    "Requests for a fleet budget slot from Redis, by endpoint and outcome",
                ),
                &["endpoint", "outcome"],
            )
            .expect("static"),
            redis_pool_connections: IntGaugeVec::new(
                Opts::new("redis_pool_connections", "Redis pool connections by state"),
                &["state"],
            )
            .expect("static"),
            redis_blocking_connections: IntGauge::new(
                "redis_blocking_connections",
                "Redis connections dedicated to BLPOP wait loops",
            )
            .expect("static"),
            lock_operations: IntCounterVec::new(
                Opts::new("lock_operations_total", "Lock operations by op and outcome"),
                &["op", "outcome"],
            )
            .expect("static"),
            lock_expiries: IntCounter::new("lock_expiries_total", "Expired leases reclaimed")
                .expect("static"),
            lock_waiters: IntGauge::new("lock_waiters", "Lock requests waiting now")
                .expect("static"),
            auth_verifications: IntCounterVec::new(
                Opts::new(
                    "auth_verifications_total",
                    "Tokens verified (JWT signature checks, STS calls; cached tokens are not counted), by method (oidc, aws) and outcome (verified, unauthorized, unavailable)",
                ),
                &["method", "outcome"],
            )
            .expect("static"),
            auth_reloads: IntCounterVec::new(
                Opts::new(
                    "auth_reloads_total",
                    "Changed AUTH_FILEs (or SIGHUP), by outcome (loaded, refused)",
                ),
                &["outcome"],
            )
            .expect("static"),
            auth_refusals: IntCounterVec::new(
                Opts::new(
                    "auth_refusals_total",
                    "Requests refused by the principal's scopes (forbidden) or share (quota)",
                ),
                &["principal", "reason"],
            )
            .expect("static"),
            tls_reloads: IntCounterVec::new(
                Opts::new(
                    "tls_certificate_reloads_total",
                    "Changed TLS_CERT_FILE / TLS_KEY_FILE pairs, by outcome (loaded, refused)",
                ),
                &["outcome"],
            )
            .expect("static"),
            tls_certificate_expiry: IntGauge::new(
                "tls_certificate_expiry_timestamp_seconds",
                "When the public listener's certificate expires (Unix time; 0 without TLS)",
            )
            .expect("static"),
            lock_request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "lock_request_duration_seconds",
                    "POST /locks latency by op and outcome (ok, or the problem's type)",
                )
                .buckets(LATENCY_BUCKETS.into()),
                &["op", "outcome"],
            )
            .expect("static"),
            lock_cleanups_dropped: IntCounter::new(
                "lock_cleanups_dropped_total",
                "Lock clean-ups dropped because too many were pending",
            )
            .expect("static"),
            registry,
            process: process_registry(),
        };
        // Both outcomes exported from the start (at 0), so a first refusal
        // is an increase the alert can see.
        for outcome in ["loaded", "refused"] {
            metrics.tls_reloads.with_label_values(&[outcome]);
        }
        let build_info =
            IntGaugeVec::new(Opts::new("build_info", "Build information"), &["version"])
                .expect("static");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(metrics.requests.clone()),
            Box::new(metrics.request_duration.clone()),
            Box::new(metrics.requests_in_flight.clone()),
            Box::new(metrics.requests_shed.clone()),
            Box::new(metrics.requests_by_principal.clone()),
            Box::new(metrics.mysql_pool_connections.clone()),
            Box::new(metrics.mysql_pool_max.clone()),
            Box::new(metrics.mysql_endpoint_connections.clone()),
            Box::new(metrics.mysql_endpoint_serving.clone()),
            Box::new(metrics.mysql_replica_lag.clone()),
            Box::new(metrics.mysql_reads.clone()),
            Box::new(metrics.mysql_read_retries.clone()),
            Box::new(metrics.mysql_read_miss_rechecks.clone()),
            Box::new(metrics.mysql_acquire_wait.clone()),
            Box::new(metrics.coalesced_reads.clone()),
            Box::new(metrics.mysql_read_batch_size.clone()),
            Box::new(metrics.ready.clone()),
            Box::new(metrics.dependency_up.clone()),
            Box::new(metrics.http_workers.clone()),
            Box::new(metrics.lock_max_waiters.clone()),
            Box::new(metrics.mysql_fleet_permits.clone()),
            Box::new(metrics.mysql_fleet_leases.clone()),
            Box::new(crate::telemetry::otel::DROPPED_SPANS.clone()),
            Box::new(metrics.redis_pool_connections.clone()),
            Box::new(metrics.redis_blocking_connections.clone()),
            Box::new(metrics.lock_operations.clone()),
            Box::new(metrics.lock_expiries.clone()),
            Box::new(metrics.lock_waiters.clone()),
            Box::new(metrics.lock_request_duration.clone()),
            Box::new(metrics.auth_reloads.clone()),
            Box::new(metrics.auth_verifications.clone()),
            Box::new(metrics.auth_refusals.clone()),
            Box::new(metrics.tls_reloads.clone()),
            Box::new(metrics.tls_certificate_expiry.clone()),
            Box::new(metrics.lock_cleanups_dropped.clone()),
            Box::new(build_info),
        ];
        for collector in collectors {
            metrics
                .registry
                .register(collector)
                .expect("each metric is registered once");
        }
        metrics
    }

    /// Sets the pool gauges from the pools' own counts (at scrape time):
    /// open, idle and in use, where idle + in use = open. `mysql` has the
    /// (open, idle) counts of each endpoint by its label.
    pub(crate) fn set_pool_sizes(&self, mysql: &[(&str, (usize, usize))], redis: (usize, usize)) {
        let set = |gauge: &IntGaugeVec, labels: &[&str], (open, idle): (usize, usize)| {
            let idle = idle.min(open);
            for (state, count) in [("open", open), ("idle", idle), ("in_use", open - idle)] {
                let mut values = labels.to_vec();
                values.push(state);
                gauge
                    .with_label_values(&values)
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
        };
        let mut total = (0, 0);
        for &(endpoint, counts) in mysql {
            set(&self.mysql_endpoint_connections, &[endpoint], counts);
            total = (total.0 + counts.0, total.1 + counts.1);
        }
        set(&self.mysql_pool_connections, &[], total);
        set(&self.redis_pool_connections, &[], redis);
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        // Encoding our own well-formed families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&families, &mut out);
        out
    }
}

/// A registry holding only this process's standard `process_*` metrics
/// (read from /proc at scrape time; empty where /proc is not Linux's).
fn process_registry() -> Registry {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("registered once");
    registry
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
