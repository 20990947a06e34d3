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
        link_pin_in(&self.pin_dir, interface, mode)
    }

    /// Attaches to `interface`. When a pinned link for it exists, the
    /// program behind it is replaced atomically instead.
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<AttachInfo, FilterError> {
        let pin = self.link_pin(interface, mode);
        let other = match mode {
            AttachMode::Native => AttachMode::Skb,
            AttachMode::Skb => AttachMode::Native,
        };
        let other_pin = std::iter::once(self.link_pin(interface, other))
            .chain(
                old_layouts(&self.pin_dir)
                    .into_iter()
                    .map(|dir| link_pin_in(&dir, interface, other)),
            )
            .find(|p| p.exists());
        if let Some(other_pin) = other_pin {
            return Err(FilterError::PinnedLink {
                path: other_pin,
                source: format!(
                    "{interface} is attached in {other} mode; detach it first to change the mode"
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
        if !pin.exists() {
            // Upgrade: a link pinned by a daemon of an older map layout is
            // taken over (its program replaced, then pinned here), so the
            // interface is never without a filter.
            let old = old_layouts(&self.pin_dir)
                .into_iter()
                .map(|dir| link_pin_in(&dir, interface, mode))
                .find(|p| p.exists());
            if let Some(old) = old {
                match self.adopt_pinned(&old, &pin) {
                    Ok(()) => return Ok(info(true)),
                    Err(e) => {
                        tracing::warn!(error = %e, path = %old.display(), "pinned link of an older layout not reusable; attaching afresh");
                        if let Ok(p) = PinnedLink::from_pin(&old) {
                            let _ = p.unpin();
                        }
                        let _ = std::fs::remove_file(&old);
                    }
                }
            }
        }
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
            .map_err(|source| match &source {
                aya::programs::ProgramError::SyscallError(e)
                    if e.io_error.raw_os_error() == Some(libc::EBUSY) =>
                {
                    FilterError::AttachBusy {
                        interface: interface.to_string(),
                        mode,
                    }
                }
                _ => FilterError::Attach {
                    interface: interface.to_string(),
                    mode,
                    source: Box::new(source),
                },
            })?;
        let link = prog.take_link(id).map_err(prog_err("take link"))?;
        let fd_link: FdLink = link.try_into().map_err(link_err(&pin))?;
        fd_link.pin(&pin).map_err(|e| FilterError::PinnedLink {
            path: pin.clone(),
            source: Box::new(e),
        })?;
        Ok(info(false))
    }

    /// Replaces the program behind the link pinned at `old` (another
    /// layout's directory), pins the link at `pin` and removes the old pin.
    fn adopt_pinned(&mut self, old: &Path, pin: &Path) -> Result<(), FilterError> {
        let pinned = PinnedLink::from_pin(old).map_err(link_err(old))?;
        let fd_link: FdLink = pinned.into();
        let link = XdpLink::try_from(fd_link).map_err(link_err(old))?;
        let prog = xdp(&mut self.ebpf)?;
        let id = prog
            .attach_to_link(link)
            .map_err(prog_err("replace the program of a pinned link"))?;
        let link = prog.take_link(id).map_err(prog_err("take link"))?;
        let fd_link: FdLink = link.try_into().map_err(link_err(pin))?;
        fd_link.pin(pin).map_err(|e| FilterError::PinnedLink {
            path: pin.to_path_buf(),
            source: Box::new(e),
        })?;
        // The new pin holds the link; the old name goes.
        std::fs::remove_file(old).map_err(io_err(old))?;
        Ok(())
    }

    /// The link pins of `interface` in `mode`, in this layout's directory and
    /// older ones.
    fn link_pins(&self, interface: &str, mode: AttachMode) -> Vec<PathBuf> {
        std::iter::once(self.link_pin(interface, mode))
            .chain(
                old_layouts(&self.pin_dir)
                    .into_iter()
                    .map(|dir| link_pin_in(&dir, interface, mode)),
            )
            .collect()
    }

    /// The mode `interface` is attached in: a link pinned for it in this
    /// layout's directory or an older one.
    pub fn attached_mode(&self, interface: &str) -> Option<AttachMode> {
        [AttachMode::Native, AttachMode::Skb]
            .into_iter()
            .find(|mode| self.link_pins(interface, *mode).iter().any(|p| p.exists()))
    }

    /// Detaches the program from `interface`: unpins its links (both modes,
    /// this layout and older ones; the kernel detaches with the last
    /// reference). Returns whether one was pinned.
    pub fn detach_interface(&self, interface: &str) -> Result<bool, FilterError> {
        let mut found = false;
        for mode in [AttachMode::Native, AttachMode::Skb] {
            for pin in self.link_pins(interface, mode) {
                if !pin.exists() {
                    continue;
                }
                found = true;
                if let Ok(pinned) = PinnedLink::from_pin(&pin) {
                    let _ = pinned.unpin();
                }
                match std::fs::remove_file(&pin) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(&pin)(e)),
                }
            }
        }
        Ok(found)
    }

    /// Interfaces with a link pinned in this layout's directory: those the
    /// program is attached to (whatever the configuration says since),
    /// sorted by name.
    pub fn attached_interfaces(&self) -> Vec<String> {
        let mut names = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.pin_dir) else {
            return names;
        };
        for entry in entries.flatten() {
            if let Some(name) = entry.file_name().to_str().and_then(link_interface) {
                names.push(name.to_string());
            }
        }
        names.sort();
        names.dedup();
        names
    }

    /// Removes the pins of older map layouts that hold no link any more
    /// (their links were taken over by [`Kernel::attach`]): their maps are
    /// freed. Returns the directories removed and those kept because links
    /// remain in them (interfaces this daemon did not attach to).
    pub fn retire_old_layouts(&self) -> (Vec<PathBuf>, Vec<PathBuf>) {
        let (mut removed, mut kept) = (Vec::new(), Vec::new());
        for dir in old_layouts(&self.pin_dir) {
            let has_links = std::fs::read_dir(&dir).is_ok_and(|entries| {
                entries
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("link_"))
            });
            if has_links {
                kept.push(dir);
                continue;
            }
            match remove_layout(&dir) {
                Ok(_) => removed.push(dir),
                Err(e) => {
                    tracing::warn!(error = %e, path = %dir.display(), "removing the pins of an older layout failed");
                    kept.push(dir);
                }
            }
        }
        (removed, kept)
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

fn link_pin_in(dir: &Path, interface: &str, mode: AttachMode) -> PathBuf {
    dir.join(format!("link_{interface}_{}", mode.name()))
}

/// The interface of a link pin's file name (`link_<interface>_<mode>`).
fn link_interface(file: &str) -> Option<&str> {
    let rest = file.strip_prefix("link_")?;
    [AttachMode::Native, AttachMode::Skb]
        .iter()
        .find_map(|m| rest.strip_suffix(m.name())?.strip_suffix('_'))
        .filter(|name| !name.is_empty())
}

/// The pin directories of other map layouts next to `pin_dir`
/// (`<pin_root>/v<N>`), when `pin_dir` is itself one (`v<LAYOUT_VERSION>`).
pub(crate) fn old_layouts(pin_dir: &Path) -> Vec<PathBuf> {
    fn version(name: &std::ffi::OsStr) -> Option<u32> {
        name.to_str()?.strip_prefix('v')?.parse().ok()
    }
    let (Some(own), Some(root)) = (pin_dir.file_name(), pin_dir.parent()) else {
        return Vec::new();
    };
    if version(own) != Some(rampart_common::LAYOUT_VERSION) {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| version(&e.file_name()).is_some_and(|v| v != rampart_common::LAYOUT_VERSION))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs
}

pub(crate) fn interface_exists(name: &str) -> bool {
    interface_index(name).is_some()
}

/// The interface's index (`if_nametoindex`); None when there is none.
pub(crate) fn interface_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// Removes the pins of every other map layout next to `pin_dir` (what
/// `rampartd --detach` does besides [`detach`]): returns the detached links.
pub fn detach_old_layouts(pin_dir: &Path) -> Result<Vec<String>, FilterError> {
    let mut detached = Vec::new();
    for dir in old_layouts(pin_dir) {
        detached.extend(remove_layout(&dir)?);
    }
    Ok(detached)
}

/// Removes another layout's pin directory whole: its links (the interfaces
/// stop being filtered by that layout's program) and every other pin in it,
/// whatever that layout's map names were. Returns the detached links.
fn remove_layout(dir: &Path) -> Result<Vec<String>, FilterError> {
    let detached = detach_links(dir)?;
    if dir.exists() {
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let path = entry.map_err(io_err(dir))?.path();
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
        std::fs::remove_dir(dir).map_err(io_err(dir))?;
    }
    Ok(detached)
}

/// Removes every link and map pinned under `pin_dir`: the filter stops.
/// Returns the detached `interface_mode` names.
pub fn detach(pin_dir: &Path) -> Result<Vec<String>, FilterError> {
    let detached = detach_links(pin_dir)?;
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

/// Unpins every link under `pin_dir`; returns their `interface_mode` names.
fn detach_links(pin_dir: &Path) -> Result<Vec<String>, FilterError> {
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
    Ok(detached)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pins_name_their_interface() {
        assert_eq!(link_interface("link_eth0_native"), Some("eth0"));
        assert_eq!(link_interface("link_my_if_skb"), Some("my_if"));
        assert_eq!(link_interface("link__native"), None);
        assert_eq!(link_interface("link_eth0_other"), None);
        assert_eq!(link_interface("RAMPART_STATS"), None);
    }

    #[test]
    fn older_layouts_are_the_other_version_directories_beside_this_one() {
        let root = std::env::temp_dir().join(format!("rampart-layouts-{}", std::process::id()));
        let own = root.join(format!("v{}", rampart_common::LAYOUT_VERSION));
        for dir in [&own, &root.join("v1"), &root.join("v2"), &root.join("vx")] {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(root.join("v0"), "a file, not a layout").unwrap();
        let found = old_layouts(&own);
        let not_own = |v: &str| *v != format!("v{}", rampart_common::LAYOUT_VERSION);
        let expected: Vec<PathBuf> = ["v1", "v2"]
            .into_iter()
            .filter(|v| not_own(v))
            .map(|v| root.join(v))
            .collect();
        assert_eq!(found, expected);
        // A pin directory that is not a layout directory has no siblings.
        assert!(old_layouts(&root.join("vx")).is_empty());
        assert!(old_layouts(&root).is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
