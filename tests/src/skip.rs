//! Tests that cannot run here, and tests that do not apply here.
//!
//! A test whose prerequisite is missing (a runtime that is not installed or does not start,
//! a tool, root) has not passed: it fails, with an error from [`missing`] saying what is
//! missing and what to do. Only a test that cannot apply to this machine (the kernel or the
//! runtime lacks the feature it tests) returns early, through [`not_applicable`], which
//! records it in the file named by [`RECORD`]; `cargo xtask test` sets that and lists the
//! tests at the end of the run.

use std::{fmt::Display, io::Write as _};

/// The environment variable naming the file where tests that did not apply are recorded, one
/// line each: `BINARY::TEST: REASON`.
pub const RECORD: &str = "TRACER_TEST_NOT_APPLICABLE";

/// The error of a test whose prerequisite `what` is missing.
pub fn missing(what: impl Display) -> anyhow::Error {
    anyhow::anyhow!(
        "a prerequisite of this test is missing: {what} (`cargo xtask setup` installs what the \
         tests need; `cargo xtask test` runs them as root)"
    )
}

/// Ends the calling test, which does not apply here for `reason`: records it and prints it.
/// Returns what the test returns, so a test ends with `return skip::not_applicable(...)`.
pub fn not_applicable(reason: &str) -> anyhow::Result<()> {
    let line = format!("{}: {reason}", test_name());
    eprintln!("not applicable: {line}");
    if let Some(path) = std::env::var_os(RECORD) {
        // One write of one line in append mode: lines of tests running at once do not mix.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(format!("{line}\n").as_bytes()))
            .map_err(|err| anyhow::anyhow!("failed to record {line:?} in {path:?}: {err}"))?;
    }
    Ok(())
}

/// `BINARY::TEST`: the test binary's name without cargo's hash, and the test's name, which
/// the test harness gives the thread a test runs on.
fn test_name() -> String {
    let binary = std::env::current_exe()
        .ok()
        .and_then(|path| Some(path.file_stem()?.to_string_lossy().into_owned()))
        .map(|stem| match stem.rsplit_once('-') {
            Some((name, _hash)) => name.to_owned(),
            None => stem,
        })
        .unwrap_or_default();
    let thread = std::thread::current();
    format!("{binary}::{}", thread.name().unwrap_or("?"))
}
