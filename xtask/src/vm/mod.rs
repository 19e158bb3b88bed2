//! `cargo xtask vm-test`: the hook ladder on distribution kernels, and one trace from two
//! nodes, under qemu.
//!
//! For each kernel of the matrix: download its Debian package through the Debian mirror (and
//! cache it), build an initramfs with busybox, the kernel modules the testbed needs, iproute2,
//! iptables, `tracer` (the debug build unless `--release`) and the integration test binaries
//! that cover the path (SNAT, DNAT, drops) and the ladder, boot it under qemu, and read the
//! verdict from the serial console. What each kernel should give (which rung reaches the NAT function, which TC
//! mechanism) is passed to the tests, which fail when a rung is not what it should be.
//!
//! Then [`nodes`]: two guests with clocks of their own on a virtual wire, a VXLAN overlay
//! between them, a tracer on each ([`guest`] is their side), the recordings merged on the host
//! with `tracer merge` and checked ([`merged`]).

pub mod guest;
mod initramfs;
mod kernel;
mod merged;
mod nodes;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::util::{build_tracer, require_root, workspace};

/// Integration tests run in every guest.
const TESTS: [&str; 6] = ["kernel", "stack", "nat", "drop", "tunnels", "ipvs"];
/// How long one guest may take, boot to power-off.
const GUEST_TIMEOUT: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Default, clap::Args)]
pub struct Args {
    /// Kernels to test (default: all of the matrix).
    #[arg(long = "kernel", value_enum)]
    kernels: Vec<kernel::Kernel>,
    /// Put the release build of tracer into the guests (default: the debug build, which the
    /// test command has built already; a release build would add minutes of compiling).
    #[arg(long)]
    release: bool,
    /// Run only one part (default: both).
    #[arg(long, value_enum)]
    only: Option<Part>,
    /// Integration tests the guests run, by name (default: every one of the ladder's).
    #[arg(long = "test", value_parser = clap::builder::PossibleValuesParser::new(TESTS))]
    tests: Vec<String>,
}

/// The parts of the VM tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// The integration tests on each kernel of the matrix.
    Ladder,
    /// One trace from two nodes: two guests, an overlay, `tracer merge`.
    Nodes,
}

/// The kernel the two-node test runs on: the newer of the matrix.
const NODES_KERNEL: kernel::Kernel = kernel::Kernel::Debian612;

pub fn run(args: &Args) -> anyhow::Result<()> {
    require_root("the VM tests")?;
    let kernels = if args.kernels.is_empty() {
        kernel::Kernel::ALL.to_vec()
    } else {
        args.kernels.clone()
    };
    let tracer = build_tracer(args.release)?;
    let mut failed = Vec::new();
    let ladder = args.only.is_none_or(|part| part == Part::Ladder);
    let tests = if ladder {
        build_tests(&args.tests)?
    } else {
        Vec::new()
    };
    let mut guests = Vec::new();
    for kernel in kernels.into_iter().filter(|_| ladder) {
        let image = kernel.fetch()?;
        let initrd = initramfs::build(&image, &tracer, &tests, &kernel.expectations())?;
        guests.push((kernel, image.vmlinuz, initrd));
    }
    // The guests boot at once: much of a guest's time is its tests waiting (for a timeout, a
    // tracer's ready line), which another guest's emulation fills.
    let started = Instant::now();
    std::thread::scope(|scope| {
        let running: Vec<_> = guests
            .iter()
            .map(|(kernel, vmlinuz, initrd)| {
                eprintln!("xtask: vm-test: {}", kernel.name());
                (
                    kernel.name(),
                    scope.spawn(|| boot(kernel.name(), vmlinuz, initrd, kernel.accel())),
                )
            })
            .collect();
        for (name, guest) in running {
            match guest.join() {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => failed.push(name),
                Ok(Err(err)) => {
                    eprintln!("xtask: vm-test: {name}: {err:#}");
                    failed.push(name);
                }
                Err(_) => failed.push(name),
            }
        }
    });
    if !guests.is_empty() {
        eprintln!(
            "xtask: vm-test: {} guests took {:.0} s",
            guests.len(),
            started.elapsed().as_secs_f64()
        );
    }
    if args.only.is_none_or(|part| part == Part::Nodes) {
        let started = Instant::now();
        if let Err(err) = nodes::run(NODES_KERNEL, &tracer) {
            eprintln!("xtask: vm-test: two nodes failed: {err:#}");
            failed.push("two nodes");
        }
        eprintln!(
            "xtask: vm-test: the two-node test took {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    if !failed.is_empty() {
        bail!("vm-test failed on {}", failed.join(", "));
    }
    Ok(())
}

/// Builds the integration test binaries and returns (name, path) of those the guests run:
/// `only`, or all of [`TESTS`].
fn build_tests(only: &[String]) -> anyhow::Result<Vec<(String, std::path::PathBuf)>> {
    let wanted: Vec<&str> = TESTS
        .into_iter()
        .filter(|test| only.is_empty() || only.iter().any(|o| o == test))
        .collect();
    let mut command = Command::new(env!("CARGO"));
    command.current_dir(workspace()).args([
        "test",
        "--no-run",
        "--package",
        "tracer-tests",
        "--message-format=json",
    ]);
    for test in &wanted {
        command.args(["--test", test]);
    }
    let output = command.stderr(Stdio::inherit()).output()?;
    if !output.status.success() {
        bail!("building the test binaries failed");
    }
    let mut tests = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let name = message["target"]["name"].as_str().unwrap_or_default();
        if let Some(path) = message["executable"].as_str()
            && wanted.contains(&name)
        {
            tests.push((name.to_owned(), path.into()));
        }
    }
    if tests.len() != wanted.len() {
        bail!("expected {} test binaries, found {tests:?}", wanted.len());
    }
    Ok(tests)
}

/// Boots the guest and follows its console, each line marked with `name`; true if it reported
/// success.
fn boot(
    name: &str,
    vmlinuz: &std::path::Path,
    initrd: &std::path::Path,
    accel: &str,
) -> anyhow::Result<bool> {
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-machine", "q35", "-accel", accel, "-cpu", "max", "-smp", "2", "-m", "3072",
        ])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 rdinit=/init loglevel=3"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("failed to start qemu-system-x86_64 (cargo xtask setup installs it)")?;
    let stdout = qemu.stdout.take().context("qemu output")?;
    let (verdict_tx, verdict_rx) = mpsc::channel();
    let mark = name.to_owned();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("guest {mark}: {line}");
            if let Some(status) = line.trim().strip_prefix("TRACER-VM-RESULT: ") {
                let _ = verdict_tx.send(status.trim() == "0");
            }
        }
    });
    let start = Instant::now();
    let verdict = verdict_rx.recv_timeout(GUEST_TIMEOUT);
    let _ = qemu.kill();
    let _ = qemu.wait();
    match verdict {
        Ok(passed) => {
            eprintln!(
                "xtask: vm-test: guest {name} {} after {:.0} s",
                if passed { "passed" } else { "failed" },
                start.elapsed().as_secs_f64()
            );
            Ok(passed)
        }
        Err(_) => {
            eprintln!("xtask: vm-test: no verdict from guest {name} within {GUEST_TIMEOUT:?}");
            Ok(false)
        }
    }
}
