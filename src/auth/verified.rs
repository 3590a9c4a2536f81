//! Tokens already verified (JWTs and IAM tokens), so a function that sends
//! the same token on every call pays for a signature check or an STS call
//! once, not per request: keyed by the token's SHA-256 (never the token),
//! kept until the token's own end, bounded in number. Concurrent checks of
//! one token share one verification (one JWKS fetch, one STS call).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

/// Most tokens remembered; past it, expired ones are dropped, and if none
/// has expired the cache starts over (a verification each is the worst case).
const MAX_ENTRIES: usize = 10_000;

/// Who a verified token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// An OIDC subject of an issuer.
    Oidc { issuer: Arc<str>, subject: Arc<str> },
    /// An IAM role or user ARN (an assumed role already turned into its role).
    Aws { arn: Arc<str> },
}

/// Why a credential was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 401, with what was wrong (never the credential itself).
    Unauthorized(&'static str),
    /// 503: the identity provider (JWKS or STS) could not be asked.
    Unavailable(&'static str),
}

/// A verification's result: the identity and until when it holds.
pub type Verified = Result<(Identity, SystemTime), Refusal>;

/// A token's SHA-256.
pub type Digest32 = [u8; 32];

/// The SHA-256 of `token`.
pub fn digest(token: &str) -> Digest32 {
    Sha256::digest(token.as_bytes()).into()
}

#[derive(Default)]
pub struct VerifiedTokens {
    entries: Mutex<HashMap<Digest32, (Identity, SystemTime)>>,
    in_flight: Mutex<HashMap<Digest32, Arc<OnceCell<Verified>>>>,
}

impl VerifiedTokens {
    /// The identity of the token whose SHA-256 is `digest`: from the cache
    /// while it holds, else from `verify` (run once for all concurrent
    /// callers with this token).
    pub async fn get_or_verify<F>(&self, digest: Digest32, verify: impl FnOnce() -> F) -> Verified
    where
        F: Future<Output = Verified>,
    {
        let now = SystemTime::now();
        if let Some((identity, until)) = lock(&self.entries).get(&digest)
            && *until > now
        {
            return Ok((identity.clone(), *until));
        }
        let cell = Arc::clone(lock(&self.in_flight).entry(digest).or_default());
        // A caller that gives up (its client hung up) hands the verification
        // to the next waiter: tokio's OnceCell runs another init then.
        let verified = cell.get_or_init(verify).await.clone();
        // No await from here on, so this cannot be cut short half done.
        if let Ok((identity, until)) = &verified {
            self.remember(digest, identity.clone(), *until);
        }
        let mut in_flight = lock(&self.in_flight);
        if in_flight
            .get(&digest)
            .is_some_and(|current| Arc::ptr_eq(current, &cell))
        {
            in_flight.remove(&digest);
        }
        verified
    }

    /// Forgets every token (the issuers' settings changed).
    pub fn clear(&self) {
        lock(&self.entries).clear();
    }

    fn remember(&self, digest: Digest32, identity: Identity, until: SystemTime) {
        let mut entries = lock(&self.entries);
        if entries.len() >= MAX_ENTRIES {
            let now = SystemTime::now();
            entries.retain(|_, (_, until)| *until > now);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(digest, (identity, until));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.entries).len()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    fn role(name: &str) -> Identity {
        Identity::Aws { arn: name.into() }
    }

    #[tokio::test]
    async fn concurrent_checks_of_one_token_verify_it_once_and_later_ones_hit_the_cache() {
        let tokens = Arc::new(VerifiedTokens::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let mut checks = Vec::new();
        for _ in 0..20 {
            let (tokens, calls) = (Arc::clone(&tokens), Arc::clone(&calls));
            checks.push(tokio::spawn(async move {
                tokens
                    .get_or_verify(digest("token"), || async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok((role("r"), SystemTime::now() + Duration::from_secs(60)))
                    })
                    .await
            }));
        }
        for check in checks {
            assert_eq!(check.await.unwrap().unwrap().0, role("r"));
        }
        let again = tokens
            .get_or_verify(digest("token"), || async { unreachable!("cached") })
            .await;
        assert!(again.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn refusals_and_expired_entries_are_not_served_from_the_cache() {
        let tokens = VerifiedTokens::default();
        let refused = tokens
            .get_or_verify(digest("t"), || async { Err(Refusal::Unavailable("down")) })
            .await;
        assert_eq!(refused, Err(Refusal::Unavailable("down")));
        let past = SystemTime::now() - Duration::from_secs(1);
        let _ = tokens
            .get_or_verify(digest("t"), || async { Ok((role("old"), past)) })
            .await;
        let fresh = tokens
            .get_or_verify(digest("t"), || async {
                Ok((role("new"), SystemTime::now() + Duration::from_secs(60)))
            })
            .await;
        assert_eq!(fresh.unwrap().0, role("new"));
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_hands_the_check_to_the_next_one() {
        let tokens = Arc::new(VerifiedTokens::default());
        let slow = {
            let tokens = Arc::clone(&tokens);
            tokio::spawn(async move {
                tokens
                    .get_or_verify(digest("t"), || async {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        Err(Refusal::Unavailable("never"))
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        slow.abort();
        let verified = tokens
            .get_or_verify(digest("t"), || async {
                Ok((role("r"), SystemTime::now() + Duration::from_secs(60)))
            })
            .await;
        assert!(verified.is_ok());
    }

    #[tokio::test]
    async fn the_cache_stays_bounded() {
        let tokens = VerifiedTokens::default();
        for i in 0..(MAX_ENTRIES + 5) {
            let _ = tokens
                .get_or_verify(digest(&i.to_string()), || async {
                    Ok((role("r"), SystemTime::now() + Duration::from_secs(60)))
                })
                .await;
        }
        assert!(tokens.len() <= MAX_ENTRIES);
    }
}
