//! Processes a test owns: its own `mariadbd` or `redis-server` (to stop and
//! restart them), or `middleway serve` (for kill -9 and several replicas).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sqlx::Executor;
use sqlx::mysql::MySqlPoolOptions;

use super::{TestCertificates, client, eventually, free_port, redis_connection, scratch_dir};

/// A child process a test owns: killed and reaped when dropped, and its
/// scratch directory (if any) removed.
pub struct OwnedProcess {
    child: Option<Child>,
    dir: Option<PathBuf>,
}

impl OwnedProcess {
    /// A process with no child yet, whose data lives in `dir`.
    pub fn in_dir(dir: PathBuf) -> Self {
        Self {
            child: None,
            dir: Some(dir),
        }
    }

    /// Spawns `command` (output discarded unless the command set it).
    pub fn spawn(command: &mut Command) -> Self {
        let mut process = Self {
            child: None,
            dir: None,
        };
        process.start(command);
        process
    }

    /// (Re)starts the process with `command`.
    pub fn start(&mut self, command: &mut Command) {
        self.kill();
        let child = command.spawn().expect("test process starts");
        self.child = Some(child);
    }

    /// The scratch directory.
    pub fn dir(&self) -> &Path {
        self.dir.as_deref().expect("a process with a scratch dir")
    }

    /// The running child's process id.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, SIGTERM...).
    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signal delivered");
    }

    /// Stops the process (SIGSTOP) and returns once every one of its
    /// threads has stopped: nothing it does afterwards happened before.
    pub fn pause(&self) {
        self.signal(Signal::SIGSTOP);
        let tasks = format!("/proc/{}/task", self.pid());
        let stopped = || {
            std::fs::read_dir(&tasks).is_ok_and(|threads| {
                threads.flatten().all(|thread| {
                    let stat =
                        std::fs::read_to_string(thread.path().join("stat")).unwrap_or_default();
                    // The state follows the command name, which ends with ')'.
                    stat.rsplit_once(") ")
                        .is_some_and(|(_, rest)| rest.starts_with(['T', 't']))
                })
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !stopped() {
            assert!(
                std::time::Instant::now() < deadline,
                "the process did not stop"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The child, for its exit status or output pipes.
    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("running")
    }

    /// SIGKILL (the harshest outage) and wait for the exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Probes with `answers` until it is true, the process exits, or
    /// `within` passes. Each probe gets at most 5 s: whatever holds the port
    /// may accept and never answer.
    pub async fn await_start(
        &mut self,
        within: Duration,
        mut answers: impl AsyncFnMut() -> bool,
    ) -> Started {
        let child = self.child.as_mut().expect("running");
        let mut exited = None;
        let answering = eventually(within, async || {
            exited = child.try_wait().expect("wait");
            exited.is_some()
                || tokio::time::timeout(Duration::from_secs(5), answers())
                    .await
                    .unwrap_or(false)
        })
        .await;
        match exited {
            Some(status) => Started::Exited(status),
            None if answering => Started::Answering,
            None => Started::Silent,
        }
    }
}

/// How a server's start ended.
pub enum Started {
    /// It answered.
    Answering,
    /// It exited first, with this status.
    Exited(ExitStatus),
    /// Neither, within the time allowed.
    Silent,
}

/// Whether a server's log says it could not bind a port another process
/// holds: picked ports can be taken between the pick and the bind.
pub fn lost_its_port(log: &str) -> bool {
    log.contains("Address already in use")
}

impl Drop for OwnedProcess {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A MariaDB server owned by one test, so the test can stop and restart it.
pub struct OwnMariaDb {
    pub port: u16,
    /// The loopback address it listens on (127.0.0.1 unless asked otherwise).
    pub address: String,
    process: OwnedProcess,
    /// Server options beyond the defaults (TLS, say).
    extra_args: Vec<String>,
}

impl OwnMariaDb {
    /// Initialises a data directory and starts the server.
    pub async fn start() -> Self {
        Self::start_with(Vec::new()).await
    }

    /// Like [`Self::start`], with more server options.
    pub async fn start_with(extra_args: Vec<String>) -> Self {
        Self::start_on(Port::Picked, "127.0.0.1", extra_args).await
    }

    /// Like [`Self::start_with`], listening on `address:port` (another
    /// loopback address lets two servers share a port, as the servers
    /// behind one DNS name do).
    pub async fn start_at(address: &str, port: u16, extra_args: Vec<String>) -> Self {
        Self::start_on(Port::Given(port), address, extra_args).await
    }

    async fn start_on(port: Port, address: &str, extra_args: Vec<String>) -> Self {
        let process = OwnedProcess::in_dir(scratch_dir("mariadb"));
        // A temporary folder of its own: bootstraps running at once in the
        // shared /tmp collide on temporary table names and abort.
        let tmp = process.dir().join("tmp");
        std::fs::create_dir_all(&tmp).expect("tmpdir");
        let status = Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .arg(format!(
                "--datadir={}",
                process.dir().join("data").display()
            ))
            .arg(format!("--tmpdir={}", tmp.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("mariadb-install-db runs");
        assert!(status.success(), "mariadb-install-db failed");
        let mut db = Self {
            port: port.first(),
            address: address.to_owned(),
            process,
            extra_args,
        };
        let mut attempts = 0;
        while let Err(lost) = db.start_server().await {
            assert!(
                port == Port::Picked,
                "own mariadbd could not bind its given port: {lost}"
            );
            attempts += 1;
            assert!(attempts < 5, "own mariadbd lost a picked port five times");
            eprintln!("{lost}; starting again on another port");
            db.port = free_port();
        }
        let root = MySqlPoolOptions::new()
            .max_connections(1)
            .connect(&db.root_url())
            .await
            .expect("root");
        root.execute("CREATE USER 'middleway'@'127.0.0.1' IDENTIFIED BY 'middleway'; GRANT ALL ON *.* TO 'middleway'@'127.0.0.1';").await.expect("create user");
        root.close().await;
        db
    }

    /// `mysql://middleway:middleway@<address>:<port>` (no database).
    pub fn admin_url(&self) -> String {
        format!("mysql://middleway:middleway@{}:{}", self.address, self.port)
    }

    /// `mysql://root@<address>:<port>`.
    pub fn root_url(&self) -> String {
        format!("mysql://root@{}:{}", self.address, self.port)
    }

    /// Starts the server again on its port and waits until it answers.
    pub async fn restart(&mut self) {
        if let Err(lost) = self.start_server().await {
            panic!("own mariadbd could not bind its port again: {lost}");
        }
    }

    /// Starts the server and waits until it answers: `Err` with its log
    /// when it exited because its port was in use; any other early exit,
    /// or no answer in 30 s, fails with its exit status and log.
    async fn start_server(&mut self) -> Result<(), String> {
        let dir = self.process.dir().to_owned();
        // The log of this start only: a restart appends to the same file.
        let earlier_log = self.error_log().len();
        let path = |name: &str| dir.join(name).display().to_string();
        self.process.start(
            Command::new("/usr/sbin/mariadbd")
                .args([
                    "--no-defaults",
                    "--user=root",
                    "--skip-name-resolve",
                    "--innodb-buffer-pool-size=32M",
                    "--log-warnings=4",
                ])
                .arg(format!("--bind-address={}", self.address))
                .arg(format!("--port={}", self.port))
                .arg(format!("--datadir={}", path("data")))
                .arg(format!("--socket={}", path("mysqld.sock")))
                .arg(format!("--pid-file={}", path("mysqld.pid")))
                .arg(format!("--log-error={}", path("error.log")))
                .arg(format!("--tmpdir={}", path("tmp")))
                .args(&self.extra_args)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let url = self.root_url();
        let started = self
            .process
            .await_start(
                Duration::from_secs(30),
                async || match MySqlPoolOptions::new()
                    .max_connections(1)
                    .connect(&url)
                    .await
                {
                    Ok(pool) => {
                        pool.close().await;
                        true
                    }
                    Err(_) => false,
                },
            )
            .await;
        let whole_log = self.error_log();
        let log = whole_log.get(earlier_log..).unwrap_or(&whole_log);
        match started {
            Started::Answering => Ok(()),
            Started::Exited(_) if lost_its_port(log) => Err(log.trim().to_owned()),
            Started::Exited(status) => {
                panic!("own mariadbd exited at startup ({status}); its log:\n{log}")
            }
            Started::Silent => panic!("own mariadbd did not answer within 30 s; its log:\n{log}"),
        }
    }

    /// Stops the server with SIGKILL and waits for it to exit.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// The server's error log (aborted connections are reported there).
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.process.dir().join("error.log")).unwrap_or_default()
    }

    /// A global status counter, read over a fresh root connection.
    pub async fn status(&self, name: &str) -> u64 {
        let pool = MySqlPoolOptions::new()
            .max_connections(1)
            .connect(&self.root_url())
            .await
            .expect("root");
        let value: String = sqlx::query_scalar(
            "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = ?",
        )
        .bind(name)
        .fetch_one(&pool)
        .await
        .expect("status");
        pool.close().await;
        value.parse().expect("numeric status")
    }
}

/// Whether a server's port was given by the test or picked by its helper
/// (which may then pick another when a different server took it first).
#[derive(Clone, Copy, PartialEq)]
enum Port {
    Picked,
    Given(u16),
}

impl Port {
    fn first(self) -> u16 {
        match self {
            Port::Picked => free_port(),
            Port::Given(port) => port,
        }
    }
}

/// A Redis server owned by one test, so the test can stop and restart it.
pub struct OwnRedis {
    pub port: u16,
    process: OwnedProcess,
    /// Serving TLS only, with a certificate this CA (a PEM file) signed.
    tls_ca: Option<PathBuf>,
    /// Server options beyond the defaults.
    extra_args: Vec<String>,
}

impl OwnRedis {
    /// Starts a throwaway redis-server on a free port.
    pub async fn start() -> Self {
        Self::start_with(Vec::new(), None).await
    }

    /// A replica of `primary` (it has the primary's data once it answers).
    pub async fn start_replica_of(primary: &OwnRedis) -> Self {
        Self::start_replica_of_port(primary.port).await
    }

    /// A replica of the primary reached at `127.0.0.1:<port>` (a proxy, say).
    pub async fn start_replica_of_port(port: u16) -> Self {
        let args = vec!["--replicaof".into(), "127.0.0.1".into(), port.to_string()];
        let replica = Self::start_with(args, None).await;
        let url = replica.url();
        let synced = eventually(Duration::from_secs(10), async || {
            let mut conn = redis_connection(&url).await.expect("replica answers");
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            info.contains("master_link_status:up")
        })
        .await;
        assert!(synced, "replica did not sync with its primary");
        replica
    }

    /// Serves TLS only (no plain port), certificates from `certs`.
    pub async fn start_tls(certs: &TestCertificates) -> Self {
        let path = |p: &Path| p.display().to_string();
        let args = vec![
            "--tls-cert-file".into(),
            path(&certs.server_cert),
            "--tls-key-file".into(),
            path(&certs.server_key),
            "--tls-ca-cert-file".into(),
            path(&certs.ca),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        Self::start_with(args, Some(certs.ca.clone())).await
    }

    /// Starts on a port picked here, and on another when a different server
    /// took it first.
    async fn start_with(extra_args: Vec<String>, tls_ca: Option<PathBuf>) -> Self {
        let mut redis = Self {
            port: free_port(),
            process: OwnedProcess::in_dir(scratch_dir("redis")),
            tls_ca,
            extra_args,
        };
        let mut attempts = 0;
        while let Err(lost) = redis.start_server().await {
            attempts += 1;
            assert!(
                attempts < 5,
                "own redis-server lost a picked port five times"
            );
            eprintln!("{lost}; starting again on another port");
            redis.port = free_port();
        }
        redis
    }

    /// The port of the shared Redis `scripts/services.sh` started.
    pub fn shared_port() -> u16 {
        super::redis_url()
            .rsplit(':')
            .next()
            .and_then(|tail| tail.split('/').next())
            .and_then(|port| port.parse().ok())
            .expect("a redis://host:port/db URL")
    }

    /// `redis://127.0.0.1:<port>/0`, or `rediss://` when serving TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls_ca.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    /// A connection from the test (verifying the server with the test CA).
    pub async fn connection(&self) -> Option<redis::aio::MultiplexedConnection> {
        connect(&self.url(), self.tls_ca.as_deref()).await
    }

    /// Starts the server again on its port (empty: no persistence) and waits
    /// until it answers.
    pub async fn restart(&mut self) {
        if let Err(lost) = self.start_server().await {
            panic!("own redis-server could not bind its port again: {lost}");
        }
    }

    /// Starts the server and waits until it answers: `Err` with its log
    /// when it exited because its port was in use; any other early exit,
    /// or no answer in 10 s, fails with its exit status and log.
    async fn start_server(&mut self) -> Result<(), String> {
        let dir = self.process.dir().to_owned();
        // A log per start: the one of an earlier start says nothing of this one.
        let log_path = dir.join("redis.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let (plain_port, tls_port) = match self.tls_ca {
            Some(_) => (0, self.port),
            None => (self.port, 0),
        };
        self.process.start(
            Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                // DEBUG SLEEP stalls the server, as a slow disk or a long command does.
                .args(["--enable-debug-command", "yes"])
                .arg("--port")
                .arg(plain_port.to_string())
                .arg("--tls-port")
                .arg(tls_port.to_string())
                .arg("--dir")
                .arg(&dir)
                .args(&self.extra_args)
                .stdout(log.try_clone().expect("log file"))
                .stderr(log),
        );
        let (url, ca) = (self.url(), self.tls_ca.clone());
        let started = self
            .process
            .await_start(Duration::from_secs(10), async || {
                connect(&url, ca.as_deref()).await.is_some()
            })
            .await;
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        match started {
            Started::Answering => Ok(()),
            Started::Exited(_) if lost_its_port(&log) => Err(log.trim().to_owned()),
            Started::Exited(status) => {
                panic!("own redis-server exited at startup ({status}); its log:\n{log}")
            }
            Started::Silent => {
                panic!("own redis-server did not answer within 10 s; its log:\n{log}")
            }
        }
    }

    /// Sends `signal` to the server (SIGSTOP makes it a replica that never acknowledges).
    pub fn signal(&self, signal: Signal) {
        self.process.signal(signal);
    }

    /// Kills the server and waits for it to exit.
    pub fn kill(&mut self) {
        self.process.kill();
    }
}

/// A connection from the test to the server at `url`, verified with the
/// CA in the PEM file `tls_ca` when given (`rediss://`).
pub async fn connect(
    url: &str,
    tls_ca: Option<&Path>,
) -> Option<redis::aio::MultiplexedConnection> {
    let Some(ca) = tls_ca else {
        return redis_connection(url).await;
    };
    let certificates = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(std::fs::read(ca).expect("test CA")),
    };
    let client = redis::Client::build_with_tls(url, certificates).ok()?;
    client.get_multiplexed_async_connection().await.ok()
}

/// A spawned `middleway serve` process (for kill -9 and multi-replica tests).
pub struct ServiceProcess {
    pub process: OwnedProcess,
    pub base: String,
    /// The admin listener, `http://127.0.0.1:PORT`.
    pub admin: String,
}

/// How a service is launched: the command (built afresh for each attempt)
/// and whether it speaks HTTPS.
struct Launch<'a> {
    command: &'a dyn Fn() -> Command,
    /// Whether this helper picks the admin port (the test named none).
    picks_admin: bool,
    https: Option<&'a super::TestCa>,
}

impl ServiceProcess {
    /// Starts the binary with `env` on a free port and waits until /readyz is 200.
    pub async fn start(env: HashMap<String, String>) -> Self {
        Self::launch(env, serve_command, None).await
    }

    /// Like [`Self::start`]; kept for the tests that read [`Self::logs`]
    /// (every service process keeps its output).
    pub async fn start_logged(env: HashMap<String, String>) -> Self {
        Self::start(env).await
    }

    /// The public listener's port.
    pub fn port(&self) -> u16 {
        let (_, port) = self.base.rsplit_once(':').expect("a base with a port");
        port.parse().expect("a port")
    }

    /// What the process wrote so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.process.dir().join("service.log")).unwrap_or_default()
    }

    /// Like [`Self::start`], the process moved into the cgroup whose
    /// `cgroup.procs` file is `procs` before the service runs (a shell
    /// writes its own pid there, then becomes the service).
    pub async fn start_in_cgroup(env: HashMap<String, String>, procs: &std::path::Path) -> Self {
        let command = || {
            let mut command = Command::new("/bin/sh");
            command
                .arg("-c")
                .arg(r#"echo $$ > "$1" && exec "$0" serve"#)
                .arg(env!("CARGO_BIN_EXE_middleway"))
                .arg(procs);
            command
        };
        Self::launch(env, command, None).await
    }

    /// Like [`Self::start`] for a service speaking HTTPS (`TLS_CERT_FILE` in
    /// `env`): readiness is asked through `https`, a client that trusts its
    /// certificate; `base` is `https://127.0.0.1:PORT`.
    pub async fn start_https(env: HashMap<String, String>, ca: &super::TestCa) -> Self {
        Self::launch(env, serve_command, Some(ca)).await
    }

    /// Starts the service on ports picked here (the admin port too, unless
    /// `env` names one) and waits for readiness. A port
    /// picked here can be taken by another test's server between the pick
    /// and the service's bind: then the service exits saying so, and it is
    /// started again on new ports. Any other early exit, or no readiness in
    /// 20 s, fails with the exit status and the service's output.
    async fn launch(
        env: HashMap<String, String>,
        command: impl Fn() -> Command,
        https: Option<&super::TestCa>,
    ) -> Self {
        let launch = Launch {
            command: &command,
            picks_admin: env
                .get("ADMIN_BIND_ADDR")
                .is_none_or(|address| address.ends_with(":0")),
            https,
        };
        for _ in 0..5 {
            let mut env = env.clone();
            if launch.picks_admin {
                env.insert(
                    "ADMIN_BIND_ADDR".into(),
                    format!("127.0.0.1:{}", free_port()),
                );
            }
            match Self::attempt(&launch, env).await {
                Ok(service) => return service,
                Err(lost_port) => eprintln!("{lost_port}; starting again on other ports"),
            }
        }
        panic!("the service lost a picked port to another server five times");
    }

    /// One start: the service, or what port it lost to another server.
    async fn attempt(
        launch: &Launch<'_>,
        mut env: HashMap<String, String>,
    ) -> Result<Self, String> {
        let port = free_port();
        env.insert("BIND_ADDR".into(), format!("127.0.0.1:{port}"));
        env.entry("RUST_LOG".into())
            .or_insert_with(|| "warn".into());
        let admin = format!("http://{}", env["ADMIN_BIND_ADDR"]);
        let dir = scratch_dir("service");
        let log = std::fs::File::create(dir.join("service.log")).expect("log file");
        let mut command = (launch.command)();
        command
            .env_clear()
            .envs(&env)
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        let mut process = OwnedProcess::in_dir(dir);
        process.start(&mut command);
        let http = client();
        let base = match launch.https {
            Some(_) => format!("https://127.0.0.1:{port}"),
            None => format!("http://127.0.0.1:{port}"),
        };
        let started = process
            .await_start(Duration::from_secs(20), async || match launch.https {
                Some(ca) => matches!(ca.https_request(port, "GET /readyz HTTP/1.1", "").await, Ok((200, _))),
                None => matches!(http.get(format!("{base}/readyz")).send().await, Ok(r) if r.status() == reqwest::StatusCode::OK),
            })
            .await;
        let service = Self {
            process,
            base,
            admin,
        };
        let logs = service.logs();
        match started {
            Started::Answering => Ok(service),
            Started::Silent => panic!("the service was not ready within 20 s; its output:\n{logs}"),
            Started::Exited(_) if lost_a_picked_port(&logs, launch, &env) => {
                Err(logs.trim().to_owned())
            }
            Started::Exited(status) => {
                panic!("the service exited at startup ({status}); its output:\n{logs}")
            }
        }
    }
}

fn serve_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_middleway"));
    command.arg("serve");
    command
}

/// Whether the service's output says that a listener it was given by this
/// helper (not by the test) was already in use.
fn lost_a_picked_port(logs: &str, launch: &Launch, env: &HashMap<String, String>) -> bool {
    let in_use = |variable: &str| {
        logs.contains(&format!(
            "{variable} {}: Address already in use",
            env[variable]
        ))
    };
    in_use("BIND_ADDR") || (launch.picks_admin && in_use("ADMIN_BIND_ADDR"))
}

/// Runs `middleway serve` with `env`, expecting it to stop at startup: its
/// exit code and standard error.
pub fn failed_start(env: &HashMap<String, String>) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_middleway"))
        .arg("serve")
        .env_clear()
        .envs(env)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("service starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the service did not stop at startup: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("output");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
