//! Private `redis-server` processes for the tests, on free loopback ports. A server
//! that must outlive one test (the one the whole suite shares) is watched by a small
//! shell loop that stops it when the test process ends, so no run leaves one behind.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Whether Redis tests can run here: a server binary, or one named by the environment.
pub fn available() -> bool {
    std::env::var("OTPD_TEST_REDIS_URL").is_ok()
        || Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Whether this test can start servers of its own (it needs `program`); says plainly
/// when it cannot.
pub fn can_start(program: &str, test: &str) -> bool {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("SKIPPED {test}: it starts its own Redis servers and {program} is not on PATH");
    }
    found
}

/// Says plainly that a Redis test did not run, and why.
pub fn skip_notice(test: &str) {
    eprintln!(
        "SKIPPED {test}: no redis-server on PATH and no OTPD_TEST_REDIS_URL (CI installs redis-server)"
    );
}

/// The server the whole suite shares when `OTPD_TEST_STORE=redis`; tests keep apart
/// by key prefix.
pub fn shared_url() -> String {
    /// The URL, and the watchdog that owns the server (kept, never waited for).
    static SHARED: OnceLock<(String, Option<Mutex<Child>>)> = OnceLock::new();
    let (url, _) = SHARED.get_or_init(|| {
        if let Ok(url) = std::env::var("OTPD_TEST_REDIS_URL") {
            return (url, None);
        }
        let dir = tempfile::tempdir().unwrap().keep();
        let port = free_port();
        // The watchdog stops the server once this test process is gone.
        let script = format!(
            "redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no --dir '{}' >/dev/null & \
             server=$!; while kill -0 {} 2>/dev/null; do sleep 0.5; done; kill $server",
            dir.display(),
            std::process::id()
        );
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until_up(port);
        (format!("redis://127.0.0.1:{port}"), Some(Mutex::new(watchdog)))
    });
    url.clone()
}

/// A server of one test's own, stopped when dropped; `persistent` keeps every write
/// in an append-only file, so a restart (even after `kill -9`) loses nothing.
pub struct RedisServer {
    pub port: u16,
    persistent: bool,
    cluster: bool,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start(persistent: bool) -> RedisServer {
        RedisServer::launch(persistent, false)
    }

    fn launch(persistent: bool, cluster: bool) -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            persistent,
            cluster,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        server.run();
        server
    }

    /// Three cluster nodes sharing the 16384 slots (no replicas); the cluster is up
    /// when this returns.
    pub fn start_cluster() -> Vec<RedisServer> {
        let nodes: Vec<RedisServer> = (0..3).map(|_| RedisServer::launch(false, true)).collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            created.status.success(),
            "{}",
            String::from_utf8_lossy(&created.stdout)
        );
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            let info = Command::new("redis-cli")
                .args(["-p", &nodes[0].port.to_string(), "cluster", "info"])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                return nodes;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the test cluster did not come up");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn run(&mut self) {
        self.child = Some(spawn(
            self.port,
            self.dir.path(),
            self.persistent,
            self.cluster,
        ));
        wait_until_up(self.port);
    }

    /// `kill -9`: the server gets no chance to save anything more.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.run();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(port: u16, dir: &Path, persistent: bool, cluster: bool) -> Child {
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
    ])
    .arg("--dir")
    .arg(dir);
    if cluster {
        cmd.args([
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
        ]);
    }
    if persistent {
        cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
    } else {
        cmd.args(["--appendonly", "no"]);
    }
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    listener.local_addr().unwrap().port()
}

/// Waits for `PING` to answer `PONG` (a server loading its file answers an error).
fn wait_until_up(port: u16) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        if let Ok(mut conn) = TcpStream::connect(("127.0.0.1", port)) {
            let mut answer = [0u8; 7];
            if conn.write_all(b"PING\r\n").is_ok()
                && conn.read_exact(&mut answer).is_ok()
                && &answer == b"+PONG\r\n"
            {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server on port {port} did not start");
}
