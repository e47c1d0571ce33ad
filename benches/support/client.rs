//! The client worker: one process with a single-threaded runtime that opens
//! its share of the connections, says `hello`, joins a room, then reads
//! frames and, when told, sends messages at a fixed rate.
//!
//! It talks to the coordinating process by lines: it prints `ready ...`,
//! then answers each `run ...` command with a `result ...` line and each
//! `stats` with a `stats ...` line; `quit` (or the end of its input) closes
//! the connections and ends it.
//!
//! Reading is kept lean: a `new_message` frame is recognised by its prefix
//! and its send time found by a substring search, without JSON parsing.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncBufReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::args::Args;
use super::histogram::Histogram;
use super::layout::Layout;

type Socket = WebSocketStream<TcpStream>;
type Sink = SplitSink<Socket, Message>;

/// Handshakes in flight at once per worker, so the listen backlog holds.
const CONNECTING: usize = 64;
/// Time allowed from connect to `room_joined`.
const OPEN_DEADLINE: Duration = Duration::from_secs(60);
/// A delivery slower than this counts as slow in the per-second tally.
const SLOW_US: u64 = 20_000;
/// Prefix of the frames the benchmark measures.
const NEW_MESSAGE: &str = r#"{"type":"new_message","#;
/// What precedes the send time inside a `new_message` frame.
const TEXT_MARK: &str = r#""text":"t="#;

/// Options a worker takes (the coordinating process sets them all).
pub const OPTIONS: &[&str] =
    &["addrs", "src", "first", "count", "text-bytes", "total", "pods", "rooms", "senders-per-room"];

/// What one worker was asked to do.
struct Plan {
    /// Pod addresses; connection `g` goes to pod `g % pods`.
    addrs: Vec<SocketAddr>,
    /// Source address of this worker's sockets.
    src: Ipv4Addr,
    /// Global index of the first connection, and how many.
    first: u64,
    count: u64,
    /// Room layout shared by all workers.
    layout: Layout,
    /// Bytes of text per message.
    text_bytes: usize,
}

/// What the worker counted during one run (or since it started).
#[derive(Default)]
struct Stats {
    /// Measured window, in µs since the epoch: `[start, end)`.
    window: Option<(u64, u64)>,
    histogram: Option<Histogram>,
    /// `new_message` frames whose send time is in the window.
    delivered: u64,
    /// `new_message` frames received while the window was open.
    received_in_window: u64,
    /// Other `new_message` frames (warm-up, stragglers).
    outside: u64,
    acks: u64,
    /// Text frames received since the worker started (any type).
    frames: u64,
    /// Per second of the window (by receive time): deliveries, and those
    /// slower than [`SLOW_US`].
    seconds: BTreeMap<u64, (u64, u64)>,
    errors: BTreeMap<String, u64>,
    closes: BTreeMap<String, u64>,
}

/// Runs a worker with the arguments after `worker`.
pub fn main(args: &Args) -> Result<(), String> {
    let plan = Plan {
        addrs: args.addrs("addrs")?,
        src: args.parse("src", Ipv4Addr::LOCALHOST)?,
        first: args.parse("first", 0)?,
        count: args.parse("count", 0)?,
        layout: Layout::from_args(args)?,
        text_bytes: args.parse("text-bytes", 64)?,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, work(Rc::new(plan)))
}

async fn work(plan: Rc<Plan>) -> Result<(), String> {
    let stats = Rc::new(RefCell::new(Stats::default()));
    let (mut senders, idle, failures) = open_all(&plan, &stats).await;
    let joined = senders.len() + idle.len();
    println!("ready joined={joined} failed={}", tally(&failures));

    let mut input = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = input.next_line().await {
        let mut words = line.split(' ');
        match words.next() {
            Some("run") => {
                let run = Args::from_words(words.map(String::from))?;
                let report = run_phase(&plan, &mut senders, &stats, &run).await?;
                println!("result {report}");
            }
            Some("stats") => {
                let stats = stats.borrow();
                println!("stats frames={} closes={}", stats.frames, tally(&stats.closes));
            }
            _ => break,
        }
    }
    say_goodbye(senders.into_iter().map(|(_, s)| s).chain(idle)).await;
    Ok(())
}

/// Opens every connection of this worker; returns the senders' sinks with
/// their connection index, the other sinks, and the failures by kind.
async fn open_all(
    plan: &Rc<Plan>,
    stats: &Rc<RefCell<Stats>>,
) -> (Vec<(u64, Sink)>, Vec<Sink>, BTreeMap<String, u64>) {
    let gate = Rc::new(Semaphore::new(CONNECTING));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for g in plan.first..plan.first + plan.count {
        let (plan, gate, tx) = (plan.clone(), gate.clone(), tx.clone());
        tokio::task::spawn_local(async move {
            let Ok(_permit) = gate.acquire().await else { return };
            let opened = timeout(OPEN_DEADLINE, open(&plan, g)).await;
            let _ = tx.send((g, opened.unwrap_or_else(|_| Err("open_timeout".into()))));
        });
    }
    drop(tx);

    let (mut senders, mut idle, mut failures) = (Vec::new(), Vec::new(), BTreeMap::new());
    while let Some((g, opened)) = rx.recv().await {
        match opened {
            Ok(socket) => {
                let (sink, stream) = socket.split();
                tokio::task::spawn_local(read_loop(stream, stats.clone()));
                if plan.layout.is_sender(g) {
                    senders.push((g, sink));
                } else {
                    idle.push(sink);
                }
            }
            Err(kind) => *failures.entry(kind).or_insert(0) += 1,
        }
    }
    senders.sort_by_key(|(g, _)| *g);
    (senders, idle, failures)
}

/// Connects connection `g` from the worker's source address, says hello
/// and joins its room.
async fn open(plan: &Plan, g: u64) -> Result<Socket, String> {
    let addr = plan.addrs[plan.layout.pod(g) as usize];
    let socket = TcpSocket::new_v4().map_err(|e| kind("socket", &e))?;
    socket.bind(SocketAddr::from((plan.src, 0))).map_err(|e| kind("bind", &e))?;
    let stream = socket.connect(addr).await.map_err(|e| kind("connect", &e))?;
    stream.set_nodelay(true).map_err(|e| kind("nodelay", &e))?;

    let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
    let url = format!("ws://{addr}/ws");
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .map_err(|_| "handshake".to_string())?;

    let hello = format!(r#"{{"type":"hello","user":"u{g}"}}"#);
    ws.send(Message::text(hello)).await.map_err(|_| "send_hello".to_string())?;
    wait_for(&mut ws, r#"{"type":"welcome""#).await?;
    let room = plan.layout.room(g);
    let join = format!(r#"{{"type":"join_room","room":"bench-{room}"}}"#);
    ws.send(Message::text(join)).await.map_err(|_| "send_join".to_string())?;
    wait_for(&mut ws, r#"{"type":"room_joined""#).await?;
    Ok(ws)
}

/// Reads until a text frame with this prefix; an `error` or a close fails.
async fn wait_for(ws: &mut Socket, prefix: &str) -> Result<(), String> {
    while let Some(frame) = ws.next().await {
        match frame {
            Ok(Message::Text(text)) if text.starts_with(prefix) => return Ok(()),
            Ok(Message::Text(text)) if text.starts_with(r#"{"type":"error""#) => {
                return Err(format!("error_{}", error_code(&text)));
            }
            Ok(Message::Close(frame)) => {
                let code = frame.map(|f| u16::from(f.code)).unwrap_or(0);
                return Err(format!("closed_{code}"));
            }
            Ok(_) => {}
            Err(_) => return Err("read".into()),
        }
    }
    Err("eof".into())
}

fn kind(step: &str, err: &std::io::Error) -> String {
    format!("{step}_{:?}", err.kind())
}

/// Reads one connection's frames until it ends, counting what it measures.
async fn read_loop(mut stream: SplitStream<Socket>, stats: Rc<RefCell<Stats>>) {
    let mut close = "eof".to_string();
    while let Some(frame) = stream.next().await {
        match frame {
            Ok(Message::Text(text)) => on_text(&text, &mut stats.borrow_mut()),
            Ok(Message::Close(frame)) => {
                close = frame.map(|f| u16::from(f.code).to_string()).unwrap_or("none".into());
            }
            Ok(_) => {}
            Err(_) => {
                if close == "eof" {
                    close = "read_error".into();
                }
                break;
            }
        }
    }
    *stats.borrow_mut().closes.entry(close).or_insert(0) += 1;
}

fn on_text(text: &str, stats: &mut Stats) {
    stats.frames += 1;
    if let Some(rest) = text.strip_prefix(NEW_MESSAGE) {
        let now = now_us();
        let sent = sent_time(rest);
        let Some((start, end)) = stats.window else {
            stats.outside += 1;
            return;
        };
        if (start..end).contains(&now) {
            stats.received_in_window += 1;
        }
        match sent {
            Some(sent) if (start..end).contains(&sent) => {
                stats.delivered += 1;
                let second = stats.seconds.entry(now.saturating_sub(start) / 1_000_000);
                let tally = second.or_insert((0, 0));
                tally.0 += 1;
                tally.1 += u64::from(now.saturating_sub(sent) > SLOW_US);
                if let Some(histogram) = &mut stats.histogram {
                    histogram.record(now.saturating_sub(sent));
                }
            }
            _ => stats.outside += 1,
        }
    } else if text.starts_with(r#"{"type":"ack""#) {
        stats.acks += 1;
    } else if text.starts_with(r#"{"type":"error""#) {
        *stats.errors.entry(error_code(text).to_string()).or_insert(0) += 1;
    }
}

/// The send time a benchmark message carries in its text (`t=<µs>`).
fn sent_time(frame: &str) -> Option<u64> {
    let at = frame.find(TEXT_MARK)? + TEXT_MARK.len();
    let digits = &frame[at..];
    let end = digits.find(|c: char| !c.is_ascii_digit())?;
    digits[..end].parse().ok()
}

fn error_code(frame: &str) -> &str {
    let Some((_, rest)) = frame.split_once(r#""code":""#) else { return "unknown" };
    rest.split('"').next().unwrap_or("unknown")
}

/// Microseconds since the Unix epoch; all processes here share the clock.
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Sends at `rate` messages/s from `start` for warm-up plus window, waits
/// for stragglers during the grace time, and reports.
async fn run_phase(
    plan: &Plan,
    senders: &mut [(u64, Sink)],
    stats: &Rc<RefCell<Stats>>,
    run: &Args,
) -> Result<String, String> {
    let rate: f64 = run.parse("rate", 0.0)?;
    let start: u64 = run.parse("start", now_us())?;
    let warmup: u64 = run.parse::<u64>("warmup", 0)? * 1000;
    let window: u64 = run.parse::<u64>("duration", 1000)? * 1000;
    let grace: u64 = run.parse::<u64>("grace", 3000)? * 1000;
    {
        let mut stats = stats.borrow_mut();
        let closes = std::mem::take(&mut stats.closes);
        *stats = Stats {
            window: Some((start + warmup, start + warmup + window)),
            histogram: Some(Histogram::new()),
            frames: stats.frames,
            closes,
            ..Stats::default()
        };
    }

    let mut sent = Sent::default();
    if rate > 0.0 && !senders.is_empty() {
        send_at_rate(
            plan,
            senders,
            rate,
            start,
            (start + warmup, start + warmup + window),
            &mut sent,
        )
        .await;
    }
    sleep_until(start + warmup + window + grace).await;
    Ok(report(&stats.borrow(), &sent))
}

/// What the sender did during one run.
#[derive(Default)]
struct Sent {
    total: u64,
    in_window: u64,
    /// Deliveries the messages sent in the window should cause.
    expected: u64,
    failed: u64,
}

/// Sends round-robin over the senders so that `rate × elapsed` messages
/// have gone out at every millisecond tick.
async fn send_at_rate(
    plan: &Plan,
    senders: &mut [(u64, Sink)],
    rate: f64,
    start: u64,
    (from, until): (u64, u64),
    sent: &mut Sent,
) {
    let padding = "x".repeat(plan.text_bytes.saturating_sub(20));
    sleep_until(start).await;
    let mut next = 0;
    loop {
        let now = now_us();
        if now >= until {
            return;
        }
        let due = ((now - start) as f64 * rate / 1e6) as u64;
        while sent.total < due {
            let (g, sink) = &mut senders[next % senders.len()];
            next += 1;
            let at = now_us();
            let room = plan.layout.room(*g);
            let text = format!(
                r#"{{"type":"send_message","room":"bench-{room}","text":"t={at} {padding}"}}"#
            );
            sent.total += 1;
            if sink.send(Message::text(text)).await.is_err() {
                sent.failed += 1;
                continue;
            }
            if (from..until).contains(&at) {
                sent.in_window += 1;
                sent.expected += plan.layout.room_size(room);
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn sleep_until(epoch_us: u64) {
    let wait = epoch_us.saturating_sub(now_us());
    tokio::time::sleep(Duration::from_micros(wait)).await;
}

/// The `result` line: counts, the histogram, errors and closes.
fn report(stats: &Stats, sent: &Sent) -> String {
    let histogram = stats.histogram.as_ref().map(Histogram::encode).unwrap_or_default();
    format!(
        "sent={} sent_window={} expected={} send_failed={} delivered={} received_window={} \
         outside={} acks={} errors={} hist={histogram} closes={} seconds={}",
        sent.total,
        sent.in_window,
        sent.expected,
        sent.failed,
        stats.delivered,
        stats.received_in_window,
        stats.outside,
        stats.acks,
        tally(&stats.errors),
        tally(&stats.closes),
        stats
            .seconds
            .iter()
            .map(|(s, (n, slow))| format!("{s}:{n}:{slow}"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// `kind:count,kind:count` or `-` when empty.
fn tally(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "-".into();
    }
    counts.iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(",")
}

/// Closes every connection politely, giving up after two seconds.
async fn say_goodbye(sinks: impl Iterator<Item = Sink>) {
    let closing = futures_util::future::join_all(sinks.map(|mut sink| async move {
        let _ = sink.close().await;
    }));
    let _ = timeout(Duration::from_secs(2), closing).await;
}
