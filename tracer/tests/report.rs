//! `tracer report` of several nodes' recordings: the report of the merged trace, its places
//! named by node, one flow whose path crosses from one node to the other.

use std::path::Path;

use tracer::{merge::Input, report};

fn data(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/merge")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn a_report_of_two_nodes_draws_one_path_across_them() {
    let options = report::Options {
        inputs: vec![Input::parse(&data("a.rec")), Input::parse(&data("b.rec"))],
        output: std::env::temp_dir().join("unused.html"),
        detail: 10,
        reference: None,
    };
    let (report, stats) = report::build(&options).expect("the two nodes merge");
    assert_eq!(stats.packets, 48);
    assert_eq!(report.flows.len(), 1);
    assert!(
        report
            .places
            .iter()
            .all(|place| place.name.starts_with("a/") || place.name.starts_with("b/")),
        "{:?}",
        report.places
    );
    // The flow's path has hops on both nodes, in each direction.
    let path = &report.paths[report.flows[0].10 as usize];
    for direction in [0, 1] {
        let nodes: std::collections::BTreeSet<&str> = path
            .pairs
            .iter()
            .filter(|[d, _]| *d == direction)
            .flat_map(|[_, pair]| {
                let pair = &report.pairs[*pair as usize];
                [pair.from, pair.to]
            })
            .map(|label| &report.places[report.labels[label as usize].place as usize].name[..2])
            .collect();
        assert_eq!(nodes, ["a/", "b/"].into(), "direction {direction}");
    }
    // The merged flow is judged from the evidence of both nodes.
    let verdict = &report.verdicts[report.flows[0].3 as usize];
    assert_eq!(verdict.kind, "delivered", "{verdict:?}");
    assert_eq!(report.detail.len(), 1);
    assert_eq!(
        report.detail[0].packets.len(),
        32,
        "the first 32 of 48 packets are kept"
    );
    assert_eq!(report.detail[0].omitted, 16);
}
