//! `tracer merge` as a user runs it: the recordings two nodes of the VM test wrote
//! (`tests/data/merge/`, from `cargo xtask vm-test`: a connection between two pods over a VXLAN
//! overlay, node b booted about 7 s after node a) merged into one trace, and every kind of
//! bad input refused with one line and exit code 2, nothing written on stdout.

use std::path::{Path, PathBuf};

use tracer_tests::{machine::TempDir, tracer};

fn data(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn merge_joins_two_recorded_nodes_into_one_trace() -> anyhow::Result<()> {
    let (a, b) = (data("merge/a.rec"), data("merge/b.rec"));
    let text = tracer::run(&["merge", &a, &b])?;
    assert!(text.status.success(), "{}", text.stderr);
    let lines: Vec<&str> = text.stdout.lines().collect();
    assert_eq!(lines[0], format!("node a ({a}): reference clock"));
    assert_eq!(
        lines[1],
        format!(
            "node b ({b}): offset -7.326729s +/- 1.59ms against a (from 24 packets a->b, 24 \
             b->a)"
        )
    );
    assert_eq!(lines[2], "48 packets, 48 of them crossed between nodes");
    assert_eq!(
        text.stderr,
        "tracer: merged 2 nodes: 48 packets, 48 crossed between nodes, in 1 flows\n"
    );
    // Node b's hops follow node a's in each packet that went from a to b.
    let syn: Vec<&str> = lines[4..]
        .iter()
        .take_while(|l| l.starts_with(' '))
        .map(|l| l.split_whitespace().nth(2).unwrap_or_default())
        .filter(|place| place.contains('/'))
        .collect();
    assert_eq!(
        syn.iter().map(|p| &p[..2]).collect::<Vec<_>>(),
        ["a/", "a/", "a/", "a/", "a/", "b/", "b/", "b/", "b/", "b/"]
    );

    let json = tracer::run(&["merge", &a, &b, "-o", "json", "--reference", "b"])?;
    assert!(json.status.success(), "{}", json.stderr);
    let records = json.json()?;
    let clock = |node: &str| {
        records
            .iter()
            .find(|r| r["type"] == "clock" && r["node"] == node)
            .cloned()
            .unwrap()
    };
    assert_eq!(clock("b")["basis"], "reference");
    assert_eq!(clock("a")["offset_ns"], 7_326_728_564_i64);
    assert_eq!(clock("a")["uncertainty_ns"], 1_586_608);
    let hops: Vec<_> = records.iter().filter(|r| r["type"] == "hop").collect();
    assert_eq!(hops.len(), 480);
    for hop in &hops {
        let own = hop["node_ts_ns"].as_i64().unwrap();
        let shift = if hop["node"] == "a" { 7_326_728_564 } else { 0 };
        assert_eq!(hop["ts_ns"].as_i64().unwrap(), own - shift);
    }
    assert_eq!(records.last().unwrap()["packets"], 48);
    Ok(())
}

/// Runs `tracer merge ARGS` and returns the one line it wrote on stderr, checking that it
/// failed as a usage error and wrote nothing else.
fn refused(args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["merge"];
    full.extend_from_slice(args);
    let finished = tracer::run(&full)?;
    assert_eq!(
        finished.status.code(),
        Some(2),
        "{args:?}: {}",
        finished.stderr
    );
    assert_eq!(finished.stdout, "", "{args:?}");
    let lines: Vec<&str> = finished.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: {}", finished.stderr);
    Ok(lines[0].to_owned())
}

#[test]
fn merge_refuses_bad_input_with_one_line_and_exit_code_2() -> anyhow::Result<()> {
    let dir = TempDir::new("trc-merge")?;
    let file = |name: &str, bytes: &[u8]| -> anyhow::Result<String> {
        let path: PathBuf = dir.path().join(name);
        std::fs::write(&path, bytes)?;
        Ok(path.display().to_string())
    };
    let (a, b) = (data("merge/a.rec"), data("merge/b.rec"));
    assert_eq!(
        refused(&[&a])?,
        "tracer: error: tracer merge needs the traces of at least two nodes (one file per node)"
    );
    let empty = file("empty.rec", b"")?;
    assert_eq!(
        refused(&[&a, &empty])?,
        format!("tracer: error: {empty} is empty: its tracer wrote nothing")
    );
    let text = tracer::run(&["merge", &a, &b])?.stdout;
    let text = file("merged.txt", text.as_bytes())?;
    assert_eq!(
        refused(&[&a, &text])?,
        format!(
            "tracer: error: {text} is neither a --record file nor -o json output of tracer (no \
             record fits its length prefix)"
        )
    );
    let json = tracer::run(&["merge", &a, &b, "-o", "json"])?.stdout;
    let json = file("merged.json", json.as_bytes())?;
    assert_eq!(
        refused(&[&a, &json])?,
        format!("tracer: error: {json} is the output of tracer merge, not the trace of one node")
    );
    let again = format!("again={a}");
    assert_eq!(
        refused(&[&a, &again])?,
        format!(
            "tracer: error: {a} and {a} come from the same node: 240 hop events are in both \
             (same kernel time, sk_buff and hook); give each node's trace once"
        )
    );
    assert_eq!(
        refused(&[&format!("x={a}"), &format!("x={b}")])?,
        "tracer: error: two inputs are named x: name the nodes apart with NAME=FILE"
    );
    // A trace of another machine at another time: nothing in common with node a.
    let other = data("golden/snat-handshake.events");
    assert!(refused(&[&a, &other])?.starts_with(
        "tracer: error: no packet of node snat-handshake crossed to or from another node's \
             trace"
    ));
    let missing = format!("{a}.missing");
    assert_eq!(
        refused(&[&a, &missing])?,
        format!("tracer: error: cannot read {missing}: No such file or directory (os error 2)")
    );
    assert_eq!(
        refused(&[&a, &b, "--reference", "c"])?,
        "tracer: error: --reference c names no input (the nodes are a, b)"
    );
    Ok(())
}
