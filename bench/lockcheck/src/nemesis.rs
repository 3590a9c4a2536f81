//! The faults, injected one at a time with quiet spells between them, in an
//! order and with durations the seed picks. Every fault is recorded with
//! its window, which service replicas it took down, and whether Redis may
//! have lost answered state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::cluster::{RedisPair, Service, redis_connection};
use crate::history::{Fault, Recorder, now_us};
use crate::proxy::{Mode, Proxy};

/// The kinds of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// kill -9 of a service replica, started again after a moment.
    KillService,
    /// SIGSTOP of a service replica, SIGCONT after a moment.
    PauseService,
    /// `DEBUG SLEEP`: Redis answers nothing for a moment.
    RedisSleep,
    /// `CLIENT KILL TYPE normal`: every pooled connection drops.
    KillConnections,
    /// `CLIENT KILL TYPE pubsub`: every wake connection drops.
    KillWakeConnections,
    /// A replica's (or every replica's) Redis traffic delayed.
    ProxyDelay,
    /// A replica's Redis traffic held for a moment (it arrives late).
    ProxyBlackhole,
    /// A replica's (or every replica's) Redis connections reset.
    ProxyReset,
    /// The Redis replica stops following, the primary dies, the lagging
    /// replica is promoted.
    Failover,
    /// Redis runs out of memory under `allkeys-lru` and evicts keys.
    Eviction,
    /// `FLUSHALL`.
    FlushAll,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 11] = [
        FaultKind::KillService,
        FaultKind::PauseService,
        FaultKind::RedisSleep,
        FaultKind::KillConnections,
        FaultKind::KillWakeConnections,
        FaultKind::ProxyDelay,
        FaultKind::ProxyBlackhole,
        FaultKind::ProxyReset,
        FaultKind::Failover,
        FaultKind::Eviction,
        FaultKind::FlushAll,
    ];

    pub fn word(self) -> &'static str {
        match self {
            Self::KillService => "kill-9",
            Self::PauseService => "pause",
            Self::RedisSleep => "redis-sleep",
            Self::KillConnections => "client-kill",
            Self::KillWakeConnections => "client-kill-pubsub",
            Self::ProxyDelay => "delay",
            Self::ProxyBlackhole => "blackhole",
            Self::ProxyReset => "reset",
            Self::Failover => "failover",
            Self::Eviction => "eviction",
            Self::FlushAll => "flushall",
        }
    }
}

/// The nemesis of one run: what it may do, and the system it does it to.
pub struct Nemesis {
    rng: StdRng,
    /// The next faults, a shuffled round of the allowed kinds at a time.
    queue: Vec<FaultKind>,
    kinds: Vec<FaultKind>,
    /// Quiet spell between faults, ms (a range).
    quiet_ms: (u64, u64),
    recorder: Arc<Recorder>,
    /// Faults injected so far.
    pub injected: usize,
}

/// What the nemesis acts on.
pub struct Target<'a> {
    pub services: &'a mut [Service],
    pub proxies: &'a [Arc<Proxy>],
    pub redis: &'a mut RedisPair,
    /// `LOCK_REPLICA_ACKS` of this phase: with 1, a failover loses no answered grant.
    pub acks: u32,
}

impl Nemesis {
    pub fn new(
        seed: u64,
        kinds: Vec<FaultKind>,
        quiet_ms: (u64, u64),
        recorder: Arc<Recorder>,
    ) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed ^ 0x006e_656d_6573_6973),
            queue: Vec::new(),
            kinds,
            quiet_ms,
            recorder,
            injected: 0,
        }
    }

    /// Injects faults, one after another with quiet spells between, until `until`.
    pub async fn run(&mut self, target: &mut Target<'_>, until: Instant) -> anyhow::Result<()> {
        if self.kinds.is_empty() {
            tokio::time::sleep_until(until.into()).await;
            return Ok(());
        }
        loop {
            let quiet = self.rng.random_range(self.quiet_ms.0..=self.quiet_ms.1);
            let at = Instant::now() + Duration::from_millis(quiet);
            if at >= until {
                tokio::time::sleep_until(until.into()).await;
                return Ok(());
            }
            tokio::time::sleep_until(at.into()).await;
            let kind = self.next_kind();
            self.inject(kind, target).await?;
            self.injected += 1;
        }
    }

    fn next_kind(&mut self) -> FaultKind {
        if self.queue.is_empty() {
            self.queue = self.kinds.clone();
            for i in (1..self.queue.len()).rev() {
                let j = self.rng.random_range(0..=i);
                self.queue.swap(i, j);
            }
        }
        self.queue.pop().unwrap_or(FaultKind::PauseService)
    }

    fn seconds(&mut self, from_ms: u64, to_ms: u64) -> Duration {
        Duration::from_millis(self.rng.random_range(from_ms..=to_ms))
    }

    async fn inject(&mut self, kind: FaultKind, target: &mut Target<'_>) -> anyhow::Result<()> {
        let start_us = now_us();
        let replica = self.rng.random_range(0..target.services.len());
        let every = self.rng.random_bool(0.3);
        let mut fault = Fault {
            kind: kind.word().into(),
            target: format!("service replica {replica}"),
            start_us,
            end_us: start_us,
            data_loss: false,
            replicas_down: Vec::new(),
            detail: String::new(),
        };
        match kind {
            FaultKind::KillService => {
                fault.replicas_down = vec![replica];
                target.services[replica].kill();
                let down = self.seconds(300, 2_000);
                tokio::time::sleep(down).await;
                target.services[replica].restart().await?;
            }
            FaultKind::PauseService => {
                fault.replicas_down = vec![replica];
                let down = self.seconds(300, 3_000);
                target.services[replica].pause();
                tokio::time::sleep(down).await;
                target.services[replica].resume();
            }
            FaultKind::RedisSleep => {
                fault.target = "redis primary".into();
                let stall = self.seconds(300, 2_500);
                fault.detail = format!("DEBUG SLEEP {:.1}", stall.as_secs_f64());
                let mut conn = redis_connection(&target.redis.primary_url()).await?;
                let _: String = redis::cmd("DEBUG")
                    .arg("SLEEP")
                    .arg(stall.as_secs_f64())
                    .query_async(&mut conn)
                    .await?;
            }
            FaultKind::KillConnections | FaultKind::KillWakeConnections => {
                let kind_word = if kind == FaultKind::KillConnections {
                    "normal"
                } else {
                    "pubsub"
                };
                fault.target = "redis primary".into();
                let mut conn = redis_connection(&target.redis.primary_url()).await?;
                let killed: i64 = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg(kind_word)
                    .arg("SKIPME")
                    .arg("yes")
                    .query_async(&mut conn)
                    .await?;
                fault.detail = format!("{killed} {kind_word} connections killed");
            }
            FaultKind::ProxyDelay | FaultKind::ProxyBlackhole | FaultKind::ProxyReset => {
                let hit: Vec<usize> = if every {
                    fault.target = "every service replica's Redis link".into();
                    (0..target.proxies.len()).collect()
                } else {
                    fault.target = format!("service replica {replica}'s Redis link");
                    vec![replica]
                };
                let (mode, lasts) = match kind {
                    FaultKind::ProxyDelay => {
                        let delay = self.seconds(20, 400);
                        fault.detail = format!("{} ms per chunk", delay.as_millis());
                        (Mode::Delay(delay), self.seconds(1_000, 4_000))
                    }
                    FaultKind::ProxyBlackhole => (Mode::Blackhole, self.seconds(500, 3_000)),
                    _ => (Mode::Pass, Duration::ZERO),
                };
                for &i in &hit {
                    if kind == FaultKind::ProxyReset {
                        target.proxies[i].reset_all();
                    } else {
                        target.proxies[i].set_mode(mode);
                    }
                }
                tokio::time::sleep(lasts).await;
                for &i in &hit {
                    target.proxies[i].set_mode(Mode::Pass);
                }
            }
            FaultKind::Failover => {
                fault.target = "redis primary".into();
                fault.data_loss = target.acks == 0;
                target.redis.cut_link()?;
                let lag = self.seconds(300, 2_000);
                tokio::time::sleep(lag).await;
                target.redis.fail_over(target.proxies).await?;
                fault.detail = format!(
                    "replica {:.1} s behind promoted (LOCK_REPLICA_ACKS {})",
                    lag.as_secs_f64(),
                    target.acks
                );
            }
            FaultKind::Eviction => {
                fault.target = "redis primary".into();
                fault.data_loss = true;
                let lasts = self.seconds(1_000, 3_000);
                fault.detail = evict(&target.redis.primary_url(), lasts).await?;
            }
            FaultKind::FlushAll => {
                fault.target = "redis primary".into();
                fault.data_loss = true;
                let mut conn = redis_connection(&target.redis.primary_url()).await?;
                let _: String = redis::cmd("FLUSHALL").query_async(&mut conn).await?;
            }
        }
        fault.end_us = now_us();
        self.recorder.fault(fault);
        Ok(())
    }
}

/// Squeezes Redis' memory for `lasts` (junk written past `maxmemory` under
/// `allkeys-lru`), then lets go; says how many keys were evicted, and how
/// many of them were a lock's.
async fn evict(url: &str, lasts: Duration) -> anyhow::Result<String> {
    use futures_util::StreamExt;
    let mut conn = redis_connection(url).await?;
    let config = |name: &str, value: &str| {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("SET").arg(name).arg(value);
        cmd
    };
    let _: () = config("notify-keyspace-events", "Ee")
        .query_async(&mut conn)
        .await?;
    let client = redis::Client::open(url)?;
    let mut events = client.get_async_pubsub().await?;
    events.subscribe("__keyevent@0__:evicted").await?;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await?;
    let used: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let _: () = config("maxmemory-policy", "allkeys-lru")
        .query_async(&mut conn)
        .await?;
    let _: () = config("maxmemory", &(used + 128 * 1024).to_string())
        .query_async(&mut conn)
        .await?;
    let junk = vec![b'x'; 8 * 1024];
    let ends = Instant::now() + lasts;
    let mut written = 0u64;
    // Squeezed until about this many keys went: under-sized, a Redis
    // evicts every key it has as fast as they are written, which shows no
    // more than a FLUSHALL does.
    let enough = evicted_keys(&mut conn).await? + 50;
    while Instant::now() < ends && evicted_keys(&mut conn).await? < enough {
        let _: Result<(), _> = redis::cmd("SET")
            .arg(format!("lockcheck-junk:{written}"))
            .arg(&junk)
            .query_async(&mut conn)
            .await;
        written += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let _: () = config("maxmemory", "0").query_async(&mut conn).await?;
    let mut stream = events.on_message();
    let (mut evicted, mut lock_keys) = (0, 0);
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(200), stream.next()).await
    {
        evicted += 1;
        let key: String = message.get_payload().unwrap_or_default();
        // Every key of a lock carries its name as a hash tag.
        if key.contains(":{") {
            lock_keys += 1;
        }
    }
    drop(stream);
    for n in 0..written {
        let _: Result<i64, _> = redis::cmd("DEL")
            .arg(format!("lockcheck-junk:{n}"))
            .query_async(&mut conn)
            .await;
    }
    Ok(format!(
        "{evicted} keys evicted, {lock_keys} of them a lock's"
    ))
}

/// Redis' count of keys evicted since it started.
async fn evicted_keys(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg("stats").query_async(conn).await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("evicted_keys:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}
