//! Reading nodes' files: recordings and JSON Lines alike, and every kind of bad input.

use std::path::PathBuf;

use tracer_common::event::{
    ENCAP_HAS_ID, Encap as RawEncap, EventKind, FAMILY_IPV4, FLAG_ENCAP, FLAG_L4, PacketEncap,
    PacketEvent, encap_kind,
};

use super::*;
use crate::{
    decode::encode_record,
    merge::{input, json_in::Symbols},
    output::{Output, json::JsonWriter, text::TextWriter},
    recording,
};

/// A directory of the test's own, removed when dropped.
pub(super) struct Scratch(PathBuf);

impl Scratch {
    pub fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("tracer-merge-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn octets(addr: IpAddr) -> [u8; 16] {
    let mut raw = [0; 16];
    if let IpAddr::V4(v4) = addr {
        raw[..4].copy_from_slice(&v4.octets());
    }
    raw
}

/// The ring buffer record the kernel program would have written for `e` (IPv4 only).
fn raw(e: &HopEvent) -> Vec<u8> {
    let mut r = PacketEvent::zeroed();
    r.kind = EventKind::Packet as u8;
    r.hook = e.hook as u8;
    r.family = FAMILY_IPV4;
    r.l4_proto = e.tuple.proto.0;
    r.tcp_flags = e.tcp_flags;
    r.flags = if e.has_l4 { FLAG_L4 } else { 0 };
    r.ttl = e.ttl;
    r.ts_ns = e.ts_ns;
    r.skb = e.skb;
    r.skb_head = e.skb_head;
    r.ifindex = e.ifindex;
    r.netns_inode = e.netns_inode as u32;
    r.len = e.len;
    r.tcp_seq = e.tcp_seq;
    r.tcp_ack = e.tcp_ack;
    r.ip_id = e.ip_id;
    r.src_port = e.tuple.src_port;
    r.dst_port = e.tuple.dst_port;
    r.ip_len = e.ip_len;
    r.ifname = e.ifname.0;
    r.src_addr = octets(e.tuple.src);
    r.dst_addr = octets(e.tuple.dst);
    let Some(encap) = e.encap.as_deref() else {
        return encode_record(&r);
    };
    r.kind = EventKind::PacketEncap as u8;
    r.flags |= FLAG_ENCAP;
    let encap = RawEncap {
        src_addr: octets(encap.outer.src),
        dst_addr: octets(encap.outer.dst),
        id: encap.id.unwrap_or(0),
        src_port: encap.outer.src_port,
        dst_port: encap.outer.dst_port,
        ip_id: encap.ip_id,
        ip_len: encap.ip_len,
        kind: encap_kind::VXLAN,
        family: FAMILY_IPV4,
        ttl: encap.ttl,
        flags: ENCAP_HAS_ID,
        inner_offset: 50,
        proto: encap.outer.proto.0,
        icmp_type: 0,
        icmp_code: 0,
        _pad: [0; 3],
    };
    encode_record(&PacketEncap { event: r, encap })
}

/// What `tracer --record` would have written for a node's packets.
pub(super) fn recording_of(node: &NodeTrace) -> Vec<u8> {
    let mut events: Vec<&HopEvent> = node
        .packets
        .iter()
        .flat_map(|p| &p.hops)
        .map(|h| &h.event)
        .collect();
    events.sort_by_key(|e| e.ts_ns);
    let mut bytes = Vec::new();
    for event in events {
        recording::write(&mut bytes, &raw(event)).unwrap();
    }
    bytes
}

/// What `tracer -o json` would have written for a node's packets, its namespaces named.
pub(super) fn json_of(node: &NodeTrace, names: &NameTable) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut writer = JsonWriter::new(&mut bytes);
    for packet in &node.packets {
        writer
            .record(&crate::correlate::Record::Packet(packet.clone()), names)
            .unwrap();
    }
    let events = node.packets.iter().map(|p| p.hops.len() as u64).sum();
    writer
        .stats(&RunStats {
            events,
            ..RunStats::default()
        })
        .unwrap();
    drop(writer);
    bytes
}

fn read(path: PathBuf) -> Result<NodeTrace, MergeError> {
    input::read(
        &Input::parse(&path.to_string_lossy()),
        &mut Symbols::default(),
    )
}

/// The fields of a hop that both formats carry, to compare them.
/// Time, place, inode, tuple, IP id and length, TCP sequence and VNI of a hop.
type Seen = (u64, String, u64, Tuple, u16, u16, u32, Option<u32>);

fn seen(node: &NodeTrace) -> Vec<Seen> {
    let mut hops: Vec<_> = node
        .packets
        .iter()
        .flat_map(|p| &p.hops)
        .map(|h| {
            let e = &h.event;
            let id = e.encap.as_ref().and_then(|encap| encap.id);
            let name = format!("{} {}", e.hook.name(), e.ifname);
            (
                e.ts_ns,
                name,
                e.netns_inode,
                e.tuple,
                e.ip_id,
                e.ip_len,
                e.tcp_seq,
                id,
            )
        })
        .collect();
    hops.sort_by_key(|h| h.0);
    hops
}

#[test]
fn merge_reads_recordings_and_json_alike() {
    let scratch = Scratch::new("alike");
    let (nodes, _) = conversation(8, 2_500_000_000);
    let mut names = NameTable::default();
    names.set_netns(HOST, "host");
    let mut from_recordings = Vec::new();
    let mut from_json = Vec::new();
    for node in &nodes {
        let rec = scratch.file(&format!("{}.rec", node.name), &recording_of(node));
        let json = scratch.file(&format!("{}.json", node.name), &json_of(node, &names));
        from_recordings.push(read(rec).unwrap());
        from_json.push(read(json).unwrap());
    }
    for ((original, recorded), json) in nodes.iter().zip(&from_recordings).zip(&from_json) {
        assert_eq!(recorded.packets.len(), original.packets.len());
        assert_eq!(json.packets.len(), original.packets.len());
        assert_eq!(seen(recorded), seen(original));
        assert_eq!(seen(json), seen(original));
        assert_eq!(recorded.stats.events, 80);
        assert_eq!(json.stats.events, 80);
        // JSON keeps the names its tracer gave; a recording has none.
        assert_eq!(json.names.netns(HOST), Some("host"));
        assert_eq!(recorded.names.netns(HOST), None);
    }
    let a = join_and_time(&from_recordings, 0).unwrap();
    let b = join_and_time(&from_json, 0).unwrap();
    assert_eq!(a.clocks, b.clocks);
    assert_eq!(a.crossed(), 16);
    assert_eq!(b.crossed(), 16);
}

/// A recording's names records (the reasons first, drop locations later) name what its node's
/// trace shows, and what JSON inputs named (`Symbols`, none here) is added, not put instead.
#[test]
fn merge_keeps_the_names_a_recording_carries() {
    let scratch = Scratch::new("names");
    let (nodes, _) = conversation(2, 0);
    let location = 0xffff_ffff_c0de_0010;
    let mut rec = Vec::new();
    recording::write_names(
        &mut rec,
        &recording::Names {
            drop_reasons: [(5, "NETFILTER_DROP".to_owned())].into(),
            ..recording::Names::default()
        },
    )
    .unwrap();
    rec.extend(recording_of(&nodes[0]));
    recording::write_names(
        &mut rec,
        &recording::Names::of_locations([(location, "nft_do_chain+0x1c".to_owned())]),
    )
    .unwrap();
    let mut symbols = Symbols::default();
    let mut node = input::read(
        &Input::parse(&scratch.file("a.rec", &rec).to_string_lossy()),
        &mut symbols,
    )
    .unwrap();
    symbols.name_in(std::iter::once(&mut node.names));
    assert_eq!(node.names.drop_reason(5), "NETFILTER_DROP");
    assert_eq!(node.names.symbol(location), "nft_do_chain+0x1c");
    assert_eq!(node.stats.events, 20);
}

#[test]
fn merge_names_nodes_after_their_files_or_as_told() {
    let parse = |arg: &str| {
        let input = Input::parse(arg);
        (input.name, input.path.to_string_lossy().into_owned())
    };
    assert_eq!(parse("node-a.rec"), ("node-a".into(), "node-a.rec".into()));
    assert_eq!(parse("/tmp/x/b.json"), ("b".into(), "/tmp/x/b.json".into()));
    assert_eq!(
        parse("worker1=/tmp/t.rec"),
        ("worker1".into(), "/tmp/t.rec".into())
    );
    // Not a name before the `=`: all of it is the file.
    assert_eq!(parse("./a=b/c.rec"), ("c".into(), "./a=b/c.rec".into()));
}

fn refused(name: &str, bytes: &[u8]) -> String {
    let scratch = Scratch::new(&format!("refused-{}", name.replace('.', "-")));
    let path = scratch.file(name, bytes);
    let err = read(path.clone()).unwrap_err();
    err.to_string().replace(&path.display().to_string(), name)
}

#[test]
fn merge_refuses_what_is_not_one_nodes_trace() {
    let (nodes, _) = conversation(2, 0);
    assert_eq!(
        refused("empty.rec", b""),
        "empty.rec is empty: its tracer wrote nothing"
    );
    assert_eq!(
        refused("blank.json", b" \n\n"),
        "blank.json is empty: its tracer wrote nothing"
    );
    assert_eq!(
        refused("notes.txt", b"hello, world\n"),
        "notes.txt is neither a --record file nor -o json output of tracer (no record fits its \
         length prefix)"
    );
    assert_eq!(
        refused("zeros.rec", &[0; 64]),
        "zeros.rec is neither a --record file nor -o json output of tracer (no record fits its \
         length prefix)"
    );
    let mut text = Vec::new();
    TextWriter::new(&mut text, 0)
        .record(
            &crate::correlate::Record::Packet(nodes[0].packets[0].clone()),
            &NameTable::default(),
        )
        .unwrap();
    assert!(refused("a.txt", &text).starts_with("a.txt is neither a --record file"));
    let mut json = json_of(&nodes[0], &NameTable::default());
    json.splice(0..0, b"{\"type\":\"hop\",\n".iter().copied());
    assert!(
        refused("broken.json", &json).starts_with("broken.json line 1: not JSON: "),
        "{}",
        refused("broken.json", &json)
    );
    assert_eq!(
        refused("other.json", b"{\"name\":\"x\"}\n"),
        "other.json is neither a --record file nor -o json output of tracer (line 1: a JSON \
         value without \"type\")"
    );
    assert_eq!(
        refused(
            "stats.json",
            b"{\"type\":\"stats\",\"events\":0,\"lost\":0,\"malformed\":0}\n"
        ),
        "stats.json holds no packets (was the trace stopped before anything matched?)"
    );
    let hop = String::from_utf8(json_of(&nodes[0], &NameTable::default())).unwrap();
    let first = hop.lines().next().unwrap();
    let merged = first.replace("}", ",\"node\":\"a\"}");
    assert_eq!(
        refused("merged.json", merged.as_bytes()),
        "merged.json is the output of tracer merge, not the trace of one node"
    );
    let bad_hook = first.replace("\"net_dev_queue\"", "\"elsewhere\"");
    assert_eq!(
        refused("hook.json", bad_hook.as_bytes()),
        "hook.json line 1: unknown hook \"elsewhere\""
    );
}

#[test]
fn merge_reads_a_trace_cut_short_up_to_where_it_ends() {
    let scratch = Scratch::new("cut");
    let (nodes, _) = conversation(2, 0);
    let mut rec = recording_of(&nodes[0]);
    rec.truncate(rec.len() - 10);
    let node = read(scratch.file("a.rec", &rec)).unwrap();
    assert_eq!(node.stats.events, 19);
    let json = String::from_utf8(json_of(&nodes[0], &NameTable::default())).unwrap();
    // The stats line and half of the last hop are missing.
    let lines: Vec<&str> = json.lines().collect();
    let (last, hops) = lines[..lines.len() - 1].split_last().unwrap();
    let json = format!("{}\n{}", hops.join("\n"), &last[..last.len() / 2]);
    let node = read(scratch.file("a.json", json.as_bytes())).unwrap();
    assert_eq!(node.packets.iter().map(|p| p.hops.len()).sum::<usize>(), 19);
}

#[test]
fn merge_refuses_inputs_that_name_nodes_badly() {
    let scratch = Scratch::new("names");
    let (nodes, _) = conversation(2, 0);
    let a = scratch.file("a.rec", &recording_of(&nodes[0]));
    let b = scratch.file("b.rec", &recording_of(&nodes[1]));
    let options = |inputs: &[String], reference: Option<&str>| Options {
        inputs: inputs.iter().map(|arg| Input::parse(arg)).collect(),
        format: crate::output::Format::Text,
        reference: reference.map(str::to_owned),
    };
    let (a, b) = (a.display().to_string(), b.display().to_string());
    let err = |inputs: &[String], reference| prepare(&options(inputs, reference)).unwrap_err();
    assert_eq!(
        err(std::slice::from_ref(&a), None).to_string(),
        "tracer merge needs the traces of at least two nodes (one file per node)"
    );
    assert_eq!(
        err(&[format!("x={a}"), format!("x={b}")], None).to_string(),
        "two inputs are named x: name the nodes apart with NAME=FILE"
    );
    assert_eq!(
        err(&[a.clone(), b.clone()], Some("c")).to_string(),
        "--reference c names no input (the nodes are a, b)"
    );
    assert!(matches!(
        err(&[a.clone(), format!("again={a}")], None),
        MergeError::SameNode { count: 20, .. }
    ));
    let missing = format!("{a}.missing");
    assert!(
        err(&[a.clone(), missing.clone()], None)
            .to_string()
            .starts_with(&format!("cannot read {missing}: "))
    );
    let (nodes, merged) = prepare(&options(&[a, b], Some("b"))).unwrap();
    assert_eq!(nodes.len(), 2);
    assert_eq!(merged.reference, 1);
}
