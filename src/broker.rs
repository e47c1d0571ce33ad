//! The broker seam: where a pod stores messages, keeps presence and exchanges
//! room events with the other pods.
//!
//! [`memory::MemoryBroker`] makes one pod a complete system; a Redis broker
//! joins many pods. Sessions only see the [`Broker`] trait. Events flow back
//! to the pod through the [`EventSink`] given at construction, already
//! encoded, so each event is serialised once per pod.

pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;

use crate::protocol::{Draft, Message, ReadMark, User};

/// A connection's number, unique within one pod.
pub type ConnId = u64;

/// Why a broker call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The backing store cannot be reached; the call was not carried out.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// A request named something that does not exist or is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The user may not do this to that message.
    #[error("{0}")]
    Forbidden(String),
}

/// One event for the local members of a room, encoded once.
#[derive(Debug, Clone)]
pub struct RoomEvent {
    /// The room.
    pub room: Arc<str>,
    /// The encoded server frame.
    pub frame: Utf8Bytes,
    /// A connection of this pod that must not get it (the one that caused it).
    pub exclude: Option<ConnId>,
    /// Message id and publish time, for `new_message` events.
    pub message: Option<MessageMark>,
}

/// What the write path needs to know of a delivered message.
#[derive(Debug, Clone, Copy)]
pub struct MessageMark {
    /// The id as two numbers, for ordering and de-duplication.
    pub id: (u64, u64),
    /// When the message was published, ms since the epoch (delivery lag).
    pub published_at: i64,
}

/// Receives every room event the broker delivers to this pod.
pub trait EventSink: Send + Sync + 'static {
    /// Hands one event to the room's local members.
    fn deliver(&self, event: RoomEvent);

    /// Called when the broker's subscription was restored after an outage,
    /// so the pod can check what it may have missed.
    fn resubscribed(&self) {}
}

/// The result of storing a message.
#[derive(Debug, Clone)]
pub struct Published {
    /// The stored message (the first one, for a retried `client_msg_id`).
    pub message: Message,
    /// True when this was a retry of a message stored before.
    pub duplicate: bool,
}

/// A change of a room's membership across all pods.
#[derive(Debug, Clone, Copy)]
pub struct PresenceChange {
    /// True when the user's presence in the room began or ended with this call.
    pub changed: bool,
    /// Distinct users in the room afterwards.
    pub member_count: usize,
}

/// A slice of a room's history.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Messages, oldest first.
    pub messages: Vec<Message>,
    /// `history`: older messages exist. `since`: history reached back far enough.
    pub flag: bool,
}

/// The broker's health, for `/readyz`.
#[derive(Debug, Clone)]
pub struct Health {
    /// `memory` or `redis`.
    pub kind: &'static str,
    /// Whether the broker can be reached now.
    pub up: bool,
    /// Round-trip of the last probe.
    pub latency: Option<Duration>,
}

/// Storage, presence and pub/sub of rooms, shared by all pods.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Stores a message and publishes it to the room, as one step.
    async fn publish(&self, draft: Draft) -> Result<Published, BrokerError>;

    /// Publishes an event that is not stored (typing, receipts).
    async fn broadcast(&self, event: RoomEvent) -> Result<(), BrokerError>;

    /// The latest `limit` messages, oldest first.
    async fn recent(&self, room: &str, limit: usize) -> Result<Vec<Message>, BrokerError>;

    /// Every message after `since`; the flag says nothing was trimmed away.
    async fn since(&self, room: &str, since: (u64, u64)) -> Result<Page, BrokerError>;

    /// Up to `limit` messages before `before`; the flag says older ones exist.
    async fn history(
        &self,
        room: &str,
        before: Option<(u64, u64)>,
        limit: usize,
    ) -> Result<Page, BrokerError>;

    /// Marks the user present in the room on this pod.
    async fn presence_add(&self, room: &str, user: &User) -> Result<PresenceChange, BrokerError>;

    /// Ends the user's presence in the room on this pod.
    async fn presence_remove(&self, room: &str, user: &User)
    -> Result<PresenceChange, BrokerError>;

    /// Distinct users present in the room across all pods.
    async fn members(&self, room: &str) -> Result<Vec<User>, BrokerError>;

    /// Records an acknowledgement of a `needs_ack` message and publishes it.
    async fn acknowledge(&self, room: &str, id: &str, by: &User) -> Result<(), BrokerError>;

    /// Moves the user's read mark forward; false when the mark was not newer
    /// than the last one (the caller then sends no receipt).
    async fn mark_read(&self, room: &str, user: &User, up_to: &str) -> Result<bool, BrokerError>;

    /// Read marks of the given users in the room.
    async fn reads(&self, room: &str, users: &[User]) -> Result<Vec<ReadMark>, BrokerError>;

    /// Claims the `needs_ack` messages whose deadline passed with no
    /// acknowledgement. Each is returned once, to one pod of all. A broker
    /// that keeps no deadlines escalates nothing.
    async fn claim_overdue(&self, _now_ms: i64) -> Result<Vec<Message>, BrokerError> {
        Ok(Vec::new())
    }

    /// Starts receiving the room's events (its first local member joined).
    async fn subscribe(&self, room: &str) -> Result<(), BrokerError>;

    /// Stops receiving the room's events (its last local member left).
    async fn unsubscribe(&self, room: &str);

    /// Current health, without waiting.
    fn health(&self) -> Health;
}

/// Time in ms since the Unix epoch.
pub fn now_ms() -> i64 {
    let since_epoch =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}
