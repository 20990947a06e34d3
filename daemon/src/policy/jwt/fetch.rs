//! Fetching a provider's discovery document and JWKS: https only, certificate checked
//! against the provider's roots, one deadline for the whole exchange, a cap on the
//! body, no redirects followed (a 3xx is a failure), 200 only.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use jsonwebtoken::Algorithm;
use url::Url;

use super::keyset::{DiscoveryError, KeySet, KeySetError, OidcDiscovery};

#[cfg(test)]
mod tests;

/// Bounds of one fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchLimits {
    /// Connect, TLS, request and the whole body.
    pub timeout: Duration,
    pub max_body_bytes: usize,
}

impl Default for FetchLimits {
    /// 10 s and 256 KiB: a JWKS of dozens of RSA keys is well under 64 KiB.
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            max_body_bytes: 256 * 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: only https URLs are fetched")]
    NotHttps { url: String },
    #[error("{url}: no answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url}: request failed")]
    Request {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("{url}: status {status} (200 expected; redirects are not followed)")]
    Status { url: String, status: StatusCode },
    #[error("{url}: body over {limit} bytes or cut off")]
    Body { url: String, limit: usize },
    #[error("{url}: TLS configuration")]
    Tls {
        url: String,
        #[source]
        source: rustls::Error,
    },
    #[error("{url}: not a usable JWKS")]
    Jwks {
        url: String,
        #[source]
        source: KeySetError,
    },
    #[error("{url}: not a usable discovery document")]
    Discovery {
        url: String,
        #[source]
        source: DiscoveryError,
    },
}

/// An https-only HTTP/1.1 client for one provider's key fetches.
#[derive(Clone)]
pub struct JwksClient {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl std::fmt::Debug for JwksClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksClient").finish_non_exhaustive()
    }
}

impl JwksClient {
    /// A client trusting `roots` only.
    pub fn new(roots: rustls::RootCertStore) -> Result<Self, rustls::Error> {
        Ok(Self {
            client: crate::gateway::https_client(roots, None)?,
        })
    }

    /// GETs `url` and returns its body: 200 only, within `limits`.
    pub async fn get(&self, url: &Url, limits: &FetchLimits) -> Result<Bytes, FetchError> {
        let text = crate::policy::url_for_log(url);
        let uri = (url.scheme() == "https")
            .then(|| url.as_str().parse::<Uri>().ok())
            .flatten()
            .ok_or_else(|| FetchError::NotHttps { url: text.clone() })?;
        let request = Request::get(uri)
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "rampartd")
            .body(Empty::new())
            .map_err(|_| FetchError::NotHttps { url: text.clone() })?;
        let exchange = async {
            let response =
                self.client
                    .request(request)
                    .await
                    .map_err(|source| FetchError::Request {
                        url: text.clone(),
                        source,
                    })?;
            if response.status() != StatusCode::OK {
                return Err(FetchError::Status {
                    url: text.clone(),
                    status: response.status(),
                });
            }
            let body = Limited::new(response.into_body(), limits.max_body_bytes);
            body.collect()
                .await
                .map(|collected| collected.to_bytes())
                .map_err(|_| FetchError::Body {
                    url: text.clone(),
                    limit: limits.max_body_bytes,
                })
        };
        tokio::time::timeout(limits.timeout, exchange)
            .await
            .map_err(|_| FetchError::Timeout {
                url: text.clone(),
                timeout: limits.timeout,
            })?
    }
}

/// Fetches and parses a JWKS, keeping the keys usable with `algorithms`.
pub async fn fetch_jwks(
    client: &JwksClient,
    url: &Url,
    algorithms: &[Algorithm],
    limits: &FetchLimits,
) -> Result<KeySet, FetchError> {
    let body = client.get(url, limits).await?;
    let set = KeySet::from_jwks(&body, algorithms).map_err(|source| FetchError::Jwks {
        url: crate::policy::url_for_log(url),
        source,
    })?;
    if !set.skipped().is_empty() {
        // A key the IdP signs with but that is refused here (a 1024-bit RSA key,
        // `use: enc`, past the cap) would otherwise show only as 401s.
        tracing::warn!(
            url = %crate::policy::url_for_log(url),
            kept = set.len(),
            skipped = set.skipped().len(),
            reasons = %set.skipped_summary(),
            "JWKS keys skipped"
        );
    }
    Ok(set)
}

/// Fetches and checks an OIDC discovery document (see [`OidcDiscovery::parse`]).
pub async fn fetch_discovery(
    client: &JwksClient,
    url: &Url,
    issuers: &[String],
    limits: &FetchLimits,
) -> Result<OidcDiscovery, FetchError> {
    let body = client.get(url, limits).await?;
    OidcDiscovery::parse(&body, issuers).map_err(|source| FetchError::Discovery {
        url: crate::policy::url_for_log(url),
        source,
    })
}
