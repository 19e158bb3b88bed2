//! The merged trace as text and JSON.

use serde_json::Value;

use super::*;

fn written(nodes: &[NodeTrace], format: crate::output::Format) -> String {
    let merged = join_and_time(nodes, 0).unwrap();
    let mut out = Vec::new();
    write(nodes, &merged, format, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

/// Two rounds between nodes whose clocks are 20 s apart, node b's namespaces named.
fn named_conversation() -> Vec<NodeTrace> {
    let (mut nodes, _) = conversation(2, -20_000_000_000);
    nodes[1].names.set_netns(HOST, "host");
    nodes[1].names.set_container(POD[1], "web");
    nodes
}

#[test]
fn merge_writes_text_with_the_clocks_first_and_places_of_every_node() {
    let text = written(&named_conversation(), crate::output::Format::Text);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "node a (a.rec): reference clock");
    // The true offset is -20 s: the estimate is 19 us off, within its +/- 59.2 us.
    assert_eq!(
        lines[1],
        "node b (b.rec): offset -20.000019s +/- 59.2us against a (from 2 packets a->b, 2 b->a)"
    );
    assert_eq!(lines[2], "4 packets, 4 of them crossed between nodes");
    assert!(lines[3].contains("[S] seq 1000 len 104  (packet 1, flow 1 original)"));
    // The request's path: node a's five hops, then node b's, each place named by its node.
    let places: Vec<String> = lines[4..16]
        .iter()
        .filter(|l| l.contains("_queue") || l.contains("_skb"))
        .map(|l| {
            l.split_whitespace()
                .take(4)
                .skip(2)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    assert_eq!(
        places,
        [
            "a/netns:4026532301 eth0",
            "a/netns:4026531840 veth0",
            "a/netns:4026531840 cni0",
            "a/netns:4026531840 flannel.1",
            "a/netns:4026531840 eth0",
            "b/host eth0",
            "b/host flannel.1",
            "b/host cni0",
            "b/host veth0",
            "b/web eth0",
        ]
    );
    // One flow, whose path crosses from one node's uplink to the other's.
    let words: Vec<String> = lines
        .iter()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    for crossing in [
        "original a/netns:4026531840 eth0 net_dev_queue b/host eth0 netif_receive_skb 2",
        "reply b/host eth0 net_dev_queue a/netns:4026531840 eth0 netif_receive_skb 2",
    ] {
        assert!(words.iter().any(|l| l.starts_with(crossing)), "{crossing}");
    }
    assert_eq!(
        lines.last().unwrap(),
        &"0 events, 0 lost, 0 malformed; 4 packets in 1 flows"
    );
}

/// A drop on node b is named by node b's names (its recording's) in JSON and in text, where
/// the reference node's names are the merged trace's.
#[test]
fn merge_names_a_drop_with_the_names_of_its_node() {
    let mut nodes = named_conversation();
    let location = 0xffff_ffff_c0de_0010;
    let last = nodes[1].packets[0].hops.last_mut().unwrap();
    last.event.drop = Some(crate::decode::DropInfo {
        reason: 5,
        location,
    });
    nodes[1].names.learn(crate::recording::Names {
        drop_reasons: [(5, "NETFILTER_DROP".to_owned())].into(),
        drop_locations: [(location, "nft_do_chain+0x1c".to_owned())].into(),
        ..crate::recording::Names::default()
    });
    let text = written(&nodes, crate::output::Format::Json);
    let drops: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["type"] == "hop" && !l["drop_reason"].is_null())
        .collect();
    assert_eq!(drops.len(), 1, "{text}");
    assert_eq!(drops[0]["node"], "b");
    assert_eq!(drops[0]["drop_reason"], "NETFILTER_DROP");
    assert_eq!(drops[0]["drop_location"], "nft_do_chain+0x1c");
    // The text shows every node's hops with the merged names.
    let text = written(&nodes, crate::output::Format::Text);
    let drop = text
        .lines()
        .find(|l| l.contains("DROPPED"))
        .unwrap_or_else(|| panic!("no drop in {text}"));
    assert!(drop.contains("NETFILTER_DROP"), "{drop}");
    assert!(drop.contains("nft_do_chain+0x1c"), "{drop}");
}

#[test]
fn merge_writes_json_hops_with_their_node_on_the_reference_clock() {
    let nodes = named_conversation();
    let text = written(&nodes, crate::output::Format::Json);
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["type"], "clock");
    assert_eq!(lines[0]["basis"], "reference");
    assert_eq!(
        (&lines[1]["node"], &lines[1]["basis"], &lines[1]["via"]),
        (&"b".into(), &"two-way".into(), &"a".into())
    );
    let offset = lines[1]["offset_ns"].as_i64().unwrap();
    let uncertainty = lines[1]["uncertainty_ns"].as_i64().unwrap();
    assert!((offset + 20_000_000_000).abs() <= uncertainty);
    assert_eq!(lines[1]["packets"], serde_json::json!([2, 2]));
    let hops: Vec<&Value> = lines.iter().filter(|l| l["type"] == "hop").collect();
    assert_eq!(hops.len(), 40);
    let mut previous: Option<(u64, &str)> = None;
    let mut crossings = 0;
    for hop in &hops {
        let node = hop["node"].as_str().unwrap();
        let own = i128::from(hop["node_ts_ns"].as_u64().unwrap());
        let shift = if node == "a" { 0 } else { i128::from(offset) };
        assert_eq!(i128::from(hop["ts_ns"].as_u64().unwrap()), own - shift);
        // Each node's own inodes and names.
        match (
            node,
            hop["ifname"].as_str().unwrap(),
            hop["netns_inode"].as_u64().unwrap(),
        ) {
            ("b", _, inode) if inode == HOST => assert_eq!(hop["netns"], "host"),
            ("b", _, inode) if inode == POD[1] => assert_eq!(hop["container"], "web"),
            ("a", _, inode) => {
                assert!(inode == HOST || inode == POD[0]);
                assert!(hop["netns"].is_null());
            }
            other => panic!("{other:?}"),
        }
        let packet = hop["packet_id"].as_u64().unwrap();
        if let Some((before, before_node)) = previous
            && before == packet
            && before_node != node
        {
            crossings += 1;
        }
        previous = Some((packet, node));
    }
    // Packets 1 to 4, each crossing once.
    assert_eq!(crossings, 4);
    let ids: Vec<u64> = hops
        .iter()
        .map(|h| h["packet_id"].as_u64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1));
    let flow = lines.iter().find(|l| l["type"] == "flow").unwrap();
    let pairs = flow["hops"].as_array().unwrap();
    assert_eq!(pairs.len(), 18);
    let cross: Vec<(&Value, &Value)> = pairs
        .iter()
        .filter(|p| p["from"]["node"] != p["to"]["node"])
        .map(|p| (&p["from"]["node"], &p["to"]["netns"]))
        .collect();
    assert_eq!(
        cross,
        [(&"a".into(), &"host".into()), (&"b".into(), &Value::Null)]
    );
    assert_eq!(lines.last().unwrap()["type"], "stats");
    assert_eq!(lines.last().unwrap()["packets"], 4);
}
