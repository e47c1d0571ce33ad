//! The `ward` binary: read the configuration, start logging, serve, and
//! drain on SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use ward::config::{Config, EXIT_CONFIG};
use ward::server::{Server, StartError};

const USAGE: &str = "usage: ward [--config FILE]\n\
    Configuration: defaults, then FILE (or WARD_CONFIG), then WARD_* variables.\n\
    See docs/configuration.md.";

#[tokio::main]
async fn main() -> ExitCode {
    let config = match parse_args()
        .and_then(|file| Config::load(file.as_deref()).map_err(|e| e.to_string()))
    {
        Ok(config) => config,
        Err(problem) => {
            eprintln!("ward: {problem}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    ward::logging::init(config.log.format);

    let server = match Server::start(config).await {
        Ok(server) => server,
        Err(StartError::Config(problem)) => {
            tracing::error!(error = %problem, "cannot start");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
        Err(err) => {
            tracing::error!(error = %err, "cannot start");
            return ExitCode::FAILURE;
        }
    };

    let signal = stop_signal().await;
    tracing::info!(signal, "stop requested; draining (a second signal stops at once)");
    tokio::select! {
        drained = server.drain() => {
            if drained {
                tracing::info!("drained; bye");
            }
            ExitCode::SUCCESS
        }
        signal = stop_signal() => {
            tracing::warn!(signal, "second stop signal; stopping without finishing the drain");
            ExitCode::from(130)
        }
    }
}

/// Reads `--config FILE`; `--help` and `--version` print and exit.
fn parse_args() -> Result<Option<PathBuf>, String> {
    let mut args = std::env::args().skip(1);
    let mut file = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => file = Some(args.next().ok_or("--config needs a file")?.into()),
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--version" | "-V" => {
                println!("ward {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    Ok(file)
}

/// Waits for SIGTERM or SIGINT and names it.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("signal handlers could not be installed; stopping");
        return "none";
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
