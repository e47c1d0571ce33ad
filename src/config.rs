//! Ward's configuration: built-in defaults, then an optional TOML file, then
//! `WARD_*` environment variables (`__` separates levels), merged by figment.
//!
//! Every problem names the key in its dotted form so an operator can find it;
//! the binary exits with code 78 (`EX_CONFIG`) on any of them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Exit code for a configuration error (`EX_CONFIG` from sysexits.h).
pub const EXIT_CONFIG: i32 = 78;

/// The whole configuration of one pod.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to serve HTTP and WebSockets on. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// This pod's id in `welcome.node`, logs and presence. Default: host name.
    pub node_id: String,
    /// Redis connection; without a URL the in-process broker serves one pod.
    pub redis: RedisConfig,
    /// Presence of users in rooms.
    pub presence: PresenceConfig,
    /// Message history kept per room.
    pub history: HistoryConfig,
    /// How clients prove who they are.
    pub auth: AuthConfig,
    /// Browser origins allowed to upgrade; empty means "same host", `["*"]` any.
    pub allowed_origins: Vec<String>,
    /// The publish API for hospital systems.
    pub api: ApiConfig,
    /// Limits that protect one pod from one client.
    pub limits: LimitsConfig,
    /// Behaviour after SIGTERM.
    pub drain: DrainConfig,
    /// Log output.
    pub log: LogConfig,
    /// Follow-up of messages that must be acknowledged.
    pub escalation: EscalationConfig,
    /// Audit trail of who did what to which message.
    pub audit: AuditConfig,
}

/// Connection to Redis.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` URL; unset means the in-process broker.
    pub url: Option<String>,
    /// Prefix of every key and channel, so deployments can share a Redis.
    pub prefix: String,
    /// Redis Cluster: hash-tagged keys and sharded pub/sub.
    pub cluster: bool,
}

/// Presence settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// How long a vanished pod's users stay present. Default 30 s.
    #[serde(with = "humantime_serde_compat")]
    pub ttl: Duration,
}

/// History settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Messages kept per room. Default 1000.
    pub max_len: usize,
    /// Messages older than this are removed from history. Default: kept.
    #[serde(with = "humantime_serde_compat::option")]
    pub max_age: Option<Duration>,
}

/// Authentication mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Development: `hello` names the user, nothing is checked.
    Open,
    /// Signed JSON Web Tokens.
    Jwt,
}

/// Authentication settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `open` or `jwt`. Default `open`.
    pub mode: AuthMode,
    /// Permit open mode on a non-loopback `listen`. Default false.
    pub allow_open: bool,
    /// Token verification keys and claims.
    pub jwt: JwtConfig,
}

/// JWT verification settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// HS256 shared secret.
    pub secret: Option<String>,
    /// PEM public key (RS256 or ES256) or a JWKS file.
    pub public_key_file: Option<PathBuf>,
    /// Required `iss` claim, when set.
    pub issuer: Option<String>,
    /// Required `aud` claim, when set.
    pub audience: Option<String>,
}

/// Publish API settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Bearer tokens accepted by the publish API; unset turns the API off.
    pub tokens: Option<Vec<String>>,
}

/// Per-connection limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest client frame in bytes; larger ones close with 1009. Default 65536.
    pub max_frame_bytes: usize,
    /// Longest message text in Unicode scalar values. Default 4000.
    pub max_text_chars: usize,
    /// Sustained client frames per second. Default 20.
    pub messages_per_sec: f64,
    /// Client frames allowed in a burst. Default 40.
    pub burst: f64,
    /// Frames queued to one connection before it is closed with 4409. Default 1024.
    pub outbound_queue: usize,
    /// Time allowed before `hello`; then close 4408. Default 10 s.
    #[serde(with = "humantime_serde_compat")]
    pub hello_timeout: Duration,
    /// Rooms one connection may be in at once. Default 100.
    pub max_rooms_per_connection: usize,
    /// Open connections of one user on one pod; more close with 4429. Default 20.
    pub max_connections_per_user: usize,
    /// Shortest interval between two typing events of a connection in a room.
    /// Default 1 s.
    #[serde(with = "humantime_serde_compat")]
    pub typing_interval: Duration,
}

/// Drain settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrainConfig {
    /// Time not-ready before connections are closed. Default 5 s.
    #[serde(with = "humantime_serde_compat")]
    pub delay: Duration,
    /// Window over which closes with 1012 are spread. Default 10 s.
    #[serde(with = "humantime_serde_compat")]
    pub spread: Duration,
    /// The whole drain ends by then. Default 30 s.
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
}

/// Log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Pretty on a terminal, JSON otherwise.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Pretty,
}

/// Log settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `auto`, `json` or `pretty`. Default `auto`.
    pub format: LogFormat,
}

/// Escalation of unacknowledged messages.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EscalationConfig {
    /// Deadline of a `needs_ack` message without `ack_deadline`. Default 5 min.
    #[serde(with = "humantime_serde_compat")]
    pub default_deadline: Duration,
    /// POST target for overdue messages.
    pub webhook_url: Option<String>,
    /// HMAC-SHA256 key for `X-Ward-Signature`.
    pub webhook_secret: Option<String>,
}

/// Audit trail settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Write audit events (never message text). Default true.
    pub enabled: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            node_id: default_node_id(),
            redis: RedisConfig::default(),
            presence: PresenceConfig::default(),
            history: HistoryConfig::default(),
            auth: AuthConfig::default(),
            allowed_origins: Vec::new(),
            api: ApiConfig::default(),
            limits: LimitsConfig::default(),
            drain: DrainConfig::default(),
            log: LogConfig::default(),
            escalation: EscalationConfig::default(),
            audit: AuditConfig::default(),
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self { url: None, prefix: "ward".into(), cluster: false }
    }
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self { ttl: Duration::from_secs(30) }
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self { max_len: 1000, max_age: None }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self { mode: AuthMode::Open, allow_open: false, jwt: JwtConfig::default() }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 65_536,
            max_text_chars: 4000,
            messages_per_sec: 20.0,
            burst: 40.0,
            outbound_queue: 1024,
            hello_timeout: Duration::from_secs(10),
            max_rooms_per_connection: 100,
            max_connections_per_user: 20,
            typing_interval: Duration::from_secs(1),
        }
    }
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            delay: Duration::from_secs(5),
            spread: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Auto }
    }
}

impl Default for EscalationConfig {
    fn default() -> Self {
        Self { default_deadline: Duration::from_secs(300), webhook_url: None, webhook_secret: None }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// A configuration problem, naming the key at fault.
#[derive(Debug, thiserror::Error)]
#[error("configuration key `{key}`: {problem}")]
pub struct ConfigError {
    /// The dotted key, such as `limits.max_frame_bytes`.
    pub key: String,
    /// What is wrong with it and how to fix it.
    pub problem: String,
}

impl Config {
    /// Loads defaults, then `file` (or `WARD_CONFIG`), then `WARD_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let env_file = std::env::var_os("WARD_CONFIG").map(PathBuf::from);
        let file = file.map(Path::to_path_buf).or(env_file);

        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &file {
            if !path.is_file() {
                return Err(ConfigError {
                    key: "config".into(),
                    problem: format!("file {} does not exist", path.display()),
                });
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(ward_env());

        Self::from_figment(figment)
    }

    /// Extracts and checks a configuration from any figment (tests use this).
    pub fn from_figment(figment: Figment) -> Result<Config, ConfigError> {
        let config: Config = figment.extract().map_err(figment_error)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the rules that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, problem: &str| {
            Err(ConfigError { key: key.into(), problem: problem.into() })
        };

        if self.auth.mode == AuthMode::Open
            && !self.listen.ip().is_loopback()
            && !self.auth.allow_open
        {
            return bad(
                "auth.mode",
                "open mode lets anyone in; on a non-loopback `listen` use `jwt`, \
                 or set `auth.allow_open = true` for a closed test network",
            );
        }
        if self.auth.mode == AuthMode::Jwt
            && self.auth.jwt.secret.is_none()
            && self.auth.jwt.public_key_file.is_none()
        {
            return bad(
                "auth.jwt.secret",
                "jwt mode needs `auth.jwt.secret` or `auth.jwt.public_key_file`",
            );
        }
        if self.node_id.is_empty() || !crate::protocol::is_valid_name(&self.node_id) {
            return bad("node_id", "use 1 to 64 characters of A-Z a-z 0-9 . _ : -");
        }
        if self.history.max_len == 0 {
            return bad("history.max_len", "must be at least 1");
        }
        if self.limits.max_frame_bytes < 1024 {
            return bad("limits.max_frame_bytes", "must be at least 1024");
        }
        if self.limits.max_text_chars == 0 {
            return bad("limits.max_text_chars", "must be at least 1");
        }
        if self.limits.max_rooms_per_connection == 0 {
            return bad("limits.max_rooms_per_connection", "must be at least 1");
        }
        if self.limits.max_connections_per_user == 0 {
            return bad("limits.max_connections_per_user", "must be at least 1");
        }
        if self.limits.outbound_queue < 8 {
            return bad("limits.outbound_queue", "must be at least 8");
        }
        if self.limits.messages_per_sec.is_nan() || self.limits.messages_per_sec <= 0.0 {
            return bad("limits.messages_per_sec", "must be greater than 0");
        }
        if self.limits.burst < 1.0 {
            return bad("limits.burst", "must be at least 1");
        }
        if self.limits.max_frame_bytes > 16 * 1024 * 1024 {
            return bad("limits.max_frame_bytes", "must be at most 16777216 (16 MiB)");
        }
        if self.limits.hello_timeout < Duration::from_millis(100) {
            return bad("limits.hello_timeout", "must be at least 100ms");
        }
        if self.escalation.default_deadline < Duration::from_secs(1) {
            return bad("escalation.default_deadline", "must be at least 1s");
        }
        if self.history.max_age.is_some_and(|age| age < Duration::from_secs(1)) {
            return bad("history.max_age", "must be at least 1s, or unset to keep messages");
        }
        if let Some(url) = &self.escalation.webhook_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return bad("escalation.webhook_url", "must be an http:// or https:// URL");
        }
        if self.presence.ttl < std::time::Duration::from_secs(2) {
            return bad("presence.ttl", "must be at least 2s");
        }
        if self.drain.timeout < self.drain.delay + self.drain.spread {
            return bad("drain.timeout", "must be at least `drain.delay` + `drain.spread`");
        }
        if let Some(url) = &self.redis.url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            return bad("redis.url", "must start with redis:// or rediss://");
        }
        Ok(())
    }
}

/// Top-level keys that `WARD_*` variables may set.
const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "node_id",
    "redis",
    "presence",
    "history",
    "auth",
    "allowed_origins",
    "api",
    "limits",
    "drain",
    "log",
    "escalation",
    "audit",
];

/// The `WARD_*` variables meant for Ward: those naming a key, and those
/// that look like a misspelt key (`WARD_REDIS_URL` for `WARD_REDIS__URL`),
/// which then stop start-up as unknown keys. Others are left to their
/// owners: the service links Kubernetes adds for a Service whose name starts
/// with `ward` (`WARD_SERVICE_HOST`, `WARD_REDIS_PORT`), or a tool's own
/// setting such as `WARD_BIN`.
fn ward_env() -> Env {
    Env::prefixed("WARD_").split("__").filter(|key| is_meant_for_ward(key.as_str()))
}

/// Whether a variable (without `WARD_`) names a Ward key or a near miss.
fn is_meant_for_ward(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    let top = key.split('.').next().unwrap_or_default();
    if TOP_LEVEL_KEYS.contains(&top) {
        return true;
    }
    let service_link = key.contains("service_host")
        || key.contains("service_port")
        || key.ends_with("_port")
        || key.contains("_port_");
    let near_miss = TOP_LEVEL_KEYS.iter().any(|known| key.starts_with(&format!("{known}_")));
    near_miss && !service_link
}

/// Turns figment's error into one that names the dotted key.
fn figment_error(err: figment::Error) -> ConfigError {
    let mut key = err.path.join(".");
    if let figment::error::Kind::UnknownField(field, _) = &err.kind {
        if !key.ends_with(field.as_str()) {
            key = if key.is_empty() { field.clone() } else { format!("{key}.{field}") };
        }
        return ConfigError { key, problem: "unknown key; check its spelling".into() };
    }
    if key.is_empty() {
        key = "config".into();
    }
    ConfigError { key, problem: err.kind.to_string() }
}

/// The host name, or `ward` when it cannot be read.
fn default_node_id() -> String {
    let raw = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_default();
    let name: String =
        raw.trim().chars().filter(|c| crate::protocol::is_name_char(*c)).take(64).collect();
    if name.is_empty() { "ward".into() } else { name }
}

/// Durations written as strings such as `"500ms"` or `"30s"`.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*value).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("`{text}` is not a duration like \"30s\": {e}"))
        })
    }

    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match value {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            let text = Option::<String>::deserialize(d)?;
            text.map(|t| {
                humantime::parse_duration(&t).map_err(|e| {
                    serde::de::Error::custom(format!("`{t}` is not a duration like \"30s\": {e}"))
                })
            })
            .transpose()
        }
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    fn figment_with_env(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut result = None;
        figment::Jail::expect_with(|jail| {
            for (name, value) in vars {
                jail.set_env(name, value);
            }
            let figment = Figment::from(Serialized::defaults(Config::default())).merge(ward_env());
            result = Some(Config::from_figment(figment));
            Ok(())
        });
        result.expect("jail ran")
    }

    #[test]
    fn env_variables_set_nested_keys() {
        let config = figment_with_env(&[
            ("WARD_LISTEN", "127.0.0.1:9000"),
            ("WARD_LIMITS__MAX_FRAME_BYTES", "2048"),
            ("WARD_DRAIN__DELAY", "1s"),
        ])
        .unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.limits.max_frame_bytes, 2048);
        assert_eq!(config.drain.delay, Duration::from_secs(1));
    }

    #[test]
    fn kubernetes_service_variables_are_ignored() {
        let config = figment_with_env(&[
            ("WARD_SERVICE_HOST", "10.0.0.1"),
            ("WARD_SERVICE_PORT_HTTP", "8080"),
            ("WARD_PORT", "tcp://10.0.0.1:8080"),
            ("WARD_PORT_8080_TCP_ADDR", "10.0.0.1"),
            ("WARD_REDIS_SERVICE_HOST", "10.0.0.2"),
            ("WARD_REDIS_PORT", "tcp://10.0.0.2:6379"),
        ]);
        assert!(config.is_ok(), "{config:?}");
    }

    #[test]
    fn variables_of_other_tools_are_left_alone() {
        let config =
            figment_with_env(&[("WARD_BIN", "target/release/ward"), ("WARD_E2E_URL", "x")]);
        assert!(config.is_ok(), "{config:?}");
    }

    #[test]
    fn a_misspelt_variable_stops_start_up() {
        let err = figment_with_env(&[("WARD_REDIS_URL", "redis://x")]).unwrap_err();
        assert_eq!(err.key, "redis_url");
        let err = figment_with_env(&[("WARD_AUTH_MODE", "jwt")]).unwrap_err();
        assert_eq!(err.key, "auth_mode");
    }

    #[test]
    fn errors_name_the_dotted_key() {
        let err = figment_with_env(&[("WARD_LIMITS__MAX_FRAME_BYTES", "abc")]).unwrap_err();
        assert_eq!(err.key, "limits.max_frame_bytes");
        let err = figment_with_env(&[("WARD_LIMITS__NOPE", "1")]).unwrap_err();
        assert_eq!(err.key, "limits.nope");
        let err = figment_with_env(&[("WARD_DRAIN__DELAY", "soon")]).unwrap_err();
        assert_eq!(err.key, "drain.delay");
    }

    #[test]
    fn open_mode_is_refused_off_loopback() {
        let err = figment_with_env(&[("WARD_LISTEN", "0.0.0.0:8080")]).unwrap_err();
        assert_eq!(err.key, "auth.mode");
        let allowed =
            figment_with_env(&[("WARD_LISTEN", "0.0.0.0:8080"), ("WARD_AUTH__ALLOW_OPEN", "true")]);
        assert!(allowed.is_ok());
    }
}
