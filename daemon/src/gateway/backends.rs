//! The backends of the configured APIs, built at start and at each reload; a
//! reload keeps what did not change (connection pools, backend tokens).

use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::error::GatewayError;
use super::metrics::{ApiMetrics, HttpMetrics};
use super::proxy::{self, Backend};
use super::settings::{ApiSettings, BackendAuth, GatewaySettings};
use crate::policy::backend_auth::Credential;

/// One API's backend, with what it was built from.
#[derive(Clone)]
pub(crate) struct BackendEntry {
    api: ApiSettings,
    auth: Option<BackendAuth>,
    /// The extra backend CAs: paths, and a digest of their content.
    ca: (Vec<PathBuf>, [u8; 32]),
    pub(crate) backend: Arc<Backend>,
    pub(crate) credential: Option<CredentialUpkeep>,
}

/// A `backend_auth` token and the task that keeps it current.
#[derive(Clone)]
pub(crate) struct CredentialUpkeep {
    pub(crate) credential: Arc<Credential>,
    /// Stops the task; `None` until it runs.
    pub(crate) stop: Option<CancellationToken>,
}

impl BackendEntry {
    pub(crate) fn api(&self) -> &ApiSettings {
        &self.api
    }

    /// The backend can serve `api` as it is: same settings, same credentials and
    /// CAs. A client certificate is re-read at every reload, as the listener
    /// certificates are.
    fn serves(
        &self,
        api: &ApiSettings,
        auth: Option<&BackendAuth>,
        ca: &(Vec<PathBuf>, [u8; 32]),
    ) -> bool {
        // The listeners that route to the API do not make its backend.
        self.api.name == api.name
            && self.api.host == api.host
            && self.api.path_prefix == api.path_prefix
            && self.api.backend == api.backend
            && self.api.backend_protocol == api.backend_protocol
            && self.api.timeouts == api.timeouts
            && self.auth.as_ref() == auth
            && self.ca == *ca
            && !matches!(auth, Some(BackendAuth::ClientCert { .. }))
    }

    /// The token of `auth` can be kept: a token file (re-read when it changes) or
    /// OAuth2 client credentials with unchanged settings (no refetch, no 503 while
    /// a new token is fetched).
    fn credential_for(&self, auth: Option<&BackendAuth>) -> Option<CredentialUpkeep> {
        match auth {
            Some(BackendAuth::BearerTokenFile(_) | BackendAuth::OAuth2(_))
                if self.auth.as_ref() == auth =>
            {
                self.credential.clone()
            }
            _ => None,
        }
    }
}

/// A digest of the backend CA files as they are now (an unreadable file counts as
/// empty here; building the roots reports it).
fn ca_digest(paths: &[PathBuf]) -> (Vec<PathBuf>, [u8; 32]) {
    let mut digest = Sha256::new();
    for path in paths {
        let bytes = std::fs::read(path).unwrap_or_default();
        digest.update((bytes.len() as u64).to_le_bytes());
        digest.update(&bytes);
    }
    (paths.to_vec(), digest.finalize().into())
}

/// Builds the backends of `settings`, keeping those of `previous` that serve an
/// API unchanged. Every problem is reported.
pub(crate) fn build(
    settings: &GatewaySettings,
    previous: &[BackendEntry],
    metrics: &HttpMetrics,
) -> Result<Vec<BackendEntry>, Vec<GatewayError>> {
    let mut errors = Vec::new();
    let mut unknown: Vec<&String> = (settings.backend_auth.keys())
        .filter(|name| !settings.apis.iter().any(|api| &api.name == *name))
        .collect();
    unknown.sort();
    errors.extend(
        unknown
            .into_iter()
            .map(|api| GatewayError::BackendAuthUnknownApi { api: api.clone() }),
    );
    let ca = ca_digest(&settings.backend_ca_pem);
    let tls = proxy::backend_roots(&settings.backend_ca_pem)
        .and_then(|roots| Ok((roots.clone(), proxy::client_config(roots, None)?)))
        .map_err(|e| errors.push(e))
        .ok();
    let mut entries = Vec::with_capacity(settings.apis.len());
    for api in &settings.apis {
        let auth = settings.backend_auth.get(&api.name);
        let earlier = previous.iter().find(|p| p.api.name == api.name);
        if let Some(earlier) = earlier.filter(|e| e.serves(api, auth, &ca)) {
            // The same backend, routed from the listeners the API has now.
            entries.push(BackendEntry {
                api: api.clone(),
                ..earlier.clone()
            });
            continue;
        }
        let Some((roots, plain)) = &tls else {
            continue;
        };
        let kept = earlier.and_then(|e| e.credential_for(auth));
        match build_one(api, auth, roots, plain, kept, metrics.api(&api.name)) {
            Ok((backend, credential)) => entries.push(BackendEntry {
                api: api.clone(),
                auth: auth.cloned(),
                ca: ca.clone(),
                backend: Arc::new(backend),
                credential,
            }),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(entries)
    } else {
        Err(errors)
    }
}

fn build_one(
    api: &ApiSettings,
    auth: Option<&BackendAuth>,
    roots: &rustls::RootCertStore,
    plain: &rustls::ClientConfig,
    kept: Option<CredentialUpkeep>,
    metrics: Arc<ApiMetrics>,
) -> Result<(Backend, Option<CredentialUpkeep>), GatewayError> {
    let failed = |source| GatewayError::BackendAuth {
        api: api.name.clone(),
        source: Box::new(source),
    };
    let fresh = |credential: Credential| CredentialUpkeep {
        credential: Arc::new(credential),
        stop: None,
    };
    let (tls, credential) = match auth {
        None => (plain.clone(), None),
        Some(BackendAuth::ClientCert { cert, key }) => {
            let cert = crate::policy::backend_auth::load_client_cert(cert, key).map_err(failed)?;
            (proxy::client_config(roots.clone(), Some(cert))?, None)
        }
        Some(BackendAuth::BearerTokenFile(path)) => match kept {
            Some(kept) => (plain.clone(), Some(kept)),
            None => (
                plain.clone(),
                Some(fresh(Credential::from_file(path).map_err(failed)?)),
            ),
        },
        Some(BackendAuth::OAuth2(oauth2)) => match kept {
            Some(kept) => (plain.clone(), Some(kept)),
            None => (
                plain.clone(),
                Some(fresh(Credential::oauth2(oauth2).map_err(failed)?)),
            ),
        },
    };
    let backend = Backend::new(
        api,
        tls,
        credential.as_ref().map(|c| Arc::clone(&c.credential)),
        metrics,
    )?;
    Ok((backend, credential))
}

/// Starts the upkeep of every credential that has none yet, and points each API's
/// counters at its token (none: no token metrics), now that these backends serve.
pub(crate) fn start_upkeep(entries: &mut [BackendEntry], shutdown: &CancellationToken) {
    for entry in entries {
        (entry.backend.metrics)
            .watch_credential(entry.credential.as_ref().map(|upkeep| &upkeep.credential));
        if let Some(upkeep) = &mut entry.credential
            && upkeep.stop.is_none()
        {
            let stop = shutdown.child_token();
            tokio::spawn(
                Arc::clone(&upkeep.credential).maintain(entry.api.name.clone(), stop.clone()),
            );
            upkeep.stop = Some(stop);
        }
    }
}

/// Stops the upkeep of the credentials of `old` that `new` no longer uses.
pub(crate) fn stop_unused_upkeep(old: &[BackendEntry], new: &[BackendEntry]) {
    let in_use = |credential: &Arc<Credential>| {
        new.iter().any(|e| {
            e.credential
                .as_ref()
                .is_some_and(|c| Arc::ptr_eq(&c.credential, credential))
        })
    };
    for upkeep in old.iter().filter_map(|e| e.credential.as_ref()) {
        if !in_use(&upkeep.credential)
            && let Some(stop) = &upkeep.stop
        {
            stop.cancel();
        }
    }
}
