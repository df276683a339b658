//! The accept loop and per-connection settings: HTTP/1.1 with upgrades, a bounded
//! request head, and a time limit for reading it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::api::{AppState, handle};

/// The largest request head (request line + headers) accepted; a bigger one is refused.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// A client must send its request head within this time.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts connections until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = super::stopping(&mut shutdown) => return,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(serve_connection(stream, peer, state));
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, peer: SocketAddr, state: Arc<AppState>) {
    let service = service_fn(move |request| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(request, state, peer).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD_BYTES)
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
}
