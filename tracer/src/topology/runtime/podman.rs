//! Containers and pods of rootful Podman, through `podman ps --pod`, which reads Podman's state
//! directly: it needs no Podman service (which runs only where systemd activates its socket).

use std::{path::Path, process::Stdio, time::Duration};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use super::{Container, Runtime, netns_of_pid};

/// Where Podman keeps its state; without it there are no rootful containers to ask about.
const STATE_DIR: &str = "/var/lib/containers/storage";

/// The longest `podman ps` may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// One container as `podman ps --format json` prints it (the fields tracer reads).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Listed {
    id: String,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    pid: u32,
    #[serde(default)]
    pod_name: String,
    #[serde(default)]
    is_infra: bool,
}

/// The running containers with their namespaces and pods. Empty when Podman is not installed
/// or has never run a container.
pub async fn containers() -> anyhow::Result<Vec<Container>> {
    if !Path::new(STATE_DIR).join("libpod").exists() {
        return Ok(Vec::new());
    }
    let child = match tokio::process::Command::new("podman")
        .args(["ps", "--pod", "--format", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).context("cannot run podman"),
    };
    let output = tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .context("podman ps did not answer within 10 s")??;
    if !output.status.success() {
        bail!(
            "podman ps failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    parse(&output.stdout, netns_of_pid)
}

/// The containers in `podman ps --format json` output; `netns` finds a process's namespace.
fn parse(json: &[u8], netns: impl Fn(u32) -> Option<u64>) -> anyhow::Result<Vec<Container>> {
    let listed: Vec<Listed> =
        serde_json::from_slice(json).context("podman ps printed something other than JSON")?;
    Ok(listed
        .into_iter()
        .filter_map(|c| {
            Some(Container {
                runtime: Runtime::Podman,
                netns_inode: netns(c.pid)?,
                name: c.names.into_iter().next().unwrap_or_else(|| c.id.clone()),
                id: c.id,
                pod: (!c.pod_name.is_empty()).then_some(c.pod_name),
                sandbox: c.is_infra,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podman_ps_output_gives_names_pods_and_namespaces() {
        let json = br#"[
          {"Id":"aaa","Names":["web"],"Pid":10,"Pod":"p1","PodName":"shop","IsInfra":false,"State":"running"},
          {"Id":"bbb","Names":["shop-infra"],"Pid":11,"Pod":"p1","PodName":"shop","IsInfra":true},
          {"Id":"ccc","Names":["solo"],"Pid":12,"Pod":"","PodName":""},
          {"Id":"ddd","Names":["gone"],"Pid":0}
        ]"#;
        let containers =
            parse(json, |pid| (pid != 0).then_some(u64::from(pid) + 100)).expect("parses");
        let summary: Vec<_> = containers
            .iter()
            .map(|c| (c.name.as_str(), c.pod.as_deref(), c.sandbox, c.netns_inode))
            .collect();
        assert_eq!(
            summary,
            [
                ("web", Some("shop"), false, 110),
                ("shop-infra", Some("shop"), true, 111),
                ("solo", None, false, 112),
            ]
        );
        assert!(parse(b"not json", |_| None).is_err());
    }
}
