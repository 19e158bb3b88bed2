//! A `tracer` process under test: started, waited on until it says it is ready, stopped with a
//! signal, its output collected.

use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, bail};
use nix::{sys::signal::Signal, unistd::Pid};

/// How long a tracer may take to load and attach.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Path of the tracer binary: `$TRACER_BIN`, or the workspace's debug build.
pub fn binary() -> PathBuf {
    std::env::var_os("TRACER_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/tracer"),
        PathBuf::from,
    )
}

/// Whether the kernel under test reports drop reasons: `TRACER_EXPECT_DROP_REASONS` (`yes` or
/// `no`, set by `cargo xtask vm-test` for each kernel of the matrix), yes without it.
pub fn kernel_reports_drop_reasons() -> bool {
    std::env::var("TRACER_EXPECT_DROP_REASONS").map_or(true, |v| v != "no")
}

/// What a drop with the kernel's reason `name` shows as its `drop_reason` on the kernel under
/// test: the name, or that the kernel reports none.
pub fn drop_reason(name: &'static str) -> &'static str {
    if kernel_reports_drop_reasons() {
        name
    } else {
        "reason not reported by this kernel"
    }
}

/// A running tracer.
pub struct Tracer {
    child: Option<Child>,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
    /// Every stderr line, as it is printed.
    lines: mpsc::Receiver<String>,
    /// How long after its start tracer said it was ready.
    pub ready_after: Duration,
    /// How long after its start tracer said its TC programs were attached, when asked for.
    pub tc_attached_after: Option<Duration>,
}

/// What a finished tracer printed.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// The stdout lines parsed as JSON.
    pub fn json(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        self.stdout
            .lines()
            .map(|line| serde_json::from_str(line).with_context(|| format!("bad JSON: {line}")))
            .collect()
    }
}

impl Tracer {
    /// Starts `tracer ARGS` and returns once it reports that every hook is attached.
    pub fn start(args: &[&str]) -> anyhow::Result<Tracer> {
        Self::start_with_stdout(args, Stdio::piped())
    }

    /// Starts `tracer --port PORT --output json EXTRA...`: the default hooks, as JSON.
    pub fn json(port: u16, extra: &[&str]) -> anyhow::Result<Tracer> {
        let port = port.to_string();
        let mut args = vec!["--port", &port, "--output", "json"];
        args.extend_from_slice(extra);
        Self::start(&args)
    }

    /// Starts `tracer --port PORT --output json --hooks stack EXTRA...`: every stack
    /// tracepoint and no TC, as JSON.
    pub fn stack_json(port: u16, extra: &[&str]) -> anyhow::Result<Tracer> {
        let port = port.to_string();
        let mut args = vec!["--port", &port, "--output", "json", "--hooks", "stack"];
        args.extend_from_slice(extra);
        Self::start(&args)
    }

    /// [`Tracer::start`] with stdout going to `stdout` (a file, `/dev/full`, ...).
    pub fn start_with_stdout(args: &[&str], stdout: Stdio) -> anyhow::Result<Tracer> {
        let binary = binary();
        if !binary.exists() {
            bail!(
                "{} not found; run the tests with `cargo xtask test`",
                binary.display()
            );
        }
        let started = std::time::Instant::now();
        let mut child = Command::new(&binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("failed to start {}", binary.display()))?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take().expect("piped");
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut stdout) = stdout {
                let _ = stdout.read_to_string(&mut text);
            }
            text
        });
        let (lines_tx, lines) = mpsc::channel();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line.clone());
                text.push_str(&line);
                text.push('\n');
            }
            text
        });
        let mut tracer = Tracer {
            child: Some(child),
            stdout: Some(stdout),
            stderr: Some(stderr),
            lines,
            ready_after: Duration::ZERO,
            tc_attached_after: None,
        };
        // With TC programs asked for, they attach after the ready line, in the background;
        // tests that trace TC hops wait for them too.
        let ready = tracer
            .wait_for_line(READY_TIMEOUT, |line| line.starts_with("tracer: ready"))
            .and_then(|_| {
                tracer.ready_after = started.elapsed();
                if asks_for_tc(args) {
                    tracer.wait_for_line(READY_TIMEOUT, |line| {
                        line.starts_with("tracer: TC programs attached")
                    })?;
                    tracer.tc_attached_after = Some(started.elapsed());
                }
                Ok(())
            });
        if ready.is_err() {
            let finished = tracer.kill()?;
            bail!(
                "tracer did not become ready ({}): {}",
                finished.status,
                finished.stderr.trim()
            );
        }
        Ok(tracer)
    }

    /// Waits until the tracer prints a stderr line for which `wanted` is true, and returns it.
    pub fn wait_for_line(
        &self,
        timeout: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if wanted(&line) => return Ok(line),
                Ok(_) => {}
                Err(_) => bail!("no such line from tracer within {timeout:?}"),
            }
        }
    }

    /// Stops the tracer as Ctrl-C would and collects its output.
    pub fn stop(mut self) -> anyhow::Result<Finished> {
        self.signal(Signal::SIGINT)?;
        self.wait()
    }

    /// Sends `signal` to the tracer.
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let child = self.child.as_ref().expect("running");
        nix::sys::signal::kill(Pid::from_raw(child.id() as i32), signal)?;
        Ok(())
    }

    /// Waits for the tracer to exit by itself and collects its output.
    pub fn wait(&mut self) -> anyhow::Result<Finished> {
        let status = self.child.take().expect("running").wait()?;
        Ok(Finished {
            status,
            stdout: self.stdout.take().expect("once").join().unwrap_or_default(),
            stderr: self.stderr.take().expect("once").join().unwrap_or_default(),
        })
    }

    fn kill(&mut self) -> anyhow::Result<Finished> {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
        }
        self.wait()
    }

    /// Kills the tracer with SIGKILL, as an OOM killer or an impatient user would.
    pub fn kill_hard(mut self) -> anyhow::Result<Finished> {
        self.signal(Signal::SIGKILL)?;
        self.wait()
    }

    /// Process id, for tests that inspect what the process holds.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.kill();
        }
    }
}

/// Whether `args` ask for the TC programs (`--hooks all`, `--hooks +tc`, ...).
fn asks_for_tc(args: &[&str]) -> bool {
    args.windows(2).any(|pair| {
        pair[0] == "--hooks"
            && pair[1]
                .split(',')
                .any(|item| matches!(item.trim_start_matches('+'), "all" | "tc"))
    })
}

/// Runs `tracer ARGS` to completion (for commands that exit by themselves).
pub fn run(args: &[&str]) -> anyhow::Result<Finished> {
    let output = Command::new(binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("failed to run tracer")?;
    Ok(Finished {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}
