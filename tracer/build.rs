//! Builds the kernel programs (`tracer-ebpf`) with the nightly toolchain for the BPF target and
//! leaves the object in `OUT_DIR`, where `src/kernel.rs` embeds it.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("failed to read the workspace metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|package| package.name.as_str() == "tracer-ebpf")
        .ok_or_else(|| anyhow!("package tracer-ebpf not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    let package = aya_build::Package {
        name: ebpf.name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default()).context(
        "failed to build the eBPF programs; `cargo xtask setup` installs the nightly toolchain, \
         rust-src and bpf-linker they need",
    )?;
    let out_dir = std::env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR is not set"))?;
    strip_debug(&std::path::Path::new(&out_dir).join("tracer"))
}

/// Takes the DWARF out of the built object, in place. The programs are built with full debug
/// information because bpf-linker derives their BTF from it; the loader reads only the BTF, and
/// the DWARF (and its relocations) were nearly three quarters of the object that tracer embeds,
/// pages that every start read in.
fn strip_debug(path: &std::path::Path) -> anyhow::Result<()> {
    let data = std::fs::read(path).with_context(|| format!("failed to read {}", path.display()))?;
    use object::build::elf::{Builder, SectionData};

    let mut builder = Builder::read(data.as_slice())
        .with_context(|| format!("failed to parse {}", path.display()))?;
    for section in &mut builder.sections {
        let name = section.name.as_slice();
        if name.starts_with(b".debug_") || name.starts_with(b".rel.debug_") {
            section.delete = true;
        }
    }
    builder.delete_orphans();
    // bpf-linker names sections from the symbols' string table; the writer wants their names
    // in a table of their own.
    if !builder
        .sections
        .iter()
        .any(|section| matches!(section.data, SectionData::SectionString))
    {
        let names = builder.sections.add();
        names.name = b".shstrtab"[..].into();
        names.sh_type = object::elf::SHT_STRTAB;
        names.data = SectionData::SectionString;
    }
    let mut stripped = Vec::new();
    builder
        .write(&mut stripped)
        .with_context(|| format!("failed to write {} without DWARF", path.display()))?;
    std::fs::write(path, stripped).with_context(|| format!("failed to write {}", path.display()))
}
