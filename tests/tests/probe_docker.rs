//! `tracer probe --container` on real Docker, with Docker's own iptables rules: from a
//! container to a namespace outside the machine, an open port is delivered (exit 0), a closed
//! one refused by the far end (exit 1), and one a DOCKER-USER rule drops is dropped on the
//! host by that rule (exit 1). The machine's firewall and forwarding are put back afterwards.

use std::net::SocketAddr;

use tracer_tests::{
    docker::Engine, firewall::RulesetGuard, host_client::HostClient, netns::run, probe, trace,
    traffic,
};

#[test]
fn a_container_probes_an_open_a_closed_and_a_dropped_port() -> anyhow::Result<()> {
    // Declared first, dropped last: after the engine has stopped.
    let _guard = RulesetGuard::save()?;
    let engine = Engine::ensure_as_installed()?;
    anyhow::ensure!(
        engine.makes_iptables_rules(),
        "the Docker engine running here does not make its iptables rules (dockerd \
         --iptables=false): stop it, and the test starts one that does"
    );
    engine.ensure_image()?;
    let name = format!("tracer-probe-{}", std::process::id());
    let client = engine.run(&name, &["/bin/sleep", "600"])?;
    let remote = HostClient::create()?;
    let target = |port: u16| SocketAddr::from((remote.addr, port)).to_string();
    let probe = |port: u16, extra: &[&str]| {
        let target = target(port);
        let mut args = vec!["--container", name.as_str(), "--timeout", "2s"];
        args.extend_from_slice(extra);
        args.push(&target);
        probe::run(&args)
    };

    let open = 10_301;
    let listener = traffic::listen(&remote.netns, SocketAddr::from((remote.addr, open)))?;
    let accept = std::thread::spawn(move || traffic::accept(&listener).map(drop));
    let delivered = probe(open, &[])?;
    accept.join().expect("accept thread")?;
    assert_eq!(delivered.status.code(), Some(0), "{}", delivered.stderr);
    assert_eq!(
        delivered.verdict["kind"], "delivered",
        "{}",
        delivered.verdict
    );
    assert!(
        delivered.stderr.contains("sending one TCP connection"),
        "the probe says that it sends: {}",
        delivered.stderr
    );

    let refused = probe(10_302, &[])?;
    assert_eq!(refused.status.code(), Some(1), "{}", refused.stderr);
    assert_eq!(refused.at().0, "refused", "{}", refused.verdict);
    assert_eq!(trace::text(&refused.verdict["netns"]), remote.netns.name);
    assert_eq!(refused.verdict["reason"], "NO_SOCKET");

    let dropped_port = 10_303;
    run(
        "iptables",
        &[
            "-I",
            "DOCKER-USER",
            "-p",
            "tcp",
            "--dport",
            &dropped_port.to_string(),
            "-j",
            "DROP",
        ],
    )?;
    let dropped = probe(dropped_port, &["--rules"])?;
    assert_eq!(dropped.status.code(), Some(1), "{}", dropped.stderr);
    let verdict = &dropped.verdict;
    assert_eq!(
        (
            trace::text(&verdict["kind"]),
            trace::text(&verdict["ifname"]),
            trace::text(&verdict["reason"]),
        ),
        ("dropped".into(), "docker0".into(), "NETFILTER_DROP".into()),
        "{verdict}"
    );
    assert_eq!(verdict["rule"]["chain"], "DOCKER-USER", "{verdict}");
    assert!(
        trace::text(&verdict["rule"]["text"]).contains(&format!("tcp dport {dropped_port}")),
        "{verdict}"
    );
    assert_eq!(
        verdict["packets"], 2,
        "SYN and its retransmission: {verdict}"
    );
    drop((client, remote));
    drop(engine);
    Ok(())
}
