//! Certificates a test makes for its own TLS servers (rcgen): a CA, a server
//! certificate it signed (for 127.0.0.1 and localhost unless told), and an unrelated CA
//! that must not verify that server.

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

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
