//! History retention on both brokers: `history.max_age` removes old messages,
//! and a `client_msg_id` retry is answered with the first id even after its
//! message left history.

#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use ward::config::Config;

use redis_support::RedisServer;
use support::{TestPod, of_type, open_config};

fn memory_config() -> Config {
    open_config()
}

fn redis_config(redis: &RedisServer) -> Config {
    let mut config = open_config();
    config.redis.url = Some(redis.url());
    config.redis.prefix = "ward-retention".into();
    config
}

fn ids(messages: &Value) -> Vec<String> {
    messages.as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect()
}

/// Waits until the wall clock has passed `ts` (ms since the epoch).
async fn wait_past(ts: i64) {
    loop {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
        if now > ts {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn old_messages_leave_history(mut config: Config) {
    config.history.max_age = Some(Duration::from_millis(500));
    let pod = TestPod::start(config).await;
    let mut alice = pod.client("alice").await;
    alice.join("icu-3").await;

    let old = alice.say("icu-3", "old").await;
    wait_past(old["ts"].as_i64().unwrap() + 600).await;
    let fresh = alice.say("icu-3", "fresh").await;

    let mut bob = pod.client("bob").await;
    let joined = bob.join("icu-3").await;
    assert_eq!(ids(&joined["messages"]), [fresh["id"].as_str().unwrap()], "{joined}");
    let resumed = bob.join_since("icu-3", old["id"].as_str().unwrap()).await;
    assert_eq!(resumed["recovered"], true, "nothing after the old message is missing: {resumed}");
}

async fn a_retry_is_answered_after_trimming(mut config: Config) {
    config.history.max_len = 2;
    let pod = TestPod::start(config).await;
    let mut alice = pod.client("alice").await;
    alice.join("icu-3").await;

    let send =
        json!({"type": "send_message", "room": "icu-3", "text": "once", "client_msg_id": "k-1"});
    let first = alice.request_ok(send.clone(), "ack").await;
    for n in 0..3 {
        alice.say("icu-3", &format!("later {n}")).await;
    }
    alice.sync().await;

    let retry = alice.request_ok(send, "ack").await;
    assert_eq!(retry["id"], first["id"], "a retry keeps the first id");
    let after = alice.sync().await;
    assert!(of_type(&after, "new_message").is_empty(), "a retry is not delivered again: {after:?}");
}

#[tokio::test]
async fn old_messages_leave_history_in_memory() {
    old_messages_leave_history(memory_config()).await;
}

#[tokio::test]
async fn old_messages_leave_history_in_redis() {
    let redis = RedisServer::start();
    old_messages_leave_history(redis_config(&redis)).await;
}

#[tokio::test]
async fn a_retry_is_answered_after_trimming_in_memory() {
    a_retry_is_answered_after_trimming(memory_config()).await;
}

#[tokio::test]
async fn a_retry_is_answered_after_trimming_in_redis() {
    let redis = RedisServer::start();
    a_retry_is_answered_after_trimming(redis_config(&redis)).await;
}
