//! Protocol v1 against one pod with the in-process broker: every client
//! frame and its answer, and the room events that joins and leaves cause.

mod support;

use serde_json::{Value, json};
use support::{Client, TestPod, of_type};

const ROOM: &str = "icu-3";

/// The ids of the users in a `room_joined`'s `members`, sorted.
fn member_ids(joined: &Value) -> Vec<String> {
    let mut ids: Vec<String> = joined["members"]
        .as_array()
        .expect("members is an array")
        .iter()
        .map(|u| u["id"].as_str().expect("member id").to_string())
        .collect();
    ids.sort();
    ids
}

/// The `id`s of the messages in a frame's `messages`.
fn ids_in(frame: &Value) -> Vec<String> {
    frame["messages"]
        .as_array()
        .expect("messages is an array")
        .iter()
        .map(|m| m["id"].as_str().expect("message id").to_string())
        .collect()
}

/// Sends `count` messages `prefix-0`... and returns their ids in order.
async fn say_many(client: &mut Client, room: &str, prefix: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..count {
        let ack = client.say(room, &format!("{prefix}-{i}")).await;
        ids.push(ack["id"].as_str().expect("ack id").to_string());
    }
    ids
}

#[tokio::test]
async fn hello_is_answered_by_welcome_with_conn_user_node_and_protocol() {
    let pod = TestPod::open().await;
    let mut client = Client::connect(&pod.url()).await;
    let welcome = client.hello("alice", "Alice Grey").await;
    assert!(welcome["conn"].as_str().is_some_and(|c| !c.is_empty()), "{welcome}");
    assert_eq!(welcome["user"], json!({"id": "alice", "name": "Alice Grey"}));
    assert_eq!(welcome["node"], "test-pod");
    assert_eq!(welcome["protocol"], 1);
}

#[tokio::test]
async fn two_connections_get_distinct_conn_ids() {
    let pod = TestPod::open().await;
    let mut first = Client::connect(&pod.url()).await;
    let mut second = Client::connect(&pod.url()).await;
    let a = first.hello("alice", "Alice").await;
    let b = second.hello("alice", "Alice").await;
    assert_ne!(a["conn"], b["conn"]);
}

#[tokio::test]
async fn hello_without_name_uses_the_user_id_as_name() {
    let pod = TestPod::open().await;
    let mut client = Client::connect(&pod.url()).await;
    client.send(json!({"type": "hello", "user": "bob"})).await;
    let welcome = client.recv().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["user"], json!({"id": "bob", "name": "bob"}));
}

#[tokio::test]
async fn hello_ref_is_copied_into_welcome() {
    let pod = TestPod::open().await;
    let mut client = Client::connect(&pod.url()).await;
    client.send(json!({"type": "hello", "user": "alice", "ref": "h1"})).await;
    let welcome = client.recv().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["ref"], "h1", "welcome answers hello, so it carries its ref: {welcome}");
}

#[tokio::test]
async fn join_room_answers_members_and_the_latest_50_messages_oldest_first() {
    let pod = TestPod::open().await;
    let mut alice = pod.client("alice").await;
    alice.join(ROOM).await;
    let sent = say_many(&mut alice, ROOM, "m", 60).await;

    let mut bob = pod.client("bob").await;
    let joined = bob.join(ROOM).await;
    assert_eq!(joined["room"], ROOM);
    assert_eq!(member_ids(&joined), ["alice", "bob"]);
    assert_eq!(ids_in(&joined), sent[10..], "the latest 50, oldest first");
    let first = &joined["messages"][0];
    assert_eq!(first["text"], "m-10");
    assert_eq!(first["room"], ROOM);
    assert_eq!(first["from"], json!({"id": "alice", "name": "alice"}));
    assert_eq!(first["priority"], "normal");
    assert!(first["ts"].is_i64(), "{first}");
    assert!(joined.get("recovered").is_none(), "no `recovered` without `since`: {joined}");
}

#[tokio::test]
async fn join_room_of_an_empty_room_has_no_messages() {
    let pod = TestPod::open().await;
    let mut alice = pod.client("alice").await;
    let joined = alice.join("quiet").await;
    assert_eq!(joined["messages"], json!([]));
    assert_eq!(member_ids(&joined), ["alice"]);
}

#[tokio::test]
async fn join_with_since_returns_exactly_the_later_messages_and_recovered_true() {
    let pod = TestPod::open().await;
    let mut alice = pod.client("alice").await;
    alice.join(ROOM).await;
    let sent = say_many(&mut alice, ROOM, "m", 5).await;

    let mut bob = pod.client("bob").await;
    let joined = bob.join_since(ROOM, &sent[1]).await;
    assert_eq!(ids_in(&joined), sent[2..]);
    assert_eq!(joined["recovered"], true, "{joined}");

    let mut carol = pod.client("carol").await;
    let joined = carol.join_since(ROOM, &sent[4]).await;
    assert_eq!(ids_in(&joined), Vec::<String>::new());
    assert_eq!(joined["recovered"], true, "{joined}");
}

#[tokio::test]
async fn join_with_since_beyond_trimmed_history_says_recovered_false() {
    let mut config = support::open_config();
    config.history.max_len = 5;
    let pod = TestPod::start(config).await;
    let mut alice = pod.client("alice").await;
    alice.join(ROOM).await;
    let sent = say_many(&mut alice, ROOM, "m", 10).await;

    // Message 5 was trimmed: everything after message 4 is no longer there.
    let mut bob = pod.client("bob").await;
    let joined = bob.join_since(ROOM, &sent[3]).await;
    assert_eq!(joined["recovered"], false, "{joined}");
    assert_eq!(ids_in(&joined), sent[5..], "what history still has");

    // Everything after message 5 (the newest trimmed) is still there.
    let mut carol = pod.client("carol").await;
    let joined = carol.join_since(ROOM, &sent[4]).await;
    assert_eq!(joined["recovered"], true, "{joined}");
    assert_eq!(ids_in(&joined), sent[5..]);
}

#[tokio::test]
async fn joining_twice_answers_room_joined_again_and_announces_once() {
    let pod = TestPod::open().await;
    let mut bob = pod.client("bob").await;
    bob.join(ROOM).await;
    let mut alice = pod.client("alice").await;
    alice.join(ROOM).await;
    let again = alice.join(ROOM).await;
    assert_eq!(again["room"], ROOM);
    assert_eq!(member_ids(&again), ["alice", "bob"]);

    let seen = bob.sync().await;
    assert_eq!(of_type(&seen, "user_joined").len(), 1, "{seen:?}");
}

#[tokio::test]
async fn leave_room_answers_room_left_and_stops_delivery() {
    let pod = TestPod::open().await;
    let mut alice = pod.client("alice").await;
    let mut bob = pod.client("bob").await;
    alice.join(ROOM).await;
    bob.join(ROOM).await;

    let left = alice.leave(ROOM).await;
    assert_eq!(left["room"], ROOM);
    bob.say(ROOM, "after alice left").await;
    bob.sync().await;
    let seen = alice.sync().await;
    assert!(of_type(&seen, "new_message").is_empty(), "{seen:?}");
}

#[tokio::test]
async fn send_message_is_acked_and_delivered_to_every_connection_in_the_room() {
    let pod = TestPod::open().await;
    let mut alice = pod.client("alice").await;
    let mut alice_phone = pod.client("alice").await;
    let mut bob = pod.client("bob").await;
    let mut carol = pod.client("carol").await;
    for client in [&mut alice, &mut alice_phone, &mut bob] {
        client.join(ROOM).await;
    }

    let frame =
        json!({"type": "send_message", "room": ROOM, "text": "bed 4 needs help", "ref": "c1"});
    alice.send(frame).await;
    let ack = alice.recv_type("ack").await;
    assert_eq!(ack["ref"], "c1");
    assert!(ack["id"].as_str().is_some_and(|id| !id.is_empty()), "{ack}");
    assert!(ack["ts"].is_i64(), "{ack}");

    for client in [&mut alice, &mut alice_phone, &mut bob] {
        let delivered = client.recv_type("new_message").await;
        let message = &delivered["message"];
        assert_eq!(message["id"], ack["id"]);
        assert_eq!(message["ts"], ack["ts"]);
        assert_eq!(message["room"], ROOM);
        assert_eq!(message["text"], "bed 4 needs help");
        assert_eq!(message["from"], json!({"id": "alice", "name": "alice"}));
        assert_eq!(message["priority"], "normal");
    }
    let seen = carol.sync().await;
    assert!(of_type(&seen, "new_message").is_empty(), "not in the room: {seen:?}");
}

#[tokio::test]
async fn urgent_priority_is_kept_in_the_message() {
    let pod = TestPod::open().await;
    let mut alice = pod.client("alice").await;
    alice.join(ROOM).await;
    let frame =
        json!({"type": "send_message", "room": ROOM, "text": "code blue", "priority": "urgent"});
    alice.request_ok(frame, "ack").await;
    let delivered = alice.recv_type("new_message").await;
    assert_eq!(delivered["message"]["priority"], "urgent");
}

#[tokio::test]
async fn retry_with_the_same_client_msg_id_gets_the_same_id_and_no_second_delivery() {
    let pod = TestPod::open().await;
    let mut alice = pod.client("alice").await;
    let mut bob = pod.client("bob").await;
    alice.join(ROOM).await;
    bob.join(ROOM).await;

    let frame =
        json!({"type": "send_message", "room": ROOM, "text": "once", "client_msg_id": "u-1"});
    alice.send(frame.clone()).await;
    alice.send(frame).await;
    let seen_by_alice = alice.sync().await;
    let acks = of_type(&seen_by_alice, "ack");
    assert_eq!(acks.len(), 2, "both sends are acknowledged: {seen_by_alice:?}");
    let first = acks[0].clone();
    assert_eq!(first["id"], acks[1]["id"], "the retry gets the first id");

    for seen in [seen_by_alice, bob.sync().await] {
        let delivered = of_type(&seen, "new_message");
        assert_eq!(delivered.len(), 1, "delivered once: {seen:?}");
        assert_eq!(delivered[0]["message"]["id"], first["id"]);
    }
    let history = alice.request_ok(json!({"type": "history", "room": ROOM}), "history").await;
    assert_eq!(ids_in(&history), [first["id"].as_str().unwrap()], "stored once");
}

#[tokio::test]
async fn typing_reaches_the_other_connections_but_not_the_sender() {
    let pod = TestPod::open().await;
    let mut alice = pod.client("alice").await;
    let mut alice_phone = pod.client("alice").await;
    let mut bob = pod.client("bob").await;
    for client in [&mut alice, &mut alice_phone, &mut bob] {
        client.join(ROOM).await;
    }

    alice.send(json!({"type": "typing", "room": ROOM, "active": true})).await;
    let expected = json!({"type": "typing", "room": ROOM,
        "user": {"id": "alice", "name": "alice"}, "active": true});
    assert_eq!(bob.recv_type("typing").await, expected);
    assert_eq!(alice_phone.recv_type("typing").await, expected);
    let seen = alice.sync().await;
    assert!(of_type(&seen, "typing").is_empty(), "the sender gets no typing: {seen:?}");
}

#[tokio::test]
async fn history_pages_backwards_with_before_limit_and_more() {
    let pod = TestPod::open().await;
    let mut alice = pod.client("alice").await;
    alice.join(ROOM).await;
    let sent = say_many(&mut alice, ROOM, "m", 7).await;

    let page = |before: Option<&String>, limit: Option<u32>| {
        let mut frame = json!({"type": "history", "room": ROOM});
        if let Some(before) = before {
            frame["before"] = json!(before);
        }
        if let Some(limit) = limit {
            frame["limit"] = json!(limit);
        }
        frame
    };

    let latest = alice.request_ok(page(None, Some(3)), "history").await;
    assert_eq!(latest["room"], ROOM);
    assert_eq!(ids_in(&latest), sent[4..]);
    assert_eq!(latest["more"], true);

    let middle = alice.request_ok(page(Some(&sent[4]), Some(3)), "history").await;
    assert_eq!(ids_in(&middle), sent[1..4]);
    assert_eq!(middle["more"], true);

    let oldest = alice.request_ok(page(Some(&sent[1]), Some(3)), "history").await;
    assert_eq!(ids_in(&oldest), sent[..1]);
    assert_eq!(oldest["more"], false);

    let everything = alice.request_ok(page(None, None), "history").await;
    assert_eq!(ids_in(&everything), sent, "default limit 50 covers all 7");
    assert_eq!(everything["more"], false);
}

#[tokio::test]
async fn ping_is_answered_by_pong_with_its_ref() {
    let pod = TestPod::open().await;
    let mut alice = pod.client("alice").await;
    alice.send(json!({"type": "ping", "ref": "p1"})).await;
    assert_eq!(alice.recv().await, json!({"type": "pong", "ref": "p1"}));
    alice.send(json!({"type": "ping", "ref": 42})).await;
    assert_eq!(alice.recv().await, json!({"type": "pong", "ref": 42}));
    alice.send(json!({"type": "ping"})).await;
    assert_eq!(alice.recv().await, json!({"type": "pong"}));
}

#[tokio::test]
async fn ref_strings_and_integers_are_copied_into_every_reply() {
    let pod = TestPod::open().await;
    let mut alice = pod.client("alice").await;
    let frames = [
        (json!({"type": "join_room", "room": ROOM}), "room_joined"),
        (json!({"type": "send_message", "room": ROOM, "text": "hi"}), "ack"),
        (json!({"type": "history", "room": ROOM}), "history"),
        (json!({"type": "ping"}), "pong"),
        (json!({"type": "send_message", "room": "elsewhere", "text": "x"}), "error"),
        (json!({"type": "leave_room", "room": ROOM}), "room_left"),
    ];
    for (i, (frame, kind)) in frames.into_iter().enumerate() {
        for reference in [json!(format!("r-{i}")), json!(1000 + i), json!(-7)] {
            let mut frame = frame.clone();
            frame["ref"] = reference.clone();
            alice.send(frame.clone()).await;
            let reply = alice.recv_where(kind, |f| f["type"] == kind).await;
            assert_eq!(reply["ref"], reference, "{frame} -> {reply}");
            if kind == "room_left" {
                alice.join(ROOM).await;
            }
        }
    }
}

#[tokio::test]
async fn user_joined_and_room_info_update_go_to_the_others_only() {
    let pod = TestPod::open().await;
    let mut alice = pod.client("alice").await;
    alice.join(ROOM).await;
    let mut bob = Client::connect(&pod.url()).await;
    bob.hello("bob", "Bob Stone").await;
    bob.join(ROOM).await;

    let joined = alice.recv_type("user_joined").await;
    assert_eq!(
        joined,
        json!({"type": "user_joined", "room": ROOM,
        "user": {"id": "bob", "name": "Bob Stone"}})
    );
    let info = alice.recv_type("room_info_update").await;
    assert_eq!(info, json!({"type": "room_info_update", "room": ROOM, "member_count": 2}));

    let seen = bob.sync().await;
    assert!(of_type(&seen, "user_joined").is_empty(), "{seen:?}");
    assert!(of_type(&seen, "room_info_update").is_empty(), "{seen:?}");
}

#[tokio::test]
async fn user_left_goes_to_the_others_on_leave_and_on_close() {
    let pod = TestPod::open().await;
    let mut alice = pod.client("alice").await;
    let mut bob = pod.client("bob").await;
    let mut carol = pod.client("carol").await;
    for client in [&mut alice, &mut bob, &mut carol] {
        client.join(ROOM).await;
    }
    alice.sync().await;

    bob.leave(ROOM).await;
    let left = alice.recv_type("user_left").await;
    assert_eq!(
        left,
        json!({"type": "user_left", "room": ROOM,
        "user": {"id": "bob", "name": "bob"}})
    );
    let info = alice.recv_type("room_info_update").await;
    assert_eq!(info["member_count"], 2);
    let seen = bob.sync().await;
    assert!(of_type(&seen, "user_left").is_empty(), "{seen:?}");
    assert!(of_type(&seen, "room_info_update").is_empty(), "{seen:?}");

    carol.close().await;
    let left = alice.recv_type("user_left").await;
    assert_eq!(left["user"]["id"], "carol");
    let info = alice.recv_type("room_info_update").await;
    assert_eq!(info["member_count"], 1);
}

#[tokio::test]
async fn a_user_with_two_connections_joins_with_the_first_and_leaves_with_the_last() {
    let pod = TestPod::open().await;
    let mut alice = pod.client("alice").await;
    alice.join(ROOM).await;
    let mut bob_desk = pod.client("bob").await;
    let mut bob_phone = pod.client("bob").await;

    bob_desk.join(ROOM).await;
    assert_eq!(alice.recv_type("user_joined").await["user"]["id"], "bob");
    let joined = bob_phone.join(ROOM).await;
    assert_eq!(member_ids(&joined), ["alice", "bob"], "members are distinct users");
    let seen = alice.sync().await;
    assert!(of_type(&seen, "user_joined").is_empty(), "second connection: {seen:?}");

    bob_desk.leave(ROOM).await;
    let seen = alice.sync().await;
    assert!(of_type(&seen, "user_left").is_empty(), "bob is still there: {seen:?}");

    bob_phone.close().await;
    assert_eq!(alice.recv_type("user_left").await["user"]["id"], "bob");
    let info = alice.recv_type("room_info_update").await;
    assert_eq!(info["member_count"], 1);
}

#[tokio::test]
async fn the_same_client_msg_id_in_another_room_is_a_new_message() {
    let pod = TestPod::open().await;
    let mut alice = pod.client("alice").await;
    alice.join("a").await;
    alice.join("b").await;
    let send = |room: &str| json!({"type": "send_message", "room": room, "text": "x", "client_msg_id": "u-1"});
    alice.request_ok(send("a"), "ack").await;
    let in_b = alice.request_ok(send("b"), "ack").await;
    let history = alice.request_ok(json!({"type": "history", "room": "b"}), "history").await;
    assert_eq!(ids_in(&history), [in_b["id"].as_str().unwrap()]);
}

#[tokio::test]
async fn a_retry_is_deduplicated_even_after_history_trimmed_the_first_message() {
    let mut config = support::open_config();
    config.history.max_len = 2;
    let pod = TestPod::start(config).await;
    let mut alice = pod.client("alice").await;
    alice.join(ROOM).await;

    let frame =
        json!({"type": "send_message", "room": ROOM, "text": "once", "client_msg_id": "u-1"});
    let first = alice.request_ok(frame.clone(), "ack").await;
    say_many(&mut alice, ROOM, "later", 3).await;
    alice.sync().await;

    alice.send(frame).await;
    let seen = alice.sync().await;
    let acks = of_type(&seen, "ack");
    assert_eq!(acks.len(), 1, "{seen:?}");
    assert_eq!(acks[0]["id"], first["id"], "a retry within 10 minutes gets the first id");
    assert!(of_type(&seen, "new_message").is_empty(), "not delivered twice: {seen:?}");
}
