//! The install manifest: what `cargo xtask install` made, one line each
//! (`file PATH`, `config PATH`, `dir PATH`), so that uninstall removes exactly
//! that. Paths are the final ones (without DESTDIR), in the order they were
//! made: directories before what is in them.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// What an entry is, which decides what uninstall does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Removed by uninstall.
    File,
    /// The configuration: kept by uninstall, removed by `--purge`.
    Config,
    /// A directory the install made: removed when empty.
    Dir,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Config => "config",
            Kind::Dir => "dir",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) kind: Kind,
    pub(crate) path: PathBuf,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Manifest {
    entries: Vec<Entry>,
}

const HEADER: &str = "# rampart: installed by `cargo xtask install`; \
                      `cargo xtask uninstall` removes these (config: with --purge)\n";

impl Manifest {
    pub(crate) fn parse(text: &str) -> Result<Self> {
        let mut manifest = Self::default();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((kind, path)) = line.split_once(' ') else {
                bail!(
                    "install manifest, line {}: expected `KIND PATH`",
                    number + 1
                );
            };
            let kind = match kind {
                "file" => Kind::File,
                "config" => Kind::Config,
                "dir" => Kind::Dir,
                other => bail!(
                    "install manifest, line {}: unknown kind {other:?}",
                    number + 1
                ),
            };
            if !Path::new(path).is_absolute() {
                bail!(
                    "install manifest, line {}: {path:?} is not absolute",
                    number + 1
                );
            }
            manifest.add(kind, PathBuf::from(path));
        }
        Ok(manifest)
    }

    pub(crate) fn render(&self) -> String {
        let mut text = String::from(HEADER);
        for e in &self.entries {
            text.push_str(e.kind.as_str());
            text.push(' ');
            text.push_str(&e.path.to_string_lossy());
            text.push('\n');
        }
        text
    }

    /// Records `path`; a path already there keeps its place and takes the
    /// new kind, except that configuration stays configuration (a second
    /// install never makes a kept file removable).
    pub(crate) fn add(&mut self, kind: Kind, path: PathBuf) {
        match self.entries.iter_mut().find(|e| e.path == path) {
            Some(e) if e.kind == Kind::Config => {}
            Some(e) => e.kind = kind,
            None => self.entries.push(Entry { kind, path }),
        }
    }

    pub(crate) fn entries(&self) -> impl DoubleEndedIterator<Item = &Entry> {
        self.entries.iter()
    }
}
