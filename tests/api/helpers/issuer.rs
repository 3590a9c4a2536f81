//! An OIDC issuer the test owns: discovery document and JWKS served over
//! loopback HTTP by actix-web, keys it can add (rotation), a count of JWKS
//! fetches, and tokens signed with RS256, ES256 or EdDSA keys made for the
//! test (RSA by `openssl`, EC and Ed25519 by rcgen).

use std::net::TcpListener;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::{App, HttpResponse, HttpServer, web};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::scratch_dir;

/// A signing key and its public JWK.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: Arc<EncodingKey>,
    pub jwk: Value,
    /// The public key as PEM (RSA only: the HMAC-confusion attack uses it).
    pub public_pem: Option<String>,
}

impl SigningKey {
    pub fn rsa(kid: &str) -> Self {
        let dir = scratch_dir("rsa");
        let key = dir.join("key.pem");
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl");
            assert!(out.status.success(), "openssl {args:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        let path = key.to_str().unwrap();
        run(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            path,
        ]);
        let modulus = run(&["rsa", "-in", path, "-noout", "-modulus"]);
        let hex = modulus.trim().trim_start_matches("Modulus=");
        let n: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let public_pem = run(&["rsa", "-in", path, "-pubout"]);
        let pem = std::fs::read(&key).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        Self {
            kid: kid.into(),
            alg: Algorithm::RS256,
            encoding: Arc::new(EncodingKey::from_rsa_pem(&pem).unwrap()),
            jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                        "n": URL_SAFE_NO_PAD.encode(n), "e": "AQAB"}),
            public_pem: Some(public_pem),
        }
    }

    pub fn ec(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let point = pair.public_key_raw();
        Self {
            kid: kid.into(),
            alg: Algorithm::ES256,
            encoding: Arc::new(EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap()),
            jwk: json!({"kty": "EC", "kid": kid, "crv": "P-256", "use": "sig",
                        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                        "y": URL_SAFE_NO_PAD.encode(&point[33..65])}),
            public_pem: None,
        }
    }

    pub fn ed25519(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        Self {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            encoding: Arc::new(EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).unwrap()),
            jwk: json!({"kty": "OKP", "kid": kid, "crv": "Ed25519", "use": "sig",
                        "x": URL_SAFE_NO_PAD.encode(pair.public_key_raw())}),
            public_pem: None,
        }
    }

    /// A token with `claims`, signed by this key, naming `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    /// A token signed by this key but naming another `kid` (forgeries).
    pub fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

/// Now, in seconds since the epoch (for `exp`, `nbf`, `iat`).
pub fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

struct IssuerState {
    issuer: String,
    keys: RwLock<Vec<Value>>,
    key_fetches: AtomicUsize,
    discovery_fetches: AtomicUsize,
}

/// The issuer's HTTP server (stopped when dropped).
pub struct TestIssuer {
    pub url: String,
    state: Arc<IssuerState>,
    server: actix_web::dev::ServerHandle,
}

impl TestIssuer {
    /// Serves `/.well-known/openid-configuration` and `/keys` with `keys`.
    pub fn start(keys: &[&SigningKey]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(IssuerState {
            issuer: url.clone(),
            keys: RwLock::new(keys.iter().map(|k| k.jwk.clone()).collect()),
            key_fetches: AtomicUsize::new(0),
            discovery_fetches: AtomicUsize::new(0),
        });
        let shared = web::Data::from(Arc::clone(&state));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(shared.clone())
                .route(
                    "/.well-known/openid-configuration",
                    web::get().to(discovery),
                )
                .route("/keys", web::get().to(jwks))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            url,
            state,
            server: handle,
        }
    }

    /// Publishes one more key (a rotation begins).
    pub fn add_key(&self, key: &SigningKey) {
        self.state.keys.write().unwrap().push(key.jwk.clone());
    }

    pub fn key_fetches(&self) -> usize {
        self.state.key_fetches.load(Ordering::SeqCst)
    }

    pub fn discovery_fetches(&self) -> usize {
        self.state.discovery_fetches.load(Ordering::SeqCst)
    }

    /// Standard claims for `subject`, for `audience`, valid for 10 minutes.
    pub fn claims(&self, subject: &str, audience: &str) -> Value {
        json!({"iss": self.url, "sub": subject, "aud": audience,
               "iat": now_s(), "exp": now_s() + 600})
    }

    pub async fn stop(&self) {
        self.server.stop(false).await;
    }
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        let server = self.server.clone();
        tokio::spawn(async move { server.stop(false).await });
    }
}

async fn discovery(state: web::Data<IssuerState>) -> HttpResponse {
    state.discovery_fetches.fetch_add(1, Ordering::SeqCst);
    HttpResponse::Ok().json(json!({
        "issuer": state.issuer,
        "jwks_uri": format!("{}/keys", state.issuer),
        "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
    }))
}

async fn jwks(state: web::Data<IssuerState>) -> HttpResponse {
    state.key_fetches.fetch_add(1, Ordering::SeqCst);
    let keys = state.keys.read().unwrap().clone();
    HttpResponse::Ok().json(json!({ "keys": keys }))
}
