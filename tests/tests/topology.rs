//! Topology discovery, and following the topology while tracing: containers that appear are
//! traced and named without a restart, containers that vanish disturb nothing.

use std::{net::SocketAddr, time::Duration};

use serde_json::Value;
use tracer_tests::{
    testbed::{SERVER_ADDR, Testbed},
    trace,
    tracer::{self, Tracer},
    traffic,
};

fn namespace<'a>(topology: &'a Value, name: &str) -> &'a Value {
    topology["namespaces"]
        .as_array()
        .expect("namespaces")
        .iter()
        .find(|ns| {
            ns["names"]
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n == name))
        })
        .unwrap_or_else(|| panic!("namespace {name} not listed"))
}

fn link<'a>(ns: &'a Value, name: &str) -> &'a Value {
    ns["links"]
        .as_array()
        .expect("links")
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no link {name} in {}", ns["name"]))
}

/// `tracer topology` pairs each container's eth0 with its host-side veth, in the right
/// namespace, and names the bridge both are on.
#[test]
fn topology_lists_containers_with_veth_peers_and_bridge() -> anyhow::Result<()> {
    let testbed = Testbed::up(2)?;
    let finished = tracer::run(&["topology", "--output", "json"])?;
    assert!(finished.status.success(), "{}", finished.stderr);
    let topology: Value = serde_json::from_str(&finished.stdout)?;
    let host = namespace(&topology, &testbed.host.name);
    let host_inode = testbed.host.inode()?;
    assert_eq!(host["inode"], host_inode);
    assert_eq!(link(host, "docker0")["kind"], "bridge");
    for ctr in &testbed.containers {
        let ns = namespace(&topology, &ctr.netns.name);
        let eth0 = link(ns, "eth0");
        assert_eq!(eth0["kind"], "veth");
        assert_eq!(eth0["peer"]["netns_inode"], host_inode);
        assert_eq!(eth0["peer"]["name"], ctr.host_veth.as_str());
        assert_eq!(eth0["bridge"], "docker0");
        assert_eq!(eth0["addresses"][0], format!("{}/16", ctr.addr));
        let veth = link(host, &ctr.host_veth);
        assert_eq!(veth["master"], "docker0");
        assert_eq!(veth["peer"]["netns_inode"], ns["inode"]);
        assert_eq!(veth["peer"]["ifindex"], eth0["ifindex"]);
    }
    // The text table shows the same pairing on the container's row.
    let text = tracer::run(&["topology"])?.stdout;
    let ctr = &testbed.containers[0];
    let row = text
        .lines()
        .find(|l| l.starts_with(&ctr.netns.name) && l.contains("eth0@if"))
        .expect("container row");
    assert!(
        row.contains(&format!("{} in {}", ctr.host_veth, testbed.host.name)),
        "{row}"
    );
    assert!(row.contains("docker0"), "{row}");
    Ok(())
}

/// A container started after tracing began gets TC programs within a refresh, and its
/// packets are traced and named; removing another container meanwhile disturbs nothing.
#[test]
fn containers_appearing_and_vanishing_during_a_trace() -> anyhow::Result<()> {
    let port = 10021;
    let mut testbed = Testbed::up(2)?;
    let server = SocketAddr::from((SERVER_ADDR, port));
    let listener = traffic::listen(&testbed.remote, server)?;
    let tracer = Tracer::json(port, &["--hooks", "+tc"])?;

    // Remove ctr2 mid-trace, add ctr3.
    drop(testbed.containers.remove(1));
    let new = testbed.add_container()?;
    let (new_ns, new_veth) = (new.netns.name.clone(), new.host_veth.clone());
    tracer.wait_for_line(Duration::from_secs(5), |line| {
        line.starts_with("tracer: following") && line.contains(&format!("eth0 in {new_ns}"))
    })?;
    traffic::exchange(&testbed.containers[1].netns, None, server, &listener)?;
    traffic::exchange(&testbed.containers[0].netns, None, server, &listener)?;
    let finished = tracer.stop()?;
    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(!finished.stderr.contains("warning"), "{}", finished.stderr);
    let packets = trace::packets(&finished.json()?);
    for (ns, tc_expected) in [(&new_ns, true), (&testbed.containers[0].netns.name, true)] {
        let syn = packets
            .iter()
            .find(|p| p.flags() == "S" && p.first()["netns"] == ns.as_str())
            .unwrap_or_else(|| panic!("no SYN from {ns}"));
        assert_eq!(
            syn.hop_at(ns, "eth0", "tc_egress").is_some(),
            tc_expected,
            "{:#?}",
            syn.places()
        );
        assert!(
            syn.hop_at(&testbed.remote.name, "eth0", "netif_receive_skb")
                .is_some()
        );
    }
    let new_syn = packets
        .iter()
        .find(|p| p.flags() == "S" && p.first()["netns"] == new_ns.as_str())
        .expect("SYN of the new container");
    assert!(
        new_syn
            .hop_at(&testbed.host.name, &new_veth, "tc_ingress")
            .is_some()
    );
    Ok(())
}

/// `tracer doctor` on this kernel: tracepoints chosen, fentry refused at load, kprobe passes
/// the verifier but cannot attach, and the NAT hop's absence explained.
#[test]
fn doctor_reports_this_kernels_hooks() -> anyhow::Result<()> {
    let finished = tracer::run(&["doctor"])?;
    assert!(finished.status.success(), "{}", finished.stderr);
    let lines: Vec<&str> = finished.stdout.lines().collect();
    let line = |target: &str, rung: &str| {
        lines
            .iter()
            .find(|l| l.split_whitespace().take(2).eq([target, rung]))
            .copied()
            .unwrap_or_else(|| panic!("no {target} {rung} line in:\n{}", finished.stdout))
    };
    for hook in [
        "net_dev_queue",
        "net_dev_start_xmit",
        "netif_rx",
        "netif_receive_skb",
    ] {
        assert!(line(hook, "tp_btf").ends_with("works: chosen"));
        assert!(line(hook, "raw_tp").ends_with("works"));
    }
    let fentry = line("nf_nat_manip_pkt", "fentry");
    assert!(
        fentry.contains("the kernel refused to load it: Operation not permitted"),
        "{fentry}"
    );
    let kprobe = line("nf_nat_manip_pkt", "kprobe");
    assert!(
        kprobe.contains("it passed the verifier, but attaching failed")
            && kprobe.contains("no kprobe support"),
        "{kprobe}"
    );
    assert!(line("nf_nat_manip_pkt", "-").contains("NAT is still found"));
    assert!(finished.stdout.contains("tcx links"));
    Ok(())
}
