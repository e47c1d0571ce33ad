//! The HTTP face of a pod: the browser client, the WebSocket upgrade, the
//! probes and the metrics, with security headers on every answer.

use std::sync::Arc;

use axum::extract::{State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::pod::Pod;
use crate::session;

/// Bytes read from a socket at once; small, since idle sockets are many.
const READ_BUFFER: usize = 128;
/// Bytes gathered before the WebSocket writes to the socket.
const WRITE_BUFFER: usize = 16 * 1024;

const INDEX_HTML: &str = include_str!("../web/index.html");
const APP_JS: &str = include_str!("../web/app.js");
const STYLE_CSS: &str = include_str!("../web/style.css");

/// Content-Security-Policy of every answer: same-origin scripts, styles and
/// WebSockets only, no inline code, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The router of one pod.
pub fn router(pod: Arc<Pod>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/style.css", get(style_css))
        .route("/ws", get(upgrade))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/rooms/{room}/messages", axum::routing::post(crate::api::publish))
        .layer(axum::extract::DefaultBodyLimit::max(pod.config.limits.max_frame_bytes))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(pod)
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn index() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX_HTML)
}

async fn app_js() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], APP_JS)
}

async fn style_css() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE_CSS)
}

/// Upgrades to a WebSocket, unless the pod drains or the origin is foreign.
async fn upgrade(
    State(pod): State<Arc<Pod>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if pod.is_refusing() {
        return (StatusCode::SERVICE_UNAVAILABLE, "this pod is draining; connect again")
            .into_response();
    }
    if !origin_allowed(&pod.config.allowed_origins, &headers) {
        tracing::info!(origin = ?headers.get(header::ORIGIN), "upgrade refused: origin not allowed");
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }

    let limits = &pod.config.limits;
    let tracker = pod.tasks.clone();
    ws.max_message_size(limits.max_frame_bytes)
        .max_frame_size(limits.max_frame_bytes)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |socket| tracker.track_future(session::serve(pod, socket)))
}

/// A browser's `Origin` must be allowed; requests without one are not browsers.
fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    if allowed.is_empty() {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let origin_host = origin.split_once("://").map(|(_, rest)| rest);
        return host.is_some() && origin_host == host;
    }
    allowed.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
}

async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Ready when the broker answers and the pod is not draining.
async fn readyz(State(pod): State<Arc<Pod>>) -> Response {
    let health = pod.broker.health();
    let draining = pod.is_draining();
    let ready = health.up && !draining;
    let body = json!({
        "ready": ready,
        "draining": draining,
        "node": pod.config.node_id,
        "broker": {
            "kind": health.kind,
            "up": health.up,
            "latency_ms": health.latency.map(|l| l.as_secs_f64() * 1000.0),
        },
        "connections": pod.metrics.connections.get(),
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

async fn metrics(State(pod): State<Arc<Pod>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], pod.metrics.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, host.parse().unwrap());
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, origin.parse().unwrap());
        }
        headers
    }

    #[test]
    fn same_host_is_the_default_origin_rule() {
        assert!(origin_allowed(&[], &headers(None, "ward:8080")));
        assert!(origin_allowed(&[], &headers(Some("https://ward:8080"), "ward:8080")));
        assert!(!origin_allowed(&[], &headers(Some("https://evil.example"), "ward:8080")));
    }

    #[test]
    fn listed_origins_and_the_wildcard_are_allowed() {
        let list = vec!["https://ward.example".to_string()];
        assert!(origin_allowed(&list, &headers(Some("https://ward.example"), "x")));
        assert!(!origin_allowed(&list, &headers(Some("https://other.example"), "x")));
        assert!(origin_allowed(&["*".into()], &headers(Some("https://any.example"), "x")));
    }
}
