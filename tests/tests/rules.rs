//! `--rules`: the netfilter rule behind each NAT and each drop, named from nf_tables tracing on
//! the Docker-like testbed, whose rules are made by iptables-nft as Docker makes them; and
//! tracer's own table gone again however tracer ends.

use std::{net::SocketAddr, time::Duration};

use nix::sys::signal::Signal;
use serde_json::Value;
use tracer_tests::{
    netns::{Netns, run},
    skip::missing,
    testbed::{SERVER_ADDR, Testbed, UPLINK_ADDR},
    trace::{self, Packet},
    tracer::Tracer,
    traffic,
};

/// The names of the nf_tables tables in `netns`, as `family name`, leaving out the tables of
/// tracers other than `pid` (tests running at the same time have theirs everywhere there are
/// rules).
fn tables(netns: &Netns, pid: u32) -> anyhow::Result<Vec<String>> {
    let own = format!("inet tracer-{pid}");
    Ok(netns
        .exec("nft", &["list", "tables"])?
        .lines()
        .filter_map(|line| line.strip_prefix("table "))
        .filter(|table| *table == own || !table.starts_with("inet tracer-"))
        .map(str::to_owned)
        .collect())
}

/// Waits until the table of tracer `pid` is gone from `netns` (the kernel deletes it as it
/// releases the socket, which can come a moment after the process is reaped), and returns
/// the tables then; gives up after 5 s.
fn tables_once_gone(netns: &Netns, pid: u32) -> anyhow::Result<Vec<String>> {
    let own = format!("inet tracer-{pid}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = tables(netns, pid)?;
        if !now.contains(&own) || std::time::Instant::now() > deadline {
            return Ok(now);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The testbed's own rules, without counter values.
fn testbed_rules(netns: &Netns) -> anyhow::Result<String> {
    let mut all = String::new();
    for family in ["ip", "ip6"] {
        all += &netns.exec("nft", &["-s", "list", "table", family, "nat"])?;
        all += &netns
            .exec("nft", &["-s", "list", "table", family, "filter"])
            .unwrap_or_default();
    }
    Ok(all)
}

/// Fails unless iptables is the nf_tables backend (Debian's is): rules of the legacy backend
/// are not nf_tables rules, and nf_tables tracing never meets them.
fn require_nf_tables_backend(testbed: &Testbed) -> anyhow::Result<()> {
    let version = testbed.host.exec("iptables", &["-V"])?;
    if !version.contains("nf_tables") {
        return Err(missing(format!(
            "iptables with the nf_tables backend, as Debian's is (this one is {})",
            version.trim()
        )));
    }
    Ok(())
}

/// Puts two rules that decide nothing at the head of `chain` of `table` in the testbed's
/// host: a counter, and a jump to a chain of its own that counts and returns. Docker's and
/// kube-proxy's chains have such rules before the ones that translate or drop: a rule named
/// from a chain walk must be the one with the verdict, not the first one the packet met.
fn rules_before(testbed: &Testbed, table: &str, chain: &str) -> anyhow::Result<()> {
    let own = format!("TRC-{chain}");
    for rule in [
        vec!["-N", &own],
        vec!["-A", &own, "-p", "tcp"],
        vec!["-A", &own, "-j", "RETURN"],
        vec!["-I", chain, "1", "-j", &own],
        vec!["-I", chain, "1", "-p", "tcp"],
    ] {
        let mut args = vec!["-t", table];
        args.extend(rule);
        testbed.host.exec("iptables", &args)?;
    }
    Ok(())
}

/// The texts of the rules before the deciding one that [`rules_before`] puts in `chain`, in
/// the order a packet meets them, as `--rules=all` shows a walk.
fn texts_before(chain: &str) -> [String; 4] {
    [
        "meta l4proto tcp counter".to_owned(),
        format!("counter jump TRC-{chain}"),
        "meta l4proto tcp counter".to_owned(),
        "counter return".to_owned(),
    ]
}

fn syn_from<'a>(packets: &'a [Packet], netns: &str) -> &'a Packet {
    packets
        .iter()
        .find(|p| p.flags() == "S" && p.first()["netns"] == netns)
        .unwrap_or_else(|| panic!("no SYN from {netns}: {packets:#?}"))
}

/// The `rule` object of the original direction's NAT record of the SYN's flow.
fn nat_rule(lines: &[Value], syn: &Packet) -> Value {
    let nat = trace::of_type(lines, "nat")
        .into_iter()
        .find(|n| n["flow_id"] == syn.flow_id() && n["direction"] == "original")
        .unwrap_or_else(|| panic!("no NAT record: {lines:#?}"));
    nat["rule"].clone()
}

/// MASQUERADE out of the uplink and DNAT of a published port: each NAT record, and the hop
/// where the translation shows, name the rule with its table, chain, handle and text.
#[test]
fn nat_records_name_the_masquerade_and_dnat_rules() -> anyhow::Result<()> {
    let testbed = Testbed::up(1)?;
    require_nf_tables_backend(&testbed)?;
    rules_before(&testbed, "nat", "POSTROUTING")?;
    let ctr = &testbed.containers[0];
    let host = &testbed.host.name;

    // Out: the container connects to the server, masqueraded behind the uplink.
    let port = 10041;
    let server = SocketAddr::from((SERVER_ADDR, port));
    let listener = traffic::listen(&testbed.remote, server)?;
    let tracer = Tracer::json(port, &["--rules"])?;
    traffic::exchange(&ctr.netns, Some(41041), server, &listener)?;
    let finished = tracer.stop()?;
    let lines = finished.json()?;
    let syn = syn_from(&trace::packets(&lines), &ctr.netns.name).clone();
    let rule = nat_rule(&lines, &syn);
    assert_eq!(rule["family"], "ip", "{rule}");
    assert_eq!(rule["table"], "nat");
    assert_eq!(rule["chain"], "POSTROUTING");
    assert_eq!(rule["verdict"], "accept");
    assert!(rule["handle"].as_u64().is_some_and(|h| h > 0), "{rule}");
    assert_eq!(
        rule["text"], "oifname != \"docker0\" ip saddr 172.17.0.0/16 counter masquerade",
        "{rule}"
    );
    // The first hop after the translation carries the same rule.
    let translated = syn
        .hops
        .iter()
        .find(|h| h["src_ip"] == UPLINK_ADDR.to_string())
        .expect("a hop after MASQUERADE");
    assert_eq!(translated["rule"], rule);
    assert_eq!(translated["netns"], host.as_str());

    // In: the remote connects to the published port, DNATed to the container.
    let (host_port, container_port) = (8041, 80);
    testbed.publish(host_port, 0, container_port)?;
    rules_before(&testbed, "nat", "PREROUTING")?;
    let listener = traffic::listen(&ctr.netns, SocketAddr::from((ctr.addr, container_port)))?;
    let tracer = Tracer::json(host_port, &["--rules"])?;
    traffic::exchange(
        &testbed.remote,
        None,
        SocketAddr::from((UPLINK_ADDR, host_port)),
        &listener,
    )?;
    let lines = tracer.stop()?.json()?;
    let syn = syn_from(&trace::packets(&lines), &testbed.remote.name).clone();
    let rule = nat_rule(&lines, &syn);
    assert_eq!(
        (&rule["table"], &rule["chain"]),
        (&Value::from("nat"), &Value::from("PREROUTING")),
        "{rule}"
    );
    assert_eq!(
        rule["text"],
        format!(
            "ip daddr {UPLINK_ADDR} tcp dport {host_port} counter dnat to {}:{container_port}",
            ctr.addr
        ),
        "{rule}"
    );
    Ok(())
}

/// A DROP in FORWARD is named with its text; a FORWARD policy of DROP is named as the policy.
/// The text output says it under the DROPPED line.
#[test]
fn drops_name_the_rule_or_the_policy() -> anyhow::Result<()> {
    let testbed = Testbed::up(1)?;
    require_nf_tables_backend(&testbed)?;
    let ctr = &testbed.containers[0];
    let connect = |port: u16, args: &[&str]| -> anyhow::Result<String> {
        let port_arg = port.to_string();
        let mut all = vec!["--port", &port_arg];
        all.extend_from_slice(args);
        let tracer = Tracer::start(&all)?;
        let server = SocketAddr::from((SERVER_ADDR, port));
        let attempt = ctr
            .netns
            .enter(|| std::net::TcpStream::connect_timeout(&server, Duration::from_millis(300)))?;
        assert!(attempt.is_err(), "the SYN must be dropped");
        let finished = tracer.stop()?;
        assert!(finished.status.success(), "{}", finished.stderr);
        Ok(finished.stdout)
    };

    let port = 10042;
    rules_before(&testbed, "filter", "FORWARD")?;
    testbed.host.exec(
        "iptables",
        &[
            "-A",
            "FORWARD",
            "-p",
            "tcp",
            "--dport",
            &port.to_string(),
            "-j",
            "DROP",
        ],
    )?;
    let dir = std::env::temp_dir().join(format!("tracer-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let pcapng = dir.join("drop.pcapng");
    let pcapng_arg = pcapng.to_string_lossy().into_owned();
    let stdout = connect(
        port,
        &["--output", "json", "--rules=all", "-w", &pcapng_arg],
    )?;
    let lines: Vec<Value> = stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let syn = syn_from(&trace::packets(&lines), &ctr.netns.name).clone();
    let last = syn.hops.last().expect("hops");
    assert_eq!(last["drop_reason"], "NETFILTER_DROP");
    let rule = &last["rule"];
    assert_eq!(
        (&rule["family"], &rule["table"], &rule["chain"]),
        (
            &Value::from("ip"),
            &Value::from("filter"),
            &Value::from("FORWARD")
        ),
        "{last}"
    );
    assert_eq!(rule["text"], format!("tcp dport {port} counter drop"));
    assert_eq!(rule["verdict"], "drop");
    // Only the dropping hop has it.
    assert!(
        syn.hops[..syn.hops.len() - 1]
            .iter()
            .all(|h| h.get("rule").is_none())
    );
    // --rules=all: the walk through FORWARD follows the hop before the drop, and ends in the
    // same rule.
    let before = &syn.hops[syn.hops.len() - 2];
    let walk = before["rules"]
        .as_array()
        .unwrap_or_else(|| panic!("no walk: {before}"));
    assert_eq!(walk.last(), Some(rule), "{walk:#?}");
    let texts: Vec<String> = walk.iter().map(|r| trace::text(&r["text"])).collect();
    let mut expected = texts_before("FORWARD").to_vec();
    expected.push(format!("tcp dport {port} counter drop"));
    assert_eq!(texts, expected, "{walk:#?}");
    // The pcapng comment of the dropping hop names the rule too.
    let comments = run(
        "tshark",
        &["-r", &pcapng_arg, "-T", "fields", "-e", "frame.comment"],
    )?;
    std::fs::remove_dir_all(&dir)?;
    assert!(
        comments
            .lines()
            .any(|c| c.contains("dropped: NETFILTER_DROP")
                && c.ends_with(&format!(
                    "by ip filter FORWARD: tcp dport {port} counter drop"
                ))),
        "{comments}"
    );

    let port = 10043;
    testbed.host.exec("iptables", &["-P", "FORWARD", "DROP"])?;
    let text = connect(port, &["--rules"])?;
    let dropped = text
        .lines()
        .position(|line| line.contains("DROPPED in"))
        .unwrap_or_else(|| panic!("no DROPPED line:\n{text}"));
    assert_eq!(
        text.lines().nth(dropped + 1).map(str::trim),
        Some("by ip filter FORWARD: policy drop"),
        "{text}"
    );
    Ok(())
}

/// `--port 8046` on a published port 8046 -> 80: the container's SYN-ACK carries port 80, not
/// the filter's, and is dropped in FORWARD. Its connection matched, so it is traced all the
/// same (tracer's chains after conntrack test the connection's tuples) and the DROP rule is
/// named on it.
#[test]
fn a_reply_on_the_other_side_of_dnat_is_traced_and_its_drop_named() -> anyhow::Result<()> {
    let testbed = Testbed::up(1)?;
    require_nf_tables_backend(&testbed)?;
    let (host_port, container_port) = (8046, 80);
    testbed.publish(host_port, 0, container_port)?;
    rules_before(&testbed, "filter", "FORWARD")?;
    testbed.host.exec(
        "iptables",
        &["-A", "FORWARD", "-p", "tcp", "--sport", "80", "-j", "DROP"],
    )?;
    let ctr = &testbed.containers[0];
    let _listener = traffic::listen(&ctr.netns, SocketAddr::from((ctr.addr, container_port)))?;
    let tracer = Tracer::json(host_port, &["--rules"])?;
    let published = SocketAddr::from((UPLINK_ADDR, host_port));
    let attempt = testbed
        .remote
        .enter(|| std::net::TcpStream::connect_timeout(&published, Duration::from_millis(300)))?;
    assert!(attempt.is_err(), "the SYN-ACK must be dropped");
    let lines = tracer.stop()?.json()?;
    let packets = trace::packets(&lines);
    let syn_ack = packets
        .iter()
        .find(|p| p.flags() == "S." && p.first()["netns"] == ctr.netns.name.as_str())
        .unwrap_or_else(|| panic!("no SYN-ACK: {packets:#?}"));
    let last = syn_ack.hops.last().expect("hops");
    assert_eq!(last["drop_reason"], "NETFILTER_DROP", "{last}");
    assert_eq!(last["rule"]["chain"], "FORWARD", "{last}");
    assert_eq!(last["rule"]["text"], "tcp sport 80 counter drop", "{last}");
    Ok(())
}

/// A namespace that gets its first rules while tracer runs gets tracer's table too.
#[test]
fn a_namespace_that_gains_rules_is_followed() -> anyhow::Result<()> {
    let netns = Netns::create(&format!("trc-late{}-ns", std::process::id()))?;
    let tracer = Tracer::start(&["--port", "10047", "--rules"])?;
    let own = format!("inet tracer-{}", tracer.pid());
    assert!(!tables(&netns, tracer.pid())?.contains(&own));
    netns.exec(
        "iptables",
        &["-t", "nat", "-A", "POSTROUTING", "-j", "ACCEPT"],
    )?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !tables(&netns, tracer.pid())?.contains(&own) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {own} in {} after 10 s",
            netns.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let finished = tracer.stop()?;
    assert!(finished.status.success(), "{}", finished.stderr);
    Ok(())
}

/// tracer's table exists in the namespace with rules while it runs, and is gone after Ctrl-C,
/// after SIGKILL and after an error exit; the testbed's own rules are as they were.
#[test]
fn tracers_table_is_gone_however_tracer_ends() -> anyhow::Result<()> {
    let testbed = Testbed::up(1)?;
    require_nf_tables_backend(&testbed)?;
    let rules = testbed_rules(&testbed.host)?;
    // What doctor says, it found by making a table: here it works, and leaves nothing.
    let doctor = tracer_tests::tracer::run(&["doctor"])?;
    let line = doctor
        .stdout
        .lines()
        .find(|l| l.starts_with("rules "))
        .unwrap_or_else(|| panic!("no rules line: {}", doctor.stdout));
    assert!(line.contains("--rules works"), "{line}");
    let running = |tracer: &Tracer| -> anyhow::Result<Vec<String>> {
        let during = tables(&testbed.host, tracer.pid())?;
        let own = format!("inet tracer-{}", tracer.pid());
        assert!(during.contains(&own), "{own}: {during:?}");
        Ok(during.into_iter().filter(|t| *t != own).collect())
    };

    let mut tracer = Tracer::start(&["--port", "10044", "--rules"])?;
    let before = running(&tracer)?;
    let pid = tracer.pid();
    tracer.signal(Signal::SIGINT)?;
    assert!(tracer.wait()?.status.success());
    assert_eq!(
        tables_once_gone(&testbed.host, pid)?,
        before,
        "after Ctrl-C"
    );

    let tracer = Tracer::start(&["--port", "10044", "--rules"])?;
    let before = running(&tracer)?;
    let pid = tracer.pid();
    tracer.kill_hard()?;
    assert_eq!(
        tables_once_gone(&testbed.host, pid)?,
        before,
        "after SIGKILL"
    );

    // An error after the table is made: stdout is /dev/full, so the first write fails.
    let mut tracer = Tracer::start_with_stdout(
        &["--port", "10045", "--rules"],
        std::fs::File::options()
            .write(true)
            .open("/dev/full")?
            .into(),
    )?;
    let before = running(&tracer)?;
    let pid = tracer.pid();
    let server = SocketAddr::from((SERVER_ADDR, 10045));
    let listener = traffic::listen(&testbed.remote, server)?;
    traffic::exchange(&testbed.containers[0].netns, None, server, &listener)?;
    let finished = tracer.wait()?;
    assert!(!finished.status.success(), "{}", finished.stderr);
    assert_eq!(
        tables_once_gone(&testbed.host, pid)?,
        before,
        "after an error exit"
    );
    assert_eq!(testbed_rules(&testbed.host)?, rules);
    Ok(())
}
