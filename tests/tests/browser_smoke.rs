//! Smoke tests of the browser harness itself, no tracer involved: a page under a strict
//! Content-Security-Policy renders, answers evaluation and clicks, and makes no request; a page
//! that tries to reach out is stopped by its policy, and the harness sees the attempts. Fails
//! where Chromium is missing or does not start.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use tracer_tests::{browser::Browser, machine::TempDir};

/// An address of the benchmarking range (198.18.0.0/15): never a real host.
const UNREACHABLE: &str = "198.18.0.1";

/// The first bytes of every PNG file.
const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Where screenshots are kept for a person to look at.
fn output_dir() -> anyhow::Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-output/browser_smoke");
    std::fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
    Ok(dir)
}

/// A page whose only script is `script`, allowed by its hash and by nothing else.
fn page(body: &str, script: &str) -> String {
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(script));
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" \
         content=\"default-src 'none'; script-src 'sha256-{hash}'\">\
         <title>browser smoke</title></head>\
         <body>{body}<script>{script}</script></body></html>\n"
    )
}

#[test]
fn renders_under_a_strict_policy_without_requests() -> anyhow::Result<()> {
    let dir = TempDir::new("tracer-test-browser")?;
    let path = dir.path().join("page.html");
    let script = "
        const greeting = document.createElement('p');
        greeting.id = 'greeting';
        greeting.textContent = 'rendered by the inline script';
        document.body.append(greeting);
        document.getElementById('count').addEventListener('click', (event) => {
            event.target.textContent = String(Number(event.target.textContent) + 1);
        });
        document.documentElement.dataset.ready = '1';
    ";
    std::fs::write(&path, page("<button id=\"count\">0</button>", script))?;

    let started = Instant::now();
    let browser = Browser::launch()?;
    let launched = started.elapsed();
    let page = browser.open(&path)?;
    eprintln!(
        "browser launched in {launched:?}, page ready {:?} later",
        started.elapsed() - launched
    );

    let text: String = page.eval("document.getElementById('greeting').textContent")?;
    assert_eq!(text, "rendered by the inline script");
    page.click("#count")?;
    page.wait_for(
        "document.getElementById('count').textContent === '1'",
        Duration::from_secs(5),
    )?;

    let png = output_dir()?.join("strict_policy.png");
    page.screenshot(&png)?;
    let bytes = std::fs::read(&png)?;
    ensure!(
        bytes.starts_with(PNG_SIGNATURE),
        "{} is not a PNG",
        png.display()
    );

    assert_eq!(page.requests()?, Vec::<String>::new());
    assert_eq!(page.data_requests()?, Vec::<String>::new());
    assert_eq!(page.console_errors()?, Vec::<String>::new());
    Ok(())
}

#[test]
fn sees_requests_the_policy_blocks() -> anyhow::Result<()> {
    let dir = TempDir::new("tracer-test-browser")?;
    let path = dir.path().join("page.html");
    // Ready once the fetch has failed, so the attempt is over before the test looks.
    let script = format!(
        "
        fetch('http://{UNREACHABLE}/')
            .then(() => 'reached', (error) => 'failed: ' + error)
            .then((outcome) => {{
                document.documentElement.dataset.fetch = outcome;
                document.documentElement.dataset.ready = '1';
            }});
    "
    );
    let image = format!("<img src=\"http://{UNREACHABLE}/x.png\" alt=\"\">");
    std::fs::write(&path, page(&image, &script))?;

    let browser = Browser::launch()?;
    let page = browser.open(&path)?;
    let outcome: String = page.eval("document.documentElement.dataset.fetch")?;
    assert!(
        outcome.starts_with("failed"),
        "the fetch was not blocked: {outcome}"
    );

    let errors = page.console_errors()?;
    let requests = page.requests()?;
    eprintln!("console errors: {errors:#?}\nrequests: {requests:#?}");
    for url in [
        format!("http://{UNREACHABLE}/"),
        format!("http://{UNREACHABLE}/x.png"),
    ] {
        assert!(
            errors
                .iter()
                .any(|error| error.contains(&url) && error.contains("Content Security")),
            "no policy violation for {url} among {errors:#?}"
        );
    }
    assert!(
        requests.iter().all(|url| url.contains(UNREACHABLE)),
        "requests to elsewhere: {requests:?}"
    );

    let png = output_dir()?.join("blocked_requests.png");
    page.screenshot(&png)?;
    ensure!(
        std::fs::read(&png)?.starts_with(PNG_SIGNATURE),
        "{} is not a PNG",
        png.display()
    );
    Ok(())
}
