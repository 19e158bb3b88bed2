//! Topology discovery, and following the topology while tracing: containers that appear are
//! traced and named without a restart, containers that vanish disturb nothing. Overlay devices
//! (VXLAN, as flannel makes them) are listed with their parameters and peers, and named
//! `overlay` in `tracer monitor`'s places.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use ::tracer::topology::{Topology, runtime::Workloads};
use anyhow::Context as _;
use serde_json::{Value, json};
use tracer_tests::{
    busybox::http_get,
    machine::wait_for,
    netns::{Netns, run},
    testbed::{PREFIX, SERVER_ADDR, Testbed, unique_id},
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
    let tunnels = lines
        .iter()
        .find_map(|l| l.strip_prefix("tunnels    "))
        .expect("a tunnels line");
    assert_eq!(tunnels, expected_tunnels()?, "{}", finished.stdout);
    Ok(())
}

/// What `tracer doctor` must say of tunnels here, from the kernel's own configuration: this
/// kernel loads no modules, so a kind is there exactly when its option is `y`.
fn expected_tunnels() -> anyhow::Result<String> {
    let config = run("sh", &["-c", "zcat /proc/config.gz"])?;
    let option = |name: &str| {
        config
            .lines()
            .find_map(|l| l.strip_prefix(&format!("CONFIG_{name}="))?.chars().next())
    };
    assert_eq!(
        option("MODULES"),
        None,
        "this test knows kernels without modules only"
    );
    let kinds = [
        ("vxlan", "VXLAN"),
        ("geneve", "GENEVE"),
        ("ipip", "NET_IPIP"),
        ("sit", "IPV6_SIT"),
        ("ip6tnl", "IPV6_TUNNEL"),
        ("gre", "NET_IPGRE"),
        ("gretap", "NET_IPGRE"),
        ("ip6gre", "IPV6_GRE"),
        ("ip6gretap", "IPV6_GRE"),
        ("wireguard", "WIREGUARD"),
    ];
    let with = |present: bool| -> Vec<&str> {
        kinds
            .iter()
            .filter(|(_, name)| (option(name) == Some('y')) == present)
            .map(|(kind, _)| *kind)
            .collect()
    };
    let mut parts = Vec::new();
    if !with(true).is_empty() {
        parts.push(format!("in the kernel: {}", with(true).join(", ")));
    }
    if !with(false).is_empty() {
        parts.push(format!("missing: {}", with(false).join(", ")));
    }
    Ok(parts.join("; "))
}

/// A node of a flannel-style overlay: its own namespace, an underlay veth `ul0` to the other
/// node, and a VXLAN device over it with a fixed MAC.
struct Node {
    netns: Netns,
    underlay: Ipv4Addr,
    overlay: Ipv4Addr,
    mac: &'static str,
}

/// Two nodes whose VXLAN devices `vx0` (VNI 42, port 8472) reach each other as flannel sets
/// them up: a static neighbour for the peer's overlay address and a forwarding entry
/// (`bridge fdb append`) sending its MAC to the peer's underlay address. Node `a` has its
/// default route on `ul0`, so that `ul0` is its uplink. Deleted with the namespaces on drop.
struct Overlay {
    a: Node,
    b: Node,
}

impl Overlay {
    fn up() -> anyhow::Result<Overlay> {
        let id = unique_id();
        let node = |side: &str, last: u8, mac| -> anyhow::Result<Node> {
            Ok(Node {
                netns: Netns::create(&format!("{PREFIX}{id}-ov{side}"))?,
                underlay: Ipv4Addr::new(198, 18, 77, last),
                overlay: Ipv4Addr::new(198, 19, 77, last),
                mac,
            })
        };
        let (a, b) = (
            node("a", 1, "02:00:00:00:77:01")?,
            node("b", 2, "02:00:00:00:77:02")?,
        );
        a.netns.ip(&[
            "link",
            "add",
            "ul0",
            "type",
            "veth",
            "peer",
            "name",
            "ul0",
            "netns",
            &b.netns.name,
        ])?;
        for (this, other) in [(&a, &b), (&b, &a)] {
            let ns = &this.netns;
            ns.ip(&[
                "addr",
                "add",
                &format!("{}/24", this.underlay),
                "dev",
                "ul0",
            ])?;
            ns.ip(&["link", "set", "ul0", "up"])?;
            ns.ip(&[
                "link",
                "add",
                "vx0",
                "address",
                this.mac,
                "type",
                "vxlan",
                "id",
                "42",
                "local",
                &this.underlay.to_string(),
                "dev",
                "ul0",
                "dstport",
                "8472",
                "nolearning",
            ])?;
            ns.ip(&["addr", "add", &format!("{}/24", this.overlay), "dev", "vx0"])?;
            ns.ip(&["link", "set", "vx0", "up"])?;
            ns.ip(&[
                "neigh",
                "add",
                &other.overlay.to_string(),
                "lladdr",
                other.mac,
                "dev",
                "vx0",
                "nud",
                "permanent",
            ])?;
            bridge_fdb_append(ns, other.mac, "vx0", other.underlay)?;
        }
        a.netns.ip(&[
            "route",
            "add",
            "default",
            "via",
            &b.underlay.to_string(),
            "dev",
            "ul0",
        ])?;
        Ok(Overlay { a, b })
    }
}

/// `bridge fdb append MAC dev DEV dst DST` in `netns`.
fn bridge_fdb_append(netns: &Netns, mac: &str, dev: &str, dst: Ipv4Addr) -> anyhow::Result<()> {
    let dst = dst.to_string();
    run(
        "bridge",
        &[
            "-n",
            &netns.name,
            "fdb",
            "append",
            mac,
            "dev",
            dev,
            "dst",
            &dst,
        ],
    )?;
    Ok(())
}

/// VXLAN devices as flannel makes them, and one on IANA's port: `tracer topology` gives each
/// one's VNI, port, local address, underlay device and forwarding entries, in JSON and text;
/// the ports the kernel programs will treat as VXLAN include every device's.
#[test]
fn topology_lists_vxlan_devices_with_their_peers_and_ports() -> anyhow::Result<()> {
    let id = unique_id();
    let netns = Netns::create(&format!("{PREFIX}{id}-vx"))?;
    netns.ip(&["link", "add", "ul0", "type", "veth", "peer", "name", "ul1"])?;
    netns.ip(&["addr", "add", "198.18.77.1/24", "dev", "ul0"])?;
    netns.ip(&["link", "set", "ul0", "up"])?;
    let (flannel, iana, custom) = (
        format!("vxa-{id}"),
        format!("vxb-{id}"),
        format!("vxc-{id}"),
    );
    netns.ip(&[
        "link",
        "add",
        &flannel,
        "type",
        "vxlan",
        "id",
        "42",
        "local",
        "198.18.77.1",
        "dev",
        "ul0",
        "dstport",
        "8472",
        "nolearning",
    ])?;
    bridge_fdb_append(
        &netns,
        "02:00:00:00:00:02",
        &flannel,
        Ipv4Addr::new(198, 18, 77, 2),
    )?;
    netns.ip(&[
        "link",
        "add",
        &iana,
        "type",
        "vxlan",
        "id",
        "4242",
        "dev",
        "ul0",
        "dstport",
        "4789",
        "nolearning",
    ])?;
    netns.ip(&[
        "link",
        "add",
        &custom,
        "type",
        "vxlan",
        "id",
        "7",
        "dstport",
        "48879",
        "nolearning",
    ])?;

    let finished = tracer::run(&["topology", "--output", "json"])?;
    assert!(finished.status.success(), "{}", finished.stderr);
    let topology: Value = serde_json::from_str(&finished.stdout)?;
    let ns = namespace(&topology, &netns.name);
    let ul0 = link(ns, "ul0");
    assert_eq!(ul0["overlay"], Value::Null);
    let underlay = json!({
        "netns_inode": netns.inode()?,
        "netns": netns.name,
        "ifindex": ul0["ifindex"],
        "name": "ul0",
    });
    assert_eq!(link(ns, &flannel)["kind"], "vxlan");
    assert_eq!(
        link(ns, &flannel)["overlay"],
        json!({
            "kind": "vxlan",
            "vni": 42,
            "external": false,
            "port": 8472,
            "local": "198.18.77.1",
            "remote": null,
            "input_key": null,
            "output_key": null,
            "underlay": underlay,
            "peers": [{"mac": "02:00:00:00:00:02", "dst": "198.18.77.2", "port": null, "vni": null}],
        })
    );
    let second = &link(ns, &iana)["overlay"];
    assert_eq!(
        (&second["vni"], &second["port"], &second["local"]),
        (&json!(4242), &json!(4789), &Value::Null)
    );
    assert_eq!(second["underlay"], underlay);
    assert_eq!(second["peers"], json!([]));

    // The text's overlay table has the same.
    let text = tracer::run(&["topology"])?.stdout;
    let row = text
        .lines()
        .skip_while(|l| !l.contains(" OVERLAY "))
        .find(|l| l.starts_with(&netns.name) && l.contains(&format!(" {flannel} ")))
        .expect("overlay row");
    let fields: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        fields[1..],
        [
            &flannel,
            "vxlan",
            "42",
            "8472",
            "198.18.77.1",
            "-",
            "ul0",
            "02:00:00:00:00:02",
            "dst",
            "198.18.77.2"
        ]
    );

    // The ports: the defaults and every device's, of this namespace alone (others' tests may
    // have VXLAN devices of their own meanwhile).
    let inode = netns.inode()?;
    let mut everything = Topology::discover(&Workloads::default());
    assert!(everything.vxlan_ports().contains(&48879));
    everything.namespaces.retain(|ns| ns.inode == inode);
    assert_eq!(everything.vxlan_ports(), [4789, 8472, 48879]);
    assert_eq!(everything.geneve_ports(), [6081]);
    Ok(())
}

/// `tracer monitor` names a VXLAN device's places `overlay:HOOK`: datagrams between two
/// nodes' overlay addresses leave through `vx0`, each once, so each makes one hop pair from
/// `overlay:net_dev_queue` (to the far node's `vx0` while the programs do not follow a packet
/// into its encapsulation, to the uplink once they do).
#[test]
fn topology_roles_name_vxlan_devices_overlay_in_monitor_places() -> anyhow::Result<()> {
    let port = 10051;
    let overlay = Overlay::up()?;
    let metrics = "127.0.0.1:19531";
    let monitor = Tracer::start(&[
        "monitor",
        "--metrics",
        metrics,
        "--sample",
        "1",
        &format!("udp port {port}"),
    ])?;
    let receiver = traffic::udp_bind(
        &overlay.b.netns,
        SocketAddr::from((overlay.b.overlay, port)),
    )?;
    let sender = traffic::udp_bind(&overlay.a.netns, SocketAddr::from((overlay.a.overlay, 0)))?;
    let datagrams = 5;
    for _ in 0..datagrams {
        sender.send_to(b"across", receiver.local_addr()?)?;
        let mut buf = [0u8; 16];
        let (size, from) = receiver.recv_from(&mut buf)?;
        assert_eq!((&buf[..size], from), (&b"across"[..], sender.local_addr()?));
    }
    let count = |exposition: &str| -> f64 {
        exposition
            .lines()
            .filter(|l| {
                l.starts_with("tracer_hop_latency_seconds_count{")
                    && l.contains(r#"from="overlay:net_dev_queue""#)
                    && l.contains(r#"direction="original""#)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let server: SocketAddr = metrics.parse()?;
    let exposition = wait_for(
        "every datagram is measured",
        Duration::from_secs(30),
        || {
            let exposition = http_get(None, server, "/metrics").ok()?;
            (count(&exposition) >= f64::from(datagrams)).then_some(exposition)
        },
    )
    .context("no hop pair from overlay:net_dev_queue")?;
    assert_eq!(count(&exposition), f64::from(datagrams), "{exposition}");
    let finished = monitor.stop()?;
    assert!(finished.status.success(), "{}", finished.stderr);
    Ok(())
}
