use std::{os::unix::fs::PermissionsExt as _, path::PathBuf, time::Duration};

use super::*;
use crate::{
    kernel::{hooks::HookSet, tc::TcMode},
    session::select::Selection,
};

fn options() -> Options {
    Options {
        expression: None,
        selection: Selection::default(),
        hooks: HookSet::parse("default").unwrap(),
        tc_mode: TcMode::Auto,
        count: None,
        duration: None,
        format: Format::Json,
        ring_bytes: 1 << 22,
        packet_timeout: Duration::from_millis(100),
        max_flows: 1024,
        pcapng: None,
        snap_len: None,
        kernel_btf: None,
        record: None,
        html: None,
        ready_file: None,
        rules: None,
        sample: 1,
        metrics: None,
        until: None,
    }
}

/// A directory of the test's own, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("tracer-start-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn usage_error(result: anyhow::Result<impl Sized>) -> String {
    match result {
        Ok(_) => panic!("accepted"),
        Err(err) => {
            assert!(err.is::<UsageError>(), "not a usage error: {err:#}");
            format!("{err:#}")
        }
    }
}

#[test]
fn a_request_is_checked_before_anything_is_made() {
    let mut bad = options();
    bad.ring_bytes = 3000;
    assert!(usage_error(Request::check(&bad)).contains("power of two"));
    bad = options();
    bad.expression = Some("port 80 and".into());
    assert!(usage_error(Request::check(&bad)).contains("bad filter expression"));
    bad = options();
    bad.selection.processes.comms = vec!["a-name-that-is-too-long".into()];
    assert!(usage_error(Request::check(&bad)).contains("--comm a-name-that-is-"));

    let mut good = options();
    good.expression = Some("tcp port 10001".into());
    let request = Request::check(&good).unwrap();
    assert!(request.expression.is_some());
    assert!(Request::check(&options()).unwrap().expression.is_none());
}

#[test]
fn packets_are_copied_only_for_a_pcapng_file() {
    assert_eq!(snap_len(false, Some(64)), 0);
    assert_eq!(snap_len(true, Some(64)), 64);
    assert_eq!(snap_len(true, None), SNAP_MAX as u32);
}

#[test]
fn output_files_are_private_and_never_followed_through_a_link() {
    let dir = Dir::new("files");
    let mut asked = options();
    asked.pcapng = Some(dir.0.join("trace.pcapng"));
    asked.record = Some(dir.0.join("trace.rec"));
    let files = Files::create(&asked).unwrap();
    assert!(files.pcapng.is_some() && files.recorder.is_some());
    for name in ["trace.pcapng", "trace.rec"] {
        let mode = std::fs::metadata(dir.0.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }

    let target = dir.0.join("elsewhere");
    std::os::unix::fs::symlink(&target, dir.0.join("link")).unwrap();
    let mut linked = options();
    linked.pcapng = Some(dir.0.join("link"));
    usage_error(Files::create(&linked));
    assert!(!target.exists());

    let mut missing = options();
    missing.record = Some(dir.0.join("no/such/dir/trace.rec"));
    assert!(usage_error(Files::create(&missing)).contains("cannot write"));
}

#[test]
fn a_pcapng_file_is_one_more_output() {
    let dir = Dir::new("outputs");
    let file = std::fs::File::create(dir.0.join("trace.pcapng")).unwrap();
    assert_eq!(open_outputs(&options(), None, io::sink()).unwrap().len(), 1);
    assert_eq!(
        open_outputs(&options(), Some(file), io::sink())
            .unwrap()
            .len(),
        2
    );
}
