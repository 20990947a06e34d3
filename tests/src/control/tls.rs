//! The gateway's side of the tests: a test CA and server certificate (rcgen,
//! as in `daemon/tests/gateway_support`), an HTTPS client that sends one
//! request from a chosen source address inside a namespace, and a plain
//! HTTP backend inside the server namespace.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, bail};

use crate::netns::Pair;

/// A CA and one server certificate it signed, as PEM files.
pub struct Pki {
    pub cert: PathBuf,
    pub key: PathBuf,
    ca_der: rustls::pki_types::CertificateDer<'static>,
}

impl Pki {
    /// Writes `ca.pem`, `server.pem` and `server.key` into `dir`; the server
    /// certificate is for `names` (DNS names).
    pub fn new(dir: &Path, names: &[&str]) -> anyhow::Result<Self> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "rampart control test CA");
        let ca_cert = ca_params.self_signed(&ca_key)?;
        std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate()?;
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let cert = rcgen::CertificateParams::new(names)?.signed_by(&key, &issuer)?;
        let cert_path = dir.join("server.pem");
        let key_path = dir.join("server.key");
        std::fs::write(&cert_path, cert.pem())?;
        crate::write_private(&key_path, key.serialize_pem())?;
        Ok(Self {
            cert: cert_path,
            key: key_path,
            ca_der: ca_cert.der().clone(),
        })
    }

    fn client_config(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone())?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// Sends `GET path` with `headers` over TLS from `src` (inside namespace
    /// `ns`) to `dst`, naming the server `server_name`. `Err` when the
    /// connection or the handshake fails (e.g. the SYN was dropped); else the
    /// status and the body.
    pub fn get(
        &self,
        ns: &str,
        src: IpAddr,
        dst: SocketAddr,
        server_name: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(u16, String)> {
        let config = self.client_config()?;
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())?;
        let mut request =
            format!("GET {path} HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n");
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        Pair::in_ns(ns, move || -> anyhow::Result<(u16, String)> {
            let tcp = connect(src, dst, Duration::from_millis(700))?;
            tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
            tcp.set_write_timeout(Some(Duration::from_secs(5)))?;
            let conn = rustls::ClientConnection::new(config, name)?;
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            tls.write_all(request.as_bytes())?;
            tls.flush()?;
            let mut buf = Vec::new();
            // Connection: close; an unclean close after the response is fine.
            let mut chunk = [0u8; 4096];
            loop {
                match tls.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) if buf.is_empty() => return Err(e.into()),
                    Err(_) => break,
                }
            }
            parse_response(&buf)
        })?
    }
}

/// A TCP connection from `src` to `dst`, one SYN at most.
pub fn connect(src: IpAddr, dst: SocketAddr, timeout: Duration) -> anyhow::Result<TcpStream> {
    let domain = if dst.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::new(src, 0).into())
        .with_context(|| format!("bind {src}"))?;
    s.connect_timeout(&dst.into(), timeout)
        .with_context(|| format!("connect {src} -> {dst}"))?;
    Ok(TcpStream::from(s))
}

fn parse_response(buf: &[u8]) -> anyhow::Result<(u16, String)> {
    let text = String::from_utf8_lossy(buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("no complete HTTP response: {text:?}");
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status line: {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// A plain HTTP/1.1 backend on 127.0.0.1 inside a namespace that answers
/// every request `200 ok`; stopped on drop.
pub struct Backend {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    pub fn start(ns: &str) -> anyhow::Result<Self> {
        let listener = Pair::in_ns(ns, || TcpListener::bind("127.0.0.1:0"))??;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        std::thread::spawn(move || serve_one(s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Self {
            port,
            stop,
            thread: Some(thread),
        })
    }
}

fn serve_one(mut s: TcpStream) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Requests without a body: the head is the whole request. Keep-alive
    // connections from the gateway's pool get one answer per head.
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            if s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok",
            )
            .is_err()
            {
                return;
            }
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
