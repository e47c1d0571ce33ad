//! The publish API for hospital systems: `POST /api/v1/rooms/{room}/messages`
//! with a bearer service token, so that a lab system can post a result to a
//! room. Off (404) unless `api.tokens` is set.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::broker::BrokerError;
use crate::pod::Pod;
use crate::protocol::{self, Draft, Priority, User};

/// How long the broker may take before the caller gets 503.
const BROKER_DEADLINE: Duration = Duration::from_secs(3);

/// The body of a publish request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    text: String,
    from: Sender,
    #[serde(default)]
    priority: Priority,
    needs_ack: Option<bool>,
    ack_deadline: Option<String>,
    client_msg_id: Option<String>,
}

/// Who posts: an id, and a name that defaults to the id.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sender {
    id: String,
    name: Option<String>,
}

/// Stores and publishes one message on behalf of a hospital system.
pub async fn publish(
    State(pod): State<Arc<Pod>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(tokens) = pod.config.api.tokens.as_ref().filter(|t| !t.is_empty()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !bearer_matches(tokens, &headers) {
        return problem(StatusCode::UNAUTHORIZED, "send Authorization: Bearer <service token>");
    }

    let request: PublishRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => return problem(StatusCode::BAD_REQUEST, &format!("invalid body: {err}")),
    };
    let draft = match draft(&pod, room, request) {
        Ok(draft) => draft,
        Err((status, message)) => return problem(status, &message),
    };

    let room = draft.room.clone();
    match tokio::time::timeout(BROKER_DEADLINE, pod.broker.publish(draft)).await {
        Ok(Ok(published)) => {
            let message = &published.message;
            if !published.duplicate {
                pod.metrics.messages_published.inc();
                crate::audit::record(&pod, "message_posted", &room, &message.id, &message.from.id);
            }
            (StatusCode::CREATED, Json(json!({ "id": message.id, "ts": message.ts })))
                .into_response()
        }
        Ok(Err(BrokerError::BadRequest(text))) => problem(StatusCode::BAD_REQUEST, &text),
        Ok(Err(BrokerError::Forbidden(text))) => problem(StatusCode::FORBIDDEN, &text),
        Ok(Err(BrokerError::Unavailable(_))) | Err(_) => {
            problem(StatusCode::SERVICE_UNAVAILABLE, "messaging is briefly unavailable; retry")
        }
    }
}

/// Checks the request and turns it into a draft, or says why it is refused.
fn draft(pod: &Pod, room: String, request: PublishRequest) -> Result<Draft, (StatusCode, String)> {
    let invalid = |text: &str| Err((StatusCode::BAD_REQUEST, text.to_string()));
    if !protocol::is_valid_name(&room) {
        return invalid("room names are 1 to 64 of A-Z a-z 0-9 . _ : -");
    }
    let name = request.from.name.clone().unwrap_or_else(|| request.from.id.clone());
    if !protocol::is_valid_name(&request.from.id) || !protocol::is_valid_display_name(&name) {
        return invalid(
            "`from` needs an `id` (1 to 64 of A-Z a-z 0-9 . _ : -) and at most a 100-character `name`",
        );
    }
    if request.text.trim().is_empty() {
        return invalid("`text` must not be empty or only spaces");
    }
    if request.client_msg_id.as_deref().is_some_and(|id| !protocol::is_valid_client_msg_id(id)) {
        return invalid("`client_msg_id` must be 1 to 64 characters");
    }
    let limit = pod.config.limits.max_text_chars;
    if request.text.chars().count() > limit {
        let text = format!("text is longer than {limit} characters");
        return Err((StatusCode::PAYLOAD_TOO_LARGE, text));
    }
    if protocol::is_direct_room(&room) {
        return Err((StatusCode::FORBIDDEN, "services may not post to direct rooms".into()));
    }

    let needs_ack = request.needs_ack.unwrap_or(request.priority == Priority::Urgent);
    let ack_within = match (needs_ack, &request.ack_deadline) {
        (false, _) => None,
        (true, None) => Some(pod.config.escalation.default_deadline),
        (true, Some(text)) => match humantime::parse_duration(text) {
            Ok(deadline) if deadline >= Duration::from_secs(1) => Some(deadline),
            _ => return invalid("`ack_deadline` must be a duration like \"5m\""),
        },
    };
    Ok(Draft {
        room,
        from: User { id: request.from.id.into(), name: name.into() },
        text: request.text,
        priority: request.priority,
        ack_within,
        client_msg_id: request.client_msg_id,
    })
}

/// Whether the `Authorization` header carries one of the tokens.
fn bearer_matches(tokens: &[String], headers: &HeaderMap) -> bool {
    let Some(presented) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    tokens.iter().fold(false, |found, token| {
        found | constant_time_eq(token.as_bytes(), presented.as_bytes())
    })
}

/// Compares without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

fn problem(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_must_match_exactly() {
        let tokens = vec!["lab-token".to_string()];
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Bearer lab-token".parse().unwrap());
        assert!(bearer_matches(&tokens, &headers));
        headers.insert(header::AUTHORIZATION, "Bearer lab-tokeN".parse().unwrap());
        assert!(!bearer_matches(&tokens, &headers));
        headers.insert(header::AUTHORIZATION, "lab-token".parse().unwrap());
        assert!(!bearer_matches(&tokens, &headers));
    }
}
