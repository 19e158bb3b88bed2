//! End to end with Docker making its own iptables rules (iptables-nft): `--rules` names
//! Docker's MASQUERADE rule for a container's outgoing connection and its DNAT rule for a
//! published port. The machine's firewall and forwarding setting are put back afterwards.
//! Fails where iptables is not iptables-nft, dockerd cannot start, or an engine already runs
//! without its iptables rules.

use std::net::{Ipv4Addr, SocketAddr};

use serde_json::Value;
use tracer_tests::{
    docker::Engine, firewall::RulesetGuard, host_client::HostClient, netns::run, skip::missing,
    trace, tracer::Tracer, traffic,
};

/// The `rule` of the first NAT record of `kind` in the original direction.
fn nat_rule(lines: &[Value], kind: &str) -> Value {
    let nat = trace::of_type(lines, "nat")
        .into_iter()
        .find(|n| n["direction"] == "original" && n["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} record: {lines:#?}"));
    nat["rule"].clone()
}

#[test]
fn dockers_own_masquerade_and_dnat_rules_are_named() -> anyhow::Result<()> {
    let version = run("iptables", &["-V"])?;
    if !version.contains("nf_tables") {
        return Err(missing(format!(
            "iptables with the nf_tables backend, as Debian's is (this one is {})",
            version.trim()
        )));
    }
    // Declared first, dropped last: after the engine has stopped.
    let _guard = RulesetGuard::save()?;
    let engine = Engine::ensure_with_iptables()?;
    if !engine.makes_iptables_rules() {
        return Err(missing(
            "a Docker engine that makes its iptables rules: the one running here does not \
             (dockerd --iptables=false); stop it, and the test starts one that does",
        ));
    }
    engine.ensure_image()?;
    let id = std::process::id();
    let server_name = format!("tracer-rules-{id}-web");
    let client_name = format!("tracer-rules-{id}-client");
    let server = engine.run_with(
        &server_name,
        &["-p", "18000:8000"],
        &["/bin/httpd", "-f", "-p", "8000", "-h", "/"],
    )?;
    tracer_tests::busybox::wait_listening(server.pid()?, 8000)?;
    let client = engine.run(&client_name, &["/bin/sleep", "600"])?;
    let server_ip = server.ip()?;

    // A remote namespace behind a veth of the host's own, for the masqueraded connection.
    let remote = HostClient::create()?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;

    // Out: the client container connects to the remote, masqueraded behind the host's veth.
    let port = 10051;
    let listener = traffic::listen(&remote.netns, SocketAddr::from((remote.addr, port)))?;
    let tracer = Tracer::json(port, &["--rules"])?;
    let accept = std::thread::spawn(move || traffic::accept(&listener).map(drop));
    let _ = client.exec(&[
        "/bin/nc",
        "-w",
        "2",
        &remote.addr.to_string(),
        &port.to_string(),
    ]);
    accept.join().expect("accept thread")?;
    let finished = tracer.stop()?;
    assert!(finished.status.success(), "{}", finished.stderr);
    let rule = nat_rule(&finished.json()?, "snat");
    assert_eq!(
        (&rule["family"], &rule["table"], &rule["chain"]),
        (
            &Value::from("ip"),
            &Value::from("nat"),
            &Value::from("POSTROUTING")
        ),
        "{rule}"
    );
    let text = trace::text(&rule["text"]);
    assert!(
        text.contains("ip saddr 172.17.0.0/16") && text.ends_with("masquerade"),
        "{text}"
    );

    // In: the host connects to the published port, DNATed by Docker's DOCKER chain.
    let tracer = Tracer::json(18000, &["--rules"])?;
    let gateway = run(
        "docker",
        &[
            "network",
            "inspect",
            "-f",
            "{{(index .IPAM.Config 0).Gateway}}",
            "bridge",
        ],
    )?;
    let published = SocketAddr::from((gateway.trim().parse::<Ipv4Addr>()?, 18000));
    let stream =
        std::net::TcpStream::connect_timeout(&published, std::time::Duration::from_secs(5));
    assert!(stream.is_ok(), "connect to {published}: {stream:?}");
    drop(stream);
    let finished = tracer.stop()?;
    assert!(finished.status.success(), "{}", finished.stderr);
    let rule = nat_rule(&finished.json()?, "dnat");
    assert_eq!(
        (&rule["table"], &rule["chain"]),
        (&Value::from("nat"), &Value::from("DOCKER")),
        "{rule}"
    );
    let text = trace::text(&rule["text"]);
    assert!(
        text.contains(&format!("dnat to {server_ip}:8000")),
        "{text}"
    );
    drop((client, server));
    drop(engine);
    Ok(())
}
