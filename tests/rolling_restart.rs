//! A rolling restart loses no acknowledged message: three pods on one Redis
//! are drained one after another (as Kubernetes does on SIGTERM) and replaced
//! while senders keep sending. Clients closed with 1012 reconnect to a pod
//! that is still up and resume with `since`; at the end every reader has
//! every acknowledged message exactly once, in one order.

#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use ward::config::Config;

use redis_support::RedisServer;
use support::{Client, TestPod, open_config};

const ROOM: &str = "icu-rolling";
const SENDERS: usize = 3;
const READERS: usize = 3;
/// Pause between two messages of one sender, so sends span the restarts.
const SEND_PACE: Duration = Duration::from_millis(5);
/// How long the whole exchange may take before the test fails.
const TEST_DEADLINE: Duration = Duration::from_secs(90);

/// The pods' WebSocket URLs and which of them accept new clients.
#[derive(Default)]
struct Fleet {
    urls: Mutex<Vec<(String, bool)>>,
    next: AtomicUsize,
    /// Connections that had to be opened again after a close.
    reconnects: AtomicUsize,
    /// Set when the restarts are over: senders stop.
    restarted: AtomicBool,
}

impl Fleet {
    /// A pod that is not draining, round robin.
    fn pick(&self) -> String {
        let urls = self.urls.lock().unwrap();
        let live: Vec<&String> = urls.iter().filter(|(_, up)| *up).map(|(url, _)| url).collect();
        assert!(!live.is_empty(), "no pod is up");
        live[self.next.fetch_add(1, Ordering::Relaxed) % live.len()].clone()
    }

    fn set(&self, url: &str, up: bool) {
        let mut urls = self.urls.lock().unwrap();
        match urls.iter_mut().find(|(u, _)| u == url) {
            Some(entry) => entry.1 = up,
            None => urls.push((url.to_string(), up)),
        }
    }
}

fn pod_config(redis: &str, node: &str) -> Config {
    let mut config = open_config();
    config.node_id = node.into();
    config.redis.url = Some(redis.into());
    config.redis.prefix = "ward-rolling".into();
    config.drain.delay = Duration::from_millis(100);
    config.drain.spread = Duration::from_millis(400);
    config.drain.timeout = Duration::from_secs(10);
    config
}

/// Connects to a live pod, says hello and joins the room (with `since`).
async fn connect(fleet: &Fleet, user: &str, since: Option<&str>) -> (Client, Value) {
    let mut client = Client::connect(&fleet.pick()).await;
    client.hello(user, user).await;
    let joined = match since {
        Some(id) => client.join_since(ROOM, id).await,
        None => client.join(ROOM).await,
    };
    (client, joined)
}

/// Sends messages one by one until the restarts are over, retrying each
/// with the same `client_msg_id` until it is acknowledged; returns the
/// acknowledged ids.
async fn sender(fleet: Arc<Fleet>, index: usize) -> Vec<String> {
    let user = format!("sender-{index}");
    let mut acked = Vec::new();
    let mut client = connect(&fleet, &user, None).await.0;

    for n in 0.. {
        if fleet.restarted.load(Ordering::Relaxed) {
            break;
        }
        tokio::time::sleep(SEND_PACE).await;
        let frame = json!({
            "type": "send_message", "room": ROOM, "text": format!("{user} #{n}"),
            "client_msg_id": format!("{user}-{n}"), "ref": format!("{user}-{n}"),
        });
        loop {
            match send_and_wait_ack(&mut client, &frame).await {
                Some(id) => {
                    acked.push(id);
                    break;
                }
                // Closed (1012) or briefly unavailable: retry on a live pod.
                None => {
                    fleet.reconnects.fetch_add(1, Ordering::Relaxed);
                    client = connect(&fleet, &user, None).await.0;
                }
            }
        }
    }
    acked
}

/// The id in the `ack` of `frame`, or `None` if the connection closed or the
/// pod answered with an error.
async fn send_and_wait_ack(client: &mut Client, frame: &Value) -> Option<String> {
    client.try_send_ws(Message::text(frame.to_string())).await.ok()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.next_frame(left).await {
            Ok(Some(reply)) if reply["ref"] == frame["ref"] => {
                return (reply["type"] == "ack").then(|| reply["id"].as_str().unwrap().to_string());
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return None,
        }
    }
}

/// Reads the room until `done` is set and `expected` ids have arrived,
/// resuming with `since` after every close; returns the ids in order.
async fn reader(
    fleet: Arc<Fleet>,
    index: usize,
    done: Arc<AtomicBool>,
    expected: Arc<AtomicUsize>,
) -> Vec<String> {
    let user = format!("reader-{index}");
    let mut seen: Vec<String> = Vec::new();
    let (mut client, _) = connect(&fleet, &user, None).await;

    loop {
        if done.load(Ordering::Relaxed) && seen.len() >= expected.load(Ordering::Relaxed) {
            return seen;
        }
        match client.next_frame(Duration::from_millis(200)).await {
            Ok(Some(frame)) if frame["type"] == "new_message" => {
                seen.push(frame["message"]["id"].as_str().unwrap().to_string());
            }
            Ok(_) => {}
            Err(_) => {
                fleet.reconnects.fetch_add(1, Ordering::Relaxed);
                let since = seen.last().cloned();
                let (fresh, joined) = connect(&fleet, &user, since.as_deref()).await;
                if since.is_some() {
                    assert_eq!(joined["recovered"], true, "history reaches back: {joined}");
                }
                for message in joined["messages"].as_array().unwrap() {
                    seen.push(message["id"].as_str().unwrap().to_string());
                }
                client = fresh;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_loses_no_acknowledged_message() {
    let redis = RedisServer::start();
    let fleet = Arc::new(Fleet::default());
    let mut pods = Vec::new();
    for node in ["pod-a", "pod-b", "pod-c"] {
        let pod = TestPod::start(pod_config(&redis.url(), node)).await;
        fleet.set(&pod.url(), true);
        pods.push(pod);
    }

    let done = Arc::new(AtomicBool::new(false));
    let expected = Arc::new(AtomicUsize::new(usize::MAX));
    let readers: Vec<_> = (0..READERS)
        .map(|i| tokio::spawn(reader(fleet.clone(), i, done.clone(), expected.clone())))
        .collect();
    let senders: Vec<_> = (0..SENDERS).map(|i| tokio::spawn(sender(fleet.clone(), i))).collect();

    // Replace each original pod in turn while the senders send.
    for (generation, old) in std::mem::take(&mut pods).into_iter().enumerate() {
        fleet.set(&old.url(), false);
        assert!(old.server.drain().await, "pod {generation} drained before its timeout");
        let fresh =
            TestPod::start(pod_config(&redis.url(), &format!("pod-new-{generation}"))).await;
        fleet.set(&fresh.url(), true);
        pods.push(fresh);
    }

    fleet.restarted.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for sender in senders {
        acked.extend(
            tokio::time::timeout(TEST_DEADLINE, sender).await.expect("senders finish").unwrap(),
        );
    }
    let unique: HashSet<&String> = acked.iter().collect();
    assert_eq!(unique.len(), acked.len(), "every message has its own id");
    assert!(acked.len() >= SENDERS * 10, "the senders sent during the restarts: {}", acked.len());
    eprintln!(
        "acknowledged {} messages; {} reconnects",
        acked.len(),
        fleet.reconnects.load(Ordering::Relaxed)
    );
    assert!(fleet.reconnects.load(Ordering::Relaxed) >= 3, "the drains closed clients");

    expected.store(acked.len(), Ordering::Relaxed);
    done.store(true, Ordering::Relaxed);
    let mut views = Vec::new();
    for reader in readers {
        views.push(
            tokio::time::timeout(TEST_DEADLINE, reader).await.expect("readers finish").unwrap(),
        );
    }

    for (index, view) in views.iter().enumerate() {
        let distinct: HashSet<&String> = view.iter().collect();
        assert_eq!(distinct.len(), view.len(), "reader {index} got no message twice");
        let missing: Vec<&&String> = unique.iter().filter(|id| !distinct.contains(**id)).collect();
        assert!(missing.is_empty(), "reader {index} misses acknowledged messages {missing:?}");
    }
    assert_eq!(views[0], views[1], "readers see one order");
    assert_eq!(views[1], views[2], "readers see one order");
}
