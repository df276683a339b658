//! Supervisor events: what happened to which sidecar, numbered, for `GET /system/events`
//! (SSE) and the log.
//!
//! What a client can rely on, and how this module keeps it:
//!
//! - **Ids that name one server process.** Every server process draws an *epoch* (16 random
//!   hex digits) at start, and an event's SSE id is `<epoch>-<seq>`. A `Last-Event-ID` from
//!   another process (another epoch, or the bare numbers of servers before epochs) can then
//!   never be taken for a position in this one: seq 4 of this process is not seq 4 of the
//!   last. The epoch is random rather than a start time because a clock can repeat (two
//!   starts within its resolution, a clock set back, a restored VM snapshot); 64 random bits
//!   do not, for any number of restarts a machine will ever see.
//! - **A window, and saying when it is exceeded.** The last [`HISTORY`] events are kept. A
//!   client that resumes within them gets exactly the events it missed; one that resumes
//!   from further back, from another process, or from an id this process never gave, gets a
//!   `lagged` frame saying why (and how many it missed, where that is known) and a fresh
//!   snapshot instead: never a silent gap. A reader too slow for the live channel gets the
//!   same ([`EventBus::subscribe_after_lag`]).
//! - **A last event.** At shutdown, after the sidecars have stopped, [`EventBus::close`]
//!   publishes `stopped` for sidecar `server`: every stream forwards it and then ends, so a
//!   client can tell a deliberate stop from a dropped connection. The server waits (bounded)
//!   for the open streams ([`EventBus::streams_closed`]) before it exits.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::{broadcast, watch};

/// How many past events are remembered for reconnecting clients (and how far the live
/// channel lets a reader fall behind before it counts as slow).
pub const HISTORY: usize = 256;

/// The sidecar name of the server's own events.
pub const SERVER: &str = "server";

/// One event: the `data:` of every numbered frame of `GET /system/events`.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Increasing from 1 within one server process (the frame's `id:` is `<epoch>-<seq>`).
    pub seq: u64,
    /// Unix time in milliseconds.
    pub at_ms: u64,
    /// The sidecar (`opencode`, `opencode-router`), or `server`.
    pub sidecar: String,
    /// What happened, with its details.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened; `event` names it, as the SSE `event:` field does.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "event", rename_all = "camelCase")]
pub enum EventKind {
    /// A process was started; it picks its own port and announces it.
    #[serde(rename_all = "camelCase")]
    Starting {
        /// Its pid.
        pid: u32,
    },
    /// The process announced the loopback port it listens on (opencode) or reports health on
    /// (router); readiness checks go there.
    #[serde(rename_all = "camelCase")]
    Listening {
        /// Its pid.
        pid: u32,
        /// The port.
        port: u16,
    },
    /// The health check passed for the first time since the start.
    #[serde(rename_all = "camelCase")]
    Ready {
        /// Its pid.
        pid: u32,
        /// Milliseconds from spawn to healthy.
        startup_ms: u64,
    },
    /// The process ended (or was found unhealthy and stopped).
    #[serde(rename_all = "camelCase")]
    Exited {
        /// Its pid.
        pid: Option<u32>,
        /// Exit code, if it exited.
        code: Option<i32>,
        /// Signal, if it was killed by one (unix).
        signal: Option<i32>,
        /// Why, in words.
        reason: String,
    },
    /// A restart is scheduled.
    #[serde(rename_all = "camelCase")]
    Restarting {
        /// After this many milliseconds.
        delay_ms: u64,
        /// Consecutive failures so far.
        attempt: u32,
    },
    /// The crash-loop limit was hit: no more restarts until one is asked for.
    #[serde(rename_all = "camelCase")]
    Failed {
        /// Failures within the window.
        failures: usize,
        /// The last failure's reason.
        reason: String,
    },
    /// A restart was asked for over the API.
    RestartRequested,
    /// Stopped on purpose (shutdown). With sidecar `server`, the last event of the server
    /// process: every stream ends after it.
    Stopped,
    /// The server accepts requests and opencode is healthy (sidecar `server`).
    #[serde(rename_all = "camelCase")]
    ServerReady {
        /// The server's URL.
        url: String,
    },
    /// The server is shutting down (sidecar `server`): the sidecars' `stopped` events and
    /// the server's own `stopped` follow.
    ShuttingDown,
    /// The active workspace was switched (sidecar `server`): opencode serves the new
    /// directory from the next request on; the router is restarted in it.
    #[serde(rename_all = "camelCase")]
    WorkspaceChanged {
        /// The new workspace's id.
        id: String,
        /// Its name.
        name: String,
        /// Its directory.
        directory: String,
    },
}

impl EventKind {
    /// The event's name, as in the SSE `event:` field.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Starting { .. } => "starting",
            EventKind::Listening { .. } => "listening",
            EventKind::Ready { .. } => "ready",
            EventKind::Exited { .. } => "exited",
            EventKind::Restarting { .. } => "restarting",
            EventKind::Failed { .. } => "failed",
            EventKind::RestartRequested => "restartRequested",
            EventKind::Stopped => "stopped",
            EventKind::ServerReady { .. } => "serverReady",
            EventKind::ShuttingDown => "shuttingDown",
            EventKind::WorkspaceChanged { .. } => "workspaceChanged",
        }
    }
}

impl Event {
    /// Whether this is the server process's last event (`stopped` of `server`), after which
    /// every stream ends.
    pub fn is_last(&self) -> bool {
        self.sidecar == SERVER && matches!(self.kind, EventKind::Stopped)
    }
}

/// Why a stream could not continue from where the client was, and starts over with a
/// snapshot (the `reason` of a `lagged` frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub enum LagReason {
    /// The `Last-Event-ID` is from another server process (another epoch, or a bare number
    /// from a server before epochs): this one's events are not a continuation of those.
    Restarted,
    /// The `Last-Event-ID` is from this process but older than the remembered events.
    Window,
    /// The reader fell more than the remembered events behind the live stream.
    Slow,
    /// The `Last-Event-ID` is no id this process gave (not `<epoch>-<seq>`, or a seq it has
    /// not reached).
    Invalid,
}

/// A stream that starts over: why, and how many events the client will not get (the events
/// after its position up to the snapshot that follows). Unknown (`None`) when the client's
/// position is not one of this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lag {
    /// Why.
    pub reason: LagReason,
    /// How many events the snapshot stands in for.
    pub missed: Option<u64>,
}

/// Where a new (or restarted) stream begins, and the events that follow.
#[derive(Debug)]
pub struct Subscription {
    /// Why the client's position could not be continued, if it could not: a `lagged` frame
    /// goes first.
    pub lag: Option<Lag>,
    /// A snapshot goes next, standing for every event up to this seq; `None` for a replay
    /// (the client's position was continued: no snapshot).
    pub snapshot_at: Option<u64>,
    /// Remembered events to send next, in order.
    pub past: Vec<Event>,
    /// The seq the client holds once the above are sent.
    pub position: u64,
    /// The server's last event is already among `past` (or was before the client's
    /// position): the stream ends after `past`.
    pub ended: bool,
    /// The events after `past`, as they are published.
    pub live: broadcast::Receiver<Event>,
}

/// Held by an open event stream until its last byte has been handed to its connection:
/// [`EventBus::streams_closed`] waits for every one.
#[derive(Debug)]
pub struct OpenStream {
    _held: watch::Receiver<()>,
}

/// Publishes events to live subscribers and keeps a short history.
pub struct EventBus {
    epoch: String,
    sender: broadcast::Sender<Event>,
    state: Mutex<State>,
    /// Every [`OpenStream`] holds a receiver: the sender's `closed()` is "no stream open".
    streams: watch::Sender<()>,
}

struct State {
    /// The last seq given.
    seq: u64,
    history: VecDeque<Event>,
    /// Set by [`EventBus::close`]: nothing is numbered or sent after the last event.
    closed: bool,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::with_epoch(format!("{:016x}", rand::random::<u64>()))
    }
}

impl EventBus {
    /// A bus whose ids carry `epoch` (16 lowercase hex digits; [`Default`] draws a random
    /// one, which is what a server uses).
    pub fn with_epoch(epoch: String) -> EventBus {
        debug_assert!(is_epoch(&epoch), "{epoch}");
        EventBus {
            epoch,
            sender: broadcast::channel(HISTORY).0,
            state: Mutex::new(State {
                seq: 0,
                history: VecDeque::with_capacity(HISTORY),
                closed: false,
            }),
            streams: watch::channel(()).0,
        }
    }

    /// This server process's epoch: the first part of every event id.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The SSE id of the event numbered `seq`: `<epoch>-<seq>`.
    pub fn event_id(&self, seq: u64) -> String {
        format!("{}-{seq}", self.epoch)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Numbers, logs, remembers and broadcasts one event. After [`EventBus::close`] an event
    /// is only logged: the streams have ended with the last one.
    pub fn publish(&self, sidecar: &str, kind: EventKind) {
        self.publish_inner(sidecar, kind, false);
    }

    /// Publishes the server process's last event (`stopped` of `server`): every stream
    /// forwards it and ends, and a stream opened later gets it after its snapshot and ends.
    /// Called once the sidecars have stopped.
    pub fn close(&self) {
        self.publish_inner(SERVER, EventKind::Stopped, true);
    }

    fn publish_inner(&self, sidecar: &str, kind: EventKind, last: bool) {
        let mut state = self.state();
        let closed = state.closed;
        let event = if closed {
            None
        } else {
            state.seq += 1;
            state.closed = last;
            let event = Event {
                seq: state.seq,
                at_ms: unix_ms(),
                sidecar: sidecar.to_string(),
                kind,
            };
            if state.history.len() == HISTORY {
                state.history.pop_front();
            }
            state.history.push_back(event.clone());
            // Sent under the lock, so a subscriber never sees an event twice or misses one.
            let _ = self.sender.send(event.clone());
            Some(event)
        };
        drop(state);
        match event {
            Some(event) => tracing::info!(
                sidecar = %event.sidecar,
                event = event.kind.name(),
                seq = event.seq,
                details = %serde_json::to_string(&event.kind).unwrap_or_default(),
                "supervisor"
            ),
            None => tracing::debug!(sidecar, "event after the server's last one: logged only"),
        }
    }

    /// A new stream's start, from the client's `Last-Event-ID` (trimmed; `None` when it sent
    /// none): the remembered events after it when it is a position of this process within
    /// the window; otherwise a snapshot, after a `lagged` frame when the client had a
    /// position that cannot be continued.
    pub fn subscribe_from(&self, last_event_id: Option<&str>) -> Subscription {
        let state = self.state();
        let Some(text) = last_event_id else {
            return self.snapshot(&state, None);
        };
        let seq = match self.parse_event_id(text) {
            Ok(seq) if seq <= state.seq => seq,
            Ok(_) => {
                let lag = Lag {
                    reason: LagReason::Invalid,
                    missed: None,
                };
                return self.snapshot(&state, Some(lag));
            }
            Err(reason) => {
                let lag = Lag {
                    reason,
                    missed: None,
                };
                return self.snapshot(&state, Some(lag));
            }
        };
        let oldest = state.history.front().map_or(state.seq + 1, |e| e.seq);
        if seq + 1 < oldest {
            let lag = Lag {
                reason: LagReason::Window,
                missed: Some(state.seq - seq),
            };
            return self.snapshot(&state, Some(lag));
        }
        let past: Vec<Event> = state
            .history
            .iter()
            .filter(|e| e.seq > seq)
            .cloned()
            .collect();
        Subscription {
            lag: None,
            snapshot_at: None,
            position: past.last().map_or(seq, |e| e.seq),
            ended: state.closed,
            past,
            live: self.sender.subscribe(),
        }
    }

    /// A stream whose reader fell behind the live channel starts over: a `lagged` frame
    /// (`slow`, with how many events after `position` it will not get) and a snapshot.
    pub fn subscribe_after_lag(&self, position: u64) -> Subscription {
        let state = self.state();
        let at = snapshot_seq(&state);
        let lag = Lag {
            reason: LagReason::Slow,
            missed: Some(at.saturating_sub(position)),
        };
        self.snapshot(&state, Some(lag))
    }

    /// A snapshot start at the newest event; once the bus is closed, just before the last
    /// event, which then follows the snapshot (it changes no sidecar's state, and a client
    /// must see it to know the stop was deliberate).
    fn snapshot(&self, state: &State, lag: Option<Lag>) -> Subscription {
        let at = snapshot_seq(state);
        let past: Vec<Event> = state
            .history
            .iter()
            .filter(|e| e.seq > at)
            .cloned()
            .collect();
        Subscription {
            lag,
            snapshot_at: Some(at),
            position: state.seq,
            ended: state.closed,
            past,
            live: self.sender.subscribe(),
        }
    }

    /// The seq in a `<epoch>-<seq>` id of this process; else why it is not one.
    fn parse_event_id(&self, text: &str) -> Result<u64, LagReason> {
        match text.split_once('-') {
            Some((epoch, seq)) => {
                let seq: u64 = parse_digits(seq).ok_or(LagReason::Invalid)?;
                if !is_epoch(epoch) {
                    Err(LagReason::Invalid)
                } else if epoch != self.epoch {
                    Err(LagReason::Restarted)
                } else {
                    Ok(seq)
                }
            }
            // The ids of servers before epochs: a position in some earlier process.
            None if parse_digits(text).is_some() => Err(LagReason::Restarted),
            None => Err(LagReason::Invalid),
        }
    }

    /// A receiver for future events only.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }

    /// Registers an open stream, until the returned value is dropped.
    pub fn open_stream(&self) -> OpenStream {
        OpenStream {
            _held: self.streams.subscribe(),
        }
    }

    /// Resolves once no [`OpenStream`] is held (at once if none is).
    pub async fn streams_closed(&self) {
        self.streams.closed().await;
    }
}

/// Where a snapshot stands: the newest event, or the one before the last event once the
/// bus is closed (see `EventBus::snapshot`).
fn snapshot_seq(state: &State) -> u64 {
    if state.closed {
        state.seq - 1
    } else {
        state.seq
    }
}

/// 16 lowercase hex digits.
fn is_epoch(text: &str) -> bool {
    text.len() == 16 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A whole number written with ASCII digits only (no sign, no spaces).
fn parse_digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Unix time in milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(events: &[Event]) -> Vec<u64> {
        events.iter().map(|e| e.seq).collect()
    }

    fn bus_with(events: usize) -> EventBus {
        let bus = EventBus::with_epoch("00112233445566aa".into());
        for _ in 0..events {
            bus.publish("opencode", EventKind::RestartRequested);
        }
        bus
    }

    #[test]
    fn events_are_numbered_remembered_and_replayed_after_an_id_of_this_process() {
        let bus = bus_with(2);
        let resumed = bus.subscribe_from(Some(&bus.event_id(1)));
        assert_eq!(resumed.lag, None);
        assert_eq!(resumed.snapshot_at, None, "a replay has no snapshot");
        assert_eq!(seqs(&resumed.past), [2]);
        assert_eq!(resumed.position, 2);
        let mut live = resumed.live;
        bus.publish(SERVER, EventKind::ShuttingDown);
        let next = live.try_recv().unwrap();
        assert_eq!(next.seq, 3);
        let json = serde_json::to_value(&next).unwrap();
        assert_eq!(json["event"], "shuttingDown");
        assert_eq!(json["sidecar"], "server");
        // Up to date: nothing to replay, still no snapshot.
        let current = bus.subscribe_from(Some(&bus.event_id(3)));
        assert_eq!((current.lag, current.snapshot_at), (None, None));
        assert!(current.past.is_empty());
        assert_eq!(current.position, 3);
        // Without an id: a snapshot at the newest event.
        let fresh = bus.subscribe_from(None);
        assert_eq!((fresh.lag, fresh.snapshot_at), (None, Some(3)));
        assert!(fresh.past.is_empty());
    }

    #[test]
    fn an_id_from_another_process_or_none_of_ours_starts_over_with_the_reason() {
        let bus = bus_with(5);
        let lag_of = |id: &str| {
            let subscription = bus.subscribe_from(Some(id));
            assert_eq!(subscription.snapshot_at, Some(5), "{id}");
            assert!(subscription.past.is_empty(), "{id}");
            subscription.lag.unwrap_or_else(|| panic!("{id}: no lag"))
        };
        let restarted = Lag {
            reason: LagReason::Restarted,
            missed: None,
        };
        let invalid = Lag {
            reason: LagReason::Invalid,
            missed: None,
        };
        assert_eq!(lag_of("ffffffffffffffff-3"), restarted);
        assert_eq!(
            lag_of("10925"),
            restarted,
            "a bare number: a server before epochs"
        );
        assert_eq!(lag_of("3"), restarted);
        for garbage in [
            "",
            "abc",
            "00112233445566aa-",
            "00112233445566aa-x",
            "00112233445566aa--1",
            "00112233445566aa-+3",
            "00112233445566AA-3",
            "0011-3",
            "-3",
            "00112233445566aa-99999999999999999999999",
        ] {
            assert_eq!(lag_of(garbage), invalid, "{garbage:?}");
        }
        // A seq this process has not reached: no position of ours.
        assert_eq!(lag_of(&bus.event_id(6)), invalid);
    }

    #[test]
    fn an_id_older_than_the_window_says_how_many_were_missed() {
        let bus = bus_with(HISTORY + 10);
        let head = (HISTORY + 10) as u64;
        // The oldest remembered event is 11: after 10, nothing is missing.
        let within = bus.subscribe_from(Some(&bus.event_id(10)));
        assert_eq!(within.lag, None);
        assert_eq!(within.past.len(), HISTORY);
        assert_eq!(within.past[0].seq, 11);
        // After 9, event 10 is forgotten: a snapshot stands for the 266 - 9 events after it.
        let beyond = bus.subscribe_from(Some(&bus.event_id(9)));
        assert_eq!(
            beyond.lag,
            Some(Lag {
                reason: LagReason::Window,
                missed: Some(head - 9)
            })
        );
        assert_eq!(beyond.snapshot_at, Some(head));
        assert!(beyond.past.is_empty());
        let from_zero = bus.subscribe_from(Some(&bus.event_id(0)));
        assert_eq!(from_zero.lag.unwrap().missed, Some(head));
        // From the very start, while nothing is forgotten, everything is replayed.
        let young = bus_with(3);
        let all = young.subscribe_from(Some(&young.event_id(0)));
        assert_eq!((all.lag, seqs(&all.past)), (None, vec![1, 2, 3]));
    }

    #[test]
    fn a_slow_reader_starts_over_with_how_many_it_missed() {
        let bus = bus_with(40);
        let restarted = bus.subscribe_after_lag(12);
        assert_eq!(
            restarted.lag,
            Some(Lag {
                reason: LagReason::Slow,
                missed: Some(28)
            })
        );
        assert_eq!(restarted.snapshot_at, Some(40));
    }

    #[test]
    fn the_last_event_ends_every_stream_and_nothing_is_sent_after_it() {
        let bus = bus_with(3);
        let mut live = bus.subscribe();
        bus.close();
        let last = live.try_recv().unwrap();
        assert!(last.is_last());
        assert_eq!(last.seq, 4);
        bus.publish("opencode", EventKind::Stopped);
        assert!(live.try_recv().is_err(), "nothing after the last event");
        // A stream opened afterwards: a snapshot just before the last event, then it.
        let late = bus.subscribe_from(None);
        assert_eq!(late.snapshot_at, Some(3));
        assert_eq!(seqs(&late.past), [4]);
        assert!(late.ended);
        // Resuming before it replays up to it; resuming at it replays nothing; both end.
        let resumed = bus.subscribe_from(Some(&bus.event_id(2)));
        assert_eq!((seqs(&resumed.past), resumed.ended), (vec![3, 4], true));
        let at_end = bus.subscribe_from(Some(&bus.event_id(4)));
        assert!(at_end.past.is_empty() && at_end.ended);
        // Only the server's stopped is the last event.
        let sidecar_stopped = Event {
            seq: 1,
            at_ms: 0,
            sidecar: "opencode".into(),
            kind: EventKind::Stopped,
        };
        assert!(!sidecar_stopped.is_last());
    }

    #[test]
    fn history_is_bounded() {
        let bus = bus_with(HISTORY + 10);
        let (past, _) = {
            let s = bus.subscribe_from(Some(&bus.event_id(10)));
            (s.past, s.live)
        };
        assert_eq!(past.len(), HISTORY);
        assert_eq!(past[0].seq, 11);
    }

    #[tokio::test]
    async fn streams_closed_waits_for_every_open_stream() {
        let bus = EventBus::default();
        assert!(is_epoch(bus.epoch()), "{}", bus.epoch());
        assert_ne!(bus.epoch(), EventBus::default().epoch());
        bus.streams_closed().await;
        let first = bus.open_stream();
        let second = bus.open_stream();
        let waiting = bus.streams_closed();
        tokio::pin!(waiting);
        assert!(futures_poll(&mut waiting).is_pending());
        drop(first);
        assert!(futures_poll(&mut waiting).is_pending());
        drop(second);
        assert!(futures_poll(&mut waiting).is_ready());
    }

    /// Polls a future once.
    fn futures_poll<F: std::future::Future + Unpin>(future: &mut F) -> std::task::Poll<F::Output> {
        let waker = std::task::Waker::noop();
        let mut context = std::task::Context::from_waker(waker);
        std::pin::Pin::new(future).poll(&mut context)
    }
}
