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
    let binary = build_tracer(false)?;
    let mut command = Command::new(env!("CARGO"));
    command
        .current_dir(workspace())
        .env("TRACER_BIN", &binary)
        .args(["test", "--workspace"]);
    if let Some(filter) = &args.filter {
        command.args(["--", filter]);
    }
    run_command(&mut command)
}
