//! The system under test, all on loopback: a MariaDB (the services need one;
//! the fenced rows live there), a Redis primary with a replica (following
//! through a link the nemesis can cut), and the service replicas, each
//! reaching Redis through a proxy of its own.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::proxy::Proxy;

/// A free loopback port (bound, then released).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A child process, killed when dropped.
struct Owned(Option<Child>);

impl Owned {
    fn pid(&self) -> Option<Pid> {
        self.0.as_ref().map(|c| Pid::from_raw(c.id() as i32))
    }

    fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(pid, signal);
        }
    }

    /// SIGKILL, and reaped.
    fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `ready()` or `within` passes.
async fn until(within: Duration, mut ready: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if ready().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A MariaDB of the run's own.
pub struct MariaDb {
    pub port: u16,
    _process: Owned,
}

impl MariaDb {
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let data = dir.join("mariadb");
        let tmp = data.join("tmp");
        std::fs::create_dir_all(&tmp)?;
        let status = Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .arg(format!("--datadir={}", data.join("data").display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("mariadb-install-db (scripts/services.sh installs MariaDB)")?;
        if !status.success() {
            bail!("mariadb-install-db failed");
        }
        let port = free_port()?;
        let path = |name: &str| data.join(name).display().to_string();
        let child = Command::new("/usr/sbin/mariadbd")
            .args([
                "--no-defaults",
                "--user=root",
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=32M",
                "--innodb-flush-log-at-trx-commit=2",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--datadir={}", path("data")))
            .arg(format!("--socket={}", path("mysqld.sock")))
            .arg(format!("--pid-file={}", path("mysqld.pid")))
            .arg(format!("--log-error={}", path("error.log")))
            .arg(format!("--tmpdir={}", tmp.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let db = Self {
            port,
            _process: Owned(Some(child)),
        };
        let url = db.url("mysql");
        let up = until(Duration::from_secs(30), async || {
            sqlx::MySqlPool::connect(&url).await.is_ok()
        })
        .await;
        if !up {
            bail!("MariaDB did not come up (see {})", path("error.log"));
        }
        Ok(db)
    }

    /// `mysql://root@127.0.0.1:<port>/<database>`.
    pub fn url(&self, database: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{database}", self.port)
    }
}

/// One redis-server.
pub struct RedisServer {
    pub port: u16,
    process: Owned,
}

impl RedisServer {
    /// A server (a replica of `127.0.0.1:<primary>` if given), empty, no persistence.
    pub async fn start(dir: &Path, replica_of: Option<u16>) -> anyhow::Result<Self> {
        let port = free_port()?;
        let data = dir.join(format!("redis-{port}"));
        std::fs::create_dir_all(&data)?;
        let mut command = Command::new("redis-server");
        command
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--enable-debug-command", "yes", "--maxclients", "10000"])
            .arg("--port")
            .arg(port.to_string())
            .arg("--dir")
            .arg(&data)
            .arg("--logfile")
            .arg(data.join("redis.log"));
        if let Some(primary) = replica_of {
            command
                .arg("--replicaof")
                .arg("127.0.0.1")
                .arg(primary.to_string());
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("redis-server (scripts/services.sh installs Redis)")?;
        let server = Self {
            port,
            process: Owned(Some(child)),
        };
        let url = server.url();
        let up = until(Duration::from_secs(10), async || {
            let Ok(client) = redis::Client::open(url.as_str()) else {
                return false;
            };
            let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                return false;
            };
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            replica_of.is_none() || info.contains("master_link_status:up")
        })
        .await;
        if !up {
            bail!("redis-server on {port} did not come up");
        }
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn kill(&mut self) {
        self.process.kill();
    }
}

/// A connection to the Redis at `url` with no reply timeout (DEBUG SLEEP).
pub async fn redis_connection(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(None);
    Ok(client
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

/// The Redis side: a primary, a replica following it through `link`, and
/// the port every service proxy forwards to (the primary's, moved on a failover).
pub struct RedisPair {
    pub primary: RedisServer,
    pub replica: RedisServer,
    /// The replica's way to its primary: cut it and the replica falls behind.
    link: Arc<Proxy>,
    link_target: Arc<AtomicU16>,
    /// Where the services' proxies forward.
    pub target: Arc<AtomicU16>,
    dir: PathBuf,
}

impl RedisPair {
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let primary = RedisServer::start(dir, None).await?;
        let link_target = Arc::new(AtomicU16::new(primary.port));
        let link = Proxy::start(Arc::clone(&link_target)).await?;
        let replica = RedisServer::start(dir, Some(link.port)).await?;
        Ok(Self {
            target: Arc::new(AtomicU16::new(primary.port)),
            primary,
            replica,
            link,
            link_target,
            dir: dir.to_owned(),
        })
    }

    /// The replica stops following: its link goes nowhere, and reconnects fail.
    pub fn cut_link(&self) -> anyhow::Result<()> {
        self.link_target.store(free_port()?, Ordering::SeqCst);
        self.link.reset_all();
        Ok(())
    }

    /// The primary dies and the replica (lagging, if the link was cut) is
    /// promoted; the services' proxies forward to it and drop what they
    /// carried. A new empty server then follows the new primary.
    pub async fn fail_over(&mut self, proxies: &[Arc<Proxy>]) -> anyhow::Result<()> {
        self.primary.kill();
        let mut promoted = redis_connection(&self.replica.url()).await?;
        let _: String = redis::cmd("REPLICAOF")
            .arg("NO")
            .arg("ONE")
            .query_async(&mut promoted)
            .await?;
        self.target.store(self.replica.port, Ordering::SeqCst);
        for proxy in proxies {
            proxy.reset_all();
        }
        self.link_target.store(self.replica.port, Ordering::SeqCst);
        let follower = RedisServer::start(&self.dir, Some(self.link.port)).await?;
        self.primary = std::mem::replace(&mut self.replica, follower);
        Ok(())
    }

    /// The current primary's URL.
    pub fn primary_url(&self) -> String {
        self.primary.url()
    }
}

/// One `middleway serve` replica.
pub struct Service {
    pub index: usize,
    pub port: u16,
    process: Owned,
    env: HashMap<String, String>,
    log: PathBuf,
    binary: PathBuf,
    stopped: bool,
}

impl Service {
    /// Starts replica `index` with `env` (its Redis is `proxy`) and waits until it is ready.
    pub async fn start(
        index: usize,
        binary: &Path,
        mut env: HashMap<String, String>,
        proxy: &Proxy,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let (port, admin_port) = (free_port()?, free_port()?);
        env.insert(
            "REDIS_URL".into(),
            format!("redis://127.0.0.1:{}/0", proxy.port),
        );
        env.insert("BIND_ADDR".into(), format!("127.0.0.1:{port}"));
        env.insert("ADMIN_BIND_ADDR".into(), format!("127.0.0.1:{admin_port}"));
        let mut service = Self {
            index,
            port,
            process: Owned(None),
            env,
            log: dir.join(format!("service-{index}.log")),
            binary: binary.to_owned(),
            stopped: false,
        };
        service.launch().await?;
        Ok(service)
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.binary)
            .arg("serve")
            .env_clear()
            .envs(&self.env)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("{} serve", self.binary.display()))?;
        self.process = Owned(Some(child));
        self.stopped = false;
        let ready = format!("{}/readyz", self.base());
        let http = reqwest::Client::new();
        let up = until(
            Duration::from_secs(30),
            async || matches!(http.get(&ready).send().await, Ok(r) if r.status().is_success()),
        )
        .await;
        if !up {
            bail!(
                "service replica {} did not become ready (see {})",
                self.index,
                self.log.display()
            );
        }
        Ok(())
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// kill -9.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts it again, on the same ports.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.launch().await
    }

    /// SIGSTOP (returns once every thread has stopped).
    pub fn pause(&mut self) {
        self.process.signal(Signal::SIGSTOP);
        self.stopped = true;
        let Some(pid) = self.process.pid() else {
            return;
        };
        let tasks = format!("/proc/{pid}/task");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !all_stopped(&tasks) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGCONT.
    pub fn resume(&mut self) {
        if self.stopped {
            self.process.signal(Signal::SIGCONT);
            self.stopped = false;
        }
    }

    /// SIGTERM and wait for the drain to end (between phases).
    pub async fn stop(&mut self) {
        self.resume();
        self.process.signal(Signal::SIGTERM);
        if let Some(mut child) = self.process.0.take() {
            let waited = tokio::task::spawn_blocking(move || {
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
            });
            let _ = waited.await;
        }
    }

    /// The same replica with one setting changed (applies at the next start).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.insert(key.into(), value.into());
    }
}

fn all_stopped(tasks: &str) -> bool {
    std::fs::read_dir(tasks).is_ok_and(|threads| {
        threads.flatten().all(|thread| {
            let stat = std::fs::read_to_string(thread.path().join("stat")).unwrap_or_default();
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with(['T', 't']))
        })
    })
}
