//! A Redis Cluster a test owns: six `redis-server --cluster-enabled yes`
//! (three primaries, three replicas) made into a cluster by `redis-cli
//! --cluster create`, with a short node timeout so failovers take seconds;
//! optionally speaking TLS only.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{
    OwnedProcess, Started, TestCertificates, connect, eventually, free_port, lost_its_port,
    scratch_dir,
};

/// One node: its port and process (its folder keeps `nodes.conf`, so a
/// restarted node rejoins the cluster).
struct Node {
    port: u16,
    /// The cluster bus port (by default port + 10,000, which may be past 65,535).
    bus_port: u16,
    process: OwnedProcess,
    /// `cluster-node-timeout`: how long a silent node takes to count as failed.
    timeout_ms: u64,
    /// TLS only (clients, replication and the cluster bus), with these files.
    tls: Option<TlsFiles>,
}

#[derive(Clone)]
struct TlsFiles {
    ca: String,
    cert: String,
    key: String,
}

/// A running cluster.
pub struct OwnCluster {
    nodes: Vec<Node>,
    /// The CA that verifies the nodes, when they speak TLS only.
    tls_ca: Option<String>,
}

/// What `CLUSTER NODES` says of one node.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub id: String,
    pub port: u16,
    pub primary: bool,
    /// The id of the primary this node replicates (replicas only).
    pub replica_of: Option<String>,
    /// Slots served, as (first, last) ranges (primaries only).
    pub slots: Vec<(u16, u16)>,
}

impl OwnCluster {
    /// Starts six nodes and creates the cluster; returns once every node
    /// says `cluster_state:ok`. Nodes count as failed after 5 s of silence:
    /// long enough that a machine busy with other tests causes no failover.
    pub async fn start() -> Self {
        Self::launch(5000, None).await
    }

    /// Like [`Self::start`], with failover after `timeout_ms` of silence.
    pub async fn start_with_node_timeout(timeout_ms: u64) -> Self {
        Self::launch(timeout_ms, None).await
    }

    /// Like [`Self::start`], every node speaking TLS only (clients,
    /// replication, cluster bus) with the test's certificates.
    pub async fn start_tls(certs: &TestCertificates) -> Self {
        let path = |p: &std::path::Path| p.display().to_string();
        let files = TlsFiles {
            ca: path(&certs.ca),
            cert: path(&certs.server_cert),
            key: path(&certs.server_key),
        };
        Self::launch(5000, Some(files)).await
    }

    async fn launch(timeout_ms: u64, tls: Option<TlsFiles>) -> Self {
        let mut nodes = Vec::new();
        let mut ports = distinct_free_ports(12).into_iter();
        for _ in 0..6 {
            let mut node = Node {
                port: ports.next().expect("port"),
                bus_port: ports.next().expect("port"),
                process: OwnedProcess::in_dir(scratch_dir("redis-cluster")),
                timeout_ms,
                tls: tls.clone(),
            };
            node.start();
            nodes.push(node);
        }
        let mut cluster = Self {
            nodes,
            tls_ca: tls.as_ref().map(|t| t.ca.clone()),
        };
        for n in 0..cluster.nodes.len() {
            cluster.await_node(n).await;
        }
        let mut create = Command::new("redis-cli");
        if let Some(ca) = &cluster.tls_ca {
            create.args(["--tls", "--cacert", ca]);
        }
        let status = create
            .arg("--cluster")
            .arg("create")
            .args(
                cluster
                    .nodes
                    .iter()
                    .map(|n| format!("127.0.0.1:{}", n.port)),
            )
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli runs");
        assert!(status.success(), "redis-cli --cluster create failed");
        cluster.wait_ok(&cluster.ports()).await;
        cluster
    }

    /// Waits until node `n` answers. A port picked for it can be taken by
    /// another server before it binds: then it starts again on two new
    /// ports (the cluster is not created yet, so no other node knows them).
    /// Any other early exit, or no answer in 10 s, fails with its log.
    async fn await_node(&mut self, n: usize) {
        for _ in 0..5 {
            let port = self.nodes[n].port;
            let ca = self.tls_ca.clone();
            let started = self.nodes[n]
                .process
                .await_start(Duration::from_secs(10), async || {
                    connect_node(port, ca.as_deref()).await.is_some()
                })
                .await;
            let log = self.nodes[n].log();
            match started {
                Started::Answering => return,
                Started::Exited(_) if lost_its_port(&log) => {
                    eprintln!("{}; starting again on other ports", log.trim());
                    let taken: Vec<u16> = self
                        .nodes
                        .iter()
                        .flat_map(|node| [node.port, node.bus_port])
                        .collect();
                    let fresh = distinct_free_ports_besides(2, &taken);
                    let node = &mut self.nodes[n];
                    (node.port, node.bus_port) = (fresh[0], fresh[1]);
                    node.start();
                }
                Started::Exited(status) => {
                    panic!("cluster node {port} exited at startup ({status}); its log:\n{log}")
                }
                Started::Silent => {
                    panic!("cluster node {port} did not answer within 10 s; its log:\n{log}")
                }
            }
        }
        panic!("cluster node lost its picked ports five times");
    }

    /// Every node's port.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// `REDIS_URL` for `REDIS_MODE=cluster`: every node as a seed.
    pub fn url(&self) -> String {
        let scheme = if self.tls_ca.is_some() {
            "rediss"
        } else {
            "redis"
        };
        self.nodes
            .iter()
            .map(|n| format!("{scheme}://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A connection to the node on `port` alone (TLS with the test CA if the
    /// cluster speaks TLS).
    pub async fn connection(&self, port: u16) -> Option<redis::aio::MultiplexedConnection> {
        connect_node(port, self.tls_ca.as_deref()).await
    }

    /// Waits until each of `ports` reports `cluster_state:ok` and sees three
    /// primaries and three replicas (gossip has settled every node's role).
    pub async fn wait_ok(&self, ports: &[u16]) {
        for &port in ports {
            let ok = eventually(Duration::from_secs(30), async || {
                let Some(mut conn) = self.connection(port).await else {
                    return false;
                };
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                let nodes: String = redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                let role = |r: &str| {
                    nodes
                        .lines()
                        .filter(|l| {
                            l.split_whitespace()
                                .nth(2)
                                .is_some_and(|f| f.split(',').any(|f| f == r))
                        })
                        .count()
                };
                info.contains("cluster_state:ok") && role("master") == 3 && role("slave") == 3
            })
            .await;
            if !ok {
                let mut conn = self.connection(port).await.expect("node answers");
                let ask = |what: &str| {
                    let mut cmd = redis::cmd("CLUSTER");
                    cmd.arg(what);
                    cmd
                };
                let info: String = ask("INFO").query_async(&mut conn).await.unwrap_or_default();
                let nodes: String = ask("NODES")
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                panic!("node {port} did not reach cluster_state:ok:\n{info}\n{nodes}");
            }
        }
    }

    /// The nodes as `port` sees them.
    pub async fn nodes(&self, port: u16) -> Vec<NodeInfo> {
        let mut conn = self.connection(port).await.expect("node");
        let text: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut conn)
            .await
            .expect("CLUSTER NODES");
        text.lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let port = fields.get(1)?.split(['@', ':']).nth(1)?.parse().ok()?;
                let flags = fields.get(2)?;
                // "fail" is a verdict; "fail?" only one node's suspicion.
                if flags.split(',').any(|f| f == "fail") {
                    return None;
                }
                let slots = fields[8..]
                    .iter()
                    .filter(|s| !s.starts_with('['))
                    .filter_map(|s| match s.split_once('-') {
                        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                        None => s.parse().ok().map(|one| (one, one)),
                    })
                    .collect();
                Some(NodeInfo {
                    id: fields[0].to_owned(),
                    port,
                    primary: flags.split(',').any(|f| f == "master"),
                    replica_of: fields
                        .get(3)
                        .filter(|id| **id != "-")
                        .map(|id| id.to_string()),
                    slots,
                })
            })
            .collect()
    }

    /// The hash slot of `key` (asked of the cluster, not recomputed).
    pub async fn slot_of(&self, key: &str) -> u16 {
        let mut conn = self.connection(self.nodes[0].port).await.expect("node");
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("KEYSLOT")
    }

    /// The primary serving `slot` now (as the node on `ask` sees it).
    pub async fn primary_of(&self, slot: u16, ask: u16) -> NodeInfo {
        self.serving(slot, ask)
            .await
            .expect("a primary serves the slot")
    }

    /// The live primary serving `slot`, if any (none during a failover).
    pub async fn serving(&self, slot: u16, ask: u16) -> Option<NodeInfo> {
        self.nodes(ask)
            .await
            .into_iter()
            .find(|n| n.primary && n.slots.iter().any(|&(a, b)| a <= slot && slot <= b))
    }

    /// kill -9 of the node on `port`.
    pub fn kill(&mut self, port: u16) {
        self.node(port).process.kill();
    }

    /// Starts the node on `port` again with its `nodes.conf` (it rejoins,
    /// as a replica if it was failed over).
    pub fn restart(&mut self, port: u16) {
        self.node(port).start();
    }

    /// Moves `slot` and its keys from its primary to the primary on `to`,
    /// as `redis-cli --cluster reshard` does: IMPORTING / MIGRATING, MIGRATE
    /// key by key (clients meanwhile get ASK), then the slot's new owner is
    /// announced to every primary.
    pub async fn move_slot(&self, slot: u16, to: u16) {
        let from = self.primary_of(slot, to).await;
        let target = self
            .nodes(to)
            .await
            .into_iter()
            .find(|n| n.port == to)
            .expect("target node");
        assert!(
            target.primary && from.port != to,
            "moving slot {slot} from {from:?} to {target:?}"
        );
        let mut source = self.connection(from.port).await.unwrap();
        let mut destination = self.connection(to).await.unwrap();
        let setslot = |state: &str, id: &str| {
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("SETSLOT").arg(slot).arg(state).arg(id);
            cmd
        };
        let _: () = setslot("IMPORTING", &from.id)
            .query_async(&mut destination)
            .await
            .unwrap();
        let _: () = setslot("MIGRATING", &target.id)
            .query_async(&mut source)
            .await
            .unwrap();
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(100)
                .query_async(&mut source)
                .await
                .unwrap();
            if keys.is_empty() {
                break;
            }
            let _: () = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .query_async(&mut source)
                .await
                .unwrap();
        }
        let primaries: Vec<u16> = self
            .nodes(to)
            .await
            .into_iter()
            .filter(|n| n.primary && !n.slots.is_empty())
            .map(|n| n.port)
            .collect();
        for port in primaries {
            let mut conn = self.connection(port).await.unwrap();
            let _: () = setslot("NODE", &target.id)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }

    /// How many keys under `prefix` each primary holds, by port.
    pub async fn keys_per_primary(&self, prefix: &str) -> HashMap<u16, usize> {
        let mut counts = HashMap::new();
        for node in self.nodes(self.nodes[0].port).await {
            if !node.primary || node.slots.is_empty() {
                continue;
            }
            let mut conn = self.connection(node.port).await.unwrap();
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{prefix}*"))
                .query_async(&mut conn)
                .await
                .unwrap();
            counts.insert(node.port, keys.len());
        }
        counts
    }

    fn node(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster")
    }
}

impl Node {
    fn start(&mut self) {
        let dir = self.process.dir().to_owned();
        // A log per start: an earlier start's says nothing of this one.
        let log = std::fs::File::create(dir.join("redis.log")).expect("log file");
        let (plain, tls) = match &self.tls {
            Some(_) => (0, self.port),
            None => (self.port, 0),
        };
        let mut tls_args = Vec::new();
        if let Some(files) = &self.tls {
            tls_args.extend([
                "--tls-cluster",
                "yes",
                "--tls-replication",
                "yes",
                "--tls-auth-clients",
                "no",
                "--tls-ca-cert-file",
                &files.ca,
                "--tls-cert-file",
                &files.cert,
                "--tls-key-file",
                &files.key,
            ]);
        }
        self.process.start(
            Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .arg("--cluster-node-timeout")
                .arg(self.timeout_ms.to_string())
                .arg("--port")
                .arg(plain.to_string())
                .arg("--tls-port")
                .arg(tls.to_string())
                .args(&tls_args)
                .arg("--cluster-port")
                .arg(self.bus_port.to_string())
                .arg("--dir")
                .arg(&dir)
                .stdout(log.try_clone().expect("log file"))
                .stderr(log),
        );
    }

    /// What the node wrote since its last start.
    fn log(&self) -> String {
        std::fs::read_to_string(self.process.dir().join("redis.log")).unwrap_or_default()
    }
}

/// `n` distinct loopback ports, free now.
fn distinct_free_ports(n: usize) -> Vec<u16> {
    distinct_free_ports_besides(n, &[])
}

/// `n` distinct loopback ports, free now and none of `taken`.
fn distinct_free_ports_besides(n: usize, taken: &[u16]) -> Vec<u16> {
    let mut ports = Vec::new();
    while ports.len() < n {
        let port = free_port();
        if !ports.contains(&port) && !taken.contains(&port) {
            ports.push(port);
        }
    }
    ports
}

/// A connection from the test to the node on `port` (TLS with the CA in
/// the PEM file `tls_ca`, when given).
async fn connect_node(
    port: u16,
    tls_ca: Option<&str>,
) -> Option<redis::aio::MultiplexedConnection> {
    match tls_ca {
        Some(ca) => connect(&format!("rediss://127.0.0.1:{port}"), Some(Path::new(ca))).await,
        None => connect(&node_url(port), None).await,
    }
}

fn node_url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}")
}
