//! A real browser for tests of self-contained HTML pages (reports, dashboards) opened from disk:
//! the system Chromium (Debian package `chromium`) driven over the DevTools protocol with
//! `chromiumoxide`, behind a synchronous API that runs a Tokio runtime of its own.
//!
//! A test opens a page and waits for its ready signal, then evaluates JavaScript, clicks, and
//! asserts on what the harness recorded from the moment before navigation: every network
//! request the page made (`Network.requestWillBeSent`) and every console error, uncaught
//! exception and error log entry (`Runtime.consoleAPICalled`, `Runtime.exceptionThrown`,
//! `Log.entryAdded`; Content-Security-Policy violations arrive as the latter). A page that is
//! meant to be self-contained makes no request at all.
//!
//! The ready signal is the page's own: it sets `document.documentElement.dataset.ready` to
//! `"1"` once it has rendered, or to `"error"` with the reason in `dataset.error`.
//!
//! Chromium runs headless as root, so without its sandbox (`--no-sandbox`), without a GPU, and
//! with a fresh profile in a temporary `--user-data-dir`. The machine's network is closed, so
//! everything that would reach out by itself is off (`--disable-background-networking`,
//! `--disable-component-update`, `--disable-sync`, `--disable-quic`, `--no-first-run`): the only
//! requests left are the page's. Nothing is downloaded: without `/usr/bin/chromium` the test
//! fails (`cargo xtask setup` installs it). The browser is closed, or killed, and its profile
//! removed when [`Browser`] is dropped, also when a test panics.

use std::{
    path::Path,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use chromiumoxide::{
    BrowserConfig,
    cdp::{
        browser_protocol::{
            log::{EventEntryAdded, LogEntryLevel},
            network::{EnableParams, EventRequestWillBeSent, ResourceType},
            page::CaptureScreenshotFormat,
        },
        js_protocol::runtime::{
            ConsoleApiCalledType, EvaluateParams, EventConsoleApiCalled, EventExceptionThrown,
            RemoteObject,
        },
    },
    listeners::EventStream,
    page::ScreenshotParams,
};
use futures::{FutureExt as _, StreamExt as _};
use serde::de::DeserializeOwned;

use crate::{machine::TempDir, skip};

/// The system Chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// How long a page may take to load and say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a condition is evaluated again while waiting for it.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How long a browser has to exit after it was asked to close, before it is killed.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A headless Chromium with a profile of its own.
pub struct Browser {
    runtime: tokio::runtime::Runtime,
    /// Taken when the browser is closed on drop.
    browser: Option<chromiumoxide::Browser>,
    /// Removed after the browser has exited.
    _profile: TempDir,
}

impl Browser {
    /// Starts Chromium and connects to it.
    pub fn launch() -> anyhow::Result<Browser> {
        if !Path::new(CHROMIUM).exists() {
            return Err(skip::missing(format!(
                "chromium (Debian package), {CHROMIUM}"
            )));
        }
        let profile = TempDir::new("tracer-test-chromium")?;
        let config = BrowserConfig::builder()
            .chrome_executable(CHROMIUM)
            // Exactly the flags below, not chromiumoxide's defaults; it adds
            // `--remote-debugging-port=0`, `--disable-extensions` and what is set here.
            .disable_default_args()
            .no_sandbox()
            .user_data_dir(profile.path())
            .window_size(1400, 1000)
            .viewport(None)
            .args([
                "disable-gpu",
                "disable-quic",
                "no-first-run",
                "disable-background-networking",
                "disable-component-update",
                "disable-sync",
            ])
            .build()
            .map_err(|err| anyhow::anyhow!("failed to configure chromium: {err}"))?;
        // One worker keeps reading the DevTools connection between the calls of a test.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("failed to start a Tokio runtime")?;
        let (browser, mut handler) = runtime
            .block_on(chromiumoxide::Browser::launch(config))
            .map_err(|err| skip::missing(format!("chromium that starts ({CHROMIUM}: {err})")))?;
        // The handler routes every message of the connection; it ends when the browser does.
        runtime.spawn(async move { while handler.next().await.is_some() {} });
        Ok(Browser {
            runtime,
            browser: Some(browser),
            _profile: profile,
        })
    }

    /// Opens `path` as a `file://` page, recording its requests and errors from the start, and
    /// returns once the page says it is ready.
    pub fn open(&self, path: &Path) -> anyhow::Result<Page<'_>> {
        let path = path
            .canonicalize()
            .with_context(|| format!("failed to find the page {}", path.display()))?;
        let url = format!("file://{}", path.display());
        let browser = self.browser.as_ref().context("the browser is closed")?;
        let (page, url, events) = self.runtime.block_on(async {
            let page = browser.new_page("about:blank").await?;
            let events = Events {
                requests: page.event_listener().await?,
                exceptions: page.event_listener().await?,
                console: page.event_listener().await?,
                log: page.event_listener().await?,
                requested: Vec::new(),
                errors: Vec::new(),
            };
            page.execute(EnableParams::default()).await?;
            page.enable_runtime().await?;
            page.enable_log().await?;
            page.goto(url.as_str()).await?;
            // As Chromium spells it (escapes), to tell the document from what it loads.
            let url = page.url().await?.unwrap_or(url);
            anyhow::Ok((page, url, events))
        })?;
        let page = Page {
            browser: self,
            page,
            url,
            events: Mutex::new(events),
        };
        page.wait_for(
            "['1', 'error'].includes(document.documentElement.dataset.ready)",
            READY_TIMEOUT,
        )
        .with_context(|| format!("{} did not say it was ready", page.url))?;
        let error: Option<String> = page.eval(
            "document.documentElement.dataset.ready === 'error' \
             ? String(document.documentElement.dataset.error) : null",
        )?;
        if let Some(error) = error {
            bail!("{} failed to render: {error}", page.url);
        }
        Ok(page)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let Some(mut browser) = self.browser.take() else {
            return;
        };
        self.runtime.block_on(async {
            let closed = tokio::time::timeout(CLOSE_TIMEOUT, async {
                browser.close().await.ok()?;
                browser.wait().await.ok()
            });
            if !matches!(closed.await, Ok(Some(_))) {
                let _ = browser.kill().await;
            }
        });
    }
}

/// A page open in a [`Browser`].
pub struct Page<'b> {
    browser: &'b Browser,
    page: chromiumoxide::Page,
    url: String,
    events: Mutex<Events>,
}

/// The page's event streams, and what has been taken from them.
struct Events {
    requests: EventStream<EventRequestWillBeSent>,
    exceptions: EventStream<EventExceptionThrown>,
    console: EventStream<EventConsoleApiCalled>,
    log: EventStream<EventEntryAdded>,
    requested: Vec<String>,
    errors: Vec<String>,
}

impl Page<'_> {
    /// Evaluates the expression `js`, awaits it if it is a promise, and returns its value
    /// (`undefined` as `null`).
    pub fn eval<T: DeserializeOwned>(&self, js: &str) -> anyhow::Result<T> {
        let params = EvaluateParams::builder()
            .expression(js)
            .await_promise(true)
            .return_by_value(true)
            .build()
            .map_err(|err| anyhow::anyhow!("failed to build an evaluation: {err}"))?;
        let result = self
            .browser
            .runtime
            .block_on(self.page.evaluate_expression(params))
            .with_context(|| format!("failed to evaluate `{js}`"))?;
        let value = result.value().cloned().unwrap_or_default();
        serde_json::from_value(value).with_context(|| format!("unexpected value of `{js}`"))
    }

    /// Clicks the middle of the first element that matches `css_selector`, as a mouse would.
    pub fn click(&self, css_selector: &str) -> anyhow::Result<()> {
        self.browser
            .runtime
            .block_on(async {
                self.page
                    .find_element(css_selector)
                    .await?
                    .click()
                    .await
                    .map(drop)
            })
            .with_context(|| format!("failed to click {css_selector:?}"))
    }

    /// Evaluates `js_condition` until it is truthy, for at most `timeout`.
    pub fn wait_for(&self, js_condition: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let check = format!("Boolean({js_condition})");
        while !self.eval::<bool>(&check)? {
            if Instant::now() > deadline {
                bail!("`{js_condition}` was still false after {timeout:?}");
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        Ok(())
    }

    /// URLs of every request the page made, other than its own document and `data:` URLs.
    /// Chromium reports some that a Content-Security-Policy blocked (an image) and not others
    /// (a `fetch`): a blocked attempt shows in [`Page::console_errors`] in any case.
    pub fn requests(&self) -> anyhow::Result<Vec<String>> {
        self.requested(false)
    }

    /// `data:` URLs the page requested (a `fetch` of one, an image), which stay in the browser.
    pub fn data_requests(&self) -> anyhow::Result<Vec<String>> {
        self.requested(true)
    }

    /// Console errors, uncaught exceptions and error log entries, in order of their kind.
    pub fn console_errors(&self) -> anyhow::Result<Vec<String>> {
        self.drain(|events| events.errors.clone())
    }

    /// Saves a PNG of the whole page, also what lies beyond the window.
    pub fn screenshot(&self, png: &Path) -> anyhow::Result<()> {
        let params = ScreenshotParams::builder()
            .format(CaptureScreenshotFormat::Png)
            .full_page(true);
        self.browser
            .runtime
            .block_on(self.page.save_screenshot(params.build(), png))
            .with_context(|| format!("failed to save a screenshot to {}", png.display()))?;
        Ok(())
    }

    /// Requested URLs, either the `data:` ones or the others.
    fn requested(&self, data: bool) -> anyhow::Result<Vec<String>> {
        self.drain(|events| {
            let urls = events.requested.iter();
            urls.filter(|url| url.starts_with("data:") == data)
                .cloned()
                .collect()
        })
    }

    /// Takes every event that has arrived and returns `read` of the recorded events. A round
    /// trip to the page comes first: the page's renderer reports its events in order with the
    /// answers to commands, so what the page did before this call has arrived by then.
    fn drain<T>(&self, read: impl FnOnce(&Events) -> T) -> anyhow::Result<T> {
        self.eval::<serde_json::Value>("0")
            .context("failed to reach the page")?;
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        let events = &mut *events;
        while let Some(Some(event)) = events.requests.next().now_or_never() {
            let own_document =
                event.r#type == Some(ResourceType::Document) && event.request.url == self.url;
            if !own_document {
                events.requested.push(event.request.url.clone());
            }
        }
        while let Some(Some(event)) = events.exceptions.next().now_or_never() {
            let details = &event.exception_details;
            let description = details.exception.as_ref().map(describe).unwrap_or_default();
            events
                .errors
                .push(format!("exception: {} {description}", details.text));
        }
        while let Some(Some(event)) = events.console.next().now_or_never() {
            if event.r#type == ConsoleApiCalledType::Error {
                let args: Vec<String> = event.args.iter().map(describe).collect();
                events
                    .errors
                    .push(format!("console.error: {}", args.join(" ")));
            }
        }
        while let Some(Some(event)) = events.log.next().now_or_never() {
            if event.entry.level == LogEntryLevel::Error {
                events.errors.push(format!("log: {}", event.entry.text));
            }
        }
        Ok(read(events))
    }
}

/// A JavaScript value as a console shows it.
fn describe(object: &RemoteObject) -> String {
    match (&object.value, &object.description) {
        (Some(serde_json::Value::String(text)), _) => text.clone(),
        (Some(value), _) => value.to_string(),
        (None, Some(description)) => description.clone(),
        (None, None) => format!("{:?}", object.r#type),
    }
}
