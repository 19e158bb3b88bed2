//! Every kind of tunnel tracer looks into, between two namespaces joined by an underlay veth:
//! a datagram through the tunnel is traced by its inner tuple, and its hop on the underlay
//! carries the outer headers (kind, VNI or key, outer addresses and ports).
//!
//! The machine kernel of the development VMs has VXLAN only; Debian's guest kernels have all
//! as modules (`cargo xtask vm-test`, which sets `TRACER_EXPECT_TUNNELS` to the kinds that
//! must work there). A kind the kernel lacks does not apply, unless it was expected.

use std::net::{IpAddr, SocketAddr};

use serde_json::Value;
use tracer_tests::{
    netns::Netns,
    skip,
    testbed::{PREFIX, unique_id},
    trace,
    tracer::Tracer,
    traffic,
};

/// Two namespaces joined by an underlay veth (`u0`), 198.19.250.1 and .2.
struct Underlay {
    left: Netns,
    right: Netns,
}

const LEFT: &str = "198.19.250.1";
const RIGHT: &str = "198.19.250.2";

impl Underlay {
    fn up() -> anyhow::Result<Underlay> {
        let id = unique_id();
        let left = Netns::create(&format!("{PREFIX}{id}-tl"))?;
        let right = Netns::create(&format!("{PREFIX}{id}-tr"))?;
        left.ip(&["link", "add", "u0", "type", "veth", "peer", "name", "u1"])?;
        left.ip(&["link", "set", "u1", "netns", &right.name, "name", "u0"])?;
        for (ns, addr) in [(&left, LEFT), (&right, RIGHT)] {
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "u0"])?;
            ns.ip(&["link", "set", "u0", "up"])?;
        }
        Ok(Underlay { left, right })
    }
}

/// A tunnel to test: its `ip link add ... type` arguments (without local and remote, which
/// are added), the inner addresses, and what the outer hop must say.
struct Kind {
    name: &'static str,
    /// `ip link add t0 type ARGS...`; `{local}` and `{remote}` are replaced.
    args: &'static [&'static str],
    /// Inner addresses of the left and right ends, with their prefix length.
    inner: [&'static str; 2],
    prefix: &'static str,
    vni: Option<u64>,
    key: Option<u64>,
    outer_proto: &'static str,
    outer_port: u16,
}

/// Whether the kernel knows the device kind (creating one says "Unknown device type" or
/// fails to find the module otherwise).
fn unsupported(err: &anyhow::Error) -> bool {
    let text = format!("{err:#}");
    text.contains("Unknown device type") || text.contains("not supported")
}

fn expected_here(kind: &str) -> bool {
    std::env::var("TRACER_EXPECT_TUNNELS")
        .unwrap_or_default()
        .split(',')
        .any(|expected| expected.trim() == kind)
}

fn trace_through(kind: &Kind, port: u16) -> anyhow::Result<()> {
    let underlay = Underlay::up()?;
    for (ns, (local, remote), inner) in [
        (&underlay.left, (LEFT, RIGHT), kind.inner[0]),
        (&underlay.right, (RIGHT, LEFT), kind.inner[1]),
    ] {
        let mut args = vec!["link", "add", "t0", "type"];
        let filled: Vec<String> = kind
            .args
            .iter()
            .map(|a| a.replace("{local}", local).replace("{remote}", remote))
            .collect();
        args.extend(filled.iter().map(String::as_str));
        if let Err(err) = ns.ip(&args) {
            if unsupported(&err) && !expected_here(kind.name) {
                return skip::not_applicable(&format!("this kernel has no {} device", kind.name));
            }
            return Err(err.context(format!("failed to create a {} device", kind.name)));
        }
        let address = format!("{inner}/{}", kind.prefix);
        let mut add = vec!["addr", "add", &address, "dev", "t0"];
        if inner.contains(':') {
            // Usable at once: no duplicate address detection on a link of two.
            add.push("nodad");
        }
        ns.ip(&add)?;
        ns.ip(&["link", "set", "t0", "up"])?;
    }
    let right_inner: IpAddr = kind.inner[1].parse()?;
    let target = SocketAddr::new(right_inner, port);
    let receiver = traffic::udp_bind(&underlay.right, target)?;
    let tracer = Tracer::json(port, &[])?;
    let sender = traffic::udp_bind(&underlay.left, SocketAddr::new(kind.inner[0].parse()?, 0))?;
    sender.send_to(b"through the tunnel", target)?;
    let mut buf = [0u8; 64];
    let (len, _) = receiver.recv_from(&mut buf)?;
    assert_eq!(&buf[..len], b"through the tunnel");
    let finished = tracer.stop()?;
    assert!(finished.status.success(), "{}", finished.stderr);
    let packets = trace::packets(&finished.json()?);
    assert_eq!(packets.len(), 1, "{packets:#?}");
    let hops = &packets[0].hops;
    let on_underlay: Vec<&Value> = hops.iter().filter(|h| h["ifname"] == "u0").collect();
    assert_eq!(on_underlay.len(), 2, "{hops:#?}");
    for hop in &hops[..] {
        assert_eq!(trace::text(&hop["src_ip"]), kind.inner[0], "{hop}");
        assert_eq!(trace::text(&hop["dst_ip"]), kind.inner[1], "{hop}");
        assert_eq!(hop["dst_port"], port, "{hop}");
        // The outer headers exactly where the packet has them.
        assert_eq!(hop.get("encap").is_some(), hop["ifname"] == "u0", "{hop}");
    }
    for hop in on_underlay {
        let encap = &hop["encap"];
        assert_eq!(encap["kind"], kind.name, "{hop}");
        assert_eq!(encap["vni"].as_u64(), kind.vni, "{hop}");
        assert_eq!(encap["key"].as_u64(), kind.key, "{hop}");
        assert_eq!(encap["proto"], kind.outer_proto, "{hop}");
        assert_eq!(trace::text(&encap["src_ip"]), LEFT, "{hop}");
        assert_eq!(trace::text(&encap["dst_ip"]), RIGHT, "{hop}");
        assert_eq!(encap["dst_port"], kind.outer_port, "{hop}");
    }
    Ok(())
}

#[test]
fn vxlan_on_a_port_of_its_own() -> anyhow::Result<()> {
    trace_through(
        &Kind {
            name: "vxlan",
            args: &[
                "vxlan", "id", "42", "local", "{local}", "remote", "{remote}", "dstport", "4789",
            ],
            inner: ["10.98.1.1", "10.98.1.2"],
            prefix: "24",
            vni: Some(42),
            key: None,
            outer_proto: "udp",
            outer_port: 4789,
        },
        10_121,
    )
}

#[test]
fn geneve() -> anyhow::Result<()> {
    trace_through(
        &Kind {
            name: "geneve",
            args: &["geneve", "id", "77", "remote", "{remote}"],
            inner: ["10.98.2.1", "10.98.2.2"],
            prefix: "24",
            vni: Some(77),
            key: None,
            outer_proto: "udp",
            outer_port: 6081,
        },
        10_122,
    )
}

#[test]
fn ipip() -> anyhow::Result<()> {
    trace_through(
        &Kind {
            name: "ipip",
            args: &["ipip", "local", "{local}", "remote", "{remote}"],
            inner: ["10.98.3.1", "10.98.3.2"],
            prefix: "24",
            vni: None,
            key: None,
            outer_proto: "4",
            outer_port: 0,
        },
        10_123,
    )
}

#[test]
fn sit_carries_ipv6_in_ipv4() -> anyhow::Result<()> {
    trace_through(
        &Kind {
            name: "sit",
            args: &["sit", "local", "{local}", "remote", "{remote}"],
            inner: ["fd98:4::1", "fd98:4::2"],
            prefix: "64",
            vni: None,
            key: None,
            outer_proto: "41",
            outer_port: 0,
        },
        10_124,
    )
}

#[test]
fn gre_with_a_key() -> anyhow::Result<()> {
    trace_through(
        &Kind {
            name: "gre",
            args: &["gre", "local", "{local}", "remote", "{remote}", "key", "5"],
            inner: ["10.98.5.1", "10.98.5.2"],
            prefix: "24",
            vni: None,
            key: Some(5),
            outer_proto: "47",
            outer_port: 0,
        },
        10_125,
    )
}

#[test]
fn gretap_carries_ethernet() -> anyhow::Result<()> {
    trace_through(
        &Kind {
            name: "gretap",
            args: &[
                "gretap", "local", "{local}", "remote", "{remote}", "key", "6",
            ],
            inner: ["10.98.6.1", "10.98.6.2"],
            prefix: "24",
            vni: None,
            key: Some(6),
            outer_proto: "47",
            outer_port: 0,
        },
        10_126,
    )
}
