//! A Service in kube-proxy's IPVS mode on the Docker-like testbed: the virtual address on a
//! dummy interface (kube-proxy's `kube-ipvs0`), an `ipvsadm` virtual service in NAT mode
//! (masquerading) whose real server is the remote, and `net.ipv4.vs.conntrack=1`, which
//! kube-proxy sets so that conntrack (and the MASQUERADE rule behind it) sees the connection.
//!
//! The kernel of the development machine has no IPVS, so this runs in the guests of `cargo
//! xtask vm-test`, which set `TRACER_EXPECT_IPVS`; elsewhere it does not apply.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde_json::Value;
use tracer_tests::{
    netns::Netns,
    skip,
    testbed::{SERVER_ADDR, SERVER_ADDR6, Testbed, UPLINK_ADDR, UPLINK_ADDR6},
    trace::{self, Packet, place},
    tracer::Tracer,
    traffic,
};

/// The Service's virtual address (a ClusterIP).
const VIRTUAL_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 10);
/// The same for IPv6, in the testbed's IPv6 plan.
const VIRTUAL_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0x100, 0, 0, 0, 0x10);

/// The addresses of one family: the virtual service's, the real server's, the uplink's (what
/// MASQUERADE rewrites to) and the client container's.
struct Plan {
    virtual_addr: IpAddr,
    server: IpAddr,
    uplink: IpAddr,
    client: IpAddr,
}

impl Plan {
    fn of(testbed: &Testbed, v6: bool) -> Plan {
        let ctr = &testbed.containers[0];
        if v6 {
            Plan {
                virtual_addr: VIRTUAL_ADDR6.into(),
                server: SERVER_ADDR6.into(),
                uplink: UPLINK_ADDR6.into(),
                client: ctr.addr6.into(),
            }
        } else {
            Plan {
                virtual_addr: VIRTUAL_ADDR.into(),
                server: SERVER_ADDR.into(),
                uplink: UPLINK_ADDR.into(),
                client: ctr.addr.into(),
            }
        }
    }
}

/// `address:port` as ipvsadm takes it (IPv6 in brackets).
fn service_text(addr: IpAddr, port: u16) -> String {
    SocketAddr::from((addr, port)).to_string()
}

fn endpoint(tuple: &Value, side: &str) -> (String, u64) {
    (
        trace::text(&tuple[format!("{side}_ip")]),
        tuple[format!("{side}_port")].as_u64().unwrap_or(0),
    )
}

/// The virtual service on `port`, as kube-proxy makes it in the host namespace; false when
/// this kernel has no IPVS.
fn virtual_service(host: &Netns, plan: &Plan, port: u16) -> anyhow::Result<bool> {
    let service = service_text(plan.virtual_addr, port);
    let real = service_text(plan.server, port);
    if let Err(err) = host.exec("ipvsadm", &["-A", "-t", &service, "-s", "rr"]) {
        let expected = std::env::var("TRACER_EXPECT_IPVS").is_ok_and(|v| v == "yes");
        if !expected && !std::path::Path::new("/proc/net/ip_vs").exists() {
            return Ok(false);
        }
        return Err(err.context("failed to add the virtual service"));
    }
    host.exec("ipvsadm", &["-a", "-t", &service, "-r", &real, "-m"])?;
    host.ip(&["link", "add", "kube-ipvs0", "type", "dummy"])?;
    let (prefix, extra): (u8, &[&str]) = match plan.virtual_addr {
        IpAddr::V4(_) => (32, &[]),
        // Usable at once: no duplicate address detection.
        IpAddr::V6(_) => (128, &["nodad"]),
    };
    let address = format!("{}/{prefix}", plan.virtual_addr);
    let mut add = vec!["addr", "add", &address, "dev", "kube-ipvs0"];
    add.extend(extra);
    host.ip(&add)?;
    host.ip(&["link", "set", "kube-ipvs0", "up"])?;
    host.sysctl("net.ipv4.vs.conntrack", "1")?;
    Ok(true)
}

/// A container connects to the virtual address: IPVS sends the SYN to the real server (and
/// MASQUERADE to the uplink's address), and the replies back from the virtual address. The
/// handshake is one flow; each direction's translation is at the hop after IPVS, the virtual
/// address's rewrite said to be IPVS's, MASQUERADE's not.
#[test]
fn ipvs_service_is_stitched_through_the_real_server() -> anyhow::Result<()> {
    stitched_through_the_real_server(10091, false)
}

/// The same over IPv6 (NAT66 MASQUERADE behind the virtual service).
#[test]
fn ipvs_service_over_ipv6_is_stitched_through_the_real_server() -> anyhow::Result<()> {
    stitched_through_the_real_server(10092, true)
}

fn stitched_through_the_real_server(port: u16, v6: bool) -> anyhow::Result<()> {
    let testbed = Testbed::up(1)?;
    let host = &testbed.host;
    let plan = Plan::of(&testbed, v6);
    if !virtual_service(host, &plan, port)? {
        return skip::not_applicable("this kernel has no IPVS");
    }
    let server = SocketAddr::from((plan.server, port));
    let listener = traffic::listen(&testbed.remote, server)?;
    let tracer = Tracer::start(&["--port", &port.to_string(), "--output", "json"])?;
    let ctr = &testbed.containers[0];
    let service = SocketAddr::from((plan.virtual_addr, port));
    traffic::exchange(&ctr.netns, Some(43000), service, &listener)?;
    let lines = tracer.stop()?.json()?;
    let packets = trace::packets(&lines);

    let find = |flags: &str, netns: &str| -> &Packet {
        packets
            .iter()
            .find(|p| p.flags() == flags && p.first()["netns"] == netns)
            .unwrap_or_else(|| panic!("no {flags} from {netns}: {packets:#?}"))
    };
    let (hostname, remote) = (host.name.as_str(), testbed.remote.name.as_str());
    let syn = find("S", &ctr.netns.name);
    let syn_ack = find("S.", remote);
    assert_eq!(syn_ack.flow_id(), syn.flow_id(), "{packets:#?}");
    assert_eq!(syn_ack.first()["direction"], "reply");

    // MASQUERADE's rewrite is a hop of its own where a rung reaches the NAT function.
    let nat_hop = std::env::var("TRACER_EXPECT_NAT").is_ok_and(|rung| rung != "none");
    let masquerade = |at: &str| nat_hop.then(|| place(hostname, at, "nf_nat_manip_pkt"));
    let syn_places = syn.places();
    let expected: Vec<_> = [
        Some(place(&ctr.netns.name, "eth0", "net_dev_queue")),
        Some(place(hostname, &ctr.host_veth, "netif_receive_skb")),
        Some(place(hostname, "docker0", "netif_receive_skb")),
        masquerade("eth0"),
        Some(place(hostname, "eth0", "net_dev_queue")),
        Some(place(remote, "eth0", "netif_receive_skb")),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert_eq!(syn_places, expected, "{syn_places:#?}");
    let to_service = syn
        .hop_at(hostname, "docker0", "netif_receive_skb")
        .expect("docker0");
    assert_eq!(
        endpoint(to_service, "dst"),
        (plan.virtual_addr.to_string(), port.into())
    );
    let to_server = syn
        .hop_at(hostname, "eth0", "net_dev_queue")
        .expect("uplink");
    assert_eq!(
        endpoint(to_server, "dst"),
        (plan.server.to_string(), port.into())
    );
    assert_eq!(endpoint(to_server, "src"), (plan.uplink.to_string(), 43000));

    let back_places = syn_ack.places();
    let expected: Vec<_> = [
        Some(place(remote, "eth0", "net_dev_queue")),
        Some(place(hostname, "eth0", "netif_receive_skb")),
        masquerade("eth0"),
        Some(place(hostname, "docker0", "net_dev_queue")),
        Some(place(hostname, &ctr.host_veth, "net_dev_queue")),
        Some(place(&ctr.netns.name, "eth0", "netif_receive_skb")),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert_eq!(back_places, expected, "{back_places:#?}");
    let delivered = syn_ack.hops.last().expect("hops");
    assert_eq!(
        endpoint(delivered, "src"),
        (plan.virtual_addr.to_string(), port.into())
    );
    assert_eq!(endpoint(delivered, "dst"), (plan.client.to_string(), 43000));

    // Both directions: the virtual address by IPVS, the container's address by MASQUERADE.
    let nat: Vec<&Value> = trace::of_type(&lines, "nat")
        .into_iter()
        .filter(|n| n["flow_id"] == syn.flow_id())
        .collect();
    let record = |direction: &str, kind: &str| -> &Value {
        nat.iter()
            .find(|n| n["direction"] == direction && n["kind"] == kind)
            .unwrap_or_else(|| panic!("no {direction} {kind}: {nat:#?}"))
    };
    assert_eq!(nat.len(), 4, "{nat:#?}");
    for direction in ["original", "reply"] {
        let ipvs = record(direction, "dnat");
        assert_eq!(ipvs["translator"], "ipvs", "{ipvs}");
        assert_eq!(ipvs["source"], "observed", "{ipvs}");
        assert_eq!(ipvs["at"]["netns"], hostname, "{ipvs}");
        let masquerade = record(direction, "snat");
        assert!(masquerade["translator"].is_null(), "{masquerade}");
    }
    let out = record("original", "dnat");
    assert_eq!(out["ifname"], "eth0");
    assert_eq!(
        endpoint(&out["before"], "dst"),
        (plan.virtual_addr.to_string(), port.into())
    );
    assert_eq!(
        endpoint(&out["after"], "dst"),
        (plan.server.to_string(), port.into())
    );
    let back = record("reply", "dnat");
    assert_eq!(back["ifname"], "docker0");
    assert_eq!(
        endpoint(&back["before"], "src"),
        (plan.server.to_string(), port.into())
    );
    assert_eq!(
        endpoint(&back["after"], "src"),
        (plan.virtual_addr.to_string(), port.into())
    );
    Ok(())
}
