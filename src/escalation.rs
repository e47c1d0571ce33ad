//! Escalation of urgent messages nobody acknowledged: once a `needs_ack`
//! message passes its deadline with no acknowledgement, its room gets
//! `ack_overdue` and the escalation webhook gets one signed POST, retried
//! until it answers 2xx. The broker hands each overdue message to one pod.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use serde_json::json;
use sha2::Sha256;

use crate::broker::{RoomEvent, now_ms};
use crate::pod::Pod;
use crate::protocol::{Message, ServerFrame};

/// How often overdue messages are claimed; the protocol allows 2 s.
const CLAIM_INTERVAL: Duration = Duration::from_millis(500);
/// Longest wait between two webhook attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);
/// Time allowed for one webhook attempt.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// Claims and escalates overdue messages until the pod shuts down.
pub async fn run(pod: Arc<Pod>) {
    let client = reqwest::Client::builder().timeout(WEBHOOK_TIMEOUT).build();
    let client = match client {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(error = %err, "escalation webhook client unusable; webhooks are off");
            return;
        }
    };
    let mut ticks = tokio::time::interval(CLAIM_INTERVAL);
    loop {
        tokio::select! {
            _ = pod.shutdown.cancelled() => return,
            _ = ticks.tick() => escalate_due(&pod, &client).await,
        }
    }
}

/// Announces every overdue message and starts its webhook delivery.
async fn escalate_due(pod: &Arc<Pod>, client: &reqwest::Client) {
    let overdue = match pod.broker.claim_overdue(now_ms()).await {
        Ok(overdue) => overdue,
        Err(err) => {
            tracing::debug!(error = %err, "overdue messages not claimed this time");
            return;
        }
    };

    for message in overdue {
        crate::audit::record(pod, "ack_overdue", &message.room, &message.id, &message.from.id);
        pod.metrics.escalations.inc();
        let frame = ServerFrame::AckOverdue { room: &message.room, id: &message.id };
        let event = RoomEvent {
            room: message.room.as_str().into(),
            frame: frame.encode(),
            exclude: None,
            message: None,
        };
        if let Err(err) = pod.broker.broadcast(event).await {
            tracing::warn!(room = %message.room, message.id = %message.id, error = %err, "ack_overdue not announced");
        }
        if let Some(url) = pod.config.escalation.webhook_url.clone() {
            let body = webhook_body(&message);
            let secret = pod.config.escalation.webhook_secret.clone();
            // Not tracked by the drain: a failing webhook must not hold it up.
            tokio::spawn(deliver(pod.clone(), client.clone(), url, body, secret));
        }
    }
}

/// The webhook's JSON: who sent what kind of message where, never its text.
pub fn webhook_body(message: &Message) -> Vec<u8> {
    let body = json!({
        "event": "ack_overdue",
        "room": message.room,
        "id": message.id,
        "from": message.from,
        "priority": message.priority,
        "ts": message.ts,
        "deadline": message.deadline,
    });
    body.to_string().into_bytes()
}

/// `sha256=<hex>` of the HMAC-SHA256 of the body.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// POSTs until the webhook answers 2xx, backing off between attempts.
async fn deliver(
    pod: Arc<Pod>,
    client: reqwest::Client,
    url: String,
    body: Vec<u8>,
    secret: Option<String>,
) {
    let mut delay = Duration::from_millis(500);
    for attempt in 1u32.. {
        let mut request =
            client.post(&url).header("content-type", "application/json").body(body.clone());
        if let Some(secret) = &secret {
            request = request.header("x-ward-signature", signature(secret, &body));
        }

        match request.send().await {
            Ok(answer) if answer.status().is_success() => return,
            Ok(answer) => tracing::warn!(
                attempt,
                status = answer.status().as_u16(),
                "escalation webhook refused"
            ),
            Err(err) => tracing::warn!(attempt, error = %err, "escalation webhook unreachable"),
        }
        pod.metrics.webhook_failures.inc();

        tokio::select! {
            // Limitation: a delivery still failing when the pod stops is given up.
            _ = pod.shutdown.cancelled() => {
                tracing::error!(attempt, "escalation webhook given up: the pod is stopping");
                return;
            }
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX_RETRY_DELAY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_in_hex() {
        // Known answer from RFC 4231, test case 2.
        let signature = signature("Jefe", b"what do ya want for nothing?");
        assert_eq!(
            signature,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
