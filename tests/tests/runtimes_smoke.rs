//! Smoke tests of the runtime harnesses themselves, no tracer involved: a Podman container
//! and pod, and a Kubernetes-style pod on containerd, each answer HTTP on their addresses
//! and published ports, and the machine is as it was once they are gone. Fails where a runtime
//! is missing or does not start.

use std::{
    net::SocketAddr,
    os::unix::fs::MetadataExt as _,
    sync::{Mutex, MutexGuard, PoisonError},
};

use serde_json::Value;
use tracer_tests::{
    busybox::{self, PAGE},
    containerd,
    host_client::HostClient,
    machine::Snapshot,
    netns::run,
    pod::{self, Pod},
    podman::{self, Backend, Podman},
    skip,
};

/// Held by each test: they compare the machine before and after, so they run one at a time
/// also where the test harness runs tests in parallel (`cargo xtask test`).
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The inode of the network namespace of process `pid`.
fn netns_of(pid: u32) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(format!("/proc/{pid}/ns/net"))?.ino())
}

/// A page fetched in the container itself, over its loopback.
const LOCAL_URL: &str = "http://127.0.0.1:8000/";

fn podman_round_trip(backend: Backend, host_ports: (u16, u16)) -> anyhow::Result<()> {
    let _serial = serial();
    let before = Snapshot::take()?;
    {
        let podman = Podman::ensure_with(backend)?;
        podman.ensure_image()?;
        let id = std::process::id();
        let httpd = busybox::httpd(8000);
        let httpd: Vec<&str> = httpd.iter().map(String::as_str).collect();

        let web = podman.run(
            &format!("tracer-smoke-{id}-web"),
            Some((host_ports.0, 8000)),
            &httpd,
        )?;
        let sandbox_key = web.sandbox_key()?;
        eprintln!(
            "podman ({}): bridge {}, container {} at {} in {sandbox_key}",
            podman.backend(),
            podman.bridge(),
            web.name(),
            web.ip()?
        );
        assert_eq!(
            netns_of(web.pid()?)?,
            std::fs::metadata(&sandbox_key)?.ino()
        );
        // The container's own address, from the machine, over the bridge.
        busybox::get_page(None, SocketAddr::from((web.ip()?, 8000)))?;
        // The published port from the machine, on the bridge's gateway address (OUTPUT DNAT),
        // as tests/docker_rules.rs reaches Docker's.
        busybox::get_page(None, SocketAddr::from((podman.gateway()?, host_ports.0)))?;
        // And from outside (PREROUTING DNAT).
        let client = HostClient::create()?;
        client.get_page(host_ports.0)?;
        assert_eq!(web.exec(&["/bin/wget", "-q", "-O", "-", LOCAL_URL])?, PAGE);

        let pod = podman.pod(
            &format!("tracer-smoke-{id}-pod"),
            Some((host_ports.1, 8000)),
        )?;
        let app = podman.run_in_pod(&pod, &format!("tracer-smoke-{id}-app"), &httpd)?;
        client.get_page(host_ports.1)?;
        assert_eq!(app.exec(&["/bin/wget", "-q", "-O", "-", LOCAL_URL])?, PAGE);
        let listed: Vec<Value> =
            serde_json::from_str(&podman.podman(&["ps", "--pod", "--format", "json"])?)?;
        let in_pod: Vec<(&str, bool)> = listed
            .iter()
            .filter(|c| c["PodName"] == pod.name())
            .filter_map(|c| Some((c["Names"][0].as_str()?, c["IsInfra"].as_bool()?)))
            .collect();
        let infra = pod.infra_name()?;
        assert!(in_pod.contains(&(app.name(), false)), "{in_pod:?}");
        assert!(in_pod.contains(&(infra.as_str(), true)), "{in_pod:?}");
        drop((app, pod, client, web, podman));
    }
    let changes = Snapshot::take()?.changes_since(&before);
    assert!(changes.is_empty(), "left behind: {changes:#?}");
    Ok(())
}

/// Podman as this machine has it configured (netavark on Debian 12 with podman 4.3).
#[test]
fn podman_container_and_pod_answer_and_leave_nothing() -> anyhow::Result<()> {
    podman_round_trip(Backend::Configured, (18090, 18091))
}

/// Podman on the CNI plugins (bridge `cni-podman0`, `CNI-*` chains), which leave more behind.
/// Does not apply to a Podman without that backend.
#[test]
fn podman_on_cni_answers_and_leaves_nothing() -> anyhow::Result<()> {
    if !podman::has_cni_backend()? {
        return skip::not_applicable("this Podman has no CNI backend (Podman 5 removed it)");
    }
    podman_round_trip(Backend::Cni, (18093, 18094))
}

#[test]
fn kubernetes_style_pod_answers_and_leaves_nothing() -> anyhow::Result<()> {
    let _serial = serial();
    let before = Snapshot::take()?;
    {
        let name = format!("tracer-smoke-{}", std::process::id());
        let pod = Pod::start("default", &name, "web", Some(18092), 8000)?;
        let netns = pod.netns_path()?;
        eprintln!(
            "pod {}: {} in {}, app pid {}",
            pod.full_name(),
            pod.ip(),
            netns.display(),
            pod.app_pid()
        );
        assert!(pod.netns_name()?.starts_with("cni-"));
        assert_eq!(netns_of(pod.app_pid())?, std::fs::metadata(&netns)?.ino());
        // The pod's address, from the machine, over cni0.
        busybox::get_page(None, SocketAddr::from((pod.ip(), 8000)))?;
        // The host port from outside, DNATed by portmap.
        let client = HostClient::create()?;
        client.get_page(18092)?;
        // The loopback plugin brought lo up.
        assert_eq!(
            pod.exec_in_app(&["/bin/wget", "-q", "-O", "-", LOCAL_URL])?,
            PAGE
        );

        let (sandbox, app) = pod.container_ids();
        let labels = |id: &str| -> anyhow::Result<Value> {
            let info: Value = serde_json::from_str(&run(
                "ctr",
                &["-n", containerd::NAMESPACE, "container", "info", id],
            )?)?;
            Ok(info["Labels"].clone())
        };
        let (sandbox, app) = (labels(sandbox)?, labels(app)?);
        for labels in [&sandbox, &app] {
            assert_eq!(labels[pod::label::POD_NAME], name.as_str());
            assert_eq!(labels[pod::label::POD_NAMESPACE], "default");
        }
        assert_eq!(sandbox[pod::label::KIND], "sandbox");
        assert_eq!(app[pod::label::KIND], "container");
        assert_eq!(app[pod::label::CONTAINER_NAME], "web");
        assert_eq!(
            sandbox[pod::label::POD_UID],
            app[pod::label::POD_UID],
            "one pod"
        );
        drop((client, pod));
    }
    let changes = Snapshot::take()?.changes_since(&before);
    assert!(changes.is_empty(), "left behind: {changes:#?}");
    Ok(())
}
