//! Replica lag, measured by a heartbeat, and the probes that put replicas
//! in and out of rotation.
//!
//! Every [`BEAT`] this process writes a sequence number to its own row of
//! `middleway_heartbeat` on the primary, and reads that row on each replica.
//! A replica showing number n lacks every write acknowledged after n; its lag
//! is how long ago the first of those was acknowledged. Only this process'
//! clock enters (no skew between servers), and the same two statements work
//! on MariaDB, MySQL 8 and Aurora, whose replication status statements all
//! differ. A stopped replication shows as a lag that grows.
//!
//! With the primary away nothing new is written, so a replica's data is
//! exactly as old as it was when the primary stopped answering: its lag stops
//! growing there, and replicas that were caught up keep serving reads.
//!
//! Cost: per service replica, one single-row `REPLACE` on the primary and one
//! primary-key `SELECT` per read replica every [`BEAT`], over one connection
//! per endpoint (outside `DB_POOL_MAX`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::mysql::MySqlConnection;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::mysql::describe;
use super::replicas::{Endpoint, EndpointPools, ReadEndpoints};
use crate::metrics::Metrics;

/// How often the heartbeat is written and each replica probed.
pub(crate) const BEAT: Duration = Duration::from_millis(250);
/// Longest a probe (connecting included) may take before its endpoint counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// A replica that does not answer is probed again after a delay that
/// doubles from [`BEAT`] up to this.
const MOST_BACKOFF: Duration = Duration::from_secs(4);
/// Acknowledged beats remembered (about 17 minutes at four a second): a
/// replica further behind shows at least that much lag.
const REMEMBERED_BEATS: usize = 4096;
/// Rows of service replicas gone this long ago are deleted at start.
const FORGET_ROWS_AFTER_HOURS: u32 = 24;
/// A failing heartbeat write is logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// The beats the primary acknowledged: (sequence number, when).
#[derive(Default)]
struct Acknowledged {
    beats: VecDeque<(u64, Instant)>,
    /// The primary answered the last beat with an error (no table, no
    /// grant): no lag can be measured, so no replica takes reads.
    refused: bool,
}

impl Acknowledged {
    fn push(&mut self, sequence: u64, at: Instant) {
        if self.beats.len() == REMEMBERED_BEATS {
            self.beats.pop_front();
        }
        self.beats.push_back((sequence, at));
        self.refused = false;
    }

    /// How far behind a replica that shows beat `seen` is: how long the
    /// first acknowledged beat after it has been missing, up to now while the
    /// primary takes beats, or up to a beat after its last one while it does
    /// not (its data has not changed since). Zero when it has every one.
    fn lag_behind(&self, seen: u64, now: Instant) -> Duration {
        let first_missing = self
            .beats
            .partition_point(|&(sequence, _)| sequence <= seen);
        let (Some(&(_, missing_since)), Some(&(_, last))) =
            (self.beats.get(first_missing), self.beats.back())
        else {
            return Duration::ZERO;
        };
        now.min(last + BEAT)
            .saturating_duration_since(missing_since)
    }
}

/// The heartbeat writer and the replica probes, running until the drain.
pub(crate) struct Heartbeat {
    endpoints: Arc<ReadEndpoints>,
    /// This process' row: its pod name (when set) and a random suffix.
    instance: String,
    max_lag: Duration,
    acknowledged: Mutex<Acknowledged>,
    metrics: Metrics,
}

impl Heartbeat {
    /// Starts the writer and one probe per replica on the current runtime;
    /// they stop (and the row is deleted) when draining begins. Nothing
    /// runs without replicas.
    pub(crate) fn start(
        endpoints: &Arc<ReadEndpoints>,
        max_lag: Duration,
        metrics: &Metrics,
        draining: watch::Receiver<bool>,
    ) -> Option<JoinSet<()>> {
        if endpoints.replicas().is_empty() {
            return None;
        }
        let heartbeat = Arc::new(Self {
            endpoints: Arc::clone(endpoints),
            instance: instance_name(),
            max_lag,
            acknowledged: Mutex::default(),
            metrics: metrics.clone(),
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(Arc::clone(&heartbeat).write_beats(draining.clone()));
        for n in 0..endpoints.replicas().len() {
            tasks.spawn(Arc::clone(&heartbeat).probe_replica(n, draining.clone()));
        }
        Some(tasks)
    }

    fn acknowledged(&self) -> std::sync::MutexGuard<'_, Acknowledged> {
        self.acknowledged
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes a beat on the primary every [`BEAT`] until the drain, then
    /// deletes this process' row.
    async fn write_beats(self: Arc<Self>, mut draining: watch::Receiver<bool>) {
        let primary = self.endpoints.primary();
        let mut conn: Option<MySqlConnection> = None;
        let mut sequence = 0_u64;
        let mut cleaned = false;
        let mut last_logged: Option<Instant> = None;
        let mut ticks = tokio::time::interval(BEAT);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = draining.wait_for(|d| *d) => break,
            }
            sequence += 1;
            let beat = async {
                let connection = connected(&mut conn, primary).await?;
                if !cleaned {
                    forget_old_rows(connection).await?;
                    cleaned = true;
                }
                sqlx::query(
                    "REPLACE INTO middleway_heartbeat (instance, seq, written_at) \
                     VALUES (?, ?, CURRENT_TIMESTAMP(6))",
                )
                .bind(&self.instance)
                .bind(sequence)
                .execute(connection)
                .await
                .map(|_| ())
            };
            match tokio::time::timeout(PROBE_TIMEOUT, beat).await {
                Ok(Ok(())) => {
                    self.acknowledged().push(sequence, Instant::now());
                    self.endpoints.set_serving(Endpoint::Primary, true, true);
                }
                Ok(Err(sqlx::Error::Database(error))) => {
                    // The server answered but refused: no table (not
                    // migrated), no grant, or it is read-only now.
                    if last_logged.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
                        tracing::error!(
                            error = error.message(),
                            "cannot write the replica heartbeat on the primary (run `middleway migrate`, grant INSERT, DELETE on middleway_heartbeat); replicas get no reads until it is written"
                        );
                        last_logged = Some(Instant::now());
                    }
                    self.acknowledged().refused = true;
                    if is_read_only(error.as_ref()) {
                        // An Aurora-style failover: the writer's name now
                        // leads to another server. Connect by name afresh.
                        conn = None;
                        primary.pools.forget_connections();
                    }
                }
                Ok(Err(error)) => {
                    tracing::warn!(error = %describe(&error), "the primary did not take the heartbeat");
                    conn = None;
                    self.endpoints.set_serving(Endpoint::Primary, false, false);
                }
                Err(_elapsed) => {
                    conn = None;
                    self.endpoints.set_serving(Endpoint::Primary, false, false);
                }
            }
        }
        if let Some(connection) = conn.as_mut() {
            let _ = sqlx::query("DELETE FROM middleway_heartbeat WHERE instance = ?")
                .bind(&self.instance)
                .execute(connection)
                .await;
        }
    }

    /// Probes replica `n` every [`BEAT`] (backing off while it does not
    /// answer) and puts it in or out of rotation.
    async fn probe_replica(self: Arc<Self>, n: usize, mut draining: watch::Receiver<bool>) {
        let replica = &self.endpoints.replicas()[n];
        let lag_gauge = self
            .metrics
            .mysql_replica_lag
            .with_label_values(&[&replica.label]);
        let mut conn: Option<MySqlConnection> = None;
        let mut delay = BEAT;
        loop {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = draining.wait_for(|d| *d) => return,
            }
            let probe = async {
                let connection = connected(&mut conn, replica).await?;
                sqlx::query_scalar::<_, u64>(
                    "SELECT seq FROM middleway_heartbeat WHERE instance = ?",
                )
                .bind(&self.instance)
                .fetch_optional(connection)
                .await
            };
            let seen = match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
                Ok(Ok(seen)) => seen.unwrap_or(0),
                failed => {
                    if let Ok(Err(error @ sqlx::Error::Database(_))) = &failed {
                        tracing::warn!(endpoint = %replica.label, error = %describe(error), "cannot read the heartbeat on a replica");
                    }
                    // Down (or unmeasurable): out of rotation, probed less often.
                    conn = None;
                    self.endpoints
                        .set_serving(Endpoint::Replica(n), false, false);
                    delay = (delay * 2).min(MOST_BACKOFF);
                    continue;
                }
            };
            delay = BEAT;
            let (lag, refused) = {
                let acknowledged = self.acknowledged();
                (
                    acknowledged.lag_behind(seen, Instant::now()),
                    acknowledged.refused,
                )
            };
            lag_gauge.set(lag.as_secs_f64());
            let caught_up = lag <= self.max_lag && !refused;
            self.endpoints
                .set_serving(Endpoint::Replica(n), caught_up, true);
        }
    }
}

/// The probe connection of `endpoint`, opened (by name) when there is none.
async fn connected<'c>(
    conn: &'c mut Option<MySqlConnection>,
    endpoint: &EndpointPools,
) -> Result<&'c mut MySqlConnection, sqlx::Error> {
    if conn.is_none() {
        *conn = Some(MySqlConnection::connect_with(&endpoint.options).await?);
    }
    Ok(conn.as_mut().expect("connected above"))
}

/// Whether MySQL refused a write because the server is read-only
/// (`ER_OPTION_PREVENTS_STATEMENT` for `--read-only`, `ER_READ_ONLY_MODE`).
fn is_read_only(error: &dyn sqlx::error::DatabaseError) -> bool {
    let code = error
        .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .map(sqlx::mysql::MySqlDatabaseError::number);
    matches!(code, Some(1290 | 1836))
}

/// Deletes the rows of service replicas that stopped long ago (killed
/// without their drain), so pod churn does not grow the table.
async fn forget_old_rows(conn: &mut MySqlConnection) -> Result<(), sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM middleway_heartbeat WHERE written_at < CURRENT_TIMESTAMP(6) - INTERVAL {FORGET_ROWS_AFTER_HOURS} HOUR"
    )))
    .execute(conn)
    .await
    .map(|_| ())
}

/// This process' heartbeat row: `HOSTNAME` (the pod's name in Kubernetes)
/// and a random suffix, so two processes never share a row.
fn instance_name() -> String {
    let host: String = std::env::var("HOSTNAME")
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(40)
        .collect();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    if host.is_empty() {
        suffix
    } else {
        format!("{host}-{}", &suffix[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_the_age_of_the_first_acknowledged_beat_a_replica_lacks() {
        let start = Instant::now();
        let mut acknowledged = Acknowledged::default();
        for n in 1..=4 {
            acknowledged.push(n, start + Duration::from_millis(250 * n));
        }
        let now = start + Duration::from_millis(1100);
        // Has everything: no lag, however old the last beat is.
        assert_eq!(acknowledged.lag_behind(4, now), Duration::ZERO);
        assert_eq!(acknowledged.lag_behind(9, now), Duration::ZERO);
        // Lacks beat 3, acknowledged at 750 ms: 350 ms behind.
        assert_eq!(acknowledged.lag_behind(2, now), Duration::from_millis(350));
        // Has no row yet: behind since the first beat.
        assert_eq!(acknowledged.lag_behind(0, now), Duration::from_millis(850));
    }

    #[test]
    fn with_the_primary_away_a_replicas_lag_stops_growing() {
        let start = Instant::now();
        let mut acknowledged = Acknowledged::default();
        for n in 1..=4 {
            acknowledged.push(n, start + Duration::from_millis(250 * n));
        }
        // The last beat was at 1 s; a minute later the primary still takes none.
        let later = start + Duration::from_secs(60);
        assert_eq!(
            acknowledged.lag_behind(3, later),
            Duration::from_millis(250)
        );
        assert_eq!(
            acknowledged.lag_behind(2, later),
            Duration::from_millis(500)
        );
        assert_eq!(acknowledged.lag_behind(4, later), Duration::ZERO);
    }

    #[test]
    fn a_replica_behind_everything_remembered_shows_at_least_that_lag() {
        let start = Instant::now();
        let mut acknowledged = Acknowledged::default();
        for n in 1..=(REMEMBERED_BEATS as u64 + 10) {
            acknowledged.push(n, start + Duration::from_millis(n));
        }
        // While beats keep coming, the lag counts from the oldest remembered one.
        let now = start + Duration::from_millis(REMEMBERED_BEATS as u64 + 20);
        let lag = acknowledged.lag_behind(0, now);
        assert_eq!(
            lag,
            Duration::from_millis(REMEMBERED_BEATS as u64 + 20 - 11)
        );
    }

    #[test]
    fn instance_names_fit_the_column_and_differ() {
        let (a, b) = (instance_name(), instance_name());
        assert_ne!(a, b);
        assert!(a.len() <= 64, "{a}");
    }
}
