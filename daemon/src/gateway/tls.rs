//! TLS termination: certificates loaded from PEM, chosen by SNI, swapped on reload
//! without touching established connections.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, ResolvesServerCertUsingSni};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::error::GatewayError;
use super::settings::{CertFiles, ClientAuth, ClientCa, TlsSettings};

/// The one crypto provider of the gateway (server and backend side): aws-lc-rs,
/// rustls's default, which cost less CPU per request than ring in side-by-side
/// runs (docs/benchmarks.md).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A TLS 1.2/1.3 client configuration trusting `roots`, presenting `client_cert`
/// (chain and key) when given.
pub fn client_tls_config(
    roots: rustls::RootCertStore,
    client_cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let builder = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots);
    match client_cert {
        None => Ok(builder.with_no_client_auth()),
        Some((chain, key)) => builder.with_client_auth_cert(chain, key),
    }
}

/// An https-only HTTP/1.1 client trusting `roots`, for the daemon's own small
/// requests (JWKS and discovery fetches, OAuth2 tokens): one idle connection kept.
pub fn https_client<B>(
    roots: rustls::RootCertStore,
    connect_timeout: Option<std::time::Duration>,
) -> Result<
    hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        B,
    >,
    rustls::Error,
>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(connect_timeout);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_tls_config(roots, None)?)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(1)
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            .build(connector),
    )
}

/// The server side's provider: AES-128-GCM suites first (as Mozilla's guidelines
/// order them; as safe and cheaper than AES-256), then the provider's order.
fn server_provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.sort_by_key(|suite| {
        !matches!(
            suite.suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
                | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    Arc::new(provider)
}

/// Certificates of one listener, chosen by SNI; the whole set is replaced at once.
pub struct CertResolver {
    current: ArcSwap<CertSet>,
}

struct CertSet {
    by_name: ResolvesServerCertUsingSni,
    default: Arc<CertifiedKey>,
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Private keys never reach Debug output.
        f.debug_struct("CertResolver").finish_non_exhaustive()
    }
}

impl CertResolver {
    /// Loads every certificate; any error leaves nothing half-loaded.
    pub fn load(settings: &TlsSettings) -> Result<Self, GatewayError> {
        Ok(Self {
            current: ArcSwap::from_pointee(CertSet::load(settings)?),
        })
    }

    /// Re-reads the files. New handshakes use the new certificates; on error the
    /// old ones stay in use.
    pub fn reload(&self, settings: &TlsSettings) -> Result<(), GatewayError> {
        self.install(PreparedCerts::load(settings)?);
        Ok(())
    }

    pub(crate) fn install(&self, certs: PreparedCerts) {
        self.current.store(Arc::new(certs.0));
    }
}

/// Certificates loaded and checked, not yet in use.
pub(crate) struct PreparedCerts(CertSet);

impl PreparedCerts {
    pub(crate) fn load(settings: &TlsSettings) -> Result<Self, GatewayError> {
        CertSet::load(settings).map(Self)
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.current.load();
        set.by_name
            .resolve(client_hello)
            .or_else(|| Some(Arc::clone(&set.default)))
    }
}

impl CertSet {
    fn load(settings: &TlsSettings) -> Result<Self, GatewayError> {
        let provider = crypto_provider();
        let default = Arc::new(load_certified_key(&settings.default_cert, &provider)?);
        let mut by_name = ResolvesServerCertUsingSni::new();
        let mut seen: Vec<String> = Vec::new();
        for sni in &settings.sni_certs {
            let hostname = sni.hostname.to_ascii_lowercase();
            if seen.contains(&hostname) {
                return Err(GatewayError::DuplicateSniName {
                    hostname: sni.hostname.clone(),
                });
            }
            if rustls_pki_types::DnsName::try_from(hostname.as_str()).is_err() {
                return Err(GatewayError::BadSniName {
                    hostname: sni.hostname.clone(),
                });
            }
            let key = load_certified_key(&sni.files, &provider)?;
            by_name.add(&hostname, key).map_err(|source| {
                GatewayError::SniNameNotInCertificate {
                    hostname: sni.hostname.clone(),
                    source,
                }
            })?;
            seen.push(hostname);
        }
        Ok(Self { by_name, default })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, GatewayError> {
    std::fs::read(path).map_err(|source| GatewayError::ReadPem {
        path: path.to_owned(),
        source,
    })
}

fn load_certified_key(
    files: &CertFiles,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, GatewayError> {
    let pem = read(&files.cert_chain_pem)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| GatewayError::BadPem {
            path: files.cert_chain_pem.clone(),
            source,
        })?;
    if chain.is_empty() {
        return Err(GatewayError::NoCertificate {
            path: files.cert_chain_pem.clone(),
        });
    }
    let pem = read(&files.key_pem)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|source| match source {
        rustls_pki_types::pem::Error::NoItemsFound => GatewayError::NoPrivateKey {
            path: files.key_pem.clone(),
        },
        source => GatewayError::BadPem {
            path: files.key_pem.clone(),
            source,
        },
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|source| GatewayError::CertKeyMismatch {
        cert: files.cert_chain_pem.clone(),
        key: files.key_pem.clone(),
        source,
    })
}

/// A listener's client-certificate check: the verifier for the handshake, and the
/// CA certificates (for the issuer of a certificate sent without its chain).
pub struct ClientVerification {
    pub verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    pub cas: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for ClientVerification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientVerification")
            .field("cas", &self.cas.len())
            .finish_non_exhaustive()
    }
}

/// Loads the CA bundle and CRLs of `auth` (`None` when no certificate is asked for).
pub fn client_verification(auth: &ClientAuth) -> Result<Option<ClientVerification>, GatewayError> {
    let (ca, required) = match auth {
        ClientAuth::None => return Ok(None),
        ClientAuth::Optional(ca) => (ca, false),
        ClientAuth::Required(ca) => (ca, true),
    };
    let ClientCa { ca_pem, crls } = ca;
    let pem = read(ca_pem)?;
    let cas = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| GatewayError::BadPem {
            path: ca_pem.clone(),
            source,
        })?;
    if cas.is_empty() {
        return Err(GatewayError::NoCertificate {
            path: ca_pem.clone(),
        });
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in &cas {
        roots
            .add(cert.clone())
            .map_err(|source| GatewayError::BadCaCertificate {
                path: ca_pem.clone(),
                source,
            })?;
    }
    let roots = Arc::new(roots);
    let mut lists = Vec::new();
    for path in crls {
        let bytes = read(path)?;
        let bad = |source: Box<dyn std::error::Error + Send + Sync>| GatewayError::BadCrl {
            path: path.clone(),
            source,
        };
        let pem: Vec<_> = rustls_pki_types::CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| bad(Box::new(e)))?;
        let file_lists = if pem.is_empty() {
            // Not PEM: a DER list.
            vec![rustls_pki_types::CertificateRevocationListDer::from(bytes)]
        } else {
            pem
        };
        // Parsed file by file (rustls parses them when the verifier is built), so
        // that a list it refuses is named by its own file.
        rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::clone(&roots),
            server_provider(),
        )
        .with_crls(file_lists.iter().cloned())
        .build()
        .map_err(|e| bad(Box::new(CrlError::from(e))))?;
        lists.extend(file_lists);
    }
    let mut builder =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots, server_provider())
            .with_crls(lists);
    if !required {
        builder = builder.allow_unauthenticated();
    }
    let verifier = builder.build().map_err(|e| GatewayError::BadCrl {
        path: crls.first().cloned().unwrap_or_else(|| ca_pem.clone()),
        source: Box::new(CrlError::from(e)),
    })?;
    Ok(Some(ClientVerification { verifier, cas }))
}

/// Why rustls refuses a certificate revocation list, in words: rustls's own
/// error only names a variant (`ParseError`), and what webpki tells apart there
/// (no extensions, a v1 list, a bad date) it no longer does.
#[derive(Debug, thiserror::Error)]
pub enum CrlError {
    #[error(
        "the CRL could not be parsed; rampartd needs an X.509 v2 CRL with the CRL Number and Authority Key Identifier extensions (RFC 5280)"
    )]
    Unparsable,
    #[error(
        "it is not a version 2 CRL; rampartd needs an X.509 v2 CRL with the CRL Number and Authority Key Identifier extensions (RFC 5280)"
    )]
    Version,
    #[error("its CRL Number is not a non-negative integer of at most 20 octets (RFC 5280 §5.2.3)")]
    CrlNumber,
    #[error("a revoked certificate's serial number is not a valid one (RFC 5280 §4.1.2.2)")]
    SerialNumber,
    #[error("it is a delta CRL; rampartd needs a complete CRL")]
    Delta,
    #[error(
        "it is an indirect CRL (it lists certificates of other issuers), which rampartd does not use"
    )]
    Indirect,
    #[error(
        "it has a critical extension rampartd does not know, so it cannot be used (RFC 5280 §5.2)"
    )]
    CriticalExtension,
    #[error("it has a revocation reason code RFC 5280 does not define (§5.3.1)")]
    RevocationReason,
    #[error("rustls refuses it")]
    Other(#[source] rustls::server::VerifierBuilderError),
}

impl From<rustls::server::VerifierBuilderError> for CrlError {
    fn from(e: rustls::server::VerifierBuilderError) -> Self {
        use rustls::CertRevocationListError as E;
        match &e {
            rustls::server::VerifierBuilderError::InvalidCrl(crl) => match crl {
                E::ParseError => Self::Unparsable,
                E::UnsupportedCrlVersion => Self::Version,
                E::InvalidCrlNumber => Self::CrlNumber,
                E::InvalidRevokedCertSerialNumber => Self::SerialNumber,
                E::UnsupportedDeltaCrl => Self::Delta,
                E::UnsupportedIndirectCrl => Self::Indirect,
                E::UnsupportedCriticalExtension => Self::CriticalExtension,
                E::UnsupportedRevocationReason => Self::RevocationReason,
                _ => Self::Other(e),
            },
            _ => Self::Other(e),
        }
    }
}

/// What a TLS listener's handshakes use: replaced whole by a reload, so that a
/// connection takes one consistent set (certificates, client CAs) when it is accepted.
pub(crate) struct ListenerTls {
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
    /// The CA certificates client certificates are verified against (issuer lookup).
    pub(crate) client_cas: Arc<Vec<CertificateDer<'static>>>,
    /// Reloaded in place by [`super::CertReloader`].
    pub(crate) resolver: Arc<CertResolver>,
    pub(crate) settings: TlsSettings,
}

impl ListenerTls {
    /// Loads the certificates, the client CAs and CRLs of `settings`.
    pub(crate) fn load(settings: &TlsSettings) -> Result<Self, GatewayError> {
        let resolver = Arc::new(CertResolver::load(settings)?);
        let clients = client_verification(&settings.client_auth)?;
        let config = server_config(Arc::clone(&resolver), clients.as_ref())?;
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            client_cas: Arc::new(clients.map(|c| c.cas).unwrap_or_default()),
            resolver,
            settings: settings.clone(),
        })
    }
}

/// TLS 1.2 and 1.3 only, ALPN `h2` then `http/1.1`, certificates from `resolver`,
/// client certificates checked by `clients` when given.
pub fn server_config(
    resolver: Arc<CertResolver>,
    clients: Option<&ClientVerification>,
) -> Result<ServerConfig, GatewayError> {
    let builder = ServerConfig::builder_with_provider(server_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| GatewayError::TlsConfig { source })?;
    let builder = match clients {
        Some(clients) => builder.with_client_cert_verifier(Arc::clone(&clients.verifier)),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // The server's order of the suites decides, not the client's.
    config.ignore_client_order = true;
    // Resumption that strangers cannot take away: TLS 1.3 sessions go to the client
    // in tickets (keys rotated every 6 hours, new ones with each configuration, so a
    // changed client CA or CRL resumes nothing from before), rather than in a cache
    // of 256 that a few hundred handshakes from anyone evict; TLS 1.2 session IDs
    // get a larger cache (about 200 bytes a session), as nginx's
    // `ssl_session_cache shared:SSL:10m` holds ~40,000.
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
        .map_err(|source| GatewayError::TlsConfig { source })?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    Ok(config)
}

/// TLS 1.2 sessions kept per listener configuration for resumption by session ID.
const SESSION_CACHE_SIZE: usize = 20_000;

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CertRevocationListError as E;
    use rustls::server::VerifierBuilderError;

    #[test]
    fn refused_crls_say_what_is_wrong() {
        let said = |e: E| CrlError::from(VerifierBuilderError::InvalidCrl(e)).to_string();
        assert_eq!(
            said(E::ParseError),
            "the CRL could not be parsed; rampartd needs an X.509 v2 CRL with the CRL Number and Authority Key Identifier extensions (RFC 5280)"
        );
        assert!(said(E::UnsupportedCrlVersion).starts_with("it is not a version 2 CRL;"));
        assert!(said(E::InvalidCrlNumber).contains("CRL Number"));
        assert!(said(E::UnsupportedDeltaCrl).contains("delta CRL"));
        assert!(said(E::UnsupportedIndirectCrl).contains("indirect CRL"));
        assert!(said(E::UnsupportedCriticalExtension).contains("critical extension"));
        // What has no words of ours keeps rustls's.
        let other = CrlError::from(VerifierBuilderError::InvalidCrl(E::BadSignature));
        assert_eq!(
            crate::service::chain(&other),
            "rustls refuses it: provided CRL could not be parsed: BadSignature"
        );
    }
}
