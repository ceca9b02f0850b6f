//! The admin endpoint: `/metrics` (Prometheus text), `/healthz` (the process is up),
//! `/readyz` (listeners accepting and rules loaded; 503 with the reason while starting,
//! draining, or with an empty allowlist) and `/connections` (the forwarded connections open
//! now, as JSON, with each leg's TCP health).

use crate::state::Relay;
use crate::telemetry::live::MAX_LISTED;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A scraper that does not finish its request headers in this time is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the admin endpoint until the process ends, or until `handed_over` (a new relay
/// serves it on the same socket).
pub async fn serve(listener: TcpListener, relay: Arc<Relay>, handed_over: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(addr = %addr, "admin listening");
    }
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = handed_over.cancelled() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed; pausing");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let relay = relay.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = respond(&request, &relay);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(request: &Request<Incoming>, relay: &Relay) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz" | "/connections") {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz, /readyz or /connections\n".into(),
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match path {
        "/metrics" => {
            let openmetrics = request
                .headers()
                .get(hyper::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|accept| accept.contains("application/openmetrics-text"));
            let content_type = if openmetrics {
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            } else {
                "text/plain; version=0.0.4; charset=utf-8"
            };
            let limits = relay.settings().config.limits;
            relay
                .metrics()
                .health
                .update(relay.is_ready(), limits.max_connections);
            reply(
                StatusCode::OK,
                content_type,
                relay.metrics().render(relay.counters(), openmetrics),
            )
        }
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/connections" => match limit(request.uri().query()) {
            Ok(limit) => reply(
                StatusCode::OK,
                "application/json",
                connections(relay, limit),
            ),
            Err(why) => reply(StatusCode::BAD_REQUEST, "text/plain", why),
        },
        _ => match relay.readiness() {
            Ok(ready) => reply(StatusCode::OK, "text/plain", format!("{ready}\n")),
            Err(why) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{why}\n"),
            ),
        },
    }
}

/// How many connections one `/connections` answer lists unless `?limit=N` says.
const DEFAULT_LISTED: usize = 100;

/// The `limit` of a `/connections` query: 1 to [`MAX_LISTED`], [`DEFAULT_LISTED`] when not
/// given. Pure.
fn limit(query: Option<&str>) -> Result<usize, String> {
    let given = query
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("limit="));
    match given {
        None => Ok(DEFAULT_LISTED),
        Some(n) => match n.parse::<usize>() {
            Ok(n) if (1..=MAX_LISTED).contains(&n) => Ok(n),
            _ => Err(format!(
                "limit must be a whole number from 1 to {MAX_LISTED}, got {n:?}\n"
            )),
        },
    }
}

/// The open forwarded connections as JSON: `open` (how many), and up to `limit` of them,
/// oldest first.
fn connections(relay: &Relay, limit: usize) -> String {
    let (open, listed) = relay.live().list(limit);
    let ms = |us: u32| f64::from(us) / 1e3;
    let listed: Vec<serde_json::Value> = listed
        .into_iter()
        .map(|c| {
            serde_json::json!({
                "client": c.client.to_string(),
                "listener": c.listener.to_string(),
                "sni": c.sni,
                "rule": c.rule,
                "age_s": (c.age_s * 1e3).round() / 1e3,
                "bytes_up": c.bytes_up,
                "bytes_down": c.bytes_down,
                "client_rtt_ms": c.client_leg.map(|l| ms(l.rtt_us)),
                "client_cwnd": c.client_leg.map(|l| l.cwnd),
                "client_retrans": c.client_leg.map(|l| l.retrans_segments),
                "upstream_rtt_ms": c.upstream_leg.map(|l| ms(l.rtt_us)),
                "upstream_cwnd": c.upstream_leg.map(|l| l.cwnd),
                "upstream_retrans": c.upstream_leg.map(|l| l.retrans_segments),
            })
        })
        .collect();
    let body = serde_json::json!({ "open": open, "connections": listed });
    format!("{body}\n")
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_bounded_and_a_bad_one_says_what_it_takes() {
        assert_eq!(limit(None), Ok(DEFAULT_LISTED));
        assert_eq!(limit(Some("limit=5")), Ok(5));
        assert_eq!(limit(Some("x=1&limit=7")), Ok(7));
        for bad in ["limit=0", "limit=-1", "limit=ten", "limit=10001"] {
            assert!(
                limit(Some(bad)).unwrap_err().contains("1 to 10000"),
                "{bad}"
            );
        }
    }
}
