//! Certificates a test makes for its own TLS servers (rcgen): a CA, a server
//! certificate it signed (for 127.0.0.1 and localhost unless told), and an unrelated CA
//! that must not verify that server.

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;

use super::scratch_dir;

/// PEM files in a scratch folder.
pub struct TestCertificates {
    /// The CA that signed the server certificate.
    pub ca: PathBuf,
    /// A CA that did not.
    pub other_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

fn ca(name: &str) -> (CertificateParams, KeyPair, String) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let pem = params.self_signed(&key).expect("CA certificate").pem();
    (params, key, pem)
}

impl TestCertificates {
    /// Certificates for a server at 127.0.0.1 and localhost.
    pub fn new() -> Self {
        Self::for_names(&["127.0.0.1", "localhost"])
    }

    /// Makes and writes the certificates; the server's is valid for `names` only.
    pub fn for_names(names: &[&str]) -> Self {
        let dir = scratch_dir("certs");
        let (ca_params, ca_key, ca_pem) = ca("middleway test CA");
        let (_, _, other_pem) = ca("some other CA");
        let server_key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "middleway test server");
        let issuer = Issuer::new(ca_params, ca_key);
        let server_pem = params
            .signed_by(&server_key, &issuer)
            .expect("server certificate")
            .pem();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write certificate");
            path
        };
        Self {
            ca: write("ca.pem", &ca_pem),
            other_ca: write("other-ca.pem", &other_pem),
            server_cert: write("server.pem", &server_pem),
            server_key: write("server-key.pem", &server_key.serialize_pem()),
        }
    }
}

/// A CA that issues server certificates on demand (for renewal tests), and
/// clients that trust it.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

/// A server certificate and its key, PEM.
#[derive(Clone)]
pub struct IssuedPair {
    pub cert_pem: String,
    pub key_pem: String,
    /// The certificate, DER (what a client sees in the handshake).
    pub der: Vec<u8>,
}

impl TestCa {
    pub fn new() -> Self {
        let (params, key, pem) = ca("middleway listener test CA");
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A certificate for 127.0.0.1 and localhost, valid from `not_before`
    /// to `not_after` (seconds from now; negative is the past), new key.
    pub fn issue(&self, not_before: i64, not_after: i64) -> IssuedPair {
        let key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "middleway listener");
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::seconds(not_before);
        params.not_after = now + time::Duration::seconds(not_after);
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        IssuedPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// A valid certificate (from an hour ago, for a day).
    pub fn issue_valid(&self) -> IssuedPair {
        self.issue(-3600, 86_400)
    }

    /// rustls client settings trusting this CA only: TLS 1.2 and 1.3 unless
    /// `versions` says, ALPN as given.
    pub fn client_config(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[&[u8]],
    ) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(self.pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("CA root");
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }

    /// A TLS connection to 127.0.0.1:`port` trusting this CA only.
    pub async fn connect(
        &self,
        port: u16,
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[&[u8]],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let config = std::sync::Arc::new(self.client_config(versions, alpn));
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("IP name");
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
    }

    /// One HTTP/1.1 request (`head` without its final blank line, then
    /// `body`) on a new TLS connection: the status code and the body.
    pub async fn https_request(
        &self,
        port: u16,
        head: &str,
        body: &str,
    ) -> std::io::Result<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = self
            .connect(port, rustls::ALL_VERSIONS, &[b"http/1.1"])
            .await?;
        let request = format!(
            "{head}\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        // A TLS peer that closes without close_notify still gave us the answer.
        let _ = stream.read_to_end(&mut answer).await;
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {text}")))?;
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        Ok((status, body))
    }
}
