//! `GET /system/events`: supervisor events as Server-Sent Events.
//!
//! A forwarding task turns the event bus into SSE frames on a bounded channel, which the
//! response body drains: the task notices a gone client when the channel closes, and sends
//! a keep-alive comment every 15 s (so proxies and clients see a live stream). Where the
//! stream starts (a replay, or a `lagged` frame and a snapshot) is the bus's decision
//! ([`EventBus::subscribe_from`]); this module writes the frames. The stream ends after the
//! server's last event (`stopped` of `server`, published once the sidecars have stopped),
//! never before it: a client then knows the stop was deliberate. The body holds an
//! [`OpenStream`] until its end, which the shutdown waits for (bounded).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body::Frame;
use tokio::sync::{broadcast, mpsc};

use super::model::{Lagged, Snapshot};
use super::response::{ResponseBody, boxed};
use crate::supervisor::events::{Event, EventBus, OpenStream, Subscription};
use crate::supervisor::{SidecarStatus, Supervisor};

const KEEPALIVE: Duration = Duration::from_secs(15);

/// The `retry:` every stream opens with: how long an `EventSource` waits before it
/// reconnects (with `Last-Event-ID`).
const RETRY: &str = "retry: 2000\n\n";

/// The SSE response. `last_event_id` is the client's `Last-Event-ID` (trimmed, `None` when
/// absent or empty).
pub fn events_response(
    supervisor: &Supervisor,
    last_event_id: Option<&str>,
) -> Response<ResponseBody> {
    let supervisor = supervisor.clone();
    let bus = supervisor.events().clone();
    stream(bus, last_event_id, move || supervisor.statuses())
}

/// The stream of `bus`, with snapshots of what `statuses` returns.
fn stream(
    bus: Arc<EventBus>,
    last_event_id: Option<&str>,
    statuses: impl Fn() -> Vec<SidecarStatus> + Send + Sync + 'static,
) -> Response<ResponseBody> {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let subscription = bus.subscribe_from(last_event_id);
    let open = bus.open_stream();
    tokio::spawn(forward(bus, subscription, statuses, tx));
    let mut response = Response::new(boxed(ChannelBody { rx, _open: open }));
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

/// The client is gone.
struct Gone;

/// How following the live events ended.
enum Followed {
    /// The stream is over (the last event was sent, or the client left).
    End,
    /// The reader fell too far behind: start over from a snapshot.
    Lagged,
}

async fn forward(
    bus: Arc<EventBus>,
    mut subscription: Subscription,
    statuses: impl Fn() -> Vec<SidecarStatus> + Sync,
    tx: mpsc::Sender<Bytes>,
) {
    if send(&tx, Bytes::from_static(RETRY.as_bytes()))
        .await
        .is_err()
    {
        return;
    }
    let mut keepalive =
        tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    loop {
        if open(&bus, &subscription, &statuses, &tx).await.is_err() || subscription.ended {
            return;
        }
        let mut position = subscription.position;
        match follow(
            &bus,
            &mut subscription.live,
            &tx,
            &mut keepalive,
            &mut position,
        )
        .await
        {
            Followed::End => return,
            Followed::Lagged => subscription = bus.subscribe_after_lag(position),
        }
    }
}

/// Sends a subscription's opening: the `lagged` frame, the snapshot, the remembered events.
async fn open(
    bus: &EventBus,
    subscription: &Subscription,
    statuses: &impl Fn() -> Vec<SidecarStatus>,
    tx: &mpsc::Sender<Bytes>,
) -> Result<(), Gone> {
    if let Some(lag) = subscription.lag {
        let data = json(&Lagged {
            reason: lag.reason,
            missed: lag.missed,
        });
        send(tx, Bytes::from(format!("event: lagged\ndata: {data}\n\n"))).await?;
    }
    if let Some(seq) = subscription.snapshot_at {
        let data = json(&Snapshot {
            epoch: bus.epoch().to_string(),
            seq,
            sidecars: statuses(),
        });
        let id = bus.event_id(seq);
        send(
            tx,
            Bytes::from(format!("id: {id}\nevent: snapshot\ndata: {data}\n\n")),
        )
        .await?;
    }
    for event in &subscription.past {
        send(tx, frame(bus, event)).await?;
    }
    Ok(())
}

/// Forwards live events after `position` (updating it) until the last event is sent, the
/// client leaves, or the reader lags.
async fn follow(
    bus: &EventBus,
    live: &mut broadcast::Receiver<Event>,
    tx: &mpsc::Sender<Bytes>,
    keepalive: &mut tokio::time::Interval,
    position: &mut u64,
) -> Followed {
    loop {
        let bytes = tokio::select! {
            event = live.recv() => match event {
                // (Never happens: the opening and the receiver were taken under one lock.)
                Ok(event) if event.seq <= *position => continue,
                Ok(event) => {
                    *position = event.seq;
                    let bytes = frame(bus, &event);
                    if event.is_last() {
                        let _ = send(tx, bytes).await;
                        return Followed::End;
                    }
                    bytes
                }
                Err(broadcast::error::RecvError::Lagged(_)) => return Followed::Lagged,
                Err(broadcast::error::RecvError::Closed) => return Followed::End,
            },
            _ = keepalive.tick() => Bytes::from_static(b": keepalive\n\n"),
            _ = tx.closed() => return Followed::End,
        };
        if send(tx, bytes).await.is_err() {
            return Followed::End;
        }
    }
}

async fn send(tx: &mpsc::Sender<Bytes>, bytes: Bytes) -> Result<(), Gone> {
    tx.send(bytes).await.map_err(|_| Gone)
}

fn json<T: serde::Serialize>(value: &T) -> String {
    // Plain data: serialising cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

fn frame(bus: &EventBus, event: &Event) -> Bytes {
    Bytes::from(format!(
        "id: {}\nevent: {}\ndata: {}\n\n",
        bus.event_id(event.seq),
        event.kind.name(),
        json(event)
    ))
}

/// A body that yields what a channel receives, and ends when every sender is gone. It
/// holds its stream's [`OpenStream`] until hyper drops it at its end (or with its
/// connection).
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
    _open: OpenStream,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::events::EventKind;
    use http_body_util::BodyExt;

    /// The frames of a body: each `(event, id, data as JSON)`; comments and `retry:` as
    /// `("", None, Null)`.
    struct Frames {
        body: ResponseBody,
        buffer: String,
    }

    impl Frames {
        fn new(response: Response<ResponseBody>) -> Frames {
            Frames {
                body: response.into_body(),
                buffer: String::new(),
            }
        }

        /// The next frame with data; `None` at the end of the body.
        async fn next(&mut self) -> Option<(String, Option<String>, serde_json::Value)> {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let text: String = self.buffer.drain(..end + 2).collect();
                    let (mut name, mut id, mut data) = (String::new(), None, None);
                    for line in text.lines() {
                        if let Some(v) = line.strip_prefix("event: ") {
                            name = v.to_string();
                        } else if let Some(v) = line.strip_prefix("id: ") {
                            id = Some(v.to_string());
                        } else if let Some(v) = line.strip_prefix("data: ") {
                            data = Some(serde_json::from_str(v).unwrap());
                        }
                    }
                    if let Some(data) = data {
                        return Some((name, id, data));
                    }
                    continue;
                }
                let frame = self.body.frame().await?.unwrap();
                let bytes = frame.into_data().unwrap();
                self.buffer.push_str(std::str::from_utf8(&bytes).unwrap());
            }
        }
    }

    /// Every frame until the body ends, as `event:sidecar` (`-` for a snapshot's).
    async fn read_all(frames: &mut Frames) -> Vec<String> {
        let mut all = Vec::new();
        while let Some((name, _, data)) = frames.next().await {
            all.push(format!(
                "{name}:{}",
                data["sidecar"].as_str().unwrap_or("-")
            ));
        }
        all
    }

    fn bus() -> Arc<EventBus> {
        Arc::new(EventBus::with_epoch("0123456789abcdef".into()))
    }

    #[tokio::test]
    async fn a_slow_reader_gets_lagged_then_a_fresh_snapshot_then_live_events() {
        let bus = bus();
        bus.publish("opencode", EventKind::RestartRequested);
        let mut frames = Frames::new(stream(bus.clone(), None, Vec::new));
        // More than the live channel holds, before the stream's task has read any.
        let burst = crate::supervisor::events::HISTORY as u64 + 50;
        for _ in 0..burst {
            bus.publish("opencode", EventKind::RestartRequested);
        }
        let (name, id, data) = frames.next().await.unwrap();
        assert_eq!(
            (name.as_str(), id.as_deref()),
            ("snapshot", Some("0123456789abcdef-1"))
        );
        assert_eq!(
            (data["epoch"].as_str(), data["seq"].as_u64()),
            (Some(bus.epoch()), Some(1))
        );
        let (name, id, data) = frames.next().await.unwrap();
        assert_eq!((name.as_str(), id), ("lagged", None));
        assert_eq!(data, serde_json::json!({"reason": "slow", "missed": burst}));
        let (name, id, data) = frames.next().await.unwrap();
        let head = 1 + burst;
        assert_eq!(name, "snapshot");
        assert_eq!(id, Some(bus.event_id(head)));
        assert_eq!(data["seq"], head);
        // Live again.
        bus.publish("server", EventKind::ShuttingDown);
        let (name, id, _) = frames.next().await.unwrap();
        assert_eq!(
            (name.as_str(), id),
            ("shuttingDown", Some(bus.event_id(head + 1)))
        );
    }

    #[tokio::test]
    async fn every_stream_forwards_the_last_event_and_then_ends() {
        let bus = bus();
        bus.publish(
            "opencode",
            EventKind::Ready {
                pid: 7,
                startup_ms: 1,
            },
        );
        let mut fresh = Frames::new(stream(bus.clone(), None, Vec::new));
        let mut resumed = Frames::new(stream(bus.clone(), Some(&bus.event_id(0)), Vec::new));
        bus.publish("server", EventKind::ShuttingDown);
        bus.publish("opencode", EventKind::Stopped);
        bus.close();
        assert_eq!(
            read_all(&mut fresh).await,
            [
                "snapshot:-",
                "shuttingDown:server",
                "stopped:opencode",
                "stopped:server"
            ]
        );
        assert_eq!(
            read_all(&mut resumed).await,
            [
                "ready:opencode",
                "shuttingDown:server",
                "stopped:opencode",
                "stopped:server"
            ]
        );
        // A stream opened after the last event: the snapshot, the last event, the end.
        let mut late = Frames::new(stream(bus.clone(), None, Vec::new));
        assert_eq!(read_all(&mut late).await, ["snapshot:-", "stopped:server"]);
        // Every body has ended and been dropped: nothing holds the shutdown.
        drop((fresh, resumed, late));
        tokio::time::timeout(Duration::from_secs(1), bus.streams_closed())
            .await
            .expect("no stream is open");
    }

    #[tokio::test]
    async fn a_stream_whose_client_left_is_no_longer_open() {
        let bus = bus();
        let response = stream(bus.clone(), None, Vec::new);
        let waiting = bus.streams_closed();
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), &mut waiting)
                .await
                .is_err(),
            "the stream is open"
        );
        drop(response);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("closed with its body");
    }
}
