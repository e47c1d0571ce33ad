//! The processes a load run starts (pods, Redis, client workers) and what
//! it reads of them: `/healthz`, `/metrics`, `/proc/<pid>` memory and CPU.
//!
//! Every child is killed by its own PID when its handle is dropped, so a run
//! that fails half-way leaves nothing behind.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

/// A child process killed when dropped.
pub struct Owned {
    /// What it is, for messages.
    pub name: String,
    child: Child,
}

impl Owned {
    fn new(name: String, child: Child) -> Self {
        Self { name, child }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if it has ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if self.exited().is_none() {
            // SIGKILL to this one PID; nothing else is touched.
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; bound right after).
pub fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

/// A Ward pod this run started.
pub struct Pod {
    /// The process.
    pub process: Owned,
    /// Where it listens.
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Pod {
    /// Starts `bin` on a free port, logging to `dir/<node>.log`.
    pub fn start(bin: &Path, node: &str, redis: Option<&str>, dir: &Path) -> Result<Pod, String> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = dir.join(format!("{node}.log"));
        let file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut command = Command::new(bin);
        command
            .env("WARD_LISTEN", addr.to_string())
            .env("WARD_NODE_ID", node)
            .env("WARD_LOG__FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(file.try_clone().map_err(|e| e.to_string())?)
            .stderr(file);
        if let Some(url) = redis {
            command.env("WARD_REDIS__URL", url);
        }
        let child = command.spawn().map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        let mut pod = Pod { process: Owned::new(node.to_string(), child), addr, log };
        pod.wait_healthy(Duration::from_secs(20))?;
        Ok(pod)
    }

    /// Its WebSocket URL.
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Waits for `/healthz` to answer 200, or explains why the pod died.
    fn wait_healthy(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.process.exited() {
                return Err(format!(
                    "pod {} exited ({status}) before it was healthy; its log ends with:\n{}",
                    self.process.name,
                    tail(&self.log, 5)
                ));
            }
            if matches!(http_get(self.addr, "/healthz"), Ok((200, _))) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("pod {} was not healthy within {limit:?}", self.process.name))
    }
}

/// The last `lines` lines of a file.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A Redis server this run started, without persistence.
pub struct Redis {
    /// The process.
    pub process: Owned,
    /// Its `redis://` URL.
    pub url: String,
}

impl Redis {
    /// Starts `redis-server` on a free port in `dir`.
    pub fn start(dir: &Path) -> Result<Redis, String> {
        let port = free_port()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--dir"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server (apt-get install redis-server): {e}"))?;
        let mut process = Owned::new("redis".into(), child);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !redis_pong(addr) {
            if process.exited().is_some() || Instant::now() > deadline {
                return Err(format!("redis-server on port {port} did not answer PING"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Redis { process, url: format!("redis://{addr}") })
    }
}

fn redis_pong(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut answer = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut answer).is_ok()
        && &answer == b"+PONG\r\n"
}

/// A plain HTTP/1.1 GET on loopback: status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("{addr}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| format!("{addr}{path}: {e}"))?;

    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{addr}{path}: not an HTTP answer"))?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    Ok((status, if chunked { dechunk(body) } else { body.to_string() }))
}

/// Joins the chunks of a chunked body.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// The value of an unlabelled metric in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Cumulative counts of a histogram metric by upper bound, `+Inf` last.
pub fn buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&prefix)?;
            let (bound, count) = rest.split_once("\"} ")?;
            let bound = if bound == "+Inf" { f64::INFINITY } else { bound.parse().ok()? };
            Some((bound, count.trim().parse().ok()?))
        })
        .collect()
}

/// Scrapes one metric from a pod's `/metrics`.
pub fn scrape(addr: SocketAddr, name: &str) -> Result<f64, String> {
    let (status, body) = http_get(addr, "/metrics")?;
    if status != 200 {
        return Err(format!("{addr}/metrics answered {status}"));
    }
    metric(&body, name).ok_or_else(|| format!("{addr}/metrics has no `{name}`"))
}

/// Resident memory of a process in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| format!("/proc/{pid}/status has no VmRSS"))
}

/// CPU time (user + system) a process has used, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the command name, which may hold spaces: utime is the
    // 12th and stime the 13th of them (14th and 15th of the whole line).
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    ticks as f64 / 100.0
}

/// CPU time of the whole machine in seconds: processes (user, nice,
/// system, steal) and interrupt handling (irq, softirq), which on loopback is
/// mostly the receiving side of TCP and belongs to no process.
pub fn machine_cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or_default();
    // user nice system idle iowait irq softirq steal
    let ticks: Vec<u64> =
        line.split_whitespace().skip(1).take(8).filter_map(|t| t.parse().ok()).collect();
    let at = |i: usize| ticks.get(i).copied().unwrap_or(0) as f64 / 100.0;
    (at(0) + at(1) + at(2) + at(7), at(5) + at(6))
}

/// The one-minute load average.
pub fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split(' ').next().unwrap_or("?").to_string()
}

/// The kernel's TCP buffer memory in bytes, from `/proc/net/sockstat`.
pub fn tcp_kernel_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let pages = text
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| l.split_whitespace().skip_while(|w| *w != "mem").nth(1))
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(0);
    pages * 4096
}

/// The most files one process may open (soft limit).
pub fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// A client worker: this same program run as `worker`, spoken to by lines.
pub struct Worker {
    /// The process.
    pub process: Owned,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Worker {
    /// Starts a worker with these arguments.
    pub fn start(name: String, args: &[String]) -> Result<Worker, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .arg("worker")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start a client worker: {e}"))?;
        let stdin = child.stdin.take().ok_or("worker has no stdin")?;
        let stdout = child.stdout.take().ok_or("worker has no stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || forward_lines(stdout, tx));
        Ok(Worker { process: Owned::new(name, child), stdin, lines })
    }

    /// Sends one command line.
    pub fn send(&mut self, line: &str) -> Result<(), String> {
        writeln!(self.stdin, "{line}").map_err(|e| format!("{}: {e}", self.process.name))
    }

    /// The next line starting with `key `, skipping others, before `deadline`.
    pub fn expect(&mut self, key: &str, deadline: Instant) -> Result<String, String> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).map_err(|_| {
                format!("{} did not report `{key}` in time (or ended)", self.process.name)
            })?;
            if let Some(rest) = line.strip_prefix(key).and_then(|r| r.strip_prefix(' ')) {
                return Ok(rest.to_string());
            }
            eprintln!("{}: {line}", self.process.name);
        }
    }
}

fn forward_lines(stdout: std::process::ChildStdout, tx: Sender<String>) {
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { return };
        if tx.send(line).is_err() {
            return;
        }
    }
}

/// `key=value` fields of a report line.
pub fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split(' ').find_map(|pair| pair.strip_prefix(key)?.strip_prefix('=')).unwrap_or_default()
}

/// A numeric `key=value` field of a report line (0 when absent).
pub fn number(line: &str, key: &str) -> u64 {
    field(line, key).parse().unwrap_or(0)
}
