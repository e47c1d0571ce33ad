//! Test harness: a real pod on a free loopback port, a WebSocket client that
//! speaks protocol v1 with deadlines, and small HTTP and metrics helpers.
//!
//! Nothing here sleeps for a fixed time: every wait is for a condition, with
//! a deadline that fails the test with a clear message.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use ward::config::Config;
use ward::server::Server;

/// How long a test waits for a frame, a close or a condition.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A configuration for tests: open mode on a free loopback port, no drain
/// pauses, and rate limits high enough that only rate-limit tests meet them.
pub fn open_config() -> Config {
    let mut config = Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        node_id: "test-pod".into(),
        ..Config::default()
    };
    config.drain.delay = Duration::ZERO;
    config.drain.spread = Duration::ZERO;
    config.limits.messages_per_sec = 100_000.0;
    config.limits.burst = 100_000.0;
    config
}

/// A running pod under test.
pub struct TestPod {
    addr: SocketAddr,
    /// The server itself, for `drain()` or `abort()` (which consume it).
    pub server: Server,
}

/// Starts a pod with `config` (its `listen` should use port 0).
pub async fn start(config: Config) -> TestPod {
    TestPod::start(config).await
}

impl TestPod {
    /// Starts a pod with `config`; panics when it cannot start.
    pub async fn start(config: Config) -> TestPod {
        let server = Server::start(config).await.expect("the pod starts");
        TestPod { addr: server.local_addr(), server }
    }

    /// Starts a pod with [`open_config`].
    pub async fn open() -> TestPod {
        TestPod::start(open_config()).await
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The WebSocket URL, `ws://addr/ws`.
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// The HTTP base, `http://addr`.
    pub fn http_base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client that said `hello` as `user` (name = user id).
    pub async fn client(&self, user: &str) -> Client {
        let mut client = Client::connect(&self.url()).await;
        client.hello(user, user).await;
        client
    }

    /// `GET path` on this pod.
    pub async fn get(&self, path: &str) -> HttpResponse {
        http_get(self.addr, path).await
    }

    /// The current value of an unlabelled metric on `/metrics`.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let response = self.get("/metrics").await;
        assert_eq!(response.status, 200, "/metrics answers 200");
        metric_value(&response.body, name)
    }

    /// Waits until the metric `name` satisfies `ok`; returns its value.
    pub async fn wait_metric(&self, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let what = format!("metric {name} to reach the expected value");
        eventually(&what, || async { self.metric(name).await.filter(|v| ok(*v)) }).await
    }
}

/// Polls `probe` until it gives `Some`, failing after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < end, "timed out after {DEADLINE:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A unique `ref` for requests made by the harness.
fn next_ref() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("h{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A protocol v1 client over one WebSocket.
///
/// `recv*` skip WebSocket pings and pongs (tungstenite answers pings) and
/// panic on a close, an error or a timeout, naming what was expected.
pub struct Client {
    socket: Socket,
}

impl Client {
    /// Opens a WebSocket to `url`; panics if the upgrade fails.
    pub async fn connect(url: &str) -> Client {
        let connecting = tokio_tungstenite::connect_async(url);
        let (socket, _) = timeout(DEADLINE, connecting)
            .await
            .unwrap_or_else(|_| panic!("connecting to {url} timed out"))
            .unwrap_or_else(|e| panic!("connecting to {url} failed: {e}"));
        Client { socket }
    }

    /// Sends `hello` in open mode and returns the `welcome`.
    pub async fn hello(&mut self, user: &str, name: &str) -> Value {
        self.send(json!({"type": "hello", "user": user, "name": name})).await;
        let welcome = self.recv().await;
        assert_eq!(welcome["type"], "welcome", "hello is answered by welcome: {welcome}");
        welcome
    }

    /// Sends one JSON frame.
    pub async fn send(&mut self, frame: Value) {
        self.send_raw_text(&frame.to_string()).await;
    }

    /// Sends a text frame as given (it need not be JSON).
    pub async fn send_raw_text(&mut self, text: &str) {
        self.send_message(Message::text(text)).await;
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.send_message(Message::binary(bytes)).await;
    }

    /// Sends a WebSocket-level ping (a control frame, not a protocol `ping`).
    pub async fn send_ws_ping(&mut self) {
        self.send_message(Message::Ping(Vec::new().into())).await;
    }

    /// Sends a `hello` with `token`; returns the `welcome`, or the close
    /// code and reason when the pod refuses the token.
    pub async fn hello_token(&mut self, token: &str) -> Result<Value, (u16, String)> {
        self.send(json!({"type": "hello", "token": token})).await;
        match self.next_frame(DEADLINE).await {
            Ok(Some(frame)) => Ok(frame),
            Ok(None) => panic!("no answer to hello within {DEADLINE:?}"),
            Err(close) => Err(close),
        }
    }

    /// Sends any WebSocket message as given, hand-made frames included.
    pub async fn send_ws(&mut self, message: Message) {
        self.send_message(message).await;
    }

    /// Like [`Client::send_ws`], but returns a failure instead of panicking
    /// (the pod may already have closed the connection).
    pub async fn try_send_ws(&mut self, message: Message) -> Result<(), String> {
        match timeout(DEADLINE, self.socket.send(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("sending took longer than {DEADLINE:?}")),
        }
    }

    /// Writes bytes straight to the TCP socket, beneath the WebSocket layer.
    pub async fn write_raw(&mut self, bytes: &[u8]) {
        let MaybeTlsStream::Plain(stream) = self.socket.get_mut() else {
            panic!("raw writes need a plain TCP connection");
        };
        timeout(DEADLINE, stream.write_all(bytes))
            .await
            .expect("a raw write timed out")
            .expect("a raw write failed");
    }

    async fn send_message(&mut self, message: Message) {
        timeout(DEADLINE, self.socket.send(message))
            .await
            .expect("sending a frame timed out")
            .expect("sending a frame failed");
    }

    /// The next JSON frame, within [`DEADLINE`].
    pub async fn recv(&mut self) -> Value {
        match self.next_frame(DEADLINE).await {
            Ok(Some(frame)) => frame,
            Ok(None) => panic!("expected a frame, got nothing within {DEADLINE:?}"),
            Err(close) => panic!("expected a frame, the connection closed: {close:?}"),
        }
    }

    /// The next JSON frame if one arrives within `wait`, `Ok(None)` if none
    /// does, or `Err(close code and reason)` if the connection closes.
    pub async fn next_frame(&mut self, wait: Duration) -> Result<Option<Value>, (u16, String)> {
        let end = Instant::now() + wait;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let message = match timeout(left, self.socket.next()).await {
                Err(_) => return Ok(None),
                Ok(None) => return Err((0, "stream ended without a close frame".into())),
                Ok(Some(Err(e))) => return Err((0, format!("read error: {e}"))),
                Ok(Some(Ok(message))) => message,
            };
            match message {
                Message::Text(text) => {
                    let value = serde_json::from_str(text.as_str())
                        .unwrap_or_else(|e| panic!("server sent invalid JSON {text:?}: {e}"));
                    return Ok(Some(value));
                }
                Message::Close(frame) => return Err(close_parts(frame)),
                Message::Binary(_) => panic!("server sent a binary frame"),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// The next frame of type `kind`, skipping (and dropping) other frames.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        self.recv_where(&format!("a `{kind}` frame"), |f| f["type"] == kind).await
    }

    /// The next frame that satisfies `want`, dropping the others on the way.
    pub async fn recv_where(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + DEADLINE;
        let mut skipped = Vec::new();
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.next_frame(left).await {
                Ok(Some(frame)) if want(&frame) => return frame,
                Ok(Some(frame)) => skipped.push(frame),
                Ok(None) => panic!("no {what} within {DEADLINE:?}; skipped {skipped:?}"),
                Err(close) => panic!("expected {what}, the connection closed: {close:?}"),
            }
        }
    }

    /// Waits for the close frame, skipping other frames; returns its code
    /// and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        let end = Instant::now() + DEADLINE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.next_frame(left).await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("expected a close within {DEADLINE:?}, none came"),
                Err((0, problem)) => panic!("expected a close frame: {problem}"),
                Err(close) => return close,
            }
        }
    }

    /// Sends `frame` with a fresh `ref` and returns the reply carrying it
    /// (answer or `error`), dropping other frames on the way.
    pub async fn request(&mut self, mut frame: Value) -> Value {
        let reference = next_ref();
        frame["ref"] = json!(reference);
        let what = format!("the reply to {frame}");
        self.send(frame).await;
        self.recv_where(&what, |f| f["ref"] == reference.as_str()).await
    }

    /// Like [`Client::request`], but panics unless the reply has type `kind`.
    pub async fn request_ok(&mut self, frame: Value, kind: &str) -> Value {
        let reply = self.request(frame.clone()).await;
        assert_eq!(reply["type"], kind, "{frame} is answered by {kind}, got {reply}");
        reply
    }

    /// Joins `room` and returns the `room_joined`.
    pub async fn join(&mut self, room: &str) -> Value {
        self.request_ok(json!({"type": "join_room", "room": room}), "room_joined").await
    }

    /// Joins `room` to recover after the message `since`.
    pub async fn join_since(&mut self, room: &str, since: &str) -> Value {
        let frame = json!({"type": "join_room", "room": room, "since": since});
        self.request_ok(frame, "room_joined").await
    }

    /// Leaves `room` and returns the `room_left`.
    pub async fn leave(&mut self, room: &str) -> Value {
        self.request_ok(json!({"type": "leave_room", "room": room}), "room_left").await
    }

    /// Sends a message and returns its `ack`.
    pub async fn say(&mut self, room: &str, text: &str) -> Value {
        let frame = json!({"type": "send_message", "room": room, "text": text});
        self.request_ok(frame, "ack").await
    }

    /// Sends a protocol `ping` and returns every frame that arrived before
    /// its `pong`. Frames are handled in order, so anything caused by
    /// earlier frames has been queued by then.
    pub async fn sync(&mut self) -> Vec<Value> {
        let reference = next_ref();
        self.send(json!({"type": "ping", "ref": reference})).await;
        let end = Instant::now() + DEADLINE;
        let mut before = Vec::new();
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.next_frame(left).await {
                Ok(Some(f)) if f["type"] == "pong" && f["ref"] == reference.as_str() => {
                    return before;
                }
                Ok(Some(frame)) => before.push(frame),
                Ok(None) => panic!("no pong within {DEADLINE:?}; got {before:?}"),
                Err(close) => panic!("expected a pong, the connection closed: {close:?}"),
            }
        }
    }

    /// Closes the connection normally and waits for the server's answer.
    pub async fn close(mut self) {
        let _ = timeout(DEADLINE, self.socket.close(None)).await;
        let _ =
            timeout(DEADLINE, async { while let Some(Ok(_)) = self.socket.next().await {} }).await;
    }
}

fn close_parts(frame: Option<CloseFrame>) -> (u16, String) {
    match frame {
        Some(frame) => (u16::from(frame.code), frame.reason.to_string()),
        None => (1005, String::new()),
    }
}

/// Frames of type `kind` among `frames`.
pub fn of_type<'a>(frames: &'a [Value], kind: &str) -> Vec<&'a Value> {
    frames.iter().filter(|f| f["type"] == kind).collect()
}

/// A plain HTTP answer.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header lines, lower-cased names.
    pub headers: Vec<(String, String)>,
    /// Body as text (de-chunked).
    pub body: String,
}

impl HttpResponse {
    /// The body parsed as JSON; panics when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }

    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// `GET path` over a fresh connection, HTTP/1.1 with `Connection: close`.
pub async fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    http_exchange(addr, &request).await
}

/// `POST path` with a JSON `body` and extra `headers`, over a fresh
/// connection with `Connection: close`.
pub async fn http_post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpResponse {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    http_exchange(addr, &request).await
}

/// Sends a raw HTTP request and reads the whole answer.
pub async fn http_exchange(addr: SocketAddr, request: &str) -> HttpResponse {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = timeout(DEADLINE, exchange)
        .await
        .unwrap_or_else(|_| panic!("HTTP request to {addr} timed out"))
        .unwrap_or_else(|e| panic!("HTTP request to {addr} failed: {e}"));
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> HttpResponse {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("HTTP head ends");
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    HttpResponse { status, headers, body: String::from_utf8_lossy(&body).into_owned() }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&rest[..eol]);
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).expect("chunk size");
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&rest[start..start + size]);
        rest = &rest[start + size + 2..];
    }
    out
}

/// The value of an unlabelled sample `name` in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.trim().parse().ok())
}

/// The `id`s of `new_message` frames, in order.
pub fn message_ids(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f["type"] == "new_message")
        .map(|f| f["message"]["id"].as_str().expect("message id").to_string())
        .collect()
}
