//! The listening socket and the connections on it: bound with a backlog deep enough for a
//! crowd arriving at once, each connection served by hyper (HTTP/1.1; HTTP/2 for gRPC,
//! see `super::grpc`) under the listener's [`Limits`]: a connection cap, read deadlines
//! ([`super::deadlines`]) and a bound on request headers. Plain and HTTPS listeners share
//! this one loop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::Either;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower_service::Service;

use super::App;
use super::deadlines::{Deadlines, Phase};
use super::limits::Limits;

/// Connections the kernel completes and queues before the server accepts them.
///
/// `TcpListener::bind` asks for 1024. When 10,000 clients connect within a second (a
/// gateway's pool filling up, a load test's users arriving) the queue fills before the
/// accept loop drains it, and Linux then drops the handshakes: each dropped client waits
/// for its own retransmission, one second, then three, then seven, and measures that as
/// latency or a timeout. The kernel caps the request at `net.core.somaxconn` (4096 by
/// default since Linux 5.4); raising that sysctl raises the effective backlog up to this
/// value. Connections beyond `--max-connections` wait here too.
pub const LISTEN_BACKLOG: u32 = 16_384;

/// How long open requests may run on at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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

/// What a handler may know of the connection a request came on ([`connection`]).
#[derive(Clone, Copy, Debug)]
pub struct ConnectionInfo {
    /// The peer's address: a client, or the proxy in front of it.
    pub peer: SocketAddr,
    pub limits: Limits,
}

tokio::task_local! {
    /// The connection served by the current task. hyper polls a connection's handlers in
    /// that connection's task, so a handler finds it here. A task-local rather than a
    /// request extension: inserting one allocated on every request (the extension map and
    /// a box), for the few handlers that read it.
    static CONNECTION: ConnectionInfo;
}

/// The connection of the request being handled; `None` outside a connection's task (a
/// router called directly, in tests and benchmarks).
pub fn connection() -> Option<ConnectionInfo> {
    CONNECTION.try_with(|info| *info).ok()
}

/// A new connection's stream under its listener's deadlines (the first request's headers
/// within `header_read_timeout`, then `idle_timeout` between requests), and the phase its
/// requests report to.
pub(super) fn deadlined<S>(stream: S, info: &ConnectionInfo) -> (Deadlines<S>, Arc<Phase>) {
    let phase = Arc::new(Phase::default());
    let io = Deadlines::new(
        stream,
        phase.clone(),
        info.limits.header_read_timeout,
        info.limits.idle_timeout,
    );
    (io, phase)
}

/// Serves `app` (HTTP/1.1) on `listener` until `shutdown` resolves, then lets open
/// requests finish for at most ten seconds. With `tls`, every connection begins with a
/// TLS handshake (bounded by the header timeout).
pub async fn serve(
    listener: TcpListener,
    app: impl Into<App>,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    // hyper's own header timer starts when a connection begins waiting for a request, so
    // it would also be the idle timeout: `Deadlines` keeps the two apart.
    http.header_read_timeout(None)
        // The headers' size, whole (431 beyond it), and the read buffer, which bounds
        // what a client that never finishes its headers makes us hold.
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes);
    let http1 = Http1 {
        app: app.into(),
        http: Arc::new(http),
    };
    serve_connections(listener, http1, tls, limits, shutdown).await
}

/// How one accepted connection is served: HTTP/1.1 for the router ([`serve`]), HTTP/2
/// for gRPC (`super::grpc`). The accept loop, its connection cap, TLS and the graceful
/// shutdown are the same for both.
pub trait ServeConnection: Clone + Send + 'static {
    fn serve<S>(
        self,
        stream: S,
        info: ConnectionInfo,
        watcher: hyper_util::server::graceful::Watcher,
    ) -> impl Future<Output = ()> + Send
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
}

/// Accepts connections on `listener` and serves each with `protocol` until `shutdown`
/// resolves, then lets open requests finish for at most ten seconds.
pub async fn serve_connections(
    listener: TcpListener,
    protocol: impl ServeConnection,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tls = tls.map(TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // At the cap, nothing is accepted: new connections wait in the backlog.
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        // Answers are one small write each: send them at once, never behind Nagle's timer.
        let _ = tcp.set_nodelay(true);
        let info = ConnectionInfo { peer, limits };
        let protocol = protocol.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                None => protocol.serve(tcp, info, watcher).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(limits.header_read_timeout, acceptor.accept(tcp));
                    if let Ok(Ok(stream)) = handshake.await {
                        protocol.serve(stream, info, watcher).await;
                    }
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_seconds = SHUTDOWN_GRACE.as_secs(),
            "requests still open at shutdown were cut off"
        );
    }
    Ok(())
}

/// HTTP/1.1 connections served by the app, under [`Deadlines`].
#[derive(Clone)]
struct Http1 {
    app: App,
    http: Arc<hyper::server::conn::http1::Builder>,
}

impl ServeConnection for Http1 {
    async fn serve<S>(
        self,
        stream: S,
        info: ConnectionInfo,
        watcher: hyper_util::server::graceful::Watcher,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Http1 { app, http } = self;
        let (io, phase) = deadlined(stream, &info);
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            phase.request_started();
            // Decisions skip the router: its path parameters and the layers between it and
            // the handler were most of what a cached decision cost beyond `/healthz`. The
            // router answers them the same way (`super::authz::answer`).
            // (CONNECT is left to the router, which has its own rules for it.)
            let decision = app.decisions.as_ref().and_then(|state| {
                if request.method() == hyper::Method::CONNECT {
                    return None;
                }
                let target = super::authz::decision_path(request.uri().path())?;
                Some((state.clone(), target))
            });
            let answered = match decision {
                Some((state, target)) => Either::Left(async move {
                    let answer = super::authz::answer(&state, target, request.headers()).await;
                    let answer = super::authz::as_routed(answer, request.method());
                    Ok::<_, std::convert::Infallible>(answer)
                }),
                None => Either::Right(app.router.clone().call(request)),
            };
            let phase = phase.clone();
            async move {
                let response = answered.await;
                phase.request_answered();
                response
            }
        });
        // Errors are the client's (a reset, a timeout, a malformed request, already
        // answered 400/431 where HTTP allows): nothing to report.
        let served = watcher.watch(http.serve_connection(TokioIo::new(io), service));
        let _ = CONNECTION.scope(info, served).await;
    }
}

/// An accept that failed: the client's own trouble (gone before it was accepted) is
/// skipped; running out of file descriptors waits a moment, as axum does, instead of
/// spinning.
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    ) {
        return;
    }
    tracing::error!(error = %error, "accepting a connection failed; retrying in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
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
