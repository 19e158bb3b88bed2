//! The runtime harnesses leave the machine's firewall as they found it, as iptables sees it,
//! on a machine where Docker runs with its iptables rules (and, started here, with its
//! FORWARD policy DROP): a Podman container, a Kubernetes-style pod and a Docker container
//! each answer on their published ports from outside, through FORWARD; once they are gone,
//! `iptables -S` and `iptables -t nat -S` (and ip6tables') print exactly what they printed
//! before, `iptables -L` works, and Podman starts a container again on the restored tables.

use std::net::SocketAddr;

use tracer_tests::{
    busybox, docker::Engine, firewall::RulesetGuard, host_client::HostClient, machine::Snapshot,
    netns::run, pod::Pod, podman::Podman, skip::missing,
};

/// What iptables prints of the machine's firewall: `-S` of each family's filter and nat tables.
fn iptables_listing() -> anyhow::Result<Vec<String>> {
    let mut listing = Vec::new();
    for program in ["iptables", "ip6tables"] {
        for table in ["filter", "nat"] {
            listing.push(run(program, &["-t", table, "-S"])?);
        }
    }
    Ok(listing)
}

/// A Podman container and a Kubernetes-style pod, each reached on its published port from a
/// client outside the machine, and a Docker container with a published port under a guard of
/// its own; all gone when this returns.
fn run_runtimes(engine: &Engine, round: u16) -> anyhow::Result<()> {
    let id = format!("{}-{round}", std::process::id());
    let client = HostClient::create()?;
    let httpd = busybox::httpd(8000);
    let httpd: Vec<&str> = httpd.iter().map(String::as_str).collect();

    let podman = Podman::ensure()?;
    podman.ensure_image()?;
    let port = 18130 + round * 4;
    let web = podman.run(
        &format!("tracer-fw-{id}-podman"),
        Some((port, 8000)),
        &httpd,
    )?;
    client.get_page(port)?;
    drop((web, podman));

    let pod = Pod::start("default", &format!("fw-{id}"), "web", Some(port + 1), 8000)?;
    client.get_page(port + 1)?;
    drop(pod);

    // Docker's own rules for a published port, made and removed by Docker.
    let guard = RulesetGuard::save()?;
    engine.ensure_image()?;
    let container = engine.run_with(
        &format!("tracer-fw-{id}-docker"),
        &["-p", &format!("{}:8000", port + 2)],
        &httpd,
    )?;
    // docker-proxy accepts on the published port at once, and drops the connection while
    // the container's server does not listen yet.
    busybox::wait_listening(container.pid()?, 8000)?;
    // Docker's image has no page of its own: any answer from its httpd is one.
    let published = SocketAddr::from((client.host_addr, port + 2));
    busybox::http_get(Some(&client.netns), published, "/")?;
    drop((container, guard));
    Ok(())
}

#[test]
fn runtimes_leave_iptables_as_docker_made_it() -> anyhow::Result<()> {
    // Declared first, dropped last: the firewall as it was before an engine this test starts,
    // put back once that engine has stopped.
    let _machine = RulesetGuard::save()?;
    let engine = Engine::ensure_as_installed()?;
    if !engine.makes_iptables_rules() {
        return Err(missing(
            "a Docker engine that makes its iptables rules: the one running here does not \
             (dockerd --iptables=false); stop it, and the test starts one that does",
        ));
    }
    let before = iptables_listing()?;
    if engine.started_here() {
        assert!(
            before[0].lines().any(|line| line == "-P FORWARD DROP"),
            "Docker as installed sets the FORWARD policy to DROP:\n{}",
            before[0]
        );
    }
    let snapshot = Snapshot::take()?;

    run_runtimes(&engine, 0)?;
    assert_eq!(iptables_listing()?, before);
    let changes = Snapshot::take()?.changes_since(&snapshot);
    assert!(changes.is_empty(), "left behind: {changes:#?}");
    run("iptables", &["-L", "-n"])?;

    // Podman (and the pod) start again on the tables that were put back.
    run_runtimes(&engine, 1)?;
    assert_eq!(iptables_listing()?, before);
    let changes = Snapshot::take()?.changes_since(&snapshot);
    assert!(changes.is_empty(), "left behind: {changes:#?}");
    drop(engine);
    Ok(())
}
