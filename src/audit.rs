//! The audit trail: who did what to which message, as structured log events
//! with target `audit`, so a log pipeline can keep them apart. Never the text.

use crate::pod::Pod;

/// Records one audit event when `audit.enabled` is on.
pub fn record(pod: &Pod, action: &'static str, room: &str, message_id: &str, user_id: &str) {
    if pod.config.audit.enabled {
        tracing::info!(target: "audit", action, room, message.id = message_id, user.id = user_id, "audit");
    }
}
