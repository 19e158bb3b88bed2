//! Reading tracer's JSON Lines output in tests.

use std::collections::BTreeMap;

use serde_json::Value;

/// One hop as tests compare it: namespace name, interface, hook.
pub type Place = (String, String, String);

/// The `hop` objects of one packet, in output order.
#[derive(Debug, Clone)]
pub struct Packet {
    pub id: u64,
    pub hops: Vec<Value>,
}

impl Packet {
    /// (netns, ifname, hook) of every hop.
    pub fn places(&self) -> Vec<Place> {
        self.hops
            .iter()
            .map(|hop| {
                (
                    text(&hop["netns"]),
                    text(&hop["ifname"]),
                    text(&hop["hook"]),
                )
            })
            .collect()
    }

    /// The first hop.
    pub fn first(&self) -> &Value {
        &self.hops[0]
    }

    pub fn flow_id(&self) -> u64 {
        self.first()["flow_id"].as_u64().unwrap_or(0)
    }

    pub fn flags(&self) -> String {
        text(&self.first()["tcp_flags"])
    }

    /// The hop at `place`, if the packet made it.
    pub fn hop_at(&self, netns: &str, ifname: &str, hook: &str) -> Option<&Value> {
        self.hops
            .iter()
            .find(|hop| hop["netns"] == netns && hop["ifname"] == ifname && hop["hook"] == hook)
    }
}

/// Groups `hop` objects into packets by `packet_id`, in order of first appearance.
pub fn packets(lines: &[Value]) -> Vec<Packet> {
    let mut by_id: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
    let mut order = Vec::new();
    for line in lines.iter().filter(|l| l["type"] == "hop") {
        let id = line["packet_id"].as_u64().expect("packet_id");
        if !by_id.contains_key(&id) {
            order.push(id);
        }
        by_id.entry(id).or_default().push(line.clone());
    }
    order
        .into_iter()
        .map(|id| Packet {
            id,
            hops: by_id.remove(&id).unwrap_or_default(),
        })
        .collect()
}

/// Objects of one `type`.
pub fn of_type<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["type"] == kind).collect()
}

/// A JSON string as a Rust string; empty for null.
pub fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

/// Builds a [`Place`].
pub fn place(netns: &str, ifname: &str, hook: &str) -> Place {
    (netns.to_owned(), ifname.to_owned(), hook.to_owned())
}
