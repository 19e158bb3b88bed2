//! `-w FILE`: a pcapng file that tshark reads, one interface per hop's interface.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    os::unix::fs::{MetadataExt, PermissionsExt},
    process::Command,
};

use tracer_tests::{
    testbed::{SERVER_ADDR, Testbed},
    trace,
    tracer::{self, Tracer},
    traffic,
};

#[test]
fn pcapng_opens_in_tshark_with_one_interface_per_hop() -> anyhow::Result<()> {
    let port = 10051;
    let testbed = Testbed::up(1)?;
    let server = SocketAddr::from((SERVER_ADDR, port));
    let listener = traffic::listen(&testbed.remote, server)?;
    let dir = std::env::temp_dir().join(format!("tracer-pcapng-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("trace.pcapng");
    let tracer = Tracer::stack_json(port, &["-w", &file.to_string_lossy()])?;
    traffic::exchange(&testbed.containers[0].netns, None, server, &listener)?;
    let finished = tracer.stop()?;
    assert!(finished.status.success(), "{}", finished.stderr);
    let lines = finished.json()?;
    let hops = trace::of_type(&lines, "hop");
    let places: BTreeSet<(String, String)> = hops
        .iter()
        .map(|h| (trace::text(&h["ifname"]), trace::text(&h["netns"])))
        .collect();

    let meta = std::fs::metadata(&file)?;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), 0);

    let output = Command::new("tshark")
        .args([
            "-r",
            &file.to_string_lossy(),
            "-T",
            "fields",
            "-E",
            "separator=|",
        ])
        .args([
            "-e",
            "frame.interface_name",
            "-e",
            "tcp.srcport",
            "-e",
            "tcp.dstport",
        ])
        .args([
            "-e",
            "frame.comment",
            "-e",
            "frame.cap_len",
            "-e",
            "ip.hdr_len",
        ])
        .args(["-e", "tcp.hdr_len", "-e", "tcp.len"])
        .output()?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout)?;
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('|').collect()).collect();
    assert_eq!(rows.len(), hops.len(), "one record per hop");
    let interfaces: BTreeSet<&str> = rows.iter().map(|r| r[0]).collect();
    let expected: BTreeSet<String> = places.iter().map(|(i, ns)| format!("{i}@{ns}")).collect();
    assert_eq!(interfaces, expected.iter().map(String::as_str).collect());
    // tshark decodes the captured headers: every record is this connection, and only the
    // headers were captured, even of the packets that carried data.
    let mut with_payload = 0;
    for row in &rows {
        let port = port.to_string();
        assert!(row[1] == port || row[2] == port, "{row:?}");
        assert!(row[3].starts_with("flow "), "{row:?}");
        let number = |i: usize| row[i].parse::<usize>().unwrap_or(0);
        assert_eq!(number(4), number(5) + number(6), "captured length: {row:?}");
        if number(7) > 0 {
            with_payload += 1;
        }
    }
    assert!(with_payload > 0, "the exchange carried data");
    let first = &rows[0];
    assert!(
        first[3].contains("hop 1/") && first[3].contains("net_dev_queue"),
        "{first:?}"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// An output file that cannot be created is one line, exit code 2, nothing attached.
#[test]
fn unwritable_output_file_is_a_clear_error() -> anyhow::Result<()> {
    let finished = tracer::run(&["--port", "10052", "-w", "/nonexistent-dir/trace.pcapng"])?;
    assert_eq!(finished.status.code(), Some(2), "{}", finished.stderr);
    assert_eq!(finished.stderr.lines().count(), 1, "{}", finished.stderr);
    assert!(
        finished
            .stderr
            .contains("cannot write /nonexistent-dir/trace.pcapng")
    );
    Ok(())
}
