//! The hook ladder against the kernel it runs on. What to expect comes from the environment,
//! set by `cargo xtask vm-test` for each kernel of the matrix; without it, the development
//! kernel's answers are expected (no kprobes, fentry refused, TCX present).
//!
//! - `TRACER_EXPECT_NAT`: `fentry`, `kprobe` or `none`, the rung chosen for nf_nat_manip_pkt.
//! - `TRACER_EXPECT_TC`: `tcx` or `clsact`, what `--tc-mode auto` uses.
//! - `TRACER_EXPECT_DROP_REASONS`: `yes` or `no`, whether the kfree_skb hop has the kernel's
//!   drop reason (Linux 5.17 and later).
//! - `TRACER_EXPECT_RULES`: `owner` or `refused`, whether the kernel takes nf_tables tables
//!   owned by their socket (Linux 5.12), without which `--rules` is refused.

use std::net::SocketAddr;

use tracer_tests::{
    testbed::{SERVER_ADDR, Testbed},
    trace::{self, place},
    tracer::{self, Tracer},
    traffic,
};

fn expected(variable: &str, default: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| default.to_owned())
}

/// `tracer doctor` and a real trace agree with what this kernel offers: the NAT function hop
/// appears (between the bridge and the uplink) exactly when fentry or a kprobe can reach it,
/// and TC programs use the expected mechanism.
#[test]
fn hook_ladder_matches_the_kernel() -> anyhow::Result<()> {
    let nat = expected("TRACER_EXPECT_NAT", "none");
    let tc = expected("TRACER_EXPECT_TC", "tcx");

    let doctor = tracer::run(&["doctor"])?;
    assert!(doctor.status.success(), "{}", doctor.stderr);
    let chosen = doctor
        .stdout
        .lines()
        .find(|l| l.starts_with("nf_nat_manip_pkt") && l.ends_with("works: chosen"))
        .map(|l| l.split_whitespace().nth(1).unwrap_or_default().to_owned())
        .unwrap_or_else(|| "none".to_owned());
    assert_eq!(chosen, nat, "{}", doctor.stdout);
    for hook in ["net_dev_queue", "netif_receive_skb"] {
        assert!(
            doctor
                .stdout
                .lines()
                .any(|l| l.starts_with(hook) && l.ends_with("works: chosen")),
            "{hook}: {}",
            doctor.stdout
        );
    }
    // The drop hop: with the kernel's reason, or said to be without it.
    let drop = doctor
        .stdout
        .lines()
        .find(|l| l.starts_with("kfree_skb") && l.contains("works: chosen"))
        .unwrap_or_else(|| panic!("no kfree_skb rung chosen: {}", doctor.stdout));
    let degraded = drop.contains("degraded: without the kernel's drop reason");
    assert_eq!(
        degraded,
        !tracer::kernel_reports_drop_reasons(),
        "{}",
        doctor.stdout
    );

    let port = 10081;
    let testbed = Testbed::up(1)?;
    let server = SocketAddr::from((SERVER_ADDR, port));
    let listener = traffic::listen(&testbed.remote, server)?;
    let tracer = Tracer::json(port, &["--hooks", "+tc"])?;
    traffic::exchange(&testbed.containers[0].netns, None, server, &listener)?;
    let finished = tracer.stop()?;
    assert!(finished.status.success(), "{}", finished.stderr);
    let attached = finished
        .stderr
        .lines()
        .find(|l| l.starts_with("tracer: TC programs attached"))
        .unwrap_or_default();
    assert!(attached.ends_with(&format!(" ({tc})")), "{attached}");

    let ctr_ns = &testbed.containers[0].netns.name;
    let packets = trace::packets(&finished.json()?);
    let syn = packets
        .iter()
        .find(|p| p.flags() == "S" && p.first()["netns"] == ctr_ns.as_str())
        .expect("the SYN");
    let places = syn.places();
    let host = &testbed.host.name;
    let nat_hop = places.iter().position(|p| p.2 == "nf_nat_manip_pkt");
    if nat == "none" {
        assert_eq!(nat_hop, None, "{places:#?}");
    } else {
        let at = nat_hop.unwrap_or_else(|| panic!("no NAT function hop: {places:#?}"));
        let bridge = places
            .iter()
            .position(|p| *p == place(host, "docker0", "netif_receive_skb"))
            .expect("docker0 hop");
        let uplink = places
            .iter()
            .position(|p| *p == place(host, "eth0", "net_dev_queue"))
            .expect("uplink hop");
        assert!(bridge < at && at < uplink, "{places:#?}");
        assert_eq!(places[at].0, *host);
    }
    Ok(())
}

/// With clsact filters (what kernels before 6.6 get, and `--tc-mode clsact` anywhere): a
/// killed tracer leaves its filters behind, the next start removes them and says so, and a
/// normal exit leaves neither filters nor the qdisc tracer added.
#[test]
fn clsact_filters_never_outlive_tracer() -> anyhow::Result<()> {
    let testbed = Testbed::up(0)?;
    let host = &testbed.host;
    let filters = || -> anyhow::Result<String> {
        let ingress = host.exec("tc", &["filter", "show", "dev", "docker0", "ingress"])?;
        let egress = host.exec("tc", &["filter", "show", "dev", "docker0", "egress"])?;
        Ok(ingress + &egress)
    };
    let args = [
        "--port",
        "10082",
        "--hooks",
        "+tc",
        "--tc-mode",
        "clsact",
        "-i",
        "docker0",
        "--netns",
        &host.name,
    ];
    let tracer = Tracer::start(&args)?;
    let attached = filters()?;
    assert!(
        attached.contains("tc_ingress") && attached.contains("tc_egress"),
        "{attached}"
    );
    tracer.kill_hard()?;
    assert!(
        filters()?.contains("tc_ingress"),
        "a netlink filter outlives a killed process"
    );

    let tracer = Tracer::start(&args)?;
    let finished = tracer.stop()?;
    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(
        finished
            .stderr
            .contains("removed the TC filters an earlier tracer left on docker0"),
        "{}",
        finished.stderr
    );
    assert_eq!(filters()?.trim(), "", "no filter is left");
    let qdiscs = host.exec("tc", &["qdisc", "show", "dev", "docker0"])?;
    assert!(!qdiscs.contains("clsact"), "{qdiscs}");
    Ok(())
}

/// `--rules` and this kernel's nf_tables: where tables cannot be owned by their socket, tracer
/// refuses `--rules` with one line naming the missing flag before it loads anything, and `tracer
/// doctor` says the same; elsewhere doctor finds an owned table and trace events working.
#[test]
fn rules_are_refused_without_owned_tables() -> anyhow::Result<()> {
    let refused = expected("TRACER_EXPECT_RULES", "owner") == "refused";
    let doctor = tracer::run(&["doctor"])?;
    let rules = doctor
        .stdout
        .lines()
        .find(|l| l.starts_with("rules "))
        .unwrap_or_else(|| panic!("no rules line: {}", doctor.stdout));
    if !refused {
        assert!(rules.contains("--rules works"), "{rules}");
        return Ok(());
    }
    assert!(
        rules.contains("--rules cannot name netfilter rules")
            && rules.contains("NFT_TABLE_F_OWNER"),
        "{rules}"
    );
    let finished = tracer::run(&["--rules", "--port", "10083"])?;
    assert!(!finished.status.success());
    let lines: Vec<&str> = finished.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", finished.stderr);
    assert!(
        lines[0].starts_with("tracer: error: --rules:")
            && lines[0].contains("NFT_TABLE_F_OWNER, Linux 5.12")
            && lines[0].ends_with("trace without --rules here"),
        "{}",
        lines[0]
    );
    Ok(())
}
