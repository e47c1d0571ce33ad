//! The rooms one connection has joined: a short list, since a connection is
//! in a few rooms, and a list costs far less memory than a hash map.

use std::sync::Arc;

use tokio::time::Instant;

/// A room this connection has joined.
pub(crate) struct Joined {
    /// Newest message id sent in `room_joined`; older live copies are skipped.
    pub watermark: Option<(u64, u64)>,
    /// When this connection last announced typing here, and what.
    pub last_typing: Option<(Instant, bool)>,
}

/// The joined rooms, by name.
#[derive(Default)]
pub(crate) struct JoinedRooms {
    rooms: Vec<(Arc<str>, Joined)>,
}

impl JoinedRooms {
    pub fn get(&self, room: &str) -> Option<&Joined> {
        self.rooms.iter().find(|(name, _)| **name == *room).map(|(_, joined)| joined)
    }

    pub fn get_mut(&mut self, room: &str) -> Option<&mut Joined> {
        self.rooms.iter_mut().find(|(name, _)| **name == *room).map(|(_, joined)| joined)
    }

    pub fn contains_key(&self, room: &str) -> bool {
        self.get(room).is_some()
    }

    /// Adds a room, or resets it when it is already there.
    pub fn insert(&mut self, room: Arc<str>, joined: Joined) {
        match self.get_mut(&room) {
            Some(existing) => *existing = joined,
            None => self.rooms.push((room, joined)),
        }
    }

    pub fn remove(&mut self, room: &str) {
        self.rooms.retain(|(name, _)| **name != *room);
        if self.rooms.is_empty() {
            self.rooms = Vec::new();
        }
    }

    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    /// The room names.
    pub fn names(&self) -> Vec<Arc<str>> {
        self.rooms.iter().map(|(name, _)| name.clone()).collect()
    }
}
