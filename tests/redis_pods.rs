//! Several pods sharing rooms through one real Redis: delivery and order,
//! presence, history and recovery, acknowledgements, a vanished pod and a
//! Redis restart. Pods run in-process, or as `ward` child processes where a
//! test kills one without warning.

#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;
use ward::config::Config;

use redis_support::{RedisServer, free_port};
use support::{Client, DEADLINE, TestPod, eventually, http_get, open_config};

/// A pod configuration on Redis at `url`, as node `node`.
fn pod_config(url: &str, node: &str) -> Config {
    let mut config = open_config();
    config.node_id = node.into();
    config.redis.url = Some(url.into());
    config.redis.prefix = "ward-test".into();
    config
}

async fn start_pods(url: &str, nodes: &[&str]) -> Vec<TestPod> {
    let mut pods = Vec::new();
    for node in nodes {
        pods.push(TestPod::start(pod_config(url, node)).await);
    }
    pods
}

/// Frames until (and with) the first that satisfies `last`, within `wait`.
async fn frames_until(
    client: &mut Client,
    wait: Duration,
    last: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let end = Instant::now() + wait;
    let mut frames = Vec::new();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match client.next_frame(left).await {
            Ok(Some(frame)) => {
                let done = last(&frame);
                frames.push(frame);
                if done {
                    return frames;
                }
            }
            Ok(None) => panic!("the expected frame did not come within {wait:?}; got {frames:?}"),
            Err(close) => panic!("the connection closed: {close:?}"),
        }
    }
}

fn new_message_ids(frames: &[Value]) -> Vec<String> {
    support::message_ids(frames)
}

fn id_of(frame: &Value) -> (u64, u64) {
    let id = frame["id"].as_str().or(frame["message"]["id"].as_str()).expect("an id");
    let (ms, seq) = id.split_once('-').expect("ids are <ms>-<seq>");
    (ms.parse().unwrap(), seq.parse().unwrap())
}

/// Sends a marker message from `sender` and returns what `observer` got up
/// to it: events of one room reach every pod in publish order.
async fn frames_up_to_marker(sender: &mut Client, observer: &mut Client, room: &str) -> Vec<Value> {
    let ack = sender.say(room, "marker").await;
    let id = ack["id"].as_str().expect("ack id").to_string();
    frames_until(observer, DEADLINE, |f| {
        f["type"] == "new_message" && f["message"]["id"] == id.as_str()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_three_pods_get_every_message_once_in_one_order() {
    const PER_SENDER: usize = 100;
    const ROOM: &str = "icu-3";
    let redis = RedisServer::start();
    let pods = start_pods(&redis.url(), &["pod-a", "pod-b", "pod-c"]).await;

    let mut members = Vec::new();
    for (p, pod) in pods.iter().enumerate() {
        for m in 0..2 {
            let mut client = pod.client(&format!("user-{p}-{m}")).await;
            client.join(ROOM).await;
            members.push((p, m == 0, client));
        }
    }

    // One sender per pod, all at once; everyone reads until it has them all.
    let total = PER_SENDER * pods.len();
    let tasks: Vec<_> = members
        .into_iter()
        .map(|(p, sends, mut client)| {
            tokio::spawn(async move {
                if sends {
                    for k in 0..PER_SENDER {
                        let text = format!("{p}:{k}");
                        client
                            .send(json!({"type": "send_message", "room": ROOM, "text": text}))
                            .await;
                    }
                }
                let mut seen = Vec::new();
                while seen.len() < total {
                    let frame = client.recv().await;
                    if frame["type"] == "new_message" {
                        let text = frame["message"]["text"].as_str().unwrap().to_string();
                        seen.push((frame["message"]["id"].as_str().unwrap().to_string(), text));
                    }
                }
                seen
            })
        })
        .collect();

    let mut views = Vec::new();
    for task in tasks {
        views.push(task.await.expect("a member's task"));
    }
    let first = &views[0];
    let unique: HashSet<&String> = first.iter().map(|(id, _)| id).collect();
    assert_eq!(unique.len(), total, "every message is delivered once");
    for view in &views[1..] {
        assert_eq!(view, first, "every member sees the same messages in the same order");
    }
    let ids: Vec<(u64, u64)> = first.iter().map(|(id, _)| id_of(&json!({ "id": id }))).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "the order is the order of the ids");
    for p in 0..pods.len() {
        let own: Vec<&String> = first
            .iter()
            .map(|(_, text)| text)
            .filter(|t| t.starts_with(&format!("{p}:")))
            .collect();
        let expected: Vec<String> = (0..PER_SENDER).map(|k| format!("{p}:{k}")).collect();
        assert_eq!(
            own,
            expected.iter().collect::<Vec<_>>(),
            "one sender's messages keep its order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_spans_pods_and_counts_a_user_once() {
    const ROOM: &str = "ward-7";
    let redis = RedisServer::start();
    let pods = start_pods(&redis.url(), &["pod-a", "pod-b"]).await;

    let mut alice = pods[0].client("alice").await;
    alice.join(ROOM).await;
    let mut bob_b = pods[1].client("bob").await;
    let joined = bob_b.join(ROOM).await;
    let mut members: Vec<&str> =
        joined["members"].as_array().unwrap().iter().map(|u| u["id"].as_str().unwrap()).collect();
    members.sort();
    assert_eq!(members, ["alice", "bob"], "members are the users of every pod");
    let frames = frames_until(&mut alice, DEADLINE, |f| f["type"] == "room_info_update").await;
    assert_eq!(support::of_type(&frames, "user_joined").len(), 1, "{frames:?}");
    assert_eq!(frames.last().unwrap()["member_count"], 2);

    // Bob's second connection, on the other pod: no second arrival.
    let mut bob_a = pods[0].client("bob").await;
    bob_a.join(ROOM).await;
    let frames = frames_up_to_marker(&mut bob_a, &mut alice, ROOM).await;
    assert!(support::of_type(&frames, "user_joined").is_empty(), "bob joined once: {frames:?}");

    // Bob leaves one pod: still present through the other.
    bob_b.leave(ROOM).await;
    let frames = frames_up_to_marker(&mut bob_a, &mut alice, ROOM).await;
    assert!(support::of_type(&frames, "user_left").is_empty(), "bob is still here: {frames:?}");

    // Bob's last connection leaves: now he is gone.
    bob_a.leave(ROOM).await;
    let frames = frames_until(&mut alice, DEADLINE, |f| f["type"] == "room_info_update").await;
    let left = support::of_type(&frames, "user_left");
    assert_eq!(left.len(), 1, "{frames:?}");
    assert_eq!(left[0]["user"]["id"], "bob");
    assert_eq!(frames.last().unwrap()["member_count"], 1);
}

/// A `ward` process, killed by its PID when dropped.
struct ChildPod {
    child: Child,
    addr: SocketAddr,
}

impl ChildPod {
    async fn start(url: &str, node: &str, ttl: &str) -> ChildPod {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port(false)));
        let child = Command::new(env!("CARGO_BIN_EXE_ward"))
            .env("WARD_LISTEN", addr.to_string())
            .env("WARD_NODE_ID", node)
            .env("WARD_REDIS__URL", url)
            .env("WARD_REDIS__PREFIX", "ward-test")
            .env("WARD_PRESENCE__TTL", ttl)
            .env("WARD_LOG__FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the ward binary starts");
        let pod = ChildPod { child, addr };
        eventually("the child pod to be ready", || async {
            let ready = tokio::net::TcpStream::connect(addr).await.is_ok()
                && http_get(addr, "/readyz").await.status == 200;
            ready.then_some(())
        })
        .await;
        pod
    }
}

impl Drop for ChildPod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_of_a_killed_pod_leave_within_the_presence_ttl() {
    const ROOM: &str = "or-2";
    const TTL: Duration = Duration::from_secs(3);
    let redis = RedisServer::start();
    let mut config = pod_config(&redis.url(), "pod-a");
    config.presence.ttl = TTL;
    let survivor = TestPod::start(config).await;
    let mut doomed = ChildPod::start(&redis.url(), "pod-doomed", "3s").await;

    let mut alice = survivor.client("alice").await;
    alice.join(ROOM).await;
    let mut carol = Client::connect(&format!("ws://{}/ws", doomed.addr)).await;
    carol.hello("carol", "Carol").await;
    carol.join(ROOM).await;
    frames_until(&mut alice, DEADLINE, |f| {
        f["type"] == "room_info_update" && f["member_count"] == 2
    })
    .await;

    // SIGKILL: no leave, no presence_remove, no drain.
    let killed_at = Instant::now();
    doomed.child.kill().expect("the child pod is killed");
    doomed.child.wait().expect("the child pod exits");

    let frames =
        frames_until(&mut alice, TTL + Duration::from_secs(2), |f| f["type"] == "room_info_update")
            .await;
    let elapsed = killed_at.elapsed();
    let left = support::of_type(&frames, "user_left");
    assert_eq!(left.len(), 1, "{frames:?}");
    assert_eq!(left[0]["user"]["id"], "carol");
    assert_eq!(frames.last().unwrap()["member_count"], 1);
    assert!(elapsed <= TTL + Duration::from_millis(500), "carol left after {elapsed:?}");

    let members = alice.join(ROOM).await["members"].clone();
    assert_eq!(members, json!([{"id": "alice", "name": "alice"}]));
}

/// Sends messages one after the other until `stop` is set and `after_stop`
/// more were acknowledged, retrying (with the same `client_msg_id`) what is
/// refused as unavailable. Returns the acknowledged ids.
async fn send_through_outage(mut client: Client, room: &str, stop: Arc<AtomicBool>) -> Vec<String> {
    const AFTER_STOP: usize = 10;
    let mut acked = Vec::new();
    let mut after_stop = 0;
    let mut k = 0;
    let end = Instant::now() + Duration::from_secs(30);
    while after_stop < AFTER_STOP {
        assert!(Instant::now() < end, "messages were still refused after 30 s");
        let send = json!({"type": "send_message", "room": room, "text": format!("m{k}"),
            "client_msg_id": format!("c{k}")});
        let reply = client.request(send).await;
        if reply["type"] == "ack" {
            acked.push(reply["id"].as_str().unwrap().to_string());
            after_stop += usize::from(stop.load(Ordering::Relaxed));
            k += 1;
        } else {
            assert_eq!(reply["code"], "unavailable", "{reply}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_no_acknowledged_message() {
    const ROOM: &str = "icu-9";
    let mut redis = RedisServer::start();
    let pods = start_pods(&redis.url(), &["pod-a", "pod-b"]).await;
    let mut alice = pods[0].client("alice").await;
    alice.join(ROOM).await;
    let mut dave = pods[0].client("dave").await;
    dave.join(ROOM).await;
    let mut bob = pods[1].client("bob").await;
    bob.join(ROOM).await;
    for k in 0..5 {
        alice.say(ROOM, &format!("before {k}")).await;
    }

    // Alice keeps sending through the whole outage.
    let stop = Arc::new(AtomicBool::new(false));
    let sender = tokio::spawn(send_through_outage(alice, ROOM, stop.clone()));

    redis.kill();
    let down_at = Instant::now();
    eventually("/readyz to answer 503", || async {
        (pods[0].get("/readyz").await.status == 503).then_some(())
    })
    .await;
    assert!(down_at.elapsed() <= Duration::from_secs(2), "ready for {:?}", down_at.elapsed());
    assert_eq!(pods[0].metric("ward_broker_up").await, Some(0.0));
    let refused = dave.request(json!({"type": "send_message", "room": ROOM, "text": "x"})).await;
    assert_eq!(refused["code"], "unavailable", "{refused}");

    redis.restart();
    eventually("/readyz to answer 200 again", || async {
        let ready = pods[0].get("/readyz").await.status == 200
            && pods[1].get("/readyz").await.status == 200;
        ready.then_some(())
    })
    .await;
    assert_eq!(pods[1].metric("ward_broker_up").await, Some(1.0));
    stop.store(true, Ordering::Relaxed);
    let acked = sender.await.expect("the sender");

    // Bob sees every acknowledged message, once and in order, live or
    // filled in from the stream.
    let last = acked.last().unwrap().clone();
    let frames = frames_until(&mut bob, Duration::from_secs(10), |f| {
        f["type"] == "new_message" && f["message"]["id"] == last.as_str()
    })
    .await;
    let seen = new_message_ids(&frames);
    let ordered: Vec<(u64, u64)> = seen.iter().map(|id| id_of(&json!({ "id": id }))).collect();
    assert!(ordered.windows(2).all(|w| w[0] < w[1]), "once and in order: {seen:?}");
    let seen: HashSet<&String> = seen.iter().collect();
    let missing: Vec<&String> = acked.iter().filter(|id| !seen.contains(id)).collect();
    assert!(missing.is_empty(), "acknowledged but never delivered to bob: {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rediss_url_is_accepted_and_a_failed_handshake_only_makes_the_pod_unready() {
    let redis = RedisServer::start();
    let url = format!("rediss://127.0.0.1:{}", redis.port());
    let pod = TestPod::start(pod_config(&url, "pod-tls")).await;
    assert_eq!(pod.get("/healthz").await.status, 200);
    let ready = pod.get("/readyz").await;
    assert_eq!(ready.status, 503, "a plain-text Redis fails the TLS handshake: {}", ready.body);
    assert_eq!(ready.json()["broker"]["kind"], "redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_stored_while_no_pod_was_subscribed_are_filled_in() {
    const ROOM: &str = "icu-4";
    const CHANNEL: &str = "{ward-test:icu-4}:events";
    let redis = RedisServer::start();
    let pods = start_pods(&redis.url(), &["pod-a", "pod-b"]).await;
    let mut alice = pods[0].client("alice").await;
    alice.join(ROOM).await;
    let mut bob = pods[1].client("bob").await;
    bob.join(ROOM).await;

    // Cut every pub/sub connection until a message is stored while no pod
    // listens to the room: that one can only reach bob from the stream.
    let mut acked = Vec::new();
    let mut unheard = false;
    for _ in 0..20 {
        redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        acked.push(alice.say(ROOM, "while cut off").await["id"].as_str().unwrap().to_string());
        let numsub = redis.cli(&["PUBSUB", "NUMSUB", CHANNEL]);
        if numsub.lines().nth(1) == Some("0") {
            unheard = true;
            break;
        }
    }
    assert!(unheard, "no message was stored while the pods were cut off");
    for k in 0..10 {
        acked
            .push(alice.say(ROOM, &format!("after {k}")).await["id"].as_str().unwrap().to_string());
    }

    let frames = frames_until(&mut bob, Duration::from_secs(10), |f| {
        f["type"] == "new_message" && f["message"]["id"] == acked.last().unwrap().as_str()
    })
    .await;
    assert_eq!(new_message_ids(&frames), acked, "bob gets every message once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_recovery_read_the_shared_stream() {
    const ROOM: &str = "icu-5";
    let redis = RedisServer::start();
    let mut configs = vec![pod_config(&redis.url(), "pod-a"), pod_config(&redis.url(), "pod-b")];
    for config in &mut configs {
        config.history.max_len = 5;
    }
    let a = TestPod::start(configs.remove(0)).await;
    let b = TestPod::start(configs.remove(0)).await;
    let mut alice = a.client("alice").await;
    alice.join(ROOM).await;

    let mut ids = Vec::new();
    for k in 0..3 {
        ids.push(alice.say(ROOM, &format!("m{k}")).await["id"].as_str().unwrap().to_string());
    }
    let mut bob = b.client("bob").await;
    let joined = bob.join_since(ROOM, &ids[0]).await;
    assert_eq!(joined["recovered"], true);
    assert_eq!(new_message_ids_of(&joined["messages"]), ids[1..]);

    let page = bob
        .request_ok(
            json!({"type": "history", "room": ROOM, "before": ids[2], "limit": 1}),
            "history",
        )
        .await;
    assert_eq!(new_message_ids_of(&page["messages"]), [ids[1].clone()]);
    assert_eq!(page["more"], true);

    // Beyond history.max_len the oldest go, and `since` says so.
    for k in 3..8 {
        ids.push(alice.say(ROOM, &format!("m{k}")).await["id"].as_str().unwrap().to_string());
    }
    let joined = bob.join_since(ROOM, &ids[0]).await;
    assert_eq!(joined["recovered"], false);
    assert_eq!(new_message_ids_of(&joined["messages"]), ids[3..]);
    let joined = bob.join_since(ROOM, &ids[2]).await;
    assert_eq!(joined["recovered"], true, "nothing after the newest trimmed id is missing");
    let joined = bob.join(ROOM).await;
    assert_eq!(new_message_ids_of(&joined["messages"]), ids[3..]);
}

fn new_message_ids_of(messages: &Value) -> Vec<String> {
    messages.as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_client_msg_id_is_stored_once_across_pods() {
    const ROOM: &str = "icu-6";
    let redis = RedisServer::start();
    let pods = start_pods(&redis.url(), &["pod-a", "pod-b"]).await;
    let mut on_a = pods[0].client("alice").await;
    on_a.join(ROOM).await;
    let mut on_b = pods[1].client("alice").await;
    on_b.join(ROOM).await;
    let mut bob = pods[1].client("bob").await;
    bob.join(ROOM).await;

    let send =
        json!({"type": "send_message", "room": ROOM, "text": "K+ 6.1", "client_msg_id": "c-1"});
    let first = on_a.request_ok(send.clone(), "ack").await;
    let retry = on_b.request_ok(send, "ack").await;
    assert_eq!(first["id"], retry["id"], "the retry is acknowledged with the first id");
    assert_eq!(first["ts"], retry["ts"]);

    let frames = frames_up_to_marker(&mut on_a, &mut bob, ROOM).await;
    let ids = new_message_ids(&frames);
    assert_eq!(ids.len(), 2, "the retry is not delivered again: {frames:?}");
    assert_eq!(ids[0], first["id"].as_str().unwrap());
    let page = bob.request_ok(json!({"type": "history", "room": ROOM}), "history").await;
    let texts: Vec<&str> =
        page["messages"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["K+ 6.1", "marker"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_and_read_marks_are_shared_by_pods() {
    const ROOM: &str = "icu-8";
    let redis = RedisServer::start();
    let pods = start_pods(&redis.url(), &["pod-a", "pod-b"]).await;
    let mut alice = pods[0].client("alice").await;
    alice.join(ROOM).await;
    let mut bob = pods[1].client("bob").await;
    bob.join(ROOM).await;

    let urgent =
        json!({"type": "send_message", "room": ROOM, "text": "call me", "priority": "urgent"});
    let id = alice.request_ok(urgent, "ack").await["id"].as_str().unwrap().to_string();
    let delivered = frames_until(&mut bob, DEADLINE, |f| f["type"] == "new_message").await;
    let message = &delivered.last().unwrap()["message"];
    assert_eq!(
        (message["needs_ack"].clone(), message["acknowledged_by"].clone()),
        (json!(true), json!([]))
    );

    let own = alice.request(json!({"type": "acknowledge_message", "room": ROOM, "id": id})).await;
    assert_eq!(own["code"], "forbidden", "{own}");
    bob.request_ok(json!({"type": "acknowledge_message", "room": ROOM, "id": id}), "ack").await;
    bob.request_ok(json!({"type": "acknowledge_message", "room": ROOM, "id": id}), "ack").await;
    let frames = frames_until(&mut alice, DEADLINE, |f| f["type"] == "message_acknowledged").await;
    assert_eq!(frames.last().unwrap()["by"]["id"], "bob");

    let page = alice.request_ok(json!({"type": "history", "room": ROOM}), "history").await;
    let by = page["messages"][0]["acknowledged_by"].as_array().unwrap().clone();
    assert_eq!(by.len(), 1, "one entry per user: {by:?}");
    assert_eq!(by[0]["user"]["id"], "bob");

    bob.send(json!({"type": "mark_read", "room": ROOM, "up_to": id})).await;
    let frames = frames_until(&mut alice, DEADLINE, |f| f["type"] == "read_receipt").await;
    assert_eq!(frames.last().unwrap()["up_to"], id.as_str());
    let joined = alice.join(ROOM).await;
    assert_eq!(joined["reads"], json!([{"user": {"id": "bob", "name": "bob"}, "up_to": id}]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overdue_message_is_announced_once_across_pods() {
    const ROOM: &str = "icu-10";
    let redis = RedisServer::start();
    let pods = start_pods(&redis.url(), &["pod-a", "pod-b"]).await;
    let mut alice = pods[0].client("alice").await;
    alice.join(ROOM).await;
    let mut bob = pods[1].client("bob").await;
    bob.join(ROOM).await;

    let urgent = |text: &str| {
        json!({"type": "send_message", "room": ROOM, "text": text, "priority": "urgent",
            "ack_deadline": "1s"})
    };
    let handled = alice.request_ok(urgent("handled"), "ack").await["id"].clone();
    let ignored = alice.request_ok(urgent("ignored"), "ack").await["id"].clone();
    bob.request_ok(json!({"type": "acknowledge_message", "room": ROOM, "id": handled}), "ack")
        .await;

    let frames =
        frames_until(&mut bob, Duration::from_secs(4), |f| f["type"] == "ack_overdue").await;
    assert_eq!(frames.last().unwrap()["id"], ignored);

    // Once claimed, no pod can claim it again; nothing else becomes overdue.
    eventually("the deadline to be claimed", || async {
        (redis.cli(&["ZCARD", "{ward-test}:deadlines"]).trim() == "0").then_some(())
    })
    .await;
    let frames = frames_up_to_marker(&mut alice, &mut bob, ROOM).await;
    let overdue = support::of_type(&frames, "ack_overdue");
    assert!(overdue.is_empty(), "announced once, the acknowledged one never: {overdue:?}");
}
