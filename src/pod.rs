//! The state one pod shares among its connections: configuration, broker,
//! local rooms, metrics, the set of live connections, and the drain switch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Verifier;
use crate::broker::{Broker, ConnId};
use crate::config::Config;
use crate::expiry::Expiries;
use crate::metrics::Metrics;
use crate::outbox::{CloseRequest, Outbox};
use crate::protocol::close;
use crate::rooms::Rooms;

/// How often the pod pings every connection; two missed pings close it.
pub const PING_INTERVAL: Duration = Duration::from_secs(15);
/// Slices the connections are pinged in, one slice per tick.
const PING_SLICES: u64 = 30;

/// The open connections of a pod.
#[derive(Default)]
struct Connections {
    /// Each connection's outbox, by number.
    by_id: HashMap<ConnId, Arc<Outbox>>,
    /// Open connections per user id.
    per_user: HashMap<Arc<str>, u32>,
}

/// Shared state of one pod.
pub struct Pod {
    /// The configuration it was started with.
    pub config: Config,
    /// Storage, presence and pub/sub.
    pub broker: Arc<dyn Broker>,
    /// Local members of rooms; the broker's event sink.
    pub rooms: Arc<Rooms>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Token checks in jwt mode; `None` in open mode.
    pub verifier: Option<Arc<Verifier>>,
    /// Token lifetimes of open connections.
    pub expiries: Arc<Expiries>,
    /// Open connections, for pings, the drain and the per-user limit.
    connections: Mutex<Connections>,
    /// Source of connection numbers.
    next_conn: AtomicU64,
    /// Set at the start of a drain: `/readyz` answers 503.
    draining: AtomicBool,
    /// Set `drain.delay` after the start of a drain: upgrades get 503.
    refusing: AtomicBool,
    /// Every connection task, so the drain can wait for them.
    pub tasks: TaskTracker,
    /// Cancelled when the pod stops for good; background tasks end.
    pub shutdown: CancellationToken,
}

impl Pod {
    /// A pod with no connections yet.
    pub fn new(
        config: Config,
        broker: Arc<dyn Broker>,
        rooms: Arc<Rooms>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            config,
            broker,
            rooms,
            metrics,
            verifier: None,
            expiries: Arc::new(Expiries::default()),
            connections: Mutex::default(),
            next_conn: AtomicU64::new(1),
            draining: AtomicBool::new(false),
            refusing: AtomicBool::new(false),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        }
    }

    /// Checks tokens with this verifier (jwt mode).
    pub fn with_verifier(mut self, verifier: Option<Arc<Verifier>>) -> Self {
        self.verifier = verifier;
        self
    }

    /// Registers a new connection (from the upgrade on) and returns its number.
    pub fn register(&self, outbox: Arc<Outbox>) -> ConnId {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.lock_connections().by_id.insert(id, outbox);
        self.metrics.connections.inc();
        id
    }

    /// Counts one more connection of `user`; false when the user already has
    /// `limits.max_connections_per_user` on this pod.
    pub fn admit_user(&self, user: &Arc<str>) -> bool {
        let mut connections = self.lock_connections();
        let count = connections.per_user.entry(user.clone()).or_insert(0);
        if *count as usize >= self.config.limits.max_connections_per_user {
            return false;
        }
        *count += 1;
        true
    }

    /// Counts one connection of `user` less.
    pub fn release_user(&self, user: &str) {
        let mut connections = self.lock_connections();
        if let Some(count) = connections.per_user.get_mut(user) {
            *count -= 1;
            if *count == 0 {
                connections.per_user.remove(user);
            }
        }
    }

    /// Forgets a closed connection.
    pub fn unregister(&self, id: ConnId) {
        self.expiries.forget(id);
        if self.lock_connections().by_id.remove(&id).is_some() {
            self.metrics.connections.dec();
        }
    }

    fn lock_connections(&self) -> std::sync::MutexGuard<'_, Connections> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A snapshot of the open connections.
    fn snapshot(&self) -> Vec<Arc<Outbox>> {
        self.lock_connections().by_id.values().cloned().collect()
    }

    /// Whether the pod is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether new upgrades are refused.
    pub fn is_refusing(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
    }

    /// Pings one slice of the connections (those whose number falls in
    /// `slice`); closes those that missed two pings in a row.
    pub fn ping_slice(&self, slice: u64) {
        const PING_TIMEOUT: CloseRequest =
            CloseRequest { code: close::INTERNAL, reason: "ping timeout", label: "ping_timeout" };
        let due: Vec<Arc<Outbox>> = {
            let connections = self.lock_connections();
            let in_slice = connections.by_id.iter().filter(|(id, _)| *id % PING_SLICES == slice);
            in_slice.map(|(_, outbox)| outbox.clone()).collect()
        };
        for outbox in due {
            if outbox.ping_sent() >= 2 {
                outbox.request_close(PING_TIMEOUT);
            } else {
                outbox.offer(crate::outbox::Outbound::Ping);
            }
        }
    }

    /// Pings every connection once per [`PING_INTERVAL`], a slice at a time,
    /// so that pings and pongs do not arrive in one burst; until shutdown.
    pub async fn run_heartbeat(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(PING_INTERVAL / PING_SLICES as u32);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        for tick in 0u64.. {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = ticks.tick() => self.ping_slice(tick % PING_SLICES),
            }
        }
    }

    /// Drains the pod: not ready at once, refuse upgrades after `drain.delay`,
    /// close connections with 1012 spread over `drain.spread`, then wait for
    /// their tasks until `drain.timeout`. Returns true when all ended in time.
    pub async fn drain(&self) -> bool {
        let drain = &self.config.drain;
        let started = tokio::time::Instant::now();
        self.draining.store(true, Ordering::Relaxed);
        self.metrics.draining.set(1);
        tracing::info!(delay = ?drain.delay, spread = ?drain.spread, "drain started: not ready");

        tokio::time::sleep(drain.delay).await;
        self.refusing.store(true, Ordering::Relaxed);
        self.close_spread(drain.spread).await;

        // An upgrade that was under way when refusals began is closed too.
        self.close_spread(Duration::ZERO).await;

        self.tasks.close();
        let left = drain.timeout.saturating_sub(started.elapsed());
        let finished = tokio::time::timeout(left, self.tasks.wait()).await.is_ok();
        if !finished {
            tracing::warn!(
                open = self.metrics.connections.get(),
                "drain timed out; closing the rest"
            );
        }
        self.shutdown.cancel();
        finished
    }

    /// Asks every connection to close with 1012, evenly over `spread`.
    async fn close_spread(&self, spread: Duration) {
        const DRAINING: CloseRequest =
            CloseRequest { code: close::DRAINING, reason: "pod draining", label: "draining" };
        let connections = self.snapshot();
        let count = connections.len().max(1) as u32;
        let step = spread / count;
        if !connections.is_empty() {
            tracing::info!(connections = connections.len(), "closing connections");
        }
        for (i, outbox) in connections.into_iter().enumerate() {
            if i > 0 && !step.is_zero() {
                tokio::time::sleep(step).await;
            }
            outbox.request_close(DRAINING);
        }
    }
}
