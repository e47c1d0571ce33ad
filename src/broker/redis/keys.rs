//! Names of a room's keys and channel. Every name starts with the hash tag
//! `{<prefix>:<room>}`, so a room lives in one Redis Cluster slot and its
//! scripts may touch all of its keys.

/// Names of the keys and channel of one room.
pub(super) struct RoomKeys {
    tag: String,
}

impl RoomKeys {
    /// The names of `room` under `prefix`.
    pub(super) fn new(prefix: &str, room: &str) -> Self {
        Self { tag: format!("{{{prefix}:{room}}}") }
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.tag)
    }

    /// The stream of messages.
    pub(super) fn stream(&self) -> String {
        self.key("messages")
    }

    /// The newest message id trimmed away from the stream.
    pub(super) fn trimmed(&self) -> String {
        self.key("trimmed")
    }

    /// Hash: message id -> its acknowledgements, JSON objects joined by `,`.
    pub(super) fn acks(&self) -> String {
        self.key("acks")
    }

    /// Hash: user id -> id of the newest message read.
    pub(super) fn reads(&self) -> String {
        self.key("reads")
    }

    /// Sorted set of presence entries `<node>|<user>`, scored by expiry (ms).
    pub(super) fn presence(&self) -> String {
        self.key("presence")
    }

    /// Hash: user id -> USER JSON of each present user.
    pub(super) fn users(&self) -> String {
        self.key("users")
    }

    /// Hash: user id -> number of presence entries.
    pub(super) fn counts(&self) -> String {
        self.key("counts")
    }

    /// The first message id a `client_msg_id` got.
    pub(super) fn retry(&self, client_msg_id: &str) -> String {
        self.key(&format!("retry:{client_msg_id}"))
    }

    /// The channel of the room's events.
    pub(super) fn channel(&self) -> String {
        self.key("events")
    }
}

/// Sorted set of every room's acknowledgement deadlines (its own slot).
pub(super) fn deadlines(prefix: &str) -> String {
    format!("{{{prefix}}}:deadlines")
}

/// The room a channel name belongs to, under `prefix`.
pub(super) fn room_of_channel<'a>(prefix: &str, channel: &'a str) -> Option<&'a str> {
    let rest = channel.strip_prefix('{')?.strip_prefix(prefix)?.strip_prefix(':')?;
    rest.strip_suffix("}:events")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_carries_the_room_tag() {
        let keys = RoomKeys::new("ward", "icu-3");
        assert_eq!(keys.stream(), "{ward:icu-3}:messages");
        assert_eq!(keys.retry("a{b}"), "{ward:icu-3}:retry:a{b}");
        assert_eq!(keys.channel(), "{ward:icu-3}:events");
    }

    #[test]
    fn a_channel_name_gives_back_its_room() {
        let channel = RoomKeys::new("ward:test", "dm:a:b").channel();
        assert_eq!(room_of_channel("ward:test", &channel), Some("dm:a:b"));
        assert_eq!(room_of_channel("other", &channel), None);
    }
}
