//! Running commands and finding the workspace.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// Runs `command`, echoing it, and fails if it fails.
pub fn run(command: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: running {}", display(command));
    let status = command
        .status()
        .with_context(|| format!("failed to start {}", display(command)))?;
    if !status.success() {
        bail!("{} failed with {status}", display(command));
    }
    Ok(())
}

/// Runs `command` quietly and returns its stdout, or `None` if it could not run or failed.
pub fn output(command: &mut Command) -> Option<String> {
    let output = command.output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn display(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Builds the tracer binary and returns its path.
pub fn build_tracer(release: bool) -> anyhow::Result<PathBuf> {
    let mut command = Command::new(env!("CARGO"));
    command
        .current_dir(workspace())
        .args(["build", "--package", "tracer"]);
    if release {
        command.arg("--release");
    }
    run(&mut command)?;
    let profile = if release { "release" } else { "debug" };
    Ok(workspace().join("target").join(profile).join("tracer"))
}

/// Builds tracer and points the test helpers (`tracer_tests::tracer`) at that build through
/// `$TRACER_BIN`. Call it before any thread is started.
pub fn use_tracer_build(release: bool) -> anyhow::Result<PathBuf> {
    let binary = build_tracer(release)?;
    // SAFETY: xtask is single-threaded until its commands start their work, and this is
    // called first.
    unsafe { std::env::set_var("TRACER_BIN", &binary) };
    Ok(binary)
}

/// Fails unless running as root, which loading eBPF programs and building namespaces need.
pub fn require_root(what: &str) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("{what} needs root: run it as `sudo -E cargo xtask ...`");
    }
    Ok(())
}

/// A one-line description of this machine: CPU model and count, memory.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024 / 1024);
    format!("{cpus} x {model}, {mem_gib} GiB")
}

/// The running kernel's release.
pub fn kernel() -> String {
    output(Command::new("uname").arg("-r"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The commit being measured.
pub fn commit() -> String {
    output(
        Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(workspace()),
    )
    .map(|s| s.trim().to_owned())
    .unwrap_or_else(|| "unknown".to_owned())
}
