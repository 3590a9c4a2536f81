//! Who a caller is, and what it may do. The HTTP middleware asks
//! [`Identities::authenticate`] for the principal behind a bearer
//! credential; features see only that [`Principal`]: its name (for logs and
//! metrics), its [`Scopes`] and its fair share ([`Principal::enter`]).
//!
//! Principals come from `API_KEYS` / `API_KEYS_FILE` (each key a principal
//! named after it, every scope, no limits: v1's behaviour) and from
//! `AUTH_FILE` ([`file`]), which is read again on SIGHUP and whenever it
//! changes on disk; a file that does not parse or check is refused (log line,
//! `middleway_auth_reloads_total{outcome="refused"}`) and the last good one
//! stays. Only SHA-256 digests of keys are kept, compared in constant time.
//!
//! A bearer is an API key, a JWT of a configured OIDC issuer ([`oidc`]) or
//! an AWS IAM token ([`aws`]); verified tokens are remembered until they
//! end ([`verified`]), so only a token's first request pays for a
//! signature check or an STS call.

pub mod aws;
pub mod file;
pub mod keys;
mod oidc;
mod outbound;
mod scopes;
mod usage;
mod verified;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use subtle::ConstantTimeEq;

use self::aws::{AwsVerifier, StsEndpoints};
use self::file::{IssuerEntry, SubjectMatch};
use self::keys::ApiKey;
use self::oidc::OidcVerifier;
use self::outbound::Outbound;
pub use self::scopes::Scopes;
use self::usage::Usage;
pub use self::usage::{Counted, Quota};
pub use self::verified::Refusal;
use self::verified::{Identity, VerifiedTokens};

/// Longest bearer looked at: anything longer is refused unread.
const MAX_BEARER: usize = 8 * 1024;

/// How often `AUTH_FILE` is read again.
const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// The name a request gets when authentication is off (`AUTH_DISABLED`).
const ANONYMOUS: &str = "anonymous";

/// A caller the service knows.
#[derive(Debug)]
pub struct Principal {
    /// Shown in logs, metrics and traces (never a credential).
    pub name: Arc<str>,
    pub scopes: Scopes,
    max_in_flight: Option<usize>,
    max_waiters: Option<usize>,
    usage: Arc<Usage>,
}

impl Principal {
    /// Counts one more request in flight, or lock waiter, against this
    /// principal's share; refused (429) past it.
    pub fn enter(&self, quota: Quota) -> Result<Counted, Quota> {
        let limit = match quota {
            Quota::InFlight => self.max_in_flight,
            Quota::Waiters => self.max_waiters,
        };
        self.usage.enter(quota, limit)
    }
}

/// Who is known now: key digests, OIDC subjects and IAM ARNs to principals.
#[derive(Default)]
struct Directory {
    keys: Vec<([u8; 32], Arc<Principal>)>,
    issuers: Vec<IssuerEntry>,
    subjects: Vec<(SubjectMatch, Arc<Principal>)>,
    arns: HashMap<String, Arc<Principal>>,
}

impl Directory {
    /// The principal a verified token speaks for.
    fn principal_of(&self, identity: &Identity) -> Option<Arc<Principal>> {
        match identity {
            Identity::Oidc { issuer, subject } => self
                .subjects
                .iter()
                .find(|(pattern, _)| pattern.matches(issuer, subject))
                .map(|(_, principal)| Arc::clone(principal)),
            Identity::Aws { arn } => self.arns.get(&**arn).cloned(),
        }
    }

    /// The principal of the key whose SHA-256 is `digest`. Every key is
    /// compared, and all in constant time: timing says nothing about which
    /// key (or how much of one) matched.
    fn authenticate(&self, digest: &[u8; 32]) -> Option<Arc<Principal>> {
        let mut found = None;
        for (key, principal) in &self.keys {
            if bool::from(key.ct_eq(digest)) {
                found = Some(Arc::clone(principal));
            }
        }
        found
    }
}

/// Where principals come from.
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    /// `API_KEYS` and `API_KEYS_FILE`.
    pub api_keys: Vec<ApiKey>,
    /// `AUTH_FILE`.
    pub file: Option<PathBuf>,
    /// `AUTH_DISABLED`: every request is the anonymous principal.
    pub disabled: bool,
    /// `AUTH_AWS_AUDIENCE`: IAM tokens are accepted when set.
    pub aws_audience: Option<String>,
    /// `AUTH_AWS_STS_ENDPOINTS`.
    pub aws_sts_endpoints: Option<StsEndpoints>,
}

/// The counters authentication keeps (registered by the caller).
#[derive(Clone)]
pub struct AuthCounters {
    /// `middleway_auth_reloads_total{outcome}`.
    pub reloads: prometheus::IntCounterVec,
    /// `middleway_auth_verifications_total{method, outcome}`.
    pub verifications: prometheus::IntCounterVec,
}

/// The principals in force, and how they are kept up to date.
pub struct Identities {
    settings: AuthSettings,
    directory: RwLock<Arc<Directory>>,
    /// The file's bytes last looked at (good or refused), to tell a change.
    last_read: Mutex<Option<Vec<u8>>>,
    /// Usage by principal name, kept across reloads.
    usages: Mutex<HashMap<Arc<str>, Arc<Usage>>>,
    anonymous: Arc<Principal>,
    counters: AuthCounters,
    oidc: OidcVerifier,
    /// `None` without `AUTH_AWS_AUDIENCE`.
    aws: Option<AwsVerifier>,
    verified: VerifiedTokens,
}

impl Identities {
    /// The principals of `settings`; `Err` says why `AUTH_FILE` cannot be
    /// read or does not check (never quoting a key): exit 2 at startup.
    pub(crate) fn load(
        settings: AuthSettings,
        counters: AuthCounters,
    ) -> Result<Arc<Self>, String> {
        let outbound = Outbound::new();
        let aws = settings.aws_audience.clone().map(|audience| {
            let endpoints = settings
                .aws_sts_endpoints
                .clone()
                .unwrap_or(StsEndpoints::Aws);
            AwsVerifier::new(outbound.clone(), audience, endpoints)
        });
        let identities = Self {
            oidc: OidcVerifier::new(outbound),
            aws,
            verified: VerifiedTokens::default(),
            anonymous: Arc::new(Principal {
                name: ANONYMOUS.into(),
                scopes: Scopes::all(),
                max_in_flight: None,
                max_waiters: None,
                usage: Arc::default(),
            }),
            settings,
            directory: RwLock::default(),
            last_read: Mutex::default(),
            usages: Mutex::default(),
            counters,
        };
        let text = identities.read_file()?;
        let directory = identities.directory(text.as_deref())?;
        *identities
            .directory
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(directory);
        *identities
            .last_read
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = text;
        for outcome in ["loaded", "refused"] {
            identities.counters.reloads.with_label_values(&[outcome]);
        }
        for method in ["oidc", "aws"] {
            for outcome in ["verified", "unauthorized", "unavailable"] {
                identities
                    .counters
                    .verifications
                    .with_label_values(&[method, outcome]);
            }
        }
        Ok(Arc::new(identities))
    }

    /// The principal `bearer` authenticates as, or why none.
    pub async fn authenticate(&self, bearer: Option<&str>) -> Result<Arc<Principal>, Refusal> {
        if self.settings.disabled {
            return Ok(Arc::clone(&self.anonymous));
        }
        let bearer = bearer.ok_or(Refusal::Unauthorized(
            "a valid `Authorization: Bearer <credential>` header is required",
        ))?;
        if bearer.len() > MAX_BEARER {
            return Err(Refusal::Unauthorized("the credential is longer than 8 KiB"));
        }
        let directory = Arc::clone(&self.directory.read().unwrap_or_else(|p| p.into_inner()));
        // One digest serves both the key lookup and the verified-token cache.
        let digest = verified::digest(bearer);
        if let Some(principal) = directory.authenticate(&digest) {
            return Ok(principal);
        }
        let (identity, _) = if let Some(token) = bearer.strip_prefix(aws::PREFIX) {
            let aws = self.aws.as_ref().ok_or(Refusal::Unauthorized(
                "AWS IAM authentication is not enabled (AUTH_AWS_AUDIENCE)",
            ))?;
            // Boxed, as the OIDC one below: a verification's future is
            // kilobytes, and inline it would make every authenticated
            // request's future that large, API keys' included (the size test
            // in `http::middleware::auth`).
            self.verified
                .get_or_verify(digest, || Box::pin(self.counted("aws", aws.verify(token))))
                .await?
        } else if oidc::looks_like_jwt(bearer) {
            if directory.issuers.is_empty() {
                return Err(Refusal::Unauthorized("no OIDC issuer is configured"));
            }
            self.verified
                .get_or_verify(digest, || {
                    Box::pin(self.counted("oidc", self.oidc.verify(bearer, &directory.issuers)))
                })
                .await?
        } else {
            return Err(Refusal::Unauthorized("unknown credential"));
        };
        directory
            .principal_of(&identity)
            .ok_or(Refusal::Unauthorized(
                "no principal is configured for this identity",
            ))
    }

    /// Runs one verification, counting its outcome.
    async fn counted(
        &self,
        method: &str,
        verification: impl std::future::Future<Output = verified::Verified>,
    ) -> verified::Verified {
        let verified = verification.await;
        let outcome = match &verified {
            Ok(_) => "verified",
            Err(Refusal::Unauthorized(_)) => "unauthorized",
            Err(Refusal::Unavailable(_)) => "unavailable",
        };
        self.counters
            .verifications
            .with_label_values(&[method, outcome])
            .inc();
        verified
    }

    /// Reads `AUTH_FILE` again every [`RELOAD_EVERY`] and on SIGHUP, and
    /// applies a changed file that checks; runs until aborted.
    pub(crate) async fn keep_fresh(self: Arc<Self>) {
        use tokio::signal::unix::{SignalKind, signal};
        if self.settings.file.is_none() {
            return;
        }
        let mut hangups = signal(SignalKind::hangup()).ok();
        let mut ticks = tokio::time::interval(RELOAD_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                _ = ticks.tick() => false,
                Some(()) = async { hangups.as_mut()?.recv().await } => true,
            };
            self.reload(forced);
        }
    }

    /// One look at the file; `forced` (SIGHUP) applies it even unchanged.
    fn reload(&self, forced: bool) {
        let Ok(text) = self.read_file() else {
            // Mid-swap, or gone for a moment: the next look decides.
            return;
        };
        let mut last_read = self.last_read.lock().unwrap_or_else(|p| p.into_inner());
        if !forced && *last_read == text {
            return;
        }
        let outcome = match self.directory(text.as_deref()) {
            Ok(directory) => {
                *self.directory.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(directory);
                // Issuers or audiences may have changed: tokens are verified anew.
                self.verified.clear();
                tracing::info!("AUTH_FILE reloaded");
                "loaded"
            }
            Err(why) => {
                tracing::error!(%why, "AUTH_FILE was refused; the last good one stays in force");
                "refused"
            }
        };
        *last_read = text;
        self.counters.reloads.with_label_values(&[outcome]).inc();
    }

    fn read_file(&self) -> Result<Option<Vec<u8>>, String> {
        let Some(path) = &self.settings.file else {
            return Ok(None);
        };
        std::fs::read(path)
            .map(Some)
            .map_err(|e| format!("cannot read the file: {}", e.kind()))
    }

    /// The directory of the static keys plus the file's principals.
    fn directory(&self, file: Option<&[u8]>) -> Result<Directory, String> {
        let mut directory = Directory::default();
        for key in &self.settings.api_keys {
            let principal = self.principal(key.name(), Scopes::all(), None, None);
            directory.keys.push((key.digest(), principal));
        }
        if let Some(bytes) = file {
            let text = std::str::from_utf8(bytes).map_err(|_| "is not UTF-8 text".to_owned())?;
            let file = file::parse(text, self.aws.is_some())?;
            for entry in file.principals {
                let principal = self.principal(
                    &entry.name,
                    entry.scopes,
                    entry.max_in_flight,
                    entry.max_waiters,
                );
                for key in &entry.api_keys {
                    directory
                        .keys
                        .push((verified::digest(key), Arc::clone(&principal)));
                }
                if let Some(subject) = entry.oidc {
                    directory.subjects.push((subject, Arc::clone(&principal)));
                }
                if let Some(arn) = entry.aws_arn {
                    directory.arns.insert(arn, Arc::clone(&principal));
                }
            }
            directory.issuers = file.issuers;
        }
        Ok(directory)
    }

    fn principal(
        &self,
        name: &str,
        scopes: Scopes,
        max_in_flight: Option<usize>,
        max_waiters: Option<usize>,
    ) -> Arc<Principal> {
        let mut usages = self.usages.lock().unwrap_or_else(|p| p.into_inner());
        let (name, usage) = match usages.get_key_value(name) {
            Some((name, usage)) => (Arc::clone(name), Arc::clone(usage)),
            None => {
                let name: Arc<str> = name.into();
                let usage = Arc::new(Usage::default());
                usages.insert(Arc::clone(&name), Arc::clone(&usage));
                (name, usage)
            }
        };
        Arc::new(Principal {
            name,
            scopes,
            max_in_flight,
            max_waiters,
            usage,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identities(keys: &[&str], file: Option<&str>) -> Arc<Identities> {
        let file = file.map(|text| {
            let path = std::env::temp_dir().join(format!("mw-auth-{}.toml", rand::random::<u64>()));
            std::fs::write(&path, text).unwrap();
            path
        });
        let settings = AuthSettings {
            api_keys: keys.iter().map(|k| ApiKey::parse(k).unwrap()).collect(),
            file,
            ..AuthSettings::default()
        };
        Identities::load(settings, counters()).unwrap()
    }

    fn counters() -> AuthCounters {
        let vec = |labels: &[&str]| {
            prometheus::IntCounterVec::new(prometheus::Opts::new("c", "c"), labels).unwrap()
        };
        AuthCounters {
            reloads: vec(&["outcome"]),
            verifications: vec(&["method", "outcome"]),
        }
    }

    async fn name(identities: &Identities, bearer: &str) -> Option<String> {
        identities
            .authenticate(Some(bearer))
            .await
            .ok()
            .map(|p| p.name.to_string())
    }

    #[tokio::test]
    async fn any_active_key_authenticates_as_its_principal() {
        let file = "[[principals]]\nname = \"billing\"\napi_keys = [\"cccccccccccccccc\"]\nscopes = [\"locks:b-*\"]\n";
        let ids = identities(
            &["old:aaaaaaaaaaaaaaaa", "new:bbbbbbbbbbbbbbbb"],
            Some(file),
        );
        assert_eq!(name(&ids, "aaaaaaaaaaaaaaaa").await.as_deref(), Some("old"));
        assert_eq!(name(&ids, "bbbbbbbbbbbbbbbb").await.as_deref(), Some("new"));
        assert_eq!(
            name(&ids, "cccccccccccccccc").await.as_deref(),
            Some("billing")
        );
        assert_eq!(name(&ids, "dddddddddddddddd").await, None);
        assert_eq!(name(&ids, "").await, None);
        assert!(ids.authenticate(None).await.is_err());
        let long = "k".repeat(MAX_BEARER + 1);
        assert_eq!(
            ids.authenticate(Some(&long)).await.unwrap_err(),
            Refusal::Unauthorized("the credential is longer than 8 KiB")
        );
        let old = ids.authenticate(Some("aaaaaaaaaaaaaaaa")).await.unwrap();
        assert!(old.scopes.reads_transcriptions() && old.scopes.covers_lock("anything"));
        let billing = ids.authenticate(Some("cccccccccccccccc")).await.unwrap();
        assert!(!billing.scopes.reads_transcriptions() && billing.scopes.covers_lock("b-1"));
    }

    #[tokio::test]
    async fn with_auth_disabled_everyone_is_the_anonymous_principal() {
        let settings = AuthSettings {
            disabled: true,
            ..AuthSettings::default()
        };
        let ids = Identities::load(settings, counters()).unwrap();
        assert_eq!(name(&ids, "whatever").await.as_deref(), Some("anonymous"));
        assert!(ids.authenticate(None).await.is_ok());
    }
}
