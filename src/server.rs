//! Starting and stopping a pod: bind the listener, build the broker and the
//! shared state, serve HTTP, ping connections, and drain on request.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::broker::memory::MemoryBroker;
use crate::broker::redis::RedisBroker;
use crate::broker::{Broker, EventSink};
use crate::config::{Config, ConfigError};
use crate::jwt::Verifier;
use crate::metrics::Metrics;
use crate::pod::Pod;
use crate::rooms::Rooms;

/// Kernel send buffer of a client socket: small, since sockets are many and
/// the outbound queue already absorbs bursts.
const SOCKET_SEND_BUFFER: usize = 32 * 1024;
/// Kernel receive buffer of a client socket.
const SOCKET_RECV_BUFFER: usize = 16 * 1024;
/// Pause after a failed accept.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// Why a pod could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}; is another process using it?")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The configuration is unusable (exit code 78).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The broker could not be set up.
    #[error("broker: {0}")]
    Broker(String),
}

/// A running pod.
pub struct Server {
    addr: SocketAddr,
    pod: Arc<Pod>,
    serving: JoinHandle<()>,
}

impl Server {
    /// Binds `config.listen` and starts serving.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind { addr: config.listen, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr: config.listen, source })?;

        let verifier = Verifier::from_config(config.auth.mode, &config.auth.jwt)?;
        let metrics = Arc::new(Metrics::new());
        let rooms = Arc::new(Rooms::new(metrics.clone()));
        let broker = build_broker(&config, rooms.clone(), metrics.clone()).await?;
        metrics.broker_up.set(i64::from(broker.health().up));
        let pod = Arc::new(Pod::new(config, broker, rooms, metrics).with_verifier(verifier));

        tokio::spawn(pod.clone().run_heartbeat());
        tokio::spawn(pod.expiries.clone().run(pod.shutdown.clone()));
        tokio::spawn(crate::escalation::run(pod.clone()));
        let serving = tokio::spawn(serve(listener, pod.clone()));
        tracing::info!(addr = %addr, node.id = %pod.config.node_id, broker = pod.broker.health().kind, "serving");
        Ok(Server { addr, pod, serving })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The pod's shared state.
    pub fn pod(&self) -> &Arc<Pod> {
        &self.pod
    }

    /// Drains the pod as on SIGTERM and stops serving; true when every
    /// connection ended before `drain.timeout`.
    pub async fn drain(self) -> bool {
        let finished = self.pod.drain().await;
        self.serving.abort();
        finished
    }

    /// Stops at once, like a crash: no drain, connections dropped.
    pub fn abort(self) {
        self.pod.shutdown.cancel();
        self.serving.abort();
    }
}

/// Accepts connections until shutdown; each is served on its own task.
async fn serve(listener: TcpListener, pod: Arc<Pod>) {
    let app = crate::http::router(pod.clone());
    loop {
        let accepted = tokio::select! {
            _ = pod.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, _peer)) => {
                tune_socket(&tcp);
                tokio::spawn(serve_connection(tcp, app.clone(), pod.config.limits.hello_timeout));
            }
            Err(err) => {
                // Out of file descriptors, most likely: pause instead of spinning.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Small kernel buffers, since sockets are many, and no Nagle delay.
fn tune_socket(tcp: &TcpStream) {
    let socket = socket2::SockRef::from(tcp);
    let tuned = tcp
        .set_nodelay(true)
        .and_then(|()| socket.set_send_buffer_size(SOCKET_SEND_BUFFER))
        .and_then(|()| socket.set_recv_buffer_size(SOCKET_RECV_BUFFER));
    if let Err(err) = tuned {
        tracing::debug!(error = %err, "socket options not set");
    }
}

/// Serves HTTP/1.1 on one connection; a request head that is not complete
/// within `head_timeout` closes it, so idle half-open requests cost nothing.
async fn serve_connection(tcp: TcpStream, app: axum::Router, head_timeout: std::time::Duration) {
    let service = TowerToHyperService::new(app);
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades()
        .await;
    if let Err(err) = served {
        tracing::debug!(error = %err, "HTTP connection ended with an error");
    }
}

/// The in-process broker, or Redis when `redis.url` is set.
async fn build_broker(
    config: &Config,
    rooms: Arc<Rooms>,
    metrics: Arc<Metrics>,
) -> Result<Arc<dyn Broker>, StartError> {
    let sink: Arc<dyn EventSink> = rooms;
    match &config.redis.url {
        None => {
            let broker = MemoryBroker::new(config.history.max_len, sink)
                .with_max_age(config.history.max_age);
            Ok(Arc::new(broker))
        }
        Some(_) => {
            let broker = RedisBroker::connect(config, sink, metrics).await;
            Ok(Arc::new(broker.map_err(StartError::Broker)?))
        }
    }
}
