//! Pods on a three-master Redis Cluster: rooms whose keys live on different
//! masters, sharded pub/sub, and presence and history on each.

#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::collections::HashSet;

use serde_json::json;
use ward::config::Config;

use redis_support::RedisCluster;
use support::{TestPod, open_config};

const PREFIX: &str = "ward-test";

fn pod_config(url: &str, node: &str) -> Config {
    let mut config = open_config();
    config.node_id = node.into();
    config.redis.url = Some(url.into());
    config.redis.prefix = PREFIX.into();
    config.redis.cluster = true;
    config
}

/// One room per master: names whose hash tag lands on each of them.
fn rooms_on_every_master(cluster: &RedisCluster) -> Vec<(String, u16)> {
    let mut rooms = Vec::new();
    let mut owners = HashSet::new();
    for n in 0..200 {
        let room = format!("ward-{n}");
        let slot = cluster.slot_of(&format!("{{{PREFIX}:{room}}}"));
        let owner = cluster.owner_of_slot(slot);
        if owners.insert(owner) {
            rooms.push((room, owner));
        }
        if rooms.len() == cluster.nodes.len() {
            return rooms;
        }
    }
    panic!("no room names found for every master");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_carries_rooms_on_every_master_across_pods() {
    let cluster = RedisCluster::start();
    let rooms = rooms_on_every_master(&cluster);
    let a = TestPod::start(pod_config(&cluster.url(), "pod-a")).await;
    let b = TestPod::start(pod_config(&cluster.url(), "pod-b")).await;
    let mut alice = a.client("alice").await;
    let mut bob = b.client("bob").await;

    for (room, owner) in &rooms {
        alice.join(room).await;
        let joined = bob.join(room).await;
        assert_eq!(joined["members"].as_array().unwrap().len(), 2, "{joined}");

        // Each way across the pods, through the room's own master.
        let from_alice = alice.say(room, &format!("to bob in {room}")).await;
        let got = bob
            .recv_where("alice's message", |f| {
                f["type"] == "new_message" && f["message"]["id"] == from_alice["id"]
            })
            .await;
        assert_eq!(got["message"]["room"], room.as_str());
        let from_bob = bob.say(room, &format!("to alice in {room}")).await;
        let got = alice
            .recv_where("bob's message", |f| {
                f["type"] == "new_message" && f["message"]["id"] == from_bob["id"]
            })
            .await;
        assert_eq!(got["message"]["from"]["id"], "bob");

        let stream = format!("{{{PREFIX}:{room}}}:messages");
        let length = cluster.node(*owner).cli(&["XLEN", &stream]);
        assert_eq!(length.trim(), "2", "the room's stream lives on its master {owner}");
    }

    // History and recovery read each room's own master.
    for (room, _) in &rooms {
        let page = bob.request_ok(json!({"type": "history", "room": room}), "history").await;
        let texts: Vec<&str> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["text"].as_str().unwrap())
            .collect();
        assert_eq!(texts, [format!("to bob in {room}"), format!("to alice in {room}")]);
        let first = page["messages"][0]["id"].as_str().unwrap();
        let joined = alice.join_since(room, first).await;
        assert_eq!(joined["recovered"], true);
        assert_eq!(joined["messages"].as_array().unwrap().len(), 1);
    }

    // Presence: bob leaves one room, alice hears it there.
    let (room, _) = &rooms[1];
    bob.leave(room).await;
    let left = alice.recv_where("user_left", |f| f["type"] == "user_left").await;
    assert_eq!(
        (left["room"].as_str(), left["user"]["id"].as_str()),
        (Some(room.as_str()), Some("bob"))
    );
}
