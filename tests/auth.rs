//! JWT mode: which tokens open a connection (HS256, RS256, ES256, a JWKS with
//! rotating keys) and which close it with 4401; room access from the `rooms`
//! claim and direct rooms; refresh and expiry of open connections.

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::{Client, TestPod, open_config};
use tokio::time::Instant;
use ward::config::{AuthMode, Config, EXIT_CONFIG};

const SECRET: &str = "ward-test-secret-0123456789abcdef0123456789";
const ISSUER: &str = "https://idp.ward.test";
const AUDIENCE: &str = "ward";

/// A file of `tests/fixtures` (test keys only).
fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// Seconds since the epoch.
fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs() as i64
}

/// Claims for `sub` valid for an hour, with a name and every room.
fn claims(sub: &str) -> Value {
    json!({"sub": sub, "name": format!("{sub} (test)"), "iat": now(), "exp": now() + 3600})
}

/// `claims` with `changes` merged over them.
fn claims_with(sub: &str, changes: Value) -> Value {
    let mut all = claims(sub);
    for (key, value) in changes.as_object().expect("an object of changes") {
        all[key] = value.clone();
    }
    all
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(String::from);
    jsonwebtoken::encode(&header, claims, key).expect("the token is signed")
}

fn hs256_with(secret: &[u8], claims: &Value) -> String {
    let key = EncodingKey::from_secret(secret).expect("an HMAC key");
    sign(Algorithm::HS256, None, claims, &key)
}

fn hs256(claims: &Value) -> String {
    hs256_with(SECRET.as_bytes(), claims)
}

fn rs256(private_pem: &str, kid: Option<&str>, claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(&fixture_bytes(private_pem)).expect("an RSA key");
    sign(Algorithm::RS256, kid, claims, &key)
}

fn es256(claims: &Value) -> String {
    let key = EncodingKey::from_ec_pem(&fixture_bytes("ec_private.pem")).expect("an EC key");
    sign(Algorithm::ES256, None, claims, &key)
}

/// A token whose header and payload are given as JSON, with `signature`.
fn hand_made(header: Value, claims: &Value, signature: &[u8]) -> String {
    let part = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
    format!(
        "{}.{}.{}",
        part(header.to_string().as_bytes()),
        part(claims.to_string().as_bytes()),
        part(signature)
    )
}

fn jwt_config() -> Config {
    let mut config = open_config();
    config.auth.mode = AuthMode::Jwt;
    config
}

/// A pod checking HS256 tokens with [`SECRET`].
async fn hs256_pod() -> TestPod {
    let mut config = jwt_config();
    config.auth.jwt.secret = Some(SECRET.into());
    TestPod::start(config).await
}

/// A pod whose only key is the public key (or JWKS) in `file`.
async fn public_key_pod(file: &str) -> TestPod {
    let mut config = jwt_config();
    config.auth.jwt.public_key_file = Some(fixture(file));
    TestPod::start(config).await
}

/// Connects and says hello with `token`.
async fn hello(pod: &TestPod, token: &str) -> (Client, Result<Value, (u16, String)>) {
    let mut client = Client::connect(&pod.url()).await;
    let answer = client.hello_token(token).await;
    (client, answer)
}

/// A client whose `token` was accepted.
async fn welcomed(pod: &TestPod, token: &str) -> Client {
    let (client, answer) = hello(pod, token).await;
    let welcome = answer.unwrap_or_else(|close| panic!("the token is accepted, got {close:?}"));
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    client
}

/// Asserts that `token` is refused with close 4401; `why` names the case.
async fn assert_refused(pod: &TestPod, token: &str, why: &str) {
    let (_client, answer) = hello(pod, token).await;
    match answer {
        Err((code, _)) => assert_eq!(code, 4401, "{why}: close code"),
        Ok(frame) => panic!("{why}: the token is refused, got {frame}"),
    }
}

#[tokio::test]
async fn a_valid_hs256_token_is_welcomed_with_the_identity_of_its_claims() {
    let pod = hs256_pod().await;
    let (_client, answer) = hello(&pod, &hs256(&claims("alice"))).await;
    let welcome = answer.expect("welcome");
    assert_eq!(welcome["user"], json!({"id": "alice", "name": "alice (test)"}), "{welcome}");
}

#[tokio::test]
async fn a_hello_without_a_token_closes_with_4401() {
    let pod = hs256_pod().await;
    let mut client = Client::connect(&pod.url()).await;
    client.send(json!({"type": "hello", "user": "alice"})).await;
    assert_eq!(client.expect_close().await.0, 4401);
}

#[tokio::test]
async fn a_malformed_token_closes_with_4401() {
    let pod = hs256_pod().await;
    let valid = hs256(&claims("alice"));
    let (head, _) = valid.split_once('.').unwrap();
    for token in
        ["", "abc", "a.b.c", "not.a.jwt", &format!("{head}.!!!.sig"), &format!("{valid}.x")]
    {
        assert_refused(&pod, token, &format!("malformed token {token:?}")).await;
    }
}

#[tokio::test]
async fn a_token_with_a_bad_signature_closes_with_4401() {
    let pod = hs256_pod().await;
    let other_secret = hs256_with(b"another-secret-0123456789abcdef0123456789", &claims("alice"));
    assert_refused(&pod, &other_secret, "signed with another secret").await;

    // The payload of a valid token swapped for one naming another user.
    let valid = hs256(&claims("alice"));
    let parts: Vec<&str> = valid.split('.').collect();
    let forged = URL_SAFE_NO_PAD.encode(claims("admin").to_string());
    assert_refused(&pod, &format!("{}.{forged}.{}", parts[0], parts[2]), "forged payload").await;
}

#[tokio::test]
async fn a_token_with_alg_none_closes_with_4401() {
    let pod = hs256_pod().await;
    for alg in ["none", "None", "NONE"] {
        let token = hand_made(json!({"alg": alg, "typ": "JWT"}), &claims("alice"), b"");
        assert_refused(&pod, &token, &format!("alg {alg}")).await;
    }
}

#[tokio::test]
async fn an_hs256_token_signed_with_the_rsa_public_key_closes_with_4401() {
    let pod = public_key_pod("rsa_public.pem").await;
    welcomed(&pod, &rs256("rsa_private.pem", None, &claims("alice"))).await;

    let public_pem = fixture_bytes("rsa_public.pem");
    let confused = hs256_with(&public_pem, &claims("mallory"));
    assert_refused(&pod, &confused, "HS256 keyed with the public key PEM").await;
}

#[tokio::test]
async fn an_es256_token_is_checked_against_the_ec_public_key() {
    let pod = public_key_pod("ec_public.pem").await;
    welcomed(&pod, &es256(&claims("alice"))).await;

    let rsa_signed = rs256("rsa_private.pem", None, &claims("alice"));
    assert_refused(&pod, &rsa_signed, "RS256 token on an ES256 pod").await;
    let hmac_signed = hs256_with(&fixture_bytes("ec_public.pem"), &claims("alice"));
    assert_refused(&pod, &hmac_signed, "HS256 keyed with the EC public key").await;
}

#[tokio::test]
async fn an_rs256_token_signed_by_another_key_closes_with_4401() {
    let pod = public_key_pod("rsa_public.pem").await;
    let other = rs256("rsa2_private.pem", None, &claims("alice"));
    assert_refused(&pod, &other, "RS256 signed by a key the pod does not know").await;
}

#[tokio::test]
async fn a_jwks_accepts_each_of_its_keys_by_kid() {
    let pod = public_key_pod("jwks.json").await;
    welcomed(&pod, &rs256("rsa_private.pem", Some("ward-test-1"), &claims("alice"))).await;
    welcomed(&pod, &rs256("rsa2_private.pem", Some("ward-test-2"), &claims("bob"))).await;

    let wrong_kid = rs256("rsa_private.pem", Some("ward-test-2"), &claims("alice"));
    assert_refused(&pod, &wrong_kid, "kid of the other key").await;
    let unknown_kid = rs256("rsa_private.pem", Some("retired-key"), &claims("alice"));
    assert_refused(&pod, &unknown_kid, "unknown kid").await;
}

#[tokio::test]
async fn an_expired_token_closes_with_4401() {
    let pod = hs256_pod().await;
    let expired = claims_with("alice", json!({"iat": now() - 7200, "exp": now() - 120}));
    assert_refused(&pod, &hs256(&expired), "expired two minutes ago").await;
}

#[tokio::test]
async fn a_token_without_exp_closes_with_4401() {
    let pod = hs256_pod().await;
    let forever = json!({"sub": "alice", "iat": now()});
    assert_refused(&pod, &hs256(&forever), "no exp").await;
    let text_exp = claims_with("alice", json!({"exp": "tomorrow"}));
    assert_refused(&pod, &hs256(&text_exp), "exp as text").await;
}

#[tokio::test]
async fn a_token_not_yet_valid_beyond_the_leeway_closes_with_4401() {
    let pod = hs256_pod().await;
    let early = claims_with("alice", json!({"nbf": now() + 120}));
    assert_refused(&pod, &hs256(&early), "nbf two minutes ahead").await;
    // Within the 30 s leeway the clock skew is forgiven.
    welcomed(&pod, &hs256(&claims_with("alice", json!({"nbf": now() + 5})))).await;
}

/// A pod requiring [`ISSUER`] and [`AUDIENCE`].
async fn strict_claims_pod() -> TestPod {
    let mut config = jwt_config();
    config.auth.jwt.secret = Some(SECRET.into());
    config.auth.jwt.issuer = Some(ISSUER.into());
    config.auth.jwt.audience = Some(AUDIENCE.into());
    TestPod::start(config).await
}

#[tokio::test]
async fn a_token_from_another_issuer_closes_with_4401() {
    let pod = strict_claims_pod().await;
    let good = json!({"iss": ISSUER, "aud": AUDIENCE});
    welcomed(&pod, &hs256(&claims_with("alice", good))).await;

    let other = claims_with("alice", json!({"iss": "https://evil.test", "aud": AUDIENCE}));
    assert_refused(&pod, &hs256(&other), "wrong iss").await;
    let missing = claims_with("alice", json!({"aud": AUDIENCE}));
    assert_refused(&pod, &hs256(&missing), "no iss").await;
}

#[tokio::test]
async fn a_token_for_another_audience_closes_with_4401() {
    let pod = strict_claims_pod().await;
    let other = claims_with("alice", json!({"iss": ISSUER, "aud": "billing"}));
    assert_refused(&pod, &hs256(&other), "wrong aud").await;
    let missing = claims_with("alice", json!({"iss": ISSUER}));
    assert_refused(&pod, &hs256(&missing), "no aud").await;
}

/// Sends `frame` with a ref and asserts an `error` with `code` carrying it.
async fn assert_error(client: &mut Client, frame: Value, code: &str) {
    let reply = client.request(frame.clone()).await;
    assert_eq!(reply["type"], "error", "{frame} is refused: {reply}");
    assert_eq!(reply["code"], code, "{frame} -> {reply}");
}

#[tokio::test]
async fn rooms_outside_the_rooms_claim_are_forbidden() {
    let pod = hs256_pod().await;
    let token = hs256(&claims_with("alice", json!({"rooms": ["icu-*", "ward-3"]})));
    let mut alice = welcomed(&pod, &token).await;
    alice.join("icu-7").await;
    alice.join("ward-3").await;

    for room in ["ward-4", "pharmacy", "icu"] {
        let frames = [
            json!({"type": "join_room", "room": room}),
            json!({"type": "send_message", "room": room, "text": "hello"}),
            json!({"type": "history", "room": room}),
            json!({"type": "typing", "room": room, "active": true}),
        ];
        for frame in frames {
            assert_error(&mut alice, frame, "forbidden").await;
        }
    }
    alice.say("icu-7", "still allowed").await;
}

#[tokio::test]
async fn direct_rooms_admit_their_two_users_whatever_the_rooms_claim() {
    let pod = hs256_pod().await;
    let only_icu = json!({"rooms": ["icu-*"]});
    let mut alice = welcomed(&pod, &hs256(&claims_with("alice", only_icu.clone()))).await;
    let mut bob = welcomed(&pod, &hs256(&claims_with("bob", only_icu))).await;

    alice.join("dm:alice:bob").await;
    bob.join("dm:alice:bob").await;
    alice.say("dm:alice:bob", "private").await;
    let delivered = bob.recv_type("new_message").await;
    assert_eq!(delivered["message"]["text"], "private");

    // Every-room tokens do not open other pairs' direct rooms either.
    let mut carol = welcomed(&pod, &hs256(&claims("carol"))).await;
    for frame in [
        json!({"type": "join_room", "room": "dm:alice:bob"}),
        json!({"type": "history", "room": "dm:alice:bob"}),
        json!({"type": "send_message", "room": "dm:alice:bob", "text": "hi"}),
        json!({"type": "typing", "room": "dm:alice:bob", "active": true}),
    ] {
        assert_error(&mut carol, frame, "forbidden").await;
    }
}

#[tokio::test]
async fn direct_rooms_of_user_ids_with_colons_stay_private() {
    // User ids may contain `:`, so `dm:dr:smith:nurse:jones` is the direct
    // room of `dr:smith` and `nurse:jones` (sorted).
    let pod = hs256_pod().await;
    let room = "dm:dr:smith:nurse:jones";
    let mut smith = welcomed(&pod, &hs256(&claims("dr:smith"))).await;
    smith.join(room).await;
    smith.say(room, "private handover").await;

    let mut eve = welcomed(&pod, &hs256(&claims("eve"))).await;
    assert_error(&mut eve, json!({"type": "join_room", "room": room}), "forbidden").await;
    assert_error(&mut eve, json!({"type": "history", "room": room}), "forbidden").await;
}

#[tokio::test]
async fn a_token_whose_subject_is_not_a_valid_user_id_closes_with_4401() {
    let pod = hs256_pod().await;
    for sub in ["", "has space", &"x".repeat(65), "caf\u{e9}"] {
        assert_refused(&pod, &hs256(&claims(sub)), &format!("sub {sub:?}")).await;
    }
    let no_sub = json!({"name": "Nobody", "exp": now() + 3600});
    assert_refused(&pod, &hs256(&no_sub), "no sub").await;
}

/// Keeps `client` busy with pings until the wall clock passes `until`
/// (seconds since the epoch), proving it stays usable all along.
async fn stay_usable_until(client: &mut Client, until: Duration) {
    while SystemTime::now().duration_since(UNIX_EPOCH).unwrap() < until {
        client.sync().await;
    }
}

#[tokio::test]
async fn a_refresh_before_expiry_keeps_the_connection_open() {
    let pod = hs256_pod().await;
    let first_exp = now() + 3;
    let mut alice = welcomed(&pod, &hs256(&claims_with("alice", json!({"exp": first_exp})))).await;
    alice.join("icu-3").await;

    let fresh = hs256(&claims_with("alice", json!({"exp": now() + 3600})));
    let reply = alice.request(json!({"type": "refresh", "token": fresh})).await;
    assert_eq!(reply["type"], "ack", "refresh is acknowledged: {reply}");

    let past_first_exp = Duration::from_secs(first_exp as u64) + Duration::from_millis(2500);
    stay_usable_until(&mut alice, past_first_exp).await;
    alice.say("icu-3", "after the first token's exp").await;
}

#[tokio::test]
async fn an_unrefreshed_token_is_warned_then_closed_with_4401_at_exp() {
    let pod = hs256_pod().await;
    let exp = now() + 3;
    let mut alice = welcomed(&pod, &hs256(&claims_with("alice", json!({"exp": exp})))).await;

    let exp_ms = exp as u128 * 1000;
    let end = Instant::now() + Duration::from_secs(8);
    let mut warned = false;
    let (code, closed_at) = loop {
        let left = end.saturating_duration_since(Instant::now());
        match alice.next_frame(left).await {
            Ok(Some(frame)) => {
                assert_eq!(frame["type"], "error", "only the warning comes: {frame}");
                assert_eq!(frame["code"], "unauthorized", "{frame}");
                warned = true;
            }
            Ok(None) => panic!("no close within 5 s of exp"),
            Err((code, _)) => {
                let at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis();
                break (code, at);
            }
        }
    };
    assert!(warned, "an `error` with code unauthorized comes before the close");
    assert_eq!(code, 4401);
    assert!(closed_at + 100 >= exp_ms, "not closed before exp ({closed_at} < {exp_ms})");
    assert!(closed_at <= exp_ms + 2000, "closed within 2 s of exp ({closed_at} vs {exp_ms})");
}

#[tokio::test]
async fn a_refresh_for_another_user_is_refused_and_the_connection_keeps_working() {
    let pod = hs256_pod().await;
    let mut alice = welcomed(&pod, &hs256(&claims("alice"))).await;
    alice.join("icu-3").await;

    let mallory = hs256(&claims("mallory"));
    assert_error(&mut alice, json!({"type": "refresh", "token": mallory}), "unauthorized").await;
    let forged = hs256_with(b"not-the-secret-0123456789abcdef0123456789", &claims("alice"));
    assert_error(&mut alice, json!({"type": "refresh", "token": forged}), "unauthorized").await;
    let expired = hs256(&claims_with("alice", json!({"exp": now() - 120})));
    assert_error(&mut alice, json!({"type": "refresh", "token": expired}), "unauthorized").await;

    let ack = alice.say("icu-3", "still me").await;
    assert!(ack["id"].is_string(), "{ack}");
    let history = alice.request_ok(json!({"type": "history", "room": "icu-3"}), "history").await;
    assert_eq!(history["messages"][0]["from"]["id"], "alice", "{history}");
}

#[tokio::test]
async fn refresh_in_open_mode_is_a_bad_request() {
    let pod = TestPod::open().await;
    let mut alice = pod.client("alice").await;
    let token = hs256(&claims("alice"));
    assert_error(&mut alice, json!({"type": "refresh", "token": token}), "bad_request").await;
    alice.sync().await;
}

#[tokio::test]
async fn the_binary_exits_78_in_jwt_mode_without_a_key() {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ward"));
    command.env_remove("WARD_CONFIG").env_remove("RUST_LOG");
    command.env("WARD_LISTEN", "127.0.0.1:0").env("WARD_AUTH__MODE", "jwt");
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    command.kill_on_drop(true);
    let child = command.spawn().expect("the ward binary starts");
    let output = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("ward exits instead of serving")
        .expect("ward's output is read");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(EXIT_CONFIG), "{stderr}");
    assert!(stderr.contains("auth.jwt"), "the error names the key: {stderr}");
}
