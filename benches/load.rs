//! Ward's load benchmark. It starts the pods (and Redis) itself, opens many
//! WebSocket connections from client worker processes, and prints figures.
//!
//! ```text
//! cargo bench --bench load -- idle-memory --connections 19000 --rooms 380
//! cargo bench --bench load -- throughput --rooms 100 --members 100 --rate 800 --duration 20
//! cargo bench --bench load -- throughput --pods 2 --redis --rooms 100 --members 100 --rate 800
//! cargo bench --bench load -- peak --rooms 100 --members 100 --from 1000 --factor 1.25
//! ```
//!
//! Run without a scenario for every option. See docs/benchmarks.md for results.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use support::args::Args;
use support::client::now_us;
use support::histogram::Histogram;
use support::layout::Layout;
use support::procs::{self, Owned, Pod, Redis, Worker, field, number};

const USAGE: &str = "\
usage: cargo bench --bench load -- <scenario> [options]

scenarios:
  idle-memory   connections that say hello, join a room and idle; prints pod
                RSS per connection
  throughput    senders at a fixed aggregate rate; prints deliveries/s and
                send-to-receive latency
  peak          throughput steps of growing rate until one is not sustained

options (all scenarios):
  --pods N             pods to start (default 1, or as many as the open files
                       limit needs; throughput over 2 or more needs --redis)
  --redis              start redis-server and point the pods at it
  --url U,U            use running pods (ws://host:port/ws) instead of starting them
  --ward-bin PATH      pod binary (default: the one cargo built for this bench)
  --clients N          client worker processes (default: enough for the file limit, at least 2)
  --rooms R            rooms (default: connections / 50)
idle-memory:
  --connections N      connections in all (default 10000)
  --idle S             seconds to idle before the second reading (default 20)
throughput and peak:
  --members M          members per room; connections = rooms x members (default 100)
  --senders-per-room K members of each room that send (default: all)
  --text-bytes B       bytes of message text (default 64)
  --warmup S           seconds sent but not measured (default 3)
  --grace S            seconds to wait for late deliveries (default 3)
throughput:
  --rate X             messages/s in all (default 800)
  --duration S         measured seconds (default 20, at most 600)
peak:
  --from X             first rate in messages/s (default 1000)
  --factor F           rate growth per step (default 1.25)
  --steps N            most steps (default 10)
  --step-duration S    measured seconds per step (default 10, at most 120)
  --max-p99 MS         a step whose p99 exceeds this is not sustained (default 1000)";

const COMMON: &[&str] = &["pods", "redis", "url", "ward-bin", "clients", "rooms"];
const IDLE: &[&str] = &["connections", "idle"];
const TRAFFIC: &[&str] = &["members", "senders-per-room", "text-bytes", "warmup", "grace"];
const THROUGHPUT: &[&str] = &["rate", "duration"];
const PEAK: &[&str] = &["from", "factor", "steps", "step-duration", "max-p99"];

/// Files a process keeps open beside its sockets (listener, logs, ...).
const SPARE_FILES: u64 = 200;

fn main() -> ExitCode {
    let mut words = std::env::args().skip(1).filter(|w| w != "--bench");
    let scenario = words.next().unwrap_or_default();
    let result = Args::from_words(words).and_then(|args| match scenario.as_str() {
        "worker" => {
            args.check(support::client::OPTIONS).and_then(|()| support::client::main(&args))
        }
        "idle-memory" => args.check(&[COMMON, IDLE].concat()).and_then(|()| idle_memory(&args)),
        "throughput" => {
            args.check(&[COMMON, TRAFFIC, THROUGHPUT].concat()).and_then(|()| throughput(&args))
        }
        "peak" => args.check(&[COMMON, TRAFFIC, PEAK].concat()).and_then(|()| peak(&args)),
        _ => Err(USAGE.to_string()),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(problem) => {
            eprintln!("load: {problem}");
            ExitCode::FAILURE
        }
    }
}

/// The pods, Redis and client workers of one run.
struct Setup {
    /// Pods this run started (empty with `--url`).
    pods: Vec<Pod>,
    /// Addresses of all pods used.
    addrs: Vec<SocketAddr>,
    redis: Option<Redis>,
    workers: Vec<Worker>,
    /// Connection indices `[first, first + count)` of each worker.
    shares: Vec<(u64, u64)>,
    layout: Layout,
    /// Where pod logs go.
    dir: PathBuf,
}

impl Setup {
    /// Starts Redis and pods as asked (or takes `--url`).
    fn pods(args: &Args, pods: usize, redis_needed_for: Option<&str>) -> Result<Setup, String> {
        let dir = std::env::temp_dir().join(format!("ward-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let urls = args.list("url");
        let count: usize = args.parse("pods", pods)?;
        let with_redis = args.flag("redis");
        if let Some(scenario) = redis_needed_for
            && urls.is_empty()
            && count > 1
            && !with_redis
        {
            return Err(format!("{scenario} over {count} pods needs --redis to join them"));
        }

        let redis = if with_redis && urls.is_empty() { Some(Redis::start(&dir)?) } else { None };
        let bin = args.get("ward-bin").map(PathBuf::from);
        let bin = bin.unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ward")));
        let mut pods = Vec::new();
        for i in 0..if urls.is_empty() { count } else { 0 } {
            let node = format!("pod-{}", (b'a' + i as u8) as char);
            pods.push(Pod::start(&bin, &node, redis.as_ref().map(|r| r.url.as_str()), &dir)?);
        }
        let addrs = if urls.is_empty() {
            pods.iter().map(|p| p.addr).collect()
        } else {
            urls.iter().map(|u| addr_of_url(u)).collect::<Result<_, _>>()?
        };
        let layout = Layout::new(0, 1, 1, 0);
        Ok(Setup { pods, addrs, redis, workers: Vec::new(), shares: Vec::new(), layout, dir })
    }

    /// Starts the client workers and waits until all connections joined.
    fn connect(&mut self, args: &Args, layout: Layout, text_bytes: usize) -> Result<(), String> {
        let cap = procs::open_files_limit().saturating_sub(SPARE_FILES).max(1);
        if layout.total.div_ceil(self.addrs.len() as u64) > cap {
            return Err(format!(
                "{} connections over {} pods exceed {cap} per pod (open files limit); add --pods",
                layout.total,
                self.addrs.len()
            ));
        }
        let clients: u64 = args.parse("clients", layout.total.div_ceil(cap).max(2))?;
        let clients = clients.clamp(layout.total.div_ceil(cap), 250).min(layout.total).max(1);
        let addrs: Vec<String> = self.addrs.iter().map(|a| a.to_string()).collect();

        let started = Instant::now();
        for w in 0..clients {
            let first = layout.total * w / clients;
            let count = layout.total * (w + 1) / clients - first;
            let mut options = vec!["--addrs".into(), addrs.join(",")];
            options.extend(["--src".into(), format!("127.0.0.{}", 2 + w)]);
            options.extend([
                "--first".into(),
                first.to_string(),
                "--count".into(),
                count.to_string(),
            ]);
            options.extend(["--text-bytes".into(), text_bytes.to_string()]);
            options.extend(layout.to_args());
            self.workers.push(Worker::start(format!("client-{w}"), &options)?);
            self.shares.push((first, count));
        }
        self.layout = layout;
        self.wait_ready(started)
    }

    fn wait_ready(&mut self, started: Instant) -> Result<(), String> {
        let deadline = started + Duration::from_secs(120 + self.layout.total / 200);
        let (mut joined, mut failures) = (0, Vec::new());
        for worker in &mut self.workers {
            let line = worker.expect("ready", deadline)?;
            joined += number(&line, "joined");
            if field(&line, "failed") != "-" {
                failures.push(format!("{}: {}", worker.process.name, field(&line, "failed")));
            }
        }
        println!(
            "connected: {joined} of {} joined in {:.1} s",
            self.layout.total,
            started.elapsed().as_secs_f64()
        );
        if joined < self.layout.total {
            return Err(format!("connections failed: {}", failures.join("; ")));
        }
        self.wait_for_connections(joined)
    }

    /// Waits until the pods' `ward_connections` add up to `expected`.
    fn wait_for_connections(&self, expected: u64) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let counted: f64 = self
                .addrs
                .iter()
                .map(|a| procs::scrape(*a, "ward_connections"))
                .sum::<Result<f64, String>>()?;
            if counted as u64 == expected {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("pods count {counted} connections, expected {expected}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the clients stop receiving text frames (the joins cause
    /// presence events); pings are control frames and do not count.
    fn wait_quiet(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = self.frames_received(deadline)?;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(500));
            let now = self.frames_received(deadline)?;
            if now == last {
                return Ok(());
            }
            last = now;
        }
        Err("the clients kept receiving frames for 60 s after the joins".into())
    }

    /// Text frames all workers have received so far.
    fn frames_received(&mut self, deadline: Instant) -> Result<u64, String> {
        let mut frames = 0;
        for worker in &mut self.workers {
            worker.send("stats")?;
            frames += number(&worker.expect("stats", deadline)?, "frames");
        }
        Ok(frames)
    }

    /// Resident memory of each pod, from `/proc` when started here, else
    /// from its `process_resident_memory_bytes`.
    fn rss(&self) -> Result<Vec<u64>, String> {
        if self.pods.is_empty() {
            return self
                .addrs
                .iter()
                .map(|a| procs::scrape(*a, "process_resident_memory_bytes").map(|v| v as u64))
                .collect();
        }
        self.pods.iter().map(|p| procs::rss_bytes(p.process.pid())).collect()
    }

    /// Every process this run started, for CPU accounting.
    fn processes(&self) -> Vec<(&'static str, &Owned)> {
        let pods = self.pods.iter().map(|p| ("pods", &p.process));
        let redis = self.redis.iter().map(|r| ("redis", &r.process));
        let clients = self.workers.iter().map(|w| ("clients", &w.process));
        pods.chain(redis).chain(clients).collect()
    }

    /// Tells the workers to quit and waits a little for them.
    fn finish(mut self) {
        for worker in &mut self.workers {
            let _ = worker.send("quit");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for worker in &mut self.workers {
            while worker.process.exited().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `ws://127.0.0.1:8080/ws` to `127.0.0.1:8080`.
fn addr_of_url(url: &str) -> Result<SocketAddr, String> {
    let rest = url.strip_prefix("ws://").unwrap_or(url);
    let host = rest.split('/').next().unwrap_or_default();
    let addr: SocketAddr =
        host.parse().map_err(|_| format!("--url `{url}`: use ws://ip:port/ws"))?;
    if !addr.ip().is_loopback() {
        return Err(format!("--url `{url}`: the benchmark only sends to loopback addresses"));
    }
    Ok(addr)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Idle joined connections: pod memory before and after.
fn idle_memory(args: &Args) -> Result<(), String> {
    let connections: u64 = args.parse("connections", 10_000)?;
    let rooms: u64 = args.parse("rooms", (connections / 50).max(1))?;
    let idle: u64 = args.parse("idle", 20)?;
    let per_pod = procs::open_files_limit().saturating_sub(SPARE_FILES).max(1);
    let mut setup = Setup::pods(args, connections.div_ceil(per_pod) as usize, None)?;
    let pods = setup.addrs.len() as u64;
    let layout = Layout::new(connections, pods, rooms, 0);
    println!(
        "idle-memory: {connections} connections, {pods} pod(s), {rooms} rooms of ~{}",
        connections / rooms
    );

    // One scrape first, so the metrics path is warm in the baseline.
    setup.wait_for_connections(0)?;
    let before = setup.rss()?;
    let kernel_before = procs::tcp_kernel_bytes();
    setup.connect(args, layout, 64)?;
    setup.wait_quiet()?;
    let joined = setup.rss()?;
    let kernel = procs::tcp_kernel_bytes().saturating_sub(kernel_before);
    print_memory("after joining", &setup, &before, &joined);
    println!("  kernel TCP buffers (both ends, not in RSS): {:.1} MiB", mib(kernel));

    if idle > 0 {
        std::thread::sleep(Duration::from_secs(idle.min(600)));
        setup.wait_for_connections(connections)?;
        let idled = setup.rss()?;
        print_memory(&format!("after idling {idle} s"), &setup, &before, &idled);
        verdict_memory(&setup, &before, &idled);
    } else {
        verdict_memory(&setup, &before, &joined);
    }
    setup.finish();
    Ok(())
}

fn per_connection(setup: &Setup, before: &[u64], after: &[u64]) -> f64 {
    let grown: u64 = after.iter().zip(before).map(|(a, b)| a.saturating_sub(*b)).sum();
    grown as f64 / setup.layout.total.max(1) as f64
}

fn print_memory(when: &str, setup: &Setup, before: &[u64], after: &[u64]) {
    println!("{when}:");
    for (i, (b, a)) in before.iter().zip(after).enumerate() {
        println!("  pod {i}: RSS {:.1} MiB -> {:.1} MiB", mib(*b), mib(*a));
    }
    println!("  pod RSS per connection: {:.0} bytes", per_connection(setup, before, after));
}

fn verdict_memory(setup: &Setup, before: &[u64], after: &[u64]) {
    let bytes = per_connection(setup, before, after);
    let met = if bytes <= 4096.0 { "met" } else { "NOT met" };
    println!("target <= 4096 bytes per idle joined connection: {met} ({bytes:.0} bytes)");
}

/// Options of a message run, shared by `throughput` and `peak`.
struct Traffic {
    warmup: u64,
    grace: u64,
}

/// Starts everything for a message run: rooms × members connections.
fn traffic_setup(args: &Args, scenario: &str) -> Result<(Setup, Traffic), String> {
    let rooms: u64 = args.parse("rooms", 100)?;
    let members: u64 = args.parse("members", 100)?;
    let senders: u64 = args.parse("senders-per-room", members)?;
    let text_bytes: usize = args.parse("text-bytes", 64)?;
    let traffic = Traffic { warmup: args.parse("warmup", 3)?, grace: args.parse("grace", 3)? };
    let mut setup = Setup::pods(args, 1, Some(scenario))?;
    let pods = setup.addrs.len() as u64;
    let layout = Layout::new(rooms * members, pods, rooms, senders);
    let broker = if setup.redis.is_some() { "Redis" } else { "in-process broker" };
    println!(
        "{scenario}: {pods} pod(s), {broker}; {rooms} rooms x {members} members = {} \
         connections; {} senders; text {text_bytes} bytes",
        layout.total,
        layout.senders()
    );
    for pod in &setup.pods {
        println!("  {} pid {} at {}", pod.process.name, pod.process.pid(), pod.url());
    }
    setup.connect(args, layout, text_bytes)?;
    setup.wait_quiet()?;
    Ok((setup, traffic))
}

/// The merged outcome of one measured run.
#[derive(Default)]
struct Outcome {
    seconds: f64,
    rate: f64,
    sent_window: u64,
    send_failed: u64,
    expected: u64,
    delivered: u64,
    received_window: u64,
    histogram: Option<Histogram>,
    errors: Vec<String>,
    closes: Vec<String>,
    cpu: Vec<(&'static str, f64)>,
    /// Per second of the window: deliveries and those slower than 20 ms.
    by_second: std::collections::BTreeMap<u64, (u64, u64)>,
    /// The pods' `ward_delivery_lag_seconds` buckets, counted in the window.
    pod_lag: Vec<(f64, f64)>,
}

impl Outcome {
    fn offered(&self) -> f64 {
        self.expected as f64 / self.seconds
    }
    fn throughput(&self) -> f64 {
        self.received_window as f64 / self.seconds
    }
    fn missing(&self) -> u64 {
        self.expected.saturating_sub(self.delivered)
    }
    fn p(&self, q: f64) -> f64 {
        self.histogram.as_ref().map_or(0.0, |h| h.quantile(q) as f64 / 1000.0)
    }
    fn max_ms(&self) -> f64 {
        self.histogram.as_ref().map_or(0.0, |h| h.max() as f64 / 1000.0)
    }
    fn closed(&self) -> bool {
        !self.closes.is_empty()
    }
}

/// Sends at `rate` messages/s for `seconds` and gathers the workers' reports.
fn measure(
    setup: &mut Setup,
    traffic: &Traffic,
    rate: f64,
    seconds: u64,
) -> Result<Outcome, String> {
    let start = now_us() + 500_000;
    let (warmup, grace) = (traffic.warmup * 1000, traffic.grace * 1000);
    let window_start = start + warmup * 1000;
    let window_end = window_start + seconds * 1_000_000;
    let senders = setup.layout.senders().max(1) as f64;
    for (worker, (first, count)) in setup.workers.iter_mut().zip(&setup.shares) {
        let mine = (*first..first + count).filter(|g| setup.layout.is_sender(*g)).count();
        let share = rate * mine as f64 / senders;
        worker.send(&format!(
            "run --rate {share} --start {start} --warmup {warmup} --duration {} --grace {grace}",
            seconds * 1000
        ))?;
    }

    // CPU used by each process and the pods' own delivery lag, during
    // the measured window.
    sleep_until(window_start);
    let lag_before = pod_lag(setup)?;
    let cpu_before: Vec<f64> =
        setup.processes().iter().map(|(_, p)| procs::cpu_seconds(p.pid())).collect();
    let machine_before = procs::machine_cpu_seconds();
    sleep_until(window_end);
    let machine_after = procs::machine_cpu_seconds();
    let processes = (machine_after.0 - machine_before.0) / seconds as f64;
    let interrupts = (machine_after.1 - machine_before.1) / seconds as f64;
    let lag = pod_lag(setup)?;
    let pod_lag: Vec<(f64, f64)> =
        lag.iter().zip(&lag_before).map(|((b, after), (_, before))| (*b, after - before)).collect();
    let mut cpu: Vec<(&'static str, f64)> = Vec::new();
    for ((group, process), before) in setup.processes().iter().zip(cpu_before) {
        let used = (procs::cpu_seconds(process.pid()) - before) / seconds as f64;
        match cpu.iter_mut().find(|(g, _)| g == group) {
            Some((_, total)) => *total += used,
            None => cpu.push((group, used)),
        }
    }
    let ours: f64 = cpu.iter().map(|(_, c)| c).sum();
    cpu.push(("softirq", interrupts));
    cpu.push(("other processes", (processes - ours).max(0.0)));

    let mut outcome = Outcome { seconds: seconds as f64, rate, cpu, pod_lag, ..Outcome::default() };
    let deadline = Instant::now() + Duration::from_secs(traffic.grace + 60);
    let mut histogram = Histogram::new();
    for worker in &mut setup.workers {
        let line = worker.expect("result", deadline)?;
        outcome.sent_window += number(&line, "sent_window");
        outcome.send_failed += number(&line, "send_failed");
        outcome.expected += number(&line, "expected");
        outcome.delivered += number(&line, "delivered");
        outcome.received_window += number(&line, "received_window");
        histogram.merge(&Histogram::decode(field(&line, "hist"))?);
        for entry in field(&line, "seconds").split(',').filter(|e| !e.is_empty()) {
            let parts: Vec<u64> = entry.split(':').filter_map(|n| n.parse().ok()).collect();
            if let [second, count, slow] = parts[..] {
                let tally = outcome.by_second.entry(second).or_insert((0, 0));
                tally.0 += count;
                tally.1 += slow;
            }
        }
        for (list, key) in [(&mut outcome.errors, "errors"), (&mut outcome.closes, "closes")] {
            if field(&line, key) != "-" {
                list.push(field(&line, key).to_string());
            }
        }
    }
    outcome.histogram = Some(histogram);
    Ok(outcome)
}

/// The pods' delivery lag histograms (publish to socket write), summed.
fn pod_lag(setup: &Setup) -> Result<Vec<(f64, f64)>, String> {
    let mut sum: Vec<(f64, f64)> = Vec::new();
    for addr in &setup.addrs {
        let (_, text) = procs::http_get(*addr, "/metrics")?;
        let buckets = procs::buckets(&text, "ward_delivery_lag_seconds");
        if sum.is_empty() {
            sum = buckets;
        } else {
            sum.iter_mut().zip(buckets).for_each(|(s, (_, c))| s.1 += c);
        }
    }
    Ok(sum)
}

/// The bucket bound (ms) under which a quantile of the pods' lag falls.
fn lag_quantile(buckets: &[(f64, f64)], q: f64) -> String {
    let total = buckets.last().map_or(0.0, |(_, c)| *c);
    match buckets.iter().find(|(_, c)| *c >= q * total) {
        _ if total == 0.0 => "-".into(),
        Some((bound, _)) if bound.is_finite() => format!("<= {} ms", bound * 1000.0),
        _ => "> 5000 ms".into(),
    }
}

fn sleep_until(epoch_us: u64) {
    std::thread::sleep(Duration::from_micros(epoch_us.saturating_sub(now_us())));
}

fn print_outcome(outcome: &Outcome) {
    println!(
        "  offered  {:.0} msg/s -> {:.0} deliveries/s (sent {:.0} msg/s, {} send failures)",
        outcome.rate,
        outcome.offered(),
        outcome.sent_window as f64 / outcome.seconds,
        outcome.send_failed
    );
    println!(
        "  received {:.0} deliveries/s; {} of {} expected deliveries missing",
        outcome.throughput(),
        outcome.missing(),
        outcome.expected
    );
    println!(
        "  latency send->receive: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        outcome.p(0.5),
        outcome.p(0.9),
        outcome.p(0.99),
        outcome.p(0.999),
        outcome.max_ms()
    );
    println!(
        "  pods' own lag, publish -> socket write: p50 {}, p99 {}",
        lag_quantile(&outcome.pod_lag, 0.5),
        lag_quantile(&outcome.pod_lag, 0.99)
    );
    let slow: Vec<String> = outcome
        .by_second
        .iter()
        .filter(|(_, (n, slow))| *slow * 100 > *n)
        .map(|(s, (n, slow))| format!("{s}s:{:.0}%", *slow as f64 * 100.0 / *n as f64))
        .collect();
    let slow = if slow.is_empty() { "none".into() } else { slow.join(" ") };
    println!("  seconds with over 1% of deliveries slower than 20 ms: {slow}");
    let or_none = |list: &[String]| if list.is_empty() { "none".into() } else { list.join(" ") };
    println!("  errors: {}; closes: {}", or_none(&outcome.errors), or_none(&outcome.closes));
    let cpu: Vec<String> = outcome.cpu.iter().map(|(g, c)| format!("{g} {c:.2}")).collect();
    let per_delivery: Vec<String> = outcome
        .cpu
        .iter()
        .filter(|(g, _)| *g != "other processes" && *g != "softirq")
        .map(|(g, c)| format!("{g} {:.1} µs", c.max(0.0) * 1e6 / outcome.throughput().max(1.0)))
        .collect();
    println!("  CPU per delivery: {}", per_delivery.join(", "));
    println!("  CPU cores used: {} (load average {})", cpu.join(", "), procs::load_average());
}

/// Fixed-rate messages: deliveries/s and latency.
fn throughput(args: &Args) -> Result<(), String> {
    let rate: f64 = args.parse("rate", 800.0)?;
    let seconds: u64 = args.parse::<u64>("duration", 20)?.clamp(1, 600);
    let (mut setup, traffic) = traffic_setup(args, "throughput")?;
    let outcome = measure(&mut setup, &traffic, rate, seconds)?;
    println!("measured {seconds} s after {} s of warm-up:", traffic.warmup);
    print_outcome(&outcome);
    let kept_up = outcome.throughput() >= 0.98 * outcome.offered() && outcome.missing() == 0;
    let met = kept_up && outcome.throughput() >= 80_000.0 && outcome.p(0.99) < 20.0;
    println!("target 80000 deliveries/s with p99 < 20 ms: {}", if met { "met" } else { "NOT met" });
    setup.finish();
    Ok(())
}

/// Growing rates until one is not sustained; reports the best sustained.
fn peak(args: &Args) -> Result<(), String> {
    let mut rate: f64 = args.parse("from", 1000.0)?;
    let factor: f64 = args.parse("factor", 1.25)?;
    let steps: u32 = args.parse("steps", 10)?;
    let seconds: u64 = args.parse::<u64>("step-duration", 10)?.clamp(1, 120);
    let max_p99: f64 = args.parse("max-p99", 1000.0)?;
    let (mut setup, traffic) = traffic_setup(args, "peak")?;

    let mut best: Option<Outcome> = None;
    for step in 1..=steps {
        println!("step {step}: {rate:.0} msg/s for {seconds} s");
        let outcome = measure(&mut setup, &traffic, rate, seconds)?;
        print_outcome(&outcome);
        let sustained = outcome.throughput() >= 0.98 * outcome.offered()
            && outcome.missing() == 0
            && !outcome.closed()
            && outcome.p(0.99) <= max_p99;
        if !sustained {
            println!("  not sustained");
            break;
        }
        best = Some(outcome);
        rate *= factor;
    }
    match &best {
        Some(b) => println!(
            "peak sustained: {:.0} deliveries/s ({:.0} msg/s), p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            b.throughput(),
            b.rate,
            b.p(0.5),
            b.p(0.99),
            b.max_ms()
        ),
        None => println!("peak sustained: none of the steps"),
    }
    let met = best.as_ref().is_some_and(|b| b.throughput() >= 400_000.0);
    println!("target 400000 deliveries/s at peak: {}", if met { "met" } else { "NOT met" });
    setup.finish();
    Ok(())
}
