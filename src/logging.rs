//! Structured logs with tracing: JSON for machines, pretty for terminals.
//! The level comes from `RUST_LOG` (default `info`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Libraries that log whole frames at their debug and trace levels; they
/// are held at `info` whatever `RUST_LOG` says, so no message text or token
/// reaches the logs.
const PAYLOAD_LOGGERS: &[&str] =
    &["tungstenite", "tokio_tungstenite", "hyper", "h2", "reqwest", "rustls", "redis"];

/// Installs the global subscriber; call once, before anything logs.
pub fn init(format: LogFormat) {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    for target in PAYLOAD_LOGGERS {
        if let Ok(directive) = format!("{target}=info").parse() {
            filter = filter.add_directive(directive);
        }
    }
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    if json {
        builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init();
    } else {
        builder.init();
    }
}
