//! A real Redis for tests (Debian's `redis-server`, which `.ci/run` installs): started on
//! a free loopback port with its own temporary folder, ready once it answers PING, killed
//! when dropped. Persistence is on (append-only file, fsync at every write), so a restart
//! by SIGKILL loses nothing that was answered. Shared by the store's unit tests (through
//! `#[path]`) and the integration tests.

#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a Redis may take to start answering on a loaded machine.
const READY_DEADLINE: Duration = Duration::from_secs(30);

/// `redis-server` from PATH or where Debian puts it; `None` when not installed (the test
/// then says it is skipped).
pub fn binary() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
}

pub struct RedisServer {
    binary: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// A started Redis, or `None` (with a line saying so) when `redis-server` is missing.
    pub fn start(test: &str) -> Option<Self> {
        Self::start_with(test, &[])
    }

    /// As [`Self::start`], with more `redis-server` arguments (`--maxmemory 1mb`).
    pub fn start_with(test: &str, extra: &[&str]) -> Option<Self> {
        // A free loopback port: bound, read and released; Redis binds it next.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_full(test, port, extra)
    }

    /// As [`Self::start`], on a given port.
    pub fn start_on(test: &str, port: u16) -> Option<Self> {
        Self::start_full(test, port, &[])
    }

    fn start_full(test: &str, port: u16, extra: &[&str]) -> Option<Self> {
        let Some(binary) = binary() else {
            eprintln!("skipped: {test}: no redis-server (apt-get install redis-server)");
            return None;
        };
        let mut server = Self {
            binary,
            dir: tempfile::tempdir().unwrap(),
            port,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        server.run();
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn run(&mut self) {
        let child = Command::new(&self.binary)
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args(["--daemonize", "no", "--protected-mode", "yes"])
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"))
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Polls PING until Redis answers (after loading its append-only file).
    fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                let log =
                    std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
                panic!("redis-server exited with {status}:\n{log}");
            }
            // Answering at all is ready: PONG, or NOAUTH when it wants a password.
            let reply = self.command("PING").unwrap_or_default();
            if reply == "+PONG" || reply.starts_with("-NOAUTH") {
                return;
            }
            assert!(
                started.elapsed() < READY_DEADLINE,
                "redis-server did not answer PING within {READY_DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// One inline command; its first reply line, or `None` when Redis does not answer.
    pub fn command(&self, command: &str) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
        let mut reply = Vec::new();
        let mut byte = [0u8];
        while stream.read(&mut byte).ok()? == 1 {
            if byte[0] == b'\n' {
                break;
            }
            reply.push(byte[0]);
        }
        let line = String::from_utf8_lossy(&reply).trim_end().to_string();
        (!line.is_empty()).then_some(line)
    }

    /// Kills Redis (SIGKILL: no chance to save anything more) and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes Redis (SIGSTOP): connections are still accepted by the kernel, nothing is
    /// answered, as a Redis stuck on a slow disk or a long command.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen Redis go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("redis-server runs").id();
        let status = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Starts Redis again on the same port and folder (its append-only file).
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
