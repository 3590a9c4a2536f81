//! lockcheck: runs three middleway replicas on a Redis primary with a
//! replica and a MariaDB, all on loopback; clients take, hold, extend and
//! release locks (and write a fenced MySQL row while they hold them) while a
//! nemesis injects faults; every operation is recorded, and the history is
//! checked against the promises of docs/locks.md. See bench/README.md.
//!
//! The last line is always
//! `lockcheck: N ops, N grants, N faults injected, N violations`; the exit
//! code is 1 when a promise broke. With `--sabotage`, the services run a
//! deliberately broken engine (a debug build) and the exit code is 0 only
//! when the checker caught it.

mod check;
mod cluster;
mod history;
mod nemesis;
mod proxy;
mod workload;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::json;

use crate::check::{Bounds, Finding};
use crate::cluster::{MariaDb, RedisPair, Service};
use crate::history::{History, Kind, Op, Outcome, Recorder, now_us, parse_rfc3339_ms};
use crate::nemesis::{FaultKind, Nemesis, Target};
use crate::proxy::{Mode, Proxy};
use crate::workload::{HANG_UP_LEASE_MS, LONGEST_LEASE_MS, LockSpec, Workload};

/// Service replicas.
const REPLICAS: usize = 3;

#[derive(Parser)]
#[command(about = "Runs middleway under injected faults and checks the history of its locks")]
struct Args {
    /// The short form (CI): two phases of 95 s, LOCK_REPLICA_ACKS 0 then 1.
    #[arg(long)]
    short: bool,
    /// Seed of the workload and the nemesis (random when not given; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Minutes of faults in the long form (phases of six minutes, acks 0 and 1 in turn).
    #[arg(long, default_value_t = 24.0)]
    minutes: f64,
    /// The middleway binary to run.
    #[arg(long, default_value = "target/release/middleway")]
    service: PathBuf,
    /// Where the history and the logs go (default: a new folder under /tmp).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Self-test: the services run an engine broken on purpose (a debug
    /// build): `permits` grants past the permits, `fences` drops the fence
    /// floors. Succeeds only when the checker reports violations.
    #[arg(long, value_parser = ["permits", "fences"])]
    sabotage: Option<String>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 24)]
    clients: u32,
}

/// What a run does.
struct Plan {
    phases: Vec<Phase>,
    kinds: Vec<FaultKind>,
    quiet_ms: (u64, u64),
}

/// A stretch of the run with one setting of the replicas.
struct Phase {
    acks: u32,
    length: Duration,
}

impl Plan {
    fn of(args: &Args) -> Self {
        let phase = |acks, seconds: f64| Phase {
            acks,
            length: Duration::from_secs_f64(seconds),
        };
        match args.sabotage.as_deref() {
            Some("permits") => Self {
                phases: vec![phase(0, 30.0)],
                kinds: Vec::new(),
                quiet_ms: (0, 0),
            },
            Some(_) => Self {
                phases: vec![phase(0, 45.0)],
                kinds: vec![FaultKind::Failover],
                quiet_ms: (4_000, 6_000),
            },
            None if args.short => Self {
                phases: vec![phase(0, 95.0), phase(1, 95.0)],
                kinds: FaultKind::ALL.to_vec(),
                quiet_ms: (2_500, 6_000),
            },
            None => {
                let total = args.minutes * 60.0;
                let count = (total / 360.0).ceil().max(1.0) as usize;
                Self {
                    phases: (0..count)
                        .map(|i| phase(i as u32 % 2, total / count as f64))
                        .collect(),
                    kinds: FaultKind::ALL.to_vec(),
                    quiet_ms: (2_500, 6_000),
                }
            }
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(rand::random);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("lockcheck-{seed}")));
    if let Err(error) = std::fs::create_dir_all(&out) {
        eprintln!("lockcheck: cannot create {}: {error}", out.display());
        return ExitCode::from(2);
    }
    println!("lockcheck: seed {seed}, output in {}", out.display());
    let report = match run(&args, seed, &out).await {
        Ok(report) => report,
        Err(error) => {
            eprintln!("lockcheck: the run failed: {error:#}");
            return ExitCode::from(2);
        }
    };
    let violations: usize = report.findings.iter().map(|f| f.violations).sum();
    print_report(&report, seed, &out);
    println!(
        "lockcheck: {} ops, {} grants, {} faults injected, {violations} violations",
        report.history.ops.len(),
        report.history.grants().count(),
        report.faults_injected
    );
    match (&args.sabotage, violations) {
        (None, 0) => ExitCode::SUCCESS,
        (None, _) => ExitCode::FAILURE,
        (Some(kind), 0) => {
            eprintln!("lockcheck: the engine broken on purpose ({kind}) went unnoticed");
            ExitCode::FAILURE
        }
        (Some(kind), _) => {
            println!(
                "lockcheck: self-test passed: the engine broken on purpose ({kind}) was caught"
            );
            ExitCode::SUCCESS
        }
    }
}

/// What a run produced.
struct Report {
    history: History,
    findings: Vec<Finding>,
    faults_injected: usize,
    locks: Vec<LockSpec>,
    seconds: f64,
}

async fn run(args: &Args, seed: u64, out: &Path) -> anyhow::Result<Report> {
    let plan = Plan::of(args);
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let locks: Vec<LockSpec> = (0..3)
        .map(|i| LockSpec {
            name: format!("mutex-{i}"),
            permits: 1,
        })
        .chain((0..2).map(|i| LockSpec {
            name: format!("semaphore-{i}"),
            permits: rng.random_range(2..=5),
        }))
        .collect();

    let mariadb = MariaDb::start(out).await?;
    let admin = sqlx::MySqlPool::connect(&mariadb.url("mysql")).await?;
    sqlx::query("CREATE DATABASE IF NOT EXISTS lockcheck")
        .execute(&admin)
        .await?;
    let fenced = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(8)
        .connect(&mariadb.url("lockcheck"))
        .await?;
    workload::prepare_fenced_rows(&fenced, &locks).await?;
    let mut redis = RedisPair::start(out).await?;
    let mut proxies = Vec::new();
    for _ in 0..REPLICAS {
        proxies.push(Proxy::start(Arc::clone(&redis.target)).await?);
    }
    let key = format!("lockcheck-{:016x}", rng.random::<u64>());
    let mut env: HashMap<String, String> = [
        ("DATABASE_URL", mariadb.url("lockcheck")),
        ("API_KEYS", format!("lockcheck:{key}")),
        ("REDIS_KEY_PREFIX", "lc:".into()),
        ("DB_POOL_MAX", "2".into()),
        ("SHUTDOWN_TIMEOUT_S", "5".into()),
        ("RUST_LOG", "warn".into()),
        ("LOG_FORMAT", "json".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    env.insert("LOCK_REPLICA_ACKS".into(), plan.phases[0].acks.to_string());
    if let Some(kind) = &args.sabotage {
        env.insert("MIDDLEWAY_TEST_SABOTAGE_LOCKS".into(), kind.clone());
    }
    let mut services = Vec::new();
    for (i, proxy) in proxies.iter().enumerate() {
        services.push(Service::start(i, &args.service, env.clone(), proxy, out).await?);
    }

    let recorder = Arc::new(Recorder::default());
    let workload = Arc::new(Workload {
        locks: locks.clone(),
        bases: services.iter().map(Service::base).collect(),
        key: key.clone(),
        recorder: Arc::clone(&recorder),
        fenced,
        seed,
    });
    let mut nemesis = Nemesis::new(
        seed,
        plan.kinds.clone(),
        plan.quiet_ms,
        Arc::clone(&recorder),
    );
    for (n, phase) in plan.phases.iter().enumerate() {
        if n > 0 && phase.acks != plan.phases[n - 1].acks {
            for service in &mut services {
                service.stop().await;
                service.set_env("LOCK_REPLICA_ACKS", &phase.acks.to_string());
                service.restart().await?;
            }
        }
        println!(
            "lockcheck: phase {} of {}: {:.0} s, LOCK_REPLICA_ACKS {}, {} clients",
            n + 1,
            plan.phases.len(),
            phase.length.as_secs_f64(),
            phase.acks,
            args.clients
        );
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let mut clients = tokio::task::JoinSet::new();
        for id in 0..args.clients {
            clients.spawn(workload::run_client(
                Arc::clone(&workload),
                id,
                stopping.clone(),
            ));
        }
        let mut target = Target {
            services: &mut services,
            proxies: &proxies,
            redis: &mut redis,
            acks: phase.acks,
        };
        nemesis
            .run(&mut target, Instant::now() + phase.length)
            .await?;
        stop.send_replace(true);
        while clients.join_next().await.is_some() {}
        heal(&mut services, &proxies);
    }

    // The nemesis has stopped: every lock must be acquirable again, and
    // nothing may stay held or queued.
    let history = recorder.history();
    let recovery_bound = recovery_bound(&history);
    let (recovery, taken) = recover(&workload, &recorder, recovery_bound).await;
    let conservation = conserve(&workload, &recorder, taken).await;

    let history = recorder.history();
    history.write(&out.join("history.jsonl"))?;
    let mut findings = check::run_all(&history, &Bounds::DEFAULT);
    findings.push(recovery);
    findings.push(conservation);
    for service in &mut services {
        service.stop().await;
    }
    Ok(Report {
        history,
        findings,
        faults_injected: nemesis.injected,
        locks,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Every proxy passes, every replica runs (the nemesis heals after each fault; this is a guard).
fn heal(services: &mut [Service], proxies: &[Arc<Proxy>]) {
    for proxy in proxies {
        proxy.set_mode(Mode::Pass);
    }
    for service in services {
        service.resume();
    }
}

/// How long a lock may take to be acquirable again once the faults stop:
/// the longest lease a holder asks for, or, when a grant may have been made
/// by a replica killed before it could hand it back (an acquire that had
/// given up was in flight at a kill -9), the long lease of such requests.
fn recovery_bound(history: &History) -> Duration {
    let orphaned = history.ops.iter().any(|op| {
        op.kind == Kind::Acquire
            && op.outcome == Outcome::Unknown
            && history.fault_during(op.invoke_us, op.complete_us + 5_000_000, |f| {
                f.kind == "kill-9" && f.replicas_down.contains(&op.replica)
            })
    });
    let lease = if orphaned {
        HANG_UP_LEASE_MS
    } else {
        LONGEST_LEASE_MS
    };
    Duration::from_millis(lease) + Duration::from_secs(10)
}

/// Takes every slot of every lock (waiting up to `bound`); the tokens taken.
async fn recover(
    workload: &Workload,
    recorder: &Recorder,
    bound: Duration,
) -> (Finding, Vec<(LockSpec, String)>) {
    let mut finding = empty_finding("recovery");
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut taken = Vec::new();
    let mut slowest = Duration::ZERO;
    for (n, lock) in workload.locks.iter().enumerate() {
        for slot in 0..lock.permits {
            let replica = (n + slot as usize) % workload.bases.len();
            let mut op = Op::begin(u32::MAX, replica, Kind::Acquire, &lock.name, lock.permits);
            let left = bound.saturating_sub(started.elapsed());
            op.wait_ms = left.as_millis() as u64;
            op.lease_ms = 60_000;
            let body = json!({"op": "acquire", "name": lock.name, "permits": lock.permits,
                "wait_ms": op.wait_ms.min(120_000), "lease_ms": 60_000});
            let asked = Instant::now();
            let answer = post(
                &http,
                workload,
                replica,
                &body,
                left + Duration::from_secs(5),
            )
            .await;
            op.complete_us = now_us();
            match answer {
                Some((200, grant)) => {
                    op.outcome = Outcome::Ok;
                    op.status = Some(200);
                    op.fence = grant["fence"].as_u64();
                    op.expires_at_ms = grant["expires_at"].as_str().and_then(parse_rfc3339_ms);
                    op.token = grant["token"].as_str().map(str::to_owned);
                    slowest = slowest.max(asked.elapsed());
                    if let Some(token) = op.token.clone() {
                        taken.push((lock.clone(), token));
                    }
                }
                other => {
                    op.status = other.as_ref().map(|(s, _)| *s);
                    op.outcome = Outcome::Fail;
                    let text = format!("{other:?}");
                    finding.violation_text(format!(
                        "{} slot {slot} of {} not acquirable within {:.0} s after the faults stopped: {text}",
                        lock.name,
                        lock.permits,
                        bound.as_secs_f64()
                    ));
                }
            }
            recorder.op(op);
        }
    }
    finding.checked = format!("every slot of {} locks", workload.locks.len());
    finding.notes = format!(
        "all taken {:.2} s after the faults stopped (slowest slot {:.2} s; bound {:.0} s)",
        started.elapsed().as_secs_f64(),
        slowest.as_secs_f64(),
        bound.as_secs_f64()
    );
    (finding, taken)
}

/// Releases what recovery took, then every replica must see every lock
/// with nothing held and nobody waiting.
async fn conserve(
    workload: &Workload,
    recorder: &Recorder,
    taken: Vec<(LockSpec, String)>,
) -> Finding {
    let mut finding = empty_finding("conservation");
    let http = reqwest::Client::new();
    for (lock, token) in taken {
        let mut op = Op::begin(u32::MAX, 0, Kind::Release, &lock.name, lock.permits);
        op.token = Some(token.clone());
        let body = json!({"op": "release", "name": lock.name, "token": token});
        let answer = post(&http, workload, 0, &body, Duration::from_secs(10)).await;
        op.complete_us = now_us();
        op.status = answer.as_ref().map(|(s, _)| *s);
        op.outcome = if op.status == Some(200) {
            Outcome::Ok
        } else {
            finding.violation_text(format!(
                "releasing {} after recovery: {answer:?}",
                lock.name
            ));
            Outcome::Fail
        };
        recorder.op(op);
    }
    let mut looked = 0;
    for replica in 0..workload.bases.len() {
        for lock in &workload.locks {
            let body = json!({"op": "inspect", "name": lock.name});
            let answer = post(&http, workload, replica, &body, Duration::from_secs(10)).await;
            looked += 1;
            match answer {
                Some((200, state)) if state["held"] == 0 && state["waiting"] == 0 => {}
                other => finding.violation_text(format!(
                    "{} as replica {replica} sees it once everything was released: {other:?}",
                    lock.name
                )),
            }
        }
    }
    finding.checked = format!("{looked} inspections");
    finding
}

fn empty_finding(check: &'static str) -> Finding {
    Finding {
        check,
        checked: String::new(),
        violations: 0,
        first: None,
        notes: String::new(),
    }
}

trait Violations {
    fn violation_text(&mut self, text: String);
}

impl Violations for Finding {
    fn violation_text(&mut self, text: String) {
        self.violations += 1;
        if self.first.is_none() {
            self.first = Some(text);
        }
    }
}

/// POSTs `body` to `/locks` of replica `replica`: the status and the body.
async fn post(
    http: &reqwest::Client,
    workload: &Workload,
    replica: usize,
    body: &serde_json::Value,
    patience: Duration,
) -> Option<(u16, serde_json::Value)> {
    let response = http
        .post(format!("{}/locks", workload.bases[replica]))
        .bearer_auth(&workload.key)
        .json(body)
        .timeout(patience)
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.unwrap_or_default()))
}

fn print_report(report: &Report, seed: u64, out: &Path) {
    let mut by_kind: HashMap<&str, (usize, usize)> = HashMap::new();
    for fault in &report.history.faults {
        let entry = by_kind.entry(&fault.kind).or_default();
        entry.0 += 1;
        entry.1 += usize::from(fault.data_loss);
    }
    let mut kinds: Vec<_> = by_kind.into_iter().collect();
    kinds.sort();
    let faults: Vec<String> = kinds
        .iter()
        .map(|(kind, (n, lost))| {
            if *lost > 0 {
                format!("{kind} ×{n} ({lost} losing data)")
            } else {
                format!("{kind} ×{n}")
            }
        })
        .collect();
    let evictions: Vec<&str> = report
        .history
        .faults
        .iter()
        .filter(|f| f.kind == "eviction")
        .map(|f| f.detail.as_str())
        .collect();
    let locks: Vec<String> = report
        .locks
        .iter()
        .map(|l| format!("{} (permits {})", l.name, l.permits))
        .collect();
    let b = Bounds::DEFAULT;
    println!(
        "lockcheck: seed {seed}, {:.0} s, locks {}",
        report.seconds,
        locks.join(", ")
    );
    println!("faults: {}", faults.join(", "));
    if !evictions.is_empty() {
        println!("evictions: {}", evictions.join("; "));
    }
    println!(
        "margins: clock {} ms; queued {} ms after sent; FIFO order {} ms; judged {:.1} s after a fault; \
         answered by wait_ms + {:.1} s; hand-off within {:.1} s",
        b.clock_margin / 1000,
        b.queued_after / 1000,
        b.order_margin / 1000,
        b.settle as f64 / 1e6,
        b.answer_margin as f64 / 1e6,
        b.hand_off as f64 / 1e6
    );
    for finding in &report.findings {
        println!(
            "  {:<17} {:>5} violations  ({}{}{})",
            finding.check,
            finding.violations,
            finding.checked,
            if finding.notes.is_empty() { "" } else { "; " },
            finding.notes
        );
        if let Some(first) = &finding.first {
            println!("    first: {first}");
        }
    }
    println!("history: {}", out.join("history.jsonl").display());
}
