//! One WebSocket connection: the `hello` handshake, then a loop that carries
//! out client frames in order and writes the connection's outbound queue.
//!
//! Replies go straight to the socket; room events arrive through the
//! [`Outbox`] and are written in batches, one flush per batch.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket};
use tokio::time::{Instant, timeout};
use tracing::{Instrument, debug, debug_span, info};

use crate::auth::{self, HelloError, Identity};
use crate::broker::{BrokerError, ConnId, MessageMark, RoomEvent};
use crate::outbox::{CloseRequest, Outbound, Outbox};
use crate::pod::Pod;
use crate::protocol::{self, ClientFrame, ErrorCode, Ref, ServerFrame, close};

mod handlers;
mod joined;

use joined::{Joined, JoinedRooms};

/// How long a close frame may take to reach a peer that reads slowly.
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// How long a broker call may take before the client gets `unavailable`.
const BROKER_DEADLINE: Duration = Duration::from_secs(3);
/// Refused frames in a row that make the pod close the connection (4429).
const RATE_STRIKES: u32 = 20;

/// Serves one upgraded WebSocket until it closes.
///
/// An idle connection's whole state is this future, so it is kept small:
/// the socket lives in one box, and futures that are rarely live (the
/// handshake, frame handling, writes, goodbyes) are boxed while they run.
pub fn serve(pod: Arc<Pod>, socket: WebSocket) -> impl Future<Output = ()> {
    pod.metrics.connections_opened.inc();
    // A debug-level span: at the usual info level it costs nothing, which
    // matters with a hundred thousand idle connections; the lifecycle and
    // warning events carry `conn.id` and `user.id` themselves.
    let span = debug_span!("conn", conn.id = tracing::field::Empty, user.id = tracing::field::Empty,
        node.id = %pod.config.node_id);

    run(pod, Box::new(socket)).instrument(span)
}

async fn run(pod: Arc<Pod>, mut socket: Box<WebSocket>) {
    let outbox = Outbox::new(pod.config.limits.outbound_queue);
    let conn = pod.register(outbox.clone());
    tracing::Span::current().record("conn.id", conn);

    // Bound in one statement, so that nothing of the handshake stays in
    // the task's state while the session runs.
    let (mut session, reference) = match Box::pin(greet(&pod, &mut socket, conn, &outbox)).await {
        Ok((identity, reference)) => (Session::new(pod.clone(), conn, identity, outbox), reference),
        Err(request) => return Box::pin(finish(&pod, &mut socket, conn, end_for(request))).await,
    };
    let end = session.serve(&mut socket, reference).await;
    Box::pin(finish(&pod, &mut socket, conn, end)).await;
}

/// Forgets a connection that ended and says goodbye when the pod ends it.
async fn finish(pod: &Pod, socket: &mut WebSocket, conn: ConnId, end: End) {
    pod.unregister(conn);
    pod.metrics.connections_closed.with_label_values(&[end.label()]).inc();
    match end {
        End::Close(request) => {
            info!(
                conn.id = conn,
                code = request.code,
                reason = request.label,
                "connection closed by pod"
            );
            say_goodbye(socket, request).await;
        }
        End::ClientClosed | End::ClientGone => {
            debug!(conn.id = conn, reason = end.label(), "connection closed by client")
        }
    }
}

/// How a connection ended.
enum End {
    /// The client sent a close frame.
    ClientClosed,
    /// The client vanished without a close frame.
    ClientGone,
    /// The pod closes it with this code.
    Close(CloseRequest),
}

impl End {
    fn label(&self) -> &'static str {
        match self {
            End::ClientClosed => "normal",
            End::ClientGone => "client_gone",
            End::Close(request) => request.label,
        }
    }
}

const fn closing(code: u16, reason: &'static str, label: &'static str) -> CloseRequest {
    CloseRequest { code, reason, label }
}

/// Waits for `hello` and proves the identity in it; a drain that starts
/// meanwhile ends the wait.
async fn greet(
    pod: &Pod,
    socket: &mut WebSocket,
    conn: ConnId,
    outbox: &Outbox,
) -> Result<(Identity, Option<Ref>), CloseRequest> {
    let waiting = timeout(pod.config.limits.hello_timeout, first_data_frame(socket));
    let first = tokio::select! {
        request = close_request(outbox) => return Err(request),
        first = waiting => first,
    };
    let first = match first {
        Err(_) => return Err(closing(close::HELLO_TIMEOUT, "no hello in time", "hello_timeout")),
        Ok(None) => return Err(closing(close::NORMAL, "", "client_gone")),
        Ok(Some(Err(err))) => return Err(read_error(&err)),
        Ok(Some(Ok(message))) => message,
    };

    let WsMessage::Text(text) = first else {
        return Err(closing(close::PROTOCOL, "first frame must be a hello", "protocol"));
    };
    let (hello, reference) = match protocol::decode(&text) {
        Ok((ClientFrame::Hello(hello), reference)) => (hello, reference),
        _ => return Err(closing(close::PROTOCOL, "first frame must be a hello", "protocol")),
    };
    pod.metrics.frames_received.with_label_values(&["hello"]).inc();

    let identity = auth::identify(pod.verifier.as_deref(), hello).map_err(|err| match err {
        HelloError::Malformed(_) => closing(close::PROTOCOL, "invalid hello", "protocol"),
        HelloError::Unauthorized(cause) => {
            tracing::warn!(conn.id = conn, cause = %cause, "hello refused");
            closing(close::UNAUTHORIZED, "unauthorized", "unauthorized")
        }
    })?;
    Ok((identity, reference))
}

/// Resolves when the pod asks the connection to close.
async fn close_request(outbox: &Outbox) -> CloseRequest {
    loop {
        if let Some(request) = outbox.close_requested() {
            return request;
        }
        outbox.woken().await;
    }
}

/// The first frame that is not a ping or pong (those are answered below us).
async fn first_data_frame(socket: &mut WebSocket) -> Option<Result<WsMessage, axum::Error>> {
    loop {
        match socket.recv().await? {
            Ok(WsMessage::Ping(_) | WsMessage::Pong(_)) => continue,
            other => return Some(other),
        }
    }
}

/// The close a read error earns: 1009 for an oversized frame.
fn read_error(err: &axum::Error) -> CloseRequest {
    let inner = std::error::Error::source(err);
    let too_large = inner
        .and_then(|e| e.downcast_ref::<tungstenite::Error>())
        .is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)));
    if too_large {
        closing(close::TOO_LARGE, "frame too large", "too_large")
    } else {
        closing(close::NORMAL, "", "client_gone")
    }
}

/// Sends a close frame, then lets the peer answer so it is not lost to a reset.
async fn say_goodbye(socket: &mut WebSocket, request: CloseRequest) {
    if request.label == "client_gone" {
        return;
    }
    let frame = CloseFrame { code: request.code, reason: Utf8Bytes::from_static(request.reason) };
    if timeout(CLOSE_GRACE, socket.send(WsMessage::Close(Some(frame)))).await.is_err() {
        return;
    }
    let _drained =
        timeout(Duration::from_secs(2), async { while let Some(Ok(_)) = socket.recv().await {} })
            .await;
}

/// Token bucket of client frames.
struct RateLimit {
    tokens: f64,
    updated: Instant,
    strikes: u32,
}

/// The state of one connection after `welcome`.
pub(crate) struct Session {
    pod: Arc<Pod>,
    conn: ConnId,
    identity: Identity,
    outbox: Arc<Outbox>,
    rooms: JoinedRooms,
    rate: RateLimit,
}

impl Session {
    fn new(pod: Arc<Pod>, conn: ConnId, identity: Identity, outbox: Arc<Outbox>) -> Self {
        let rate =
            RateLimit { tokens: pod.config.limits.burst, updated: Instant::now(), strikes: 0 };
        Self { pod, conn, identity, outbox, rooms: JoinedRooms::default(), rate }
    }

    /// Serves a connection whose `hello` was accepted, then leaves its rooms.
    async fn serve(&mut self, socket: &mut WebSocket, reference: Option<Ref>) -> End {
        const TOO_MANY: CloseRequest = CloseRequest {
            code: close::RATE_LIMITED,
            reason: "too many connections",
            label: "rate_limited",
        };
        let user = self.identity.user.id.clone();
        tracing::Span::current().record("user.id", &*user);
        if !self.pod.admit_user(&user) {
            tracing::warn!(conn.id = self.conn, user.id = %user, "connection refused: too many for this user");
            return End::Close(TOO_MANY);
        }
        if let Some(exp) = self.identity.expires_at {
            self.pod.expiries.watch(self.conn, exp, &self.outbox);
        }

        let end = self.welcome_and_loop(socket, reference.as_ref()).await;
        Box::pin(self.leave_all()).await;
        self.pod.release_user(&user);
        end
    }

    /// Sends `welcome`, then serves frames until the connection ends.
    async fn welcome_and_loop(&mut self, socket: &mut WebSocket, reference: Option<&Ref>) -> End {
        let conn = format!("{}-{}", self.pod.config.node_id, self.conn);
        let welcome = ServerFrame::Welcome {
            reference,
            conn: &conn,
            user: &self.identity.user,
            node: &self.pod.config.node_id,
            protocol: protocol::PROTOCOL_VERSION,
        };
        if let Err(end) = Box::pin(self.reply(socket, welcome)).await {
            return end;
        }
        info!(conn.id = self.conn, user.id = %self.identity.user.id, "connection ready");

        loop {
            tokio::select! {
                biased;
                _ = self.outbox.woken() => {
                    if let Err(end) = Box::pin(self.write_queued(socket)).await {
                        return end;
                    }
                }
                incoming = socket.recv() => {
                    // A reply may have taken the wake-up meant for queued
                    // events, so look at the queue after every frame.
                    if let Err(end) = Box::pin(self.on_incoming(socket, incoming)).await {
                        return end;
                    }
                    if let Err(end) = Box::pin(self.write_queued(socket)).await {
                        return end;
                    }
                }
            }
        }
    }

    /// Handles whatever the socket produced.
    async fn on_incoming(
        &mut self,
        socket: &mut WebSocket,
        incoming: Option<Result<WsMessage, axum::Error>>,
    ) -> Result<(), End> {
        self.outbox.peer_alive();
        let message = match incoming {
            None => return Err(End::ClientGone),
            Some(Err(err)) => return Err(end_for(read_error(&err))),
            Some(Ok(message)) => message,
        };
        match message {
            WsMessage::Text(text) => self.on_text(socket, &text).await,
            WsMessage::Binary(_) => {
                self.pod.metrics.frames_received.with_label_values(&["invalid"]).inc();
                let _charged = self.admit();
                let refusal = Refusal::new(
                    ErrorCode::BadRequest,
                    "binary frames are not accepted; send JSON text",
                );
                self.refuse(socket, None, refusal).await
            }
            WsMessage::Close(_) => Err(End::ClientClosed),
            WsMessage::Ping(_) | WsMessage::Pong(_) => Ok(()),
        }
    }

    /// Decodes a text frame, checks it, and carries it out.
    async fn on_text(&mut self, socket: &mut WebSocket, text: &str) -> Result<(), End> {
        // Every data frame costs a token, even one that is refused for
        // another reason, so that no kind of frame escapes the rate limit.
        let admitted = self.admit();

        let (frame, reference) = match protocol::decode(text) {
            Ok(decoded) => decoded,
            Err(err) => {
                self.pod.metrics.frames_received.with_label_values(&["invalid"]).inc();
                let refusal = Refusal::new(ErrorCode::BadRequest, err.reason);
                return self.refuse(socket, err.reference.as_ref(), refusal).await;
            }
        };
        self.pod.metrics.frames_received.with_label_values(&[frame.kind()]).inc();

        // The checks come first: their codes win over `rate_limited`.
        match self.check(&frame).and(admitted) {
            Ok(()) => self.carry_out(socket, frame, reference.as_ref()).await,
            Err(refusal) => self.refuse(socket, reference.as_ref(), refusal).await,
        }
    }

    /// Answers a refused frame; closes with 4429 a client that keeps
    /// exceeding the rate limit.
    async fn refuse(
        &mut self,
        socket: &mut WebSocket,
        reference: Option<&Ref>,
        refusal: Refusal,
    ) -> Result<(), End> {
        self.reply(socket, error_frame(reference, refusal.code, &refusal.message)).await?;
        if self.rate.strikes >= RATE_STRIKES {
            return Err(End::Close(closing(
                close::RATE_LIMITED,
                "rate limit exceeded",
                "rate_limited",
            )));
        }
        Ok(())
    }

    /// Takes one token from the bucket, or refuses the frame.
    fn admit(&mut self) -> Result<(), Refusal> {
        let limits = &self.pod.config.limits;
        let now = Instant::now();
        let refill = now.duration_since(self.rate.updated).as_secs_f64() * limits.messages_per_sec;
        self.rate.tokens = (self.rate.tokens + refill).min(limits.burst);
        self.rate.updated = now;

        if self.rate.tokens >= 1.0 {
            self.rate.tokens -= 1.0;
            self.rate.strikes = 0;
            return Ok(());
        }
        self.rate.strikes += 1;
        self.pod.metrics.rate_limited_frames.inc();
        Err(Refusal::new(ErrorCode::RateLimited, "too many frames; slow down"))
    }

    /// Writes every queued frame, then flushes once.
    async fn write_queued(&mut self, socket: &mut WebSocket) -> Result<(), End> {
        loop {
            let batch = self.outbox.take_all().map_err(End::Close)?;
            if batch.is_empty() {
                return Ok(());
            }
            self.write_batch(socket, batch).await?;
        }
    }

    /// Feeds one batch to the socket and flushes it, unless a close comes first.
    async fn write_batch(
        &self,
        socket: &mut WebSocket,
        batch: VecDeque<Outbound>,
    ) -> Result<(), End> {
        use futures_util::SinkExt;

        let now = crate::broker::now_ms();
        let mut sent = 0;
        let write = async {
            for frame in batch {
                let message = match frame {
                    // Pings are control frames: not counted in `frames_sent`.
                    Outbound::Ping => {
                        socket.feed(WsMessage::Ping(Default::default())).await?;
                        continue;
                    }
                    Outbound::Notice(frame) => WsMessage::Text(frame),
                    Outbound::Event { room, frame, message } => {
                        if !self.wants(&room, message.as_ref()) {
                            continue;
                        }
                        if let Some(mark) = message {
                            self.record_lag(now, mark);
                        }
                        WsMessage::Text(frame)
                    }
                };
                socket.feed(message).await?;
                sent += 1;
            }
            socket.flush().await
        };
        self.until_close_requested(write).await?.map_err(|_| End::ClientGone)?;
        self.pod.metrics.frames_sent.inc_by(sent);
        Ok(())
    }

    /// Runs a write, but gives up on it when a close is requested meanwhile.
    async fn until_close_requested<F: Future>(&self, write: F) -> Result<F::Output, End> {
        tokio::pin!(write);
        loop {
            tokio::select! {
                output = &mut write => return Ok(output),
                _ = self.outbox.woken() => {
                    if let Some(request) = self.outbox.close_requested() {
                        return Err(End::Close(request));
                    }
                }
            }
        }
    }

    /// Whether a queued room event should still be written to this connection.
    fn wants(&self, room: &Arc<str>, message: Option<&MessageMark>) -> bool {
        let Some(joined) = self.rooms.get(room) else { return false };
        match (message, joined.watermark) {
            (Some(mark), Some(watermark)) => mark.id > watermark,
            _ => true,
        }
    }

    /// Records the time from a message's publish to its write.
    fn record_lag(&self, now: i64, mark: MessageMark) {
        let lag_ms = (now - mark.published_at).max(0) as f64;
        self.pod.metrics.delivery_lag.observe(lag_ms / 1000.0);
    }

    /// Writes one reply frame right away.
    async fn reply(&self, socket: &mut WebSocket, frame: ServerFrame<'_>) -> Result<(), End> {
        let send = socket.send(WsMessage::Text(frame.encode()));
        self.until_close_requested(send).await?.map_err(|_| End::ClientGone)?;
        self.pod.metrics.frames_sent.inc();
        Ok(())
    }

    /// Runs a broker call with the deadline, timing it for the metrics.
    async fn broker<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, BrokerError>>,
    ) -> Result<T, Refusal> {
        let started = std::time::Instant::now();
        let result = match timeout(BROKER_DEADLINE, call).await {
            Ok(result) => result,
            Err(_) => Err(BrokerError::Unavailable("timed out".into())),
        };
        let metrics = &self.pod.metrics;
        metrics.broker_duration.with_label_values(&[op]).observe(started.elapsed().as_secs_f64());
        if let Err(err @ BrokerError::Unavailable(_)) = &result {
            metrics.broker_errors.with_label_values(&[op]).inc();
            tracing::warn!(conn.id = self.conn, op, error = %err, "broker call failed");
        }
        result.map_err(Refusal::from)
    }

    /// Sends an event to the room's other connections through the broker.
    async fn announce(&self, room: &Arc<str>, frame: ServerFrame<'_>) -> Result<(), Refusal> {
        let event = RoomEvent {
            room: room.clone(),
            frame: frame.encode(),
            exclude: Some(self.conn),
            message: None,
        };
        self.broker("broadcast", self.pod.broker.broadcast(event)).await
    }
}

/// Why a frame was not carried out.
#[derive(Debug)]
pub(crate) struct Refusal {
    code: ErrorCode,
    message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

impl From<BrokerError> for Refusal {
    fn from(err: BrokerError) -> Self {
        match err {
            BrokerError::Unavailable(_) => Refusal::new(
                ErrorCode::Unavailable,
                "messaging is briefly unavailable; retry shortly",
            ),
            BrokerError::BadRequest(text) => Refusal::new(ErrorCode::BadRequest, text),
            BrokerError::Forbidden(text) => Refusal::new(ErrorCode::Forbidden, text),
        }
    }
}

fn end_for(request: CloseRequest) -> End {
    if request.label == "client_gone" { End::ClientGone } else { End::Close(request) }
}

fn error_frame<'a>(
    reference: Option<&'a Ref>,
    code: ErrorCode,
    message: &'a str,
) -> ServerFrame<'a> {
    ServerFrame::Error { reference, code, message }
}
