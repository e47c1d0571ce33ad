//! Token lifetimes of open connections, watched by one task for the pod.
//!
//! Shortly before a token's `exp` the connection gets an `error` with code
//! `unauthorized`, so the client can send `refresh`; at `exp` it is closed
//! with 4401. One sorted map and a one-second sweep replace a timer per
//! connection.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::broker::{ConnId, now_ms};
use crate::outbox::{CloseRequest, Outbound, Outbox};
use crate::protocol::{ErrorCode, ServerFrame, close};

/// How often due warnings and closes are carried out.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How long before `exp` the warning goes out, at most.
const WARN_AHEAD_MS: i64 = 30_000;

/// What happens to a connection at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Warn,
    Close,
}

/// Pending warnings and closes, by due time.
#[derive(Default)]
pub struct Expiries {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Due time in ms, connection, step.
    due: BTreeMap<(i64, ConnId, Step), Arc<Outbox>>,
    /// The entries of each connection, to replace them on refresh.
    by_conn: HashMap<ConnId, [(i64, Step); 2]>,
}

impl Expiries {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watches a connection whose token expires at `exp` (seconds).
    pub fn watch(&self, conn: ConnId, exp: i64, outbox: &Arc<Outbox>) {
        let exp_ms = exp.saturating_mul(1000);
        let now = now_ms();
        let warn_at = exp_ms - WARN_AHEAD_MS.min((exp_ms - now).max(0) / 2);

        let mut inner = self.lock();
        remove(&mut inner, conn);
        inner.due.insert((warn_at, conn, Step::Warn), outbox.clone());
        inner.due.insert((exp_ms, conn, Step::Close), outbox.clone());
        inner.by_conn.insert(conn, [(warn_at, Step::Warn), (exp_ms, Step::Close)]);
    }

    /// Stops watching a connection (closed, or its token never expires).
    pub fn forget(&self, conn: ConnId) {
        remove(&mut self.lock(), conn);
    }

    /// Carries out every step that is due.
    pub fn sweep(&self) {
        const EXPIRED: CloseRequest = CloseRequest {
            code: close::UNAUTHORIZED,
            reason: "token expired",
            label: "unauthorized",
        };
        let now = now_ms();
        let due: Vec<_> = {
            let mut inner = self.lock();
            let later = inner.due.split_off(&(now + 1, 0, Step::Warn));
            let due = std::mem::replace(&mut inner.due, later);
            for (_, conn, step) in due.keys() {
                if *step == Step::Close {
                    inner.by_conn.remove(conn);
                }
            }
            due.into_iter().collect()
        };

        for ((_, _, step), outbox) in due {
            match step {
                Step::Warn => {
                    outbox.offer(Outbound::Notice(warning()));
                }
                Step::Close => outbox.request_close(EXPIRED),
            }
        }
    }

    /// Sweeps every second until `stop` is cancelled.
    pub async fn run(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => self.sweep(),
            }
        }
    }
}

fn remove(inner: &mut Inner, conn: ConnId) {
    if let Some(entries) = inner.by_conn.remove(&conn) {
        for (at, step) in entries {
            inner.due.remove(&(at, conn, step));
        }
    }
}

fn warning() -> axum::extract::ws::Utf8Bytes {
    let message = "your token expires soon; send a refresh frame with a new token";
    ServerFrame::Error { reference: None, code: ErrorCode::Unauthorized, message }.encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expired_token_is_warned_then_closed() {
        let expiries = Expiries::default();
        let outbox = Outbox::new(8);
        let past = now_ms() / 1000 - 1;
        expiries.watch(7, past, &outbox);
        expiries.sweep();
        assert_eq!(outbox.close_requested().map(|c| c.code), Some(close::UNAUTHORIZED));
    }

    #[test]
    fn a_refreshed_token_replaces_the_old_deadline() {
        let expiries = Expiries::default();
        let outbox = Outbox::new(8);
        let now = now_ms() / 1000;
        expiries.watch(7, now - 1, &outbox);
        expiries.watch(7, now + 3600, &outbox);
        expiries.sweep();
        assert_eq!(outbox.close_requested(), None);
    }
}
