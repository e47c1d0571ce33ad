//! Ward: real-time messaging for hospital staff.
//!
//! A frame travels socket → [`session`] → [`broker`] (memory or Redis) →
//! [`rooms`] (local fan-out through each connection's [`outbox`]) → socket.
//!
//! - [`config`]: layered configuration (defaults, TOML, `WARD_*`).
//! - [`protocol`]: client and server frames, error and close codes; no I/O.
//! - [`http`]: router, WebSocket upgrade, probes, metrics, browser client.
//! - [`api`]: the publish API for hospital systems.
//! - [`escalation`]: `ack_overdue` and the webhook for unacknowledged messages.
//! - [`audit`]: the audit trail of who did what to which message.
//! - [`session`]: one connection: hello, limits, frames, writes.
//! - [`auth`]: identities and room access; [`jwt`] verifies tokens.
//! - [`expiry`]: warns and closes connections whose token runs out.
//! - [`rooms`]: who is in which room on this pod; fan-out.
//! - [`outbox`]: a connection's bounded outbound queue.
//! - [`broker`]: the seam to storage, presence and pub/sub.
//! - [`pod`]: state shared by a pod's connections; pings and drain.
//! - [`metrics`]: Prometheus metrics.
//! - [`server`]: start, serve, drain.
//! - [`logging`]: tracing subscriber set-up.

pub mod api;
pub mod audit;
pub mod auth;
pub mod broker;
pub mod config;
pub mod escalation;
pub mod expiry;
pub mod http;
pub mod jwt;
pub mod logging;
pub mod metrics;
pub mod outbox;
pub mod pod;
pub mod protocol;
pub mod rooms;
pub mod server;
pub mod session;
