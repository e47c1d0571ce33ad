//! The in-process broker: one pod, no Redis. Rooms, history, presence and
//! read marks live in memory and vanish with the process.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{
    Broker, BrokerError, EventSink, Health, MessageMark, Page, PresenceChange, Published,
    RoomEvent, now_ms,
};
use crate::protocol::{Acknowledgement, Draft, Message, ReadMark, ServerFrame, User, parse_id};

/// How long a `client_msg_id` is remembered.
const DEDUP_WINDOW: Duration = Duration::from_secs(600);

/// The broker of a single pod.
pub struct MemoryBroker {
    /// All rooms, behind one lock: calls are short and never await inside.
    rooms: Mutex<HashMap<Arc<str>, RoomState>>,
    /// Unacknowledged `needs_ack` messages by deadline: room and id.
    deadlines: Mutex<BTreeMap<(i64, String), Arc<str>>>,
    /// Messages kept per room.
    max_len: usize,
    /// Messages older than this are dropped (`history.max_age`).
    max_age: Option<Duration>,
    /// Where events go.
    sink: Arc<dyn EventSink>,
}

/// What the broker keeps of one room.
#[derive(Default)]
struct RoomState {
    /// Stored messages, oldest first.
    history: VecDeque<Message>,
    /// Id of the newest message trimmed away, for `recovered`.
    trimmed_up_to: Option<(u64, u64)>,
    /// Id of the newest message ever stored.
    last_id: (u64, u64),
    /// Present users, in order of arrival.
    members: Vec<User>,
    /// Recent `client_msg_id`s and the message each one stored.
    dedup: HashMap<String, (Message, Instant)>,
    /// Read marks by user id: the user, the id as numbers, the id as sent.
    reads: HashMap<Arc<str>, (User, (u64, u64), String)>,
}

impl MemoryBroker {
    /// A broker keeping `max_len` messages a room, delivering to `sink`.
    pub fn new(max_len: usize, sink: Arc<dyn EventSink>) -> Self {
        Self {
            rooms: Mutex::new(HashMap::new()),
            deadlines: Mutex::default(),
            max_len,
            max_age: None,
            sink,
        }
    }

    /// Drops messages older than `max_age` from history.
    pub fn with_max_age(mut self, max_age: Option<Duration>) -> Self {
        self.max_age = max_age;
        self
    }

    /// Locks the rooms after removing the room's messages past `history.max_age`.
    fn lock_fresh(&self, room: &str) -> MutexGuard<'_, HashMap<Arc<str>, RoomState>> {
        let mut rooms = self.lock();
        if let (Some(max_age), Some(state)) = (self.max_age, rooms.get_mut(room)) {
            let oldest_kept = now_ms() - i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
            state.forget_before(oldest_kept);
        }
        rooms
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, RoomState>> {
        // A panic while holding the lock leaves consistent data: keep going.
        self.rooms.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn deliver(&self, room: &str, frame: ServerFrame<'_>, message: Option<MessageMark>) {
        self.sink.deliver(RoomEvent {
            room: room.into(),
            frame: frame.encode(),
            exclude: None,
            message,
        });
    }
}

impl RoomState {
    /// The next id: current ms, or the same ms with a higher sequence.
    fn next_id(&mut self, ts: i64) -> (u64, u64) {
        let ms = u64::try_from(ts).unwrap_or_default();
        let (last_ms, last_seq) = self.last_id;
        self.last_id = if ms > last_ms { (ms, 0) } else { (last_ms, last_seq + 1) };
        self.last_id
    }

    /// Appends a message and trims the oldest beyond `max_len`.
    fn store(&mut self, message: Message, max_len: usize) {
        self.history.push_back(message);
        while self.history.len() > max_len {
            if let Some(oldest) = self.history.pop_front() {
                self.trimmed_up_to = parse_id(&oldest.id);
            }
        }
    }

    /// Removes messages sent before `oldest_kept` (ms since the epoch).
    fn forget_before(&mut self, oldest_kept: i64) {
        while self.history.front().is_some_and(|m| m.ts < oldest_kept) {
            if let Some(oldest) = self.history.pop_front() {
                self.trimmed_up_to = parse_id(&oldest.id);
            }
        }
    }

    /// The message a `client_msg_id` stored, if it was used within the
    /// window; kept here so a retry is answered even after trimming.
    fn remembered(&mut self, client_msg_id: &str) -> Option<Message> {
        self.dedup.retain(|_, (_, at)| at.elapsed() < DEDUP_WINDOW);
        let (first, _) = self.dedup.get(client_msg_id)?;
        Some(self.history.iter().rev().find(|m| m.id == first.id).unwrap_or(first).clone())
    }

    fn find(&mut self, id: &str) -> Option<&mut Message> {
        self.history.iter_mut().rev().find(|m| m.id == id)
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, mut draft: Draft) -> Result<Published, BrokerError> {
        let mut rooms = self.lock();
        let state = rooms.entry(draft.room.as_str().into()).or_default();

        let client_msg_id = draft.client_msg_id.take();
        if let Some(first) = client_msg_id.as_deref().and_then(|key| state.remembered(key)) {
            return Ok(Published { message: first, duplicate: true });
        }

        let ts = now_ms();
        let id = state.next_id(ts);
        let message = draft.into_message(format!("{}-{}", id.0, id.1), ts);
        if let Some(key) = client_msg_id {
            state.dedup.insert(key, (message.clone(), Instant::now()));
        }
        state.store(message.clone(), self.max_len);
        if let Some(deadline) = message.deadline {
            let mut deadlines = self.deadlines.lock().unwrap_or_else(|p| p.into_inner());
            deadlines.insert((deadline, message.id.clone()), message.room.as_str().into());
        }

        // Delivered under the lock, so every member sees the room's order.
        let mark = MessageMark { id, published_at: ts };
        self.deliver(&message.room, ServerFrame::NewMessage { message: &message }, Some(mark));
        Ok(Published { message, duplicate: false })
    }

    async fn broadcast(&self, event: RoomEvent) -> Result<(), BrokerError> {
        self.sink.deliver(event);
        Ok(())
    }

    async fn recent(&self, room: &str, limit: usize) -> Result<Vec<Message>, BrokerError> {
        let rooms = self.lock_fresh(room);
        let Some(state) = rooms.get(room) else { return Ok(Vec::new()) };
        let skip = state.history.len().saturating_sub(limit);
        Ok(state.history.iter().skip(skip).cloned().collect())
    }

    async fn since(&self, room: &str, since: (u64, u64)) -> Result<Page, BrokerError> {
        let rooms = self.lock_fresh(room);
        let Some(state) = rooms.get(room) else {
            return Ok(Page { messages: Vec::new(), flag: true });
        };
        let messages = state
            .history
            .iter()
            .filter(|m| parse_id(&m.id).is_some_and(|id| id > since))
            .cloned()
            .collect();
        let recovered = state.trimmed_up_to.is_none_or(|trimmed| since >= trimmed);
        Ok(Page { messages, flag: recovered })
    }

    async fn history(
        &self,
        room: &str,
        before: Option<(u64, u64)>,
        limit: usize,
    ) -> Result<Page, BrokerError> {
        let rooms = self.lock_fresh(room);
        let Some(state) = rooms.get(room) else { return Ok(Page::default()) };
        let older: Vec<&Message> = state
            .history
            .iter()
            .filter(|m| before.is_none_or(|b| parse_id(&m.id).is_some_and(|id| id < b)))
            .collect();
        let skip = older.len().saturating_sub(limit);
        let messages = older[skip..].iter().map(|m| (*m).clone()).collect();
        Ok(Page { messages, flag: skip > 0 })
    }

    async fn presence_add(&self, room: &str, user: &User) -> Result<PresenceChange, BrokerError> {
        let mut rooms = self.lock();
        let state = rooms.entry(room.into()).or_default();
        let changed = !state.members.iter().any(|m| m.id == user.id);
        if changed {
            state.members.push(user.clone());
        }
        Ok(PresenceChange { changed, member_count: state.members.len() })
    }

    async fn presence_remove(
        &self,
        room: &str,
        user: &User,
    ) -> Result<PresenceChange, BrokerError> {
        let mut rooms = self.lock();
        let Some(state) = rooms.get_mut(room) else {
            return Ok(PresenceChange { changed: false, member_count: 0 });
        };
        let before = state.members.len();
        state.members.retain(|m| m.id != user.id);
        Ok(PresenceChange {
            changed: state.members.len() != before,
            member_count: state.members.len(),
        })
    }

    async fn members(&self, room: &str) -> Result<Vec<User>, BrokerError> {
        Ok(self.lock().get(room).map(|s| s.members.clone()).unwrap_or_default())
    }

    async fn acknowledge(&self, room: &str, id: &str, by: &User) -> Result<(), BrokerError> {
        let mut rooms = self.lock();
        let message = rooms
            .get_mut(room)
            .and_then(|state| state.find(id))
            .ok_or_else(|| BrokerError::BadRequest("no such message in this room".into()))?;
        if !message.needs_ack {
            return Err(BrokerError::BadRequest(
                "this message does not need acknowledgement".into(),
            ));
        }
        if message.from.id == by.id {
            return Err(BrokerError::Forbidden("you cannot acknowledge your own message".into()));
        }

        let acks = message.acknowledged_by.get_or_insert_with(Vec::new);
        if acks.iter().any(|a| a.user.id == by.id) {
            return Ok(());
        }
        let ts = now_ms();
        acks.push(Acknowledgement { user: by.clone(), ts });
        self.deliver(room, ServerFrame::MessageAcknowledged { room, id, by, ts }, None);
        Ok(())
    }

    async fn mark_read(&self, room: &str, user: &User, up_to: &str) -> Result<bool, BrokerError> {
        let id = parse_id(up_to)
            .ok_or_else(|| BrokerError::BadRequest("`up_to` is not a message id".into()))?;
        let mut rooms = self.lock();
        let state = rooms.entry(room.into()).or_default();
        if state.reads.get(&user.id).is_some_and(|(_, last, _)| *last >= id) {
            return Ok(false);
        }
        state.reads.insert(user.id.clone(), (user.clone(), id, up_to.to_string()));
        Ok(true)
    }

    async fn reads(&self, room: &str, users: &[User]) -> Result<Vec<ReadMark>, BrokerError> {
        let rooms = self.lock();
        let Some(state) = rooms.get(room) else { return Ok(Vec::new()) };
        Ok(users
            .iter()
            .filter_map(|u| state.reads.get(&u.id))
            .map(|(user, _, up_to)| ReadMark { user: user.clone(), up_to: up_to.clone() })
            .collect())
    }

    async fn claim_overdue(&self, now_ms: i64) -> Result<Vec<Message>, BrokerError> {
        let due = {
            let mut deadlines = self.deadlines.lock().unwrap_or_else(|p| p.into_inner());
            let later = deadlines.split_off(&(now_ms + 1, String::new()));
            std::mem::replace(&mut *deadlines, later)
        };

        let mut rooms = self.lock();
        let overdue = due
            .into_iter()
            .filter_map(|((_, id), room)| rooms.get_mut(&room)?.find(&id).cloned())
            .filter(|m| m.acknowledged_by.as_ref().is_none_or(Vec::is_empty))
            .collect();
        Ok(overdue)
    }

    async fn subscribe(&self, _room: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn unsubscribe(&self, _room: &str) {}

    fn health(&self) -> Health {
        Health { kind: "memory", up: true, latency: None }
    }
}
