//! Real Redis servers for tests: one `redis-server` on a free loopback port,
//! or a three-master Redis Cluster. Each process is stopped by its PID when
//! its guard drops; nothing is persisted.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a server may take to answer PING after it was started.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// A `redis-server` process owned by the test.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    cluster: bool,
}

impl RedisServer {
    /// Starts a server on a free port.
    pub fn start() -> RedisServer {
        RedisServer::start_on(free_port(false), false)
    }

    /// Starts a server on `port`; with `cluster`, as a cluster node.
    pub fn start_on(port: u16, cluster: bool) -> RedisServer {
        let dir = scratch_dir(port);
        let child = spawn(port, cluster, &dir);
        let server = RedisServer { child: Some(child), port, dir, cluster };
        server.wait_ready();
        server
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL to its PID) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, with an empty data set.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Some(spawn(self.port, self.cluster, &self.dir));
        self.wait_ready();
    }

    /// Runs `redis-cli -p <port> <args>` and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args)
    }

    fn wait_ready(&self) {
        let end = Instant::now() + START_DEADLINE;
        while !answers_ping(self.port) {
            assert!(Instant::now() < end, "redis-server on port {} did not start", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three masters forming one Redis Cluster, no replicas.
pub struct RedisCluster {
    /// The three servers.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster nodes and joins them, waiting for `cluster_state:ok`.
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> =
            (0..3).map(|_| RedisServer::start_on(free_port(true), true)).collect();
        let mut args = vec!["--cluster".to_string(), "create".to_string()];
        args.extend(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
        let output = Command::new("redis-cli")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs");
        assert!(output.status.success(), "cluster create failed: {output:?}");

        let cluster = RedisCluster { nodes };
        let end = Instant::now() + START_DEADLINE;
        while !cluster
            .nodes
            .iter()
            .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < end, "the cluster did not reach cluster_state:ok");
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// A seed URL (the first node).
    pub fn url(&self) -> String {
        self.nodes[0].url()
    }

    /// The port of the master that owns `slot`.
    pub fn owner_of_slot(&self, slot: u16) -> u16 {
        let table = self.nodes[0].cli(&["CLUSTER", "NODES"]);
        for line in table.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port: u16 = fields[1]
                .split(['@', ':'])
                .nth(1)
                .and_then(|p| p.parse().ok())
                .expect("node address in CLUSTER NODES");
            for range in fields.iter().skip(8) {
                let (low, high) = range.split_once('-').unwrap_or((range, range));
                let (low, high): (u16, u16) = (low.parse().unwrap(), high.parse().unwrap());
                if (low..=high).contains(&slot) {
                    return port;
                }
            }
        }
        panic!("no master owns slot {slot}: {table}");
    }

    /// The slot of `key`.
    pub fn slot_of(&self, key: &str) -> u16 {
        self.nodes[0].cli(&["CLUSTER", "KEYSLOT", key]).trim().parse().expect("a slot number")
    }

    /// The node listening on `port`.
    pub fn node(&self, port: u16) -> &RedisServer {
        self.nodes.iter().find(|n| n.port == port).expect("a node of the cluster")
    }
}

/// Spawns `redis-server` on `port` with its files in `dir`.
fn spawn(port: u16, cluster: bool, dir: &std::path::Path) -> Child {
    let mut args: Vec<String> = vec!["--port".into(), port.to_string()];
    args.extend(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"].map(String::from));
    args.extend(["--dir".into(), dir.display().to_string()]);
    if cluster {
        args.extend(["--cluster-enabled", "yes"].map(String::from));
        args.extend(["--cluster-config-file".into(), format!("nodes-{port}.conf")]);
    }
    Command::new("redis-server")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "redis-server cannot be started ({e}); install it with \
                 `apt-get install -y --no-install-recommends redis-server redis-tools`"
            )
        })
}

/// Runs `redis-cli -p <port> <args>`.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("redis-cli cannot run ({e}); install redis-tools"));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A loopback port that is free now; with `bus`, port + 10000 is free too
/// (a cluster node's bus port).
pub fn free_port(bus: bool) -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("bound address").port();
        if !bus {
            return port;
        }
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Whether a server on `port` answers PING with PONG.
fn answers_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut answer = [0u8; 7];
    stream.read_exact(&mut answer).is_ok() && &answer == b"+PONG\r\n"
}

/// A fresh directory for one server's files.
fn scratch_dir(port: u16) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "ward-redis-{}-{port}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let dir = std::env::temp_dir().join(name);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}
