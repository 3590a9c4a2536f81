//! TLS to MySQL and Redis, with rustls (no OpenSSL in the image): the
//! process-wide crypto provider and one connection at start to each backend
//! that uses TLS (`redis_target` applies `REDIS_TLS_CA_FILE`'s roots).
//!
//! Why connect at start when the pools are lazy: a backend that is down
//! comes back by itself, so the service starts (not ready) and waits; a
//! certificate that does not verify never fixes itself, and a replica stuck
//! unready says nothing about why. So a certificate error stops the process
//! with exit 2 and one line naming the variable to fix; a backend that is
//! merely unreachable at start is logged and waited for as before.

use std::error::Error;
use std::time::Duration;

use redis::ConnectionAddr;
use sqlx::Connection;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlSslMode};

use super::redis_target::{RedisTarget, invalid_redis_url};
use crate::config::{ConfigError, DatabaseSettings};

/// How long the start-up check waits for a backend before leaving it to the pools.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// For a `rediss://` target, connects once (to the first node) and stops
/// the start on a certificate error (naming `REDIS_TLS_CA_FILE` if set,
/// else `REDIS_URL`).
pub async fn verify_redis(target: &RedisTarget, ca_file_set: bool) -> Result<(), ConfigError> {
    let Some(info) = target.nodes().first() else {
        return Ok(());
    };
    if !matches!(info.addr(), ConnectionAddr::TcpTls { .. }) {
        return Ok(());
    }
    let client = redis::Client::open(info.clone()).map_err(|_| invalid_redis_url())?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(PROBE_TIMEOUT))
        .set_response_timeout(Some(PROBE_TIMEOUT));
    let error = match client
        .get_multiplexed_async_connection_with_config(&config)
        .await
    {
        Ok(_) => return Ok(()),
        Err(error) => error,
    };
    match certificate_problem(&error) {
        Some(problem) => Err(ConfigError::new(
            if ca_file_set {
                "REDIS_TLS_CA_FILE"
            } else {
                "REDIS_URL"
            },
            format!("the Redis server's TLS certificate does not verify: {problem}"),
        )),
        None => {
            tracing::warn!(%error, "Redis is not reachable at start; serving unready until it is");
            Ok(())
        }
    }
}

/// When `DATABASE_URL` or an entry of `DATABASE_READ_URLS` asks for TLS
/// (`ssl-mode=required` or stricter), connects once to it and stops the
/// start if TLS cannot be set up.
pub async fn verify_mysql(database: &DatabaseSettings) -> Result<(), ConfigError> {
    verify_mysql_endpoint(database.connect_options(), "DATABASE_URL").await?;
    for replica in database.replica_connect_options() {
        verify_mysql_endpoint(replica.clone(), "DATABASE_READ_URLS").await?;
    }
    Ok(())
}

async fn verify_mysql_endpoint(
    options: MySqlConnectOptions,
    variable: &'static str,
) -> Result<(), ConfigError> {
    if matches!(
        options.get_ssl_mode(),
        MySqlSslMode::Disabled | MySqlSslMode::Preferred
    ) {
        return Ok(());
    }
    let error =
        match tokio::time::timeout(PROBE_TIMEOUT, MySqlConnection::connect_with(&options)).await {
            Ok(Ok(connection)) => {
                let _ = connection.close().await;
                return Ok(());
            }
            Ok(Err(error)) => error,
            Err(_) => {
                tracing::warn!("MySQL did not answer at start; serving unready until it does");
                return Ok(());
            }
        };
    let problem = match &error {
        sqlx::Error::Tls(inner) => {
            Some(certificate_problem(inner.as_ref()).unwrap_or_else(|| inner.to_string()))
        }
        other => certificate_problem(other),
    };
    match problem {
        Some(problem) => Err(ConfigError::new(
            variable,
            format!("TLS to MySQL failed: {problem}"),
        )),
        None => {
            tracing::warn!(error = %crate::pools::mysql::describe(&error), "MySQL is not reachable at start; serving unready until it is");
            Ok(())
        }
    }
}

/// The certificate problem in `error`, as one line: a rustls error
/// somewhere in its chain, or (the Redis client keeps its cause behind an
/// `Arc`, which hides the type) a message about a certificate.
fn certificate_problem(error: &(dyn Error + 'static)) -> Option<String> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        if let Some(tls) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls.to_string());
        }
        current = e.source();
    }
    let text = error.to_string();
    text.to_ascii_lowercase()
        .contains("certificate")
        .then_some(text)
}
