//! The Redis broker: any number of stateless pods serve one set of rooms.
//!
//! A room's messages live in a stream capped at `history.max_len`; storing
//! and publishing are one Lua script, so every pod hears a room's messages
//! in id order. Presence, acknowledgements and read marks are hashes and a
//! sorted set beside it, all under the room's hash tag (see [`keys`]).
//! Each pod holds one command connection ([`link`]), one pub/sub connection
//! ([`subscriber`]) and a presence sweep ([`presence`]).

mod deadlines;
mod envelope;
mod keys;
mod link;
mod presence;
mod scripts;
mod subscriber;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use self::keys::RoomKeys;
use self::link::Link;
use self::presence::LocalPresence;
use self::scripts::Scripts;
use self::subscriber::Subscriber;
use super::{
    Broker, BrokerError, EventSink, Health, Page, PresenceChange, Published, RoomEvent, now_ms,
};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocol::{Acknowledgement, Draft, Message, ReadMark, ServerFrame, User, parse_id};

/// How long a `client_msg_id` is remembered, in seconds.
const RETRY_WINDOW_SECS: u64 = 600;
/// How long `connect` waits for the pub/sub connection.
const FIRST_SUBSCRIBER_WAIT: Duration = Duration::from_secs(2);

/// The broker of a pod that shares its rooms through Redis.
pub struct RedisBroker {
    shared: Arc<Shared>,
    /// Stops the background tasks when the broker is dropped.
    stop: CancellationToken,
}

/// State shared by the broker and its background tasks.
struct Shared {
    /// Command connection and health.
    link: Link,
    /// Pub/sub connection and subscribed rooms.
    subs: Subscriber,
    /// This pod's users per room, refreshed by the sweep.
    local: LocalPresence,
    scripts: Scripts,
    /// Where room events go.
    sink: Arc<dyn EventSink>,
    /// `redis.prefix`.
    prefix: String,
    /// `redis.cluster`: sharded pub/sub.
    cluster: bool,
    /// This pod's id, in presence entries and event envelopes.
    node: Arc<str>,
    /// `history.max_len`.
    max_len: usize,
    /// `history.max_age` in ms: older messages are removed when a room
    /// gets a new one.
    max_age_ms: Option<u128>,
    /// `presence.ttl`.
    presence_ttl: Duration,
}

/// A slice of a room's stream.
struct Slice {
    /// Newest id trimmed away, if any was.
    trimmed: Option<(u64, u64)>,
    /// Messages in the order read.
    messages: Vec<Message>,
}

impl RedisBroker {
    /// Connects to `redis.url` and starts the probe, the subscriber and the
    /// presence sweep. An unreachable Redis is not an error: the pod starts
    /// not ready and connects when Redis answers. A malformed URL is.
    pub async fn connect(
        config: &Config,
        sink: Arc<dyn EventSink>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let url = config.redis.url.as_deref().ok_or("redis.url is not set")?;
        let cluster = config.redis.cluster;
        let shared = Arc::new(Shared {
            link: Link::new(url, cluster, metrics)?,
            subs: Subscriber::new(url, cluster)?,
            local: LocalPresence::default(),
            scripts: Scripts::new(),
            sink,
            prefix: config.redis.prefix.clone(),
            cluster,
            node: config.node_id.as_str().into(),
            max_len: config.history.max_len,
            max_age_ms: config.history.max_age.map(|age| age.as_millis()),
            presence_ttl: config.presence.ttl,
        });

        if !shared.link.probe().await {
            tracing::warn!("Redis is unreachable at start; the pod is not ready until it answers");
        }
        let stop = CancellationToken::new();
        tokio::spawn(run_probe(shared.clone(), stop.clone()));
        tokio::spawn(shared.clone().run_subscriber(stop.clone()));
        tokio::spawn(shared.clone().run_sweeper(stop.clone()));
        shared.subs.wait_connected(FIRST_SUBSCRIBER_WAIT).await;
        Ok(Self { shared, stop })
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Probes Redis until stopped; when it answers again, fills the gaps.
async fn run_probe(shared: Arc<Shared>, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(link::PROBE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {
                if shared.link.probe().await {
                    shared.subs.request_refill();
                }
            }
        }
    }
}

impl Shared {
    fn keys(&self, room: &str) -> RoomKeys {
        RoomKeys::new(&self.prefix, room)
    }

    /// `PUBLISH`, or `SPUBLISH` (sharded) in cluster mode.
    fn publish_command(&self) -> &'static str {
        if self.cluster { "SPUBLISH" } else { "PUBLISH" }
    }

    /// Reads `count` entries with `XRANGE` or `XREVRANGE` from `start` to `end`.
    async fn read(
        &self,
        room: &str,
        command: &'static str,
        start: String,
        end: &str,
        count: usize,
    ) -> Result<Slice, BrokerError> {
        let keys = self.keys(room);
        let mut call = self.scripts.read.prepare_invoke();
        call.key(keys.stream()).key(keys.acks()).key(keys.trimmed());
        call.arg(command).arg(start).arg(end).arg(count);
        let raw: Vec<String> =
            self.link.run(|mut conn| async move { call.invoke_async(&mut conn).await }).await?;

        let mut raw = raw.into_iter();
        let trimmed = raw.next().as_deref().and_then(parse_id);
        let mut messages = Vec::new();
        while let (Some(id), Some(json), Some(acks)) = (raw.next(), raw.next(), raw.next()) {
            match stored_message(id, &json, &acks) {
                Ok(message) => messages.push(message),
                Err(err) => tracing::warn!(room, error = %err, "unreadable stored message skipped"),
            }
        }
        Ok(Slice { trimmed, messages })
    }

    /// Id of the room's newest message, `0-0` for an empty room.
    async fn newest_id(&self, room: &str) -> Result<(u64, u64), BrokerError> {
        let slice = self.read(room, "XREVRANGE", "+".into(), "-", 1).await?;
        Ok(slice.messages.first().and_then(|m| parse_id(&m.id)).unwrap_or((0, 0)))
    }
}

/// A MESSAGE from its stream entry and its acknowledgements.
fn stored_message(id: String, json: &str, acks: &str) -> Result<Message, serde_json::Error> {
    let mut message: Message = serde_json::from_str(json)?;
    message.id = id;
    if message.needs_ack {
        message.acknowledged_by = Some(serde_json::from_str(&format!("[{acks}]"))?);
    }
    Ok(message)
}

/// `(ms-seq`: an exclusive stream bound.
fn exclusive((ms, seq): (u64, u64)) -> String {
    format!("({ms}-{seq}")
}

fn unreadable(err: serde_json::Error) -> BrokerError {
    BrokerError::Unavailable(format!("stored message unreadable: {err}"))
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, mut draft: Draft) -> Result<Published, BrokerError> {
        let shared = &self.shared;
        let keys = shared.keys(&draft.room);
        let client_msg_id = draft.client_msg_id.take();
        // The id comes from the stream, in the script.
        let mut message = draft.into_message(String::new(), now_ms());
        // The script writes the id into `{"id":""`, the start of this JSON.
        let json = serde_json::to_string(&message).map_err(unreadable)?;

        let mut call = shared.scripts.publish.prepare_invoke();
        call.key(keys.stream()).key(keys.trimmed()).key(keys.acks()).key(keys.channel());
        if let Some(client_msg_id) = &client_msg_id {
            call.key(keys.retry(client_msg_id));
        }
        let deadline = message.deadline.map(|d| d.to_string()).unwrap_or_default();
        call.arg(shared.max_len).arg(json).arg(message.ts);
        call.arg(shared.publish_command()).arg(RETRY_WINDOW_SECS);
        call.arg(deadline).arg(shared.deadlines_in_script()).arg(&message.room);
        call.arg(shared.max_age_ms.map(|ms| ms.to_string()).unwrap_or_default());
        let (id, stored, acks, retried): (String, String, String, i64) =
            shared.link.run(|mut conn| async move { call.invoke_async(&mut conn).await }).await?;

        if retried == 1 {
            let first = stored_message(id, &stored, &acks).map_err(unreadable)?;
            return Ok(Published { message: first, duplicate: true });
        }
        if retried == 2 {
            // The first message was trimmed since: its id and time still answer.
            message.ts = stored.parse().unwrap_or(message.ts);
            message.id = id;
            return Ok(Published { message, duplicate: true });
        }
        message.id = id;
        if let (true, Some(deadline)) = (shared.cluster, message.deadline) {
            shared.record_deadline(&message.room, &message.id, deadline).await;
        }
        Ok(Published { message, duplicate: false })
    }

    async fn broadcast(&self, event: RoomEvent) -> Result<(), BrokerError> {
        let shared = &self.shared;
        let payload = envelope::event(&shared.node, event.exclude, &event.frame);
        let mut publish = redis::cmd(shared.publish_command());
        publish.arg(shared.keys(&event.room).channel()).arg(payload);
        shared.link.run(|mut conn| async move { publish.query_async::<()>(&mut conn).await }).await
    }

    async fn recent(&self, room: &str, limit: usize) -> Result<Vec<Message>, BrokerError> {
        let mut slice = self.shared.read(room, "XREVRANGE", "+".into(), "-", limit).await?;
        slice.messages.reverse();
        Ok(slice.messages)
    }

    async fn since(&self, room: &str, since: (u64, u64)) -> Result<Page, BrokerError> {
        let shared = &self.shared;
        let slice = shared.read(room, "XRANGE", exclusive(since), "+", shared.max_len).await?;
        let recovered = slice.trimmed.is_none_or(|trimmed| since >= trimmed);
        Ok(Page { messages: slice.messages, flag: recovered })
    }

    async fn history(
        &self,
        room: &str,
        before: Option<(u64, u64)>,
        limit: usize,
    ) -> Result<Page, BrokerError> {
        let start = before.map_or_else(|| "+".to_string(), exclusive);
        let mut slice = self.shared.read(room, "XREVRANGE", start, "-", limit + 1).await?;
        let more = slice.messages.len() > limit;
        slice.messages.truncate(limit);
        slice.messages.reverse();
        Ok(Page { messages: slice.messages, flag: more })
    }

    async fn presence_add(&self, room: &str, user: &User) -> Result<PresenceChange, BrokerError> {
        self.shared.presence_add(room, user).await
    }

    async fn presence_remove(
        &self,
        room: &str,
        user: &User,
    ) -> Result<PresenceChange, BrokerError> {
        self.shared.presence_remove(room, user).await
    }

    async fn members(&self, room: &str) -> Result<Vec<User>, BrokerError> {
        self.shared.members(room).await
    }

    async fn acknowledge(&self, room: &str, id: &str, by: &User) -> Result<(), BrokerError> {
        let no_such = || BrokerError::BadRequest("no such message in this room".into());
        parse_id(id).ok_or_else(no_such)?;
        let shared = &self.shared;
        let keys = shared.keys(room);
        let ts = now_ms();
        let ack = Acknowledgement { user: by.clone(), ts };
        let ack = serde_json::to_string(&ack).map_err(unreadable)?;
        let frame = ServerFrame::MessageAcknowledged { room, id, by, ts }.encode();

        let mut call = shared.scripts.acknowledge.prepare_invoke();
        call.key(keys.stream()).key(keys.acks()).key(keys.channel());
        call.arg(shared.publish_command()).arg(id).arg(&*by.id).arg(ack);
        call.arg(envelope::event(&shared.node, None, &frame));
        let outcome: String =
            shared.link.run(|mut conn| async move { call.invoke_async(&mut conn).await }).await?;
        match outcome.as_str() {
            "ok" | "again" => Ok(()),
            "missing" => Err(no_such()),
            "no_ack" => {
                Err(BrokerError::BadRequest("this message does not need acknowledgement".into()))
            }
            "own" => Err(BrokerError::Forbidden("you cannot acknowledge your own message".into())),
            other => Err(BrokerError::Unavailable(format!("acknowledge answered {other:?}"))),
        }
    }

    async fn mark_read(&self, room: &str, user: &User, up_to: &str) -> Result<bool, BrokerError> {
        parse_id(up_to)
            .ok_or_else(|| BrokerError::BadRequest("`up_to` is not a message id".into()))?;
        let shared = &self.shared;
        let mut call = shared.scripts.mark_read.prepare_invoke();
        call.key(shared.keys(room).reads()).arg(&*user.id).arg(up_to);
        let moved: i64 =
            shared.link.run(|mut conn| async move { call.invoke_async(&mut conn).await }).await?;
        Ok(moved == 1)
    }

    async fn reads(&self, room: &str, users: &[User]) -> Result<Vec<ReadMark>, BrokerError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let shared = &self.shared;
        let mut hmget = redis::cmd("HMGET");
        hmget.arg(shared.keys(room).reads());
        for user in users {
            hmget.arg(&*user.id);
        }
        let marks: Vec<Option<String>> =
            shared.link.run(|mut conn| async move { hmget.query_async(&mut conn).await }).await?;
        Ok(users
            .iter()
            .zip(marks)
            .filter_map(|(user, up_to)| Some(ReadMark { user: user.clone(), up_to: up_to? }))
            .collect())
    }

    async fn claim_overdue(&self, now_ms: i64) -> Result<Vec<Message>, BrokerError> {
        self.shared.claim_overdue(now_ms).await
    }

    async fn subscribe(&self, room: &str) -> Result<(), BrokerError> {
        self.shared.subscribe(room).await
    }

    async fn unsubscribe(&self, room: &str) {
        self.shared.unsubscribe(room).await;
    }

    fn health(&self) -> Health {
        self.shared.link.health()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Priority;

    fn draft(needs_ack: bool) -> Draft {
        Draft {
            room: "icu-3".into(),
            from: User { id: "alice".into(), name: "Alice".into() },
            text: "a \"quoted\" line\nand more".into(),
            priority: Priority::Urgent,
            ack_within: needs_ack.then_some(Duration::from_secs(60)),
            client_msg_id: None,
        }
    }

    #[test]
    fn the_stored_json_starts_with_an_empty_id() {
        let json = serde_json::to_string(&draft(false).into_message(String::new(), 5)).unwrap();
        assert!(json.starts_with(r#"{"id":"""#), "{json}");
    }

    #[test]
    fn a_stored_message_gets_its_id_and_acknowledgements() {
        let json = serde_json::to_string(&draft(true).into_message(String::new(), 5)).unwrap();
        let acks = r#"{"user":{"id":"bob","name":"Bob"},"ts":9}"#;
        let message = stored_message("5-0".into(), &json, acks).unwrap();
        assert_eq!(message.id, "5-0");
        assert_eq!(message.deadline, Some(60_005));
        let by = message.acknowledged_by.unwrap();
        assert_eq!((&*by[0].user.id, by[0].ts), ("bob", 9));
    }
}
