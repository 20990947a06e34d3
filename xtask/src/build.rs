//! `cargo xtask build`: makes sure the eBPF toolchain is there (rust-src,
//! bpf-linker; no root, no apt), then builds the workspace. The daemon's
//! build.rs compiles and embeds the XDP object, so this is the one build.

use anyhow::Result;

use crate::{
    EBPF_PACKAGE, process,
    setup::{self, Mode, Scope},
};

#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// Build with the release profile.
    #[arg(long)]
    release: bool,
}

pub(crate) fn run(options: &Options) -> Result<()> {
    setup::ensure(Scope::Toolchain, Mode::Install)?;
    let mut cmd = process::cargo();
    cmd.args(["build", "--workspace", "--exclude", EBPF_PACKAGE]);
    if options.release {
        cmd.arg("--release");
    }
    process::run(&mut cmd)
}
