//! Property tests of the frame decoder `ward::protocol::decode`: whatever
//! text a client sends, decoding never panics, and a decoded frame keeps the
//! frame's `type` and `ref`. A few thousand cases, a few seconds.

use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Map, Number, Value, json};
use ward::protocol::{Ref, decode};

/// Frame types the protocol knows, and a few it does not.
const TYPES: &[&str] = &[
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
    "pong",
    "Ping",
    "",
];

/// Field names the decoder reads, and a stranger.
const FIELDS: &[&str] = &[
    "token",
    "user",
    "name",
    "room",
    "since",
    "text",
    "priority",
    "client_msg_id",
    "needs_ack",
    "ack_deadline",
    "active",
    "before",
    "limit",
    "id",
    "up_to",
    "extra",
];

fn config() -> Config {
    Config { cases: 1500, failure_persistence: None, ..Config::default() }
}

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,80}".prop_map(Value::String),
        "[0-9]{1,14}-[0-9]{1,3}".prop_map(Value::String),
        prop::sample::select(vec!["icu-3", "dm:a:b", "urgent", "normal", "5m", "1s"])
            .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,10}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A `ref`: mostly valid, sometimes too long, fractional or of another type.
fn reference() -> impl Strategy<Value = Option<Value>> {
    prop::option::of(prop_oneof![
        ".{0,64}".prop_map(Value::String),
        ".{65,80}".prop_map(Value::String),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        json_value(),
    ])
}

/// An object that looks like a client frame: a known or odd `type`, known
/// fields with values of any type, and maybe a `ref`.
fn frame_like() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        4 => prop::sample::select(TYPES).prop_map(|t| Some(Value::String(t.into()))),
        1 => prop::option::of(json_value()),
    ];
    let fields = prop::collection::vec((prop::sample::select(FIELDS), json_value()), 0..6);
    (kind, fields, reference()).prop_map(|(kind, fields, reference)| {
        let mut object = Map::new();
        for (name, value) in fields {
            object.insert(name.into(), value);
        }
        if let Some(kind) = kind {
            object.insert("type".into(), kind);
        }
        if let Some(reference) = reference {
            object.insert("ref".into(), reference);
        }
        Value::Object(object)
    })
}

/// The `ref` decode must report for `frame`: `Ok(None)` when absent or
/// null, `Ok(Some)` when valid, `Err(())` when the frame must be refused.
fn expected_ref(frame: &Value) -> Result<Option<Ref>, ()> {
    match frame.get("ref") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= 64 => Ok(Some(Ref::Text(s.clone()))),
        Some(Value::Number(n)) if n.is_i64() => Ok(Some(Ref::Number(n.as_i64().unwrap()))),
        Some(_) => Err(()),
    }
}

/// Checks the invariants of decoding `frame`.
fn check_frame(frame: &Value) -> Result<(), TestCaseError> {
    let text = frame.to_string();
    let expected = expected_ref(frame);
    match decode(&text) {
        Ok((decoded, reference)) => {
            prop_assert_eq!(Ok(reference), expected, "ref of {}", text);
            prop_assert_eq!(&frame["type"], &json!(decoded.kind()), "type of {}", text);
            if let Some(room) = decoded.room() {
                prop_assert_eq!(&frame["room"], &json!(room), "room of {}", text);
            }
        }
        Err(err) => {
            prop_assert!(!err.reason.is_empty(), "an error says why: {}", text);
            match expected {
                Ok(reference) => prop_assert_eq!(err.reference, reference, "ref of {}", text),
                Err(()) => prop_assert_eq!(err.reference, None, "invalid ref of {}", text),
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_text_decodes_or_fails_without_panicking(text in ".{0,200}") {
        if let Err(err) = decode(&text) {
            prop_assert!(!err.reason.is_empty());
        }
    }

    #[test]
    fn any_bytes_as_lossy_text_decode_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn frame_like_objects_keep_their_type_and_ref(frame in frame_like()) {
        check_frame(&frame)?;
    }

    #[test]
    fn any_json_value_decodes_or_fails_without_panicking(value in json_value()) {
        let decoded = decode(&value.to_string());
        if !value.is_object() {
            prop_assert!(decoded.is_err(), "only objects are frames: {}", value);
        }
    }

    #[test]
    fn cut_or_spliced_frames_decode_without_panicking(
        frame in frame_like(),
        cut in any::<prop::sample::Index>(),
        insert in ".{0,4}",
    ) {
        let text = frame.to_string();
        let chars: Vec<char> = text.chars().collect();
        let at = cut.index(chars.len() + 1);
        let truncated: String = chars[..at].iter().collect();
        let _ = decode(&truncated);
        let spliced: String =
            chars[..at].iter().chain(insert.chars().collect::<Vec<_>>().iter()).chain(chars[at..].iter()).collect();
        let _ = decode(&spliced);
    }
}

#[test]
fn valid_frames_of_every_type_decode() {
    let frames = [
        json!({"type": "hello", "user": "alice", "ref": "h"}),
        json!({"type": "join_room", "room": "icu-3", "since": "1-0", "ref": 1}),
        json!({"type": "leave_room", "room": "icu-3"}),
        json!({"type": "send_message", "room": "icu-3", "text": "x", "priority": "urgent"}),
        json!({"type": "typing", "room": "icu-3", "active": false}),
        json!({"type": "history", "room": "icu-3", "limit": 5}),
        json!({"type": "ping", "ref": -7}),
        json!({"type": "acknowledge_message", "room": "icu-3", "id": "1-0"}),
        json!({"type": "mark_read", "room": "icu-3", "up_to": "1-0"}),
        json!({"type": "refresh", "token": "t"}),
    ];
    for frame in frames {
        assert!(decode(&frame.to_string()).is_ok(), "{frame} decodes");
        check_frame(&frame).unwrap();
    }
}
