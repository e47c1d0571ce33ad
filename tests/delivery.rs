//! Delivery guarantees on one pod: one order per room for every connection,
//! each sender's messages in send order, and recovery after a reconnect.

mod support;

use std::cmp::Ordering;

use serde_json::{Value, json};
use support::{Client, TestPod};
use ward::protocol::compare_ids;

const ROOM: &str = "icu-3";

/// Sends `count` messages without waiting, then reads until every ack and
/// `total` new messages arrived. Returns (ack ids in send order, deliveries).
async fn send_and_collect(
    mut client: Client,
    name: &'static str,
    count: usize,
    total: usize,
) -> (Vec<String>, Vec<Value>) {
    for i in 0..count {
        let frame = json!({"type": "send_message", "room": ROOM, "text": format!("{name}-{i}"),
            "ref": i});
        client.send(frame).await;
    }
    let mut acks = vec![None; count];
    let mut delivered = Vec::new();
    while acks.iter().any(Option::is_none) || delivered.len() < total {
        let frame = client.recv().await;
        match frame["type"].as_str() {
            Some("ack") => {
                let i = frame["ref"].as_u64().expect("ack ref") as usize;
                acks[i] = Some(frame["id"].as_str().expect("ack id").to_string());
            }
            Some("new_message") => delivered.push(frame["message"].clone()),
            Some("user_joined" | "room_info_update") => {}
            _ => panic!("unexpected frame {frame}"),
        }
    }
    (acks.into_iter().map(Option::unwrap).collect(), delivered)
}

fn ids(messages: &[Value]) -> Vec<String> {
    messages.iter().map(|m| m["id"].as_str().unwrap().to_string()).collect()
}

fn texts_from<'a>(messages: &'a [Value], user: &str) -> Vec<&'a str> {
    messages
        .iter()
        .filter(|m| m["from"]["id"] == user)
        .map(|m| m["text"].as_str().unwrap())
        .collect()
}

fn assert_increasing(ids: &[String]) {
    for pair in ids.windows(2) {
        let order = compare_ids(&pair[0], &pair[1]);
        assert_eq!(order, Some(Ordering::Less), "ids in order: {} then {}", pair[0], pair[1]);
    }
}

#[tokio::test]
async fn concurrent_senders_see_one_order_and_their_own_send_order() {
    const EACH: usize = 200;
    let pod = TestPod::open().await;
    let mut alice = pod.client("alice").await;
    let mut bob = pod.client("bob").await;
    alice.join(ROOM).await;
    bob.join(ROOM).await;
    alice.sync().await;

    let a = tokio::spawn(send_and_collect(alice, "alice", EACH, 2 * EACH));
    let b = tokio::spawn(send_and_collect(bob, "bob", EACH, 2 * EACH));
    let (alice_acks, alice_saw) = a.await.expect("alice's task");
    let (bob_acks, bob_saw) = b.await.expect("bob's task");

    assert_eq!(ids(&alice_saw), ids(&bob_saw), "both see one order");
    assert_increasing(&ids(&alice_saw));
    assert_increasing(&alice_acks);
    assert_increasing(&bob_acks);
    let expected = |name: &str| (0..EACH).map(|i| format!("{name}-{i}")).collect::<Vec<_>>();
    assert_eq!(texts_from(&alice_saw, "alice"), expected("alice"));
    assert_eq!(texts_from(&alice_saw, "bob"), expected("bob"));
}

#[tokio::test]
async fn history_has_the_order_that_connections_saw() {
    let pod = TestPod::open().await;
    let mut alice = pod.client("alice").await;
    let mut bob = pod.client("bob").await;
    alice.join(ROOM).await;
    bob.join(ROOM).await;
    alice.sync().await;

    let a = tokio::spawn(send_and_collect(alice, "alice", 30, 60));
    let b = tokio::spawn(send_and_collect(bob, "bob", 30, 60));
    let (_, seen) = a.await.expect("alice's task");
    b.await.expect("bob's task");

    let mut carol = pod.client("carol").await;
    let history = carol.request_ok(json!({"type": "history", "room": ROOM}), "history").await;
    let stored = history["messages"].as_array().unwrap();
    assert_eq!(ids(stored), ids(&seen[10..]), "the latest 50 in the order delivered");
}

#[tokio::test]
async fn a_reconnect_with_since_gets_exactly_the_missed_messages() {
    const MISSED: usize = 20;
    let pod = TestPod::open().await;
    let mut alice = pod.client("alice").await;
    let mut bob = pod.client("bob").await;
    alice.join(ROOM).await;
    bob.join(ROOM).await;
    for i in 0..3 {
        alice.say(ROOM, &format!("seen-{i}")).await;
    }
    let mut last_seen = String::new();
    for _ in 0..3 {
        last_seen = bob.recv_type("new_message").await["message"]["id"].as_str().unwrap().into();
    }
    bob.close().await;
    alice.recv_type("user_left").await;

    let mut missed = Vec::new();
    for i in 0..MISSED {
        let ack = alice.say(ROOM, &format!("missed-{i}")).await;
        missed.push(ack["id"].as_str().unwrap().to_string());
    }

    let mut bob = pod.client("bob").await;
    let joined = bob.join_since(ROOM, &last_seen).await;
    assert_eq!(joined["recovered"], true, "{joined}");
    let recovered = joined["messages"].as_array().unwrap();
    assert_eq!(ids(recovered), missed, "exactly the missed ones, in order, once");
    let texts: Vec<String> = (0..MISSED).map(|i| format!("missed-{i}")).collect();
    assert_eq!(texts_from(recovered, "alice"), texts);

    // Live delivery resumes after the recovered page, without repeats.
    let ack = alice.say(ROOM, "live").await;
    let seen = bob.sync().await;
    let live: Vec<&Value> = seen.iter().filter(|f| f["type"] == "new_message").collect();
    assert_eq!(live.len(), 1, "{seen:?}");
    assert_eq!(live[0]["message"]["id"], ack["id"]);
}

#[tokio::test]
async fn messages_sent_while_joining_are_delivered_once() {
    const COUNT: usize = 100;
    let pod = TestPod::open().await;
    let mut alice = pod.client("alice").await;
    alice.join(ROOM).await;
    let mut bob = pod.client("bob").await;

    // Alice's messages race with Bob's join: each must reach Bob once,
    // either in `room_joined` or live, in the room's order.
    let sending = tokio::spawn(send_and_collect(alice, "alice", COUNT, COUNT));
    let joined = bob.join(ROOM).await;
    let (sent, _) = sending.await.expect("alice's task");

    let page = ids(joined["messages"].as_array().unwrap());
    let start = page.first().map_or(0, |first| {
        sent.iter().position(|id| id == first).expect("the page holds sent messages")
    });
    let mut seen = page;
    while seen.len() < COUNT - start {
        let frame = bob.recv_type("new_message").await;
        seen.push(frame["message"]["id"].as_str().unwrap().to_string());
    }
    seen.extend(support::message_ids(&bob.sync().await));
    assert_eq!(seen, sent[start..], "no gap, no repeat");
}
