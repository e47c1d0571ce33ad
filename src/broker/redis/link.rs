//! The pod's command connection to Redis (one server or a cluster), and the
//! probe that keeps it honest: a PING every [`PROBE_INTERVAL`] decides
//! whether the broker is up, reconnects a lost connection, and feeds
//! `/readyz` and `ward_broker_up`. While down, calls fail at once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, RedisResult, Value};
use tokio::time::timeout;

use crate::broker::{BrokerError, Health};
use crate::metrics::Metrics;

/// How often the probe pings Redis.
pub(super) const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// Longest wait for a TCP (and TLS) connection.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for the probe's PING.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for one call; sessions give up at 3 s.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the connection goes (boxed: both clients are large).
enum Target {
    Single(Box<redis::Client>),
    Cluster(Box<ClusterClient>),
}

/// A connection to one server or to a cluster; cheap to clone.
#[derive(Clone)]
pub(super) enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

/// The command connection and what the probe learnt about it.
pub(super) struct Link {
    target: Target,
    /// The live connection; `None` after a connection error until the probe
    /// connects again. Cloned out, never held across an await.
    conn: Mutex<Option<Conn>>,
    /// Whether the last probe (or call) found Redis reachable.
    up: AtomicBool,
    /// Round-trip of the last successful probe, in µs (0: none yet).
    latency_us: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Link {
    /// A link to `url`, not connected yet.
    pub(super) fn new(url: &str, cluster: bool, metrics: Arc<Metrics>) -> Result<Self, String> {
        let target = if cluster {
            let client = ClusterClient::builder(vec![url])
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(CALL_TIMEOUT)
                .retries(2)
                .build();
            Target::Cluster(Box::new(client.map_err(|e| format!("redis.url: {e}"))?))
        } else {
            let client = redis::Client::open(url).map_err(|e| format!("redis.url: {e}"))?;
            Target::Single(Box::new(client))
        };
        Ok(Self {
            target,
            conn: Mutex::new(None),
            up: AtomicBool::new(false),
            latency_us: AtomicU64::new(0),
            metrics,
        })
    }

    fn current(&self) -> Option<Conn> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_current(&self, conn: Option<Conn>) {
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = conn;
    }

    /// Connects unless a connection is there already.
    pub(super) async fn ensure_connected(&self) -> RedisResult<Conn> {
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let connecting = async {
            match &self.target {
                Target::Single(client) => {
                    let config = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(CONNECT_TIMEOUT))
                        .set_response_timeout(Some(CALL_TIMEOUT));
                    let conn = client.get_multiplexed_async_connection_with_config(&config);
                    conn.await.map(Conn::Single)
                }
                Target::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
            }
        };
        let conn = timeout(CONNECT_TIMEOUT * 2, connecting)
            .await
            .map_err(|_| redis::RedisError::from(std::io::Error::other("connect timed out")))??;
        self.set_current(Some(conn.clone()));
        Ok(conn)
    }

    /// Runs one call on the connection, within [`CALL_TIMEOUT`]; fails at
    /// once while Redis is known to be unreachable.
    pub(super) async fn run<T, F, Fut>(&self, call: F) -> Result<T, BrokerError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let conn = match self.current() {
            Some(conn) if self.up.load(Ordering::Relaxed) => conn,
            _ => return Err(BrokerError::Unavailable("Redis is unreachable".into())),
        };
        match timeout(CALL_TIMEOUT, call(conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(self.failed(&err)),
            Err(_) => Err(BrokerError::Unavailable("Redis did not answer in time".into())),
        }
    }

    /// Classifies a failed call; a broken single connection is dropped and
    /// the broker counts as down until the probe reconnects.
    fn failed(&self, err: &redis::RedisError) -> BrokerError {
        let broken =
            err.is_io_error() || err.is_connection_dropped() || err.is_unrecoverable_error();
        if broken && matches!(self.target, Target::Single(_)) {
            self.set_current(None);
            self.set_up(false);
        }
        BrokerError::Unavailable(err.to_string())
    }

    fn set_up(&self, up: bool) -> bool {
        self.metrics.broker_up.set(i64::from(up));
        self.up.swap(up, Ordering::Relaxed)
    }

    /// Connects if needed and pings; returns true when Redis just became
    /// reachable again.
    pub(super) async fn probe(&self) -> bool {
        let started = Instant::now();
        let outcome = async {
            let mut conn = self.ensure_connected().await?;
            redis::cmd("PING").query_async::<()>(&mut conn).await
        };
        let up = match timeout(PROBE_TIMEOUT, outcome).await {
            Ok(Ok(())) => true,
            Ok(Err(err)) => {
                self.failed(&err);
                false
            }
            Err(_) => false,
        };
        if up {
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.latency_us.store(micros.max(1), Ordering::Relaxed);
        }
        let was_up = self.set_up(up);
        if was_up != up {
            if up {
                tracing::info!("Redis reachable");
            } else {
                tracing::warn!("Redis unreachable");
            }
        }
        up && !was_up
    }

    /// Health as the last probe saw it.
    pub(super) fn health(&self) -> Health {
        let micros = self.latency_us.load(Ordering::Relaxed);
        Health {
            kind: "redis",
            up: self.up.load(Ordering::Relaxed),
            latency: (micros > 0).then(|| Duration::from_micros(micros)),
        }
    }
}
