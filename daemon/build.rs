//! Builds the XDP program (filter-ebpf) for the BPF target with the nightly
//! toolchain and bpf-linker, and leaves it in OUT_DIR for `include_bytes!`.
//! `cargo xtask setup` installs what this needs.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest)
        .parent()
        .ok_or_else(|| anyhow!("daemon crate has no parent directory"))?
        .join("filter-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    println!("cargo:rerun-if-changed={root}/../common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "rampart-filter-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom("nightly"),
    )
}
