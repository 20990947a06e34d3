//! Two network namespaces joined by a veth pair, owned by a guard that
//! deletes both on drop. Addresses come from 198.18.0.0/15 and 2001:db8::/32
//! (documentation range, only inside these namespaces): traffic never leaves
//! the pair.

use std::{
    ffi::CString,
    fs::File,
    io,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, bail};

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Server side `srv` (address .1) and client side `cli` (.2 and any extra
/// addresses asked for).
pub struct Pair {
    pub srv: String,
    pub cli: String,
    /// The server-side interface name (inside `srv`).
    pub srv_if: String,
    pub cli_if: String,
    pub srv_v4: IpAddr,
    pub srv_v6: IpAddr,
}

impl Pair {
    /// Creates the namespaces and the veth pair. `client_addrs` are added to
    /// the client interface (IPv4 in 198.18.0.0/24, IPv6 in 2001:db8::/64).
    pub fn new(client_addrs: &[IpAddr]) -> anyhow::Result<Self> {
        let tag = crate::unique("");
        let pair = Self {
            srv: format!("rps{tag}"),
            cli: format!("rpc{tag}"),
            srv_if: format!("vs{tag}"),
            cli_if: format!("vc{tag}"),
            srv_v4: "198.18.0.1".parse()?,
            srv_v6: "2001:db8::1".parse()?,
        };
        // The guard exists from here on: a failure below still cleans up.
        ip(&["netns", "add", &pair.srv])?;
        ip(&["netns", "add", &pair.cli])?;
        ip(&[
            "link",
            "add",
            &pair.srv_if,
            "netns",
            &pair.srv,
            "type",
            "veth",
            "peer",
            "name",
            &pair.cli_if,
            "netns",
            &pair.cli,
        ])?;
        for (ns, dev) in [(&pair.srv, &pair.srv_if), (&pair.cli, &pair.cli_if)] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        ip(&[
            "-n",
            &pair.srv,
            "addr",
            "add",
            "198.18.0.1/24",
            "dev",
            &pair.srv_if,
        ])?;
        ip(&[
            "-n",
            &pair.srv,
            "addr",
            "add",
            "2001:db8::1/64",
            "dev",
            &pair.srv_if,
            "nodad",
        ])?;
        ip(&[
            "-n",
            &pair.cli,
            "addr",
            "add",
            "198.18.0.2/24",
            "dev",
            &pair.cli_if,
        ])?;
        ip(&[
            "-n",
            &pair.cli,
            "addr",
            "add",
            "2001:db8::2/64",
            "dev",
            &pair.cli_if,
            "nodad",
        ])?;
        for a in client_addrs {
            let (cidr, extra) = match a {
                IpAddr::V4(v4) => (format!("{v4}/24"), None),
                IpAddr::V6(v6) => (format!("{v6}/64"), Some("nodad")),
            };
            let mut args = vec!["-n", &pair.cli, "addr", "add", &cidr, "dev", &pair.cli_if];
            if let Some(e) = extra {
                args.push(e);
            }
            ip(&args)?;
        }
        Ok(pair)
    }

    /// Runs `f` on a thread that has entered namespace `ns`.
    pub fn in_ns<T: Send + 'static>(
        ns: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let path = format!("/var/run/netns/{ns}");
        let file = File::open(&path).with_context(|| path.clone())?;
        let h = std::thread::spawn(move || -> anyhow::Result<T> {
            // SAFETY: a valid namespace fd; affects this thread only.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns: {}", io::Error::last_os_error());
            }
            Ok(f())
        });
        h.join()
            .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
    }

    /// A TCP server in `srv` on `port` (IPv4 and IPv6) that accepts and
    /// closes connections until the returned guard is dropped.
    pub fn serve(&self, port: u16) -> anyhow::Result<Server> {
        let srv = self.srv.clone();
        let listeners = Self::in_ns(&srv, move || -> io::Result<Vec<TcpListener>> {
            let v4 = TcpListener::bind(("0.0.0.0", port))?;
            let v6 = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
            v6.set_only_v6(true)?;
            v6.set_reuse_address(true)?;
            v6.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)).into())?;
            v6.listen(128)?;
            Ok(vec![v4, v6.into()])
        })??;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for l in listeners {
            l.set_nonblocking(true)?;
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((s, _)) => drop(s),
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }));
        }
        Ok(Server { stop, threads })
    }

    /// Whether a TCP connection from `src` (an address of the client side)
    /// to `dst:port` completes within `timeout`.
    pub fn connects(&self, src: IpAddr, dst: IpAddr, port: u16, timeout: Duration) -> bool {
        let cli = self.cli.clone();
        Self::in_ns(&cli, move || {
            connect_from(src, SocketAddr::new(dst, port), timeout)
        })
        .unwrap_or(false)
    }

    /// Sends whole Ethernet frames (e.g. from [`crate::packet`]) out of the
    /// client interface through a raw socket: the server side's XDP program
    /// sees them as any packet on the wire, whatever source address they
    /// carry (no address needs to be configured, no handshake to complete).
    pub fn inject(&self, frames: Vec<Vec<u8>>) -> anyhow::Result<()> {
        let (cli, dev) = (self.cli.clone(), CString::new(self.cli_if.clone())?);
        Self::in_ns(&cli, move || -> anyhow::Result<()> {
            // SAFETY: a valid NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(dev.as_ptr()) };
            if ifindex == 0 {
                bail!("if_nametoindex {dev:?}: {}", io::Error::last_os_error());
            }
            // SAFETY: socket(2) with constant arguments; the result is checked.
            let fd =
                unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                bail!("AF_PACKET socket: {}", io::Error::last_os_error());
            }
            // SAFETY: a fresh descriptor owned by nothing else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: sockaddr_ll is plain data; all zeroes is valid.
            let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            to.sll_family = libc::AF_PACKET as u16;
            to.sll_ifindex = i32::try_from(ifindex)?;
            for frame in &frames {
                // SAFETY: the frame and the address are valid for their lengths.
                let sent = unsafe {
                    libc::sendto(
                        fd.as_raw_fd(),
                        frame.as_ptr().cast(),
                        frame.len(),
                        0,
                        (&raw const to).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                    )
                };
                if sent < 0 {
                    bail!("sending a frame: {}", io::Error::last_os_error());
                }
            }
            Ok(())
        })?
    }

    /// Sets a 32-bit attribute of link `dev` in namespace `ns` by rtnetlink
    /// (RTM_NEWLINK), for attributes the installed iproute2 may not know
    /// (`IFLA_GSO_IPV4_MAX_SIZE`, `IFLA_GRO_IPV4_MAX_SIZE`: iproute2 6.3).
    pub fn set_link_u32(&self, ns: &str, dev: &str, attr: u16, value: u32) -> anyhow::Result<()> {
        let dev = CString::new(dev)?;
        Self::in_ns(ns, move || -> anyhow::Result<()> {
            // SAFETY: a valid NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(dev.as_ptr()) };
            if ifindex == 0 {
                bail!("if_nametoindex {dev:?}: {}", io::Error::last_os_error());
            }
            // SAFETY: socket(2) with constant arguments; the result is checked.
            let fd = unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::NETLINK_ROUTE,
                )
            };
            if fd < 0 {
                bail!("netlink socket: {}", io::Error::last_os_error());
            }
            // SAFETY: a fresh descriptor owned by nothing else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // nlmsghdr (16), ifinfomsg (16), one attribute (4 + 4).
            let mut msg = Vec::with_capacity(40);
            msg.extend_from_slice(&40u32.to_ne_bytes());
            msg.extend_from_slice(&libc::RTM_NEWLINK.to_ne_bytes());
            let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
            msg.extend_from_slice(&flags.to_ne_bytes());
            msg.extend_from_slice(&1u32.to_ne_bytes());
            msg.extend_from_slice(&0u32.to_ne_bytes());
            msg.extend_from_slice(&[0, 0, 0, 0]);
            msg.extend_from_slice(&i32::try_from(ifindex)?.to_ne_bytes());
            msg.extend_from_slice(&[0; 8]);
            msg.extend_from_slice(&8u16.to_ne_bytes());
            msg.extend_from_slice(&attr.to_ne_bytes());
            msg.extend_from_slice(&value.to_ne_bytes());
            // SAFETY: the message is valid for its length.
            if unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) } < 0 {
                bail!("netlink send: {}", io::Error::last_os_error());
            }
            let mut ack = [0u8; 256];
            // SAFETY: the buffer is valid for its length.
            let n = unsafe { libc::recv(fd.as_raw_fd(), ack.as_mut_ptr().cast(), ack.len(), 0) };
            if n < 20 {
                bail!("netlink ack: {}", io::Error::last_os_error());
            }
            // NLMSG_ERROR: the error code follows the header (0 = done).
            let err = i32::from_ne_bytes([ack[16], ack[17], ack[18], ack[19]]);
            if err != 0 {
                bail!(
                    "setting attribute {attr} of {dev:?}: {}",
                    io::Error::from_raw_os_error(-err)
                );
            }
            Ok(())
        })?
    }

    /// Runs `ip` inside a namespace (for tests that change addresses).
    pub fn ip(&self, ns: &str, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["-n", ns];
        all.extend_from_slice(args);
        ip(&all)
    }
}

pub fn connect_from(src: IpAddr, dst: SocketAddr, timeout: Duration) -> bool {
    let domain = if dst.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let Ok(s) = socket2::Socket::new(domain, socket2::Type::STREAM, None) else {
        return false;
    };
    if s.bind(&SocketAddr::new(src, 0).into()).is_err() {
        return false;
    }
    match s.connect_timeout(&dst.into(), timeout) {
        Ok(()) => {
            let _ = TcpStream::from(s).shutdown(std::net::Shutdown::Both);
            true
        }
        Err(_) => false,
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end inside it (and its peer).
        for ns in [&self.srv, &self.cli] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The accept loops of [`Pair::serve`]; stopped on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
