//! `cargo xtask test`: the whole suite, as CI runs it.
//!
//! A test whose prerequisite is missing fails the run. Tests that do not apply to this
//! machine record themselves (`tracer_tests::skip`) in a file whose path this sets; they are
//! counted and listed at the end, also when the run failed.

use std::{path::Path, process::Command};

use anyhow::Context as _;
use tracer_tests::skip;

use crate::util::{build_tracer, require_root, run as run_command, workspace};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only run tests whose name contains this.
    filter: Option<String>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    require_root("the integration tests")?;
    note_free_space();
    lint()?;
    let binary = build_tracer(false)?;
    let record = workspace().join("target").join("tests-not-applicable.txt");
    if let Err(err) = std::fs::remove_file(&record)
        && err.kind() != std::io::ErrorKind::NotFound
    {
        return Err(err).with_context(|| format!("failed to remove {}", record.display()));
    }
    let result = run_suite(args, &binary, &record);
    let reported = report_not_applicable(&record);
    result.and(reported)
}

/// The tests (every crate's, the integration tests with `skip::RECORD` set to `record`), and
/// without a filter the benchmarks and the kernels of the matrix.
fn run_suite(args: &Args, binary: &Path, record: &Path) -> anyhow::Result<()> {
    let mut command = Command::new(env!("CARGO"));
    command
        .current_dir(workspace())
        .env("TRACER_BIN", binary)
        .env(skip::RECORD, record)
        .args(["test", "--workspace", "--exclude", "tracer-ebpf"]);
    if let Some(filter) = &args.filter {
        command.args(["--", filter]);
    }
    run_command(&mut command)?;
    if args.filter.is_none() {
        // Every benchmark must still run and report numbers (speed is not judged here).
        crate::bench::run(&crate::bench::Args {
            quick: true,
            repeats: 1,
            only: None,
            tracer: None,
        })?;
        // The hook ladder on the distribution kernels of the matrix.
        crate::vm::run(&crate::vm::Args::default())?;
    }
    Ok(())
}

/// What the suite's builds take on disk, about: the test binaries, the release build, the
/// benchmarks' files and the kernels of the matrix.
const SUITE_DISK_GIB: u64 = 6;

/// Warns when the disk under `target` has less room than the suite takes, so that a build
/// that fails for want of it (a linker killed by SIGBUS, "No space left on device") says why.
fn note_free_space() {
    let target = workspace().join("target");
    let dir = if target.exists() { target } else { workspace() };
    let Ok(stat) = nix::sys::statvfs::statvfs(&dir) else {
        return;
    };
    let free_gib = (stat.blocks_available() * stat.fragment_size()) >> 30;
    if free_gib < SUITE_DISK_GIB {
        eprintln!(
            "xtask: warning: {free_gib} GiB free under {}; the suite's builds take about \
             {SUITE_DISK_GIB} GiB: free some room if a build fails",
            dir.display()
        );
    }
}

/// Prints how many tests did not apply here, and which, from `record`.
fn report_not_applicable(record: &Path) -> anyhow::Result<()> {
    let text = match std::fs::read_to_string(record) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(err) => {
            return Err(err).with_context(|| format!("failed to read {}", record.display()));
        }
    };
    let lines: Vec<&str> = text.lines().collect();
    let tests = if lines.len() == 1 { "test" } else { "tests" };
    eprintln!("xtask: {} {tests} did not apply here", lines.len());
    for line in lines {
        eprintln!("xtask:   {line}");
    }
    Ok(())
}

/// Formatting, and clippy on every crate: the userspace ones, and the eBPF crate for the BPF
/// target with the nightly that builds it.
fn lint() -> anyhow::Result<()> {
    run_command(
        Command::new(env!("CARGO"))
            .current_dir(workspace())
            .args(["fmt", "--all", "--check"]),
    )?;
    run_command(Command::new(env!("CARGO")).current_dir(workspace()).args([
        "clippy",
        "--workspace",
        "--exclude",
        "tracer-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run_command(
        Command::new("cargo")
            .current_dir(workspace().join("tracer-ebpf"))
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTC")
            .args([
                "+nightly",
                "clippy",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--bins",
                "--",
                "-D",
                "warnings",
            ]),
    )
}
