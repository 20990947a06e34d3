//! What the demo writes into its directory before starting anything: the
//! configuration, the self-signed certificate, the JWT provider's key, the
//! country table and the backend; and the token it signs once rampartd runs.

use std::{
    path::Path,
    process::Command,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};

use super::{ADMIN, LISTEN, PINS, SRV_IF};
use crate::process;

/// The demo identity provider's HS256 secret, in standard base64 (the form
/// `hmac_secret_file` takes): "rampart-demo HS256 key, not a secret!", 37
/// bytes. Fixed so that tokens made by hand with it keep working.
pub(super) const JWT_SECRET_BASE64: &str = "cmFtcGFydC1kZW1vIEhTMjU2IGtleSwgbm90IGEgc2VjcmV0IQ==";

/// `iss` and `aud` of the demo's tokens, as the provider requires them.
const JWT_ISSUER: &str = "rampart-demo";

/// The backend's address inside the server namespace: loopback, so only the
/// gateway reaches it.
pub(super) const BACKEND: &str = "127.0.0.1:8080";

/// Writes every input file of the demo into `dir`.
pub(super) fn write_all(dir: &Path, log_target: &str) -> Result<()> {
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    write(
        "countries.csv",
        "network,country\n198.18.0.4/32,xx\n198.18.0.0/24,aa\n",
    )?;
    write("jwt-hs256.b64", JWT_SECRET_BASE64)?;
    write("backend.py", BACKEND_PY)?;
    write("rampart.toml", &config(dir, log_target))?;
    certificate(dir)
}

/// The configuration rampartd runs with: the kernel filter on the server's
/// veth, a TLS listener, a product with a rate limit, an API that needs a
/// subscription key and one that needs a token with a role.
fn config(dir: &Path, log_target: &str) -> String {
    let d = dir.display();
    format!(
        r#"# rampart demo configuration (written by `cargo xtask run`; see docs/configuration.md)
[daemon]
state_dir = "{d}/state"
runtime_dir = "{d}/run"
pin_root = "{PINS}"
# The journal when one runs (the demo starts systemd-journald if needed).
log_target = "{log_target}"
# /metrics, /healthz and /readyz, inside the server namespace.
admin_listen = "{ADMIN}"

[filter]
interfaces = ["{SRV_IF}"]
attach_mode = "native"
protect = ["tcp/8443"]
deny = ["198.18.0.3"]

[filter.geo]
database = "{d}/countries.csv"
block = ["xx"]

[[listener]]
address = "{LISTEN}"
tls = {{ cert = "{d}/tls/cert.pem", key = "{d}/tls/key.pem" }}

[[product]]
name = "starter"
# Small on purpose: a loop of requests shows the 429.
rate_limit = {{ calls = 5, period_secs = 10 }}

[[jwt_provider]]
name = "demo"
algorithms = ["HS256"]
keys = [{{ hmac_secret_file = "{d}/jwt-hs256.b64" }}]
issuers = ["{JWT_ISSUER}"]
audiences = ["{JWT_ISSUER}"]

# Everything under / needs a subscription key of product "starter".
[[api]]
name = "demo"
path_prefix = "/"
backend = "http://{BACKEND}"
products = ["starter"]
subscription = "required"

# /secure needs a token instead: GET with role "reader", other methods "writer".
[[api]]
name = "secure"
path_prefix = "/secure"
backend = "http://{BACKEND}"
subscription = "none"
jwt = {{ provider = "demo", roles_claim = "roles", roles = [
  {{ methods = ["GET"], values = ["reader"] }},
  {{ values = ["writer"] }},
], claims_to_headers = [{{ claim = "sub", header = "X-Demo-User" }}] }}
"#
    )
}

/// A self-signed certificate for 198.18.0.1 and "rampart-demo", valid a day,
/// made with openssl (installed by setup) so that xtask needs no X.509 crate.
fn certificate(dir: &Path) -> Result<()> {
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).with_context(|| format!("cannot create {}", tls.display()))?;
    process::stdout(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=rampart-demo",
                "-addext",
                "subjectAltName=IP:198.18.0.1,DNS:rampart-demo",
                "-keyout",
            ])
            .arg(tls.join("key.pem"))
            .arg("-out")
            .arg(tls.join("cert.pem")),
    )
    .context("making the demo's self-signed certificate")?;
    Ok(())
}

/// A token of the demo provider for user "demo-user" with role "reader",
/// valid for an hour.
pub(super) fn token() -> Result<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = serde_json::json!({
        "iss": JWT_ISSUER,
        "aud": JWT_ISSUER,
        "sub": "demo-user",
        "roles": ["reader"],
        "iat": now,
        "exp": now + 3600,
    });
    let key = jsonwebtoken::EncodingKey::from_base64_secret(JWT_SECRET_BASE64)
        .context("the demo's HMAC secret is not base64")?;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &key,
    )
    .context("signing the demo token")
}

/// The demo backend: answers every request with JSON saying what it got,
/// including the user the gateway took from the token (`X-Demo-User`).
const BACKEND_PY: &str = r#"import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Echo(BaseHTTPRequestHandler):
    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps({
            "message": "hello from the demo backend",
            "method": self.command,
            "path": self.path,
            "user": self.headers.get("X-Demo-User"),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = answer

    def log_message(self, *args):
        pass

host, port = sys.argv[1].rsplit(":", 1)
server = ThreadingHTTPServer((host, int(port)), Echo)
# Bound and listening: tell the demo, which waits for this file.
open(sys.argv[2], "w").close()
server.serve_forever()
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::CLI_IF;

    #[test]
    fn the_secret_is_long_enough_for_hs256() {
        // The daemon refuses HMAC secrets under 32 bytes; 52 base64
        // characters with "==" carry 37.
        assert!(JWT_SECRET_BASE64.len() / 4 * 3 - 2 >= 32);
    }

    #[test]
    fn tokens_are_three_base64url_parts() {
        let token = token().unwrap();
        assert_eq!(token.split('.').count(), 3, "{token}");
    }

    #[test]
    fn config_names_the_demo_files() {
        let text = config(Path::new("/tmp/x"), "journald");
        assert!(text.contains("cert = \"/tmp/x/tls/cert.pem\""), "{text}");
        assert!(text.contains(&format!("interfaces = [\"{SRV_IF}\"]")));
        // The client side is never filtered by rampartd.
        assert!(!text.contains(CLI_IF));
    }
}
