//! System objects a few tests need, each removed on drop: a temporary group
//! and user, a tiny tmpfs (a full disk), a loop-mounted ext4 image that can be
//! made to fail read-only while files are open on it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

fn run(cmd: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn id_of(db: &str, name: &str) -> anyhow::Result<u32> {
    let line = run("getent", &[db, name])?;
    line.split(':')
        .nth(2)
        .and_then(|f| f.parse().ok())
        .with_context(|| format!("getent {db} {name}: {line}"))
}

/// A group, deleted on drop.
pub struct TempGroup {
    pub name: String,
    pub gid: u32,
}

impl TempGroup {
    pub fn new() -> anyhow::Result<Self> {
        // Group and user names are at most 32 characters.
        let name = crate::unique("rpg");
        run("groupadd", &[&name])?;
        let gid = match id_of("group", &name) {
            Ok(g) => g,
            Err(e) => {
                let _ = run("groupdel", &[&name]);
                return Err(e);
            }
        };
        Ok(Self { name, gid })
    }
}

impl Drop for TempGroup {
    fn drop(&mut self) {
        if let Err(e) = run("groupdel", &[&self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// A user without a home or a login shell, whose primary group is
/// `nogroup` (65534) and who is a supplementary member of `groups`; deleted
/// on drop.
pub struct TempUser {
    pub name: String,
    pub uid: u32,
}

impl TempUser {
    pub fn new(groups: &[&TempGroup]) -> anyhow::Result<Self> {
        let name = crate::unique("rpu");
        let list: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        let mut args = vec![
            "--no-create-home",
            "--no-user-group",
            "--gid",
            "65534",
            "--shell",
            "/usr/sbin/nologin",
        ];
        let joined = list.join(",");
        if !list.is_empty() {
            args.push("--groups");
            args.push(&joined);
        }
        args.push(&name);
        run("useradd", &args)?;
        let uid = match id_of("passwd", &name) {
            Ok(u) => u,
            Err(e) => {
                let _ = run("userdel", &[&name]);
                return Err(e);
            }
        };
        Ok(Self { name, uid })
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        if let Err(e) = run("userdel", &[&self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// A tmpfs of `size` mounted on a new directory; unmounted (lazily, in case
/// a killed process still holds it) and removed on drop.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    pub fn new(parent: &Path, size: &str) -> anyhow::Result<Self> {
        let path = parent.join(crate::unique("tmpfs-"));
        std::fs::create_dir_all(&path)?;
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
                &path.to_string_lossy(),
            ],
        )?;
        Ok(Self { path })
    }

    /// Writes a file until the file system is full; returns its path.
    pub fn fill(&self) -> anyhow::Result<PathBuf> {
        use std::io::Write as _;
        let path = self.path.join("filler");
        let mut f = std::fs::File::create(&path)?;
        let block = vec![0u8; 1024];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e.into()),
            }
        }
        // Whatever partial page is left, fill it byte by byte.
        while let Ok(1) = f.write(&[0u8]) {}
        Ok(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = run("umount", &["-l", &self.path.to_string_lossy()]);
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// A small ext4 file system in a file, loop-mounted with
/// `errors=remount-ro`. [`Ext4Image::fail_read_only`] makes ext4 report an
/// error, which turns the file system read-only at once, also for files
/// already open for writing (a `mount -o remount,ro` would refuse with EBUSY
/// while rampartd holds its journal open). Unmounted and detached on drop.
pub struct Ext4Image {
    pub path: PathBuf,
    image: PathBuf,
    loop_dev: String,
}

impl Ext4Image {
    pub fn new(parent: &Path) -> anyhow::Result<Self> {
        let tag = crate::unique("ext4-");
        let image = parent.join(format!("{tag}.img"));
        let path = parent.join(&tag);
        std::fs::create_dir_all(&path)?;
        let f = std::fs::File::create(&image)?;
        f.set_len(8 * 1024 * 1024)?;
        drop(f);
        run("mkfs.ext4", &["-q", "-F", &image.to_string_lossy()])?;
        let loop_dev = run("losetup", &["-f", "--show", &image.to_string_lossy()])?;
        let me = Self {
            path,
            image,
            loop_dev,
        };
        run(
            "mount",
            &[
                "-o",
                "errors=remount-ro",
                &me.loop_dev,
                &me.path.to_string_lossy(),
            ],
        )?;
        Ok(me)
    }

    /// Makes the file system read-only now (ext4's test hook
    /// `/sys/fs/ext4/<dev>/trigger_fs_error`).
    pub fn fail_read_only(&self) -> anyhow::Result<()> {
        let dev = Path::new(&self.loop_dev)
            .file_name()
            .context("loop device name")?
            .to_string_lossy()
            .into_owned();
        std::fs::write(format!("/sys/fs/ext4/{dev}/trigger_fs_error"), "1")
            .context("ext4 trigger_fs_error")?;
        Ok(())
    }
}

impl Drop for Ext4Image {
    fn drop(&mut self) {
        let _ = run("umount", &["-l", &self.path.to_string_lossy()]);
        if let Err(e) = run("losetup", &["-d", &self.loop_dev]) {
            eprintln!("cleanup: {e}");
        }
        let _ = std::fs::remove_dir(&self.path);
        let _ = std::fs::remove_file(&self.image);
    }
}
