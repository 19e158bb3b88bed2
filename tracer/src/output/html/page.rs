//! The page: a template (askama, checked when tracer is compiled) with the report's data as
//! JSON, and the script and style that draw it, inline.
//!
//! The Content-Security-Policy names the script and the style by their SHA-256 hashes and
//! allows nothing else: no other script, no request to any address (`default-src 'none'`),
//! images only from `data:` URLs. A page that tried to load anything would be refused by the
//! browser, and the browser tests count requests to show it makes none.

use askama::Template;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::model::Report;

/// The script that draws the page from its data.
const SCRIPT: &str = include_str!("../../../templates/report.js");
/// The page's style.
const STYLE: &str = include_str!("../../../templates/report.css");

#[derive(Template)]
#[template(path = "report.html")]
struct Page<'a> {
    title: &'a str,
    policy: String,
    style: &'a str,
    script: &'a str,
    data: String,
}

/// The whole page of `report`.
pub fn render(report: &Report) -> Result<String, askama::Error> {
    let policy = format!(
        "default-src 'none'; script-src '{}'; style-src '{}'; img-src data:; base-uri 'none'; \
         form-action 'none'",
        hash(SCRIPT),
        hash(STYLE)
    );
    Page {
        title: &report.title,
        policy,
        style: STYLE,
        script: SCRIPT,
        data: data_json(report),
    }
    .render()
}

/// The report as JSON that can sit inside a `<script>` element: every `<` escaped, so that no
/// string in it (a container's name, a rule's text) can close the element.
pub fn data_json(report: &Report) -> String {
    let json = serde_json::to_string(report).expect("the report serializes");
    json.replace('<', "\\u003c")
}

/// `sha256-<base64>` of an inline element's text, as CSP names it.
fn hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_string_in_the_data_can_close_its_script_element() {
        let report = Report {
            title: "</script><script>alert(1)</script>".to_owned(),
            ..Report::default()
        };
        let page = render(&report).unwrap();
        let data = data_json(&report);
        assert!(!data.contains("</script>"));
        let back: serde_json::Value = serde_json::from_str(&data).unwrap();
        assert_eq!(back["title"], report.title);
        // The title is escaped in the page's <title> too: one script element, the page's.
        assert_eq!(page.matches("<script>").count(), 1);
    }

    #[test]
    fn the_policy_allows_exactly_the_inline_script_and_style() {
        let page = render(&Report::default()).unwrap();
        // Quotes are escaped in the attribute (`&#39;`); the browser tests show the browser
        // reads the policy and runs the script under it.
        assert!(page.contains(&format!("script-src &#39;{}&#39;", hash(SCRIPT))));
        assert!(page.contains(&format!("style-src &#39;{}&#39;", hash(STYLE))));
        assert!(page.contains(&format!("<script>{SCRIPT}</script>")));
        assert!(page.contains(&format!("<style>{STYLE}</style>")));
        assert!(page.contains("default-src &#39;none&#39;"));
        // Nothing that would make a request: no external script or link, no URL in the
        // style, no call that fetches in the script.
        for needle in ["src=\"http", "href=\"http", "<link", "<iframe", "<img"] {
            assert!(!page.contains(needle), "the page contains {needle}");
        }
        for needle in ["url(", "@import"] {
            assert!(!STYLE.contains(needle), "the style contains {needle}");
        }
        for needle in [
            "fetch(",
            "XMLHttpRequest",
            "WebSocket",
            "import(",
            "innerHTML",
        ] {
            assert!(!SCRIPT.contains(needle), "the script contains {needle}");
        }
    }
}
