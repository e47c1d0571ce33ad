//! The logs of a whole chat, at every level: they tell the life of each
//! connection (conn.id, user.id) and the audit trail, and never carry a
//! message's text, a token, a bearer token or a secret.

mod support;

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use support::{Client, eventually, http_post};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

const SECRET: &str = "hs256-log-test-secret-9f8e7d6c5b4a39281706";
const BEARER: &str = "lab-bearer-token-4e1d77c2";
const WEBHOOK_SECRET: &str = "webhook-signing-secret-a81f";
const TEXT: &str = "PATIENT-SECRET-7731";
const ROOM: &str = "icu-3";

fn token(sub: &str, exp_in: i64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let claims = json!({"sub": sub, "name": format!("{sub} log"), "exp": now + exp_in});
    let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    jsonwebtoken::encode(&Header::default(), &claims, &key).unwrap()
}

/// Every line the pod wrote, stdout and stderr together.
type Lines = Arc<Mutex<Vec<String>>>;

fn collect(stream: impl AsyncRead + Unpin + Send + 'static, lines: Lines) {
    tokio::spawn(async move {
        let mut reader = BufReader::new(stream).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            lines.lock().unwrap().push(line);
        }
    });
}

/// Starts the binary with JSON logs at trace level and every secret set.
fn start_ward(webhook: &str, lines: &Lines) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ward"));
    command.env_remove("WARD_CONFIG");
    command.envs([
        ("RUST_LOG", "trace"),
        ("WARD_LISTEN", "127.0.0.1:0"),
        ("WARD_NODE_ID", "log-pod"),
        ("WARD_LOG__FORMAT", "json"),
        ("WARD_AUTH__MODE", "jwt"),
        ("WARD_AUTH__JWT__SECRET", SECRET),
        ("WARD_API__TOKENS", &format!("[\"{BEARER}\"]")),
        ("WARD_ESCALATION__WEBHOOK_URL", webhook),
        ("WARD_ESCALATION__WEBHOOK_SECRET", WEBHOOK_SECRET),
        ("WARD_DRAIN__DELAY", "0s"),
        ("WARD_DRAIN__SPREAD", "0s"),
    ]);
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    command.kill_on_drop(true);
    let mut child = command.spawn().expect("the ward binary starts");
    collect(child.stdout.take().unwrap(), lines.clone());
    collect(child.stderr.take().unwrap(), lines.clone());
    child
}

/// The address from the pod's "serving" log line.
async fn serving_addr(lines: &Lines) -> std::net::SocketAddr {
    eventually("the pod's `serving` line", || async {
        let lines = lines.lock().unwrap();
        lines.iter().find_map(|line| {
            let value: Value = serde_json::from_str(line).ok()?;
            (value["message"] == "serving").then(|| value["addr"].as_str()?.parse().ok())?
        })
    })
    .await
}

/// A webhook that answers 200 to anything, so escalation logs its path too.
async fn accepting_webhook() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/escalate", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 8192];
                let _ = stream.read(&mut buf).await;
                let answer = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    url
}

/// Chats through every path that handles a text, a token or a secret.
async fn chat(addr: std::net::SocketAddr, tokens: &[String]) {
    let url = format!("ws://{addr}/ws");
    let mut alice = Client::connect(&url).await;
    assert_eq!(alice.hello_token(&tokens[0]).await.expect("welcome")["type"], "welcome");
    let mut bob = Client::connect(&url).await;
    assert_eq!(bob.hello_token(&tokens[1]).await.expect("welcome")["type"], "welcome");
    alice.join(ROOM).await;
    bob.join(ROOM).await;

    alice.say(ROOM, &format!("{TEXT} normal")).await;
    let urgent = json!({"type": "send_message", "room": ROOM, "text": format!("{TEXT} urgent"),
        "priority": "urgent", "ack_deadline": "1s", "client_msg_id": "cm-1"});
    let ack = alice.request_ok(urgent, "ack").await;
    bob.recv_where("the urgent message", |f| f["message"]["id"] == ack["id"]).await;
    alice.recv_type("ack_overdue").await;
    bob.request_ok(json!({"type": "acknowledge_message", "room": ROOM, "id": ack["id"]}), "ack")
        .await;
    bob.send(json!({"type": "mark_read", "room": ROOM, "up_to": ack["id"]})).await;
    alice.request_ok(json!({"type": "refresh", "token": tokens[2]}), "ack").await;
    let foreign = alice.request(json!({"type": "refresh", "token": tokens[1]})).await;
    assert_eq!(foreign["code"], "unauthorized", "{foreign}");
    alice.request_ok(json!({"type": "history", "room": ROOM}), "history").await;

    let body =
        json!({"text": format!("{TEXT} from the lab"), "from": {"id": "lab", "name": "Lab"}});
    let bearer = format!("Bearer {BEARER}");
    let posted = http_post(
        addr,
        "/api/v1/rooms/icu-3/messages",
        &[("Authorization", &bearer)],
        &body.to_string(),
    )
    .await;
    assert_eq!(posted.status, 201, "{}", posted.body);
    let wrong = [("Authorization", "Bearer lab-bearer-token-4e1d77c3")];
    assert_eq!(http_post(addr, "/api/v1/rooms/icu-3/messages", &wrong, "{}").await.status, 401);
    bob.recv_where("the lab's message", |f| f["message"]["from"]["id"] == "lab").await;

    // A refused token, too.
    let mut mallory = Client::connect(&url).await;
    let forged = format!("{}x", tokens[0]);
    assert_eq!(mallory.hello_token(&forged).await.expect_err("refused").0, 4401);
    alice.close().await;
    bob.close().await;
}

/// Sends SIGTERM to the pod we started and waits for it to exit.
async fn stop(mut child: Child) {
    let pid = child.id().expect("the pod still runs").to_string();
    let status = std::process::Command::new("kill").args(["-TERM", &pid]).status();
    assert!(status.is_ok_and(|s| s.success()), "SIGTERM is sent to {pid}");
    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the pod exits after SIGTERM")
        .expect("the pod's exit is read");
    assert!(exit.success(), "the pod exits cleanly: {exit}");
}

/// Every string a log must never hold, with a name for the failure message.
fn forbidden(tokens: &[String]) -> Vec<(String, String)> {
    let mut needles = vec![
        ("the message text".to_string(), TEXT.to_string()),
        ("the message text in hex".to_string(), hex::encode(TEXT)),
        ("the bearer token".to_string(), BEARER.to_string()),
        ("the HS256 secret".to_string(), SECRET.to_string()),
        ("the webhook secret".to_string(), WEBHOOK_SECRET.to_string()),
    ];
    for (n, token) in tokens.iter().enumerate() {
        needles.push((format!("JWT {n}"), token.clone()));
        let signature = token.rsplit('.').next().unwrap().to_string();
        needles.push((format!("JWT {n}'s signature"), signature));
    }
    needles
}

/// Keys found anywhere in a JSON value, with their values.
fn fields(value: &Value, out: &mut Vec<(String, Value)>) {
    if let Value::Object(map) = value {
        for (key, inner) in map {
            out.push((key.clone(), inner.clone()));
            fields(inner, out);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_at_every_level_tell_the_lifecycle_and_never_the_text_or_a_secret() {
    let lines: Lines = Arc::default();
    let webhook = accepting_webhook().await;
    let child = start_ward(&webhook, &lines);
    let addr = serving_addr(&lines).await;
    let tokens = vec![token("alice", 3600), token("bob", 3600), token("alice", 7200)];
    chat(addr, &tokens).await;
    stop(child).await;

    let lines = lines.lock().unwrap().clone();
    let mut leaks = Vec::new();
    for (what, needle) in forbidden(&tokens) {
        let found: Vec<&String> = lines.iter().filter(|l| l.contains(&needle)).collect();
        if let Some(first) = found.first() {
            leaks.push(format!("{what} in {} lines, first: {first}", found.len()));
        }
    }
    assert!(leaks.is_empty(), "secrets in the logs:\n{}", leaks.join("\n"));

    // Every line is JSON, and the lifecycle and audit fields are there.
    let mut seen = Vec::new();
    for line in &lines {
        let value: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log.format = json, yet a line is not JSON ({e}): {line}"));
        fields(&value, &mut seen);
    }
    let has = |key: &str, value: Value| seen.iter().any(|(k, v)| k == key && *v == value);
    let keys: HashSet<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
    assert!(keys.contains("conn.id"), "connections are logged with conn.id");
    assert!(has("user.id", json!("alice")), "alice's connection is logged with user.id");
    assert!(has("user.id", json!("bob")), "bob's connection is logged with user.id");
    assert!(has("node.id", json!("log-pod")), "the node id is logged");
    assert!(has("action", json!("message_sent")), "sending is audited");
    assert!(has("action", json!("message_posted")), "the API post is audited");
    assert!(has("action", json!("message_acknowledged")), "the acknowledgement is audited");
    assert!(has("action", json!("ack_overdue")), "the escalation is audited");
}
