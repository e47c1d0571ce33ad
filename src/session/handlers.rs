//! What each client frame does once decoded: the checks in the protocol's
//! order of precedence, then the work against the broker and the rooms.

use std::sync::Arc;

use axum::extract::ws::WebSocket;

use super::{End, Joined, Refusal, Session};
use crate::broker::Page;
use crate::protocol::{
    self, ClientFrame, Draft, ErrorCode, Message, Priority, Ref, SendMessage, ServerFrame,
};

impl Session {
    /// Checks a frame in the order `bad_request`, `too_large`, `forbidden`,
    /// `not_in_room`; the rate limit comes after these.
    pub(super) fn check(&self, frame: &ClientFrame) -> Result<(), Refusal> {
        self.check_fields(frame)?;

        if let ClientFrame::SendMessage(send) = frame
            && send.text.chars().count() > self.pod.config.limits.max_text_chars
        {
            let limit = self.pod.config.limits.max_text_chars;
            return Err(Refusal::new(
                ErrorCode::TooLarge,
                format!("text is longer than {limit} characters"),
            ));
        }

        let Some(room) = frame.room() else { return Ok(()) };
        if !self.identity.may_use(room) {
            return Err(Refusal::new(ErrorCode::Forbidden, "you may not use this room"));
        }
        let needs_membership = matches!(
            frame,
            ClientFrame::SendMessage(_)
                | ClientFrame::Typing { .. }
                | ClientFrame::AcknowledgeMessage { .. }
                | ClientFrame::MarkRead { .. }
                | ClientFrame::LeaveRoom { .. }
        );
        if needs_membership && !self.rooms.contains_key(room) {
            return Err(Refusal::new(ErrorCode::NotInRoom, "join the room first"));
        }
        Ok(())
    }

    /// Field rules that serde cannot express.
    fn check_fields(&self, frame: &ClientFrame) -> Result<(), Refusal> {
        let bad = |text: &str| Err(Refusal::new(ErrorCode::BadRequest, text));

        if let Some(room) = frame.room()
            && !protocol::is_valid_name(room)
        {
            return bad("room names are 1 to 64 of A-Z a-z 0-9 . _ : -");
        }
        match frame {
            ClientFrame::Hello(_) => bad("hello was already accepted on this connection"),
            ClientFrame::JoinRoom { since: Some(since), .. }
                if protocol::parse_id(since).is_none() =>
            {
                bad("`since` is not a message id")
            }
            ClientFrame::JoinRoom { room, .. }
                if !self.rooms.contains_key(room.as_str())
                    && self.rooms.len() >= self.pod.config.limits.max_rooms_per_connection =>
            {
                bad("this connection is in too many rooms; leave one first")
            }
            ClientFrame::SendMessage(send) => check_send(send),
            ClientFrame::History { before: Some(before), .. }
                if protocol::parse_id(before).is_none() =>
            {
                bad("`before` is not a message id")
            }
            ClientFrame::History { limit: Some(limit), .. }
                if !(1..=protocol::MAX_HISTORY_LIMIT as u32).contains(limit) =>
            {
                bad("`limit` must be 1 to 100")
            }
            ClientFrame::MarkRead { up_to, .. } if protocol::parse_id(up_to).is_none() => {
                bad("`up_to` is not a message id")
            }
            ClientFrame::Refresh { .. } if self.pod.verifier.is_none() => {
                bad("refresh is only used with auth.mode = \"jwt\"")
            }
            _ => Ok(()),
        }
    }

    /// Carries out a checked frame and sends its answer.
    pub(super) async fn carry_out(
        &mut self,
        socket: &mut WebSocket,
        frame: ClientFrame,
        reference: Option<&Ref>,
    ) -> Result<(), End> {
        let result = match frame {
            ClientFrame::JoinRoom { room, since } => {
                self.join(socket, room.into(), since, reference).await
            }
            ClientFrame::LeaveRoom { room } => self.leave(socket, room.into(), reference).await,
            ClientFrame::SendMessage(send) => self.send(socket, send, reference).await,
            ClientFrame::Typing { room, active } => self.typing(room.into(), active).await,
            ClientFrame::History { room, before, limit } => {
                self.history(socket, &room, before, limit, reference).await
            }
            ClientFrame::Ping {} => Ok(self.reply(socket, ServerFrame::Pong { reference }).await?),
            ClientFrame::AcknowledgeMessage { room, id } => {
                self.acknowledge(socket, &room, &id, reference).await
            }
            ClientFrame::MarkRead { room, up_to } => self.mark_read(room.into(), &up_to).await,
            ClientFrame::Refresh { token } => self.refresh(socket, &token, reference).await,
            ClientFrame::Hello(_) => Ok(()),
        };
        match result {
            Ok(()) => Ok(()),
            Err(Step::End(end)) => Err(end),
            Err(Step::Refused(refusal)) => {
                let error =
                    ServerFrame::Error { reference, code: refusal.code, message: &refusal.message };
                self.reply(socket, error).await
            }
        }
    }

    /// Joins a room (or answers again for a room already joined).
    async fn join(
        &mut self,
        socket: &mut WebSocket,
        room: Arc<str>,
        since: Option<String>,
        reference: Option<&Ref>,
    ) -> Result<(), Step> {
        if !self.rooms.contains_key(&room) {
            self.enter(&room).await?;
        }

        let broker = &self.pod.broker;
        let members = self.broker("members", broker.members(&room)).await?;
        let since = since.as_deref().and_then(protocol::parse_id);
        let page = match since {
            Some(since) => self.broker("since", broker.since(&room, since)).await?,
            None => Page {
                messages: self.broker("recent", broker.recent(&room, protocol::JOIN_PAGE)).await?,
                flag: true,
            },
        };
        let reads = self.broker("reads", broker.reads(&room, &members)).await?;

        let joined = ServerFrame::RoomJoined {
            reference,
            room: &room,
            members: &members,
            messages: &page.messages,
            recovered: since.map(|_| page.flag),
            reads: &reads,
        };
        self.reply(socket, joined).await?;

        let watermark = page.messages.last().and_then(|m| protocol::parse_id(&m.id)).or(since);
        if let Some(joined) = self.rooms.get_mut(&room) {
            joined.watermark = watermark;
        }
        Ok(())
    }

    /// Becomes a member: local registry, subscription, presence, announcement.
    async fn enter(&mut self, room: &Arc<str>) -> Result<(), Step> {
        let user = self.identity.user.clone();
        let local = self.pod.rooms.join(room, self.conn, &user.id, &self.outbox);
        // Until `room_joined` is sent, live messages wait in the queue.
        self.rooms.insert(room.clone(), Joined { watermark: None, last_typing: None });

        let entered = async {
            if local.room_edge {
                self.broker("subscribe", self.pod.broker.subscribe(room)).await?;
            }
            if local.user_edge {
                let change =
                    self.broker("presence_add", self.pod.broker.presence_add(room, &user)).await?;
                if change.changed {
                    self.announce(room, ServerFrame::UserJoined { room, user: &user }).await?;
                    let count = change.member_count;
                    self.announce(room, ServerFrame::RoomInfoUpdate { room, member_count: count })
                        .await?;
                }
            }
            Ok::<(), Refusal>(())
        };
        if let Err(refusal) = entered.await {
            self.rooms.remove(room);
            let local = self.pod.rooms.leave(room, self.conn, &user.id);
            if local.room_edge {
                self.pod.broker.unsubscribe(room).await;
            }
            return Err(Step::Refused(refusal));
        }
        Ok(())
    }

    /// Leaves a room and says so.
    async fn leave(
        &mut self,
        socket: &mut WebSocket,
        room: Arc<str>,
        reference: Option<&Ref>,
    ) -> Result<(), Step> {
        self.exit(&room).await?;
        self.reply(socket, ServerFrame::RoomLeft { reference, room: &room }).await?;
        Ok(())
    }

    /// Ends membership: local registry, presence, announcement, subscription.
    async fn exit(&mut self, room: &Arc<str>) -> Result<(), Refusal> {
        self.rooms.remove(room);
        let user = self.identity.user.clone();
        let local = self.pod.rooms.leave(room, self.conn, &user.id);

        let mut outcome = Ok(());
        if local.user_edge {
            outcome = self.farewell(room, &user).await;
        }
        if local.room_edge {
            self.pod.broker.unsubscribe(room).await;
        }
        outcome
    }

    /// Removes the user's presence and tells the room, when it changed.
    async fn farewell(&self, room: &Arc<str>, user: &protocol::User) -> Result<(), Refusal> {
        let change =
            self.broker("presence_remove", self.pod.broker.presence_remove(room, user)).await?;
        if change.changed {
            self.announce(room, ServerFrame::UserLeft { room, user }).await?;
            let count = change.member_count;
            self.announce(room, ServerFrame::RoomInfoUpdate { room, member_count: count }).await?;
        }
        Ok(())
    }

    /// Leaves every room as the connection closes.
    pub(super) async fn leave_all(&mut self) {
        let rooms = self.rooms.names();
        for room in rooms {
            if let Err(refusal) = self.exit(&room).await {
                // Presence then ends by itself within the presence TTL.
                tracing::warn!(conn.id = self.conn, room = %room, error = %refusal.message, "leaving a room failed");
            }
        }
    }

    /// Stores and publishes a message, then acknowledges it to the sender.
    async fn send(
        &mut self,
        socket: &mut WebSocket,
        send: SendMessage,
        reference: Option<&Ref>,
    ) -> Result<(), Step> {
        let ack_within = match send.needs_ack.unwrap_or(send.priority == Priority::Urgent) {
            false => None,
            true => Some(match &send.ack_deadline {
                Some(text) => parse_deadline(text)?,
                None => self.pod.config.escalation.default_deadline,
            }),
        };
        let draft = Draft {
            room: send.room,
            from: self.identity.user.clone(),
            text: send.text,
            priority: send.priority,
            ack_within,
            client_msg_id: send.client_msg_id,
        };

        let published = self.broker("publish", self.pod.broker.publish(draft)).await?;
        let message: &Message = &published.message;
        if !published.duplicate {
            self.pod.metrics.messages_published.inc();
            crate::audit::record(
                &self.pod,
                "message_sent",
                &message.room,
                &message.id,
                &message.from.id,
            );
        }
        let ack = ServerFrame::Ack { reference, id: Some(&message.id), ts: Some(message.ts) };
        self.reply(socket, ack).await?;
        Ok(())
    }

    /// Tells the room's other connections that this user types; repeats
    /// within `limits.typing_interval` are dropped, changes always pass.
    async fn typing(&mut self, room: Arc<str>, active: bool) -> Result<(), Step> {
        let interval = self.pod.config.limits.typing_interval;
        let now = tokio::time::Instant::now();
        if let Some(joined) = self.rooms.get_mut(&room) {
            let repeat =
                joined.last_typing.is_some_and(|(at, was)| was == active && now - at < interval);
            if repeat {
                return Ok(());
            }
            joined.last_typing = Some((now, active));
        }
        let user = &self.identity.user;
        self.announce(&room, ServerFrame::Typing { room: &room, user, active }).await?;
        Ok(())
    }

    /// Answers a page of older messages.
    async fn history(
        &mut self,
        socket: &mut WebSocket,
        room: &str,
        before: Option<String>,
        limit: Option<u32>,
        reference: Option<&Ref>,
    ) -> Result<(), Step> {
        let before = before.as_deref().and_then(protocol::parse_id);
        let limit = limit.map_or(protocol::JOIN_PAGE, |l| l as usize);
        let page = self.broker("history", self.pod.broker.history(room, before, limit)).await?;
        let frame =
            ServerFrame::History { reference, room, messages: &page.messages, more: page.flag };
        self.reply(socket, frame).await?;
        Ok(())
    }

    /// Records that this user takes responsibility for a message.
    async fn acknowledge(
        &mut self,
        socket: &mut WebSocket,
        room: &str,
        id: &str,
        reference: Option<&Ref>,
    ) -> Result<(), Step> {
        let user = &self.identity.user;
        self.broker("acknowledge", self.pod.broker.acknowledge(room, id, user)).await?;
        crate::audit::record(&self.pod, "message_acknowledged", room, id, &user.id);
        self.reply(socket, ServerFrame::Ack { reference, id: None, ts: None }).await?;
        Ok(())
    }

    /// Moves the read mark and tells the room's other connections.
    async fn mark_read(&mut self, room: Arc<str>, up_to: &str) -> Result<(), Step> {
        let user = &self.identity.user;
        let moved = self.broker("mark_read", self.pod.broker.mark_read(&room, user, up_to)).await?;
        if moved {
            let ts = crate::broker::now_ms();
            self.announce(&room, ServerFrame::ReadReceipt { room: &room, user, up_to, ts }).await?;
        }
        Ok(())
    }
}

impl Session {
    /// Replaces the connection's token with a fresh one for the same user.
    async fn refresh(
        &mut self,
        socket: &mut WebSocket,
        token: &str,
        reference: Option<&Ref>,
    ) -> Result<(), Step> {
        let refused = || Refusal::new(ErrorCode::Unauthorized, "token refused");
        let verifier = self.pod.verifier.as_ref().ok_or_else(refused)?;
        let fresh = verifier.verify(token).map_err(|cause| {
            tracing::warn!(conn.id = self.conn, cause = %cause, "refresh refused");
            refused()
        })?;
        if fresh.user.id != self.identity.user.id {
            tracing::warn!(conn.id = self.conn, "refresh refused: token is for another user");
            return Err(refused().into());
        }

        match fresh.expires_at {
            Some(exp) => self.pod.expiries.watch(self.conn, exp, &self.outbox),
            None => self.pod.expiries.forget(self.conn),
        }
        // Limitation: rooms joined under the old token stay joined even if the
        // new token no longer lists them; the new rooms apply to later frames.
        self.identity = fresh;
        self.reply(socket, ServerFrame::Ack { reference, id: None, ts: None }).await?;
        Ok(())
    }
}

/// The outcome of a handler that did not succeed.
pub(super) enum Step {
    /// Answer with an `error` and go on.
    Refused(Refusal),
    /// The connection ends.
    End(End),
}

impl From<Refusal> for Step {
    fn from(refusal: Refusal) -> Self {
        Step::Refused(refusal)
    }
}

impl From<End> for Step {
    fn from(end: End) -> Self {
        Step::End(end)
    }
}

/// Rules of `send_message` fields.
fn check_send(send: &SendMessage) -> Result<(), Refusal> {
    let bad = |text: &str| Err(Refusal::new(ErrorCode::BadRequest, text));
    if send.text.trim().is_empty() {
        return bad("`text` must not be empty or only spaces");
    }
    if let Some(id) = &send.client_msg_id
        && !protocol::is_valid_client_msg_id(id)
    {
        return bad("`client_msg_id` must be 1 to 64 characters");
    }
    if let Some(deadline) = &send.ack_deadline {
        parse_deadline(deadline)?;
    }
    Ok(())
}

/// An `ack_deadline` such as `"5m"`: at least one second, at most a day.
fn parse_deadline(text: &str) -> Result<std::time::Duration, Refusal> {
    let bad = || {
        Refusal::new(
            ErrorCode::BadRequest,
            "`ack_deadline` must be a duration like \"5m\", 1s to 24h",
        )
    };
    let deadline = humantime::parse_duration(text).map_err(|_| bad())?;
    if deadline < std::time::Duration::from_secs(1)
        || deadline > std::time::Duration::from_secs(86_400)
    {
        return Err(bad());
    }
    Ok(deadline)
}
