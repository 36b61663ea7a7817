//! The listening socket: bound with a backlog deep enough for a crowd arriving at once.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// Connections the kernel completes and queues before the server accepts them.
///
/// `TcpListener::bind` asks for 1024. When 10,000 clients connect within a second (a
/// gateway's pool filling up, a load test's users arriving) the queue fills before the
/// accept loop drains it, and Linux then drops the handshakes: each dropped client waits
/// for its own retransmission, one second, then three, then seven, and measures that as
/// latency or a timeout. The kernel caps the request at `net.core.somaxconn` (4096 by
/// default since Linux 5.4); raising that sysctl raises the effective backlog up to this
/// value.
pub const LISTEN_BACKLOG: u32 = 16_384;

/// Binds `addr` for serving, as `TcpListener::bind` does (with `SO_REUSEADDR`, so that a
/// restart does not wait for the last connections' `TIME_WAIT`), but with
/// [`LISTEN_BACKLOG`].
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpStream;

    use super::*;

    /// The handshakes a listener that has not accepted yet can complete: more than the
    /// 1024 of `TcpListener::bind`. Past its backlog Linux drops a client's SYN, and the
    /// connect waits for retransmissions that never succeed while nothing is accepted.
    #[tokio::test]
    async fn queues_more_handshakes_than_the_default_backlog() {
        const QUEUED: usize = 1024 + 512;
        let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok());
        if somaxconn.is_none_or(|max| max < QUEUED) {
            eprintln!("skipped: net.core.somaxconn {somaxconn:?} caps every backlog lower");
            return;
        }
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let connect_all = async {
            for _ in 0..QUEUED {
                // Closed at once: a completed handshake stays in the accept queue after
                // the client is gone, and the test holds one descriptor at a time.
                TcpStream::connect(addr).await.unwrap();
            }
        };
        // Not a speed limit: without the backlog, connection 1026 never completes.
        tokio::time::timeout(Duration::from_secs(20), connect_all)
            .await
            .expect("connections beyond the default backlog were never completed");
        drop(listener);
    }
}
