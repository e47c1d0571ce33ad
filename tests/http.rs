//! The HTTP face of one pod: probes, metrics, the browser client, origin
//! checks on the upgrade, slow request heads, and the drain.

mod support;

use std::time::Duration;

use support::{TestPod, http_get, open_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// Tries an upgrade with an optional `Origin`; returns the HTTP status
/// (101 when it succeeded).
async fn upgrade_status(url: &str, origin: Option<&str>) -> u16 {
    let mut request = url.into_client_request().expect("a valid URL");
    if let Some(origin) = origin {
        request.headers_mut().insert("origin", HeaderValue::from_str(origin).unwrap());
    }
    let attempt = timeout(support::DEADLINE, tokio_tungstenite::connect_async(request)).await;
    match attempt.expect("the upgrade answers in time") {
        Ok((_, response)) => response.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("upgrade failed without an HTTP answer: {e}"),
    }
}

#[tokio::test]
async fn healthz_answers_200() {
    let pod = TestPod::open().await;
    assert_eq!(pod.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn readyz_answers_200_with_ready_true() {
    let pod = TestPod::open().await;
    let response = pod.get("/readyz").await;
    assert_eq!(response.status, 200, "{}", response.body);
    let body = response.json();
    assert_eq!(body["ready"], true, "{body}");
}

#[tokio::test]
async fn ward_connections_counts_the_open_connections() {
    let pod = TestPod::open().await;
    pod.wait_metric("ward_connections", |v| v == 0.0).await;
    let mut clients = Vec::new();
    for user in ["a", "b", "c"] {
        clients.push(pod.client(user).await);
    }
    pod.wait_metric("ward_connections", |v| v == 3.0).await;

    clients.pop().expect("a client").close().await;
    pod.wait_metric("ward_connections", |v| v == 2.0).await;
    // A client that vanishes without a close handshake counts down too.
    drop(clients.pop());
    pod.wait_metric("ward_connections", |v| v == 1.0).await;
}

#[tokio::test]
async fn metrics_have_ward_and_process_families() {
    let pod = TestPod::open().await;
    let _client = pod.client("alice").await;
    let response = pod.get("/metrics").await;
    assert_eq!(response.status, 200);
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = &response.body;
    let memory = support::metric_value(text, "process_resident_memory_bytes");
    assert!(memory.is_some_and(|bytes| bytes > 0.0), "{memory:?}");
    for name in ["ward_connections", "ward_slow_consumer_closes_total"] {
        assert!(support::metric_value(text, name).is_some(), "{name} in /metrics");
    }
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        assert!(line.starts_with("ward_") || line.starts_with("process_"), "{line}");
    }
}

#[tokio::test]
async fn the_browser_client_is_served_at_the_root() {
    let pod = TestPod::open().await;
    let response = pod.get("/").await;
    assert_eq!(response.status, 200);
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("text/html"), "{content_type}");
}

#[tokio::test]
async fn an_upgrade_from_a_foreign_origin_gets_403() {
    let pod = TestPod::open().await;
    let url = pod.url();
    assert_eq!(upgrade_status(&url, Some("https://evil.example")).await, 403);
    assert_eq!(upgrade_status(&url, None).await, 101, "no Origin: not a browser");
    let same_host = format!("http://{}", pod.addr());
    assert_eq!(upgrade_status(&url, Some(&same_host)).await, 101);
}

#[tokio::test]
async fn allowed_origins_are_the_only_browsers_let_in() {
    let mut config = open_config();
    config.allowed_origins = vec!["https://ward.example".into()];
    let pod = TestPod::start(config).await;
    let url = pod.url();
    assert_eq!(upgrade_status(&url, Some("https://ward.example")).await, 101);
    assert_eq!(upgrade_status(&url, Some("https://other.example")).await, 403);
}

#[tokio::test]
async fn a_request_head_not_complete_within_the_hello_timeout_is_closed() {
    let mut config = open_config();
    config.limits.hello_timeout = Duration::from_millis(300);
    let pod = TestPod::start(config).await;
    let mut stream = TcpStream::connect(pod.addr()).await.expect("connects");
    stream.write_all(b"GET /ws HTTP/1.1\r\nHost: ward\r\n").await.expect("writes");

    let mut buf = [0u8; 1024];
    let read = timeout(Duration::from_secs(3), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the pod still holds a connection whose head never ended");
}

#[tokio::test]
async fn the_publish_api_is_off_without_tokens() {
    let pod = TestPod::open().await;
    let body = r#"{"text":"x","from":{"id":"lab","name":"Lab"}}"#;
    let request = format!(
        "POST /api/v1/rooms/icu-3/messages HTTP/1.1\r\nHost: ward\r\nConnection: close\r\n\
         Authorization: Bearer anything\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let response = support::http_exchange(pod.addr(), &request).await;
    assert_eq!(response.status, 404);
}

#[tokio::test]
async fn drain_turns_unready_closes_with_1012_refuses_upgrades_and_finishes() {
    let mut config = open_config();
    config.drain.delay = Duration::from_millis(200);
    config.drain.spread = Duration::from_millis(200);
    let pod = TestPod::start(config).await;
    let (addr, url) = (pod.addr(), pod.url());
    let mut alice = pod.client("alice").await;
    let mut bob = pod.client("bob").await;
    // Not read until the end: its task waits for a close reply that does
    // not come, which keeps the pod serving while upgrades are checked.
    let mut holdout = pod.client("carol").await;
    assert_eq!(http_get(addr, "/readyz").await.status, 200);

    let started = Instant::now();
    let draining = tokio::spawn(pod.server.drain());
    // Let the drain take its first step; it must not wait to turn unready.
    tokio::task::yield_now().await;
    let unready = http_get(addr, "/readyz").await;
    assert_eq!(unready.status, 503, "not ready at once: {}", unready.body);
    assert_eq!(unready.json()["ready"], false, "{}", unready.body);

    assert_eq!(alice.expect_close().await.0, 1012);
    assert_eq!(bob.expect_close().await.0, 1012);
    assert!(started.elapsed() >= Duration::from_millis(200), "closes wait for drain.delay");
    assert_eq!(upgrade_status(&url, None).await, 503, "upgrades after the delay");

    assert_eq!(holdout.expect_close().await.0, 1012);
    let finished = timeout(support::DEADLINE, draining).await.expect("drain ends in time");
    assert!(finished.expect("the drain task"), "every connection ended in time");
}
