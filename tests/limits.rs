//! Limits that protect a pod from one client: the hello handshake and its
//! timeout, frame size, rate limit and slow consumers, with their close codes.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{Client, TestPod, open_config};
use tokio::time::Instant;

const ROOM: &str = "icu-3";

/// A `ping` frame padded with an unknown field to exactly `bytes` bytes.
fn ping_of_size(bytes: usize) -> String {
    let empty = json!({"type": "ping", "pad": ""}).to_string();
    let frame = json!({"type": "ping", "pad": "p".repeat(bytes - empty.len())}).to_string();
    assert_eq!(frame.len(), bytes);
    frame
}

#[tokio::test]
async fn a_first_frame_that_is_not_hello_closes_with_4400() {
    let pod = TestPod::open().await;
    let firsts = [
        json!({"type": "ping"}).to_string(),
        json!({"type": "join_room", "room": ROOM}).to_string(),
        "{not json".to_string(),
    ];
    for first in firsts {
        let mut client = Client::connect(&pod.url()).await;
        client.send_raw_text(&first).await;
        assert_eq!(client.expect_close().await.0, 4400, "first frame {first}");
    }
    let mut client = Client::connect(&pod.url()).await;
    client.send_binary(br#"{"type":"hello","user":"alice"}"#.to_vec()).await;
    assert_eq!(client.expect_close().await.0, 4400, "a binary hello");
}

#[tokio::test]
async fn a_hello_with_an_invalid_user_id_closes_with_4400() {
    let pod = TestPod::open().await;
    for user in [json!("not valid"), json!(""), json!(7)] {
        let mut client = Client::connect(&pod.url()).await;
        client.send(json!({"type": "hello", "user": user})).await;
        assert_eq!(client.expect_close().await.0, 4400, "user {user}");
    }
}

#[tokio::test]
async fn a_websocket_ping_before_hello_is_not_a_protocol_violation() {
    let pod = TestPod::open().await;
    let mut client = Client::connect(&pod.url()).await;
    client.send_ws_ping().await;
    client.hello("alice", "Alice").await;
}

#[tokio::test]
async fn no_hello_within_the_hello_timeout_closes_with_4408() {
    let mut config = open_config();
    config.limits.hello_timeout = Duration::from_millis(300);
    let pod = TestPod::start(config).await;
    let started = Instant::now();
    let mut client = Client::connect(&pod.url()).await;
    let (code, _) = client.expect_close().await;
    assert_eq!(code, 4408);
    assert!(started.elapsed() >= Duration::from_millis(250), "not before the timeout");
}

#[tokio::test]
async fn a_hello_in_time_is_not_closed_by_the_hello_timeout() {
    let mut config = open_config();
    config.limits.hello_timeout = Duration::from_millis(300);
    let pod = TestPod::start(config).await;
    let mut client = pod.client("alice").await;
    // Wait past the timeout on the server's own clock: the frame still works.
    let end = Instant::now() + Duration::from_millis(400);
    while Instant::now() < end {
        client.sync().await;
    }
    client.join(ROOM).await;
}

#[tokio::test]
async fn a_frame_larger_than_max_frame_bytes_closes_with_1009() {
    let mut config = open_config();
    config.limits.max_frame_bytes = 4096;
    let pod = TestPod::start(config).await;
    let mut client = pod.client("alice").await;

    client.send_raw_text(&ping_of_size(4096)).await;
    assert_eq!(client.recv().await["type"], "pong", "a frame at the limit is accepted");

    client.send_raw_text(&ping_of_size(4097)).await;
    let (code, _) = client.expect_close().await;
    assert_eq!(code, 1009);
}

#[tokio::test]
async fn an_oversized_first_frame_closes_with_1009() {
    let mut config = open_config();
    config.limits.max_frame_bytes = 4096;
    let pod = TestPod::start(config).await;
    let mut client = Client::connect(&pod.url()).await;
    let hello = json!({"type": "hello", "user": "alice", "name": "n".repeat(5000)});
    client.send(hello).await;
    assert_eq!(client.expect_close().await.0, 1009);
}

/// A pod allowing one frame a second after a burst of three.
async fn rate_limited_pod() -> TestPod {
    let mut config = open_config();
    config.limits.messages_per_sec = 1.0;
    config.limits.burst = 3.0;
    TestPod::start(config).await
}

#[tokio::test]
async fn the_fourth_quick_frame_gets_rate_limited() {
    let pod = rate_limited_pod().await;
    let mut client = pod.client("alice").await;
    for i in 1..=4 {
        client.send(json!({"type": "ping", "ref": i})).await;
    }
    for i in 1..=3 {
        assert_eq!(client.recv().await, json!({"type": "pong", "ref": i}));
    }
    let refused = client.recv().await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "rate_limited");
    assert_eq!(refused["ref"], 4);
    let counted = pod.metric("ward_rate_limited_frames_total").await;
    assert!(counted >= Some(1.0), "{counted:?}");
}

#[tokio::test]
async fn bad_request_wins_over_rate_limited() {
    let pod = rate_limited_pod().await;
    let mut client = pod.client("alice").await;
    for i in 1..=3 {
        client.send(json!({"type": "ping", "ref": i})).await;
    }
    client.send(json!({"type": "join_room", "room": "bad room", "ref": "bad"})).await;
    client.send(json!({"type": "ping", "ref": "late"})).await;
    for i in 1..=3 {
        assert_eq!(client.recv().await["type"], "pong", "frame {i}");
    }
    let first = client.recv().await;
    assert_eq!((&first["ref"], &first["code"]), (&json!("bad"), &json!("bad_request")));
    let second = client.recv().await;
    assert_eq!((&second["ref"], &second["code"]), (&json!("late"), &json!("rate_limited")));
}

#[tokio::test]
async fn a_client_that_keeps_exceeding_the_rate_closes_with_4429() {
    let pod = rate_limited_pod().await;
    let mut client = pod.client("alice").await;
    for i in 0..60 {
        client.send(json!({"type": "ping", "ref": i})).await;
    }
    let (code, _) = client.expect_close().await;
    assert_eq!(code, 4429);
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_closed_with_4409_and_others_keep_up() {
    let mut config = open_config();
    config.limits.outbound_queue = 16;
    let pod = TestPod::start(config).await;
    let mut sender = pod.client("sender").await;
    let mut reader = pod.client("reader").await;
    let mut slow = pod.client("slow").await;
    for client in [&mut sender, &mut reader, &mut slow] {
        client.join(ROOM).await;
    }
    reader.sync().await;
    let before = pod.metric("ward_slow_consumer_closes_total").await.unwrap_or(0.0);

    // The reader keeps reading in its own task until the "end" message;
    // `slow` is not read at all.
    let reading = tokio::spawn(async move {
        let mut ids = Vec::new();
        loop {
            let frame = reader.recv_type("new_message").await;
            if frame["message"]["text"] == "end" {
                return ids;
            }
            ids.push(frame["message"]["id"].as_str().unwrap().to_string());
        }
    });

    // 2 KB messages, in rounds, until the slow reader's socket buffers and
    // then its queue of 16 overflow.
    let padding = "x".repeat(2048);
    let mut sent = Vec::new();
    while pod.metric("ward_slow_consumer_closes_total").await.unwrap_or(0.0) <= before {
        assert!(sent.len() < 5000, "5000 messages did not overflow a queue of 16");
        for _ in 0..100 {
            let ack = sender.say(ROOM, &format!("{:04} {padding}", sent.len())).await;
            sent.push(ack["id"].as_str().unwrap().to_string());
        }
    }
    sender.say(ROOM, "end").await;

    let (code, _) = slow.expect_close().await;
    assert_eq!(code, 4409);
    let received = reading.await.expect("the reader task ends");
    assert_eq!(received, sent, "the reader got every message, in order");
}
