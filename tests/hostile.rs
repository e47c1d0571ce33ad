//! Hostile clients against a real pod: floods, idle connections that never
//! say hello, oversized and fragmented frames, deeply nested JSON, invalid
//! UTF-8, binary frames, wrong field types and room hoarding. Each time the
//! offender is refused or closed and everybody else is served as before.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Client, TestPod, open_config};
use tokio::time::{Instant, interval};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

const ROOM: &str = "icu-3";
/// Rooms one connection may be in at once.
const ROOM_CAP: usize = 100;

/// A pod with the default rate limit: 20 frames a second, bursts of 40.
async fn rate_limited_pod() -> TestPod {
    let mut config = open_config();
    config.limits.messages_per_sec = 20.0;
    config.limits.burst = 40.0;
    TestPod::start(config).await
}

/// Asserts that the pod is ready and that a fresh client can chat.
async fn assert_still_serving(pod: &TestPod) {
    let ready = pod.get("/readyz").await;
    assert_eq!(ready.status, 200, "the pod stays ready: {}", ready.body);
    let mut probe = pod.client("probe").await;
    probe.join("probe-room").await;
    probe.say("probe-room", "still here").await;
    let echoed = probe.recv_type("new_message").await;
    assert_eq!(echoed["message"]["text"], "still here");
    probe.close().await;
}

/// What one flooding connection saw.
#[derive(Debug, Default)]
struct FloodReport {
    accepted: usize,
    rate_limited: usize,
    close_code: Option<u16>,
    elapsed: Duration,
}

/// Connects, joins the room and sends `frames` messages without reading,
/// then reads every answer until the pod closes the connection.
async fn flood_once(url: &str, user: &str, frames: usize) -> FloodReport {
    let mut client = Client::connect(url).await;
    client.hello(user, user).await;
    client.join(ROOM).await;

    let started = Instant::now();
    for i in 0..frames {
        let text = format!("flood {i}");
        client.send(json!({"type": "send_message", "room": ROOM, "text": text, "ref": i})).await;
    }
    let mut report = FloodReport::default();
    loop {
        match client.next_frame(Duration::from_secs(10)).await {
            Ok(Some(frame)) if frame["type"] == "ack" => report.accepted += 1,
            Ok(Some(frame)) if frame["code"] == "rate_limited" => report.rate_limited += 1,
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err((code, _)) => {
                report.close_code = Some(code);
                break;
            }
        }
    }
    report.elapsed = started.elapsed();
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_rate_limited_then_closed_with_4429_while_others_stay_fast() {
    let pod = rate_limited_pod().await;
    let mut observer = pod.client("observer").await;
    observer.join(ROOM).await;

    // Three flooders, three connections each, 1000 messages per connection.
    let mut floods = Vec::new();
    for n in 0..3 {
        let url = pod.url();
        floods.push(tokio::spawn(async move {
            let mut reports = Vec::new();
            for round in 0..3 {
                reports.push(flood_once(&url, &format!("flooder-{n}-{round}"), 1000).await);
            }
            reports
        }));
    }

    // Meanwhile the observer pings ten times a second, within its own limit.
    let mut ticks = interval(Duration::from_millis(100));
    let mut round_trips = Vec::new();
    while round_trips.len() < 10 || floods.iter().any(|f| !f.is_finished()) {
        ticks.tick().await;
        let sent = Instant::now();
        observer.sync().await;
        round_trips.push(sent.elapsed());
    }

    for flood in floods {
        for report in flood.await.expect("a flooder finished") {
            assert!(report.rate_limited >= 1, "the flood got rate_limited: {report:?}");
            assert_eq!(report.close_code, Some(4429), "the flood is closed: {report:?}");
            let allowed = 40.0 + 20.0 * report.elapsed.as_secs_f64() + 1.0;
            assert!(report.accepted as f64 <= allowed, "at most burst + rate: {report:?}");
        }
    }
    let worst = round_trips.iter().max().copied().unwrap_or_default();
    assert!(worst < Duration::from_millis(500), "observer's worst ping {worst:?}");
    assert_still_serving(&pod).await;
}

#[tokio::test]
async fn a_flood_of_malformed_frames_does_not_escape_the_rate_limit() {
    let pod = rate_limited_pod().await;
    let mut client = pod.client("mallory").await;
    let sent = 2000;
    for _ in 0..sent {
        client.send_raw_text("{").await;
    }
    let mut answered = 0;
    let close = loop {
        match client.next_frame(support::DEADLINE).await {
            Ok(Some(_)) => answered += 1,
            Ok(None) => break None,
            Err((code, _)) => break Some(code),
        }
    };
    assert_eq!(
        close,
        Some(4429),
        "{sent} malformed frames at once exceed 20/s again and again; \
         the pod answered {answered} of them and did not close"
    );
    assert_still_serving(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_say_hello_are_closed_with_4408_and_the_pod_stays_ready() {
    let mut config = open_config();
    config.limits.hello_timeout = Duration::from_millis(500);
    let pod = TestPod::start(config).await;
    let mut alice = pod.client("alice").await;
    let mut bob = pod.client("bob").await;
    alice.join(ROOM).await;
    bob.join(ROOM).await;

    let mut idlers = Vec::new();
    for _ in 0..500 {
        let url = pod.url();
        idlers.push(tokio::spawn(async move {
            let mut idle = Client::connect(&url).await;
            idle.expect_close().await.0
        }));
    }

    // Alice and Bob chat, and the pod stays ready, while the idlers wait.
    let mut said = 0;
    while idlers.iter().any(|i| !i.is_finished()) || said < 3 {
        let text = format!("during the idlers {said}");
        alice.say(ROOM, &text).await;
        let heard = bob.recv_type("new_message").await;
        assert_eq!(heard["message"]["text"], text.as_str());
        assert_eq!(pod.get("/readyz").await.status, 200, "ready while idlers wait");
        said += 1;
    }
    for idler in idlers {
        assert_eq!(idler.await.expect("an idler finished"), 4408);
    }
    pod.wait_metric("ward_connections", |open| open <= 2.0).await;
    assert_still_serving(&pod).await;
}

#[tokio::test]
async fn a_giant_frame_closes_with_1009_and_the_pod_keeps_serving() {
    let pod = TestPod::open().await;
    let mut client = pod.client("mallory").await;
    let giant = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(1 << 20));
    // The pod may stop reading before the whole frame is written.
    let _ = client.try_send_ws(Message::text(giant)).await;
    assert_eq!(client.expect_close().await.0, 1009);
    assert_still_serving(&pod).await;
}

#[tokio::test]
async fn a_frame_header_announcing_a_gigabyte_closes_with_1009() {
    let pod = TestPod::open().await;
    let mut client = pod.client("mallory").await;
    // FIN + text, masked, 64-bit length of 1 GiB, mask key, then 16 bytes.
    let mut head = vec![0x81, 0x80 | 127];
    head.extend_from_slice(&(1u64 << 30).to_be_bytes());
    head.extend_from_slice(&[1, 2, 3, 4]);
    head.extend_from_slice(&[b'x'; 16]);
    client.write_raw(&head).await;
    assert_eq!(client.expect_close().await.0, 1009);
    assert_still_serving(&pod).await;
}

/// A text message in fragments of `size` bytes of `x`, `parts` of them.
async fn send_fragments(client: &mut Client, parts: usize, size: usize) {
    for i in 0..parts {
        let opcode = if i == 0 { OpCode::Data(Data::Text) } else { OpCode::Data(Data::Continue) };
        let frame = Frame::message(vec![b'x'; size], opcode, i + 1 == parts);
        if client.try_send_ws(Message::Frame(frame)).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn a_fragmented_message_larger_than_the_limit_closes_with_1009() {
    let pod = TestPod::open().await;
    let mut client = pod.client("mallory").await;
    // Each fragment is under the 64 KiB limit; together they are 160 KiB.
    send_fragments(&mut client, 4, 40 * 1024).await;
    assert_eq!(client.expect_close().await.0, 1009);
    assert_still_serving(&pod).await;
}

#[tokio::test]
async fn a_message_split_inside_a_multibyte_character_is_reassembled() {
    let pod = TestPod::open().await;
    let mut client = pod.client("alice").await;
    client.join(ROOM).await;
    let text = json!({"type": "send_message", "room": ROOM, "text": "café ok", "ref": "frag"});
    let bytes = text.to_string().into_bytes();
    let split = bytes.iter().position(|b| *b == 0xc3).expect("é is in the frame") + 1;
    let first = Frame::message(bytes[..split].to_vec(), OpCode::Data(Data::Text), false);
    let rest = Frame::message(bytes[split..].to_vec(), OpCode::Data(Data::Continue), true);
    client.send_ws(Message::Frame(first)).await;
    client.send_ws(Message::Frame(rest)).await;
    let ack = client.recv_where("the ack of the fragments", |f| f["ref"] == "frag").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(client.recv_type("new_message").await["message"]["text"], "café ok");
}

/// `depth` arrays nested inside each other.
fn nested_arrays(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// `depth` objects nested inside each other under the key `a`.
fn nested_objects(depth: usize) -> String {
    format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth))
}

#[tokio::test]
async fn deeply_nested_json_gets_bad_request_and_the_pod_keeps_serving() {
    let pod = TestPod::open().await;
    let mut client = pod.client("mallory").await;
    client.join(ROOM).await;
    let frames = [
        format!(r#"{{"type":"ping","ref":"n1","extra":{}}}"#, nested_arrays(10_000)),
        format!(r#"{{"type":"ping","ref":"n2","extra":{}}}"#, nested_objects(10_000)),
        format!(
            r#"{{"type":"send_message","room":"{ROOM}","text":{},"ref":"n3"}}"#,
            nested_arrays(30_000)
        ),
        format!(r#"{{"type":"ping","ref":{}}}"#, nested_arrays(20_000)),
        nested_arrays(32_000),
    ];
    for frame in &frames {
        assert!(frame.len() < 65_536, "each frame fits the frame limit");
        client.send_raw_text(frame).await;
        let reply = client.recv().await;
        assert_eq!(reply["type"], "error", "{reply}");
        assert_eq!(reply["code"], "bad_request", "{reply}");
    }
    assert!(client.sync().await.is_empty(), "nothing else was answered");
    assert_still_serving(&pod).await;
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_is_refused_without_harm() {
    let pod = TestPod::open().await;
    let payloads: [&[u8]; 3] = [
        b"{\"type\":\"ping\",\"ref\":\"\xff\xfe\"}",
        b"\xc3\x28",
        b"{\"type\":\"ping\",\"x\":\"\xed\xa0\x80\"}",
    ];
    for payload in payloads {
        let mut client = pod.client("mallory").await;
        let frame = Frame::message(payload.to_vec(), OpCode::Data(Data::Text), true);
        client.send_ws(Message::Frame(frame)).await;
        match client.next_frame(support::DEADLINE).await {
            Ok(Some(reply)) => assert_eq!(reply["code"], "bad_request", "{payload:?}: {reply}"),
            Ok(None) => panic!("{payload:?}: neither an answer nor a close"),
            Err(_closed) => {}
        }
        assert_still_serving(&pod).await;
    }

    // As the first frame, before hello.
    let mut early = Client::connect(&pod.url()).await;
    let frame = Frame::message(b"\xff\xff".to_vec(), OpCode::Data(Data::Text), true);
    early.send_ws(Message::Frame(frame)).await;
    assert!(early.next_frame(support::DEADLINE).await.is_err(), "closed before hello");
    assert_still_serving(&pod).await;
}

#[tokio::test]
async fn binary_frames_get_bad_request_and_the_connection_stays_usable() {
    let pod = TestPod::open().await;
    let mut client = pod.client("mallory").await;
    let payloads = [Vec::new(), br#"{"type":"ping","ref":"b"}"#.to_vec(), vec![0xff; 4096]];
    for payload in payloads {
        client.send_binary(payload).await;
        let reply = client.recv().await;
        assert_eq!((&reply["type"], &reply["code"]), (&json!("error"), &json!("bad_request")));
    }
    assert!(client.sync().await.is_empty());
}

/// A valid example of each client frame after `hello`, by type.
fn valid_frames() -> Vec<Value> {
    vec![
        json!({"type": "hello", "token": "t", "user": "u", "name": "n"}),
        json!({"type": "join_room", "room": ROOM, "since": "1-0"}),
        json!({"type": "leave_room", "room": ROOM}),
        json!({"type": "send_message", "room": ROOM, "text": "t", "priority": "urgent",
               "client_msg_id": "c", "needs_ack": true, "ack_deadline": "5m"}),
        json!({"type": "typing", "room": ROOM, "active": true}),
        json!({"type": "history", "room": ROOM, "before": "1-0", "limit": 10}),
        json!({"type": "acknowledge_message", "room": ROOM, "id": "1-0"}),
        json!({"type": "mark_read", "room": ROOM, "up_to": "1-0"}),
        json!({"type": "refresh", "token": "t"}),
    ]
}

/// Values of the wrong JSON type for a field whose right value is `right`.
fn wrong_values(right: &Value) -> Vec<Value> {
    let mut wrong = vec![json!([1]), json!({"a": 1})];
    match right {
        Value::String(_) => wrong.extend([json!(42), json!(true)]),
        Value::Bool(_) => wrong.extend([json!("true"), json!(1)]),
        Value::Number(_) => wrong.extend([json!("10"), json!(-1), json!(1.5), json!(true)]),
        other => panic!("no wrong values for {other}"),
    }
    wrong
}

#[tokio::test]
async fn a_wrong_type_in_any_field_of_any_frame_gets_bad_request_with_the_ref() {
    let pod = TestPod::open().await;
    let mut client = pod.client("mallory").await;
    client.join(ROOM).await;
    let mut tried = 0;
    for valid in valid_frames() {
        for (field, right) in valid.as_object().unwrap() {
            let wrongs = if field == "type" {
                vec![json!(7), json!(null), json!(["ping"]), json!({"t": 1})]
            } else {
                wrong_values(right)
            };
            for wrong in wrongs {
                let mut frame = valid.clone();
                frame[field] = wrong;
                let reference = format!("w{tried}");
                frame["ref"] = json!(reference);
                client.send(frame.clone()).await;
                let reply = client.recv().await;
                assert_eq!(reply["type"], "error", "{frame} -> {reply}");
                assert_eq!(reply["code"], "bad_request", "{frame} -> {reply}");
                assert_eq!(reply["ref"], reference.as_str(), "{frame} -> {reply}");
                tried += 1;
            }
        }
    }
    assert!(tried > 100, "every field of every frame was tried ({tried})");
    assert!(client.sync().await.is_empty(), "nothing else was answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_thousands_of_rooms_is_refused_past_the_cap_and_the_pod_stays_ready() {
    let pod = TestPod::open().await;
    let mut hoarder = pod.client("hoarder").await;
    let attempts = 3000;
    let (mut joined, mut refused) = (Vec::new(), Vec::new());
    // Sent in bursts of 100, each read back before the next, as a client
    // that reads while it writes would: a client that only writes fills
    // both sockets' buffers and waits for itself.
    for burst in (0..attempts).collect::<Vec<_>>().chunks(100) {
        for i in burst {
            hoarder.send(json!({"type": "join_room", "room": format!("room-{i}"), "ref": i})).await;
        }
        for _ in burst {
            let reply = hoarder.recv_where("a join answer", |f| f["ref"].is_i64()).await;
            let index = reply["ref"].as_i64().unwrap();
            match reply["type"].as_str() {
                Some("room_joined") => joined.push(index),
                Some("error") => refused.push(index),
                _ => panic!("unexpected answer {reply}"),
            }
        }
    }
    assert_eq!(joined, (0..ROOM_CAP as i64).collect::<Vec<_>>(), "the first 100 are joined");
    assert_eq!(refused.len(), attempts - ROOM_CAP, "every later join is refused");
    assert_eq!(pod.get("/readyz").await.status, 200);

    // Leaving one room makes space for exactly one more.
    hoarder.leave("room-0").await;
    hoarder.join("room-extra").await;
    let again = hoarder.request(json!({"type": "join_room", "room": "room-too-many"})).await;
    assert_eq!(again["type"], "error", "{again}");
    assert_still_serving(&pod).await;
}
