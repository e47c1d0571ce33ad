//! Protocol v1: the frames a client sends and the frames a pod answers with,
//! their shapes, error codes and close codes. No I/O lives here.
//!
//! Client frames are decoded in two steps so that a frame with a wrong field
//! still gets an `error` that carries its `ref`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Protocol version announced in `welcome`.
pub const PROTOCOL_VERSION: u32 = 1;
/// Latest messages returned by `join_room` without `since`.
pub const JOIN_PAGE: usize = 50;
/// Largest `limit` a `history` request may ask for.
pub const MAX_HISTORY_LIMIT: usize = 100;
/// Longest `ref` string a client may send.
const MAX_REF_CHARS: usize = 64;
/// Longest `client_msg_id`.
const MAX_CLIENT_MSG_ID_CHARS: usize = 64;
/// Longest display name.
const MAX_DISPLAY_NAME_CHARS: usize = 100;

/// A client's correlation tag, copied into the reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Ref {
    /// A string of at most 64 characters.
    Text(String),
    /// An integer.
    Number(i64),
}

/// A user as every frame shows one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct User {
    /// Stable id (token `sub`, or the `user` of an open-mode hello).
    pub id: Arc<str>,
    /// Display name.
    pub name: Arc<str>,
}

/// How urgent a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// An ordinary message.
    #[default]
    Normal,
    /// Marked in every client; needs acknowledgement by default.
    Urgent,
}

/// One acknowledgement of a `needs_ack` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acknowledgement {
    /// Who took responsibility.
    pub user: User,
    /// When, in ms since the Unix epoch.
    pub ts: i64,
}

/// A stored message, the MESSAGE shape of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Opaque id; ids order the messages of one room.
    pub id: String,
    /// The room it was sent to.
    pub room: String,
    /// The sender.
    pub from: User,
    /// The text as the user typed it.
    pub text: String,
    /// Server time in ms since the Unix epoch.
    pub ts: i64,
    /// Normal or urgent.
    pub priority: Priority,
    /// Present and true when someone must acknowledge the message.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub needs_ack: bool,
    /// Acknowledgement deadline in ms since the epoch (with `needs_ack`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<i64>,
    /// Who acknowledged it so far (with `needs_ack`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_by: Option<Vec<Acknowledgement>>,
}

/// A message about to be stored: everything but its id and time.
#[derive(Debug, Clone)]
pub struct Draft {
    /// Target room.
    pub room: String,
    /// Sender.
    pub from: User,
    /// Text as typed.
    pub text: String,
    /// Normal or urgent.
    pub priority: Priority,
    /// Acknowledgement deadline relative to the send, when one is needed.
    pub ack_within: Option<std::time::Duration>,
    /// The client's de-duplication key.
    pub client_msg_id: Option<String>,
}

impl Draft {
    /// The message this draft becomes, stored at `ts` under `id`.
    pub fn into_message(self, id: String, ts: i64) -> Message {
        let deadline = self
            .ack_within
            .map(|d| ts.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)));
        Message {
            id,
            room: self.room,
            from: self.from,
            text: self.text,
            ts,
            priority: self.priority,
            needs_ack: deadline.is_some(),
            deadline,
            acknowledged_by: deadline.map(|_| Vec::new()),
        }
    }
}

/// Fields of the `hello` frame.
#[derive(Debug, Clone, Deserialize)]
pub struct Hello {
    /// JWT (auth on).
    pub token: Option<String>,
    /// User id (open mode).
    pub user: Option<String>,
    /// Display name (open mode).
    pub name: Option<String>,
}

/// Fields of `send_message`.
#[derive(Debug, Clone, Deserialize)]
pub struct SendMessage {
    /// Target room.
    pub room: String,
    /// Text as typed.
    pub text: String,
    /// Normal unless said otherwise.
    #[serde(default)]
    pub priority: Priority,
    /// Client's de-duplication key.
    pub client_msg_id: Option<String>,
    /// Whether someone must acknowledge it (default: urgent ones).
    pub needs_ack: Option<bool>,
    /// Acknowledgement deadline, a duration such as `"5m"`.
    pub ack_deadline: Option<String>,
}

/// A decoded client frame.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// First frame: who this is.
    Hello(Hello),
    /// Join a room, optionally resuming after a message id.
    JoinRoom { room: String, since: Option<String> },
    /// Leave a room.
    LeaveRoom { room: String },
    /// Send a message.
    SendMessage(SendMessage),
    /// Typing indicator.
    Typing { room: String, active: bool },
    /// Page through older messages.
    History { room: String, before: Option<String>, limit: Option<u32> },
    /// Application-level ping.
    Ping {},
    /// Take responsibility for a `needs_ack` message.
    AcknowledgeMessage { room: String, id: String },
    /// The user has read up to a message.
    MarkRead { room: String, up_to: String },
    /// Replace the token before it expires.
    Refresh { token: String },
}

impl ClientFrame {
    /// The frame's type as a bounded metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Hello(_) => "hello",
            ClientFrame::JoinRoom { .. } => "join_room",
            ClientFrame::LeaveRoom { .. } => "leave_room",
            ClientFrame::SendMessage(_) => "send_message",
            ClientFrame::Typing { .. } => "typing",
            ClientFrame::History { .. } => "history",
            ClientFrame::Ping {} => "ping",
            ClientFrame::AcknowledgeMessage { .. } => "acknowledge_message",
            ClientFrame::MarkRead { .. } => "mark_read",
            ClientFrame::Refresh { .. } => "refresh",
        }
    }

    /// The room the frame is about, when it names one.
    pub fn room(&self) -> Option<&str> {
        match self {
            ClientFrame::JoinRoom { room, .. }
            | ClientFrame::LeaveRoom { room }
            | ClientFrame::Typing { room, .. }
            | ClientFrame::History { room, .. }
            | ClientFrame::AcknowledgeMessage { room, .. }
            | ClientFrame::MarkRead { room, .. } => Some(room),
            ClientFrame::SendMessage(send) => Some(&send.room),
            _ => None,
        }
    }
}

/// A client frame that could not be decoded, with the `ref` when it had one.
#[derive(Debug)]
pub struct DecodeError {
    /// The frame's `ref`, if it could be read.
    pub reference: Option<Ref>,
    /// What was wrong, for the client.
    pub reason: String,
}

/// Decodes one text frame: JSON object, `type`, then the typed fields.
pub fn decode(text: &str) -> Result<(ClientFrame, Option<Ref>), DecodeError> {
    let fail = |reference, reason: String| DecodeError { reference, reason };

    let mut value: Value = serde_json::from_str(text)
        .map_err(|e| fail(None, format!("frame is not valid JSON: {e}")))?;
    let Some(object) = value.as_object_mut() else {
        return Err(fail(None, "frame must be a JSON object".into()));
    };

    // Read `ref` first so that every later error can carry it.
    let reference = match object.remove("ref") {
        None | Some(Value::Null) => None,
        Some(raw) => Some(parse_ref(raw).map_err(|reason| fail(None, reason))?),
    };

    match object.get("type") {
        Some(Value::String(kind)) if CLIENT_TYPES.contains(&kind.as_str()) => {}
        Some(Value::String(_)) => return Err(fail(reference, "unknown frame `type`".into())),
        Some(_) => return Err(fail(reference, "`type` must be a string".into())),
        None => return Err(fail(reference, "frame has no `type`".into())),
    }

    match serde_json::from_value::<ClientFrame>(value) {
        Ok(frame) => Ok((frame, reference)),
        Err(e) => Err(fail(reference, describe_serde_error(&e))),
    }
}

/// Checks a `ref`: a short string or an integer.
fn parse_ref(raw: Value) -> Result<Ref, String> {
    match raw {
        Value::String(s) if s.chars().count() <= MAX_REF_CHARS => Ok(Ref::Text(s)),
        Value::String(_) => Err(format!("`ref` is longer than {MAX_REF_CHARS} characters")),
        Value::Number(n) if n.is_i64() => Ok(Ref::Number(n.as_i64().unwrap_or_default())),
        _ => Err("`ref` must be a string or an integer".into()),
    }
}

/// The `type`s a client may send.
const CLIENT_TYPES: &[&str] = &[
    "hello",
    "join_room",
    "leave_room",
    "send_message",
    "typing",
    "history",
    "ping",
    "acknowledge_message",
    "mark_read",
    "refresh",
];

/// Turns serde's message into one a client developer can act on.
fn describe_serde_error(err: &serde_json::Error) -> String {
    let text = err.to_string();
    // serde_json appends " at line 1 column N", which means nothing here.
    match text.find(" at line ") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    }
}

/// One character allowed in room names and user ids.
pub fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
}

/// Room names and user ids: 1 to 64 of `A-Z a-z 0-9 . _ : -`.
pub fn is_valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.chars().all(is_name_char)
}

/// A display name: 1 to 100 characters, no control characters.
pub fn is_valid_display_name(name: &str) -> bool {
    let count = name.chars().count();
    (1..=MAX_DISPLAY_NAME_CHARS).contains(&count) && !name.chars().any(char::is_control)
}

/// A `client_msg_id`: 1 to 64 characters.
pub fn is_valid_client_msg_id(id: &str) -> bool {
    (1..=MAX_CLIENT_MSG_ID_CHARS).contains(&id.chars().count())
}

/// Whether a room name is a direct room: every name that starts with `dm:`.
pub fn is_direct_room(room: &str) -> bool {
    room.starts_with("dm:")
}

/// Whether `user` is one of the two users of the direct room `room`, named
/// `dm:<a>:<b>` with the two ids sorted. User ids may hold `:` themselves,
/// so the name is matched against this user rather than split.
///
/// Limitation: with `:` in user ids a name can be read as more than one
/// pair (`dm:a:b:c` is `a` with `b:c`, or `a:b` with `c`), and each of those
/// users is admitted. Deployments whose ids hold `:` should avoid them in
/// direct rooms.
pub fn is_direct_room_member(room: &str, user: &str) -> bool {
    let Some(pair) = room.strip_prefix("dm:") else { return false };
    let other_after = pair.strip_prefix(user).and_then(|rest| rest.strip_prefix(':'));
    let other_before = pair.strip_suffix(user).and_then(|rest| rest.strip_suffix(':'));
    other_after.is_some_and(|other| is_valid_name(other) && user <= other)
        || other_before.is_some_and(|other| is_valid_name(other) && other <= user)
}

/// Error codes of the `error` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is malformed or names something invalid.
    BadRequest,
    /// No valid identity.
    Unauthorized,
    /// The identity may not do this.
    Forbidden,
    /// The connection has not joined the room.
    NotInRoom,
    /// A text or frame is too long.
    TooLarge,
    /// Too many frames.
    RateLimited,
    /// The broker cannot be reached; a retry may succeed.
    Unavailable,
    /// A fault of the pod.
    Internal,
}

/// Close codes a pod uses.
pub mod close {
    /// Normal close.
    pub const NORMAL: u16 = 1000;
    /// Frame larger than the limit.
    pub const TOO_LARGE: u16 = 1009;
    /// Internal error.
    pub const INTERNAL: u16 = 1011;
    /// The pod is draining.
    pub const DRAINING: u16 = 1012;
    /// First frame was not `hello`.
    pub const PROTOCOL: u16 = 4400;
    /// Token missing, invalid or expired.
    pub const UNAUTHORIZED: u16 = 4401;
    /// No `hello` within the hello timeout.
    pub const HELLO_TIMEOUT: u16 = 4408;
    /// The outbound queue overflowed.
    pub const TOO_SLOW: u16 = 4409;
    /// Rate limit exceeded again and again.
    pub const RATE_LIMITED: u16 = 4429;
}

/// Frames a pod sends. Borrowed fields keep encoding cheap.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Welcome {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a Ref>,
        conn: &'a str,
        user: &'a User,
        node: &'a str,
        protocol: u32,
    },
    RoomJoined {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a Ref>,
        room: &'a str,
        members: &'a [User],
        messages: &'a [Message],
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        reads: &'a [ReadMark],
    },
    RoomLeft {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a Ref>,
        room: &'a str,
    },
    Ack {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a Ref>,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        ts: Option<i64>,
    },
    History {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a Ref>,
        room: &'a str,
        messages: &'a [Message],
        more: bool,
    },
    Pong {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a Ref>,
    },
    Error {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a Ref>,
        code: ErrorCode,
        message: &'a str,
    },
    NewMessage {
        message: &'a Message,
    },
    Typing {
        room: &'a str,
        user: &'a User,
        active: bool,
    },
    UserJoined {
        room: &'a str,
        user: &'a User,
    },
    UserLeft {
        room: &'a str,
        user: &'a User,
    },
    RoomInfoUpdate {
        room: &'a str,
        member_count: usize,
    },
    MessageAcknowledged {
        room: &'a str,
        id: &'a str,
        by: &'a User,
        ts: i64,
    },
    AckOverdue {
        room: &'a str,
        id: &'a str,
    },
    ReadReceipt {
        room: &'a str,
        user: &'a User,
        up_to: &'a str,
        ts: i64,
    },
}

/// A user's read position in a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadMark {
    /// The reader.
    pub user: User,
    /// Newest message id read.
    pub up_to: String,
}

impl ServerFrame<'_> {
    /// Encodes the frame once; the result is shared by every recipient.
    pub fn encode(&self) -> axum::extract::ws::Utf8Bytes {
        // Serialising these types cannot fail: no maps with non-string keys.
        let text = serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"encoding failed"}"#.into()
        });
        text.into()
    }
}

/// Compares two message ids of the form `<ms>-<seq>` in stream order.
pub fn compare_ids(a: &str, b: &str) -> Option<std::cmp::Ordering> {
    Some(parse_id(a)?.cmp(&parse_id(b)?))
}

/// Splits a message id into its two numbers.
pub fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_keeps_ref_when_a_field_has_the_wrong_type() {
        let err = decode(r#"{"type":"join_room","room":5,"ref":"r1"}"#).unwrap_err();
        assert_eq!(err.reference, Some(Ref::Text("r1".into())));
        assert!(err.reason.contains("room") || err.reason.contains("string"), "{}", err.reason);
    }

    #[test]
    fn decode_ignores_unknown_fields() {
        let (frame, reference) = decode(r#"{"type":"ping","ref":7,"extra":true}"#).unwrap();
        assert!(matches!(frame, ClientFrame::Ping {}));
        assert_eq!(reference, Some(Ref::Number(7)));
    }

    #[test]
    fn decode_refuses_unknown_types_and_non_objects() {
        assert_eq!(decode(r#"{"type":"dance"}"#).unwrap_err().reason, "unknown frame `type`");
        assert!(decode("[1,2]").is_err());
        assert!(decode("{").is_err());
    }

    #[test]
    fn names_follow_the_rule() {
        assert!(is_valid_name("icu-3"));
        assert!(is_valid_name("dm:alice:bob"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("a b"));
        assert!(!is_valid_name(&"x".repeat(65)));
        assert!(!is_valid_name("é"));
    }

    #[test]
    fn direct_rooms_admit_their_two_users_only() {
        assert!(is_direct_room_member("dm:alice:bob", "alice"));
        assert!(is_direct_room_member("dm:alice:bob", "bob"));
        assert!(!is_direct_room_member("dm:alice:bob", "carol"));
        assert!(!is_direct_room_member("dm:bob:alice", "alice"), "ids must be sorted");
        assert!(is_direct_room_member("dm:dr:smith:nurse:jones", "dr:smith"));
        assert!(is_direct_room_member("dm:dr:smith:nurse:jones", "nurse:jones"));
        assert!(!is_direct_room_member("dm:dr:smith:nurse:jones", "eve"));
        assert!(!is_direct_room_member("dm:alice", "alice"));
        assert!(is_direct_room("dm:alice") && !is_direct_room("icu"));
    }

    #[test]
    fn ids_compare_numerically() {
        assert_eq!(compare_ids("9-0", "10-0"), Some(std::cmp::Ordering::Less));
        assert_eq!(compare_ids("10-2", "10-10"), Some(std::cmp::Ordering::Less));
        assert_eq!(compare_ids("x", "10-10"), None);
    }
}
