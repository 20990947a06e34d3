//! `[[api]] backend_auth`: the three forms, and where a wrong one is reported.

use super::*;
use crate::policy::backend_auth::{BackendAuth, OAuth2Settings};

/// A scratch directory for the files `backend_auth` names (removed on drop).
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "rampart-config-backend-auth-{}-{name}-{n}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, content: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, content).unwrap();
        path.display().to_string()
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An API to `backend` (lines 3-6 after the filter) whose last line is `backend_auth = {auth}`.
fn api(backend: &str, auth: &str) -> String {
    with_filter(&format!(
        "[[api]]\nname = \"a\"\npath_prefix = \"/\"\nbackend = \"{backend}\"\nbackend_auth = {auth}\n"
    ))
}

/// `t.toml:LINE:COL` of the first `needle` in `text`.
fn at(text: &str, needle: &str) -> String {
    let offset = text.find(needle).unwrap();
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = offset - before.rfind('\n').map_or(0, |nl| nl + 1) + 1;
    format!("{FILE}:{line}:{col}")
}

/// A self-signed certificate and its key, as PEM.
fn cert_and_key() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["gw.test".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

#[test]
fn absent_means_none() {
    let config = parse_ok(&with_filter(
        "[[api]]\nname = \"a\"\npath_prefix = \"/\"\nbackend = \"http://b\"\n",
    ));
    assert_eq!(config.apis[0].backend_auth, None);
}

#[test]
fn client_certificate_is_loaded_and_needs_https() {
    let dir = Dir::new("cert");
    let (cert, key) = cert_and_key();
    let cert = dir.write("c.pem", &cert);
    let key = dir.write("c.key", &key);
    let auth = format!("{{ client_cert = {cert:?}, client_key = {key:?} }}");
    let config = parse_ok(&api("https://backend.test/", &auth));
    assert_eq!(
        config.apis[0].backend_auth,
        Some(BackendAuth::ClientCert {
            cert: cert.clone().into(),
            key: key.clone().into()
        })
    );

    let text = api("http://backend.test/", &auth);
    let error = single_error(&text);
    assert!(error.contains("needs an https:// backend"), "{error}");
    assert!(
        error.starts_with(&at(&text, &format!("{cert:?}"))),
        "{error}"
    );

    // A key that is not the certificate's.
    let (_, other_key) = cert_and_key();
    let other_key = dir.write("other.key", &other_key);
    let text = api(
        "https://backend.test/",
        &format!("{{ client_cert = {cert:?}, client_key = {other_key:?} }}"),
    );
    let error = single_error(&text);
    assert!(error.contains("does not match key"), "{error}");

    // Half of the pair.
    let error = single_error(&api(
        "https://backend.test/",
        &format!("{{ client_cert = {cert:?} }}"),
    ));
    assert!(error.contains("needs `client_key`"), "{error}");
    // A missing file.
    let missing = dir.path("missing.pem");
    let error = single_error(&api(
        "https://backend.test/",
        &format!("{{ client_cert = {missing:?}, client_key = {key:?} }}"),
    ));
    assert!(error.contains("cannot read"), "{error}");
}

#[test]
fn bearer_token_file_must_hold_a_token() {
    let dir = Dir::new("token");
    let token = dir.write("token", "t-1\n");
    let config = parse_ok(&api(
        "http://b/",
        &format!("{{ bearer_token_file = {token:?} }}"),
    ));
    assert_eq!(
        config.apis[0].backend_auth,
        Some(BackendAuth::BearerTokenFile(token.into()))
    );

    let missing = dir.path("missing");
    let text = api(
        "http://b/",
        &format!("{{ bearer_token_file = {missing:?} }}"),
    );
    let error = single_error(&text);
    assert!(
        error.starts_with(&format!("{}: ", at(&text, &format!("{missing:?}")))),
        "{error}"
    );
    assert!(error.contains("cannot read"), "{error}");

    let empty = dir.write("empty", " \n");
    let error = single_error(&api(
        "http://b/",
        &format!("{{ bearer_token_file = {empty:?} }}"),
    ));
    assert!(error.contains("is empty"), "{error}");

    let error = single_error(&api("http://b/", "{ bearer_token_file = \"token\" }"));
    assert!(error.contains("must be an absolute path"), "{error}");
}

#[test]
fn oauth2_settings_parse_and_are_checked() {
    let dir = Dir::new("oauth2");
    let secret = dir.write("secret", "s3cr3t-value\n");
    let (ca, _) = cert_and_key();
    let ca = dir.write("ca.pem", &ca);
    let config = parse_ok(&api(
        "http://b/",
        &format!(
            "{{ oauth2 = {{ token_url = \"https://idp.test/token\", client_id = \"gw\", client_secret_file = {secret:?}, scope = \"api://b/.default\", ca_file = {ca:?} }} }}"
        ),
    ));
    assert_eq!(
        config.apis[0].backend_auth,
        Some(BackendAuth::OAuth2(OAuth2Settings {
            token_url: "https://idp.test/token".parse().unwrap(),
            client_id: "gw".into(),
            client_secret_file: secret.clone().into(),
            scope: Some("api://b/.default".into()),
            ca_file: Some(ca.into()),
        }))
    );

    let text = api(
        "http://b/",
        &format!(
            "{{ oauth2 = {{ token_url = \"http://idp.test/token\", client_id = \"gw\", client_secret_file = {secret:?} }} }}"
        ),
    );
    let error = single_error(&text);
    assert!(
        error.starts_with(&format!("{}: ", at(&text, "\"http://idp"))),
        "{error}"
    );
    assert!(error.contains("expected an https:// URL"), "{error}");

    // hunt9 L3: credentials in the URL are never sent; refused, and not echoed.
    let text = api(
        "http://b/",
        &format!(
            "{{ oauth2 = {{ token_url = \"https://gw:SuperSecretPw@idp.test/token\", client_id = \"gw\", client_secret_file = {secret:?} }} }}"
        ),
    );
    let error = single_error(&text);
    assert!(
        error.starts_with(&format!("{}: ", at(&text, "\"https://gw:"))),
        "{error}"
    );
    assert!(
        error.contains("a user name or password in the URL"),
        "{error}"
    );
    assert!(!error.contains("SuperSecretPw"), "{error}");

    // Missing keys, an empty secret file (never its content in the message).
    let errors = parse_err(&api(
        "http://b/",
        "{ oauth2 = { token_url = \"https://i/t\" } }",
    ));
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].contains("needs `client_id`"), "{errors:#?}");
    assert!(
        errors[1].contains("needs `client_secret_file`"),
        "{errors:#?}"
    );
    let empty = dir.write("empty", "");
    let error = single_error(&api(
        "http://b/",
        &format!(
            "{{ oauth2 = {{ token_url = \"https://i/t\", client_id = \"gw\", client_secret_file = {empty:?} }} }}"
        ),
    ));
    assert!(error.contains("is empty"), "{error}");
    // A bad CA file.
    let error = single_error(&api(
        "http://b/",
        &format!(
            "{{ oauth2 = {{ token_url = \"https://i/t\", client_id = \"gw\", client_secret_file = {secret:?}, ca_file = {secret:?} }} }}"
        ),
    ));
    assert!(error.contains("ca_file"), "{error}");
    assert!(!error.contains("s3cr3t"), "{error}");
}

#[test]
fn exactly_one_form_and_no_unknown_keys() {
    let dir = Dir::new("forms");
    let token = dir.write("token", "t");
    let text = api(
        "http://b/",
        &format!("{{ bearer_token_file = {token:?}, oauth2 = {{ token_url = \"https://i/t\" }} }}"),
    );
    let error = single_error(&text);
    assert!(error.contains("exactly one of"), "{error}");
    let error = single_error(&api("http://b/", "{}"));
    assert!(error.contains("exactly one of"), "{error}");

    let text = api("http://b/", "{ token = \"x\" }");
    let error = single_error(&text);
    assert!(error.contains("unknown field `token`"), "{error}");
    assert!(error.starts_with(&format!("{FILE}:7:")), "{error}");
}
