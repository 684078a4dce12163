//! Accepting connections: HTTP/1.1 with a deadline for request headers and a cap on open
//! connections, so half-open or trickling clients (slowloris) cannot exhaust the process.
//!
//! `warp::serve` offers neither, so the accept loop is ours; each connection is served by
//! hyper with warp's routes as the service, exactly as `warp::serve` would.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
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
        let Ok(permit) = open.clone().try_acquire_owned() else {
            refuse(stream);
            continue;
        };
        let service = TowerToHyperService::new(warp::service(routes.clone()));
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            let _ = stream.set_nodelay(true);
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
