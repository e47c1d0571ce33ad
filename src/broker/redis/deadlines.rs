//! Acknowledgement deadlines of all rooms, in one sorted set, so that every
//! overdue message is claimed by exactly one pod even when no pod has
//! members in its room.

use redis::AsyncCommands;

use super::Shared;
use super::keys::deadlines;
use crate::broker::BrokerError;
use crate::protocol::Message;

/// Most deadlines taken by one claim.
const CLAIM_BATCH: usize = 100;

impl Shared {
    /// The deadlines key when `publish.lua` may write it (one server), or
    /// `''` when the caller records the deadline (a cluster).
    pub(super) fn deadlines_in_script(&self) -> String {
        if self.cluster { String::new() } else { deadlines(&self.prefix) }
    }

    /// Records a deadline outside the publish script (cluster mode).
    pub(super) async fn record_deadline(&self, room: &str, id: &str, deadline: i64) {
        let key = deadlines(&self.prefix);
        let member = format!("{room}|{id}");
        let recorded = self
            .link
            .run(|mut conn| async move { conn.zadd::<_, _, _, ()>(key, member, deadline).await })
            .await;
        if let Err(err) = recorded {
            // Limitation: in cluster mode the message is stored by then; its
            // escalation is what is lost when this write fails.
            tracing::warn!(room, message.id = id, error = %err, "deadline not recorded");
        }
    }

    /// Takes the deadlines that passed and returns their messages that are
    /// still unacknowledged.
    ///
    /// Limitation: a pod that stops between this claim and its escalation
    /// takes that escalation with it; no other pod will claim it again.
    pub(super) async fn claim_overdue(&self, now_ms: i64) -> Result<Vec<Message>, BrokerError> {
        let key = deadlines(&self.prefix);
        let mut call = self.scripts.claim_overdue.prepare_invoke();
        call.key(&key).arg(now_ms).arg(CLAIM_BATCH);
        let due: Vec<String> =
            self.link.run(|mut conn| async move { call.invoke_async(&mut conn).await }).await?;

        let mut overdue = Vec::new();
        for member in due {
            let Some((room, id)) = member.split_once('|') else { continue };
            match self.read(room, "XRANGE", id.into(), id, 1).await {
                Ok(slice) => overdue.extend(
                    slice
                        .messages
                        .into_iter()
                        .filter(|m| m.acknowledged_by.as_ref().is_none_or(Vec::is_empty)),
                ),
                Err(err) => {
                    tracing::warn!(room, message.id = id, error = %err, "overdue message not read");
                    self.unclaim(&key, member.clone(), now_ms).await;
                }
            }
        }
        Ok(overdue)
    }

    /// Puts a claimed deadline back, for the next claim.
    async fn unclaim(&self, key: &str, member: String, now_ms: i64) {
        let key = key.to_string();
        let put_back = self
            .link
            .run(|mut conn| async move { conn.zadd::<_, _, _, ()>(key, member, now_ms).await })
            .await;
        if let Err(err) = put_back {
            tracing::warn!(error = %err, "overdue message lost for escalation");
        }
    }
}
