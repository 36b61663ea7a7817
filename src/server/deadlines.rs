//! Per-connection deadlines for reading requests, in the manner of Go's `net/http`
//! (`ReadHeaderTimeout`, `IdleTimeout`): a connection waiting for its next request may stay
//! open for the idle timeout; once a request's first byte arrives its headers must be
//! complete within the header timeout; a new connection gets the header timeout from its
//! start, so that opening one and sending nothing holds nothing for long.
//!
//! Written here rather than taken from hyper or a crate: hyper's `header_read_timeout`
//! starts when the connection begins waiting for a request, so it is also the idle
//! timeout (a slowloris deadline short enough to matter would close every pooled
//! keep-alive connection of a gateway after a few seconds), and the I/O timeout crates
//! (`tokio-io-timeout`) restart their clock at every byte, which a client sending one
//! byte at a time never lets expire.
//!
//! The connection's service marks when a request's headers have been read and when it
//! was answered ([`Phase`]); reads while a request is being handled have no deadline here
//! (a handler that reads a body bounds that itself, see `body.rs`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Waiting for the next request (keep-alive).
const IDLE: u32 = 0;
/// A request's headers are being read: from the connection's start, or from the first
/// byte after an idle period.
const HEAD: u32 = 1;
/// A request is being handled.
const BUSY: u32 = 2;

/// Where a connection is in its request cycle; shared by its I/O and its service (both
/// run in the connection's task). The low two bits are the phase, the rest count the
/// changes, so that a deadline is computed afresh for every request, not only when the
/// phase differs from the last one seen.
#[derive(Debug)]
pub struct Phase(AtomicU32);

impl Default for Phase {
    /// A new connection owes its first request's headers.
    fn default() -> Self {
        Self(AtomicU32::new(HEAD))
    }
}

impl Phase {
    /// The service was called: the request's headers have been read.
    pub fn request_started(&self) {
        self.enter(BUSY);
    }

    /// The response is ready: the connection now waits for the next request.
    pub fn request_answered(&self) {
        self.enter(IDLE);
    }

    fn enter(&self, phase: u32) {
        let changes = self.0.load(Ordering::Acquire) >> 2;
        self.0
            .store((changes.wrapping_add(1) << 2) | phase, Ordering::Release);
    }

    fn current(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }
}

/// A connection's I/O with the read deadlines of its [`Phase`].
///
/// The timer is moved lazily: a deadline further away than the timer's is only recorded,
/// and when the timer fires early it is set again. So a keep-alive connection answering
/// request after request touches the timer once per timeout, not once per request (the
/// decision path's throughput is the point of this server).
pub struct Deadlines<S> {
    io: S,
    phase: Arc<Phase>,
    header_timeout: Duration,
    idle_timeout: Duration,
    timer: Pin<Box<Sleep>>,
    /// The deadline of the phase recorded in `deadline_for`.
    deadline: Instant,
    /// The phase state (with its change count) the deadline was computed for.
    deadline_for: u32,
}

impl<S> Deadlines<S> {
    pub fn new(io: S, phase: Arc<Phase>, header_timeout: Duration, idle_timeout: Duration) -> Self {
        let deadline = Instant::now() + header_timeout;
        let deadline_for = phase.current();
        Self {
            io,
            phase,
            header_timeout,
            idle_timeout,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            deadline,
            deadline_for,
        }
    }

    /// Ready with an error once the current phase's deadline has passed; else registers
    /// the task to be woken when it might have.
    fn expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let state = self.phase.current();
        let (limit, why) = match state & 3 {
            IDLE => (self.idle_timeout, "idle connection closed"),
            HEAD => (self.header_timeout, "request headers not received in time"),
            _ => return Poll::Pending,
        };
        if self.deadline_for != state {
            self.deadline = Instant::now() + limit;
            self.deadline_for = state;
            if self.timer.deadline() > self.deadline {
                self.timer.as_mut().reset(self.deadline);
            }
        }
        loop {
            match self.timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if Instant::now() >= self.deadline => {
                    return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, why));
                }
                // Fired for an earlier deadline: wait for the current one.
                Poll::Ready(()) => self.timer.as_mut().reset(self.deadline),
            }
        }
    }

    /// After a write: once the answer is out, the idle deadline starts. hyper reads from
    /// an idle connection only when woken, so the timer must be registered now.
    fn arm_after_write(&mut self, cx: &mut Context<'_>) {
        if self.phase.current() & 3 == IDLE && self.expired(cx).is_ready() {
            cx.waker().wake_by_ref(); // the next read reports it
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Deadlines<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                // The first byte of a request after an idle period starts its header clock.
                if buf.filled().len() > before && this.phase.current() & 3 == IDLE {
                    this.phase.enter(HEAD);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.expired(cx).map(Err),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Deadlines<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.io).poll_flush(cx);
        if flushed.is_ready() {
            self.arm_after_write(cx);
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const HEADER: Duration = Duration::from_secs(10);
    const IDLE_LIMIT: Duration = Duration::from_secs(120);

    fn pair() -> (
        Deadlines<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
        Arc<Phase>,
    ) {
        let (server, client) = tokio::io::duplex(1024);
        let phase = Arc::new(Phase::default());
        (
            Deadlines::new(server, phase.clone(), HEADER, IDLE_LIMIT),
            client,
            phase,
        )
    }

    /// Reads until the deadline fires; returns how long that took on the paused clock.
    async fn read_until_closed(io: &mut Deadlines<tokio::io::DuplexStream>) -> Duration {
        let started = Instant::now();
        let mut buf = [0; 64];
        loop {
            match io.read(&mut buf).await {
                Ok(0) => panic!("closed by the peer, not by a deadline"),
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::TimedOut);
                    return started.elapsed();
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_trickling_its_headers_is_cut_off_at_the_header_timeout() {
        let (mut io, mut client, _) = pair();
        let trickle = tokio::spawn(async move {
            // One byte every 5 s: a per-read timeout of 10 s would never fire.
            for _ in 0..100 {
                if client.write_all(b"G").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
        assert_eq!(read_until_closed(&mut io).await, HEADER);
        trickle.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_keep_alive_connection_stays_until_the_idle_timeout() {
        let (mut io, mut client, phase) = pair();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0; 18];
        io.read_exact(&mut buf).await.unwrap();
        phase.request_started();
        phase.request_answered();
        // Waiting longer than the header timeout, shorter than the idle one: still open.
        let waiting = tokio::spawn(async move {
            let mut buf = [0; 64];
            let n = io.read(&mut buf).await.map_err(|e| e.kind());
            (n, io)
        });
        tokio::time::advance(HEADER * 3).await;
        client.write_all(b"G").await.unwrap();
        let (n, mut io) = waiting.await.unwrap();
        assert_eq!(n, Ok(1));
        // That byte started a request: its headers are now due within the header timeout.
        assert_eq!(read_until_closed(&mut io).await, HEADER);

        let (mut io, _client, phase) = pair();
        phase.request_started();
        phase.request_answered();
        assert_eq!(read_until_closed(&mut io).await, IDLE_LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_being_handled_has_no_read_deadline() {
        let (mut io, mut client, phase) = pair();
        phase.request_started();
        let mut buf = [0; 8];
        let read = tokio::spawn(async move {
            let n = io.read(&mut buf).await;
            (n.map_err(|e| e.kind()), io)
        });
        tokio::time::advance(IDLE_LIMIT * 2).await;
        client.write_all(b"body").await.unwrap();
        let (n, _) = read.await.unwrap();
        assert_eq!(n, Ok(4));
    }
}
