//! The clients: each loops over a few names (mutexes and semaphores),
//! acquiring with and without waiting, holding (and writing the fenced row
//! of the name, as a holder protects a resource), sometimes extending,
//! sometimes letting the lease run out, releasing through any replica, and
//! now and then hanging up on purpose: mid-wait, or while an immediate grant
//! is on its way. Every request is recorded.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use sqlx::MySqlPool;
use tokio::sync::watch;

use crate::history::{Kind, Op, Outcome, Recorder, now_us, parse_rfc3339_ms};

/// A lock the clients use.
#[derive(Debug, Clone)]
pub struct LockSpec {
    pub name: String,
    pub permits: u32,
}

/// What the clients share.
pub struct Workload {
    pub locks: Vec<LockSpec>,
    /// `http://127.0.0.1:<port>` of each service replica.
    pub bases: Vec<String>,
    pub key: String,
    pub recorder: Arc<Recorder>,
    /// The fenced rows (one per lock name).
    pub fenced: MySqlPool,
    pub seed: u64,
}

/// The longest lease a holder asks for (a grant nobody received lasts at most this).
pub const LONGEST_LEASE_MS: u64 = 5_000;
/// The lease of requests that hang up on purpose: long, so a grant left
/// held by nobody would show (the checker waits far less for recovery).
pub const HANG_UP_LEASE_MS: u64 = 30_000;
/// Past `wait_ms`, how long a client waits for an answer before it counts
/// the request unanswered.
pub const ANSWER_PATIENCE: Duration = Duration::from_secs(10);

/// Creates the fenced table, one row per lock.
pub async fn prepare_fenced_rows(pool: &MySqlPool, locks: &[LockSpec]) -> anyhow::Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS fenced (name VARCHAR(128) PRIMARY KEY, \
         fence BIGINT UNSIGNED NOT NULL, writer VARCHAR(64) NOT NULL)",
    )
    .execute(pool)
    .await?;
    for lock in locks {
        sqlx::query("INSERT IGNORE INTO fenced (name, fence, writer) VALUES (?, 0, '')")
            .bind(&lock.name)
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// One client, until `stop` turns true (the round under way finishes, so
/// every request it made is recorded).
pub async fn run_client(workload: Arc<Workload>, id: u32, stop: watch::Receiver<bool>) {
    let mut client = Client {
        id,
        rng: StdRng::seed_from_u64(workload.seed.wrapping_mul(1_000_003) ^ u64::from(id)),
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(4)
            .build()
            .unwrap_or_default(),
        workload,
    };
    while !*stop.borrow() {
        client.one_round().await;
        let pause = client.rng.random_range(0..20);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

struct Client {
    id: u32,
    rng: StdRng,
    http: reqwest::Client,
    workload: Arc<Workload>,
}

/// A grant a client holds.
struct Held {
    acquire: u64,
    lock: LockSpec,
    token: String,
    fence: u64,
    lease_ms: u64,
    replica: usize,
}

impl Client {
    fn replica(&mut self) -> usize {
        self.rng.random_range(0..self.workload.bases.len())
    }

    async fn one_round(&mut self) {
        let lock = self.workload.locks[self.rng.random_range(0..self.workload.locks.len())].clone();
        let dice = self.rng.random_range(0..100);
        if dice < 5 {
            self.inspect(&lock).await;
            return;
        }
        if dice < 15 {
            // Gives up mid-wait, or while an immediate grant is on its way.
            let wait_ms = [0, 0, 500, 2_000][self.rng.random_range(0..4)];
            let hang_up_ms = if wait_ms == 0 {
                self.rng.random_range(2..60)
            } else {
                self.rng.random_range(30..wait_ms)
            };
            // Served before it gave up: it gives the slot back at once.
            if let Some(held) = self
                .acquire(&lock, wait_ms, HANG_UP_LEASE_MS, Some(hang_up_ms))
                .await
            {
                self.release(&held).await;
            }
            return;
        }
        let wait_ms = [0, 200, 1_000, 3_000][self.rng.random_range(0..4)];
        let lease_ms = [300, 800, 2_000, LONGEST_LEASE_MS][self.rng.random_range(0..4)];
        if let Some(held) = self.acquire(&lock, wait_ms, lease_ms, None).await {
            self.hold(held).await;
        }
    }

    /// One acquire; the grant when it came.
    async fn acquire(
        &mut self,
        lock: &LockSpec,
        wait_ms: u64,
        lease_ms: u64,
        hang_up_ms: Option<u64>,
    ) -> Option<Held> {
        let replica = self.replica();
        let mut op = Op::begin(self.id, replica, Kind::Acquire, &lock.name, lock.permits);
        op.wait_ms = wait_ms;
        op.lease_ms = lease_ms;
        op.hang_up_ms = hang_up_ms;
        let patience = hang_up_ms
            .map(Duration::from_millis)
            .unwrap_or(Duration::from_millis(wait_ms) + ANSWER_PATIENCE);
        let body = json!({"op": "acquire", "name": lock.name, "permits": lock.permits,
            "wait_ms": wait_ms, "lease_ms": lease_ms});
        let answer = self.post(replica, &body, patience, &mut op).await;
        if let Some(grant) = answer.filter(|_| op.status == Some(200)) {
            op.outcome = Outcome::Ok;
            op.token = grant["token"].as_str().map(str::to_owned);
            op.fence = grant["fence"].as_u64();
            op.expires_at_ms = grant["expires_at"].as_str().and_then(parse_rfc3339_ms);
        } else if op.status.is_some() {
            // A 503 too: the service undoes a grant it could not answer.
            op.outcome = Outcome::Fail;
        }
        let (token, fence) = (op.token.clone(), op.fence);
        let id = self.workload.recorder.op(op);
        Some(Held {
            acquire: id,
            lock: lock.clone(),
            token: token?,
            fence: fence?,
            lease_ms,
            replica,
        })
    }

    /// Holds a grant: writes the fenced row, maybe extends, works, then
    /// releases (through any replica) or lets the lease run out.
    async fn hold(&mut self, held: Held) {
        self.fenced_write(&held).await;
        let mut lease_ms = held.lease_ms;
        if self.rng.random_bool(0.25) {
            lease_ms = [500, 1_500, 3_000][self.rng.random_range(0..3)];
            self.extend(&held, lease_ms).await;
        }
        // Most holders finish within their lease; some overrun it.
        let work = self.rng.random_range(0..lease_ms * 6 / 5);
        tokio::time::sleep(Duration::from_millis(work)).await;
        if self.rng.random_bool(0.3) {
            self.fenced_write(&held).await;
        }
        if self.rng.random_bool(0.85) {
            self.release(&held).await;
        }
    }

    async fn release(&mut self, held: &Held) {
        let replica = self.replica();
        let mut op = Op::begin(
            self.id,
            replica,
            Kind::Release,
            &held.lock.name,
            held.lock.permits,
        );
        op.grant_of = Some(held.acquire);
        op.fence = Some(held.fence);
        let body = json!({"op": "release", "name": held.lock.name, "token": held.token});
        let answer = self.post(replica, &body, ANSWER_PATIENCE, &mut op).await;
        op.outcome = match op.status {
            Some(200) => Outcome::Ok,
            Some(409) => Outcome::Fail,
            // A 503 change may have happened: unknown.
            _ => Outcome::Unknown,
        };
        op.reason = answer.and_then(|a| a["reason"].as_str().map(str::to_owned));
        self.workload.recorder.op(op);
    }

    async fn extend(&mut self, held: &Held, lease_ms: u64) {
        let replica = held.replica;
        let mut op = Op::begin(
            self.id,
            replica,
            Kind::Extend,
            &held.lock.name,
            held.lock.permits,
        );
        op.grant_of = Some(held.acquire);
        op.lease_ms = lease_ms;
        op.fence = Some(held.fence);
        let body = json!({"op": "extend", "name": held.lock.name, "token": held.token,
            "lease_ms": lease_ms});
        let answer = self.post(replica, &body, ANSWER_PATIENCE, &mut op).await;
        op.outcome = match op.status {
            Some(200) => Outcome::Ok,
            Some(409) => Outcome::Fail,
            _ => Outcome::Unknown,
        };
        if let Some(answer) = answer {
            op.expires_at_ms = answer["expires_at"].as_str().and_then(parse_rfc3339_ms);
            op.reason = answer["reason"].as_str().map(str::to_owned);
        }
        self.workload.recorder.op(op);
    }

    async fn inspect(&mut self, lock: &LockSpec) {
        let replica = self.replica();
        let mut op = Op::begin(self.id, replica, Kind::Inspect, &lock.name, lock.permits);
        let body = json!({"op": "inspect", "name": lock.name});
        let answer = self.post(replica, &body, ANSWER_PATIENCE, &mut op).await;
        op.outcome = match op.status {
            Some(200) => Outcome::Ok,
            Some(_) => Outcome::Fail,
            None => Outcome::Unknown,
        };
        if let Some(answer) = answer {
            op.held = answer["held"].as_u64();
            op.waiting = answer["waiting"].as_u64();
        }
        self.workload.recorder.op(op);
    }

    /// The row takes a holder's fence only above the fence it has.
    async fn fenced_write(&mut self, held: &Held) {
        let mut op = Op::begin(
            self.id,
            held.replica,
            Kind::FencedWrite,
            &held.lock.name,
            held.lock.permits,
        );
        op.grant_of = Some(held.acquire);
        op.fence = Some(held.fence);
        let pool = &self.workload.fenced;
        let writer = format!("{}:{}", self.id, held.acquire);
        let written = async {
            let done =
                sqlx::query("UPDATE fenced SET fence = ?, writer = ? WHERE name = ? AND fence < ?")
                    .bind(held.fence)
                    .bind(&writer)
                    .bind(&held.lock.name)
                    .bind(held.fence)
                    .execute(pool)
                    .await?;
            let read_back: u64 = sqlx::query_scalar("SELECT fence FROM fenced WHERE name = ?")
                .bind(&held.lock.name)
                .fetch_one(pool)
                .await?;
            // A holder writing its own fence again changes nothing (the
            // row is `fence < ?` only): the row is still its.
            let taken = done.rows_affected() == 1 || read_back == held.fence;
            Ok::<_, sqlx::Error>((taken, read_back))
        };
        match written.await {
            Ok((accepted, read_back)) => {
                op.outcome = Outcome::Ok;
                op.accepted = Some(accepted);
                op.read_back = Some(read_back);
            }
            Err(error) => op.error = Some(error.to_string()),
        }
        op.complete_us = now_us();
        self.workload.recorder.op(op);
    }

    /// POSTs `body` to `/locks` of `replica`; the status lands in `op`, the body comes back.
    async fn post(
        &mut self,
        replica: usize,
        body: &Value,
        patience: Duration,
        op: &mut Op,
    ) -> Option<Value> {
        op.invoke_us = now_us();
        let sent = self
            .http
            .post(format!("{}/locks", self.workload.bases[replica]))
            .bearer_auth(&self.workload.key)
            .json(body)
            .timeout(patience)
            .send()
            .await;
        let answer = match sent {
            Ok(response) => {
                op.status = Some(response.status().as_u16());
                response.json::<Value>().await.ok()
            }
            Err(error) => {
                op.error = Some(if error.is_timeout() {
                    "no answer in time".into()
                } else {
                    "connection failed".into()
                });
                None
            }
        };
        op.complete_us = now_us();
        answer
    }
}
