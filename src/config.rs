//! Settings read from the environment (see API.md, "Configuration"), with
//! defaults, validation and secrets that never reach a log line.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use sqlx::ConnectOptions;
use sqlx::mysql::MySqlConnectOptions;

use crate::auth::aws::StsEndpoints;
use crate::auth::keys::{ApiKey, ApiKeys};

/// A start-up configuration error: names the variable, never its value.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub variable: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    /// An error naming `variable`.
    pub fn new(variable: &'static str, message: impl Into<String>) -> Self {
        Self {
            variable,
            message: message.into(),
        }
    }
}

/// A string that prints as `[redacted]` in `Debug`, so URLs with passwords
/// cannot leak through a `?settings` in a log line.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// The secret value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// `LOCK_REPLICA_ACKS` and `LOCK_REPLICA_ACK_TIMEOUT_MS`: how many Redis
/// replicas must acknowledge a lock change (WAIT) before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaAcks {
    /// Replicas that must have the change; 0 answers without waiting.
    pub replicas: u32,
    /// How long WAIT may block before the change counts as unconfirmed.
    pub timeout: Duration,
}

impl ReplicaAcks {
    /// Answer as soon as the primary has the change (the default).
    pub const OFF: Self = Self {
        replicas: 0,
        timeout: Duration::from_millis(100),
    };
}

/// The public listener's certificate chain and key (PEM files). Both or
/// neither; each must be readable at startup (whether they hold a usable pair
/// is checked when they are loaded, see `http::tls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
}

impl ListenerTls {
    fn from_lookup(var: &impl Fn(&str) -> Option<String>) -> Result<Option<Self>, ConfigError> {
        let (cert, key) = (var("TLS_CERT_FILE"), var("TLS_KEY_FILE"));
        let (cert_file, key_file) = match (cert, key) {
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (cert.trim().into(), key.trim().into()),
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "TLS_KEY_FILE",
                    "is required with TLS_CERT_FILE",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "TLS_CERT_FILE",
                    "is required with TLS_KEY_FILE",
                ));
            }
        };
        for (variable, path) in [("TLS_CERT_FILE", &cert_file), ("TLS_KEY_FILE", &key_file)] {
            std::fs::File::open(path).map_err(|e| {
                ConfigError::new(variable, format!("cannot read the file: {}", e.kind()))
            })?;
        }
        Ok(Some(Self {
            cert_file,
            key_file,
        }))
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (production).
    Json,
    /// Human-readable, coloured (local use).
    Pretty,
}

/// Everything `middleway serve` needs, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// MySQL: where, and how many connections.
    pub database: DatabaseSettings,
    /// Redis connection URL (`redis://`, or `rediss://` for TLS).
    pub redis_url: Secret,
    /// `REDIS_MODE=cluster`: `redis_url` lists a Redis Cluster's seed nodes.
    pub redis_cluster: bool,
    /// PEM bundle that verifies the Redis server's certificate (`REDIS_TLS_CA_FILE`).
    pub redis_tls_ca_file: Option<std::path::PathBuf>,
    /// Redis replicas that must hold a grant, extend or release before it is answered.
    pub lock_replica_acks: ReplicaAcks,
    /// Public listener.
    pub bind_addr: SocketAddr,
    /// HTTPS on the public listener (`TLS_CERT_FILE`, `TLS_KEY_FILE`).
    pub listener_tls: Option<ListenerTls>,
    /// Admin listener (`/metrics`).
    pub admin_bind_addr: SocketAddr,
    /// Accepted bearer keys (`API_KEYS`, `API_KEYS_FILE`).
    pub api_keys: ApiKeys,
    /// Principals, scopes and limits (`AUTH_FILE`), re-read when it changes.
    pub auth_file: Option<std::path::PathBuf>,
    /// Serve without keys (local use only).
    pub auth_disabled: bool,
    /// `AUTH_AWS_AUDIENCE`: IAM tokens must be signed for it (IAM off without).
    pub aws_audience: Option<String>,
    /// `AUTH_AWS_STS_ENDPOINTS`; `None`: AWS's own STS endpoints.
    pub aws_sts_endpoints: Option<StsEndpoints>,
    /// Pooled Redis connections for non-blocking commands.
    pub redis_pool_max: usize,
    /// HTTP worker threads (`WORKERS`); `None`: the cores the process may
    /// use (see `startup`).
    pub workers: Option<usize>,
    /// Most lock requests waiting at once before 503.
    pub lock_max_waiters: usize,
    /// Prefix of every Redis key the service writes.
    pub redis_key_prefix: String,
    /// Drain time after SIGTERM (after the delay below).
    pub shutdown_timeout: Duration,
    /// After SIGTERM, how long the replica keeps serving while unready, so
    /// endpoints and load balancers stop sending to it before it drains.
    pub shutdown_delay: Duration,
    /// Most requests in flight on this replica before shedding with 503.
    pub max_in_flight: usize,
    /// Log output format.
    pub log_format: LogFormat,
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let var = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let database = DatabaseSettings::from_lookup(&lookup)?;
        let redis_url = require_url(&var, "REDIS_URL", &["redis", "rediss"])?;
        let redis_tls_ca_file = var("REDIS_TLS_CA_FILE").map(|path| path.trim().into());
        if redis_tls_ca_file.is_some() && !redis_url.expose().starts_with("rediss://") {
            return Err(ConfigError::new(
                "REDIS_TLS_CA_FILE",
                "is set but REDIS_URL is not a rediss:// (TLS) URL",
            ));
        }
        let redis_cluster = match var("REDIS_MODE").as_deref().map(str::trim) {
            None | Some("standalone") => false,
            Some("cluster") => true,
            Some(_) => {
                return Err(ConfigError::new(
                    "REDIS_MODE",
                    "must be `standalone` or `cluster`",
                ));
            }
        };
        let lock_replica_acks = ReplicaAcks {
            replicas: parse_range(var("LOCK_REPLICA_ACKS"), "LOCK_REPLICA_ACKS", 0, 0, 16)?,
            timeout: Duration::from_millis(parse_range(
                var("LOCK_REPLICA_ACK_TIMEOUT_MS"),
                "LOCK_REPLICA_ACK_TIMEOUT_MS",
                100,
                1,
                10_000,
            )?),
        };
        let auth_disabled = parse_bool(var("AUTH_DISABLED"), "AUTH_DISABLED")?;
        let mut keys = Vec::new();
        if let Some(list) = var("API_KEYS") {
            keys.extend(parse_key_lines(list.split(','), "API_KEYS")?);
        }
        if let Some(path) = var("API_KEYS_FILE") {
            let text = std::fs::read_to_string(path.trim()).map_err(|e| {
                ConfigError::new(
                    "API_KEYS_FILE",
                    format!("cannot read the file: {}", e.kind()),
                )
            })?;
            keys.extend(parse_key_lines(text.lines(), "API_KEYS_FILE")?);
        }
        let auth_file: Option<std::path::PathBuf> = var("AUTH_FILE").map(|path| path.trim().into());
        let aws_audience = var("AUTH_AWS_AUDIENCE").map(|a| a.trim().to_owned());
        let aws_sts_endpoints = var("AUTH_AWS_STS_ENDPOINTS")
            .map(|list| StsEndpoints::parse(&list))
            .transpose()
            .map_err(|why| ConfigError::new("AUTH_AWS_STS_ENDPOINTS", why))?;
        if keys.is_empty() && auth_file.is_none() && !auth_disabled {
            return Err(ConfigError::new(
                "API_KEYS",
                "no API keys configured (set API_KEYS, API_KEYS_FILE or AUTH_FILE, or AUTH_DISABLED=true for local use)",
            ));
        }
        let log_format = parse_log_format(var("LOG_FORMAT").as_deref())?;
        let redis_key_prefix = var("REDIS_KEY_PREFIX").unwrap_or_else(|| "mw:".to_owned());
        // Lock scripts embed the prefix in the lists they keep (wake keys in
        // watcher lists), and braces would change Redis Cluster hash tags.
        if redis_key_prefix.len() > 64
            || !redis_key_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        {
            return Err(ConfigError::new(
                "REDIS_KEY_PREFIX",
                "must be at most 64 characters of [A-Za-z0-9._:-]",
            ));
        }
        let workers = parse_workers(var("WORKERS"), database.pool_max)?;
        let listener_tls = ListenerTls::from_lookup(&var)?;
        Ok(Self {
            listener_tls,
            database,
            redis_url,
            redis_cluster,
            redis_tls_ca_file,
            lock_replica_acks,
            bind_addr: parse_addr(var("BIND_ADDR"), "BIND_ADDR", "0.0.0.0:8080")?,
            admin_bind_addr: parse_addr(var("ADMIN_BIND_ADDR"), "ADMIN_BIND_ADDR", "0.0.0.0:9090")?,
            api_keys: ApiKeys::new(keys),
            auth_file,
            auth_disabled,
            aws_audience,
            aws_sts_endpoints,
            redis_pool_max: parse_range(var("REDIS_POOL_MAX"), "REDIS_POOL_MAX", 32, 1, 1000)?,
            workers,
            lock_max_waiters: parse_range(
                var("LOCK_MAX_WAITERS"),
                "LOCK_MAX_WAITERS",
                10_000,
                1,
                1_000_000,
            )?,
            redis_key_prefix,
            shutdown_timeout: Duration::from_secs(parse_range(
                var("SHUTDOWN_TIMEOUT_S"),
                "SHUTDOWN_TIMEOUT_S",
                25,
                0,
                3600,
            )?),
            shutdown_delay: Duration::from_secs(parse_range(
                var("SHUTDOWN_DELAY_S"),
                "SHUTDOWN_DELAY_S",
                0,
                0,
                300,
            )?),
            max_in_flight: parse_range(
                var("MAX_IN_FLIGHT"),
                "MAX_IN_FLIGHT",
                20_000,
                1,
                1_000_000,
            )?,
            log_format,
        })
    }
}

/// The MySQL side of the settings: `serve`, `migrate` and `seed` all read it
/// here, so `DATABASE_URL` is parsed in one place.
#[derive(Clone)]
pub struct DatabaseSettings {
    /// Parsed `DATABASE_URL` (carries the password: never printed).
    options: MySqlConnectOptions,
    /// Most MySQL connections this replica opens.
    pub pool_max: u32,
    /// Wait for a pooled MySQL connection before answering 503.
    pub acquire_timeout: Duration,
    /// Most MySQL connections every replica together holds (`DB_FLEET_MAX`; off when unset).
    pub fleet_max: Option<u32>,
    /// Parsed `DATABASE_READ_URLS`, in the order given (carry passwords).
    replicas: Vec<MySqlConnectOptions>,
    /// `DB_REPLICA_MAX_LAG_MS`: a replica further behind gets no reads.
    pub replica_max_lag: Duration,
    /// `DB_READ_MISS_PRIMARY`: an id missing on a replica is looked up on the primary.
    pub read_miss_primary: bool,
}

impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &"[redacted]")
            .field("pool_max", &self.pool_max)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("fleet_max", &self.fleet_max)
            .field("replicas", &self.replicas.len())
            .field("replica_max_lag", &self.replica_max_lag)
            .field("read_miss_primary", &self.read_miss_primary)
            .finish()
    }
}

impl DatabaseSettings {
    /// Reads the database variables from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&|name: &str| std::env::var(name).ok())
    }

    /// Reads `DATABASE_URL`, `DATABASE_READ_URLS`, `DB_POOL_MAX`,
    /// `DB_ACQUIRE_TIMEOUT_MS`, `DB_FLEET_MAX`, `DB_REPLICA_MAX_LAG_MS` and
    /// `DB_READ_MISS_PRIMARY` through `lookup`.
    pub fn from_lookup(lookup: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let var = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let url = require_url(&var, "DATABASE_URL", &["mysql", "mariadb"])?;
        let options = parse_mysql_url(url.expose(), "DATABASE_URL")?;
        let replicas = match var("DATABASE_READ_URLS") {
            None => Vec::new(),
            Some(list) => parse_read_urls(&list)?,
        };
        Ok(Self {
            options,
            replicas,
            replica_max_lag: Duration::from_millis(parse_range(
                var("DB_REPLICA_MAX_LAG_MS"),
                "DB_REPLICA_MAX_LAG_MS",
                1000,
                100,
                600_000,
            )?),
            read_miss_primary: match var("DB_READ_MISS_PRIMARY") {
                None => true,
                raw => parse_bool(raw, "DB_READ_MISS_PRIMARY")?,
            },
            pool_max: parse_range(var("DB_POOL_MAX"), "DB_POOL_MAX", 32, 1, 1000)?,
            acquire_timeout: Duration::from_millis(parse_range(
                var("DB_ACQUIRE_TIMEOUT_MS"),
                "DB_ACQUIRE_TIMEOUT_MS",
                1000,
                10,
                60_000,
            )?),
            fleet_max: match var("DB_FLEET_MAX") {
                None => None,
                // The budget is a lock of `permits` slots: the same bound.
                raw => Some(parse_range(raw, "DB_FLEET_MAX", 1, 1, 1024)?),
            },
        })
    }

    /// How to connect, as parsed from `DATABASE_URL`.
    pub fn connect_options(&self) -> MySqlConnectOptions {
        self.options.clone()
    }

    /// How to connect to each read replica, as parsed from `DATABASE_READ_URLS`.
    pub fn replica_connect_options(&self) -> &[MySqlConnectOptions] {
        &self.replicas
    }
}

/// Most read replicas `DATABASE_READ_URLS` may list.
const MAX_READ_REPLICAS: usize = 16;

/// One MySQL URL of `variable`: its TLS files readable, its syntax sqlx's.
fn parse_mysql_url(url: &str, variable: &'static str) -> Result<MySqlConnectOptions, ConfigError> {
    check_tls_files(url, variable)?;
    Ok(url
        .parse::<MySqlConnectOptions>()
        .map_err(|_| ConfigError::new(variable, "is not a valid mysql:// URL"))?
        // Every statement at DEBUG is a per-query cost even when filtered
        // out; statements slower than a second still log at WARN.
        .log_statements(log::LevelFilter::Off))
}

/// `DATABASE_READ_URLS`: comma-separated URLs with `DATABASE_URL`'s syntax.
fn parse_read_urls(list: &str) -> Result<Vec<MySqlConnectOptions>, ConfigError> {
    const NAME: &str = "DATABASE_READ_URLS";
    let urls: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    if urls.len() > MAX_READ_REPLICAS {
        return Err(ConfigError::new(
            NAME,
            format!("lists more than {MAX_READ_REPLICAS} replicas"),
        ));
    }
    urls.into_iter()
        .enumerate()
        .map(|(n, url)| {
            let scheme_ok = url.split_once("://").is_some_and(|(scheme, rest)| {
                matches!(scheme, "mysql" | "mariadb") && !rest.is_empty()
            });
            if !scheme_ok {
                return Err(ConfigError::new(
                    NAME,
                    format!(
                        "entry {} must be a URL starting with mysql:// or mariadb://",
                        n + 1
                    ),
                ));
            }
            parse_mysql_url(url, NAME)
        })
        .collect()
}

/// The certificate files a `DATABASE_URL` names (`ssl-ca`, `ssl-cert`,
/// `ssl-key`) must be readable now: sqlx would only find out at the first
/// connection, and say less about which file.
fn check_tls_files(url: &str, variable: &'static str) -> Result<(), ConfigError> {
    let Some((_, query)) = url.split_once('?') else {
        return Ok(());
    };
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|_| ConfigError::new(variable, "has an unreadable query string"))?;
    for (key, path) in pairs {
        if matches!(key.as_str(), "ssl-ca" | "ssl-cert" | "ssl-key")
            && let Err(e) = std::fs::metadata(&path)
        {
            return Err(ConfigError::new(
                variable,
                format!("{key} file {path} cannot be read: {}", e.kind()),
            ));
        }
    }
    Ok(())
}

/// Reads `LOG_FORMAT` alone, so telemetry can start before the rest is
/// validated; a bad value falls back to JSON here and is reported by `from_env`.
pub fn log_format_from_env() -> LogFormat {
    parse_log_format(std::env::var("LOG_FORMAT").ok().as_deref()).unwrap_or(LogFormat::Json)
}

fn parse_log_format(value: Option<&str>) -> Result<LogFormat, ConfigError> {
    match value.map(str::trim) {
        None | Some("") | Some("json") => Ok(LogFormat::Json),
        Some("pretty") => Ok(LogFormat::Pretty),
        Some(_) => Err(ConfigError::new("LOG_FORMAT", "must be `json` or `pretty`")),
    }
}

fn require_url(
    var: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    schemes: &[&str],
) -> Result<Secret, ConfigError> {
    let value = var(name).ok_or_else(|| ConfigError::new(name, "is required"))?;
    let value = value.trim().to_owned();
    let scheme_ok = value
        .split_once("://")
        .is_some_and(|(scheme, rest)| schemes.contains(&scheme) && !rest.is_empty());
    if !scheme_ok {
        let wanted = schemes
            .iter()
            .map(|s| format!("{s}://"))
            .collect::<Vec<_>>()
            .join(" or ");
        return Err(ConfigError::new(
            name,
            format!("must be a URL starting with {wanted}"),
        ));
    }
    Ok(Secret(value))
}

fn parse_bool(value: Option<String>, name: &'static str) -> Result<bool, ConfigError> {
    match value
        .as_deref()
        .map(|v| v.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("false") | Some("0") | Some("no") => Ok(false),
        Some("true") | Some("1") | Some("yes") => Ok(true),
        Some(_) => Err(ConfigError::new(name, "must be `true` or `false`")),
    }
}

fn parse_addr(
    value: Option<String>,
    name: &'static str,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    value
        .as_deref()
        .unwrap_or(default)
        .trim()
        .parse()
        .map_err(|_| ConfigError::new(name, "must be an address like 0.0.0.0:8080"))
}

/// `WORKERS`: each HTTP worker reads over its own share of `DB_POOL_MAX`,
/// so there can be no more workers than MySQL connections.
fn parse_workers(value: Option<String>, pool_max: u32) -> Result<Option<usize>, ConfigError> {
    let Some(raw) = value else { return Ok(None) };
    let workers: usize = parse_range(Some(raw), "WORKERS", 1, 1, 1024)?;
    if workers > usize::try_from(pool_max).unwrap_or(usize::MAX) {
        return Err(ConfigError::new(
            "WORKERS",
            format!(
                "must not exceed DB_POOL_MAX ({pool_max}): each worker reads over its own share of the MySQL connections"
            ),
        ));
    }
    Ok(Some(workers))
}

fn parse_range<T>(
    value: Option<String>,
    name: &'static str,
    default: T,
    min: T,
    max: T,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
{
    let Some(raw) = value else { return Ok(default) };
    match raw.trim().parse::<T>() {
        Ok(v) if v >= min && v <= max => Ok(v),
        _ => Err(ConfigError::new(
            name,
            format!("must be an integer in {min}..={max}"),
        )),
    }
}

/// Parses `name:key` entries; blank lines and `#` comments are skipped.
fn parse_key_lines<'a>(
    lines: impl Iterator<Item = &'a str>,
    variable: &'static str,
) -> Result<Vec<ApiKey>, ConfigError> {
    let mut keys = Vec::new();
    for (index, line) in lines.enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = ApiKey::parse(line)
            .map_err(|why| ConfigError::new(variable, format!("entry {} {why}", index + 1)))?;
        keys.push(key);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    const BASE: [(&str, &str); 3] = [
        ("DATABASE_URL", "mysql://u:p@127.0.0.1:3306/db"),
        ("REDIS_URL", "redis://127.0.0.1:6379/0"),
        ("API_KEYS", "ci:0123456789abcdef"),
    ];

    #[test]
    fn defaults_follow_the_contract() {
        let s = settings(&BASE).unwrap();
        assert_eq!(s.bind_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(s.admin_bind_addr.to_string(), "0.0.0.0:9090");
        assert_eq!(s.database.pool_max, 32);
        assert_eq!(s.database.acquire_timeout, Duration::from_millis(1000));
        assert_eq!(s.redis_pool_max, 32);
        assert_eq!(s.lock_max_waiters, 10_000);
        assert_eq!(s.redis_key_prefix, "mw:");
        assert_eq!(s.shutdown_timeout, Duration::from_secs(25));
        assert_eq!(s.shutdown_delay, Duration::ZERO);
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.workers, None);
    }

    #[test]
    fn workers_may_be_set_up_to_the_mysql_connections() {
        let mut pairs = BASE.to_vec();
        pairs.extend([("WORKERS", "3"), ("DB_POOL_MAX", "3")]);
        assert_eq!(settings(&pairs).unwrap().workers, Some(3));
        pairs.push(("WORKERS", "4"));
        let err = settings(&pairs).unwrap_err();
        assert_eq!(err.variable, "WORKERS");
        assert!(err.to_string().contains("DB_POOL_MAX (3)"), "{err}");
    }

    #[test]
    fn read_replicas_are_off_by_default_and_parsed_in_order() {
        let s = settings(&BASE).unwrap();
        assert!(s.database.replica_connect_options().is_empty());
        assert_eq!(s.database.replica_max_lag, Duration::from_millis(1000));
        assert!(s.database.read_miss_primary);

        let mut pairs = BASE.to_vec();
        pairs.extend([
            (
                "DATABASE_READ_URLS",
                " mysql://u:p@10.0.0.2:3306/db , mariadb://u:p@reader.example:3307/db,",
            ),
            ("DB_REPLICA_MAX_LAG_MS", "250"),
            ("DB_READ_MISS_PRIMARY", "false"),
        ]);
        let s = settings(&pairs).unwrap();
        let hosts: Vec<(&str, u16)> = s
            .database
            .replica_connect_options()
            .iter()
            .map(|o| (o.get_host(), o.get_port()))
            .collect();
        assert_eq!(hosts, [("10.0.0.2", 3306), ("reader.example", 3307)]);
        assert_eq!(s.database.replica_max_lag, Duration::from_millis(250));
        assert!(!s.database.read_miss_primary);
        // The replicas' passwords stay out of debug output.
        assert!(!format!("{s:?}").contains("u:p@"));
    }

    #[test]
    fn bad_read_replica_settings_name_their_variable_and_never_echo_a_url() {
        for (name, value) in [
            (
                "DATABASE_READ_URLS",
                "mysql://u:p@h/db,redis://u:secret@h/0",
            ),
            (
                "DATABASE_READ_URLS",
                "mysql://u:p@h/db?ssl-ca=/nonexistent/ca.pem",
            ),
            ("DB_REPLICA_MAX_LAG_MS", "50"),
            ("DB_REPLICA_MAX_LAG_MS", "soon"),
            ("DB_READ_MISS_PRIMARY", "maybe"),
        ] {
            let mut pairs = BASE.to_vec();
            pairs.push((name, value));
            let err = settings(&pairs).unwrap_err();
            assert_eq!(err.variable, name, "{value}");
            assert!(!err.to_string().contains("secret"), "{err}");
        }
        let many = vec!["mysql://u:p@h/db"; 17].join(",");
        let mut pairs = BASE.to_vec();
        pairs.push(("DATABASE_READ_URLS", &many));
        assert_eq!(settings(&pairs).unwrap_err().variable, "DATABASE_READ_URLS");
    }

    #[test]
    fn a_missing_database_url_names_the_variable() {
        let err = settings(&BASE[1..]).unwrap_err();
        assert_eq!(err.variable, "DATABASE_URL");
    }

    #[test]
    fn bad_numbers_name_their_variable() {
        for (var, value) in [
            ("DB_POOL_MAX", "0"),
            ("DB_POOL_MAX", "x"),
            ("DB_ACQUIRE_TIMEOUT_MS", "-5"),
            ("LOCK_MAX_WAITERS", "1.5"),
            ("REDIS_KEY_PREFIX", "a{b}:"),
            ("REDIS_KEY_PREFIX", "x;y="),
            ("REDIS_MODE", "sentinel"),
            ("REDIS_TLS_CA_FILE", "/etc/ssl/certs/ca-certificates.crt"),
            ("LOCK_REPLICA_ACKS", "17"),
            ("LOCK_REPLICA_ACKS", "-1"),
            ("LOCK_REPLICA_ACK_TIMEOUT_MS", "0"),
            ("WORKERS", "0"),
            ("WORKERS", "two"),
            ("WORKERS", "33"),
        ] {
            let mut pairs = BASE.to_vec();
            pairs.push((var, value));
            assert_eq!(settings(&pairs).unwrap_err().variable, var, "{var}={value}");
        }
    }

    #[test]
    fn tls_and_replica_ack_settings_are_read() {
        let mut pairs = BASE.to_vec();
        pairs[1] = ("REDIS_URL", "rediss://cache.example:6379/0");
        pairs.push(("REDIS_TLS_CA_FILE", "/etc/ssl/ca.pem"));
        pairs.push(("REDIS_MODE", "cluster"));
        pairs.push(("LOCK_REPLICA_ACKS", "1"));
        pairs.push(("LOCK_REPLICA_ACK_TIMEOUT_MS", "250"));
        let s = settings(&pairs).unwrap();
        assert_eq!(
            s.redis_tls_ca_file.as_deref(),
            Some(std::path::Path::new("/etc/ssl/ca.pem"))
        );
        assert_eq!(
            s.lock_replica_acks,
            ReplicaAcks {
                replicas: 1,
                timeout: Duration::from_millis(250)
            }
        );
        assert_eq!(settings(&BASE).unwrap().lock_replica_acks, ReplicaAcks::OFF);
    }

    #[test]
    fn a_database_url_naming_a_missing_certificate_file_is_refused() {
        let mut pairs = BASE.to_vec();
        pairs[0] = (
            "DATABASE_URL",
            "mysql://u:p@db:3306/app?ssl-mode=verify_identity&ssl-ca=%2Fnowhere%2Fca.pem",
        );
        let err = settings(&pairs).unwrap_err();
        assert_eq!(err.variable, "DATABASE_URL");
        assert!(err.message.contains("/nowhere/ca.pem"), "{}", err.message);
        assert!(!err.message.contains("u:p"), "{}", err.message);
    }

    #[test]
    fn iam_settings_are_checked_and_sts_endpoints_must_be_https_or_loopback() {
        let with = |extra: (&'static str, &'static str)| {
            let mut vars = BASE.to_vec();
            vars.push(extra);
            settings(&vars)
        };
        let ok = with((
            "AUTH_AWS_STS_ENDPOINTS",
            "http://127.0.0.1:5000/, https://sts.internal.example/",
        ))
        .unwrap();
        assert!(ok.aws_sts_endpoints.is_some());
        for (variable, value) in [
            ("AUTH_AWS_STS_ENDPOINTS", "http://sts.internal.example/"),
            ("AUTH_AWS_STS_ENDPOINTS", ","),
            (
                "AUTH_AWS_STS_ENDPOINTS",
                "https://sts.internal.example/?Action=x",
            ),
        ] {
            let err = with((variable, value)).unwrap_err();
            assert_eq!(err.variable, variable, "{value}");
        }
        let on = with(("AUTH_AWS_AUDIENCE", "middleway-prod")).unwrap();
        assert_eq!(on.aws_audience.as_deref(), Some("middleway-prod"));
    }

    #[test]
    fn no_keys_without_auth_disabled_is_refused() {
        let err = settings(&BASE[..2]).unwrap_err();
        assert_eq!(err.variable, "API_KEYS");
        let ok = settings(&[BASE[0], BASE[1], ("AUTH_DISABLED", "true")]).unwrap();
        assert!(ok.auth_disabled);
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let s = settings(&BASE).unwrap();
        let printed = format!("{s:?}");
        assert!(!printed.contains("u:p@"), "{printed}");
        assert!(!printed.contains("0123456789abcdef"), "{printed}");
    }
}
