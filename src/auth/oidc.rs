//! OIDC / JWT bearers: a token is accepted when its `iss` is a configured
//! issuer, its signature verifies (RS256, ES256 or EdDSA only: `none` and
//! HMAC are never accepted, so a public key cannot be used as an HMAC
//! secret) with the key of its `kid` in that issuer's JWKS, its `aud`
//! contains the issuer's audience, and `exp` / `nbf` hold with 60 s of skew.
//! Signatures are checked by `jsonwebtoken` (ring underneath).
//!
//! Keys are fetched on first use (from `jwks_uri`, or the one the issuer's
//! discovery document names), again when a token names an unknown `kid` (a
//! rotation) but at most once per [`REFETCH_AT_MOST_EVERY`] per issuer (a
//! flood of made-up `kid`s costs the IdP one fetch per 10 s), and when they
//! are older than [`KEYS_MAX_AGE`] (so a key the issuer dropped stops being
//! accepted). While an issuer cannot be reached its last keys stay in use;
//! without any, its tokens get 503 and nothing else is affected.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::Url;
use serde::Deserialize;

use super::file::IssuerEntry;
use super::outbound::{Outbound, checked_url};
use super::verified::{Identity, Refusal, Verified};

/// Clock skew allowed on `exp` and `nbf`.
const LEEWAY_S: u64 = 60;
/// An unknown `kid` refetches the issuer's keys at most this often.
const REFETCH_AT_MOST_EVERY: Duration = Duration::from_secs(10);
/// Keys older than this are fetched again before use.
const KEYS_MAX_AGE: Duration = Duration::from_secs(300);
/// The algorithms accepted; anything else is refused before any key is looked up.
const ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// Whether a bearer has the shape of a JWT (three base64url parts, a JSON header).
pub fn looks_like_jwt(bearer: &str) -> bool {
    bearer.starts_with("eyJ") && bearer.bytes().filter(|&b| b == b'.').count() == 2
}

/// The keys of every issuer seen, kept across `AUTH_FILE` reloads.
pub struct OidcVerifier {
    outbound: Outbound,
    issuers: Mutex<HashMap<IssuerEntry, Arc<IssuerKeys>>>,
}

#[derive(Deserialize)]
struct Claims {
    /// Optional here so its absence gets its own 401 detail.
    sub: Option<String>,
    exp: u64,
}

#[derive(Deserialize)]
struct UnverifiedIssuer {
    iss: String,
}

impl OidcVerifier {
    pub fn new(outbound: Outbound) -> Self {
        Self {
            outbound,
            issuers: Mutex::default(),
        }
    }

    /// Verifies `token` against the configured `issuers`.
    pub async fn verify(&self, token: &str, issuers: &[IssuerEntry]) -> Verified {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Refusal::Unauthorized("malformed token"))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(Refusal::Unauthorized(
                "algorithm not allowed (RS256, ES256 or EdDSA only)",
            ));
        }
        // The issuer picks the keys, so it is read before the signature is
        // checked; `decode` below checks it again, signed.
        let issuer = unverified_issuer(token)?;
        let entry = issuers
            .iter()
            .find(|entry| entry.issuer == issuer)
            .ok_or(Refusal::Unauthorized("unknown issuer"))?;
        let keys = self.keys_of(entry);
        let key = keys
            .key(&self.outbound, entry, header.kid.as_deref())
            .await?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_S;
        validation.validate_nbf = true;
        validation.set_issuer(&[&entry.issuer]);
        validation.set_audience(&[&entry.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|e| Refusal::Unauthorized(why_refused(e.kind())))?
            .claims;
        let subject = claims.sub.ok_or(Refusal::Unauthorized(why_refused(
            &ErrorKind::MissingRequiredClaim("sub".into()),
        )))?;
        let until = SystemTime::UNIX_EPOCH + Duration::from_secs(claims.exp);
        Ok((
            Identity::Oidc {
                issuer: entry.issuer.as_str().into(),
                subject: subject.into(),
            },
            until,
        ))
    }

    fn keys_of(&self, entry: &IssuerEntry) -> Arc<IssuerKeys> {
        let mut issuers = self.issuers.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(issuers.entry(entry.clone()).or_default())
    }
}

fn unverified_issuer(token: &str) -> Result<String, Refusal> {
    let malformed = Refusal::Unauthorized("malformed token");
    let payload = token.split('.').nth(1).ok_or(malformed)?;
    let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| malformed)?;
    let claims: UnverifiedIssuer = serde_json::from_slice(&json).map_err(|_| malformed)?;
    Ok(claims.iss)
}

/// The 401 detail for a token `jsonwebtoken` refused.
fn why_refused(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::ImmatureSignature => "not valid yet",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidAlgorithm => "the algorithm does not match the key",
        ErrorKind::MissingRequiredClaim(_) => "a required claim (exp, iss, aud, sub) is missing",
        _ => "malformed token",
    }
}

/// One issuer's keys, and when they were fetched.
#[derive(Default)]
struct IssuerKeys {
    current: RwLock<Option<Arc<KeySet>>>,
    /// Held while fetching: concurrent misses wait for one fetch.
    fetching: tokio::sync::Mutex<FetchState>,
}

struct KeySet {
    by_kid: HashMap<String, Arc<DecodingKey>>,
    /// The key of a token without `kid`, when the set has exactly one.
    only: Option<Arc<DecodingKey>>,
    fetched_at: Instant,
}

impl KeySet {
    fn find(&self, kid: Option<&str>) -> Option<Arc<DecodingKey>> {
        match kid {
            Some(kid) => self.by_kid.get(kid).cloned(),
            None => self.only.clone(),
        }
    }
}

#[derive(Default)]
struct FetchState {
    last_attempt: Option<Instant>,
    /// Found by discovery (when the file names no `jwks_uri`).
    discovered_jwks_uri: Option<Url>,
}

impl IssuerKeys {
    async fn key(
        &self,
        outbound: &Outbound,
        entry: &IssuerEntry,
        kid: Option<&str>,
    ) -> Result<Arc<DecodingKey>, Refusal> {
        let fresh = |set: &KeySet| set.fetched_at.elapsed() < KEYS_MAX_AGE;
        if let Some(set) = self.snapshot()
            && fresh(&set)
            && let Some(key) = set.find(kid)
        {
            return Ok(key);
        }
        let mut state = self.fetching.lock().await;
        // Another request may have fetched while this one waited.
        let set = self.snapshot();
        if let Some(set) = &set
            && fresh(set)
            && let Some(key) = set.find(kid)
        {
            return Ok(key);
        }
        let may_fetch = state
            .last_attempt
            .is_none_or(|at| at.elapsed() >= REFETCH_AT_MOST_EVERY);
        let set = if may_fetch {
            state.last_attempt = Some(Instant::now());
            match fetch_keys(outbound, entry, &mut state).await {
                Ok(fetched) => {
                    let fetched = Arc::new(fetched);
                    *self.current.write().unwrap_or_else(|p| p.into_inner()) =
                        Some(Arc::clone(&fetched));
                    Some(fetched)
                }
                Err(why) => {
                    tracing::warn!(issuer = %entry.issuer, %why, "cannot fetch the issuer's keys; its last keys stay in use");
                    set
                }
            }
        } else {
            set
        };
        match set {
            None => Err(Refusal::Unavailable("the token's issuer cannot be reached")),
            Some(set) => set.find(kid).ok_or(Refusal::Unauthorized("unknown key id")),
        }
    }

    fn snapshot(&self) -> Option<Arc<KeySet>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct RawKeySet {
    keys: Vec<serde_json::Value>,
}

async fn fetch_keys(
    outbound: &Outbound,
    entry: &IssuerEntry,
    state: &mut FetchState,
) -> Result<KeySet, String> {
    let jwks_uri = match (&entry.jwks_uri, &state.discovered_jwks_uri) {
        (Some(uri), _) | (None, Some(uri)) => uri.clone(),
        (None, None) => {
            let uri = discover(outbound, &entry.issuer).await?;
            state.discovered_jwks_uri = Some(uri.clone());
            uri
        }
    };
    let body = outbound
        .get(&jwks_uri)
        .await
        .map_err(|e| format!("the JWKS {e}"))?;
    let raw: RawKeySet =
        serde_json::from_slice(&body).map_err(|_| "the JWKS is not a JSON key set".to_owned())?;
    let mut by_kid = HashMap::new();
    let mut usable = Vec::new();
    for value in raw.keys {
        // Keys this service cannot use (encryption keys, symmetric keys,
        // other key types) are skipped, not a reason to refuse the set.
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        if !is_signature_key(&jwk) {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        let key = Arc::new(key);
        if let Some(kid) = &jwk.common.key_id {
            by_kid.insert(kid.clone(), Arc::clone(&key));
        }
        usable.push(key);
    }
    let only = (usable.len() == 1).then(|| usable.remove(0));
    Ok(KeySet {
        by_kid,
        only,
        fetched_at: Instant::now(),
    })
}

/// RSA, EC or OKP keys not marked for encryption.
fn is_signature_key(jwk: &Jwk) -> bool {
    use jsonwebtoken::jwk::{AlgorithmParameters, PublicKeyUse};
    let signing = !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption));
    let asymmetric = matches!(
        jwk.algorithm,
        AlgorithmParameters::RSA(_)
            | AlgorithmParameters::EllipticCurve(_)
            | AlgorithmParameters::OctetKeyPair(_)
    );
    signing && asymmetric
}

/// `jwks_uri` from `<issuer>/.well-known/openid-configuration`, which must
/// name the same issuer and an https (or loopback) URI.
async fn discover(outbound: &Outbound, issuer: &str) -> Result<Url, String> {
    let url = checked_url(&format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    ))?;
    let body = outbound
        .get(&url)
        .await
        .map_err(|e| format!("discovery {e}"))?;
    let document: Discovery = serde_json::from_slice(&body)
        .map_err(|_| "the discovery document has no issuer and jwks_uri".to_owned())?;
    if document.issuer != issuer {
        return Err("the discovery document names another issuer".into());
    }
    checked_url(&document.jwks_uri).map_err(|why| format!("the discovered jwks_uri {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_jwt_shaped_bearers_are_taken_for_jwts() {
        assert!(looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"));
        assert!(!looks_like_jwt("a-long-api-key-0123456789"));
        assert!(!looks_like_jwt("eyJ.only-one-dot"));
        assert!(!looks_like_jwt("mw-aws-v1.eyJ"));
    }

    #[tokio::test]
    async fn none_and_hmac_tokens_are_refused_before_any_key_is_looked_up() {
        let verifier = OidcVerifier::new(Outbound::new());
        let issuers = [IssuerEntry {
            issuer: "http://127.0.0.1:9".into(),
            audience: "mw".into(),
            jwks_uri: None,
        }];
        let payload = URL_SAFE_NO_PAD
            .encode(br#"{"iss":"http://127.0.0.1:9","sub":"s","aud":"mw","exp":9999999999}"#);
        for header in [r#"{"alg":"none"}"#, r#"{"alg":"HS256","kid":"k"}"#] {
            let token = format!("{}.{payload}.", URL_SAFE_NO_PAD.encode(header));
            let refused = verifier.verify(&token, &issuers).await.unwrap_err();
            assert!(
                matches!(refused, Refusal::Unauthorized(_)),
                "{header}: {refused:?}"
            );
        }
        // Nothing was fetched from the (unreachable) issuer.
        assert!(verifier.issuers.lock().unwrap().is_empty());
    }
}
