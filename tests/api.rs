//! The publish API for hospital systems: off without `api.tokens`, bearer
//! tokens, body checks and their statuses, and delivery to the room's
//! WebSocket members as an ordinary `new_message`.

mod support;

use serde_json::{Value, json};
use support::{HttpResponse, TestPod, http_post, open_config};

const TOKEN: &str = "lab-token";
const ROOM: &str = "icu-3";
const PATH: &str = "/api/v1/rooms/icu-3/messages";

/// A pod whose publish API accepts [`TOKEN`].
async fn api_pod() -> TestPod {
    let mut config = open_config();
    config.api.tokens = Some(vec![TOKEN.into()]);
    TestPod::start(config).await
}

/// A valid body posting `text` as the lab.
fn body(text: &str) -> Value {
    json!({"text": text, "from": {"id": "lab", "name": "Central Lab"}})
}

/// POSTs `body` to `path` with the bearer `token`, if any.
async fn post(pod: &TestPod, path: &str, token: Option<&str>, body: &str) -> HttpResponse {
    let authorization = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> =
        authorization.iter().map(|a| ("Authorization", a.as_str())).collect();
    http_post(pod.addr(), path, &headers, body).await
}

/// POSTs `body` with the right token to [`ROOM`].
async fn publish(pod: &TestPod, body: &Value) -> HttpResponse {
    post(pod, PATH, Some(TOKEN), &body.to_string()).await
}

#[tokio::test]
async fn the_api_answers_404_when_no_tokens_are_configured() {
    let pod = TestPod::open().await;
    let response = post(&pod, PATH, Some(TOKEN), &body("K+ 6.1").to_string()).await;
    assert_eq!(response.status, 404, "{}", response.body);
}

#[tokio::test]
async fn a_missing_or_wrong_bearer_token_gets_401() {
    let pod = api_pod().await;
    let text = body("K+ 6.1").to_string();
    assert_eq!(post(&pod, PATH, None, &text).await.status, 401, "no Authorization");
    for token in ["wrong", "lab-tokenX", "lab-toke", "LAB-TOKEN", ""] {
        let response = post(&pod, PATH, Some(token), &text).await;
        assert_eq!(response.status, 401, "token {token:?}: {}", response.body);
    }
    let raw = [("Authorization", TOKEN)];
    assert_eq!(http_post(pod.addr(), PATH, &raw, &text).await.status, 401, "no Bearer scheme");
    let basic = [("Authorization", "Basic bGFiLXRva2Vu")];
    assert_eq!(http_post(pod.addr(), PATH, &basic, &text).await.status, 401, "Basic scheme");
}

#[tokio::test]
async fn a_bad_body_gets_400() {
    let pod = api_pod().await;
    let bodies = [
        "not json".to_string(),
        "[]".to_string(),
        json!({"from": {"id": "lab", "name": "Lab"}}).to_string(),
        json!({"text": "K+ 6.1"}).to_string(),
        json!({"text": 5, "from": {"id": "lab", "name": "Lab"}}).to_string(),
        json!({"text": "", "from": {"id": "lab", "name": "Lab"}}).to_string(),
        json!({"text": "x", "from": {"id": "bad id", "name": "Lab"}}).to_string(),
        json!({"text": "x", "from": {"id": "lab", "name": "Lab"}, "priority": "high"}).to_string(),
        json!({"text": "x", "from": {"id": "lab", "name": "Lab"}, "needs_ack": "yes"}).to_string(),
    ];
    for text in bodies {
        let response = post(&pod, PATH, Some(TOKEN), &text).await;
        assert_eq!(response.status, 400, "{text}: {}", response.body);
    }
    let valid = body("x").to_string();
    let bad_room = post(&pod, "/api/v1/rooms/bad%20room/messages", Some(TOKEN), &valid).await;
    assert_eq!(bad_room.status, 400, "{}", bad_room.body);
}

#[tokio::test]
async fn a_text_longer_than_the_limit_gets_413() {
    let pod = api_pod().await;
    let at_limit = publish(&pod, &body(&"é".repeat(4000))).await;
    assert_eq!(at_limit.status, 201, "4000 characters are allowed: {}", at_limit.body);
    let too_long = publish(&pod, &body(&"é".repeat(4001))).await;
    assert_eq!(too_long.status, 413, "{}", too_long.body);
}

#[tokio::test]
async fn a_direct_room_gets_403() {
    let pod = api_pod().await;
    let path = "/api/v1/rooms/dm:alice:bob/messages";
    let response = post(&pod, path, Some(TOKEN), &body("hello").to_string()).await;
    assert_eq!(response.status, 403, "{}", response.body);
}

#[tokio::test]
async fn a_published_message_reaches_the_room_as_new_message_from_the_posted_user() {
    let pod = api_pod().await;
    let mut nurse = pod.client("nurse").await;
    nurse.join(ROOM).await;

    let response = publish(&pod, &body("K+ 6.1 mmol/L, bed 4")).await;
    assert_eq!(response.status, 201, "{}", response.body);
    let created = response.json();
    let id = created["id"].as_str().expect("an id");
    assert!(created["ts"].as_i64().is_some_and(|ts| ts > 1_700_000_000_000), "{created}");

    let delivered = nurse.recv_type("new_message").await["message"].clone();
    assert_eq!(delivered["id"], id);
    assert_eq!(delivered["ts"], created["ts"]);
    assert_eq!(delivered["room"], ROOM);
    assert_eq!(delivered["text"], "K+ 6.1 mmol/L, bed 4");
    assert_eq!(delivered["from"], json!({"id": "lab", "name": "Central Lab"}));
    assert_eq!(delivered["priority"], "normal");
}

#[tokio::test]
async fn a_client_msg_id_retry_answers_the_same_id_and_delivers_once() {
    let pod = api_pod().await;
    let mut nurse = pod.client("nurse").await;
    nurse.join(ROOM).await;
    let mut request = body("troponin high");
    request["client_msg_id"] = json!("lab-result-8812");

    let first = publish(&pod, &request).await;
    let retry = publish(&pod, &request).await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert!(retry.status == 201 || retry.status == 200, "{}", retry.body);
    assert_eq!(first.json()["id"], retry.json()["id"], "the retry answers the first id");

    let frames = nurse.sync().await;
    let delivered = support::message_ids(&frames);
    assert_eq!(delivered, vec![first.json()["id"].as_str().unwrap().to_string()]);
}

#[tokio::test]
async fn an_urgent_message_needs_acknowledgement() {
    let pod = api_pod().await;
    let mut nurse = pod.client("nurse").await;
    nurse.join(ROOM).await;
    let mut request = body("critical: K+ 7.2");
    request["priority"] = json!("urgent");

    let response = publish(&pod, &request).await;
    assert_eq!(response.status, 201, "{}", response.body);
    let message = nurse.recv_type("new_message").await["message"].clone();
    assert_eq!(message["priority"], "urgent");
    assert_eq!(message["needs_ack"], true, "{message}");
    assert!(message["deadline"].as_i64() > message["ts"].as_i64(), "{message}");
    assert_eq!(message["acknowledged_by"], json!([]), "{message}");
}
