//! Configuration errors name the dotted key at fault, and the binary exits
//! with 78 (`EX_CONFIG`) on any of them.

use std::process::Stdio;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use tokio::process::Command;
use ward::config::{Config, ConfigError, EXIT_CONFIG};

/// Defaults with `toml` merged on top, extracted and checked.
fn load(toml: &str) -> Result<Config, ConfigError> {
    let figment = Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(toml));
    Config::from_figment(figment)
}

/// Asserts that `toml` is refused with an error naming `key`.
fn assert_refused(toml: &str, key: &str) {
    let err = load(toml).expect_err(&format!("refused: {toml}"));
    assert_eq!(err.key, key, "{err}");
    assert!(err.to_string().contains(key), "the message names the key: {err}");
}

#[test]
fn an_unknown_key_is_named_with_its_section() {
    assert_refused("[limits]\nmax_frame_byte = 5000", "limits.max_frame_byte");
    assert_refused("colour = \"blue\"", "colour");
    assert_refused("[drain]\ndelay = \"1s\"\n[drain.extra]\nx = 1", "drain.extra");
}

#[test]
fn a_bad_duration_names_its_key() {
    assert_refused("[limits]\nhello_timeout = \"soon\"", "limits.hello_timeout");
    assert_refused("[drain]\ndelay = 5", "drain.delay");
}

#[test]
fn a_value_of_the_wrong_type_names_its_key() {
    assert_refused("[limits]\nmax_frame_bytes = \"abc\"", "limits.max_frame_bytes");
    assert_refused("[auth]\nmode = \"guess\"", "auth.mode");
}

#[test]
fn values_out_of_range_name_their_key() {
    assert_refused("[limits]\nmax_frame_bytes = 10", "limits.max_frame_bytes");
    assert_refused("[history]\nmax_len = 0", "history.max_len");
}

#[test]
fn durations_and_numbers_are_read() {
    let config = load("[limits]\nhello_timeout = \"500ms\"\nmax_frame_bytes = 2048").unwrap();
    assert_eq!(config.limits.hello_timeout, Duration::from_millis(500));
    assert_eq!(config.limits.max_frame_bytes, 2048);
}

#[test]
fn open_mode_on_all_interfaces_is_refused_unless_allowed() {
    assert_refused("listen = \"0.0.0.0:8080\"", "auth.mode");
    let allowed = load("listen = \"0.0.0.0:8080\"\n[auth]\nallow_open = true").unwrap();
    assert!(allowed.auth.allow_open);
    load("listen = \"127.0.0.1:8080\"").expect("open mode on loopback is fine");
}

/// Runs the `ward` binary with extra environment and arguments; returns its
/// exit code and standard error. Fails if it does not exit within 20 s.
async fn run_ward(env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ward"));
    command.env_remove("WARD_CONFIG").env("WARD_LISTEN", "127.0.0.1:0");
    command.envs(env.iter().copied()).args(args);
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    command.kill_on_drop(true);
    let child = command.spawn().expect("the ward binary starts");
    let output = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("ward exits on a configuration error instead of serving")
        .expect("ward's output is read");
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test]
async fn the_binary_exits_78_on_a_bad_environment_value() {
    let (code, stderr) = run_ward(&[("WARD_LIMITS__MAX_FRAME_BYTES", "abc")], &[]).await;
    assert_eq!(code, Some(EXIT_CONFIG), "{stderr}");
    assert!(stderr.contains("limits.max_frame_bytes"), "{stderr}");
}

#[tokio::test]
async fn the_binary_exits_78_on_an_unknown_environment_key() {
    let (code, stderr) = run_ward(&[("WARD_LIMITS__MAX_FRAME_BYTE", "5000")], &[]).await;
    assert_eq!(code, Some(EXIT_CONFIG), "{stderr}");
    assert!(stderr.contains("limits.max_frame_byte"), "{stderr}");
}

#[tokio::test]
async fn the_binary_exits_78_on_a_missing_config_file() {
    let (code, stderr) = run_ward(&[], &["--config", "/nonexistent/ward.toml"]).await;
    assert_eq!(code, Some(EXIT_CONFIG), "{stderr}");
}
