//! Attaching: links pinned next to the maps, reused across restarts.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use aya::programs::{
    XdpMode,
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
};
use rampart_common::ALL_MAPS;

use super::{Kernel, io_err, prog_err, xdp};
use crate::filter::FilterError;

/// How the program is attached. There is no silent fallback from one to
/// the other: the kernel either gives the mode asked for or attaching fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AttachMode {
    /// In the driver (native XDP).
    #[default]
    Native,
    /// Generic XDP, in the kernel's network stack.
    Skb,
}

impl AttachMode {
    fn xdp_mode(self) -> XdpMode {
        match self {
            Self::Native => XdpMode::Driver,
            Self::Skb => XdpMode::Skb,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Skb => "skb",
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What attaching did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachInfo {
    pub interface: String,
    pub mode: AttachMode,
    /// A pinned link from an earlier run was reused and its program
    /// replaced in place (no gap).
    pub reused: bool,
}

fn link_err(path: &Path) -> impl FnOnce(aya::programs::links::LinkError) -> FilterError + '_ {
    move |e| FilterError::PinnedLink {
        path: path.to_path_buf(),
        source: Box::new(e),
    }
}

impl Kernel {
    fn link_pin(&self, interface: &str, mode: AttachMode) -> PathBuf {
        self.pin_dir
            .join(format!("link_{interface}_{}", mode.name()))
    }

    /// Attaches to `interface`. When a pinned link for it exists, the
    /// program behind it is replaced atomically instead.
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<AttachInfo, FilterError> {
        let pin = self.link_pin(interface, mode);
        let other = match mode {
            AttachMode::Native => AttachMode::Skb,
            AttachMode::Skb => AttachMode::Native,
        };
        let other_pin = self.link_pin(interface, other);
        if other_pin.exists() {
            return Err(FilterError::PinnedLink {
                path: other_pin,
                source: format!(
                    "{interface} is attached in {other} mode; detach first (rampartd --detach) to change the mode"
                )
                .into(),
            });
        }
        if !interface_exists(interface) {
            return Err(FilterError::UnknownInterface {
                name: interface.to_string(),
            });
        }
        let info = |reused| AttachInfo {
            interface: interface.to_string(),
            mode,
            reused,
        };
        if pin.exists() {
            match self.replace_pinned(&pin) {
                Ok(()) => return Ok(info(true)),
                // A link whose interface went away and came back is defunct.
                Err(e) => {
                    tracing::warn!(error = %e, path = %pin.display(), "pinned link not reusable; attaching afresh");
                    if let Ok(p) = PinnedLink::from_pin(&pin) {
                        let _ = p.unpin();
                    }
                    let _ = std::fs::remove_file(&pin);
                }
            }
        }
        let prog = xdp(&mut self.ebpf)?;
        let id = prog
            .attach(interface, mode.xdp_mode())
            .map_err(|source| FilterError::Attach {
                interface: interface.to_string(),
                mode,
                source: Box::new(source),
            })?;
        let link = prog.take_link(id).map_err(prog_err("take link"))?;
        let fd_link: FdLink = link.try_into().map_err(link_err(&pin))?;
        fd_link.pin(&pin).map_err(|e| FilterError::PinnedLink {
            path: pin.clone(),
            source: Box::new(e),
        })?;
        Ok(info(false))
    }

    fn replace_pinned(&mut self, pin: &Path) -> Result<(), FilterError> {
        let pinned = PinnedLink::from_pin(pin).map_err(link_err(pin))?;
        let fd_link: FdLink = pinned.into();
        let link = XdpLink::try_from(fd_link).map_err(link_err(pin))?;
        let prog = xdp(&mut self.ebpf)?;
        let id = prog
            .attach_to_link(link)
            .map_err(prog_err("replace the program of a pinned link"))?;
        // The pin keeps the link alive; this process's fd can go.
        drop(prog.take_link(id).map_err(prog_err("take link"))?);
        Ok(())
    }
}

pub(crate) fn interface_exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: valid NUL-terminated string.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

/// Removes every link and map pinned under `pin_dir`: the filter stops.
/// Returns the detached `interface_mode` names.
pub fn detach(pin_dir: &Path) -> Result<Vec<String>, FilterError> {
    let mut detached = Vec::new();
    let entries = match std::fs::read_dir(pin_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(detached),
        Err(e) => return Err(io_err(pin_dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err(pin_dir))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(link) = name.strip_prefix("link_") {
            // Unpinning drops the last reference: the kernel detaches.
            if let Ok(pinned) = PinnedLink::from_pin(&path) {
                let _ = pinned.unpin();
            }
            let _ = std::fs::remove_file(&path);
            detached.push(link.to_string());
        }
    }
    for m in ALL_MAPS {
        let p = pin_dir.join(m);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&p)(e)),
        }
    }
    match std::fs::remove_dir(pin_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(pin_dir)(e)),
    }
    Ok(detached)
}
