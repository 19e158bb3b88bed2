//! Parser and compiler tests: what tcpdump users write, and what tracer refuses.

use std::net::IpAddr;

use tracer_common::config::{OP_AND, OP_FAMILY, OP_HOST, OP_NOT, OP_OR, OP_PORT, OP_PROTO};

use super::{
    compile, parse,
    parse::{Expr, Side},
};

fn port(side: Side, lo: u16, hi: u16) -> Expr {
    Expr::Port { side, lo, hi }
}

fn host(side: Side, addr: &str, prefix: u8) -> Expr {
    Expr::Net {
        side,
        addr: addr.parse::<IpAddr>().unwrap(),
        prefix,
    }
}

fn and(a: Expr, b: Expr) -> Expr {
    Expr::And(Box::new(a), Box::new(b))
}

fn or(a: Expr, b: Expr) -> Expr {
    Expr::Or(Box::new(a), Box::new(b))
}

const TCP: Expr = Expr::Proto {
    proto: 6,
    family: None,
};

#[test]
fn tcpdump_expressions() {
    assert_eq!(
        parse("port 10001").unwrap(),
        port(Side::Either, 10001, 10001)
    );
    assert_eq!(
        parse("tcp port 10001 and host 172.17.0.2").unwrap(),
        and(
            and(TCP, port(Side::Either, 10001, 10001)),
            host(Side::Either, "172.17.0.2", 32)
        )
    );
    assert_eq!(
        parse("src net 10.0.0.0/8 && !dst portrange 1000-2000").unwrap(),
        and(
            host(Side::Src, "10.0.0.0", 8),
            Expr::Not(Box::new(port(Side::Dst, 1000, 2000)))
        )
    );
    assert_eq!(
        parse("(udp or tcp) and src and dst host 2001:2::1").unwrap(),
        and(
            or(
                Expr::Proto {
                    proto: 17,
                    family: None
                },
                TCP
            ),
            host(Side::Both, "2001:2::1", 128)
        )
    );
    assert_eq!(parse("ip6").unwrap(), Expr::Family(6));
    assert_eq!(
        parse("icmp").unwrap(),
        Expr::Proto {
            proto: 1,
            family: Some(4)
        }
    );
    assert_eq!(
        parse("TCP Port 80").unwrap(),
        and(TCP, port(Side::Either, 80, 80)),
        "keywords are case-insensitive"
    );
}

#[test]
fn a_bare_value_repeats_the_previous_qualifiers() {
    assert_eq!(
        parse("host 10.0.0.1 or 10.0.0.2").unwrap(),
        or(
            host(Side::Either, "10.0.0.1", 32),
            host(Side::Either, "10.0.0.2", 32)
        )
    );
    assert_eq!(
        parse("dst port 80 or 443").unwrap(),
        or(port(Side::Dst, 80, 80), port(Side::Dst, 443, 443))
    );
}

#[test]
fn refusals_name_the_problem() {
    let error = |text: &str| parse(text).unwrap_err().to_string();
    assert!(error("").contains("empty expression"));
    assert!(error("port").contains("value is missing"));
    assert!(error("port http").contains("service names are not supported"));
    assert!(error("ether host 00:11:22:33:44:55").contains("not an IP address"));
    assert!(error("(tcp").contains("missing ')'"));
    assert!(error("tcp )").contains("unexpected ')'"));
    assert!(error("net 10.0.0.0/33").contains("not a prefix length"));
    assert!(error("portrange 20-10").contains("empty port range"));
    assert!(error("port 80 & port 81").contains("must be doubled"));
    assert!(error("port 70000").contains("not a port number"));
}

#[test]
fn compiles_to_postfix() {
    let filter = compile(Some(&parse("tcp and not dst port 22 or ip6").unwrap())).unwrap();
    let ops: Vec<u8> = filter.insns[..filter.len as usize]
        .iter()
        .map(|i| i.op)
        .collect();
    assert_eq!(ops, [OP_PROTO, OP_PORT, OP_NOT, OP_AND, OP_FAMILY, OP_OR]);
    let filter = compile(Some(&parse("net 10.1.2.3/12").unwrap())).unwrap();
    let insn = filter.insns[0];
    assert_eq!(insn.op, OP_HOST);
    assert_eq!(insn.family, 4);
    assert_eq!(&insn.mask[..5], &[255, 0xf0, 0, 0, 0]);
    assert_eq!(&insn.addr[..4], &[10, 0, 0, 0], "host bits are cleared");
    assert_eq!(
        compile(None).unwrap().len,
        0,
        "no expression matches everything"
    );
}

#[test]
fn long_expressions_are_refused() {
    let text = (1..=20)
        .map(|p| format!("port {p}"))
        .collect::<Vec<_>>()
        .join(" or ");
    let error = compile(Some(&parse(&text).unwrap()))
        .unwrap_err()
        .to_string();
    assert!(error.contains("needs 39 operations; at most 32"), "{error}");
}
