use which::which;

/// Rebuild when bpf-linker changes (aya-template does the same): the object
/// depends on the linker's LLVM.
fn main() {
    if let Ok(path) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
