//! The HTML report of real traces, opened in a real browser: the system Chromium, driven over
//! the DevTools protocol (`tracer_tests::browser`). Each test traces traffic through the
//! testbed, makes the report (`--html` on the live trace, or `tracer report` of what the trace
//! wrote), and asserts what a person would see: every device the flow's hops were on drawn in
//! its namespace, latency labels, the NAT and the drop where they happened, the verdict, a
//! second flow drawn when it is selected; no console error and no request made by the page.
//! A screenshot of each is left in `target/test-output/report/`.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;
use tracer_tests::{
    browser::{Browser, Page},
    machine::TempDir,
    testbed::{SERVER_ADDR, Testbed, UPLINK_ADDR},
    trace,
    tracer::{self, Tracer},
    traffic,
};

fn screenshot_path(name: &str) -> anyhow::Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-output/report");
    std::fs::create_dir_all(&dir)?;
    Ok(dir.join(format!("{name}.png")))
}

/// The devices (`place/ifname`) the hops of flow `flow` were on, as the page names them.
fn devices_of(lines: &[Value], flow: u64) -> BTreeSet<String> {
    trace::of_type(lines, "hop")
        .into_iter()
        .filter(|hop| hop["flow_id"] == flow)
        .filter(|hop| !trace::text(&hop["ifname"]).is_empty())
        .map(|hop| {
            format!(
                "{}/{}",
                trace::text(&hop["netns"]),
                trace::text(&hop["ifname"])
            )
        })
        .collect()
}

/// The devices drawn in the page's path.
fn drawn(page: &Page<'_>) -> anyhow::Result<BTreeSet<String>> {
    let devices: Vec<String> =
        page.eval("[...document.querySelectorAll('#path g.node')].map(g => g.dataset.device)")?;
    Ok(devices.into_iter().collect())
}

/// The flow ids of the trace, in order.
fn flows(lines: &[Value]) -> Vec<u64> {
    trace::of_type(lines, "flow")
        .into_iter()
        .filter_map(|flow| flow["flow_id"].as_u64())
        .collect()
}

/// What every page must satisfy: drawn, every arrow labelled with a latency, no error and no
/// request.
fn check_page(page: &Page<'_>, name: &str) -> anyhow::Result<()> {
    let labels: Vec<String> =
        page.eval("[...document.querySelectorAll('#path text.latency')].map(t => t.textContent)")?;
    assert!(!labels.is_empty(), "no latency label drawn");
    for label in &labels {
        assert!(
            label.contains("p99") && label.chars().any(|c| c.is_ascii_digit()),
            "latency label {label:?}"
        );
    }
    let errors = page.console_errors()?;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    let requests = page.requests()?;
    assert!(requests.is_empty(), "the page made requests: {requests:?}");
    let data = page.data_requests()?;
    assert!(data.is_empty(), "the page loaded data: URLs: {data:?}");
    let png = screenshot_path(name)?;
    page.screenshot(&png)?;
    assert!(std::fs::read(&png)?.starts_with(b"\x89PNG"));
    Ok(())
}

fn verdict_line(page: &Page<'_>) -> anyhow::Result<String> {
    page.eval("document.getElementById('verdict').textContent")
}

/// A container's connection through MASQUERADE, reported with `--html` on the live trace.
#[test]
fn the_masqueraded_path_is_drawn_with_its_latencies_and_its_snat() -> anyhow::Result<()> {
    let testbed = Testbed::up(1)?;
    let dir = TempDir::new("tracer-report")?;
    let html = dir.path().join("snat.html");
    let port = 10_301;
    let server = SocketAddr::from((SERVER_ADDR, port));
    let listener = traffic::listen(&testbed.remote, server)?;
    let tracer = Tracer::json(port, &["--html", html.to_str().expect("path")])?;
    traffic::exchange(&testbed.containers[0].netns, None, server, &listener)?;
    let lines = tracer.stop()?.json()?;
    let [flow] = flows(&lines)[..] else {
        panic!("one flow expected: {lines:#?}");
    };

    let browser = Browser::launch()?;
    let page = browser.open(&html)?;
    let expected = devices_of(&lines, flow);
    assert!(
        expected.contains(&format!("{}/docker0", testbed.host.name)),
        "{expected:?}"
    );
    assert_eq!(drawn(&page)?, expected);
    let nat: Vec<String> =
        page.eval("[...document.querySelectorAll('#path .nat-badge')].map(t => t.textContent)")?;
    assert!(
        nat.iter()
            .any(|t| t.contains("SNAT src") && t.contains(&UPLINK_ADDR.to_string())),
        "{nat:?}"
    );
    assert!(verdict_line(&page)?.contains("delivered"));
    // The handshake, data and teardown in the timeline, each with its hops.
    let packets: u64 = page.eval("document.querySelectorAll('#time g.tick').length")?;
    assert_eq!(packets, trace::packets(&lines).len() as u64);
    check_page(&page, "snat")
}

/// A published port (DNAT in PREROUTING) from a recording, through `tracer report`.
#[test]
fn a_published_port_is_drawn_from_a_recording_with_its_dnat() -> anyhow::Result<()> {
    let (host_port, container_port) = (8081, 80);
    let testbed = Testbed::up(1)?;
    testbed.publish(host_port, 0, container_port)?;
    let ctr = &testbed.containers[0];
    let listener = traffic::listen(&ctr.netns, SocketAddr::from((ctr.addr, container_port)))?;
    let dir = TempDir::new("tracer-report")?;
    let recording = dir.path().join("dnat.events");
    let tracer = Tracer::json(host_port, &["--record", recording.to_str().expect("path")])?;
    traffic::exchange(
        &testbed.remote,
        None,
        SocketAddr::from((UPLINK_ADDR, host_port)),
        &listener,
    )?;
    let lines = tracer.stop()?.json()?;
    let [flow] = flows(&lines)[..] else {
        panic!("one flow expected: {lines:#?}");
    };
    let html = dir.path().join("dnat.html");
    let made = tracer::run(&[
        "report",
        recording.to_str().expect("path"),
        "-o",
        html.to_str().expect("path"),
    ])?;
    assert!(made.status.success(), "{}", made.stderr);

    let browser = Browser::launch()?;
    let page = browser.open(&html)?;
    // A recording names no namespace: the page names them by inode, as replay does.
    let drawn = drawn(&page)?;
    let ifnames: BTreeSet<&str> = drawn.iter().filter_map(|d| d.rsplit('/').next()).collect();
    let expected: BTreeSet<String> = devices_of(&lines, flow)
        .iter()
        .filter_map(|d| d.rsplit('/').next().map(str::to_owned))
        .collect();
    assert_eq!(
        ifnames,
        expected.iter().map(String::as_str).collect(),
        "{drawn:?}"
    );
    let nat: Vec<String> =
        page.eval("[...document.querySelectorAll('#path .nat-badge')].map(t => t.textContent)")?;
    assert!(
        nat.iter().any(
            |t| t.contains("DNAT dst") && t.contains(&format!("{}:{container_port}", ctr.addr))
        ),
        "{nat:?}"
    );
    assert!(verdict_line(&page)?.contains("delivered"));
    check_page(&page, "dnat")
}

/// A FORWARD rule drops one connection's SYN, sent twice; another connection is answered. The
/// page opens on the failed flow, drawn with its drop, reason and rule; selecting the other
/// flow draws its path instead.
#[test]
fn a_drop_is_drawn_where_it_happened_and_selecting_a_flow_redraws_the_path() -> anyhow::Result<()> {
    let testbed = Testbed::up(1)?;
    let (open, blocked) = (10_302, 10_303);
    testbed.drop_forward(blocked)?;
    let server = SocketAddr::from((SERVER_ADDR, open));
    let listener = traffic::listen(&testbed.remote, server)?;
    let dir = TempDir::new("tracer-report")?;
    let html = dir.path().join("drop.html");
    let (open_text, blocked_text) = (open.to_string(), blocked.to_string());
    let tracer = Tracer::start(&[
        "--output",
        "json",
        "--rules",
        "--html",
        html.to_str().expect("path"),
        "tcp",
        "port",
        &open_text,
        "or",
        "tcp",
        "port",
        &blocked_text,
    ])?;
    let ctr = &testbed.containers[0].netns;
    traffic::exchange(ctr, None, server, &listener)?;
    // The kernel sends the SYN again after 1 s (and every second after, on Linux 6.x); the
    // connection cannot complete.
    let refused = traffic::connect_within(
        ctr,
        SocketAddr::from((SERVER_ADDR, blocked)),
        Duration::from_millis(1500),
    );
    assert!(refused.is_err(), "the blocked port answered");
    let lines = tracer.stop()?.json()?;
    let ids = flows(&lines);
    assert_eq!(ids.len(), 2, "{lines:#?}");
    let by_port = |port: u16| {
        trace::of_type(&lines, "flow")
            .into_iter()
            .find(|f| f["orig"]["dst_port"] == port)
            .and_then(|f| f["flow_id"].as_u64())
            .expect("a flow per port")
    };
    let (delivered, dropped) = (by_port(open), by_port(blocked));

    let browser = Browser::launch()?;
    let page = browser.open(&html)?;
    // The failed flow first.
    let title: String = page.eval("document.getElementById('flow-title').textContent")?;
    assert!(title.starts_with(&format!("Flow {dropped}:")), "{title}");
    assert!(verdict_line(&page)?.contains("dropped"));
    let drop: Vec<String> = page
        .eval("[...document.querySelectorAll('#path g.node.drop')].map(g => g.dataset.device)")?;
    assert_eq!(drop, [format!("{}/docker0", testbed.host.name)]);
    let reason: String = page.eval("document.querySelector('#path .drop-reason').textContent")?;
    assert!(reason.contains("NETFILTER_DROP"), "{reason}");
    let rule: String = page.eval("document.querySelector('#path .drop-rule').textContent")?;
    assert!(rule.contains("FORWARD"), "{rule}");
    assert_eq!(drawn(&page)?, devices_of(&lines, dropped));
    let retransmitted: u64 =
        page.eval("document.querySelectorAll('#time g.tick.retrans').length")?;
    let summaries: Vec<String> =
        page.eval("[...document.querySelectorAll('#packets summary')].map(s => s.textContent)")?;
    assert_eq!(retransmitted, 1, "the SYN was sent twice: {summaries:#?}");
    check_page(&page, "drop")?;

    // The list filters by verdict.
    let shown: u64 = page.eval(
        "(() => { const s = document.getElementById('verdict-filter'); s.value = 'dropped'; \
         s.dispatchEvent(new Event('input')); return document.querySelectorAll('tr.flow').length; })()",
    )?;
    assert_eq!(shown, 1);
    let all: u64 = page.eval(
        "(() => { const s = document.getElementById('verdict-filter'); s.value = ''; \
         s.dispatchEvent(new Event('input')); return document.querySelectorAll('tr.flow').length; })()",
    )?;
    assert_eq!(all, 2);

    page.click(&format!("tr.flow[data-flow=\"{delivered}\"]"))?;
    page.wait_for(
        &format!(
            "document.getElementById('flow-title').textContent.startsWith('Flow {delivered}:')"
        ),
        Duration::from_secs(5),
    )?;
    assert!(verdict_line(&page)?.contains("delivered"));
    let drops: u64 = page.eval("document.querySelectorAll('#path g.node.drop').length")?;
    assert_eq!(drops, 0);
    assert_eq!(drawn(&page)?, devices_of(&lines, delivered));
    check_page(&page, "second-flow")
}

/// What is not a trace gets one line and no report; a recording cut within its last record
/// is reported from the records before it.
#[test]
fn bad_input_gets_one_line_and_no_report() -> anyhow::Result<()> {
    let dir = TempDir::new("tracer-report")?;
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/golden/snat-handshake.events");
    let events = std::fs::read(&golden)?;
    let cases: [(&str, Vec<u8>); 3] = [
        ("empty.jsonl", Vec::new()),
        ("notes.txt", b"hello, this is not a trace\n".to_vec()),
        ("cut-short.events", events[..30].to_vec()),
    ];
    let html = dir.path().join("report.html");
    for (name, bytes) in cases {
        let input = dir.path().join(name);
        std::fs::write(&input, bytes)?;
        let run = tracer::run(&[
            "report",
            input.to_str().expect("path"),
            "-o",
            html.to_str().expect("path"),
        ])?;
        assert_eq!(run.status.code(), Some(2), "{name}: {}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{name}: {}", run.stderr);
        assert!(run.stderr.contains(name), "{name}: {}", run.stderr);
        let left: Vec<_> = std::fs::read_dir(dir.path())?
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains("report"))
            .collect();
        assert!(left.is_empty(), "{name}: a report was written: {left:?}");
    }
    let cut = dir.path().join("cut.events");
    std::fs::write(&cut, &events[..events.len() - 7])?;
    let run = tracer::run(&[
        "report",
        cut.to_str().expect("path"),
        "-o",
        html.to_str().expect("path"),
    ])?;
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        run.stderr.contains("ends within a record"),
        "{}",
        run.stderr
    );
    let page = std::fs::read_to_string(&html)?;
    assert!(page.contains("\"flows\":1,"), "the report holds the flow");
    Ok(())
}
