//! Builds the BPF programs (crate `enforcer-ebpf`) for the bpf target; the
//! binary embeds them from `OUT_DIR`.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let metadata_root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../enforcer-ebpf");
    let root_dir = metadata_root.to_str().context("non-UTF-8 path to enforcer-ebpf")?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "enforcer-ebpf", root_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
    .context("building the BPF programs failed; did you run `cargo xtask setup` (bpf-linker, rust-src)?")
}
