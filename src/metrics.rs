//! Every Prometheus metric of a pod, in one registry, all named `ward_*`.
//!
//! Labels are bounded: close reasons, frame types and broker operations come
//! from fixed lists, never from user input.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The pod's metrics.
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections (the autoscaling metric).
    pub connections: IntGauge,
    /// Connections accepted since start.
    pub connections_opened: IntCounter,
    /// Connections closed, by reason.
    pub connections_closed: IntCounterVec,
    /// Rooms with at least one member on this pod.
    pub rooms: IntGauge,
    /// Client frames received, by type (`invalid` when undecodable).
    pub frames_received: IntCounterVec,
    /// Data frames written to clients (WebSocket pings not included).
    pub frames_sent: IntCounter,
    /// Messages stored and published by this pod.
    pub messages_published: IntCounter,
    /// Time from publish to the socket write, per delivery.
    pub delivery_lag: Histogram,
    /// Broker command latency, by operation.
    pub broker_duration: HistogramVec,
    /// 1 while the broker can be reached.
    pub broker_up: IntGauge,
    /// Failed broker commands, by operation.
    pub broker_errors: IntCounterVec,
    /// Connections closed with 4409 because their queue overflowed.
    pub slow_consumer_closes: IntCounter,
    /// Client frames refused by the rate limit.
    pub rate_limited_frames: IntCounter,
    /// 1 while the pod drains.
    pub draining: IntGauge,
    /// Messages that passed their acknowledgement deadline unacknowledged.
    pub escalations: IntCounter,
    /// Escalation webhook attempts that failed.
    pub webhook_failures: IntCounter,
}

/// Latency buckets from 0.5 ms to 5 s.
const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

impl Metrics {
    /// Creates and registers every metric, with the process collector.
    pub fn new() -> Self {
        let registry = Registry::new();
        let metrics = Self {
            connections: IntGauge::new(
                "ward_connections",
                "Open WebSocket connections on this pod.",
            )
            .unwrap(),
            connections_opened: IntCounter::new(
                "ward_connections_opened_total",
                "WebSocket connections accepted.",
            )
            .unwrap(),
            connections_closed: IntCounterVec::new(
                Opts::new(
                    "ward_connections_closed_total",
                    "WebSocket connections closed, by reason.",
                ),
                &["reason"],
            )
            .unwrap(),
            rooms: IntGauge::new("ward_rooms", "Rooms with members on this pod.").unwrap(),
            frames_received: IntCounterVec::new(
                Opts::new("ward_frames_received_total", "Client frames received, by type."),
                &["type"],
            )
            .unwrap(),
            frames_sent: IntCounter::new(
                "ward_frames_sent_total",
                "Data frames written to clients.",
            )
            .unwrap(),
            messages_published: IntCounter::new(
                "ward_messages_published_total",
                "Messages stored and published by this pod.",
            )
            .unwrap(),
            delivery_lag: Histogram::with_opts(
                HistogramOpts::new(
                    "ward_delivery_lag_seconds",
                    "Time from a message's publish to its write to a client socket.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .unwrap(),
            broker_duration: HistogramVec::new(
                HistogramOpts::new(
                    "ward_broker_command_duration_seconds",
                    "Broker command latency, by operation.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["op"],
            )
            .unwrap(),
            broker_up: IntGauge::new("ward_broker_up", "1 while the broker can be reached.")
                .unwrap(),
            broker_errors: IntCounterVec::new(
                Opts::new("ward_broker_errors_total", "Failed broker commands, by operation."),
                &["op"],
            )
            .unwrap(),
            slow_consumer_closes: IntCounter::new(
                "ward_slow_consumer_closes_total",
                "Connections closed with 4409 because they did not read fast enough.",
            )
            .unwrap(),
            rate_limited_frames: IntCounter::new(
                "ward_rate_limited_frames_total",
                "Client frames refused by the rate limit.",
            )
            .unwrap(),
            draining: IntGauge::new("ward_draining", "1 while this pod drains.").unwrap(),
            escalations: IntCounter::new(
                "ward_escalations_total",
                "Messages that passed their acknowledgement deadline unacknowledged.",
            )
            .unwrap(),
            webhook_failures: IntCounter::new(
                "ward_webhook_failures_total",
                "Escalation webhook attempts that failed.",
            )
            .unwrap(),
            registry,
        };
        metrics.register_all();
        metrics
    }

    fn register_all(&self) {
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.connections.clone()),
            Box::new(self.connections_opened.clone()),
            Box::new(self.connections_closed.clone()),
            Box::new(self.rooms.clone()),
            Box::new(self.frames_received.clone()),
            Box::new(self.frames_sent.clone()),
            Box::new(self.messages_published.clone()),
            Box::new(self.delivery_lag.clone()),
            Box::new(self.broker_duration.clone()),
            Box::new(self.broker_up.clone()),
            Box::new(self.broker_errors.clone()),
            Box::new(self.slow_consumer_closes.clone()),
            Box::new(self.rate_limited_frames.clone()),
            Box::new(self.draining.clone()),
            Box::new(self.escalations.clone()),
            Box::new(self.webhook_failures.clone()),
            Box::new(build_info()),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ];
        for collector in collectors {
            // Names are fixed and distinct, so registering cannot collide.
            self.registry.register(collector).expect("metric names are unique");
        }
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let families = self.registry.gather();
        if let Err(err) = TextEncoder::new().encode(&families, &mut out) {
            tracing::warn!(error = %err, "metrics could not be encoded");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `ward_build_info{version}`: always 1, carries the version.
fn build_info() -> IntGaugeVec {
    let info = IntGaugeVec::new(
        Opts::new("ward_build_info", "Build of this pod; the value is always 1."),
        &["version"],
    )
    .unwrap();
    info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    info
}
