//! `cargo xtask setup`: makes a fresh machine able to build and test tracer.
//!
//! Installs, only when missing: the Debian packages the tests and the demo use, the nightly
//! toolchain with `rust-src` (the eBPF crate is built with `-Z build-std=core`), and
//! `bpf-linker` built against the LLVM of that nightly, whose major version is read from
//! `rustc +nightly -vV` (a linker built against another LLVM cannot read the nightly's bitcode).

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::util::{self, output};

/// bpf-linker release known to work with aya 0.14.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages needed at run and test time.
const PACKAGES: &[&str] = &[
    "iproute2",
    "iptables",
    "nftables",
    "conntrack",
    "tcpdump",
    "tshark",
    "socat",
    "iperf3",
    "busybox-static",
    "bpftool",
    "docker.io",
    // Podman and the reference CNI plugins, for the runtime tests (pods as kubelet makes them).
    "podman",
    "netavark",
    "containernetworking-plugins",
    // containerd's API client is generated from its protobuf files at build time.
    "protobuf-compiler",
    // A real Prometheus scraping `tracer monitor` in the tests, and promtool.
    "prometheus",
    // A real browser for the tests of self-contained HTML pages, driven over DevTools.
    // tracer monitor --web-config's test: a certificate (openssl), a bcrypt hash as users make
    // them (htpasswd), and an HTTPS client (curl).
    "openssl",
    "apache2-utils",
    "curl",
    "chromium",
    "qemu-system-x86",
    // IPVS virtual services, as kube-proxy's IPVS mode makes them, in the guests' tests.
    "ipvsadm",
    "cpio",
    "kmod",
];

pub fn run() -> anyhow::Result<()> {
    let llvm = nightly_llvm_major()?;
    let mut packages: Vec<String> = PACKAGES.iter().map(|p| (*p).to_owned()).collect();
    // What bpf-linker links against, in the LLVM version of the nightly.
    for dev in ["llvm", "libclang", "libpolly"] {
        packages.push(format!("{dev}-{llvm}-dev"));
    }
    install_packages(&packages)?;
    install_bpf_linker(llvm)
}

/// Major LLVM version of the nightly toolchain, installing the toolchain and rust-src first
/// when they are missing.
fn nightly_llvm_major() -> anyhow::Result<u32> {
    let installed = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to manage toolchains; install it from https://rustup.rs")?;
    if !installed.lines().any(|line| line.starts_with("nightly")) {
        eprintln!("xtask: setup: installing the nightly toolchain");
        util::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    // rust-src for `-Z build-std=core`, clippy for the lint of the eBPF crate.
    for component in ["rust-src", "clippy"] {
        if !components.lines().any(|line| line.starts_with(component)) {
            eprintln!("xtask: setup: installing {component} for the nightly toolchain");
            util::run(Command::new("rustup").args([
                "component",
                "add",
                component,
                "--toolchain",
                "nightly",
            ]))?;
        }
    }
    let stable = output(Command::new("rustup").args(["component", "list", "--installed"]))
        .unwrap_or_default();
    for component in ["clippy", "rustfmt"] {
        if !stable.lines().any(|line| line.starts_with(component)) {
            eprintln!("xtask: setup: installing {component}");
            util::run(Command::new("rustup").args(["component", "add", component]))?;
        }
    }
    let version = output(Command::new("rustc").args(["+nightly", "-vV"]))
        .context("failed to run `rustc +nightly -vV`")?;
    parse_llvm_major(&version).context("`rustc +nightly -vV` does not name its LLVM version")
}

/// The major number from the `LLVM version: 22.1.4` line of `rustc -vV`.
fn parse_llvm_major(version: &str) -> Option<u32> {
    version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))?
        .split('.')
        .next()?
        .trim()
        .parse()
        .ok()
}

fn install_packages(packages: &[String]) -> anyhow::Result<()> {
    let missing: Vec<&String> = packages
        .iter()
        .filter(|package| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
                .is_none_or(|status| !status.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|p| p.as_str()).collect();
    eprintln!(
        "xtask: setup: installing Debian packages: {}",
        names.join(" ")
    );
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "missing Debian packages ({}); run `sudo -E cargo xtask setup` or install them",
            names.join(" ")
        );
    }
    util::run(Command::new("apt-get").args(["update", "-q"]))?;
    util::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&names),
    )
    .with_context(|| format!("failed to install {}", names.join(" ")))
}

/// Installs bpf-linker unless the one on PATH links the right LLVM.
fn install_bpf_linker(llvm: u32) -> anyhow::Result<()> {
    if let Some(linked) = bpf_linker_llvm() {
        if linked == llvm {
            return Ok(());
        }
        eprintln!("xtask: setup: bpf-linker links LLVM {linked}, the nightly uses {llvm}");
    }
    let prefix = format!("/usr/lib/llvm-{llvm}");
    if !std::path::Path::new(&prefix)
        .join("bin/llvm-config")
        .exists()
    {
        bail!("LLVM {llvm} is not installed under {prefix}; install llvm-{llvm}-dev");
    }
    eprintln!("xtask: setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {llvm}");
    util::run(
        Command::new(env!("CARGO"))
            .env("LLVM_PREFIX", &prefix)
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--force",
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm}"),
            ]),
    )
    .context("failed to build bpf-linker")
}

/// LLVM major version the installed bpf-linker is linked against, if it runs.
fn bpf_linker_llvm() -> Option<u32> {
    let path = output(Command::new("sh").args(["-c", "command -v bpf-linker"]))?;
    output(Command::new("bpf-linker").arg("--version"))?;
    let libraries = output(Command::new("ldd").arg(path.trim()))?;
    libraries
        .lines()
        .find_map(|line| line.trim().strip_prefix("libLLVM.so."))
        .or_else(|| {
            libraries
                .lines()
                .find_map(|line| line.trim().strip_prefix("libLLVM-"))
        })?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_from_rustc_version() {
        let text = "rustc 1.97.0-nightly\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(parse_llvm_major(text), Some(22));
        assert_eq!(parse_llvm_major("rustc 1.0\n"), None);
    }
}
