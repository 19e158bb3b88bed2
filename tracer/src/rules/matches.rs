//! The filter compiled to what nf_tables can test: the rules of tracer's table mark the
//! packets of each [`Match`] (`meta nftrace set 1`), and [`super::netlink`] writes them.

use std::net::IpAddr;

use tracer_common::wire::ipproto;

use crate::{
    decode::Proto,
    filter::{Expr, Side},
};

/// A primitive of the filter that nf_tables can test: an address or network on one side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetMatch {
    pub dst: bool,
    pub addr: IpAddr,
    pub prefix: u8,
}

/// A port or port range on one side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMatch {
    pub dst: bool,
    pub lo: u16,
    pub hi: u16,
}

/// One conjunction of tests that marks a packet for tracing: nf_tables' rules are
/// conjunctions, so the filter becomes one of these per alternative.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Match {
    /// `NFPROTO_IPV4` (2) or `NFPROTO_IPV6` (10).
    pub family: Option<u8>,
    pub proto: Option<u8>,
    pub nets: Vec<NetMatch>,
    pub ports: Vec<PortMatch>,
}

/// Most rules tracer adds per chain; past this the filter is traced more broadly.
const MAX_MATCHES: usize = 32;

/// The filter as nf_tables matches: alternatives (each in both directions), each a superset
/// of what the filter takes there, and the tunnels' datagrams. What nf_tables cannot test (`not`) widens the match, since
/// tracing more packets than asked only costs events that tracer's own filter drops. One empty
/// match (every packet) when there is no filter or too many alternatives; none when the filter
/// can match nothing.
pub fn compile(filter: Option<&Expr>, tunnels: &TunnelPorts) -> Vec<Match> {
    let Some(filter) = filter else {
        return vec![Match::default()];
    };
    let mut all = alternatives(filter);
    if all.len() > MAX_MATCHES {
        return vec![Match::default()];
    }
    // Encapsulated packets: the filter cannot be tested on their inner headers here, so every
    // tunnel datagram is marked (tracer joins the reports to the inner packets it traced).
    if !all.is_empty() {
        for m in tunnels.matches() {
            if !all.contains(&m) {
                all.push(m);
            }
        }
    }
    all
}

/// The tunnels tracer looks into: the UDP ports of VXLAN and Geneve; IP in IP and GRE need
/// none. [`TunnelPorts::default`] is none at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunnelPorts(pub Option<Vec<u16>>);

impl TunnelPorts {
    /// One match per tunnel: UDP to each port, and the IP-in-IP and GRE protocols.
    fn matches(&self) -> Vec<Match> {
        let Some(ports) = &self.0 else {
            return Vec::new();
        };
        let udp = ports.iter().map(|&port| Match {
            proto: Some(Proto::UDP.0),
            ports: vec![PortMatch {
                dst: true,
                lo: port,
                hi: port,
            }],
            ..Match::default()
        });
        let ip_in_ip = [ipproto::IPIP, ipproto::IPV6, ipproto::GRE].map(|proto| Match {
            proto: Some(proto),
            ..Match::default()
        });
        udp.chain(ip_in_ip).collect()
    }
}

/// The filter's alternatives, each in both directions; more than [`MAX_MATCHES`] when it has
/// too many.
fn alternatives(filter: &Expr) -> Vec<Match> {
    let mut all = Vec::new();
    for m in dnf(filter) {
        let reversed = Match {
            nets: m
                .nets
                .iter()
                .map(|n| NetMatch {
                    dst: !n.dst,
                    ..n.clone()
                })
                .collect(),
            ports: m
                .ports
                .iter()
                .map(|p| PortMatch {
                    dst: !p.dst,
                    ..p.clone()
                })
                .collect(),
            ..m.clone()
        };
        for m in [m, reversed] {
            // Ports are read at the same offsets for TCP, UDP and SCTP, and only for them.
            let with_proto: Vec<Match> = if !m.ports.is_empty() && m.proto.is_none() {
                [Proto::TCP, Proto::UDP, Proto::SCTP]
                    .iter()
                    .map(|p| Match {
                        proto: Some(p.0),
                        ..m.clone()
                    })
                    .collect()
            } else {
                vec![m]
            };
            for m in with_proto {
                if !all.contains(&m) {
                    all.push(m);
                }
            }
        }
    }
    // Empty when the filter can match nothing: then nothing is marked.
    all
}

/// The filter in disjunctive normal form over the tests nf_tables can make; a `not` becomes
/// "anything".
fn dnf(expr: &Expr) -> Vec<Match> {
    let side = |side: &Side| -> Vec<Vec<bool>> {
        match side {
            Side::Src => vec![vec![false]],
            Side::Dst => vec![vec![true]],
            Side::Either => vec![vec![false], vec![true]],
            Side::Both => vec![vec![false, true]],
        }
    };
    match expr {
        Expr::Family(family) => vec![Match {
            family: Some(nfproto(*family == 6)),
            ..Match::default()
        }],
        Expr::Proto { proto, family } => vec![Match {
            family: family.map(|f| nfproto(f == 6)),
            proto: Some(*proto),
            ..Match::default()
        }],
        Expr::Net {
            side: s,
            addr,
            prefix,
        } => side(s)
            .into_iter()
            .map(|dsts| Match {
                family: Some(nfproto(addr.is_ipv6())),
                nets: dsts
                    .into_iter()
                    .map(|dst| NetMatch {
                        dst,
                        addr: *addr,
                        prefix: *prefix,
                    })
                    .collect(),
                ..Match::default()
            })
            .collect(),
        Expr::Port { side: s, lo, hi } => side(s)
            .into_iter()
            .map(|dsts| Match {
                ports: dsts
                    .into_iter()
                    .map(|dst| PortMatch {
                        dst,
                        lo: *lo,
                        hi: *hi,
                    })
                    .collect(),
                ..Match::default()
            })
            .collect(),
        Expr::Or(a, b) => {
            let mut all = dnf(a);
            all.extend(dnf(b));
            all
        }
        Expr::And(a, b) => {
            let (a, b) = (dnf(a), dnf(b));
            let mut all = Vec::new();
            for x in &a {
                for y in &b {
                    if let Some(m) = conjoin(x, y) {
                        all.push(m);
                    }
                    if all.len() > MAX_MATCHES {
                        return vec![Match::default()];
                    }
                }
            }
            all
        }
        Expr::Not(_) => vec![Match::default()],
    }
}

/// `NFPROTO_IPV6` or `NFPROTO_IPV4`, as `meta nfproto` reads it.
fn nfproto(ipv6: bool) -> u8 {
    if ipv6 {
        libc::NFPROTO_IPV6 as u8
    } else {
        libc::NFPROTO_IPV4 as u8
    }
}

/// Both matches at once; `None` when they cannot both hold (two families or protocols).
fn conjoin(a: &Match, b: &Match) -> Option<Match> {
    let one = |x: Option<u8>, y: Option<u8>| match (x, y) {
        (Some(x), Some(y)) if x != y => Err(()),
        (x, y) => Ok(x.or(y)),
    };
    Some(Match {
        family: one(a.family, b.family).ok()?,
        proto: one(a.proto, b.proto).ok()?,
        nets: a.nets.iter().chain(&b.nets).cloned().collect(),
        ports: a.ports.iter().chain(&b.ports).cloned().collect(),
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::filter::parse;

    fn matches_of(expr: &str) -> Vec<Match> {
        compile(Some(&parse(expr).unwrap()), &TunnelPorts::default())
    }

    #[test]
    fn no_filter_traces_every_packet() {
        assert_eq!(
            compile(None, &TunnelPorts(Some(vec![8472]))),
            vec![Match::default()]
        );
    }

    #[test]
    fn a_port_is_traced_both_ways_for_each_transport() {
        let all = matches_of("port 10001");
        // Source or destination port, each for TCP, UDP and SCTP; the reverse adds nothing new.
        assert_eq!(all.len(), 6, "{all:?}");
        for proto in [6, 17, 132] {
            for dst in [false, true] {
                assert!(all.contains(&Match {
                    proto: Some(proto),
                    ports: vec![PortMatch {
                        dst,
                        lo: 10001,
                        hi: 10001
                    }],
                    ..Match::default()
                }));
            }
        }
    }

    #[test]
    fn a_source_host_is_traced_in_the_reply_direction_too() {
        let all = matches_of("tcp and src host 172.17.0.2");
        let net = |dst| NetMatch {
            dst,
            addr: IpAddr::V4(Ipv4Addr::new(172, 17, 0, 2)),
            prefix: 32,
        };
        assert_eq!(
            all,
            vec![
                Match {
                    family: Some(2),
                    proto: Some(6),
                    nets: vec![net(false)],
                    ports: vec![]
                },
                Match {
                    family: Some(2),
                    proto: Some(6),
                    nets: vec![net(true)],
                    ports: vec![]
                },
            ]
        );
    }

    #[test]
    fn what_nf_tables_cannot_test_widens_the_match() {
        assert_eq!(matches_of("not port 22"), vec![Match::default()]);
        // `tcp and not port 22`: every TCP packet.
        let all = matches_of("tcp and not port 22");
        assert_eq!(
            all,
            vec![Match {
                proto: Some(6),
                ..Match::default()
            }]
        );
        // A contradiction marks nothing.
        assert_eq!(matches_of("tcp and udp"), vec![]);
    }

    /// The tunnels' datagrams are marked beside the filter's packets: their inner packets may
    /// be the filter's, which nf_tables cannot look at.
    #[test]
    fn tunnel_datagrams_are_marked_too() {
        let filter = parse("port 10001").unwrap();
        let all = compile(Some(&filter), &TunnelPorts(Some(vec![8472, 6081])));
        assert_eq!(all.len(), 6 + 2 + 3, "{all:?}");
        for (proto, port) in [
            (17, Some(8472)),
            (17, Some(6081)),
            (4, None),
            (41, None),
            (47, None),
        ] {
            let ports = port
                .map(|port| {
                    vec![PortMatch {
                        dst: true,
                        lo: port,
                        hi: port,
                    }]
                })
                .unwrap_or_default();
            assert!(
                all.contains(&Match {
                    proto: Some(proto),
                    ports,
                    ..Match::default()
                }),
                "{proto} {port:?}: {all:?}"
            );
        }
        // Nothing to mark where the filter matches nothing.
        let none = parse("tcp and udp").unwrap();
        assert_eq!(compile(Some(&none), &TunnelPorts(Some(vec![8472]))), vec![]);
    }

    #[test]
    fn too_many_alternatives_trace_every_packet() {
        let expr = (1..=40)
            .map(|p| format!("port {p}"))
            .collect::<Vec<_>>()
            .join(" or ");
        assert_eq!(matches_of(&expr), vec![Match::default()]);
    }
}
