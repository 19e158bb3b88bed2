//! Reliability: nothing left behind however tracer ends, traffic untouched, faults during a
//! trace survived, bad input refused with one line.

use std::{io::Read, net::SocketAddr, process::Stdio};

use tracer_tests::{
    bpf,
    testbed::{SERVER_ADDR, Testbed},
    trace,
    tracer::{self, Tracer},
    traffic,
};

/// Starts a tracer with TC programs on the testbed's host side, returns it with its links.
fn start(testbed: &Testbed, extra: &[&str]) -> anyhow::Result<(Tracer, Vec<u32>)> {
    let mut args = vec!["--netns", &testbed.host.name, "--hooks", "all"];
    args.extend_from_slice(extra);
    let tracer = Tracer::start(&args)?;
    let links = bpf::links_of(tracer.pid());
    assert!(links.len() > 5, "tracepoints and TC links: {links:?}");
    Ok((tracer, links))
}

fn assert_gone(links: &[u32]) {
    for &id in links {
        assert!(!bpf::link_exists(id), "link {id} is still attached");
    }
}

/// `kill -9` gives tracer no chance to clean up: the kernel must drop every link with the
/// process (TCX links and tracepoint links are file descriptors).
#[test]
fn kill_9_leaves_no_link_behind() -> anyhow::Result<()> {
    let testbed = Testbed::up(1)?;
    let (tracer, links) = start(&testbed, &["--port", "10071"])?;
    let finished = tracer.kill_hard()?;
    assert!(!finished.status.success());
    assert_gone(&links);
    Ok(())
}

/// An error during the trace (stdout is a full disk) ends tracer with one line and exit
/// code 1, and detaches everything.
#[test]
fn error_exit_detaches_everything() -> anyhow::Result<()> {
    let port = 10072;
    let testbed = Testbed::up(1)?;
    let server = SocketAddr::from((SERVER_ADDR, port));
    let listener = traffic::listen(&testbed.remote, server)?;
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full")?;
    let tracer = Tracer::start_with_stdout(
        &[
            "--netns",
            &testbed.host.name,
            "--port",
            &port.to_string(),
            "--hooks",
            "all",
        ],
        Stdio::from(full),
    )?;
    let links = bpf::links_of(tracer.pid());
    assert!(links.len() > 5);
    traffic::exchange(&testbed.containers[0].netns, None, server, &listener)?;
    let mut tracer = tracer;
    let finished = tracer.wait()?;
    assert_eq!(finished.status.code(), Some(1), "{}", finished.stderr);
    let errors: Vec<&str> = finished
        .stderr
        .lines()
        .filter(|l| l.starts_with("tracer: error"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", finished.stderr);
    assert!(
        errors[0].contains("No space left on device"),
        "{}",
        errors[0]
    );
    assert_gone(&links);
    Ok(())
}

/// tracer never changes a packet: with its TC programs on every hop, a second TC program
/// attached after them on the host veth (another tracer, last in the TCX chain) still sees
/// every datagram, and every payload arrives byte for byte.
#[test]
fn traffic_passes_untouched_and_later_tc_programs_see_it() -> anyhow::Result<()> {
    let port = 10073;
    let datagrams = 200;
    let testbed = Testbed::up(1)?;
    let ctr = &testbed.containers[0];
    let host = &testbed.host;
    let server = SocketAddr::from((SERVER_ADDR, port));
    let receiver = traffic::udp_bind(&testbed.remote, server)?;
    let sender = traffic::udp_bind(&ctr.netns, SocketAddr::from((ctr.addr, 0)))?;

    let first = Tracer::json(port, &["--hooks", "+tc"])?;
    let second = Tracer::start(&[
        "--port",
        &port.to_string(),
        "--output",
        "json",
        "--hooks",
        "+tc",
        "-i",
        &ctr.host_veth,
        "--netns",
        &host.name,
    ])?;
    let mut received = Vec::new();
    for n in 0..datagrams {
        let payload: Vec<u8> = (0..64).map(|i| (n * 7 + i) as u8).collect();
        sender.send_to(&payload, server)?;
        let mut buffer = [0u8; 128];
        let size = receiver.recv(&mut buffer)?;
        received.push(buffer[..size].to_vec());
    }
    let (second, first) = (second.stop()?, first.stop()?);
    for (n, payload) in received.iter().enumerate() {
        let expected: Vec<u8> = (0..64).map(|i| (n * 7 + i) as u8).collect();
        assert_eq!(payload, &expected, "datagram {n} changed");
    }
    for finished in [&first, &second] {
        assert!(finished.status.success(), "{}", finished.stderr);
        let seen = trace::packets(&finished.json()?)
            .iter()
            .filter(|p| p.hop_at(&host.name, &ctr.host_veth, "tc_ingress").is_some())
            .count();
        assert_eq!(seen, datagrams, "{}", finished.stderr);
    }
    Ok(())
}

/// Faults while tracing: a container's veth pair deleted and created again, another
/// container's namespace destroyed, the bridge taken down and up, conntrack flushed. tracer
/// keeps running without a flood of messages, and the connections after are traced in full.
#[test]
fn faults_during_a_trace_are_survived() -> anyhow::Result<()> {
    let port = 10074;
    let mut testbed = Testbed::up(3)?;
    let server = SocketAddr::from((SERVER_ADDR, port));
    let listener = traffic::listen(&testbed.remote, server)?;
    let tracer = Tracer::json(port, &["--hooks", "+tc"])?;
    traffic::exchange(&testbed.containers[0].netns, None, server, &listener)?;

    testbed.replug(1)?;
    drop(testbed.containers.remove(2));
    testbed.host.ip(&["link", "set", "docker0", "down"])?;
    testbed.host.ip(&["link", "set", "docker0", "up"])?;
    testbed.host.exec("conntrack", &["-F"])?;
    // Let tracer notice the new veth: it says so once it follows it.
    let replugged = testbed.containers[1].host_veth.clone();
    tracer.wait_for_line(std::time::Duration::from_secs(5), |line| {
        line.starts_with("tracer: following") && line.contains(&replugged)
    })?;

    traffic::exchange(&testbed.containers[1].netns, None, server, &listener)?;
    traffic::exchange(&testbed.containers[0].netns, None, server, &listener)?;
    let finished = tracer.stop()?;
    assert!(finished.status.success(), "{}", finished.stderr);
    let noise: Vec<&str> = finished
        .stderr
        .lines()
        .filter(|l| l.contains("warning") || l.contains("error"))
        .collect();
    assert!(noise.len() <= 2, "{}", finished.stderr);
    let packets = trace::packets(&finished.json()?);
    for ctr in &testbed.containers {
        let syns: Vec<_> = packets
            .iter()
            .filter(|p| p.flags() == "S" && p.first()["netns"] == ctr.netns.name.as_str())
            .collect();
        let last = syns
            .last()
            .unwrap_or_else(|| panic!("no SYN from {}", ctr.netns.name));
        assert!(
            last.hop_at(&testbed.remote.name, "eth0", "netif_receive_skb")
                .is_some(),
            "{:#?}",
            last.places()
        );
        assert!(
            last.hop_at(&testbed.host.name, &ctr.host_veth, "tc_ingress")
                .is_some()
        );
    }
    Ok(())
}

/// Every kind of bad input: one line on stderr naming the problem, the documented exit code,
/// and tracer never got as far as attaching (it never said it was ready).
#[test]
fn bad_input_is_one_line_and_an_exit_code() -> anyhow::Result<()> {
    let cases: &[(&[&str], i32, &str)] = &[
        (&["--port", "0"], 2, "invalid value '0' for '--port"),
        (&["--port", "http"], 2, "invalid value 'http'"),
        (&["--bogus"], 2, "unexpected argument '--bogus'"),
        (&["-c", "0"], 2, "invalid value '0'"),
        (
            &["--ring-size", "1000"],
            2,
            "ring buffer size must be a power of two",
        ),
        (
            &["--container", "no-such-container"],
            2,
            "no running container named",
        ),
        (
            &["--netns", "no-such-netns"],
            2,
            "no network namespace named no-such-netns",
        ),
        (&["-i", "nosuch9"], 2, "no interface named nosuch9"),
        (&["tcp", "port", "80", "and"], 2, "bad filter expression"),
        (&["-w", "/tmp"], 2, "cannot write /tmp"),
        (
            &["--kernel-btf", "/nonexistent"],
            1,
            "tracer needs the kernel's BTF",
        ),
    ];
    for (args, code, message) in cases {
        let finished = tracer::run(args)?;
        assert_eq!(
            finished.status.code(),
            Some(*code),
            "{args:?}: {}",
            finished.stderr
        );
        let lines: Vec<&str> = finished.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {}", finished.stderr);
        assert!(
            lines[0].starts_with("tracer: error: "),
            "{args:?}: {}",
            lines[0]
        );
        assert!(lines[0].contains(message), "{args:?}: {}", lines[0]);
        assert!(!finished.stderr.contains("ready"));
        assert!(!finished.stderr.contains("panicked"));
    }
    Ok(())
}

/// Without root tracer says so in one line.
#[test]
fn not_root_is_one_line() -> anyhow::Result<()> {
    let output = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(tracer::binary())
        .args(["--port", "10075"])
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("tracer needs root"), "{stderr}");
    Ok(())
}

/// Output files are never written through a symlink, and are created owner-only.
#[test]
fn output_files_refuse_symlinks() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("tracer-symlink-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let victim = dir.join("victim");
    std::fs::write(&victim, b"keep me")?;
    let link = dir.join("trace.pcapng");
    std::os::unix::fs::symlink(&victim, &link)?;
    for flag in ["-w", "--record"] {
        let finished = tracer::run(&["--port", "10076", flag, &link.to_string_lossy()])?;
        assert_eq!(finished.status.code(), Some(2), "{}", finished.stderr);
        assert!(
            finished.stderr.contains("cannot write"),
            "{}",
            finished.stderr
        );
    }
    let mut kept = String::new();
    std::fs::File::open(&victim)?.read_to_string(&mut kept)?;
    assert_eq!(kept, "keep me");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
