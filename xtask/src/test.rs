//! `cargo xtask test`: the whole suite, as CI runs it.

use std::process::Command;

use crate::util::{build_tracer, require_root, run as run_command, workspace};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only run tests whose name contains this.
    filter: Option<String>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    require_root("the integration tests")?;
    lint()?;
    let binary = build_tracer(false)?;
    let mut command = Command::new(env!("CARGO"));
    command
        .current_dir(workspace())
        .env("TRACER_BIN", &binary)
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
