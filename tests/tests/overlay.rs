//! Tracing across a two-node VXLAN overlay (flannel's shape, from namespaces): a pod's SYN
//! through the underlay with its outer headers, a firewall that drops the tunnel, a packet too
//! big for the overlay and the ICMP error sent back, and kube-proxy Services whose DNAT sends
//! the connection to a pod on the other node.

use std::net::{Ipv4Addr, SocketAddr};

use serde_json::Value;
use tracer_tests::{
    overlay::{
        BRIDGE_DEV, ETH_DEV, NodeId, Options, Overlay, VNI, VXLAN_DEV, VXLAN_PORT, probe,
        service::Endpoints,
    },
    trace::{self, Packet, Place, place},
    tracer::Tracer,
    traffic,
};

fn addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

/// The path of a packet from pod a to pod b, every hop the default hooks show, with whether
/// the hop carries VXLAN's outer headers.
fn pod_to_pod(overlay: &Overlay) -> Vec<(Place, bool)> {
    let (a, b) = (overlay.node(NodeId::A), overlay.node(NodeId::B));
    let at = |ns: &str, dev: &str, hook: &str, encap| (place(ns, dev, hook), encap);
    vec![
        at(&a.pod.netns.name, ETH_DEV, "net_dev_queue", false),
        at(&a.netns.name, &a.pod.host_veth, "netif_receive_skb", false),
        at(&a.netns.name, BRIDGE_DEV, "netif_receive_skb", false),
        at(&a.netns.name, VXLAN_DEV, "net_dev_queue", false),
        at(&a.netns.name, ETH_DEV, "net_dev_queue", true),
        at(&b.netns.name, ETH_DEV, "netif_receive_skb", true),
        at(&b.netns.name, VXLAN_DEV, "netif_receive_skb", false),
        at(&b.netns.name, BRIDGE_DEV, "net_dev_queue", false),
        at(&b.netns.name, &b.pod.host_veth, "net_dev_queue", false),
        at(&b.pod.netns.name, ETH_DEV, "netif_receive_skb", false),
    ]
}

fn with_encap(packet: &Packet) -> Vec<(Place, bool)> {
    packet
        .places()
        .into_iter()
        .zip(&packet.hops)
        .map(|(place, hop)| (place, hop.get("encap").is_some()))
        .collect()
}

/// The SYN the pod in `netns` sent.
fn syn_from(packets: &[Packet], netns: &str) -> Packet {
    packets
        .iter()
        .find(|p| p.flags() == "S" && p.first()["netns"] == netns)
        .unwrap_or_else(|| panic!("no SYN from {netns}: {packets:#?}"))
        .clone()
}

#[test]
fn a_pods_syn_crosses_the_underlay_with_its_outer_headers() -> anyhow::Result<()> {
    let port = 10_101;
    let overlay = Overlay::up(Options::default())?;
    let (a, b) = (overlay.node(NodeId::A), overlay.node(NodeId::B));
    let server = addr(b.pod.addr, port);
    let listener = traffic::listen(&b.pod.netns, server)?;
    let tracer = Tracer::json(port, &[])?;
    traffic::exchange(&a.pod.netns, None, server, &listener)?;
    let finished = tracer.stop()?;
    assert!(finished.status.success(), "{}", finished.stderr);
    let lines = finished.json()?;
    let packets = trace::packets(&lines);
    let syn = syn_from(&packets, &a.pod.netns.name);
    assert_eq!(with_encap(&syn), pod_to_pod(&overlay));
    // The inner tuple on every hop: nothing on the overlay translates.
    for hop in &syn.hops {
        assert_eq!(trace::text(&hop["src_ip"]), a.pod.addr.to_string(), "{hop}");
        assert_eq!(trace::text(&hop["dst_ip"]), b.pod.addr.to_string(), "{hop}");
        assert_eq!(hop["dst_port"], port, "{hop}");
    }
    let encap = &syn.hop_at(&a.netns.name, ETH_DEV, "net_dev_queue").unwrap()["encap"];
    assert_eq!(encap["kind"], "vxlan");
    assert_eq!(encap["vni"], VNI);
    assert_eq!(encap["key"], Value::Null);
    assert_eq!(encap["proto"], "udp");
    assert_eq!(trace::text(&encap["src_ip"]), a.underlay_addr.to_string());
    assert_eq!(trace::text(&encap["dst_ip"]), b.underlay_addr.to_string());
    assert_eq!(encap["dst_port"], VXLAN_PORT);
    // The same outer headers where they arrive.
    let arrived = &syn
        .hop_at(&b.netns.name, ETH_DEV, "netif_receive_skb")
        .unwrap()["encap"];
    assert_eq!(arrived, encap);
    // The reply crosses the other way, in the same flow.
    let syn_ack = packets
        .iter()
        .find(|p| p.flags() == "S." && p.first()["netns"] == b.pod.netns.name)
        .expect("no SYN-ACK");
    assert_eq!(syn_ack.flow_id(), syn.flow_id());
    let back = &syn_ack
        .hop_at(&b.netns.name, ETH_DEV, "net_dev_queue")
        .unwrap()["encap"];
    assert_eq!(trace::text(&back["src_ip"]), b.underlay_addr.to_string());
    assert_eq!(back["dst_port"], VXLAN_PORT);
    // The tunnel is not a NAT.
    let nat = trace::of_type(&lines, "nat");
    assert!(nat.is_empty(), "{nat:?}");
    Ok(())
}

/// Node b's firewall drops the tunnel's datagrams: the SYN's last hop is the drop on node b's
/// underlay interface, with the kernel's reason and the rule.
#[test]
fn a_firewall_dropping_the_tunnel_is_the_inner_packets_drop() -> anyhow::Result<()> {
    let port = 10_102;
    let overlay = Overlay::up(Options::default())?;
    let (a, b) = (overlay.node(NodeId::A), overlay.node(NodeId::B));
    overlay.drop_vxlan_on(NodeId::B)?;
    let tracer = Tracer::json(port, &["--rules"])?;
    let dst = addr(b.pod.addr, port);
    let attempt = a.pod.netns.enter(|| {
        std::net::TcpStream::connect_timeout(&dst, std::time::Duration::from_millis(500))
    })?;
    assert!(attempt.is_err(), "the connection went through");
    let finished = tracer.stop()?;
    assert!(finished.status.success(), "{}", finished.stderr);
    let packets = trace::packets(&finished.json()?);
    let syn = syn_from(&packets, &a.pod.netns.name);
    let mut expected = pod_to_pod(&overlay)[..6].to_vec();
    expected.push((place(&b.netns.name, ETH_DEV, "kfree_skb"), true));
    assert_eq!(with_encap(&syn), expected);
    let drop = syn.hops.last().unwrap();
    assert_eq!(drop["drop_reason"], "NETFILTER_DROP");
    assert!(
        trace::text(&drop["drop_location"]).starts_with("nft_do_chain"),
        "{drop}"
    );
    let rule = &drop["rule"];
    assert_eq!(
        (
            rule["family"].as_str(),
            rule["table"].as_str(),
            rule["chain"].as_str()
        ),
        (Some("ip"), Some("filter"), Some("INPUT")),
        "{drop}"
    );
    assert_eq!(rule["verdict"], "drop", "{drop}");
    assert!(
        trace::text(&rule["text"]).contains(&format!("udp dport {VXLAN_PORT}")),
        "{rule}"
    );
    Ok(())
}

/// A pod sends a datagram with DF that its own interface takes but the overlay device does
/// not: node a refuses it where it forwards it, and the "fragmentation needed" it sends back
/// to the pod, with the overlay's MTU, is a packet of the same flow going back.
#[test]
fn a_packet_too_big_for_the_overlay_and_the_icmp_error_sent_back() -> anyhow::Result<()> {
    let port = 10_103;
    let overlay = Overlay::up(Options::default())?;
    let (a, b) = (overlay.node(NodeId::A), overlay.node(NodeId::B));
    let vxlan_mtu = overlay.options().effective_vxlan_mtu();
    // The pod's path to its bridge takes 1500 bytes, the overlay device fewer.
    let (pod, node) = (&a.pod.netns, &a.netns);
    pod.exec("ip", &["link", "set", ETH_DEV, "mtu", "1500"])?;
    node.exec("ip", &["link", "set", &a.pod.host_veth, "mtu", "1500"])?;
    let receiver = traffic::udp_bind(&b.pod.netns, addr(b.pod.addr, port))?;
    let tracer = Tracer::json(port, &[])?;
    let size = 1500 - 28;
    probe::send_df(pod, addr(b.pod.addr, port), size)?;
    let finished = tracer.stop()?;
    assert!(finished.status.success(), "{}", finished.stderr);
    drop(receiver);
    let packets = trace::packets(&finished.json()?);
    assert_eq!(packets.len(), 2, "{packets:#?}");
    let (datagram, error) = (&packets[0], &packets[1]);
    assert_eq!(
        datagram.places(),
        [
            place(&pod.name, ETH_DEV, "net_dev_queue"),
            place(&node.name, &a.pod.host_veth, "netif_receive_skb"),
            place(&node.name, BRIDGE_DEV, "netif_receive_skb"),
            place(&node.name, BRIDGE_DEV, "kfree_skb"),
        ]
    );
    let drop = datagram.hops.last().unwrap();
    assert_eq!(drop["drop_reason"], "PKT_TOO_BIG", "{drop}");
    assert!(
        trace::text(&drop["drop_location"]).starts_with("ip_forward"),
        "{drop}"
    );
    assert_eq!(error.flow_id(), datagram.flow_id());
    assert_eq!(error.first()["direction"], "reply");
    assert_eq!(error.first()["proto"], "icmp");
    assert_eq!(
        error.places(),
        [
            place(&node.name, BRIDGE_DEV, "net_dev_queue"),
            place(&node.name, &a.pod.host_veth, "net_dev_queue"),
            place(&pod.name, ETH_DEV, "netif_receive_skb"),
        ]
    );
    let icmp = &error.first()["icmp"];
    assert_eq!(
        (icmp["type"].as_u64(), icmp["code"].as_u64()),
        (Some(3), Some(4))
    );
    assert_eq!(icmp["mtu"], vxlan_mtu);
    assert_eq!(
        trace::text(&icmp["error"]),
        format!("fragmentation needed (mtu {vxlan_mtu})")
    );
    let quoted = &icmp["quoted"];
    assert_eq!(quoted["proto"], "udp");
    assert_eq!(trace::text(&quoted["src_ip"]), a.pod.addr.to_string());
    assert_eq!(trace::text(&quoted["dst_ip"]), b.pod.addr.to_string());
    assert_eq!(quoted["dst_port"], port);
    Ok(())
}

/// The NAT record of the flow in the original direction, a DNAT.
fn dnat(lines: &[Value], flow_id: u64) -> Value {
    trace::of_type(lines, "nat")
        .into_iter()
        .find(|n| n["flow_id"] == flow_id && n["kind"] == "dnat" && n["direction"] == "original")
        .unwrap_or_else(|| panic!("no DNAT record for flow {flow_id}: {lines:#?}"))
        .clone()
}

/// A ClusterIP whose one endpoint is the pod on the other node: the SYN is one packet from
/// pod a to pod b, translated on node a before the tunnel, and `--rules` names the KUBE-SEP
/// rule with kube-proxy's comment (the Service's name).
#[test]
fn a_cluster_ip_is_stitched_to_the_pod_on_the_other_node() -> anyhow::Result<()> {
    let overlay = Overlay::up(Options::default())?;
    let (a, b) = (overlay.node(NodeId::A), overlay.node(NodeId::B));
    let service = overlay.web_service(NodeId::A, Endpoints::PeerPod)?;
    let cluster = service.cluster_addr();
    let target = addr(b.pod.addr, service.target_port);
    let listener = traffic::listen(&b.pod.netns, target)?;
    // A filter every node could use: the pod's port (node b never sees the ClusterIP).
    let filter = format!("port {} or port {}", cluster.port(), target.port());
    let tracer = Tracer::start(&["--output", "json", "--rules", &filter])?;
    traffic::exchange(&a.pod.netns, None, SocketAddr::V4(cluster), &listener)?;
    let finished = tracer.stop()?;
    assert!(finished.status.success(), "{}", finished.stderr);
    let lines = finished.json()?;
    let packets = trace::packets(&lines);
    let syn = syn_from(&packets, &a.pod.netns.name);
    let places: Vec<Place> = with_encap(&syn).into_iter().map(|(p, _)| p).collect();
    let expected: Vec<Place> = pod_to_pod(&overlay).into_iter().map(|(p, _)| p).collect();
    assert_eq!(places, expected);
    assert_eq!(
        trace::text(&syn.first()["dst_ip"]),
        cluster.ip().to_string()
    );
    let last = syn.hops.last().unwrap();
    assert_eq!(trace::text(&last["dst_ip"]), b.pod.addr.to_string());
    assert_eq!(last["dst_port"], target.port());
    let nat = dnat(&lines, syn.flow_id());
    assert_eq!(
        trace::text(&nat["before"]["dst_ip"]),
        cluster.ip().to_string()
    );
    assert_eq!(trace::text(&nat["after"]["dst_ip"]), b.pod.addr.to_string());
    let rule = &nat["rule"];
    assert_eq!(
        trace::text(&rule["chain"]),
        service.sep_chain(b.pod.addr)?,
        "{nat}"
    );
    assert!(
        trace::text(&rule["text"]).contains(&format!("comment \"{}\"", service.port_name())),
        "{rule}"
    );
    // The whole connection is one flow: the SYN-ACK comes back from pod b to pod a.
    let syn_ack = packets
        .iter()
        .find(|p| p.flags() == "S." && p.first()["netns"] == b.pod.netns.name)
        .expect("no SYN-ACK");
    assert_eq!(syn_ack.flow_id(), syn.flow_id());
    Ok(())
}

/// Two endpoints chosen by kube-proxy's `statistic` rule: connections until each endpoint got
/// one; each connection is one flow, translated to the endpoint that answered, and named by
/// that endpoint's KUBE-SEP rule.
#[test]
fn load_balanced_endpoints_are_each_named() -> anyhow::Result<()> {
    let overlay = Overlay::up(Options::default())?;
    let (a, b) = (overlay.node(NodeId::A), overlay.node(NodeId::B));
    let service = overlay.web_service(NodeId::A, Endpoints::BothPods)?;
    let cluster = SocketAddr::V4(service.cluster_addr());
    let listeners = [
        traffic::listen(&a.pod.netns, addr(a.pod.addr, service.target_port))?,
        traffic::listen(&b.pod.netns, addr(b.pod.addr, service.target_port))?,
    ];
    let filter = format!("port {} or port {}", cluster.port(), service.target_port);
    let tracer = Tracer::start(&["--output", "json", "--rules", &filter])?;
    let mut reached = [0usize; 2];
    for _ in 0..64 {
        let client = traffic::connect_from(&a.pod.netns, None, cluster)?;
        let (which, _server) = probe::accept_any(&[&listeners[0], &listeners[1]])?;
        reached[which] += 1;
        drop(client);
        if reached.iter().all(|&n| n > 0) {
            break;
        }
    }
    assert!(reached.iter().all(|&n| n > 0), "{reached:?}");
    let finished = tracer.stop()?;
    assert!(finished.status.success(), "{}", finished.stderr);
    let lines = finished.json()?;
    let packets = trace::packets(&lines);
    let syns: Vec<&Packet> = packets
        .iter()
        .filter(|p| p.flags() == "S" && p.first()["netns"] == a.pod.netns.name)
        .collect();
    assert_eq!(syns.len(), reached.iter().sum::<usize>());
    let mut named = [0usize; 2];
    for syn in syns {
        let endpoint = trace::text(&syn.hops.last().unwrap()["dst_ip"]);
        let which = if endpoint == a.pod.addr.to_string() {
            0
        } else {
            1
        };
        let pod = [a.pod.addr, b.pod.addr][which];
        assert_eq!(endpoint, pod.to_string());
        let nat = dnat(&lines, syn.flow_id());
        assert_eq!(trace::text(&nat["after"]["dst_ip"]), endpoint);
        assert_eq!(trace::text(&nat["rule"]["chain"]), service.sep_chain(pod)?);
        named[which] += 1;
    }
    assert_eq!(named, reached);
    Ok(())
}

/// A NodePort on node a, reached from node b's own namespace: DNAT to the pod on node b and
/// MASQUERADE on node a, so the connection goes back through the tunnel; one flow, both
/// translations named.
#[test]
fn a_node_port_is_stitched_back_through_the_tunnel() -> anyhow::Result<()> {
    let overlay = Overlay::up(Options::default())?;
    let (a, b) = (overlay.node(NodeId::A), overlay.node(NodeId::B));
    let service = overlay.web_service(NodeId::A, Endpoints::PeerPod)?;
    let node_port = addr(a.underlay_addr, service.node_port);
    let listener = traffic::listen(&b.pod.netns, addr(b.pod.addr, service.target_port))?;
    let filter = format!("port {} or port {}", service.node_port, service.target_port);
    let tracer = Tracer::start(&["--output", "json", "--rules", &filter])?;
    traffic::exchange(&b.netns, None, node_port, &listener)?;
    let finished = tracer.stop()?;
    assert!(finished.status.success(), "{}", finished.stderr);
    let lines = finished.json()?;
    let packets = trace::packets(&lines);
    let syn = syn_from(&packets, &b.netns.name);
    let expected = vec![
        (place(&b.netns.name, ETH_DEV, "net_dev_queue"), false),
        (place(&a.netns.name, ETH_DEV, "netif_receive_skb"), false),
        (place(&a.netns.name, VXLAN_DEV, "net_dev_queue"), false),
        (place(&a.netns.name, ETH_DEV, "net_dev_queue"), true),
        (place(&b.netns.name, ETH_DEV, "netif_receive_skb"), true),
        (place(&b.netns.name, VXLAN_DEV, "netif_receive_skb"), false),
        (place(&b.netns.name, BRIDGE_DEV, "net_dev_queue"), false),
        (
            place(&b.netns.name, &b.pod.host_veth, "net_dev_queue"),
            false,
        ),
        (
            place(&b.pod.netns.name, ETH_DEV, "netif_receive_skb"),
            false,
        ),
    ];
    assert_eq!(with_encap(&syn), expected);
    let last = syn.hops.last().unwrap();
    assert_eq!(trace::text(&last["src_ip"]), a.vtep_addr.to_string());
    assert_eq!(trace::text(&last["dst_ip"]), b.pod.addr.to_string());
    let nat = dnat(&lines, syn.flow_id());
    assert_eq!(
        trace::text(&nat["rule"]["chain"]),
        service.sep_chain(b.pod.addr)?
    );
    let snat = trace::of_type(&lines, "nat")
        .into_iter()
        .find(|n| {
            n["flow_id"] == syn.flow_id() && n["kind"] == "snat" && n["direction"] == "original"
        })
        .expect("no SNAT record");
    assert_eq!(
        trace::text(&snat["rule"]["chain"]),
        "KUBE-POSTROUTING",
        "{snat}"
    );
    let syn_ack = packets
        .iter()
        .find(|p| p.flags() == "S." && p.first()["netns"] == b.pod.netns.name)
        .expect("no SYN-ACK");
    assert_eq!(syn_ack.flow_id(), syn.flow_id());
    Ok(())
}
