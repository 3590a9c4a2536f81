//! What happened: every operation a client made (when it was invoked, when
//! it completed, how it ended, what came back) and every fault injected.
//! Times are µs since the Unix epoch on this machine's clock, the clock
//! Redis reads too (everything runs on one machine).

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Now, in µs since the Unix epoch.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// What an operation was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Acquire,
    Release,
    Extend,
    Inspect,
    /// A holder's write to the fenced MySQL row of its lock.
    FencedWrite,
}

/// How it ended, as the client can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// It happened (200).
    Ok,
    /// It did not happen (a 4xx, or a 503 for an acquire: the service
    /// undoes a grant it could not answer).
    Fail,
    /// It may or may not have happened (no answer, or a 503 for a change).
    Unknown,
}

/// One operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Op {
    pub id: u64,
    pub client: u32,
    /// The service replica it went to (fenced writes: the holder's).
    pub replica: usize,
    pub kind: Kind,
    pub name: String,
    pub permits: u32,
    pub wait_ms: u64,
    pub lease_ms: u64,
    pub invoke_us: i64,
    pub complete_us: i64,
    pub outcome: Outcome,
    /// The HTTP status, when one came back.
    pub status: Option<u16>,
    /// The client gave up after this long on purpose (a hang-up).
    pub hang_up_ms: Option<u64>,
    /// For a release, extend or fenced write: the acquire whose grant it concerns.
    pub grant_of: Option<u64>,
    pub token: Option<String>,
    pub fence: Option<u64>,
    /// The lease deadline answered (acquire, extend), Unix ms on the Redis clock.
    pub expires_at_ms: Option<i64>,
    /// Why a token was not held (409).
    pub reason: Option<String>,
    /// Inspect: how many hold and wait.
    pub held: Option<u64>,
    pub waiting: Option<u64>,
    /// Fenced write: whether the row took it, and the fence read back.
    pub accepted: Option<bool>,
    pub read_back: Option<u64>,
    /// What went wrong, when something did.
    pub error: Option<String>,
}

impl Op {
    /// An operation about to be invoked.
    pub fn begin(client: u32, replica: usize, kind: Kind, name: &str, permits: u32) -> Self {
        Self {
            id: 0,
            client,
            replica,
            kind,
            name: name.to_owned(),
            permits,
            wait_ms: 0,
            lease_ms: 0,
            invoke_us: now_us(),
            complete_us: 0,
            outcome: Outcome::Unknown,
            status: None,
            hang_up_ms: None,
            grant_of: None,
            token: None,
            fence: None,
            expires_at_ms: None,
            reason: None,
            held: None,
            waiting: None,
            accepted: None,
            read_back: None,
            error: None,
        }
    }

    /// A granted acquire.
    pub fn granted(&self) -> bool {
        self.kind == Kind::Acquire && self.outcome == Outcome::Ok
    }
}

/// A fault the nemesis injected.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fault {
    pub kind: String,
    /// What it hit (a service replica, a proxy, Redis).
    pub target: String,
    pub start_us: i64,
    pub end_us: i64,
    /// Whether Redis may have lost answered state (grants included).
    pub data_loss: bool,
    /// The service replicas it stopped or killed (their requests may go unanswered).
    pub replicas_down: Vec<usize>,
    pub detail: String,
}

/// Where operations and faults are recorded while the run goes on.
#[derive(Default)]
pub struct Recorder {
    ops: Mutex<Vec<Op>>,
    faults: Mutex<Vec<Fault>>,
}

/// Everything recorded, once the run is over.
pub struct History {
    pub ops: Vec<Op>,
    pub faults: Vec<Fault>,
}

impl Recorder {
    /// Records a completed operation; its id.
    pub fn op(&self, mut op: Op) -> u64 {
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        op.id = ops.len() as u64;
        if op.complete_us == 0 {
            op.complete_us = now_us();
        }
        ops.push(op);
        ops.len() as u64 - 1
    }

    pub fn fault(&self, fault: Fault) {
        self.faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(fault);
    }

    /// The history so far.
    pub fn history(&self) -> History {
        History {
            ops: self.ops.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            faults: self
                .faults
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

impl History {
    /// Writes one JSON object per line: every fault, then every operation.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        for fault in &self.faults {
            serde_json::to_writer(&mut out, &serde_json::json!({"fault": fault}))?;
            out.write_all(b"\n")?;
        }
        for op in &self.ops {
            serde_json::to_writer(&mut out, &serde_json::json!({"op": op}))?;
            out.write_all(b"\n")?;
        }
        out.flush()
    }

    /// Acquires that were granted.
    pub fn grants(&self) -> impl Iterator<Item = &Op> {
        self.ops.iter().filter(|op| op.granted())
    }

    /// Whether a fault overlapping `[from, to]` (µs) matches `which`.
    pub fn fault_during(&self, from: i64, to: i64, which: impl Fn(&Fault) -> bool) -> bool {
        self.faults
            .iter()
            .any(|f| f.start_us <= to && f.end_us >= from && which(f))
    }
}

/// Unix ms of an RFC 3339 UTC timestamp with milliseconds
/// (`2026-11-23T10:00:30.123Z`), as the service writes `expires_at`.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, millis) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>());
    let (h, min, s) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let millis: i64 = millis.parse().ok()?;
    // Days from 1970-01-01 (the civil-from-days inverse, proleptic Gregorian).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + min) * 60_000 + s * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_timestamps_parse_to_unix_ms() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2026-11-18T11:06:40.345Z"),
            Some(1_795_000_000_345)
        );
        assert_eq!(parse_rfc3339_ms("not a time"), None);
    }
}
