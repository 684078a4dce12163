//! Accepting connections: HTTP/1.1 with a deadline for request headers, a deadline for
//! the client to take response bytes, and a cap on open connections, so half-open,
//! trickling (slowloris) or never-reading clients cannot exhaust the process.
//!
//! `warp::serve` offers none of these, so the accept loop is ours; each connection is
//! served by hyper with warp's routes as the service, exactly as `warp::serve` would.
//! The cap and the write deadline live in the socket itself ([`ClientSocket`]), so they
//! hold for every response, streams included, and for a WebSocket after its upgrade
//! (hyper hands the upgraded session the same socket).

use std::future::Future as _;
use std::io;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::filters::BoxedFilter;
use warp::reply::Response;

/// What one connection may hold and take.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Connections open at once; beyond, new ones get a 503 and are closed.
    pub max_connections: usize,
    /// Time to send a request's headers, counted from the connection's start (or the end
    /// of the previous response): also the idle timeout of keep-alive connections.
    pub header_timeout: Duration,
    /// How long a client may take no response bytes while some wait to be written;
    /// then the connection is closed (a subscriber resumes with its cursor).
    pub write_timeout: Duration,
}

/// Written (without waiting) to a connection over the cap, then it is closed.
const TOO_MANY_CONNECTIONS_BODY: &str = r#"{"error":"too_many_connections","message":"the service has too many open connections; retry later"}"#;

/// Serves `routes` on `listener` until `shutdown`; then lets open connections finish
/// their current exchange (SSE streams end through their subscriptions).
pub async fn serve(
    listener: TcpListener,
    routes: BoxedFilter<(Response,)>,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, mostly: wait rather than spin.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = open.clone().try_acquire_owned() else {
            refuse(stream);
            continue;
        };
        let service = TowerToHyperService::new(warp::service(routes.clone()));
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _ = stream.set_nodelay(true);
            let stream = ClientSocket::new(stream, slot, limits.write_timeout);
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let mut connection = pin!(http
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades());
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Tells a client over the cap why, if its socket takes the bytes at once, and closes.
fn refuse(stream: TcpStream) {
    tracing::debug!("connection refused: too many open connections");
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         connection: close\r\nretry-after: 1\r\ncontent-length: {}\r\n\r\n{}",
        TOO_MANY_CONNECTIONS_BODY.len(),
        TOO_MANY_CONNECTIONS_BODY
    );
    let _ = stream.try_write(response.as_bytes());
}

/// An accepted socket, holding its place under the connection cap for as long as it is
/// open (through a WebSocket upgrade too), whose writes fail with `TimedOut` once the
/// client has taken no bytes for the write timeout: whoever writes (hyper, a stream's
/// body, a WebSocket) then closes the connection and frees what it held.
struct ClientSocket {
    stream: TcpStream,
    write_timeout: Duration,
    /// Armed while a write waits for the client; fires at the write deadline.
    stall: Pin<Box<Sleep>>,
    /// Whether the last write waited (`stall` then counts from that write's first wait).
    stalled: bool,
    _slot: OwnedSemaphorePermit,
}

impl ClientSocket {
    fn new(stream: TcpStream, slot: OwnedSemaphorePermit, write_timeout: Duration) -> Self {
        ClientSocket {
            stream,
            write_timeout,
            stall: Box::pin(tokio::time::sleep(write_timeout)),
            stalled: false,
            _slot: slot,
        }
    }

    /// Passes a write's outcome on; a wait longer than the write timeout becomes an error.
    fn timed(
        &mut self,
        cx: &mut Context<'_>,
        write: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if write.is_ready() {
            self.stalled = false;
            return write;
        }
        if !self.stalled {
            self.stalled = true;
            let deadline = Instant::now() + self.write_timeout;
            self.stall.as_mut().reset(deadline);
        }
        match self.stall.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took no response bytes within the write timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for ClientSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let write = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.timed(cx, write)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let write = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.timed(cx, write)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    // A TCP socket buffers nothing of its own to flush, and shuts down at once: neither
    // waits for the client, nor proves that it took anything.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
