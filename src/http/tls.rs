//! HTTPS on the public listener (`TLS_CERT_FILE`, `TLS_KEY_FILE`): rustls,
//! TLS 1.2 and 1.3, ALPN `h2` and `http/1.1` (actix-http offers both).
//!
//! The certificate is chosen per handshake from the last good pair, so a
//! renewed pair is served to new connections within [`RELOAD_EVERY`] while
//! open connections carry on with the one they shook hands with. Renewal
//! comes two ways, both caught by reading the files again: cert-manager (or
//! anyone) rewriting them in place, and Kubernetes swapping the `..data`
//! symlink of a mounted Secret. A pair that does not load (unreadable, not
//! PEM, key and certificate that do not match, not valid now) twice in a row
//! (once may be a pair caught half written) is refused:
//! the last good pair stays, with a log line and
//! `middleway_tls_certificate_reloads_total{outcome="refused"}`.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::{ConfigError, ListenerTls};
use crate::metrics::Metrics;

/// How often the files are read again.
pub(crate) const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// The pair served now, and what it was loaded from.
pub(crate) struct ListenerCertificate {
    files: ListenerTls,
    current: RwLock<Loaded>,
    /// A changed pair that failed to load once: refused if it fails again.
    suspect: Mutex<Option<(Vec<u8>, Vec<u8>)>>,
    metrics: Metrics,
}

/// A pair that loaded: the key rustls serves, and the files' bytes (to tell
/// a change).
struct Loaded {
    key: Arc<CertifiedKey>,
    pem: (Vec<u8>, Vec<u8>),
}

impl std::fmt::Debug for ListenerCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerCertificate")
            .field("cert_file", &self.files.cert_file)
            .finish_non_exhaustive()
    }
}

impl ListenerCertificate {
    /// Loads the pair at startup: a pair that does not load is a
    /// configuration error (exit 2) naming the file at fault.
    pub(crate) fn load(files: &ListenerTls, metrics: Metrics) -> Result<Arc<Self>, ConfigError> {
        let pem = read_pair(files).map_err(|(variable, why)| ConfigError::new(variable, why))?;
        let key = certified_key(&pem).map_err(|(variable, why)| ConfigError::new(variable, why))?;
        record_expiry(&metrics, &key);
        Ok(Arc::new(Self {
            files: files.clone(),
            current: RwLock::new(Loaded { key, pem }),
            suspect: Mutex::default(),
            metrics,
        }))
    }

    /// The listener's TLS settings, resolving the certificate per handshake.
    pub(crate) fn server_config(self: &Arc<Self>) -> ServerConfig {
        ServerConfig::builder_with_protocol_versions(&[
            &rustls::version::TLS13,
            &rustls::version::TLS12,
        ])
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>)
    }

    /// Reads the files every [`RELOAD_EVERY`] and serves a changed pair that
    /// loads; runs until the task is aborted.
    pub(crate) async fn keep_fresh(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(RELOAD_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.reload();
        }
    }

    /// One look at the files.
    fn reload(&self) {
        let Ok(pem) = read_pair(&self.files) else {
            // Mid-swap, or gone for a moment: the next look decides.
            return;
        };
        if self.read().pem == pem {
            return;
        }
        let outcome = match certified_key(&pem) {
            Ok(key) => {
                record_expiry(&self.metrics, &key);
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Loaded { key, pem };
                tracing::info!(cert_file = %self.files.cert_file.display(), "TLS certificate reloaded");
                "loaded"
            }
            Err((variable, why)) => {
                // Two files written one after the other (outside Kubernetes,
                // whose Secret updates are atomic) can be read half written:
                // a pair is refused only when the same bytes fail twice.
                let mut suspect = self.suspect.lock().unwrap_or_else(|p| p.into_inner());
                if suspect.as_ref() != Some(&pem) {
                    *suspect = Some(pem);
                    return;
                }
                *suspect = None;
                // Remembered, so a broken pair is reported once, not every second.
                self.current.write().unwrap_or_else(|p| p.into_inner()).pem = pem;
                tracing::error!(
                    variable,
                    why,
                    "the new TLS certificate pair was refused; serving the last good one"
                );
                "refused"
            }
        };
        self.metrics.tls_reloads.with_label_values(&[outcome]).inc();
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl ResolvesServerCert for ListenerCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.read().key))
    }
}

type Refusal = (&'static str, String);

fn read_pair(files: &ListenerTls) -> Result<(Vec<u8>, Vec<u8>), Refusal> {
    let read = |variable: &'static str, path: &Path| {
        std::fs::read(path).map_err(|e| (variable, format!("cannot read the file: {}", e.kind())))
    };
    Ok((
        read("TLS_CERT_FILE", &files.cert_file)?,
        read("TLS_KEY_FILE", &files.key_file)?,
    ))
}

/// The pair as rustls serves it, if it is one: a PEM chain, a PEM key that
/// matches its first certificate, and that certificate valid now.
fn certified_key((cert_pem, key_pem): &(Vec<u8>, Vec<u8>)) -> Result<Arc<CertifiedKey>, Refusal> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            (
                "TLS_CERT_FILE",
                format!("is not a PEM certificate chain: {e}"),
            )
        })?;
    let Some(leaf) = chain.first() else {
        return Err(("TLS_CERT_FILE", "holds no certificate".into()));
    };
    let (not_before, not_after) = validity(leaf)?;
    let now = unix_now();
    if now < not_before {
        return Err((
            "TLS_CERT_FILE",
            "holds a certificate that is not valid yet".into(),
        ));
    }
    if now >= not_after {
        return Err(("TLS_CERT_FILE", "holds an expired certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| ("TLS_KEY_FILE", format!("is not a PEM private key: {e}")))?;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let key = CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| ("TLS_KEY_FILE", format!("does not fit the certificate: {e}")))?;
    Ok(Arc::new(key))
}

/// The leaf's validity period, in Unix seconds.
fn validity(leaf: &CertificateDer<'_>) -> Result<(i64, i64), Refusal> {
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf).map_err(|e| {
        (
            "TLS_CERT_FILE",
            format!("holds an unreadable certificate: {e}"),
        )
    })?;
    let validity = parsed.validity();
    Ok((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

fn record_expiry(metrics: &Metrics, key: &CertifiedKey) {
    if let Some(Ok((_, not_after))) = key.cert.first().map(validity) {
        metrics.tls_certificate_expiry.set(not_after);
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
