//! What travels on a room's channel: a header line, a newline, then the
//! encoded frame, which the receiving pod forwards as it is.
//!
//! - `m|<id>|<published_at>`: a `new_message` (written by `publish.lua`).
//! - `e|<node>|<conn>`: any other event; connection `<conn>` of pod `<node>`
//!   caused it and does not get it (0: every connection gets it).

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;

use crate::broker::{ConnId, MessageMark};
use crate::protocol::parse_id;

/// The decoded header of an envelope.
#[derive(Debug)]
pub(super) enum Header<'a> {
    /// A stored message.
    Message(MessageMark),
    /// Another event, with the connection that must not get it.
    Event {
        /// Pod of the excluded connection.
        node: &'a str,
        /// The excluded connection; 0 excludes none.
        conn: ConnId,
    },
}

/// The envelope of an event from `node`, not sent to `exclude`.
pub(super) fn event(node: &str, exclude: Option<ConnId>, frame: &str) -> Vec<u8> {
    format!("e|{node}|{}\n{frame}", exclude.unwrap_or(0)).into_bytes()
}

/// Splits an envelope into its header and its frame, without copying the
/// frame; `None` when it is malformed.
pub(super) fn decode(payload: &Bytes) -> Option<(Header<'_>, Utf8Bytes)> {
    let newline = payload.iter().position(|b| *b == b'\n')?;
    let header = std::str::from_utf8(&payload[..newline]).ok()?;
    let frame = Utf8Bytes::try_from(payload.slice(newline + 1..)).ok()?;

    let mut parts = header.split('|');
    let header = match (parts.next()?, parts.next()?, parts.next()?) {
        ("m", id, ts) => {
            Header::Message(MessageMark { id: parse_id(id)?, published_at: ts.parse().ok()? })
        }
        ("e", node, conn) => Header::Event { node, conn: conn.parse().ok()? },
        _ => return None,
    };
    Some((header, frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_envelope_round_trips() {
        let payload = Bytes::from(event("pod-a", Some(7), r#"{"type":"typing"}"#));
        let (header, frame) = decode(&payload).unwrap();
        assert!(matches!(header, Header::Event { node: "pod-a", conn: 7 }), "{header:?}");
        assert_eq!(frame.as_str(), r#"{"type":"typing"}"#);
    }

    #[test]
    fn a_message_header_carries_id_and_time() {
        let payload = Bytes::from_static(b"m|1733312345678-3|1733312345678\n{}");
        let (header, _) = decode(&payload).unwrap();
        let Header::Message(mark) = header else { panic!("a message header") };
        assert_eq!(mark.id, (1_733_312_345_678, 3));
        assert_eq!(mark.published_at, 1_733_312_345_678);
    }

    #[test]
    fn malformed_envelopes_are_refused() {
        assert!(decode(&Bytes::from_static(b"no newline")).is_none());
        assert!(decode(&Bytes::from_static(b"x|a|b\n{}")).is_none());
        assert!(decode(&Bytes::from_static(b"m|bad|1\n{}")).is_none());
    }
}
