//! The process's one TLS crypto provider. rustls and every client built on
//! it take the process default: sqlx and redis (backends), reqwest (OIDC
//! issuers, STS, the OTLP exporter; built without a provider of its own).
//! This service uses ring, and installs it before building any of them.

/// Installs ring as rustls' process-wide provider. Idempotent.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
