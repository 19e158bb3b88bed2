//! Developer tasks for tracer: `cargo xtask <command>`.
//!
//! Every command first runs `setup`, which installs what is missing on a fresh machine and
//! does nothing when everything is there.

mod bench;
mod demo;
mod fixtures;
mod setup;
mod soak;
mod test;
mod testbed;
mod util;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "tracer's developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what building and testing need: Debian packages, the nightly toolchain with
    /// rust-src, and bpf-linker built against the nightly's LLVM.
    Setup,
    /// Build the tracer binary (debug, or --release).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Create or remove the namespaced Docker-like testbed.
    Testbed {
        #[command(subcommand)]
        action: testbed::Action,
    },
    /// Build, create the testbed, trace one connection from a container, print it, clean up.
    Demo,
    /// Run the whole test suite (what CI runs).
    Test(test::Args),
    /// Record the kernel event stream the decoder and golden tests replay.
    Fixtures,
    /// Benchmarks: datapath, kernel programs, collector, loss, start-up (bench/results.md).
    Bench(bench::Args),
    /// Test the hook ladder on distribution kernels under qemu.
    VmTest(vm::Args),
    /// A bounded run with connections opening and closing continuously (bench/soak.md).
    Soak(soak::Args),
    /// One node's side of the two-node VM test, inside its guest (run by vm-test).
    #[command(hide = true)]
    VmNode(vm::guest::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Inside a guest of the VM tests there is nothing to set up.
    let result = if matches!(cli.command, Command::VmNode(_)) {
        run(cli.command)
    } else {
        setup::run().and_then(|()| run(cli.command))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Setup => Ok(()),
        Command::Build { release } => util::build_tracer(release).map(|_| ()),
        Command::Testbed { action } => testbed::run(action),
        Command::Demo => demo::run(),
        Command::Test(args) => test::run(&args),
        Command::Fixtures => fixtures::run(),
        Command::Soak(args) => soak::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::VmTest(args) => vm::run(&args),
        Command::VmNode(args) => vm::guest::run_node(&args),
    }
}
