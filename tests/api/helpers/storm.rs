//! Lock storms: many clients on several replicas taking a few locks, with
//! random hang-ups, checked by an independent recorder of critical sections.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::RngExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{TEST_KEY, client, unix_ms, unix_ms_now};

/// Who is inside each critical section, per incarnation of each lock (a
/// token's first part): exclusion holds and fences grow within an
/// incarnation, among grants whose leases have not ended; across a data
/// loss fences must still grow.
///
/// A lease ends at its `expires_at` (Redis' clock, which is this machine's)
/// whether or not its holder is done: a grant the client reads after that
/// (a busy machine can take longer than a 2 s lease to deliver a response)
/// promises nothing, and a later grant to another client is no violation.
#[derive(Default)]
pub struct Recorder {
    /// Per lock and incarnation, the fences inside and when their leases end (Unix ms).
    inside: HashMap<(String, String), HashMap<u64, i64>>,
    last_fence: HashMap<(String, String), u64>,
    seen: HashSet<(String, u64)>,
    /// Per lock, (incarnation, fence) in the order they entered.
    fences: HashMap<String, Vec<(String, u64)>>,
    /// Every broken promise, in words.
    pub violations: Vec<String>,
    /// Critical sections entered.
    pub entries: usize,
    /// Grants whose lease had ended when the client read them (not entered).
    pub expired_on_arrival: usize,
}

fn incarnation(token: &str) -> String {
    token.split('.').next().unwrap_or_default().to_owned()
}

impl Recorder {
    /// Records a grant the client just read; `false` when its lease had
    /// already ended (the client must not use it, and does not).
    fn enter(
        &mut self,
        name: &str,
        permits: usize,
        token: &str,
        fence: u64,
        expires_ms: i64,
    ) -> bool {
        let key = (name.to_owned(), incarnation(token));
        if !self.seen.insert((name.to_owned(), fence)) {
            self.violations
                .push(format!("{name}: fence {fence} granted twice"));
        }
        self.fences
            .entry(name.to_owned())
            .or_default()
            .push((key.1.clone(), fence));
        let now = unix_ms_now();
        if now >= expires_ms {
            self.expired_on_arrival += 1;
            return false;
        }
        self.entries += 1;
        let inside = self.inside.entry(key.clone()).or_default();
        inside.retain(|_, lease_end| *lease_end > now);
        if inside.len() >= permits {
            self.violations.push(format!(
                "{name}: fence {fence} (lease to {expires_ms}) entered at {now} with \
                 {inside:?} inside (fence: lease end; permits {permits})"
            ));
        }
        inside.insert(fence, expires_ms);
        let last = self.last_fence.entry(key).or_default();
        if permits == 1 && fence <= *last {
            self.violations
                .push(format!("{name}: fence {fence} after {last}"));
        }
        *last = (*last).max(fence);
        true
    }

    fn leave(&mut self, name: &str, token: &str, fence: u64) {
        if let Some(inside) = self.inside.get_mut(&(name.to_owned(), incarnation(token))) {
            inside.remove(&fence);
        }
    }

    /// Critical sections entered on `name` so far.
    pub fn entries_of(&self, name: &str) -> usize {
        self.fences.get(name).map_or(0, Vec::len)
    }

    /// How many incarnations of each lock were granted from (more than one
    /// means Redis lost the lock's data at some point).
    pub fn incarnations(&self) -> HashMap<String, usize> {
        self.fences
            .iter()
            .map(|(name, grants)| {
                let distinct: HashSet<&String> = grants.iter().map(|(i, _)| i).collect();
                (name.clone(), distinct.len())
            })
            .collect()
    }

    /// Every fence of a later incarnation is above every fence of an earlier one.
    pub fn check_incarnations(&mut self) {
        for (name, grants) in &self.fences {
            let mut order: Vec<String> = Vec::new();
            let mut range: HashMap<String, (u64, u64)> = HashMap::new();
            for (incarnation, fence) in grants {
                if !order.contains(incarnation) {
                    order.push(incarnation.clone());
                }
                let r = range.entry(incarnation.clone()).or_insert((u64::MAX, 0));
                *r = (r.0.min(*fence), r.1.max(*fence));
            }
            for pair in order.windows(2) {
                let (earlier, later) = (range[&pair[0]], range[&pair[1]]);
                if later.0 <= earlier.1 {
                    self.violations.push(format!(
                        "{name}: incarnation {} starts at fence {} below {}",
                        pair[1], later.0, earlier.1
                    ));
                }
            }
        }
    }
}

/// A running storm.
pub struct Storm {
    clients: tokio::task::JoinSet<()>,
    /// The independent checker.
    pub recorder: Arc<Mutex<Recorder>>,
    /// Requests the clients gave up on mid-wait (they hang up).
    pub hang_ups: Arc<AtomicUsize>,
    /// Replicas before this index are no longer used (killed ones).
    pub first_live: Arc<AtomicUsize>,
}

impl Storm {
    /// `clients` clients loop for `duration` over `names` (name, permits),
    /// each request to a random live replica of `bases`: acquire (2 s wait,
    /// 2 s lease; one in ten hangs up after 5–200 ms), a critical section of
    /// 0–3 ms, release.
    pub fn start(
        bases: Vec<String>,
        names: Vec<(String, usize)>,
        clients: usize,
        duration: Duration,
    ) -> Self {
        let storm = Self {
            clients: tokio::task::JoinSet::new(),
            recorder: Arc::default(),
            hang_ups: Arc::default(),
            first_live: Arc::default(),
        };
        let (bases, names) = (Arc::new(bases), Arc::new(names));
        let ends = Instant::now() + duration;
        let mut storm = storm;
        for c in 0..clients {
            let (bases, names) = (bases.clone(), names.clone());
            let (recorder, hang_ups, first_live) = (
                storm.recorder.clone(),
                storm.hang_ups.clone(),
                storm.first_live.clone(),
            );
            storm.clients.spawn(async move {
                let http = client();
                let (name, permits) = names[c % names.len()].clone();
                let pick = || {
                    let first = first_live.load(Ordering::Relaxed);
                    bases[rand::rng().random_range(first..bases.len())].clone()
                };
                while Instant::now() < ends {
                    let body = json!({"op": "acquire", "name": name, "permits": permits, "wait_ms": 2000, "lease_ms": 2000});
                    let mut request = http.post(format!("{}/locks", pick())).bearer_auth(TEST_KEY).json(&body);
                    if rand::rng().random_bool(0.1) {
                        request = request.timeout(Duration::from_millis(rand::rng().random_range(5..200)));
                    }
                    let response = match request.send().await {
                        Ok(response) if response.status() == StatusCode::OK => response,
                        Ok(_) => continue,
                        Err(e) => {
                            if e.is_timeout() {
                                hang_ups.fetch_add(1, Ordering::Relaxed);
                            }
                            continue;
                        }
                    };
                    let Ok(grant) = response.json::<Value>().await else { continue };
                    let (Some(token), Some(fence), Some(expires_at)) = (grant["token"].as_str(), grant["fence"].as_u64(), grant["expires_at"].as_str()) else { continue };
                    let token = token.to_owned();
                    if !recorder.lock().unwrap().enter(&name, permits, &token, fence, unix_ms(expires_at)) {
                        continue;
                    }
                    let section = Duration::from_millis(rand::rng().random_range(0..3));
                    tokio::time::sleep(section).await;
                    recorder.lock().unwrap().leave(&name, &token, fence);
                    let release = json!({"op": "release", "name": name, "token": token});
                    // Any live replica may release; another one if this one was just killed.
                    for _ in 0..3 {
                        let url = format!("{}/locks", pick());
                        if http.post(url).bearer_auth(TEST_KEY).json(&release).send().await.is_ok() {
                            break;
                        }
                    }
                }
            });
        }
        storm
    }

    /// Waits for every client, then checks the record: no violation, and at
    /// least `min_entries` critical sections.
    pub async fn finish(mut self, min_entries: usize) -> usize {
        while let Some(outcome) = self.clients.join_next().await {
            outcome.unwrap();
        }
        let mut recorder = self.recorder.lock().unwrap();
        eprintln!(
            "storm: {} critical sections ran; {} grants read after their lease ended",
            recorder.entries, recorder.expired_on_arrival
        );
        recorder.check_incarnations();
        assert!(
            recorder.violations.is_empty(),
            "violations: {:#?}",
            recorder.violations
        );
        assert!(
            recorder.entries >= min_entries,
            "only {} critical sections ran",
            recorder.entries
        );
        self.hang_ups.load(Ordering::Relaxed)
    }
}
