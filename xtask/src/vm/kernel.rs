//! The kernels of the matrix, fetched from the Debian mirror and cached under `target/vm`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::util::{self, output, workspace};

/// A kernel of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kernel {
    /// Debian 12's kernel (6.1): kprobes work, fentry too (but not for module functions such
    /// as nf_nat's), no TCX.
    #[value(name = "debian-6.1")]
    Debian61,
}

/// A kernel unpacked for booting.
pub struct Image {
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` of the kernel.
    pub modules: PathBuf,
    pub release: String,
}

impl Kernel {
    pub const ALL: [Kernel; 1] = [Kernel::Debian61];

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Debian61 => "debian-6.1",
        }
    }

    /// What the tests must find on this kernel, as environment variables.
    pub fn expectations(self) -> Vec<(&'static str, &'static str)> {
        match self {
            // nf_nat is a module there, and aya 0.14 attaches fentry to vmlinux functions only,
            // so the ladder must come down to the kprobe.
            Kernel::Debian61 => vec![
                ("TRACER_EXPECT_NAT", "kprobe"),
                ("TRACER_EXPECT_TC", "clsact"),
            ],
        }
    }

    /// Downloads (once) and unpacks the kernel package.
    pub fn fetch(self) -> anyhow::Result<Image> {
        let package = match self {
            // The package the distribution's kernel meta-package points at today.
            Kernel::Debian61 => meta_target("linux-image-amd64")?,
        };
        let cache = workspace().join("target/vm").join(&package);
        let unpacked = cache.join("root");
        if !unpacked.join("boot").exists() {
            std::fs::create_dir_all(&cache)?;
            util::run(
                Command::new("apt-get")
                    .current_dir(&cache)
                    .args(["download", &package]),
            )
            .context("failed to download the kernel package from the Debian mirror")?;
            let deb = std::fs::read_dir(&cache)?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|e| e == "deb"))
                .context("no .deb downloaded")?;
            util::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        }
        image(&unpacked)
    }
}

/// The package a Debian meta-package depends on (`linux-image-amd64` -> `linux-image-6.1.0-NN-amd64`).
fn meta_target(meta: &str) -> anyhow::Result<String> {
    let depends = output(Command::new("apt-cache").args(["depends", meta]))
        .with_context(|| format!("apt-cache depends {meta} failed"))?;
    depends
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .map(str::to_owned)
        .with_context(|| format!("{meta} depends on no kernel package"))
}

fn image(root: &Path) -> anyhow::Result<Image> {
    let boot = root.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .context("no vmlinuz in the package")?;
    let release = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .context("vmlinuz name")?
        .to_owned();
    let modules = root.join("lib/modules").join(&release);
    if !modules.exists() {
        bail!("no modules for {release} in the package");
    }
    Ok(Image {
        vmlinuz,
        modules,
        release,
    })
}
