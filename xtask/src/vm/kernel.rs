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
    /// Debian 11's kernel (5.10, from bullseye): kprobes, no drop reasons (5.17), no TCX,
    /// nf_tables without owned tables (5.12), no BTF for modules.
    #[value(name = "debian-5.10")]
    Debian510,
    /// Debian 12's kernel (6.1): kprobes work, fentry too (but not for module functions such
    /// as nf_nat's), no TCX.
    #[value(name = "debian-6.1")]
    Debian61,
    /// Debian 12's backported kernel (6.12, from bookworm-backports): kprobes, TCX.
    #[value(name = "debian-6.12")]
    Debian612,
}

/// A kernel unpacked for booting.
pub struct Image {
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` of the kernel.
    pub modules: PathBuf,
    pub release: String,
}

/// Every tunnel kind Debian's kernels have as modules (the initramfs loads them), which
/// `tests/tests/tunnels.rs` must trace there.
const TUNNELS: &str = "vxlan,geneve,ipip,sit,gre,gretap";

impl Kernel {
    pub const ALL: [Kernel; 3] = [Kernel::Debian510, Kernel::Debian61, Kernel::Debian612];

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Debian510 => "debian-5.10",
            Kernel::Debian61 => "debian-6.1",
            Kernel::Debian612 => "debian-6.12",
        }
    }

    /// qemu's `-accel` for this kernel.
    pub fn accel(self) -> &'static str {
        match self {
            // Two host threads for the two vCPUs.
            Kernel::Debian510 | Kernel::Debian61 => "tcg",
            // 6.12 patches its own code at boot (static keys, through int3) in a way that
            // multi-threaded TCG breaks: it panics with "Oops: int3" in enqueue_timer. One
            // host thread for both vCPUs is slower but boots.
            Kernel::Debian612 => "tcg,thread=single",
        }
    }

    /// What the tests must find on this kernel, as environment variables.
    pub fn expectations(self) -> Vec<(&'static str, &'static str)> {
        match self {
            // No BTF for modules at all, so no fentry on nf_nat; the kfree_skb tracepoint has
            // no reason argument yet.
            Kernel::Debian510 => vec![
                ("TRACER_EXPECT_NAT", "kprobe"),
                ("TRACER_EXPECT_TC", "clsact"),
                ("TRACER_EXPECT_TUNNELS", TUNNELS),
                ("TRACER_EXPECT_DROP_REASONS", "no"),
                ("TRACER_EXPECT_RULES", "refused"),
                ("TRACER_EXPECT_IPVS", "yes"),
            ],
            // nf_nat is a module there, and aya 0.14 attaches fentry to vmlinux functions only,
            // so the ladder must come down to the kprobe.
            Kernel::Debian61 => vec![
                ("TRACER_EXPECT_NAT", "kprobe"),
                ("TRACER_EXPECT_TC", "clsact"),
                ("TRACER_EXPECT_TUNNELS", TUNNELS),
                ("TRACER_EXPECT_DROP_REASONS", "yes"),
                ("TRACER_EXPECT_RULES", "owner"),
                ("TRACER_EXPECT_IPVS", "yes"),
            ],
            // The same for the NAT function; TCX exists from 6.6 on.
            Kernel::Debian612 => vec![
                ("TRACER_EXPECT_NAT", "kprobe"),
                ("TRACER_EXPECT_TC", "tcx"),
                ("TRACER_EXPECT_TUNNELS", TUNNELS),
                ("TRACER_EXPECT_DROP_REASONS", "yes"),
                ("TRACER_EXPECT_RULES", "owner"),
                ("TRACER_EXPECT_IPVS", "yes"),
            ],
        }
    }

    /// Downloads (once) and unpacks the kernel package.
    pub fn fetch(self) -> anyhow::Result<Image> {
        let apt = match self {
            Kernel::Debian61 => Apt::System,
            Kernel::Debian612 => Apt::private("bookworm-backports")?,
            Kernel::Debian510 => Apt::private("bullseye")?,
        };
        // The package the distribution's kernel meta-package points at today.
        let package = meta_target(&apt, "linux-image-amd64")?;
        let cache = workspace().join("target/vm").join(&package);
        let unpacked = cache.join("root");
        if !unpacked.join("boot").exists() {
            std::fs::create_dir_all(&cache)?;
            util::run(
                apt.command("apt-get")
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

/// Which package lists apt reads.
enum Apt {
    /// The machine's own.
    System,
    /// Only `suite` of the Debian mirror, with lists and cache under `target/vm/apt`, so that
    /// the machine's apt configuration is left as it is. Packages are checked against the
    /// Debian archive keyring as usual.
    Private(Vec<String>),
}

impl Apt {
    fn private(suite: &str) -> anyhow::Result<Apt> {
        let dir = workspace().join("target/vm/apt").join(suite);
        let lists = dir.join("lists");
        for sub in ["lists/partial", "cache/archives/partial", "parts"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let sources = dir.join("sources.list");
        std::fs::write(
            &sources,
            format!(
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
                 http://deb.debian.org/debian {suite} main\n"
            ),
        )?;
        let option = |key: &str, value: &Path| format!("-oDir::{key}={}", value.display());
        let apt = Apt::Private(vec![
            option("Etc::SourceList", &sources),
            option("Etc::SourceParts", &dir.join("parts")),
            option("State::Lists", &lists),
            option("Cache", &dir.join("cache")),
        ]);
        let fetched = std::fs::read_dir(&lists)?
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains("_Packages"));
        if !fetched {
            util::run(apt.command("apt-get").arg("update"))
                .with_context(|| format!("failed to read the {suite} package lists"))?;
        }
        Ok(apt)
    }

    /// `program` (apt-get, apt-cache) reading these lists.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        if let Apt::Private(options) = self {
            command.args(options);
        }
        command
    }
}

/// The package a Debian meta-package depends on (`linux-image-amd64` -> `linux-image-6.1.0-NN-amd64`).
fn meta_target(apt: &Apt, meta: &str) -> anyhow::Result<String> {
    let depends = output(apt.command("apt-cache").args(["depends", meta]))
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
