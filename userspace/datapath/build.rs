//! Builds the eBPF programs (`ebpf/programs`, its own workspace, for
//! bpfel-unknown-none with nightly and -Z build-std=core) and leaves the
//! object in OUT_DIR for `include_bytes!`. Needs what `.ci/run --setup-only`
//! installs: the nightly toolchain's rust-src and bpf-linker 0.10.4.

use std::path::Path;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = Path::new(&manifest_dir)
        .join("../../ebpf/programs")
        .canonicalize()?;
    // The programs crate lives outside this workspace: cargo must run there to
    // find it.
    std::env::set_current_dir(&root)?;
    for dir in ["src", "Cargo.toml", "../common/src"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    if which_bpf_linker().is_none() {
        anyhow::bail!(
            "bpf-linker is not installed: run `bash .ci/run --setup-only` \
             (it installs bpf-linker 0.10.4 and the nightly rust-src)"
        );
    }
    let root = root
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "skiff-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}

fn which_bpf_linker() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin")))
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file())
}
