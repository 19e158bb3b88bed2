//! The monitor's HTTP endpoint: `/metrics`, `/ready` (200 once every hook is attached, 503
//! before) and `/healthz` (200 while the process serves). It answers from the moment it is
//! bound, while the programs attach.
//!
//! `/metrics` is OpenMetrics text for a client that accepts it (Prometheus asks for it), and
//! the classic Prometheus text format otherwise (curl, `promtool check metrics`).
//!
//! With `--web-config` ([`super::web`]), connections are TLS and requests need a user's
//! password, on every path; the settings are those of the file when the connection opened.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, TcpStream},
};

use super::{
    Metrics,
    web::{Settings, Web},
};

/// The content types of the two expositions.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds `addr`; a port that is taken is the user's to change.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for --metrics"))
}

/// The first pause after `accept` fails, and the longest: failures such as running out of
/// file descriptors last until connections close, so retrying at once would spin a core.
const FIRST_PAUSE: Duration = Duration::from_millis(5);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);

/// Serves `metrics` on `listener`, with the settings of `web`, until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, web: Arc<Web>) {
    let mut pause: Option<Duration> = None;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Pauses that double up to a second, like Go's net/http; said once.
                if pause.is_none() {
                    eprintln!(
                        "tracer: warning: --metrics cannot accept connections ({err}); retrying \
                         with pauses until it can"
                    );
                }
                let next = pause.map_or(FIRST_PAUSE, |p| (p * 2).min(LONGEST_PAUSE));
                pause = Some(next);
                tokio::time::sleep(next).await;
                continue;
            }
        };
        if pause.take().is_some() {
            eprintln!("tracer: --metrics accepts connections again");
        }
        let metrics = Arc::clone(&metrics);
        let web = Arc::clone(&web);
        tokio::spawn(async move {
            let settings = web.current();
            match &settings.tls {
                None => connection(stream, metrics, web, Arc::clone(&settings)).await,
                Some(tls) => {
                    if !starts_tls(&stream).await {
                        plain_to_tls(stream).await;
                        return;
                    }
                    if let Ok(stream) = tls.accept(stream).await {
                        connection(stream, metrics, web, Arc::clone(&settings)).await;
                    }
                }
            }
        });
    }
}

/// Whether the client opens with a TLS handshake record.
async fn starts_tls(stream: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    // A TLS record of type handshake starts with 0x16.
    matches!(stream.peek(&mut first).await, Ok(1) if first[0] == 0x16)
}

/// What a plain HTTP request to the TLS endpoint gets, as Go's servers answer it.
async fn plain_to_tls(mut stream: TcpStream) {
    let _ = stream
        .write_all(
            b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n\
              Client sent an HTTP request to an HTTPS server.\n",
        )
        .await;
    let _ = stream.shutdown().await;
}

/// HTTP/1 on one connection, plain or TLS.
async fn connection<S>(stream: S, metrics: Arc<Metrics>, web: Arc<Web>, settings: Arc<Settings>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let (metrics, web, settings) = (
            Arc::clone(&metrics),
            Arc::clone(&web),
            Arc::clone(&settings),
        );
        async move {
            let authorization = request.headers().get(header::AUTHORIZATION).cloned();
            let allowed = if settings.authenticates() {
                // bcrypt, when the password is not remembered yet, off the runtime's thread.
                let checked = Arc::clone(&settings);
                tokio::task::spawn_blocking(move || {
                    web.authorized(&checked, authorization.as_ref())
                })
                .await
                .unwrap_or(false)
            } else {
                true
            };
            let mut response = if allowed {
                respond(&request, &metrics)
            } else {
                unauthorized()
            };
            for (name, value) in &settings.headers {
                response.headers_mut().insert(name.clone(), value.clone());
            }
            Ok::<_, Infallible>(response)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

fn unauthorized() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"Unauthorized\n")));
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    let headers = response.headers_mut();
    headers.insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic realm=\"tracer\""),
    );
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    response
}

fn respond(request: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: &str| {
        let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain"),
        );
        response
    };
    if request.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match request.uri().path() {
        "/metrics" => match metrics.encode() {
            Ok(body) => {
                let openmetrics = request
                    .headers()
                    .get_all(header::ACCEPT)
                    .iter()
                    .filter_map(|value| value.to_str().ok())
                    .any(|value| value.contains("application/openmetrics-text"));
                let (body, kind) = if openmetrics {
                    (body, OPENMETRICS)
                } else {
                    (prometheus_text(&body), PROMETHEUS_TEXT)
                };
                let mut response = Response::new(Full::new(Bytes::from(body)));
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(kind));
                response
            }
            Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
        },
        "/ready" if metrics.is_ready() => text(StatusCode::OK, "ready\n"),
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "attaching\n"),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        _ => text(StatusCode::NOT_FOUND, "/metrics, /ready or /healthz\n"),
    }
}

/// OpenMetrics text as the classic Prometheus text format: a counter family `x` is named by
/// its sample, `x_total`, in its `HELP` and `TYPE` lines; `UNIT` lines, `# EOF` and exemplars
/// go.
pub(super) fn prometheus_text(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            counters.insert(name.to_owned());
        }
    }
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if !line.starts_with('#') {
            text.push_str(without_exemplar(line));
            text.push('\n');
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        text.push_str(renamed.as_deref().unwrap_or(line));
        text.push('\n');
    }
    text
}

/// A sample line without its exemplar (` # {labels} value [timestamp]`), which the classic
/// format does not have: what follows the first ` # ` after the sample's own labels, whose
/// quoted values may hold anything.
fn without_exemplar(line: &str) -> &str {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let mut labels_end = name_end;
    if line[name_end..].starts_with('{') {
        let (mut quoted, mut escaped) = (false, false);
        for (at, c) in line[name_end..].char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                '}' if !quoted => {
                    labels_end = name_end + at + 1;
                    break;
                }
                _ => {}
            }
        }
    }
    line[labels_end..]
        .find(" # ")
        .map_or(line, |at| &line[..labels_end + at])
}

#[cfg(test)]
mod tests {
    use super::prometheus_text;

    /// The exemplar goes, also after a label value that looks like one.
    #[test]
    fn exemplars_are_left_out_of_the_classic_format() {
        let openmetrics = r#"# HELP h Latency.
# TYPE h histogram
h_bucket{le="0.1",to="a \" # {b}"} 2 # {flow_id="7",tuple="tcp 1.2.3.4:5 > 6.7.8.9:80"} 0.05 1733350000.5
h_bucket{le="+Inf",to="a \" # {b}"} 2
h_count 2 # {flow_id="8"} 0.03
# EOF
"#;
        assert_eq!(
            prometheus_text(openmetrics),
            r#"# HELP h Latency.
# TYPE h histogram
h_bucket{le="0.1",to="a \" # {b}"} 2
h_bucket{le="+Inf",to="a \" # {b}"} 2
h_count 2
"#
        );
    }

    #[test]
    fn counters_are_named_by_their_samples_in_the_classic_format() {
        let openmetrics = "# HELP tracer_flows Flows traced.\n# TYPE tracer_flows counter\n\
                           tracer_flows_total 3\n# HELP tracer_series Label sets.\n\
                           # TYPE tracer_series gauge\ntracer_series 2.0\n# EOF\n";
        assert_eq!(
            prometheus_text(openmetrics),
            "# HELP tracer_flows_total Flows traced.\n# TYPE tracer_flows_total counter\n\
             tracer_flows_total 3\n# HELP tracer_series Label sets.\n\
             # TYPE tracer_series gauge\ntracer_series 2.0\n"
        );
    }
}
