//! End to end with a real Docker engine: hops are named with Docker's container names and
//! Docker's veths. Fails where dockerd is missing or does not start.

use serde_json::Value;
use tracer_tests::{docker::Engine, trace, tracer::Tracer};

/// A connection from one container to another over Docker's default bridge.
#[test]
fn hops_carry_docker_container_names_and_veths() -> anyhow::Result<()> {
    let engine = Engine::ensure()?;
    engine.ensure_image()?;
    let id = std::process::id();
    let (server_name, client_name) = (
        format!("tracer-e2e-{id}-web"),
        format!("tracer-e2e-{id}-client"),
    );
    let server = engine.run(&server_name, &["/bin/httpd", "-f", "-p", "8000", "-h", "/"])?;
    tracer_tests::busybox::wait_listening(server.pid()?, 8000)?;
    let client = engine.run(&client_name, &["/bin/sleep", "600"])?;
    let server_ip = server.ip()?;

    let topology: Value = serde_json::from_str(
        &tracer_tests::tracer::run(&["topology", "--output", "json"])?.stdout,
    )?;
    let host_veth = |container: &str| -> String {
        let ns = topology["namespaces"]
            .as_array()
            .and_then(|all| all.iter().find(|ns| ns["container"] == container))
            .unwrap_or_else(|| panic!("container {container} not in the topology"));
        let eth0 = ns["links"]
            .as_array()
            .and_then(|links| links.iter().find(|l| l["name"] == "eth0"))
            .expect("eth0");
        assert_eq!(eth0["bridge"], "docker0");
        trace::text(&eth0["peer"]["name"])
    };
    let (client_veth, server_veth) = (host_veth(&client_name), host_veth(&server_name));
    assert!(client_veth.starts_with("veth") && server_veth.starts_with("veth"));

    let tracer = Tracer::start(&[
        "--port",
        "8000",
        "--output",
        "json",
        "--hooks",
        "stack",
        "--container",
        &client_name,
    ])?;
    // wget fails on the 404 it gets; the connection is what matters.
    let _ = client.exec(&[
        "/bin/wget",
        "-q",
        "-O",
        "-",
        &format!("http://{server_ip}:8000/none"),
    ]);
    let finished = tracer.stop()?;
    assert!(finished.status.success(), "{}", finished.stderr);
    let packets = trace::packets(&finished.json()?);
    let syn = packets
        .iter()
        .find(|p| p.flags() == "S" && p.first()["container"] == client_name.as_str())
        .expect("the client's SYN");
    let places: Vec<(String, String, String)> = syn
        .hops
        .iter()
        .map(|hop| {
            let place = hop["container"]
                .as_str()
                .or(hop["netns"].as_str())
                .unwrap_or("?");
            (
                place.to_owned(),
                trace::text(&hop["ifname"]),
                trace::text(&hop["hook"]),
            )
        })
        .collect();
    let expected = |place: &str, ifname: &str, hook: &str| {
        (place.to_owned(), ifname.to_owned(), hook.to_owned())
    };
    assert_eq!(
        places,
        vec![
            expected(&client_name, "eth0", "net_dev_queue"),
            expected(&client_name, "eth0", "net_dev_start_xmit"),
            expected("host", &client_veth, "netif_rx"),
            expected("host", &client_veth, "netif_receive_skb"),
            expected("host", &server_veth, "net_dev_queue"),
            expected("host", &server_veth, "net_dev_start_xmit"),
            expected(&server_name, "eth0", "netif_rx"),
            expected(&server_name, "eth0", "netif_receive_skb"),
        ]
    );
    drop((client, server));
    drop(engine);
    Ok(())
}
