//! containerd for the Kubernetes-style pods of [`crate::pod`]: the one answering on the
//! default socket, or one started for the test (on that same socket, where tracer and `ctr`
//! look) and stopped again when the last user in the process is gone. A containerd that is
//! missing or does not start fails the test.

use std::{
    collections::BTreeSet,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Mutex, Weak},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    machine::{Shared, TempDir, which},
    netns::run,
    skip::missing,
};

/// containerd's default socket.
pub const SOCKET: &str = "/run/containerd/containerd.sock";
/// The containerd namespace that CRI (so Kubernetes) uses.
pub const NAMESPACE: &str = "k8s.io";
/// containerd's default state and root directories.
const STATE_DIR: &str = "/run/containerd";
const ROOT_DIR: &str = "/var/lib/containerd";
/// How long a containerd started here may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long it may take to stop before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the daemon is checked while starting or stopping.
const POLL: Duration = Duration::from_millis(10);

/// A handle on containerd, shared by the pods of the process.
pub struct Containerd {
    daemon: Shared<Daemon>,
}

/// The daemon started here, if any, and what was there before it.
struct Daemon {
    started: Option<Started>,
}

struct Started {
    child: Child,
    /// Entries of the state directory before the daemon made its own.
    state_before: BTreeSet<String>,
    had_root: bool,
    /// Its configuration and log, removed once it has stopped.
    _dir: TempDir,
}

impl Containerd {
    /// The running containerd if `ctr version` gets an answer on [`SOCKET`], else one started
    /// now. Fails where containerd is missing or does not start.
    pub fn ensure() -> anyhow::Result<Containerd> {
        static DAEMON: Mutex<Weak<Daemon>> = Mutex::new(Weak::new());
        Ok(Containerd {
            daemon: Shared::get_or_try_init(&DAEMON, Daemon::ensure)?,
        })
    }

    /// Runs `ctr -n k8s.io ARGS`; its stdout, or an error with its stderr.
    pub fn ctr(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["-n", NAMESPACE];
        full.extend_from_slice(args);
        run("ctr", &full)
    }

    /// Whether this process started the daemon (and so stops it).
    pub fn started_here(&self) -> bool {
        self.daemon.started.is_some()
    }
}

impl Daemon {
    fn ensure() -> anyhow::Result<Daemon> {
        if answers() {
            return Ok(Daemon { started: None });
        }
        if which("containerd").is_none() || which("ctr").is_none() {
            return Err(missing(
                "containerd is not installed (Debian's docker.io brings it)",
            ));
        }
        let dir = TempDir::new("tracer-containerd")?;
        // The CRI plugin is what this harness stands in for; left on, it would also try to
        // adopt the k8s.io containers made here.
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
        )
        .context("failed to write containerd's configuration")?;
        let log_path = dir.path().join("containerd.log");
        let log = std::fs::File::create(&log_path).context("failed to create containerd's log")?;
        let state_before = entries(STATE_DIR);
        let had_root = Path::new(ROOT_DIR).exists();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .context("failed to share containerd's log")?,
            )
            .stderr(log)
            .spawn()
            .context("failed to start containerd")?;
        let mut daemon = Daemon {
            started: Some(Started {
                child,
                state_before,
                had_root,
                _dir: dir,
            }),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if answers() {
                return Ok(daemon);
            }
            let started = daemon.started.as_mut().context("started just now")?;
            if let Ok(Some(status)) = started.child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(missing(format!(
                    "containerd exited with {status} as it started: {}",
                    log.lines().last().unwrap_or("(no log)")
                )));
            }
            if Instant::now() > deadline {
                // The log goes with the daemon's directory: its last line is kept here.
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(missing(format!(
                    "containerd did not answer within {START_TIMEOUT:?}: {}",
                    log.lines().last().unwrap_or("(no log)")
                )));
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let Some(mut started) = self.started.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(started.child.id().cast_signed());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while matches!(started.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        let _ = started.child.kill();
        let _ = started.child.wait();
        // What the daemon made: its sockets and runtime state, and its root if it made that.
        for entry in entries(STATE_DIR).difference(&started.state_before) {
            let path = Path::new(STATE_DIR).join(entry);
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
        if !started.had_root {
            let _ = std::fs::remove_dir_all(ROOT_DIR);
        }
    }
}

/// Whether a containerd answers on [`SOCKET`]. Quick where no socket is there.
fn answers() -> bool {
    Path::new(SOCKET).exists()
        && Command::new("ctr")
            .args(["--connect-timeout", "1s", "version"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
}

/// Names in `dir`; empty where it does not exist.
fn entries(dir: &str) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}
