//! The HTTP client of authentication: JWKS and discovery documents from OIDC
//! issuers, `GetCallerIdentity` replays to STS. It only ever goes where the
//! configuration says ([`checked_url`]), follows no redirect (a redirect
//! could lead anywhere), and gives up fast: a slow identity provider costs a
//! JWT or IAM request a 503, never a hung request.

use std::net::IpAddr;
use std::time::Duration;

use reqwest::Url;

use crate::crypto;

/// Time to connect to an issuer or STS.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time for a whole exchange with an issuer or STS.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read (a JWKS of a few dozen keys is a few KiB).
const MAX_ANSWER: usize = 1 << 20;

/// Why an exchange gave nothing usable.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("unreachable or too slow")]
    Unreachable,
    #[error("answered {0}")]
    Status(u16),
    #[error("answered more than {MAX_ANSWER} bytes")]
    TooLarge,
}

/// One client for every outbound call of authentication (its connections
/// are pooled per host).
#[derive(Clone)]
pub struct Outbound {
    client: reqwest::Client,
}

impl Outbound {
    pub fn new() -> Self {
        crypto::install_provider();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(EXCHANGE_TIMEOUT)
            .user_agent(concat!("middleway/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a client without custom TLS settings always builds");
        Self { client }
    }

    /// `GET url`, the body of a 200 answer.
    pub async fn get(&self, url: &Url) -> Result<Vec<u8>, OutboundError> {
        let answer = self.client.get(url.clone()).send().await;
        let (status, body) = read(answer).await?;
        if status != 200 {
            return Err(OutboundError::Status(status));
        }
        Ok(body)
    }

    /// `POST url` with `headers` and `body`: the status and body of any answer.
    pub async fn post(
        &self,
        url: &Url,
        headers: reqwest::header::HeaderMap,
        body: String,
    ) -> Result<(u16, Vec<u8>), OutboundError> {
        let answer = self
            .client
            .post(url.clone())
            .headers(headers)
            .body(body)
            .send()
            .await;
        read(answer).await
    }
}

async fn read(
    answer: Result<reqwest::Response, reqwest::Error>,
) -> Result<(u16, Vec<u8>), OutboundError> {
    let mut answer = answer.map_err(|_| OutboundError::Unreachable)?;
    let status = answer.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = answer
        .chunk()
        .await
        .map_err(|_| OutboundError::Unreachable)?
    {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(OutboundError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, body))
}

/// An issuer, `jwks_uri` or STS endpoint URL: `https://`, or `http://` to a
/// loopback address (tests); nothing else, so a token's issuer or a
/// configuration typo can never send a credential in the clear.
pub fn checked_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("{text:?} is not a URL ({e})"))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        _ => false,
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => {
            return Err(format!(
                "{text:?} must be https:// (http:// only to a loopback address)"
            ));
        }
    }
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{text:?} must not carry a user, a password or a fragment"
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_http_is_accepted() {
        for good in [
            "https://issuer.example",
            "https://sts.eu-west-1.amazonaws.com/",
            "http://127.0.0.1:8080/keys",
            "http://127.9.9.9/",
            "http://[::1]:9/",
        ] {
            assert!(checked_url(good).is_ok(), "{good}");
        }
        for bad in [
            "http://issuer.example",
            "http://localhost:80/",
            "http://10.0.0.1/",
            "ftp://127.0.0.1/",
            "https://user:pw@issuer.example/",
            "not a url",
        ] {
            assert!(checked_url(bad).is_err(), "{bad}");
        }
    }
}
