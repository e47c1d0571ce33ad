//! The pod's pub/sub connection: one subscription per room with local
//! members (sharded, per slot owner, in cluster mode), and the delivery of
//! what arrives on it to the pod's [`EventSink`](crate::broker::EventSink).
//!
//! One task reads every push, so a room's messages are delivered in order.
//! It keeps per room the id of the last message delivered: duplicates are
//! skipped, and after the connection was lost the messages stored meanwhile
//! are read from the stream ("filling the gap") before live ones go on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, RedisResult,
    Value,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::envelope::{self, Header};
use super::keys::room_of_channel;
use super::link::{CALL_TIMEOUT, CONNECT_TIMEOUT};
use super::{Shared, exclusive};
use crate::broker::{BrokerError, MessageMark, RoomEvent};
use crate::protocol::{ServerFrame, parse_id};

/// Messages read from the stream at once when filling a gap.
const FILL_BATCH: usize = 500;
/// How often an idle pub/sub connection to one server is pinged, to find a
/// connection that died without a word (a vanished host sends no reset).
const HEARTBEAT: Duration = Duration::from_secs(5);
/// First and longest pause between reconnection attempts.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

/// The pub/sub connection of one server or of a cluster.
#[derive(Clone)]
enum PubConn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl PubConn {
    async fn subscribe(&mut self, channels: Vec<String>) -> RedisResult<()> {
        match self {
            PubConn::Single(conn) => conn.subscribe(channels).await,
            // One call per channel: channels of different slots live apart.
            PubConn::Cluster(conn) => {
                for channel in channels {
                    conn.ssubscribe(channel).await?;
                }
                Ok(())
            }
        }
    }

    async fn unsubscribe(&mut self, channel: String) -> RedisResult<()> {
        match self {
            PubConn::Single(conn) => conn.unsubscribe(channel).await,
            PubConn::Cluster(conn) => conn.sunsubscribe(channel).await,
        }
    }
}

/// What the pod knows of one subscribed room.
struct RoomSub {
    /// Local members' `subscribe` calls not yet matched by `unsubscribe`.
    holders: usize,
    /// Id of the last message delivered (or stored before subscribing).
    last: Option<(u64, u64)>,
    /// Messages may have been missed: fill from the stream before going on.
    gap: bool,
}

/// Pub/sub state of the pod.
pub(super) struct Subscriber {
    url: String,
    cluster: bool,
    rooms: Mutex<HashMap<Arc<str>, RoomSub>>,
    /// The live connection, `None` while reconnecting.
    conn: Mutex<Option<PubConn>>,
    /// Orders subscription changes, so an unsubscribe never overtakes the
    /// next subscribe of the same room.
    changes: tokio::sync::Mutex<()>,
    /// Asks the task to fill the rooms that have a gap.
    refill: mpsc::UnboundedSender<()>,
    refill_rx: Mutex<Option<mpsc::UnboundedReceiver<()>>>,
    connected: watch::Sender<bool>,
}

impl Subscriber {
    /// Pub/sub state for `url`, not connected yet.
    pub(super) fn new(url: &str, cluster: bool) -> Result<Self, String> {
        url.into_connection_info().map_err(|e| format!("redis.url: {e}"))?;
        let (refill, refill_rx) = mpsc::unbounded_channel();
        Ok(Self {
            url: url.into(),
            cluster,
            rooms: Mutex::new(HashMap::new()),
            conn: Mutex::new(None),
            changes: tokio::sync::Mutex::new(()),
            refill,
            refill_rx: Mutex::new(Some(refill_rx)),
            connected: watch::channel(false).0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, RoomSub>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn current(&self) -> Option<PubConn> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_current(&self, conn: Option<PubConn>) {
        self.connected.send_replace(conn.is_some());
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = conn;
    }

    /// Waits until the connection is up, at most `wait`.
    pub(super) async fn wait_connected(&self, wait: Duration) {
        let mut connected = self.connected.subscribe();
        let _ = timeout(wait, connected.wait_for(|up| *up)).await;
    }

    /// Rooms subscribed now.
    pub(super) fn rooms(&self) -> Vec<Arc<str>> {
        self.lock().keys().cloned().collect()
    }

    /// Asks for the gaps to be filled (Redis answers again).
    pub(super) fn request_refill(&self) {
        // The receiver lives as long as the subscriber task; after it
        // stopped there is nothing to fill.
        let _ignored = self.refill.send(());
    }

    fn mark_all_gaps(&self) {
        for sub in self.lock().values_mut() {
            sub.gap = true;
        }
    }

    /// Opens a pub/sub connection whose pushes go to the returned receiver.
    async fn connect(&self) -> RedisResult<(PubConn, mpsc::UnboundedReceiver<PushInfo>)> {
        let (pushes, receiver) = mpsc::unbounded_channel();
        let conn = if self.cluster {
            let client = ClusterClient::builder(vec![self.url.as_str()])
                .use_protocol(ProtocolVersion::RESP3)
                .push_sender(pushes)
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(CALL_TIMEOUT)
                .build()?;
            PubConn::Cluster(client.get_async_connection().await?)
        } else {
            let info = self.url.as_str().into_connection_info()?;
            let resp3 = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
            let client = redis::Client::open(info.set_redis_settings(resp3))?;
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(CALL_TIMEOUT))
                .set_push_sender(pushes);
            PubConn::Single(client.get_multiplexed_async_connection_with_config(&config).await?)
        };
        Ok((conn, receiver))
    }
}

/// Why the push loop ended.
enum Pumped {
    Stopped,
    Lost,
}

impl Shared {
    /// Starts receiving a room's events (counted: see [`RoomSub::holders`]).
    pub(super) async fn subscribe(&self, room: &str) -> Result<(), BrokerError> {
        let subs = &self.subs;
        let _ordered = subs.changes.lock().await;
        let first = {
            let mut rooms = subs.lock();
            let sub =
                rooms.entry(room.into()).or_insert(RoomSub { holders: 0, last: None, gap: false });
            sub.holders += 1;
            sub.holders == 1
        };
        if !first {
            return Ok(());
        }

        // Messages up to here are the joining member's to read; the gap
        // after an outage is counted from the last one.
        let subscribing = async {
            let newest = self.newest_id(room).await?;
            if let Some(sub) = subs.lock().get_mut(room) {
                sub.last = Some(sub.last.map_or(newest, |last| last.max(newest)));
            }
            let mut conn = subs.current().ok_or_else(unreachable)?;
            let channel = self.keys(room).channel();
            conn.subscribe(vec![channel]).await.map_err(|e| BrokerError::Unavailable(e.to_string()))
        };
        // Both steps together stay within one call's time.
        timeout(CALL_TIMEOUT, subscribing)
            .await
            .unwrap_or_else(|_| Err(BrokerError::Unavailable("subscribe timed out".into())))
    }

    /// Stops receiving a room's events once no local member holds it.
    pub(super) async fn unsubscribe(&self, room: &str) {
        let subs = &self.subs;
        let _ordered = subs.changes.lock().await;
        {
            let mut rooms = subs.lock();
            let Some(sub) = rooms.get_mut(room) else { return };
            sub.holders = sub.holders.saturating_sub(1);
            if sub.holders > 0 {
                return;
            }
            rooms.remove(room);
        }
        let Some(mut conn) = subs.current() else { return };
        let channel = self.keys(room).channel();
        // A stale subscription only costs events that find no member.
        match timeout(CALL_TIMEOUT, conn.unsubscribe(channel)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::debug!(room, error = %err, "unsubscribe failed"),
            Err(_) => tracing::debug!(room, "unsubscribe timed out"),
        }
    }

    /// Keeps the pub/sub connection up until stopped: connect, subscribe
    /// every held room, fill the gaps, then deliver pushes.
    pub(super) async fn run_subscriber(self: Arc<Self>, stop: CancellationToken) {
        let taken = self.subs.refill_rx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(mut refill) = taken else { return };
        let mut backoff = BACKOFF.0;
        let mut warned = false;
        loop {
            let connecting = timeout(CONNECT_TIMEOUT * 2, self.subs.connect());
            match connecting.await {
                Ok(Ok((conn, pushes))) => {
                    backoff = BACKOFF.0;
                    warned = false;
                    // A cluster watches its own connections: its sender
                    // stays here, unused, while the pushes are pumped.
                    let (dead_tx, dead) = oneshot::channel();
                    let _unused = match &conn {
                        PubConn::Single(conn) => {
                            tokio::spawn(heartbeat(conn.clone(), dead_tx));
                            None
                        }
                        PubConn::Cluster(_) => Some(dead_tx),
                    };
                    self.resubscribe(conn).await;
                    if let Pumped::Stopped = self.pump(pushes, dead, &mut refill, &stop).await {
                        return;
                    }
                    self.subs.set_current(None);
                    self.subs.mark_all_gaps();
                    tracing::warn!("pub/sub connection lost; reconnecting");
                }
                Ok(Err(err)) if !warned => {
                    warned = true;
                    tracing::warn!(error = %err, "pub/sub connection failed; retrying");
                }
                _ => {}
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF.1);
        }
    }

    /// Makes `conn` current, subscribes every held room on it and fills
    /// what was missed while there was no connection.
    async fn resubscribe(&self, mut conn: PubConn) {
        let rooms = {
            let _ordered = self.subs.changes.lock().await;
            self.subs.set_current(Some(conn.clone()));
            let rooms = self.subs.rooms();
            let channels: Vec<String> =
                rooms.iter().map(|room| self.keys(room).channel()).collect();
            if !channels.is_empty()
                && let Err(err) = conn.subscribe(channels).await
            {
                tracing::warn!(error = %err, "resubscribing failed");
            }
            rooms
        };
        if rooms.is_empty() {
            return;
        }
        tracing::info!(rooms = rooms.len(), "pub/sub connection restored; filling gaps");
        self.fill_gaps().await;
        self.sink.resubscribed();
    }

    /// Delivers pushes until the connection is lost or the broker stops.
    async fn pump(
        &self,
        mut pushes: mpsc::UnboundedReceiver<PushInfo>,
        mut dead: oneshot::Receiver<()>,
        refill: &mut mpsc::UnboundedReceiver<()>,
        stop: &CancellationToken,
    ) -> Pumped {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Pumped::Stopped,
                Ok(()) = &mut dead => return Pumped::Lost,
                Some(()) = refill.recv() => self.fill_gaps().await,
                push = pushes.recv() => match push {
                    None => return Pumped::Lost,
                    Some(push) if push.kind == PushKind::Disconnection => {
                        // A cluster reconnects that node and resubscribes by
                        // itself; one server's connection is replaced here.
                        self.subs.mark_all_gaps();
                        if !self.cluster {
                            return Pumped::Lost;
                        }
                    }
                    Some(push) => self.on_push(push).await,
                },
            }
        }
    }

    async fn on_push(&self, push: PushInfo) {
        let mut data = push.data.into_iter();
        let Some(Value::BulkString(channel)) = data.next() else { return };
        let Some(room) = std::str::from_utf8(&channel)
            .ok()
            .and_then(|channel| room_of_channel(&self.prefix, channel))
        else {
            return;
        };
        match (push.kind, data.next()) {
            (PushKind::Message | PushKind::SMessage, Some(Value::BulkString(payload))) => {
                self.on_event(room, Bytes::from(payload)).await;
            }
            (PushKind::Subscribe | PushKind::SSubscribe, _) if self.has_gap(room) => {
                self.fill(room).await;
            }
            _ => {}
        }
    }

    /// Hands one event to the local members, once and in order.
    async fn on_event(&self, room: &str, payload: Bytes) {
        let Some((header, frame)) = envelope::decode(&payload) else {
            tracing::warn!(room, "malformed event on the room's channel skipped");
            return;
        };
        let (exclude, message) = match header {
            Header::Event { node, conn } => {
                ((node == &*self.node && conn != 0).then_some(conn), None)
            }
            Header::Message(mark) => (None, Some(mark)),
        };
        let Some(mark) = message else {
            self.sink.deliver(RoomEvent { room: room.into(), frame, exclude, message: None });
            return;
        };

        // A gap is filled from the stream first; the stream holds this
        // message too, so it is then skipped below as already delivered.
        if self.has_gap(room) && !self.fill(room).await {
            return;
        }
        let Some(room) = self.advance(room, mark.id) else { return };
        self.sink.deliver(RoomEvent { room, frame, exclude: None, message: Some(mark) });
    }

    fn has_gap(&self, room: &str) -> bool {
        self.subs.lock().get(room).is_some_and(|sub| sub.gap)
    }

    /// Records `id` as delivered; `None` when it was already, or the room is
    /// no longer subscribed.
    fn advance(&self, room: &str, id: (u64, u64)) -> Option<Arc<str>> {
        let mut rooms = self.subs.lock();
        let key = rooms.get_key_value(room)?.0.clone();
        let sub = rooms.get_mut(room)?;
        if sub.last.is_some_and(|last| id <= last) {
            return None;
        }
        sub.last = Some(id);
        Some(key)
    }

    /// Fills every room that has a gap.
    async fn fill_gaps(&self) {
        let rooms: Vec<Arc<str>> =
            self.subs.lock().iter().filter(|(_, sub)| sub.gap).map(|(r, _)| r.clone()).collect();
        for room in rooms {
            self.fill(&room).await;
        }
    }

    /// Delivers the room's messages stored after the last one delivered;
    /// false when the stream could not be read (the gap stays).
    async fn fill(&self, room: &str) -> bool {
        let last = match self.subs.lock().get_mut(room) {
            Some(sub) => {
                sub.gap = true;
                sub.last
            }
            None => return true,
        };
        let Some(mut after) = last else { return self.start_at_newest(room).await };

        loop {
            let slice = match self.read(room, "XRANGE", exclusive(after), "+", FILL_BATCH).await {
                Ok(slice) => slice,
                Err(err) => {
                    tracing::warn!(room, error = %err, "gap not filled yet");
                    return false;
                }
            };
            let complete = slice.messages.len() < FILL_BATCH;
            for message in slice.messages {
                let Some(id) = parse_id(&message.id) else { continue };
                after = id;
                let Some(room) = self.advance(room, id) else { continue };
                let mark = MessageMark { id, published_at: message.ts };
                let frame = ServerFrame::NewMessage { message: &message }.encode();
                self.sink.deliver(RoomEvent { room, frame, exclude: None, message: Some(mark) });
            }
            if complete {
                break;
            }
        }
        if let Some(sub) = self.subs.lock().get_mut(room) {
            sub.gap = false;
        }
        true
    }

    /// A room subscribed without a known position starts at its newest message.
    async fn start_at_newest(&self, room: &str) -> bool {
        let Ok(newest) = self.newest_id(room).await else { return false };
        if let Some(sub) = self.subs.lock().get_mut(room) {
            sub.last = Some(sub.last.map_or(newest, |last| last.max(newest)));
            sub.gap = false;
        }
        true
    }
}

/// Pings the connection every [`HEARTBEAT`]; says when a ping fails, and
/// ends when nobody listens any more.
async fn heartbeat(mut conn: MultiplexedConnection, mut dead: oneshot::Sender<()>) {
    loop {
        tokio::select! {
            _ = dead.closed() => return,
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
        let ping = redis::cmd("PING");
        if !matches!(timeout(CALL_TIMEOUT, ping.query_async::<()>(&mut conn)).await, Ok(Ok(()))) {
            // The receiver may be gone already; then nothing is left to tell.
            let _ignored = dead.send(());
            return;
        }
    }
}

fn unreachable() -> BrokerError {
    BrokerError::Unavailable("the pub/sub connection to Redis is down".into())
}
