//! One connection's outbound queue, shared between the room fan-out (which
//! pushes) and the connection's task (which writes).
//!
//! The queue is bounded: when a reader stops reading and the queue fills, the
//! connection is asked to close with 4409 instead of slowing the room or
//! dropping a frame silently. One `Notify` wakes the writer for frames, pings
//! and close requests alike, so an idle connection costs a few dozen bytes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;

use crate::broker::MessageMark;

/// A frame waiting to be written.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// An encoded room event, shared with the room's other members.
    Event {
        /// Room it belongs to; dropped if the connection left the room.
        room: Arc<str>,
        /// The encoded frame.
        frame: Utf8Bytes,
        /// Id and publish time when it is a `new_message`.
        message: Option<MessageMark>,
    },
    /// A frame for this connection alone, such as a token-expiry warning.
    Notice(Utf8Bytes),
    /// A WebSocket ping, to find dead peers.
    Ping,
}

/// A request to close the connection, with its close code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseRequest {
    /// WebSocket close code.
    pub code: u16,
    /// Short reason sent in the close frame.
    pub reason: &'static str,
    /// The `reason` label of `ward_connections_closed_total`.
    pub label: &'static str,
}

/// The result of offering a frame to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued.
    Queued,
    /// The queue was full: the connection is now closing with 4409.
    Overflowed,
    /// The connection is already closing; the frame was not queued.
    Closing,
}

/// The outbound side of one connection.
pub struct Outbox {
    state: Mutex<State>,
    /// Wakes the connection's task.
    wake: Notify,
    /// Pings sent since the peer last showed it is alive.
    missed_pongs: AtomicU8,
    /// Frames allowed in the queue.
    capacity: usize,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Outbound>,
    close: Option<CloseRequest>,
}

/// Close code and reason of a slow consumer.
pub const TOO_SLOW: CloseRequest = CloseRequest {
    code: crate::protocol::close::TOO_SLOW,
    reason: "too slow",
    label: "slow_consumer",
};

impl Outbox {
    /// An empty outbox holding at most `capacity` frames.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            missed_pongs: AtomicU8::new(0),
            capacity,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a frame, or asks the connection to close when the queue is full.
    pub fn offer(&self, frame: Outbound) -> Offer {
        let mut state = self.lock();
        if state.close.is_some() {
            return Offer::Closing;
        }
        if state.frames.len() >= self.capacity {
            state.close = Some(TOO_SLOW);
            drop(state);
            self.wake.notify_one();
            return Offer::Overflowed;
        }

        let was_empty = state.frames.is_empty();
        state.frames.push_back(frame);
        drop(state);
        if was_empty {
            self.wake.notify_one();
        }
        Offer::Queued
    }

    /// Asks the connection to close; the first request wins.
    pub fn request_close(&self, request: CloseRequest) {
        let mut state = self.lock();
        if state.close.is_none() {
            state.close = Some(request);
        }
        drop(state);
        self.wake.notify_one();
    }

    /// The pending close request, if any.
    pub fn close_requested(&self) -> Option<CloseRequest> {
        self.lock().close
    }

    /// Takes every queued frame, unless a close was requested. The queue's
    /// buffer goes with them, so an idle connection holds no queue memory.
    pub fn take_all(&self) -> Result<VecDeque<Outbound>, CloseRequest> {
        let mut state = self.lock();
        if let Some(close) = state.close {
            return Err(close);
        }
        Ok(std::mem::take(&mut state.frames))
    }

    /// Waits until something was queued or a close was requested.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Records a ping sent; returns how many in a row went unanswered before it.
    pub fn ping_sent(&self) -> u8 {
        self.missed_pongs.fetch_add(1, Ordering::Relaxed)
    }

    /// The peer showed it is alive.
    pub fn peer_alive(&self) {
        self.missed_pongs.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(text: &str) -> Outbound {
        Outbound::Event { room: "r".into(), frame: text.into(), message: None }
    }

    #[test]
    fn a_full_queue_turns_into_a_close_request() {
        let outbox = Outbox::new(2);
        assert_eq!(outbox.offer(event("1")), Offer::Queued);
        assert_eq!(outbox.offer(event("2")), Offer::Queued);
        assert_eq!(outbox.offer(event("3")), Offer::Overflowed);
        assert_eq!(outbox.offer(event("4")), Offer::Closing);
        assert_eq!(outbox.close_requested(), Some(TOO_SLOW));

        assert_eq!(outbox.take_all().err(), Some(TOO_SLOW));
    }

    #[test]
    fn take_all_empties_the_queue_in_order() {
        let outbox = Outbox::new(8);
        outbox.offer(event("a"));
        outbox.offer(event("b"));
        let batch = outbox.take_all().unwrap();
        let texts: Vec<_> = batch
            .iter()
            .map(|o| match o {
                Outbound::Event { frame, .. } => frame.as_str().to_string(),
                Outbound::Notice(frame) => frame.as_str().to_string(),
                Outbound::Ping => "ping".into(),
            })
            .collect();
        assert_eq!(texts, ["a", "b"]);
    }
}
