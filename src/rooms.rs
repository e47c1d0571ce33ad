//! Who is in which room on this pod, and the fan-out of room events to them.
//!
//! The broker hands every event to [`Rooms::deliver`] once; the encoded frame
//! is shared by all local members. A member whose queue is full is asked to
//! close (4409); the others are not slowed.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::broker::{ConnId, EventSink, RoomEvent};
use crate::metrics::Metrics;
use crate::outbox::{Offer, Outbound, Outbox};

/// The rooms with members on this pod.
pub struct Rooms {
    rooms: RwLock<HashMap<Arc<str>, LocalRoom>>,
    metrics: Arc<Metrics>,
}

/// One room's members on this pod.
#[derive(Default)]
struct LocalRoom {
    /// Connections in the room.
    members: Vec<(ConnId, Arc<Outbox>)>,
    /// Connections per user id, to know a user's first and last.
    users: HashMap<Arc<str>, u32>,
}

/// What a local join changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalChange {
    /// The room had no member on this pod before, or has none after.
    pub room_edge: bool,
    /// The user had no connection in the room before, or has none after.
    pub user_edge: bool,
}

impl Rooms {
    /// An empty registry.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { rooms: RwLock::new(HashMap::new()), metrics }
    }

    /// Adds a connection to a room; a connection already in it changes nothing.
    pub fn join(
        &self,
        room: &Arc<str>,
        conn: ConnId,
        user: &Arc<str>,
        outbox: &Arc<Outbox>,
    ) -> LocalChange {
        let mut rooms = self.rooms.write().unwrap_or_else(|p| p.into_inner());
        let room_edge = !rooms.contains_key(room);
        let local = rooms.entry(room.clone()).or_default();
        if local.members.iter().any(|(id, _)| *id == conn) {
            return LocalChange { room_edge: false, user_edge: false };
        }

        local.members.push((conn, outbox.clone()));
        let count = local.users.entry(user.clone()).or_insert(0);
        *count += 1;
        let user_edge = *count == 1;
        self.metrics.rooms.set(rooms.len() as i64);
        LocalChange { room_edge, user_edge }
    }

    /// Removes a connection from a room.
    pub fn leave(&self, room: &str, conn: ConnId, user: &str) -> LocalChange {
        let mut rooms = self.rooms.write().unwrap_or_else(|p| p.into_inner());
        let Some(local) = rooms.get_mut(room) else {
            return LocalChange { room_edge: false, user_edge: false };
        };
        let before = local.members.len();
        local.members.retain(|(id, _)| *id != conn);
        if local.members.len() == before {
            return LocalChange { room_edge: false, user_edge: false };
        }

        let user_edge = match local.users.get_mut(user) {
            Some(count) if *count > 1 => {
                *count -= 1;
                false
            }
            _ => {
                local.users.remove(user);
                true
            }
        };
        let room_edge = local.members.is_empty();
        if room_edge {
            rooms.remove(room);
        }
        self.metrics.rooms.set(rooms.len() as i64);
        LocalChange { room_edge, user_edge }
    }

    /// Names of the rooms with local members (to resubscribe after an outage).
    pub fn names(&self) -> Vec<Arc<str>> {
        self.rooms.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }
}

impl EventSink for Rooms {
    fn deliver(&self, event: RoomEvent) {
        let rooms = self.rooms.read().unwrap_or_else(|p| p.into_inner());
        let Some(local) = rooms.get(&event.room) else { return };

        for (conn, outbox) in &local.members {
            if Some(*conn) == event.exclude {
                continue;
            }
            let frame = Outbound::Event {
                room: event.room.clone(),
                frame: event.frame.clone(),
                message: event.message,
            };
            if outbox.offer(frame) == Offer::Overflowed {
                self.metrics.slow_consumer_closes.inc();
            }
        }
    }
}
