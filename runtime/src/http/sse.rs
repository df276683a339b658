//! `GET /system/events`: supervisor events as Server-Sent Events.
//!
//! A forwarding task turns the event bus into SSE frames on a bounded channel, which the
//! response body drains: the task notices a gone client when the channel closes, sends a
//! keep-alive comment every 15 s (so proxies and clients see a live stream), and ends the
//! stream when the server shuts down.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body::Frame;
use tokio::sync::{broadcast, mpsc, watch};

use super::response::{ResponseBody, boxed};
use crate::supervisor::Supervisor;
use crate::supervisor::events::Event;

const KEEPALIVE: Duration = Duration::from_secs(15);

/// The SSE response. `last_event_id` (from the `Last-Event-ID` header) replays
/// remembered events after it; without it, the stream starts with a `snapshot` of every
/// sidecar's status.
pub fn events_response(
    supervisor: &Supervisor,
    last_event_id: Option<u64>,
    mut shutdown: watch::Receiver<bool>,
) -> Response<ResponseBody> {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let (past, mut live) = supervisor
        .events()
        .subscribe_since(last_event_id.unwrap_or(u64::MAX));
    let mut opening = String::from("retry: 2000\n\n");
    if last_event_id.is_none() {
        let snapshot = super::model::Snapshot {
            sidecars: supervisor.statuses(),
        };
        let snapshot = serde_json::to_string(&snapshot).unwrap_or_default();
        opening.push_str(&format!("event: snapshot\ndata: {snapshot}\n\n"));
    }
    let past: Vec<Bytes> = past.iter().map(frame).collect();
    tokio::spawn(async move {
        if tx.send(Bytes::from(opening)).await.is_err() {
            return;
        }
        for bytes in past {
            if tx.send(bytes).await.is_err() {
                return;
            }
        }
        let mut keepalive =
            tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
        loop {
            let bytes = tokio::select! {
                event = live.recv() => match event {
                    Ok(event) => frame(&event),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        let lagged = serde_json::to_string(&super::model::Lagged { missed })
                            .unwrap_or_default();
                        Bytes::from(format!("event: lagged\ndata: {lagged}\n\n"))
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = keepalive.tick() => Bytes::from_static(b": keepalive\n\n"),
                _ = tx.closed() => return,
                _ = super::stopping(&mut shutdown) => return,
            };
            if tx.send(bytes).await.is_err() {
                return;
            }
        }
    });
    let mut response = Response::new(boxed(ChannelBody { rx }));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

fn frame(event: &Event) -> Bytes {
    let data = serde_json::to_string(event).unwrap_or_default();
    Bytes::from(format!(
        "id: {}\nevent: {}\ndata: {data}\n\n",
        event.seq,
        event.kind.name()
    ))
}

/// A body that yields what a channel receives, and ends when every sender is gone.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|bytes| bytes.map(|b| Ok(Frame::data(b))))
    }
}
