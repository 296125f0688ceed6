//! The accept loop both HTTP listeners share: a bound on open connections, HTTP/1.1
//! keep-alive, and a graceful drain on shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::body::Body;

/// Serves `handler` on `listener` until `shutdown` fires, then stops accepting and
/// waits up to `drain` for open connections to finish their requests.
pub async fn serve<H, F>(
    name: &'static str,
    listener: TcpListener,
    handler: H,
    max_connections: usize,
    shutdown: CancellationToken,
    drain: Duration,
) where
    H: Fn(hyper::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = hyper::Response<Body>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    loop {
        // Both branches are cancel-safe: `accept` loses nothing when dropped, and a
        // dropped semaphore acquire only gives up its place in line.
        let (permit, stream) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = async {
                let permit = slots.clone().acquire_owned().await;
                (permit, listener.accept().await)
            } => match accepted {
                (Ok(permit), Ok((stream, _))) => (permit, stream),
                (_, Err(e)) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                (Err(_), _) => break,
            },
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = hyper::service::service_fn(move |req| {
            let fut = handler(req);
            async move { Ok::<_, Infallible>(fut.await) }
        });
        let conn = http1::Builder::new()
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(listener = name, error = %e, "connection ended with error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(drain) => {
            tracing::warn!(listener = name, "drain timeout: closing remaining connections");
        }
    }
}
