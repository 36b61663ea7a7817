//! Dev mode's own log, as a user runs it: `RUST_LOG=trace authplane dev ... 2>dev.log`
//! with the log file next to (or inside) the manifests folder. The process is run as a
//! process, its log a real file.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `authplane dev` with `RUST_LOG=trace`, logging into `log`; returns once it
/// serves (the log names its address).
fn start(manifests: &Path, state: &Path, log: &Path) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_authplane"))
        .args(["dev", "--listen", "127.0.0.1:0", "--manifests"])
        .arg(manifests)
        .arg("--state")
        .arg(state)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(File::create(log).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains("serving on")
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "dev mode did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// While nothing happens, the log of an idle server grows by a few lines at most, not by
/// its own writes: each write is a change in a watched folder, which must not be logged
/// as one.
#[test]
fn an_idle_dev_server_tracing_into_its_watched_folders_does_not_log_its_own_writes() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    // One log in the manifests folder's parent (watched for the folder's recreation),
    // one in the folder itself.
    for log in [dir.path().join("dev.log"), manifests.join("dev.log")] {
        let mut child = start(&manifests, &dir.path().join("state"), &log);
        // Let start-up settle, then watch an idle second: a feedback loop writes
        // megabytes per second (1 GB in 5 s was seen).
        std::thread::sleep(Duration::from_millis(500));
        let before = size(&log);
        std::thread::sleep(Duration::from_secs(1));
        let grown = size(&log) - before;
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            grown < 16 * 1024,
            "{}: the idle server logged {grown} bytes in a second",
            log.display()
        );
    }
}
