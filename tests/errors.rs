//! Refused frames: each gets an `error` with the right code, the connection
//! stays usable, and where two codes apply the protocol's order decides.

mod support;

use serde_json::{Value, json};
use support::{Client, TestPod};

const ROOM: &str = "icu-3";

/// Sends `frame` and returns the next frame, which must be an `error`.
async fn error_for(client: &mut Client, frame: Value) -> Value {
    client.send(frame.clone()).await;
    let reply = client.recv().await;
    assert_eq!(reply["type"], "error", "{frame} is refused: {reply}");
    assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()), "{reply}");
    reply
}

/// Sends `frame` and asserts an `error` with `code`, and the `ref` if any.
async fn assert_refused(client: &mut Client, frame: Value, code: &str) {
    let reply = error_for(client, frame.clone()).await;
    assert_eq!(reply["code"], code, "{frame} -> {reply}");
    let valid_ref = |r: &&Value| r.is_i64() || r.as_str().is_some_and(|s| s.chars().count() <= 64);
    if let Some(reference) = frame.get("ref").filter(valid_ref) {
        assert_eq!(&reply["ref"], reference, "the error carries the ref: {reply}");
    }
}

/// Proves the connection still works: a ping is answered by its pong.
async fn assert_usable(client: &mut Client) {
    let before = client.sync().await;
    assert!(before.is_empty(), "nothing else was pending: {before:?}");
}

#[tokio::test]
async fn malformed_json_gets_bad_request_and_the_connection_stays_usable() {
    let pod = TestPod::open().await;
    let mut alice = pod.client("alice").await;
    for text in ["{", "not json", "[1,2]", "\"ping\"", "42", "{}", r#"{"type":5}"#, ""] {
        alice.send_raw_text(text).await;
        let reply = alice.recv().await;
        assert_eq!(reply["type"], "error", "{text:?} -> {reply}");
        assert_eq!(reply["code"], "bad_request", "{text:?} -> {reply}");
    }
    assert_usable(&mut alice).await;
}

#[tokio::test]
async fn binary_frames_get_bad_request_and_the_connection_stays_usable() {
    let pod = TestPod::open().await;
    let mut alice = pod.client("alice").await;
    alice.send_binary(br#"{"type":"ping"}"#.to_vec()).await;
    let reply = alice.recv().await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "bad_request");
    assert_usable(&mut alice).await;
}

#[tokio::test]
async fn unknown_type_gets_bad_request_with_its_ref() {
    let pod = TestPod::open().await;
    let mut alice = pod.client("alice").await;
    assert_refused(&mut alice, json!({"type": "dance", "ref": "d1"}), "bad_request").await;
    assert_refused(&mut alice, json!({"type": "PING", "ref": 3}), "bad_request").await;
    assert_usable(&mut alice).await;
}

#[tokio::test]
async fn unknown_fields_are_ignored() {
    let pod = TestPod::open().await;
    let mut alice = pod.client("alice").await;
    let frame = json!({"type": "join_room", "room": ROOM, "colour": "blue", "extra": {"a": 1}});
    alice.request_ok(frame, "room_joined").await;
    let frame = json!({"type": "ping", "ref": "p", "future": [1, 2]});
    alice.send(frame).await;
    assert_eq!(alice.recv().await, json!({"type": "pong", "ref": "p"}));
}

#[tokio::test]
async fn wrong_field_types_get_bad_request_and_the_connection_stays_usable() {
    let pod = TestPod::open().await;
    let mut alice = pod.client("alice").await;
    alice.join(ROOM).await;
    let frames = [
        json!({"type": "join_room", "room": 5, "ref": "w1"}),
        json!({"type": "join_room", "ref": "w2"}),
        json!({"type": "join_room", "room": ROOM, "since": 17, "ref": "w3"}),
        json!({"type": "send_message", "room": ROOM, "text": {"a": 1}, "ref": "w4"}),
        json!({"type": "send_message", "room": ROOM, "ref": 5}),
        json!({"type": "send_message", "room": ROOM, "text": "x", "priority": "high", "ref": 6}),
        json!({"type": "send_message", "room": ROOM, "text": "x", "client_msg_id": 9, "ref": 7}),
        json!({"type": "typing", "room": ROOM, "active": "yes", "ref": "w8"}),
        json!({"type": "history", "room": ROOM, "limit": "ten", "ref": "w9"}),
        json!({"type": "history", "room": ROOM, "before": 12, "ref": "w10"}),
        json!({"type": "leave_room", "room": [ROOM], "ref": "w11"}),
        json!({"type": "ping", "ref": {"nested": true}}),
        json!({"type": "ping", "ref": 1.5}),
        json!({"type": "ping", "ref": "x".repeat(65)}),
    ];
    for frame in frames {
        assert_refused(&mut alice, frame, "bad_request").await;
    }
    assert_usable(&mut alice).await;
    alice.say(ROOM, "still here").await;
}

#[tokio::test]
async fn a_second_hello_gets_bad_request() {
    let pod = TestPod::open().await;
    let mut alice = pod.client("alice").await;
    assert_refused(&mut alice, json!({"type": "hello", "user": "bob", "ref": 1}), "bad_request")
        .await;
    assert_usable(&mut alice).await;
}

#[tokio::test]
async fn invalid_room_names_get_bad_request() {
    let pod = TestPod::open().await;
    let mut alice = pod.client("alice").await;
    let long = "r".repeat(65);
    for room in ["", "a b", "icu/3", "icu#3", "é", "room\n", long.as_str()] {
        let frame = json!({"type": "join_room", "room": room, "ref": "n"});
        assert_refused(&mut alice, frame, "bad_request").await;
    }
    assert_usable(&mut alice).await;
    let longest = "R".repeat(64);
    for room in ["A-z_0.9:x", longest.as_str()] {
        alice.join(room).await;
    }
}

#[tokio::test]
async fn text_length_counts_unicode_scalar_values() {
    let pod = TestPod::open().await;
    let mut alice = pod.client("alice").await;
    alice.join(ROOM).await;
    // U+1F691 (ambulance) is one scalar value and four UTF-8 bytes.
    let at_limit = "\u{1F691}".repeat(4000);
    alice.say(ROOM, &at_limit).await;
    let delivered = alice.recv_type("new_message").await;
    assert_eq!(delivered["message"]["text"], at_limit);

    let over = "\u{1F691}".repeat(4001);
    let frame = json!({"type": "send_message", "room": ROOM, "text": over, "ref": "t"});
    assert_refused(&mut alice, frame, "too_large").await;
    assert_usable(&mut alice).await;
}

#[tokio::test]
async fn text_limit_follows_the_configuration() {
    let mut config = support::open_config();
    config.limits.max_text_chars = 10;
    let pod = TestPod::start(config).await;
    let mut alice = pod.client("alice").await;
    alice.join(ROOM).await;
    alice.say(ROOM, "0123456789").await;
    alice.sync().await;
    let frame = json!({"type": "send_message", "room": ROOM, "text": "0123456789a"});
    assert_refused(&mut alice, frame, "too_large").await;
}

#[tokio::test]
async fn frames_for_a_room_not_joined_get_not_in_room() {
    let pod = TestPod::open().await;
    let mut alice = pod.client("alice").await;
    alice.join("other").await;
    let frames = [
        json!({"type": "send_message", "room": ROOM, "text": "hi", "ref": "s"}),
        json!({"type": "typing", "room": ROOM, "active": true, "ref": "t"}),
        json!({"type": "leave_room", "room": ROOM, "ref": "l"}),
    ];
    for frame in frames {
        assert_refused(&mut alice, frame, "not_in_room").await;
    }
    alice.join(ROOM).await;
    alice.leave(ROOM).await;
    let frame = json!({"type": "send_message", "room": ROOM, "text": "hi", "ref": "after"});
    assert_refused(&mut alice, frame, "not_in_room").await;
}

#[tokio::test]
async fn a_direct_room_admits_its_two_users_and_nobody_else() {
    let pod = TestPod::open().await;
    let dm = "dm:alice:bob";
    let mut carol = pod.client("carol").await;
    assert_refused(&mut carol, json!({"type": "join_room", "room": dm, "ref": 1}), "forbidden")
        .await;
    let history = json!({"type": "history", "room": dm, "ref": 2});
    assert_refused(&mut carol, history, "forbidden").await;

    let mut alice = pod.client("alice").await;
    let mut bob = pod.client("bob").await;
    alice.join(dm).await;
    bob.join(dm).await;
    alice.say(dm, "private").await;
    assert_eq!(bob.recv_type("new_message").await["message"]["text"], "private");

    let send = json!({"type": "send_message", "room": dm, "text": "let me in", "ref": 3});
    assert_refused(&mut carol, send, "forbidden").await;
    let seen = carol.sync().await;
    assert!(seen.is_empty(), "{seen:?}");
}

#[tokio::test]
async fn the_first_applicable_code_wins() {
    let pod = TestPod::open().await;
    let mut carol = pod.client("carol").await;
    let long = "x".repeat(4001);
    let cases = [
        // bad_request before not_in_room.
        (json!({"type": "send_message", "room": "bad room", "text": "x"}), "bad_request"),
        (json!({"type": "typing", "room": "", "active": true}), "bad_request"),
        // bad_request before too_large.
        (json!({"type": "send_message", "room": "bad room", "text": long}), "bad_request"),
        // too_large before not_in_room.
        (json!({"type": "send_message", "room": ROOM, "text": long}), "too_large"),
        // too_large before forbidden.
        (json!({"type": "send_message", "room": "dm:alice:bob", "text": long}), "too_large"),
        // forbidden before not_in_room.
        (json!({"type": "send_message", "room": "dm:alice:bob", "text": "x"}), "forbidden"),
        (json!({"type": "leave_room", "room": "dm:alice:bob"}), "forbidden"),
    ];
    for (frame, code) in cases {
        assert_refused(&mut carol, frame, code).await;
    }
    assert_usable(&mut carol).await;
}

#[tokio::test]
async fn history_limit_must_be_1_to_100() {
    let pod = TestPod::open().await;
    let mut alice = pod.client("alice").await;
    alice.join(ROOM).await;
    for limit in [json!(0), json!(101), json!(-1), json!(100_000_000_000u64)] {
        let frame = json!({"type": "history", "room": ROOM, "limit": limit, "ref": "h"});
        assert_refused(&mut alice, frame, "bad_request").await;
    }
    for limit in [1, 100] {
        let frame = json!({"type": "history", "room": ROOM, "limit": limit});
        alice.request_ok(frame, "history").await;
    }
}

#[tokio::test]
async fn ids_that_are_not_message_ids_get_bad_request() {
    let pod = TestPod::open().await;
    let mut alice = pod.client("alice").await;
    alice.join(ROOM).await;
    let frames = [
        json!({"type": "join_room", "room": ROOM, "since": "yesterday", "ref": 1}),
        json!({"type": "history", "room": ROOM, "before": "nope", "ref": 2}),
    ];
    for frame in frames {
        assert_refused(&mut alice, frame, "bad_request").await;
    }
    assert_usable(&mut alice).await;
}
