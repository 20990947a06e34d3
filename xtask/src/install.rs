//! `cargo xtask install` and `cargo xtask uninstall`: rampart on this machine
//! the way a Debian package would put it, from the workspace.
//!
//! What goes where (PREFIX is `/usr/local` unless `--prefix` says otherwise):
//!
//! | what | where |
//! |---|---|
//! | `rampartd` | `PREFIX/sbin/` |
//! | `rampart` | `PREFIX/bin/` |
//! | `rampartd.service`, `rampartd.socket` | `/lib/systemd/system/` for PREFIX `/usr` (a package's place), else `/etc/systemd/system/` (the administrator's); `/usr/sbin/rampartd` in them becomes `PREFIX/sbin/rampartd` |
//! | the commented default configuration | `/etc/rampart/rampart.toml`, never overwritten: a changed one stays and the new default goes beside it as `rampart.toml.new` |
//! | completions | `PREFIX/share/bash-completion/completions/rampart`, `PREFIX/share/zsh/vendor-completions/_rampart`, `PREFIX/share/fish/vendor_completions.d/rampart.fish` |
//! | man pages | `PREFIX/share/man/man1/rampart*.1` |
//! | the manifest | `PREFIX/share/rampart/install-manifest`: every file and directory the install made, so that uninstall removes exactly those |
//!
//! `--destdir DIR` puts all of it (the `/etc` and `/lib` paths too) under DIR,
//! as packagers stage a tree; the manifest there names the final paths. A
//! staged tree has no service to reload or stop and no filter to detach, so
//! those steps are skipped. Uninstall keeps the configuration and
//! `/var/lib/rampart` unless `--purge` (Debian's remove versus purge).

mod manifest;
#[cfg(test)]
mod tests;

use std::{
    fs,
    io::ErrorKind,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use self::manifest::{Kind, Manifest};
use crate::{
    man::{self, COMPLETIONS},
    process,
    setup::{self, Mode, Scope},
};

/// The configuration directory, as in the unit (`ConfigurationDirectory=`).
const CONFIG_DIR: &str = "/etc/rampart";
/// The configuration file rampartd reads by default.
const CONFIG_FILE: &str = "/etc/rampart/rampart.toml";
/// The configuration directory's mode and the configuration file's (the unit's
/// `ConfigurationDirectoryMode=` and `UMask=0027`).
const CONFIG_DIR_MODE: u32 = 0o750;
const CONFIG_MODE: u32 = 0o640;
/// rampartd's durable state (`StateDirectory=`), removed by `--purge` only.
const STATE_DIR: &str = "/var/lib/rampart";
/// Where the unit files are kept in the repository.
const UNITS: &str = "packaging/systemd";
/// The service unit; the socket unit beside it is optional.
const SERVICE: &str = "rampartd.service";
/// The binary path the repository's units name.
const PACKAGED_RAMPARTD: &str = "/usr/sbin/rampartd";

/// The cargo profile whose binaries are installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Profile {
    /// Optimised, fat LTO: what a server runs (the build takes minutes).
    Release,
    /// Unoptimised, quick to build: for trying the install itself.
    Debug,
}

impl Profile {
    /// The folder of the target directory holding the profile's binaries.
    fn dir(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Debug => "debug",
        }
    }

    /// cargo's name of the profile.
    fn cargo_name(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Debug => "dev",
        }
    }
}

/// Where to install, shared by both commands.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Place {
    /// Prefix of the binaries, man pages and completions (PREFIX/sbin,
    /// PREFIX/bin, PREFIX/share).
    #[arg(long, value_name = "DIR", default_value = "/usr/local")]
    pub(crate) prefix: PathBuf,
    /// Stage everything under DIR, /etc and the unit directory included (for
    /// packagers and tests); no service is reloaded or stopped.
    #[arg(long, value_name = "DIR")]
    pub(crate) destdir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct InstallOptions {
    #[command(flatten)]
    pub(crate) place: Place,
    /// The build to install.
    #[arg(long, value_enum, default_value_t = Profile::Release)]
    pub(crate) profile: Profile,
}

#[derive(Debug, clap::Args)]
pub(crate) struct UninstallOptions {
    #[command(flatten)]
    pub(crate) place: Place,
    /// Also remove the configuration (/etc/rampart) and the state
    /// (/var/lib/rampart).
    #[arg(long)]
    pub(crate) purge: bool,
}

/// The paths of an installation: final paths, and where they are written
/// (under DESTDIR when staging).
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    prefix: PathBuf,
    destdir: Option<PathBuf>,
}

impl Layout {
    pub(crate) fn new(place: &Place) -> Result<Self> {
        if !place.prefix.is_absolute() {
            bail!(
                "--prefix must be an absolute path, not {}",
                place.prefix.display()
            );
        }
        let destdir = match &place.destdir {
            Some(dir) => Some(
                std::path::absolute(dir)
                    .with_context(|| format!("cannot resolve {}", dir.display()))?,
            ),
            None => None,
        };
        Ok(Self {
            prefix: place.prefix.clone(),
            destdir,
        })
    }

    fn under_prefix(&self, rest: &str) -> PathBuf {
        self.prefix.join(rest)
    }

    pub(crate) fn rampartd(&self) -> PathBuf {
        self.under_prefix("sbin/rampartd")
    }

    pub(crate) fn rampart(&self) -> PathBuf {
        self.under_prefix("bin/rampart")
    }

    pub(crate) fn man1(&self) -> PathBuf {
        self.under_prefix("share/man/man1")
    }

    /// Where each shell looks for the completions of a command it has not
    /// loaded yet, by shell.
    pub(crate) fn completion(&self, shell: &str) -> PathBuf {
        match shell {
            "bash" => self.under_prefix("share/bash-completion/completions/rampart"),
            "zsh" => self.under_prefix("share/zsh/vendor-completions/_rampart"),
            _ => self.under_prefix("share/fish/vendor_completions.d/rampart.fish"),
        }
    }

    pub(crate) fn manifest(&self) -> PathBuf {
        self.under_prefix("share/rampart/install-manifest")
    }

    /// `/lib/systemd/system` for a package-like install into `/usr`;
    /// `/etc/systemd/system` (where local units go) for any other prefix.
    pub(crate) fn unit_dir(&self) -> PathBuf {
        if self.prefix == Path::new("/usr") {
            PathBuf::from("/lib/systemd/system")
        } else {
            PathBuf::from("/etc/systemd/system")
        }
    }

    /// Where a final path is written: itself, or under DESTDIR.
    pub(crate) fn staged(&self, path: &Path) -> PathBuf {
        match &self.destdir {
            Some(root) => root.join(path.strip_prefix("/").unwrap_or(path)),
            None => path.to_path_buf(),
        }
    }

    /// Whether this installs into the running system (no DESTDIR).
    fn is_live(&self) -> bool {
        self.destdir.is_none()
    }
}

/// A unit file's text with the binary paths of the repository's units
/// (`/usr/sbin/rampartd`, `/usr/bin/rampart`) moved under `prefix`.
pub(crate) fn unit_for_prefix(text: &str, prefix: &Path) -> String {
    if prefix == Path::new("/usr") {
        return text.to_string();
    }
    let sbin = prefix.join("sbin/rampartd");
    let bin = prefix.join("bin/rampart");
    text.replace(PACKAGED_RAMPARTD, &sbin.to_string_lossy())
        .replace("/usr/bin/rampart", &bin.to_string_lossy())
}

/// Whether systemd is the init system (what `sd_booted()` checks).
fn systemd_runs() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

pub(crate) fn install(options: &InstallOptions) -> Result<()> {
    let layout = Layout::new(&options.place)?;
    setup::ensure(Scope::Toolchain, Mode::Install)?;
    let mut build = process::cargo();
    build.args(["build", "-p", "rampart", "--bins", "--profile"]);
    build.arg(options.profile.cargo_name());
    process::run(&mut build)?;
    let built = man::target_dir().join(options.profile.dir());

    let manifest_path = layout.staged(&layout.manifest());
    let previous = match fs::read_to_string(&manifest_path) {
        Ok(text) => Manifest::parse(&text)?,
        Err(e) if e.kind() == ErrorKind::NotFound => Manifest::default(),
        Err(e) => return Err(e).context(format!("cannot read {}", manifest_path.display())),
    };
    let mut installer = Installer {
        layout: &layout,
        manifest: previous,
    };

    installer.copy(&built.join("rampartd"), &layout.rampartd(), 0o755)?;
    installer.copy(&built.join("rampart"), &layout.rampart(), 0o755)?;
    for unit in unit_files()? {
        let text =
            fs::read_to_string(&unit).with_context(|| format!("cannot read {}", unit.display()))?;
        let name = unit.file_name().map(PathBuf::from).unwrap_or_default();
        let text = unit_for_prefix(&text, &layout.prefix);
        installer.write(&layout.unit_dir().join(name), text.as_bytes(), 0o644)?;
    }
    let default_config = process::workspace_root().join("examples/rampart.toml");
    let default_config = fs::read(&default_config)
        .with_context(|| format!("cannot read {}", default_config.display()))?;
    installer.config(Path::new(CONFIG_FILE), &default_config)?;

    let rampart = built.join("rampart");
    for (shell, _) in COMPLETIONS {
        let script = man::completion(&rampart, shell)?;
        installer.write(&layout.completion(shell), script.as_bytes(), 0o644)?;
    }
    let pages = tempdir("rampart-man")?;
    man::man_pages(&rampart, &pages.0)?;
    let mut names = Vec::new();
    for entry in fs::read_dir(&pages.0)? {
        names.push(entry?.file_name());
    }
    names.sort();
    for name in names {
        let page = fs::read(pages.0.join(&name))?;
        installer.write(&layout.man1().join(&name), &page, 0o644)?;
    }

    installer.save_manifest()?;
    let manifest = installer.manifest;
    let files = manifest.entries().filter(|e| e.kind != Kind::Dir).count();
    println!(
        "installed {files} files under {} (manifest: {})",
        layout.destdir.as_deref().map_or_else(
            || layout.prefix.display().to_string(),
            |d| d.display().to_string()
        ),
        layout.manifest().display()
    );

    if !layout.is_live() {
        println!("staged tree: no systemctl daemon-reload");
    } else if systemd_runs() {
        process::run(Command::new("systemctl").arg("daemon-reload"))?;
    } else {
        println!("systemd is not PID 1 here: no systemctl daemon-reload");
    }
    println!(
        "next: set [filter] interfaces in {CONFIG_FILE}, check it with \
         `{} --check-config {CONFIG_FILE}`, then `systemctl enable --now rampartd`",
        layout.rampartd().display()
    );
    Ok(())
}

pub(crate) fn uninstall(options: &UninstallOptions) -> Result<()> {
    let layout = Layout::new(&options.place)?;
    let manifest_path = layout.staged(&layout.manifest());
    let text = match fs::read_to_string(&manifest_path) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => bail!(
            "nothing to uninstall: no {} (was rampart installed with this --prefix{}?)",
            manifest_path.display(),
            if layout.is_live() {
                ""
            } else {
                " and --destdir"
            }
        ),
        Err(e) => return Err(e).context(format!("cannot read {}", manifest_path.display())),
    };
    let manifest = Manifest::parse(&text)?;

    if layout.is_live() {
        stop_service_and_filter(&layout);
    } else {
        println!("staged tree: no service to stop, no filter to detach");
    }

    let mut removed = 0;
    let mut kept = Vec::new();
    // The manifest itself is listed: it goes last, so an interrupted
    // uninstall can be run again.
    let manifest_entry = layout.manifest();
    for entry in manifest.entries().filter(|e| e.path != manifest_entry) {
        match entry.kind {
            Kind::File => removed += usize::from(remove_file(&layout.staged(&entry.path))?),
            Kind::Config if options.purge => {
                removed += usize::from(remove_file(&layout.staged(&entry.path))?);
            }
            Kind::Config => {
                if layout.staged(&entry.path).exists() {
                    kept.push(entry.path.clone());
                }
            }
            Kind::Dir => {}
        }
    }
    if options.purge {
        // What the operator added there (certificates, ...) stays.
        let _ = fs::remove_dir(layout.staged(Path::new(CONFIG_DIR)));
        let state = layout.staged(Path::new(STATE_DIR));
        match fs::remove_dir_all(&state) {
            Ok(()) => println!("purged {STATE_DIR}"),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e).context(format!("cannot remove {}", state.display())),
        }
    } else if layout.staged(Path::new(STATE_DIR)).exists() {
        kept.push(PathBuf::from(STATE_DIR));
    }
    removed += usize::from(remove_file(&manifest_path)?);
    // Directories the install made, deepest first, when nothing else is in them.
    let dirs: Vec<_> = manifest.entries().filter(|e| e.kind == Kind::Dir).collect();
    for dir in dirs.iter().rev() {
        let _ = fs::remove_dir(layout.staged(&dir.path));
    }
    println!("removed {removed} files");
    for path in &kept {
        println!(
            "kept {} (`cargo xtask uninstall --purge` removes it)",
            path.display()
        );
    }
    if layout.is_live() && systemd_runs() {
        process::run(Command::new("systemctl").arg("daemon-reload"))?;
    }
    Ok(())
}

/// Before the binaries go: the service stopped and disabled (under systemd),
/// then the filter detached with the installed rampartd, which the running
/// service would otherwise leave attached on purpose. Failures are reported,
/// not fatal: uninstalling must work on a half-broken installation.
fn stop_service_and_filter(layout: &Layout) {
    if systemd_runs() {
        let _ = process::run(Command::new("systemctl").args([
            "disable",
            "--now",
            "rampartd.socket",
            SERVICE,
        ]));
    } else {
        println!("systemd is not PID 1 here: no service to stop");
    }
    let rampartd = layout.rampartd();
    if rampartd.exists() && Path::new(CONFIG_FILE).exists() {
        let detached = process::run(
            Command::new(&rampartd)
                .arg("--detach")
                .arg("--config")
                .arg(CONFIG_FILE),
        );
        if let Err(e) = detached {
            println!("warning: the filter was not detached: {e:#}");
        }
    } else {
        println!(
            "no {} or no {CONFIG_FILE}: no filter to detach",
            rampartd.display()
        );
    }
}

/// Removes `path`; false if it was already gone.
fn remove_file(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).context(format!("cannot remove {}", path.display())),
    }
}

/// The repository's unit files: the service (required) and the socket.
fn unit_files() -> Result<Vec<PathBuf>> {
    let dir = process::workspace_root().join(UNITS);
    let service = dir.join(SERVICE);
    if !service.exists() {
        bail!("{} is missing", service.display());
    }
    let socket = dir.join("rampartd.socket");
    Ok(if socket.exists() {
        vec![service, socket]
    } else {
        vec![service]
    })
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A new directory only this user can enter (0700), under a name nobody could
/// have prepared: mkdir(2) fails on any existing entry (a directory, a
/// symlink), so one that is there already is skipped, never reused or
/// removed; what `mkdtemp(3)` does. The install runs as root and copies every
/// file it finds here into man1, so a predictable, reusable name (as
/// `/tmp/rampart-man-<pid>` was) let a local user add or replace man pages.
fn tempdir(name: &str) -> Result<TempDir> {
    use std::hash::{BuildHasher as _, Hasher as _};
    use std::os::unix::fs::DirBuilderExt as _;
    let base = std::env::temp_dir();
    for _ in 0..64 {
        // RandomState's keys come from the OS's random source.
        let nonce = std::hash::RandomState::new().build_hasher().finish();
        let dir = base.join(format!("{name}-{}-{nonce:016x}", std::process::id()));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(TempDir(dir)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).context(format!("cannot create {}", dir.display())),
        }
    }
    bail!(
        "cannot create a private directory in {}: every name tried exists",
        base.display()
    )
}

/// Group write and all of others' permissions taken away: what a mode that may
/// hold secrets (the configuration and its directory) keeps.
const NOT_PRIVATE: u32 = 0o027;

/// Takes group write and others' permissions away from `staged` (an existing
/// configuration file or directory), saying so; anything tighter stays.
fn tighten(staged: &Path, shown: &Path) -> Result<()> {
    let mode = fs::metadata(staged)
        .with_context(|| format!("cannot read {}", staged.display()))?
        .permissions()
        .mode()
        & 0o7777;
    if mode & NOT_PRIVATE == 0 {
        return Ok(());
    }
    let tight = mode & !NOT_PRIVATE;
    fs::set_permissions(staged, fs::Permissions::from_mode(tight))
        .with_context(|| format!("cannot chmod {}", staged.display()))?;
    println!(
        "{}: mode {mode:04o} tightened to {tight:04o} (the configuration can hold secrets, \
         hmac_secret_base64 for one)",
        shown.display()
    );
    Ok(())
}

/// Writes files and records them, and the directories it had to make.
struct Installer<'a> {
    layout: &'a Layout,
    manifest: Manifest,
}

impl Installer<'_> {
    /// Makes the parent directories of `path` (a final path) that are
    /// missing, recording each.
    fn parents(&mut self, path: &Path) -> Result<()> {
        let mut missing = Vec::new();
        let mut dir = path.parent();
        while let Some(d) = dir {
            if self.layout.staged(d).exists() {
                break;
            }
            missing.push(d.to_path_buf());
            dir = d.parent();
        }
        for d in missing.into_iter().rev() {
            let staged = self.layout.staged(&d);
            fs::create_dir(&staged)
                .with_context(|| format!("cannot create {}", staged.display()))?;
            self.manifest.add(Kind::Dir, d);
        }
        Ok(())
    }

    /// Writes `contents` to `path` (a final path) with `mode` and records it.
    fn write(&mut self, path: &Path, contents: &[u8], mode: u32) -> Result<()> {
        self.write_as(Kind::File, path, contents, mode)
    }

    /// `write`, recording the file as `kind`.
    fn write_as(&mut self, kind: Kind, path: &Path, contents: &[u8], mode: u32) -> Result<()> {
        self.parents(path)?;
        let staged = self.layout.staged(path);
        let tmp = staged.with_extension("xtask-new");
        fs::write(&tmp, contents).with_context(|| format!("cannot write {}", tmp.display()))?;
        self.finish(&tmp, &staged, mode)?;
        self.manifest.add(kind, path.to_path_buf());
        println!("{}", path.display());
        Ok(())
    }

    /// Like `write`, copying the file `from`.
    fn copy(&mut self, from: &Path, path: &Path, mode: u32) -> Result<()> {
        self.parents(path)?;
        let staged = self.layout.staged(path);
        let tmp = staged.with_extension("xtask-new");
        fs::copy(from, &tmp)
            .with_context(|| format!("cannot copy {} to {}", from.display(), tmp.display()))?;
        self.finish(&tmp, &staged, mode)?;
        self.manifest.add(Kind::File, path.to_path_buf());
        println!("{}", path.display());
        Ok(())
    }

    /// Gives the temporary file its mode and renames it over `staged`, so a
    /// running binary is replaced, not rewritten.
    fn finish(&self, tmp: &Path, staged: &Path, mode: u32) -> Result<()> {
        fs::set_permissions(tmp, fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot chmod {}", tmp.display()))?;
        fs::rename(tmp, staged)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), staged.display()))
    }

    /// The configuration: written when there is none; an existing one is
    /// never touched, and a new default that differs from it goes beside it
    /// as `.new`.
    ///
    /// Its directory is 0750 and the file 0640 (root's group, which systemd's
    /// `ConfigurationDirectoryMode=` does not change for a directory that
    /// exists): a configuration can hold secrets. Existing ones that others
    /// can read or the group can write are tightened, and the install says so.
    fn config(&mut self, path: &Path, default: &[u8]) -> Result<()> {
        if let Some(dir) = path.parent() {
            self.private_dir(dir)?;
        }
        let staged = self.layout.staged(path);
        let current = match fs::read(&staged) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(e).context(format!("cannot read {}", staged.display())),
        };
        let target = match current {
            None => path.to_path_buf(),
            Some(bytes) if bytes == default => {
                tighten(&staged, path)?;
                println!("{}: already the default, unchanged", path.display());
                self.manifest.add(Kind::Config, path.to_path_buf());
                return Ok(());
            }
            Some(_) => {
                // The operator's file is the configuration all the same:
                // `--purge` removes it, as Debian's purge does.
                tighten(&staged, path)?;
                self.manifest.add(Kind::Config, path.to_path_buf());
                let new = PathBuf::from(format!("{}.new", path.display()));
                println!(
                    "{} exists and differs from the default: kept; the new default is {}",
                    path.display(),
                    new.display()
                );
                new
            }
        };
        // Recorded as configuration: uninstall keeps it unless --purge.
        self.write_as(Kind::Config, &target, default, CONFIG_MODE)
    }

    /// `dir` (a final path) made 0750 if missing (and recorded), else
    /// tightened to at most that.
    fn private_dir(&mut self, dir: &Path) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt as _;
        let staged = self.layout.staged(dir);
        if staged.exists() {
            return tighten(&staged, dir);
        }
        self.parents(dir)?;
        fs::DirBuilder::new()
            .mode(CONFIG_DIR_MODE)
            .create(&staged)
            .with_context(|| format!("cannot create {}", staged.display()))?;
        // The umask may have taken more away; this is the mode meant.
        fs::set_permissions(&staged, fs::Permissions::from_mode(CONFIG_DIR_MODE))
            .with_context(|| format!("cannot chmod {}", staged.display()))?;
        self.manifest.add(Kind::Dir, dir.to_path_buf());
        Ok(())
    }

    fn save_manifest(&mut self) -> Result<()> {
        let path = self.layout.manifest();
        self.parents(&path)?;
        self.manifest.add(Kind::File, path.clone());
        let staged = self.layout.staged(&path);
        fs::write(&staged, self.manifest.render())
            .with_context(|| format!("cannot write {}", staged.display()))
    }
}
