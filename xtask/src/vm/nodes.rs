//! The two-node test: two guests with clocks of their own, joined by a virtual wire, an
//! overlay between them, a tracer in each; their traces merged on the host.
//!
//! The wire is qemu's socket network backend on the two ends of one Unix socket pair, so the
//! guests' frames go from one qemu to the other and nowhere else. Node a boots first; node b
//! is started once node a's kernel runs its `/init`, so b's `CLOCK_MONOTONIC` (time since its
//! boot) is behind a's by a's boot time. Each guest runs `xtask vm-node` (see [`super::guest`]),
//! which the host drives over the serial console: both ready, `clock` to each (the console's
//! view of the two clocks), `go` to node a, which opens a connection from its pod to node b's
//! pod through the VXLAN overlay, `clock` again, `stop` to both. Each writes its recording and
//! JSON to a disk image of its own, which the host reads back and merges ([`super::merged`]).

use std::{
    collections::VecDeque,
    io::{BufRead, BufReader, Write},
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::{
    fcntl::{FcntlArg, FdFlag, fcntl},
    sys::socket::{AddressFamily, SockFlag, SockType, socketpair},
};

use super::{
    guest::{CLOCK, DISK_MAGIC, DONE, READY, WRITTEN, monotonic_ns},
    initramfs,
    kernel::Kernel,
    merged::{self, ConsoleClock},
};
use crate::util::workspace;

/// The nodes, in the order they boot.
const NODES: [&str; 2] = ["a", "b"];
/// How long the whole test may take, first boot to last power-off.
const TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Size of each guest's disk image (sparse).
const DISK_BYTES: u64 = 64 << 20;

/// Runs the two-node test on `kernel` with the `tracer` build for the guests.
pub fn run(kernel: Kernel, tracer: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let image = kernel.fetch()?;
    let xtask = std::env::current_exe().context("cannot find the xtask binary")?;
    let initrd = initramfs::build_nodes(&image, tracer, &xtask)?;
    let dir = workspace().join("target/vm/nodes");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let (wire_a, wire_b) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .context("failed to make the virtual wire")?;
    let (tx, rx) = mpsc::channel();
    let mut consoles = Consoles {
        rx,
        deadline: started + TIMEOUT,
        passed: [false; 2],
        ended: [false; 2],
        unread: Default::default(),
    };
    let boot = |n: usize, wire: OwnedFd| {
        let disk = dir.join(format!("{}.img", NODES[n]));
        std::fs::File::create(&disk)?.set_len(DISK_BYTES)?;
        Guest::boot(
            n,
            &image.vmlinuz,
            &initrd,
            kernel.accel(),
            wire,
            &disk,
            tx.clone(),
        )
    };
    let mut a = boot(0, wire_a)?;
    consoles.wait(0, "TRACER-NODE-BOOTED")?;
    let mut b = boot(1, wire_b)?;
    drop(tx);
    consoles.wait(0, READY)?;
    consoles.wait(1, READY)?;
    let before = consoles.clocks([&mut a, &mut b])?;
    a.send("go")?;
    consoles.wait(0, DONE)?;
    let after = consoles.clocks([&mut a, &mut b])?;
    for guest in [&mut a, &mut b] {
        guest.send("stop")?;
    }
    for n in 0..NODES.len() {
        consoles.wait(n, WRITTEN)?;
        consoles.wait(n, PASSED)?;
    }
    // The disks are complete once qemu has exited (the guests power off after their verdict).
    for (n, guest) in [a, b].into_iter().enumerate() {
        consoles.wait_end(n)?;
        guest.exited()?;
    }
    let mut files = Vec::new();
    for node in NODES {
        files.push(read_disk(&dir, node)?);
    }
    let report = merged::check(&dir, &files, tracer, [before, after])?;
    eprintln!(
        "xtask: vm-test: two nodes on {}: {report}; {:.0} s in all",
        kernel.name(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One guest under qemu; killed if the test ends before it powered off.
struct Guest {
    child: Child,
    stdin: ChildStdin,
}

impl Guest {
    /// Boots node `n` with its end of the wire as its network card and `disk` as its second
    /// disk; its console lines go to `lines`.
    fn boot(
        n: usize,
        vmlinuz: &Path,
        initrd: &Path,
        accel: &str,
        wire: OwnedFd,
        disk: &Path,
        lines: mpsc::Sender<(usize, Option<String>)>,
    ) -> anyhow::Result<Guest> {
        // qemu takes the wire as an inherited descriptor: this one only, and only qemu.
        fcntl(&wire, FcntlArg::F_SETFD(FdFlag::empty()))?;
        let name = NODES[n];
        let mut child = Command::new("qemu-system-x86_64")
            .args(["-machine", "q35", "-accel", accel, "-cpu", "max"])
            .args(["-smp", "1", "-m", "2048"])
            .arg("-kernel")
            .arg(vmlinuz)
            .arg("-initrd")
            .arg(initrd)
            .arg("-append")
            .arg(format!(
                "console=ttyS0 panic=-1 rdinit=/init loglevel=3 tracer.node={name}"
            ))
            .args(["-nographic", "-no-reboot", "-netdev"])
            .arg(format!("socket,id=wire,fd={}", wire.as_raw_fd()))
            .arg("-device")
            .arg(format!(
                "virtio-net-pci,netdev=wire,mac=52:54:00:00:00:0{}",
                n + 1
            ))
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", disk.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("failed to start qemu-system-x86_64 (cargo xtask setup installs it)")?;
        drop(wire);
        let stdin = child.stdin.take().context("qemu input")?;
        let stdout = child.stdout.take().context("qemu output")?;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("node {name}: {line}");
                let _ = lines.send((n, Some(line)));
            }
            let _ = lines.send((n, None));
        });
        Ok(Guest { child, stdin })
    }

    /// Types a command on the guest's console.
    fn send(&mut self, command: &str) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{command}\n").as_bytes())?;
        self.stdin.flush()?;
        Ok(())
    }

    /// Reaps qemu, which closed its console on exit.
    fn exited(mut self) -> anyhow::Result<()> {
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A guest's verdict when its side of the test passed.
const PASSED: &str = "TRACER-NODE-RESULT: 0";

/// Both guests' console lines.
struct Consoles {
    rx: mpsc::Receiver<(usize, Option<String>)>,
    deadline: Instant,
    /// Which guests said they passed: they may power off.
    passed: [bool; 2],
    /// Which guests' consoles closed.
    ended: [bool; 2],
    /// Lines of each guest not waited for yet.
    unread: [VecDeque<String>; 2],
}

impl Consoles {
    /// Waits for a line of node `n` that contains `marker`, failing as soon as either guest
    /// reports a failure or ends.
    fn wait(&mut self, n: usize, marker: &str) -> anyhow::Result<String> {
        while let Some(line) = self.unread[n].pop_front() {
            if line.contains(marker) {
                return Ok(line);
            }
        }
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            let (from, line) = self
                .rx
                .recv_timeout(left)
                .with_context(|| format!("node {} did not print {marker}", NODES[n]))?;
            let Some(line) = line else {
                self.ended[from] = true;
                if self.passed[from] && from != n {
                    continue;
                }
                bail!("node {}'s guest ended before {marker}", NODES[from]);
            };
            if let Some(status) = line.trim().strip_prefix("TRACER-NODE-RESULT: ") {
                if status != "0" {
                    bail!("node {} failed ({status})", NODES[from]);
                }
                self.passed[from] = true;
            }
            if from != n {
                self.unread[from].push_back(line);
            } else if line.contains(marker) {
                return Ok(line);
            }
        }
    }

    /// Waits for node `n`'s console to close: its qemu exited.
    fn wait_end(&mut self, n: usize) -> anyhow::Result<()> {
        while !self.ended[n] {
            let left = self.deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((from, None)) => self.ended[from] = true,
                Ok((_, Some(_))) => {}
                Err(_) => bail!("node {} did not power off", NODES[n]),
            }
        }
        Ok(())
    }

    /// Each guest's clock as its console tells it, against the host's.
    fn clocks(&mut self, guests: [&mut Guest; 2]) -> anyhow::Result<ConsoleClock> {
        let mut readings = [(0, 0, 0); 2];
        for (n, guest) in guests.into_iter().enumerate() {
            let sent = monotonic_ns();
            guest.send("clock")?;
            let line = self.wait(n, CLOCK)?;
            let received = monotonic_ns();
            let value = line
                .split_whitespace()
                .last()
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("bad clock line {line:?}"))?;
            readings[n] = (sent, value, received);
        }
        Ok(ConsoleClock::from_readings(readings))
    }
}

/// Reads node `node`'s trace back from its disk image into `NODE.rec` and `NODE.json`.
fn read_disk(dir: &Path, node: &str) -> anyhow::Result<[PathBuf; 2]> {
    let image = std::fs::read(dir.join(format!("{node}.img")))?;
    let header = image.get(..24).context("disk image too short")?;
    if &header[..8] != DISK_MAGIC {
        bail!("node {node} wrote no trace to its disk");
    }
    let len = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    let (record, json) = (len(8) as usize, len(16) as usize);
    let data = image
        .get(24..24 + record + json)
        .context("disk image shorter than its header says")?;
    let paths = [
        dir.join(format!("{node}.rec")),
        dir.join(format!("{node}.json")),
    ];
    std::fs::write(&paths[0], &data[..record])?;
    std::fs::write(&paths[1], &data[record..])?;
    Ok(paths)
}
