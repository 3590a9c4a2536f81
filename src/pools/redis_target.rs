//! Where Redis is, as the settings say: one server (`REDIS_MODE=standalone`)
//! or a cluster's seed nodes (`REDIS_MODE=cluster`, `REDIS_URL` a comma-separated
//! list), with `REDIS_TLS_CA_FILE`'s roots applied to every node.

use redis::io::tcp::TcpSettings;
use redis::{ConnectionInfo, IntoConnectionInfo, TlsCertificates};

use crate::config::{ConfigError, Settings};

/// The error for a `REDIS_URL` the Redis client cannot use.
pub fn invalid_redis_url() -> ConfigError {
    ConfigError::new("REDIS_URL", "is not a valid redis:// or rediss:// URL")
}

/// One Redis server, or a Redis Cluster.
#[derive(Clone)]
pub enum RedisTarget {
    /// A server (a primary, or an endpoint that follows failovers).
    Server(ConnectionInfo),
    /// A cluster, known by its seed nodes; the client learns the rest.
    Cluster {
        seeds: Vec<ConnectionInfo>,
        /// `REDIS_TLS_CA_FILE`'s PEM, for the nodes the client discovers.
        ca_pem: Option<Vec<u8>>,
    },
}

impl RedisTarget {
    /// The target the settings describe.
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let ca_pem = match &settings.redis_tls_ca_file {
            Some(path) => Some(read_ca(path)?),
            None => None,
        };
        let urls: Vec<&str> = settings
            .redis_url
            .expose()
            .split(',')
            .map(str::trim)
            .collect();
        let nodes = urls
            .iter()
            .map(|url| node(url, ca_pem.as_deref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(if settings.redis_cluster {
            Self::Cluster {
                seeds: nodes,
                ca_pem,
            }
        } else {
            let [node] = <[ConnectionInfo; 1]>::try_from(nodes).map_err(|_| {
                ConfigError::new(
                    "REDIS_URL",
                    "lists several nodes; that needs REDIS_MODE=cluster",
                )
            })?;
            Self::Server(node)
        })
    }

    /// Whether this is a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster { .. })
    }

    /// The server, or the cluster's seed nodes.
    pub fn nodes(&self) -> &[ConnectionInfo] {
        match self {
            Self::Server(node) => std::slice::from_ref(node),
            Self::Cluster { seeds, .. } => seeds,
        }
    }
}

fn read_ca(path: &std::path::Path) -> Result<Vec<u8>, ConfigError> {
    let pem = std::fs::read(path).map_err(|e| {
        ConfigError::new(
            "REDIS_TLS_CA_FILE",
            format!("cannot read {}: {}", path.display(), e.kind()),
        )
    })?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(ConfigError::new(
            "REDIS_TLS_CA_FILE",
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(pem)
}

/// The socket options of every connection to Redis: `TCP_NODELAY`. A
/// multiplexed connection writes a call while earlier ones await their
/// replies; with Nagle's algorithm on (redis-rs' default) that write waits
/// for the earlier ones' acknowledgement, up to a network round trip, or a
/// delayed ACK's 40 ms while Redis is busy with a long script.
pub fn tcp_settings() -> TcpSettings {
    TcpSettings::default().set_nodelay(true)
}

/// One node's connection details, with the CA's roots when given.
fn node(url: &str, ca_pem: Option<&[u8]>) -> Result<ConnectionInfo, ConfigError> {
    let info = url
        .into_connection_info()
        .map_err(|_| invalid_redis_url())?
        .set_tcp_settings(tcp_settings());
    let Some(pem) = ca_pem else {
        return Ok(info);
    };
    let certificates = TlsCertificates {
        client_tls: None,
        root_cert: Some(pem.to_vec()),
    };
    redis::Client::build_with_tls(info, certificates)
        .map(|client| client.get_connection_info().clone())
        .map_err(|e| ConfigError::new("REDIS_TLS_CA_FILE", format!("unusable: {e}")))
}
