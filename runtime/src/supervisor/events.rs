//! Supervisor events: what happened to which sidecar, numbered, for `GET /system/events`
//! (SSE) and the log. A short history is kept so a client that reconnects with
//! `Last-Event-ID` misses nothing that is still remembered.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::broadcast;

/// How many past events are remembered for reconnecting clients.
const HISTORY: usize = 256;

/// One event: the `data:` of every numbered frame of `GET /system/events`.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Increasing from 1 within one server process.
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
    /// Stopped on purpose (shutdown).
    Stopped,
    /// The server accepts requests and opencode is healthy (sidecar `server`).
    #[serde(rename_all = "camelCase")]
    ServerReady {
        /// The server's URL.
        url: String,
    },
    /// The server is shutting down (sidecar `server`).
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

/// Publishes events to live subscribers and keeps a short history.
pub struct EventBus {
    sender: broadcast::Sender<Event>,
    history: Mutex<(u64, VecDeque<Event>)>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            sender: broadcast::channel(HISTORY).0,
            history: Mutex::new((0, VecDeque::with_capacity(HISTORY))),
        }
    }
}

impl EventBus {
    /// Numbers, logs, remembers and broadcasts one event.
    pub fn publish(&self, sidecar: &str, kind: EventKind) -> Event {
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        history.0 += 1;
        let event = Event {
            seq: history.0,
            at_ms: unix_ms(),
            sidecar: sidecar.to_string(),
            kind,
        };
        if history.1.len() == HISTORY {
            history.1.pop_front();
        }
        history.1.push_back(event.clone());
        // Sent under the lock, so subscribe_since never sees an event twice or misses one.
        let _ = self.sender.send(event.clone());
        drop(history);
        tracing::info!(
            sidecar = %event.sidecar,
            event = event.kind.name(),
            details = %serde_json::to_string(&event.kind).unwrap_or_default(),
            "supervisor"
        );
        event
    }

    /// Remembered events after `seq` (all remembered ones for 0), and a receiver for the
    /// ones after those.
    pub fn subscribe_since(&self, seq: u64) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let past = history.1.iter().filter(|e| e.seq > seq).cloned().collect();
        (past, self.sender.subscribe())
    }

    /// A receiver for future events only.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }
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

    #[test]
    fn events_are_numbered_remembered_and_replayed_after_a_seq() {
        let bus = EventBus::default();
        bus.publish("opencode", EventKind::RestartRequested);
        bus.publish("opencode", EventKind::Stopped);
        let (past, mut live) = bus.subscribe_since(1);
        assert_eq!(past.len(), 1);
        assert_eq!(past[0].seq, 2);
        bus.publish("server", EventKind::ShuttingDown);
        let next = live.try_recv().unwrap();
        assert_eq!(next.seq, 3);
        let json = serde_json::to_value(&next).unwrap();
        assert_eq!(json["event"], "shuttingDown");
        assert_eq!(json["sidecar"], "server");
    }

    #[test]
    fn history_is_bounded() {
        let bus = EventBus::default();
        for _ in 0..(HISTORY + 10) {
            bus.publish("opencode", EventKind::Stopped);
        }
        let (past, _) = bus.subscribe_since(0);
        assert_eq!(past.len(), HISTORY);
        assert_eq!(past[0].seq, 11);
    }
}
