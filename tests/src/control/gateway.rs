//! A rig whose rampartd also runs the gateway: a TLS listener on
//! 198.18.0.1:8443 (certificate for `localhost` from a test CA), one product
//! (`gold`) and one API (`echo`, `/echo`, subscription required) in front of
//! a backend in the server namespace that answers 200.

use std::net::IpAddr;

use anyhow::Context as _;

use super::{
    rig::{Rig, RigOptions},
    tls::{Backend, Pki},
};

/// The gateway's TLS port.
pub const GATEWAY_PORT: u16 = 8443;

pub struct Gateway {
    pub rig: Rig,
    pub pki: Pki,
    _backend: Backend,
}

impl Gateway {
    /// Starts the rig with the gateway sections; `sections` (e.g.
    /// `[filter.autoban]`) go before them.
    pub fn start(opts: RigOptions, sections: &str) -> anyhow::Result<Self> {
        let mut gw = Self::prepare(opts, sections)?;
        gw.rig.start_daemon()?;
        Ok(gw)
    }

    /// As [`Self::start`] without starting rampartd (for tests that start it
    /// another way, e.g. logging to the journal).
    pub fn prepare(opts: RigOptions, sections: &str) -> anyhow::Result<Self> {
        let mut rig = Rig::prepare(opts)?;
        let pki = Pki::new(&rig.dir.path, &["localhost"])?;
        let backend = Backend::start(&rig.pair.srv)?;
        rig.opts.sections = format!(
            r#"{sections}

[[listener]]
address = "198.18.0.1:{GATEWAY_PORT}"
tls = {{ cert = "{cert}", key = "{key}" }}

[[product]]
name = "gold"

[[api]]
name = "echo"
path_prefix = "/echo"
backend = "http://127.0.0.1:{port}/"
products = ["gold"]
"#,
            cert = pki.cert.display(),
            key = pki.key.display(),
            port = backend.port,
        );
        rig.write_config()?;
        Ok(Self {
            rig,
            pki,
            _backend: backend,
        })
    }

    /// `GET /echo/x` from `src` with subscription key `key` (if any), to the
    /// server address of `src`'s family (an IPv6 source needs a listener on
    /// `[2001:db8::1]:8443`, see [`Self::listener_v6`]): the status, or `None` when
    /// the connection failed (e.g. dropped in the kernel).
    pub fn get(&self, src: &str, key: Option<&str>) -> Option<u16> {
        self.try_get(src, key).ok()
    }

    pub fn try_get(&self, src: &str, key: Option<&str>) -> anyhow::Result<u16> {
        let src: IpAddr = src.parse().context("source address")?;
        let headers: Vec<(&str, &str)> = key
            .map(|k| vec![("Ocp-Apim-Subscription-Key", k)])
            .unwrap_or_default();
        let (status, _) = self.pki.get(
            &self.rig.pair.cli,
            src,
            (self.rig.server_addr(src), GATEWAY_PORT).into(),
            "localhost",
            "/echo/x",
            &headers,
        )?;
        Ok(status)
    }

    /// Starts rampartd (prepared, not running) with a `[[listener]]` on the
    /// server's IPv6 address and `sections` added to the configuration, the
    /// client side's second /64 (2001:db8:1::/64) routed back through the veth.
    pub fn start_with_ipv6(&mut self, sections: &str) -> anyhow::Result<()> {
        let listener = self.listener_v6();
        self.rig.opts.sections.push_str(&listener);
        self.rig.opts.sections.push_str(sections);
        self.rig.write_config()?;
        let pair = &self.rig.pair;
        pair.ip(
            &pair.srv,
            &["route", "add", "2001:db8:1::/64", "dev", &pair.srv_if],
        )?;
        self.rig.start_daemon()
    }

    /// A `[[listener]]` on the server's IPv6 address with the same certificate,
    /// to add to the sections before rampartd starts.
    pub fn listener_v6(&self) -> String {
        format!(
            "\n[[listener]]\naddress = \"[{}]:{GATEWAY_PORT}\"\n\
             tls = {{ cert = \"{}\", key = \"{}\" }}\n",
            self.rig.pair.srv_v6,
            self.pki.cert.display(),
            self.pki.key.display(),
        )
    }

    /// Whether a TCP connection from `src` to the gateway's port completes.
    pub fn tls_port_reachable(&self, src: &str) -> bool {
        self.rig.reach_port(src, GATEWAY_PORT)
    }
}
