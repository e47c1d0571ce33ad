//! Clinical extensions on one pod: messages that need acknowledgement, their
//! escalation (room event and signed webhook), and read receipts.

mod support;

use std::net::SocketAddr;

use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use support::{Client, TestPod, of_type, open_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;

const ROOM: &str = "icu-3";

/// Milliseconds since the Unix epoch, as the pod counts them.
fn now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

/// Sends a message with extra fields and returns the delivered MESSAGE.
async fn send(client: &mut Client, extra: Value) -> Value {
    let mut frame = json!({"type": "send_message", "room": ROOM, "text": "check bed 4"});
    for (key, value) in extra.as_object().expect("extra fields") {
        frame[key] = value.clone();
    }
    let ack = client.request_ok(frame, "ack").await;
    let delivered = client.recv_where("the new message", |f| {
        f["type"] == "new_message" && f["message"]["id"] == ack["id"]
    });
    delivered.await["message"].clone()
}

/// Alice and Bob in [`ROOM`], with the join events read.
async fn alice_and_bob(pod: &TestPod) -> (Client, Client) {
    let mut alice = pod.client("alice").await;
    let mut bob = pod.client("bob").await;
    alice.join(ROOM).await;
    bob.join(ROOM).await;
    alice.sync().await;
    (alice, bob)
}

fn acknowledge(id: &Value) -> Value {
    json!({"type": "acknowledge_message", "room": ROOM, "id": id})
}

#[tokio::test]
async fn needs_ack_messages_carry_a_deadline_and_their_acknowledgements() {
    let pod = TestPod::open().await;
    let (mut alice, _bob) = alice_and_bob(&pod).await;

    let asked = send(&mut alice, json!({"needs_ack": true, "ack_deadline": "90s"})).await;
    assert_eq!(asked["needs_ack"], true, "{asked}");
    assert_eq!(asked["deadline"].as_i64(), asked["ts"].as_i64().map(|ts| ts + 90_000));
    assert_eq!(asked["acknowledged_by"], json!([]));

    let urgent = send(&mut alice, json!({"priority": "urgent"})).await;
    assert_eq!(urgent["needs_ack"], true, "urgent needs acknowledgement by default");
    let default_deadline = 300_000; // escalation.default_deadline, 5 min
    assert_eq!(urgent["deadline"].as_i64(), urgent["ts"].as_i64().map(|ts| ts + default_deadline));

    let urgent_fyi = send(&mut alice, json!({"priority": "urgent", "needs_ack": false})).await;
    assert!(urgent_fyi.get("needs_ack").is_none_or(|v| v == false), "{urgent_fyi}");

    let plain = send(&mut alice, json!({})).await;
    assert!(plain.get("needs_ack").is_none_or(|v| v == false), "{plain}");
    assert!(plain.get("deadline").is_none(), "{plain}");
}

#[tokio::test]
async fn a_bad_ack_deadline_gets_bad_request() {
    let pod = TestPod::open().await;
    let (mut alice, _bob) = alice_and_bob(&pod).await;
    for deadline in [json!("soon"), json!(5), json!("0s")] {
        let frame = json!({"type": "send_message", "room": ROOM, "text": "x",
            "needs_ack": true, "ack_deadline": deadline});
        let reply = alice.request(frame).await;
        assert_eq!(reply["code"], "bad_request", "deadline {deadline}: {reply}");
    }
}

#[tokio::test]
async fn acknowledging_is_acked_announced_to_the_room_and_recorded_once() {
    let pod = TestPod::open().await;
    let (mut alice, mut bob) = alice_and_bob(&pod).await;
    let message = send(&mut alice, json!({"needs_ack": true})).await;
    let id = message["id"].clone();

    let mut frame = acknowledge(&id);
    frame["ref"] = json!("a1");
    bob.send(frame).await;
    assert_eq!(bob.recv_type("ack").await, json!({"type": "ack", "ref": "a1"}));
    let bob_user = json!({"id": "bob", "name": "bob"});
    for client in [&mut alice, &mut bob] {
        let event = client.recv_type("message_acknowledged").await;
        assert_eq!(event["room"], ROOM);
        assert_eq!(event["id"], id);
        assert_eq!(event["by"], bob_user);
        assert!(event["ts"].is_i64(), "{event}");
    }

    // Twice is harmless: still one entry, wherever the message appears.
    bob.request_ok(acknowledge(&id), "ack").await;
    let history = bob.request_ok(json!({"type": "history", "room": ROOM}), "history").await;
    let acks = &history["messages"][0]["acknowledged_by"];
    assert_eq!(acks.as_array().map(Vec::len), Some(1), "{history}");
    assert_eq!(acks[0]["user"], bob_user);
    let mut carol = pod.client("carol").await;
    let joined = carol.join(ROOM).await;
    assert_eq!(joined["messages"][0]["acknowledged_by"], *acks);
}

#[tokio::test]
async fn acknowledging_a_message_without_needs_ack_gets_bad_request() {
    let pod = TestPod::open().await;
    let (mut alice, mut bob) = alice_and_bob(&pod).await;
    let message = send(&mut alice, json!({})).await;
    let reply = bob.request(acknowledge(&message["id"])).await;
    assert_eq!(reply["code"], "bad_request", "{reply}");
}

#[tokio::test]
async fn the_sender_cannot_acknowledge_their_own_message() {
    let pod = TestPod::open().await;
    let (mut alice, _bob) = alice_and_bob(&pod).await;
    let message = send(&mut alice, json!({"needs_ack": true})).await;
    let reply = alice.request(acknowledge(&message["id"])).await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
}

#[tokio::test]
async fn an_unacknowledged_message_is_overdue_once_within_2s_of_its_deadline() {
    let pod = TestPod::open().await;
    let (mut alice, mut bob) = alice_and_bob(&pod).await;
    let acked = send(&mut alice, json!({"needs_ack": true, "ack_deadline": "1s"})).await;
    bob.request_ok(acknowledge(&acked["id"]), "ack").await;
    let ignored = send(&mut alice, json!({"needs_ack": true, "ack_deadline": "1s"})).await;

    // The acknowledged message is due first; had it been escalated, its
    // `ack_overdue` would come no later than the ignored one's.
    let mut seen = Vec::new();
    let overdue = loop {
        let frame = bob.recv().await;
        if frame["type"] == "ack_overdue" && frame["id"] == ignored["id"] {
            break frame;
        }
        seen.push(frame);
    };
    let late_by = now_ms() - ignored["deadline"].as_i64().expect("deadline");
    assert!(late_by >= 0, "ack_overdue came {} ms before the deadline", -late_by);
    assert!(late_by <= 2000, "ack_overdue came {late_by} ms after the deadline");
    assert_eq!(overdue, json!({"type": "ack_overdue", "room": ROOM, "id": ignored["id"]}));
    seen.extend(bob.sync().await);
    assert!(of_type(&seen, "ack_overdue").is_empty(), "only the ignored one: {seen:?}");
    let to_alice = alice.recv_type("ack_overdue").await;
    assert_eq!(to_alice["id"], ignored["id"], "every connection in the room gets it");

    // Once: a later message's escalation comes, the first does not again.
    let control = send(&mut alice, json!({"needs_ack": true, "ack_deadline": "1s"})).await;
    let next = bob.recv_type("ack_overdue").await;
    assert_eq!(next["id"], control["id"], "no second ack_overdue for {}", ignored["id"]);
}

/// One request received by the webhook mock.
struct Hook {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Hook {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the webhook body is JSON")
    }
}

/// A webhook on a free loopback port that answers with `statuses` in turn
/// (the last one from then on) and reports every request.
async fn webhook(statuses: Vec<u16>) -> (SocketAddr, mpsc::UnboundedReceiver<Hook>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        for n in 0.. {
            let Ok((stream, _)) = listener.accept().await else { return };
            let status = statuses[n.min(statuses.len() - 1)];
            if let Some(hook) = answer_hook(stream, status).await {
                let _ = tx.send(hook);
            }
        }
    });
    (addr, rx)
}

/// Reads one request and answers `status`, closing the connection.
async fn answer_hook(mut stream: TcpStream, status: u16) -> Option<Hook> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let (head_end, length) = loop {
        let read = stream.read(&mut buf).await.ok().filter(|n| *n > 0)?;
        raw.extend_from_slice(&buf[..read]);
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (end + 4, length);
        }
    };
    while raw.len() < head_end + length {
        let read = stream.read(&mut buf).await.ok().filter(|n| *n > 0)?;
        raw.extend_from_slice(&buf[..read]);
    }
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(answer.as_bytes()).await.ok()?;
    Some(Hook { headers, body: raw[head_end..head_end + length].to_vec() })
}

async fn next_hook(hooks: &mut mpsc::UnboundedReceiver<Hook>) -> Hook {
    timeout(support::DEADLINE, hooks.recv())
        .await
        .expect("the webhook is called in time")
        .expect("the webhook mock runs")
}

#[tokio::test]
async fn the_webhook_gets_a_signed_post_retried_until_it_answers_2xx() {
    let (hook_addr, mut hooks) = webhook(vec![500, 204]).await;
    let mut config = open_config();
    config.escalation.webhook_url = Some(format!("http://{hook_addr}/escalate"));
    config.escalation.webhook_secret = Some("s3cret".into());
    let pod = TestPod::start(config).await;
    let (mut alice, _bob) = alice_and_bob(&pod).await;
    let message = send(&mut alice, json!({"priority": "urgent", "ack_deadline": "1s"})).await;

    let refused = next_hook(&mut hooks).await;
    let late_by = now_ms() - message["deadline"].as_i64().expect("deadline");
    assert!(late_by <= 2000, "the webhook was called {late_by} ms after the deadline");
    let body = refused.json();
    assert_eq!(body["room"], ROOM);
    assert_eq!(body["id"], message["id"]);
    assert_eq!(body["from"], json!({"id": "alice", "name": "alice"}));
    assert_eq!(body["priority"], "urgent");
    assert_eq!(body["deadline"], message["deadline"]);
    assert!(body.get("text").is_none(), "the webhook never carries the text: {body}");
    let raw = String::from_utf8_lossy(&refused.body);
    assert!(!raw.contains("check bed 4"), "the webhook never carries the text: {raw}");
    assert!(refused.header("content-type").is_some_and(|t| t.contains("json")));

    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(b"s3cret").unwrap();
    mac.update(&refused.body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(refused.header("x-ward-signature"), Some(expected.as_str()));

    let retried = next_hook(&mut hooks).await;
    assert_eq!(retried.body, refused.body, "the retry posts the same body");

    // Answered 2xx: the next call is for another message, not a third try.
    let control = send(&mut alice, json!({"needs_ack": true, "ack_deadline": "1s"})).await;
    let next = next_hook(&mut hooks).await;
    assert_eq!(next.json()["id"], control["id"]);
}

#[tokio::test]
async fn mark_read_sends_receipts_to_the_others_and_ignores_older_marks() {
    let pod = TestPod::open().await;
    let (mut alice, mut bob) = alice_and_bob(&pod).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(send(&mut alice, json!({})).await["id"].clone());
    }
    bob.sync().await;

    let mark = |up_to: &Value| json!({"type": "mark_read", "room": ROOM, "up_to": up_to});
    bob.send(mark(&ids[1])).await;
    let receipt = alice.recv_type("read_receipt").await;
    assert_eq!(receipt["room"], ROOM);
    assert_eq!(receipt["user"], json!({"id": "bob", "name": "bob"}));
    assert_eq!(receipt["up_to"], ids[1]);
    assert!(receipt["ts"].is_i64(), "{receipt}");

    // An older mark is ignored; the newer one after it is the control.
    bob.send(mark(&ids[0])).await;
    bob.send(mark(&ids[2])).await;
    let next = alice.recv_type("read_receipt").await;
    assert_eq!(next["up_to"], ids[2], "the older mark sent no receipt");
    let own = bob.sync().await;
    assert!(of_type(&own, "read_receipt").is_empty(), "not to the reader: {own:?}");

    let mut carol = pod.client("carol").await;
    let joined = carol.join(ROOM).await;
    let reads = joined["reads"].as_array().expect("room_joined has reads");
    let bob_read = reads.iter().find(|r| r["user"]["id"] == "bob").expect("bob's mark");
    assert_eq!(bob_read["up_to"], ids[2]);
}

#[tokio::test]
async fn needs_ack_fields_appear_in_room_joined_and_history_with_the_default_deadline() {
    let mut config = open_config();
    config.escalation.default_deadline = std::time::Duration::from_secs(120);
    let pod = TestPod::start(config).await;
    let (mut alice, _bob) = alice_and_bob(&pod).await;
    send(&mut alice, json!({"needs_ack": true, "ack_deadline": "90s"})).await;
    send(&mut alice, json!({"priority": "urgent"})).await;
    send(&mut alice, json!({})).await;

    let mut carol = pod.client("carol").await;
    let joined = carol.join(ROOM).await;
    let history = carol.request_ok(json!({"type": "history", "room": ROOM}), "history").await;
    for (place, messages) in
        [("room_joined", &joined["messages"]), ("history", &history["messages"])]
    {
        let messages = messages.as_array().expect("messages");
        assert_eq!(messages.len(), 3, "{place}: {messages:?}");
        for (message, after) in [(&messages[0], 90_000), (&messages[1], 120_000)] {
            assert_eq!(message["needs_ack"], true, "{place}: {message}");
            let deadline = message["ts"].as_i64().map(|ts| ts + after);
            assert_eq!(message["deadline"].as_i64(), deadline, "{place}: {message}");
            assert_eq!(message["acknowledged_by"], json!([]), "{place}: {message}");
        }
        let plain = &messages[2];
        assert!(plain.get("needs_ack").is_none_or(|v| v == false), "{place}: {plain}");
        assert!(plain.get("deadline").is_none(), "{place}: {plain}");
    }
}

#[tokio::test]
async fn every_connection_gets_message_acknowledged_and_each_user_is_listed_once() {
    let pod = TestPod::open().await;
    let mut clients = Vec::new();
    for user in ["alice", "bob", "bob", "carol"] {
        let mut client = pod.client(user).await;
        client.join(ROOM).await;
        clients.push(client);
    }
    let message = send(&mut clients[0], json!({"priority": "urgent"})).await;
    let id = message["id"].clone();

    clients[1].request_ok(acknowledge(&id), "ack").await;
    for (n, client) in clients.iter_mut().enumerate() {
        let event = client.recv_type("message_acknowledged").await;
        assert_eq!((&event["id"], &event["by"]["id"]), (&id, &json!("bob")), "connection {n}");
    }

    // Bob again from his other connection, then Carol: two users, once each.
    clients[2].request_ok(acknowledge(&id), "ack").await;
    clients[3].request_ok(acknowledge(&id), "ack").await;
    let history = clients[0].request_ok(json!({"type": "history", "room": ROOM}), "history").await;
    let by: Vec<&Value> = history["messages"][0]["acknowledged_by"]
        .as_array()
        .expect("acknowledged_by")
        .iter()
        .map(|a| &a["user"]["id"])
        .collect();
    assert_eq!(by, [&json!("bob"), &json!("carol")], "{history}");
}

#[tokio::test]
async fn an_acknowledged_message_is_not_posted_to_the_webhook() {
    let (hook_addr, mut hooks) = webhook(vec![200]).await;
    let mut config = open_config();
    config.escalation.webhook_url = Some(format!("http://{hook_addr}/escalate"));
    let pod = TestPod::start(config).await;
    let (mut alice, mut bob) = alice_and_bob(&pod).await;
    let acked = send(&mut alice, json!({"needs_ack": true, "ack_deadline": "1s"})).await;
    bob.request_ok(acknowledge(&acked["id"]), "ack").await;
    let ignored = send(&mut alice, json!({"needs_ack": true, "ack_deadline": "1s"})).await;

    // Both are due by now; the first POST must be the ignored message's, and
    // the acknowledged one's window closes without a POST.
    let first = next_hook(&mut hooks).await;
    assert_eq!(first.json()["id"], ignored["id"], "only the ignored message is posted");
    let window_end = acked["deadline"].as_i64().expect("deadline") + 2500;
    while now_ms() < window_end {
        bob.sync().await;
    }
    assert!(hooks.try_recv().is_err(), "no POST for the acknowledged message");
}

#[tokio::test]
async fn a_read_receipt_reaches_the_readers_other_connections_too() {
    let pod = TestPod::open().await;
    let (mut alice, mut bob) = alice_and_bob(&pod).await;
    let mut bob_phone = pod.client("bob").await;
    bob_phone.join(ROOM).await;
    let message = send(&mut alice, json!({})).await;
    bob.sync().await;

    bob.send(json!({"type": "mark_read", "room": ROOM, "up_to": message["id"]})).await;
    let receipt = bob_phone.recv_type("read_receipt").await;
    assert_eq!((&receipt["user"]["id"], &receipt["up_to"]), (&json!("bob"), &message["id"]));
    let own = bob.sync().await;
    assert!(of_type(&own, "read_receipt").is_empty(), "not to the marking connection: {own:?}");
}
