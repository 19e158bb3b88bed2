//! tracer with the container runtimes beyond Docker, each started by the test as a user would:
//! a Podman container (its own bridge and NAT) and a Kubernetes-style pod on containerd (the
//! reference CNI plugins: `bridge` with `ipMasq`, `portmap`). For each, a connection out
//! through its MASQUERADE and one in through its published port are traced and stitched, and
//! every hop inside is named with the runtime's own names; the process that sent the outgoing
//! connection is named too. Fails where a runtime is missing or does not start.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    thread::JoinHandle,
};

use serde_json::Value;
use tracer_tests::{
    busybox,
    docker::Engine,
    host_client::HostClient,
    pod::Pod,
    podman::Podman,
    trace::{self, Packet},
    tracer::{self, Tracer},
    traffic,
};

/// Serves one HTTP request on `listener` (in the client's namespace): the far end of a
/// container's connection out.
fn serve_once(listener: TcpListener) -> JoinHandle<anyhow::Result<()>> {
    std::thread::spawn(move || {
        let mut stream = traffic::accept(&listener)?;
        let mut request = Vec::new();
        let mut buf = [0u8; 512];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf)?;
            anyhow::ensure!(n > 0, "the request ended early");
            request.extend_from_slice(&buf[..n]);
        }
        stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")?;
        Ok(())
    })
}

/// The packets of the flow whose SYN goes to `dst_port` and starts where `starts` says.
fn flow(packets: &[Packet], dst_port: u64, starts: impl Fn(&Value) -> bool) -> Vec<&Packet> {
    let syn = packets
        .iter()
        .find(|p| p.flags() == "S" && p.first()["dst_port"] == dst_port && starts(p.first()))
        .unwrap_or_else(|| panic!("no SYN to port {dst_port}: {packets:#?}"));
    packets
        .iter()
        .filter(|p| p.flow_id() == syn.flow_id())
        .collect()
}

/// The NAT kinds recorded for `flow_id`.
fn nat_kinds(lines: &[Value], flow_id: u64) -> Vec<String> {
    trace::of_type(lines, "nat")
        .into_iter()
        .filter(|n| n["flow_id"] == flow_id)
        .map(|n| trace::text(&n["kind"]))
        .collect()
}

/// What a workload's hops must say.
struct Names<'a> {
    runtime: &'a str,
    container: &'a str,
    pod: Option<&'a str>,
}

impl Names<'_> {
    fn matches(&self, place: &Value) -> bool {
        place["runtime"] == self.runtime
            && place["container"] == self.container
            && match self.pod {
                Some(pod) => place["pod"] == pod,
                None => place["pod"].is_null(),
            }
    }

    /// Both directions of `flow` have hops inside the workload, named as they must be.
    fn assert_named_inside(&self, flow: &[&Packet]) {
        for direction in ["original", "reply"] {
            let inside = flow
                .iter()
                .filter(|p| p.first()["direction"] == direction)
                .flat_map(|p| &p.hops)
                .any(|hop| self.matches(hop));
            assert!(
                inside,
                "no {direction} hop named {}: {flow:#?}",
                self.container
            );
        }
    }
}

/// A connection out of the workload (MASQUERADE) and one into its published port (DNAT), in
/// one trace selected by `select` (`--container NAME` or `--pod NS/NAME`).
fn trace_both_ways(
    names: &Names<'_>,
    select: [&str; 2],
    host_port: u16,
    out_port: u16,
    connect_out: impl FnOnce(&str) -> anyhow::Result<String>,
) -> anyhow::Result<()> {
    let client = HostClient::create()?;
    let listener = traffic::listen(&client.netns, SocketAddr::from((client.addr, out_port)))?;
    let filter = format!("tcp port {host_port} or tcp port {out_port}");
    let tracer = Tracer::start(&["--output", "json", select[0], select[1], &filter])?;
    let server = serve_once(listener);
    let page = connect_out(&format!("http://{}:{out_port}/", client.addr))?;
    server.join().expect("server thread")?;
    assert_eq!(page, "ok\n");
    client.get_page(host_port)?;
    let finished = tracer.stop()?;
    assert!(finished.status.success(), "{}", finished.stderr);
    let lines = finished.json()?;
    let packets = trace::packets(&lines);

    // Out: the SYN starts inside, in the workload's own names, and the process that sent it
    // is the command run in it; the flow is masqueraded on its way to the client.
    let out = flow(&packets, u64::from(out_port), |hop| names.matches(hop));
    names.assert_named_inside(&out);
    let syn = out[0];
    let process = &syn.first()["process"];
    assert_eq!(process["comm"], "wget", "{process}");
    assert!(process["pid"].as_u64() > Some(1), "{process}");
    assert!(
        names.matches(process),
        "the process runs in the workload: {process}"
    );
    assert_eq!(
        nat_kinds(&lines, syn.flow_id()),
        ["snat", "snat"],
        "{lines:#?}"
    );
    for reply in out.iter().filter(|p| p.first()["direction"] == "reply") {
        assert!(reply.first()["process"].is_null(), "{reply:#?}");
    }

    // In: the client's SYN to the host port is translated to the workload's port and reaches
    // it; its packets came from no local process of the workload.
    let client_ns = client.netns.name.clone();
    let inbound = flow(&packets, u64::from(host_port), |hop| {
        hop["netns"] == client_ns.as_str()
    });
    names.assert_named_inside(&inbound);
    let kinds = nat_kinds(&lines, inbound[0].flow_id());
    assert!(
        kinds.iter().all(|k| k == "dnat") && !kinds.is_empty(),
        "{kinds:?}"
    );
    let translated = inbound[0]
        .hops
        .iter()
        .find(|hop| names.matches(hop))
        .expect("the SYN reaches the workload");
    assert_eq!(translated["dst_port"], 8000, "{translated}");
    Ok(())
}

#[test]
fn podman_container_hops_and_nat() -> anyhow::Result<()> {
    let podman = Podman::ensure()?;
    podman.ensure_image()?;
    let name = format!("tracer-e2e-{}-podweb", std::process::id());
    let httpd = busybox::httpd(8000);
    let httpd: Vec<&str> = httpd.iter().map(String::as_str).collect();
    let web = podman.run(&name, Some((18111, 8000)), &httpd)?;
    let names = Names {
        runtime: "podman",
        container: &name,
        pod: None,
    };
    trace_both_ways(&names, ["--container", &name], 18111, 18112, |url| {
        web.exec(&["/bin/wget", "-q", "-O", "-", url])
    })
}

#[test]
fn kubernetes_pod_hops_and_nat() -> anyhow::Result<()> {
    let pod_name = format!("web-{}", std::process::id());
    let pod = Pod::start("shop", &pod_name, "httpd", Some(18113), 8000)?;
    let full = pod.full_name();
    assert_eq!(full, format!("shop/{pod_name}"));
    let names = Names {
        runtime: "containerd",
        container: "httpd",
        pod: Some(&full),
    };
    trace_both_ways(&names, ["--pod", &full], 18113, 18114, |url| {
        pod.exec_in_app(&["/bin/wget", "-q", "-O", "-", url])
    })
}

/// `tracer topology` lists Docker's, Podman's and containerd's workloads side by side, and a
/// name that matches nothing is a usage error that lists what runs.
#[test]
fn topology_lists_every_runtime() -> anyhow::Result<()> {
    let id = std::process::id();
    let (engine, podman) = (Engine::ensure()?, Podman::ensure()?);
    engine.ensure_image()?;
    podman.ensure_image()?;
    let pod_name = format!("topo-{id}");
    let pod = Pod::start("default", &pod_name, "app", None, 8000)?;
    let (docker_name, podman_name) = (format!("tracer-e2e-{id}-dk"), format!("tracer-e2e-{id}-pm"));
    let _docker = engine.run(&docker_name, &["/bin/sleep", "600"])?;
    let _podman = podman.run(&podman_name, None, &["/bin/sleep", "600"])?;

    let topology: Value =
        serde_json::from_str(&tracer::run(&["topology", "--output", "json"])?.stdout)?;
    let namespaces = topology["namespaces"].as_array().expect("namespaces");
    let find = |runtime: &str, name: &str| -> &Value {
        namespaces
            .iter()
            .find(|ns| ns["runtime"] == runtime && ns["name"] == name)
            .unwrap_or_else(|| panic!("no {runtime} namespace named {name}: {topology:#}"))
    };
    let docker = find("docker", &docker_name);
    assert_eq!(docker["container"], docker_name.as_str());
    assert!(docker["pod"].is_null());
    let podman_ns = find("podman", &podman_name);
    assert_eq!(podman_ns["container"], podman_name.as_str());
    let full = pod.full_name();
    let pod_ns = find("containerd", &full);
    assert_eq!(pod_ns["pod"], full.as_str());
    assert_eq!(pod_ns["containers"], serde_json::json!(["app"]));
    // Each with its veth pair: the container's eth0 and its peer on the runtime's bridge.
    for ns in [docker, podman_ns, pod_ns] {
        let eth0 = ns["links"]
            .as_array()
            .and_then(|links| links.iter().find(|l| l["name"] == "eth0"))
            .unwrap_or_else(|| panic!("no eth0: {ns:#}"));
        assert!(eth0["peer"]["name"].is_string(), "{eth0:#}");
        assert!(eth0["bridge"].is_string(), "{eth0:#}");
    }
    let text = tracer::run(&["topology"])?.stdout;
    for (runtime, name) in [
        ("docker", &docker_name),
        ("podman", &podman_name),
        ("containerd", &full),
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name.as_str())
                && l.contains(runtime)
                && l.contains("eth0@")),
            "no {runtime} row for {name}:\n{text}"
        );
    }

    // Unknown names: exit 2, one line listing what runs.
    let missing = tracer::run(&["--pod", "default/none", "--port", "1"])?;
    assert_eq!(missing.status.code(), Some(2), "{}", missing.stderr);
    assert!(
        missing.stderr.contains(&full),
        "lists the pods: {}",
        missing.stderr
    );
    let missing = tracer::run(&["--container", "none-such", "--port", "1"])?;
    assert_eq!(missing.status.code(), Some(2), "{}", missing.stderr);
    for name in [&docker_name, &podman_name, &"app".to_owned()] {
        assert!(
            missing.stderr.contains(name.as_str()),
            "lists {name}: {}",
            missing.stderr
        );
    }
    // The short pod name is enough where it is unique.
    let short = Tracer::start(&["--pod", &pod_name, "--port", "1"])?;
    assert!(short.stop()?.status.success());
    Ok(())
}
