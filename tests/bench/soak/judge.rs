//! The judge: from what the soak saw (requests, kills, events, streams, samples) to the
//! report's rows against the hardening issue's targets.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use super::load::{Answer, HANG, MIX, Request, SeenEvent, StreamRun};
use super::sampler::{SAMPLE_EVERY, Sample};
use super::settings::Settings;
use crate::measure::byte_stats;
use crate::report::{Quantity, Report, Row, Target as Goal};

/// The hardening issue's targets.
mod goals {
    use std::time::Duration;

    /// "Memory of the server process flat within a few MB": the median RSS of the last
    /// quarter of the soak over that of the first quarter.
    pub const RSS_GROWTH: u64 = 3_000_000;
    /// How soon a stream through the proxy must end after its opencode was killed.
    pub const STREAM_END: Duration = Duration::from_secs(5);
}

/// How long after the `ready` event a request may still have been refused: the event is
/// read here a moment after the supervisor marks opencode running.
pub(super) const WINDOW_GRACE: Duration = Duration::from_millis(250);

/// Everything the soak saw, for the report.
pub(super) struct Observed {
    pub(super) requests: Vec<Request>,
    pub(super) kills: Vec<Kill>,
    pub(super) events: Vec<SeenEvent>,
    pub(super) events_reconnects: usize,
    pub(super) streams: Vec<StreamRun>,
    pub(super) samples: Vec<Sample>,
    pub(super) after_warm_up: Sample,
    pub(super) at_end: Sample,
    pub(super) exit: String,
    pub(super) left_after_stop: Vec<String>,
    pub(super) started: Instant,
    pub(super) load_average: (Option<f64>, Option<f64>),
}

/// One SIGKILL of opencode.
#[derive(Debug, Clone)]
pub(super) struct Kill {
    pub(super) at: Instant,
    pub(super) pid: u32,
}

/// A kill and what `/system/events` said of it.
pub(super) struct Restart {
    pub(super) kill: Kill,
    /// The `exited` event of the killed pid, with signal 9.
    pub(super) exited: bool,
    /// When the next `ready` of opencode was read.
    pub(super) ready: Option<Instant>,
}

impl Observed {
    pub(super) fn opencode_events(&self, name: &str) -> impl Iterator<Item = &SeenEvent> {
        self.events
            .iter()
            .filter(move |e| e.name == name && e.data["sidecar"] == "opencode")
    }

    pub(super) fn restarts(&self) -> Vec<Restart> {
        self.kills
            .iter()
            .map(|kill| Restart {
                kill: kill.clone(),
                exited: self.opencode_events("exited").any(|e| {
                    e.data["pid"] == kill.pid
                        && e.data["signal"] == libc::SIGKILL
                        && e.at >= kill.at
                }),
                ready: self
                    .opencode_events("ready")
                    .find(|e| e.at > kill.at && e.data["pid"] != kill.pid)
                    .map(|e| e.at),
            })
            .collect()
    }

    /// Restart windows: from each kill until its `ready` was read, plus the grace (until
    /// the end of the soak if opencode never came back); and likewise from each exit of
    /// opencode that no kill caused (a failed liveness check under load, a crash) until
    /// the next `ready`: a restart the supervisor made on its own is a restart window too.
    pub(super) fn windows(&self, restarts: &[Restart]) -> Vec<(Instant, Instant)> {
        let end = self
            .requests
            .iter()
            .map(|r| r.end)
            .max()
            .unwrap_or(self.started);
        let until_ready = |ready: Option<Instant>| ready.map_or(end, |at| at + WINDOW_GRACE);
        let by_kills = restarts.iter().map(|r| (r.kill.at, until_ready(r.ready)));
        let by_other_exits = self
            .opencode_events("exited")
            .filter(|e| !self.kills.iter().any(|k| e.data["pid"] == k.pid))
            .map(|e| {
                let ready = self.opencode_events("ready").find(|r| r.at > e.at);
                (e.at, until_ready(ready.map(|r| r.at)))
            });
        by_kills.chain(by_other_exits).collect()
    }

    pub(super) fn report(
        &self,
        settings: &Settings,
        artifact: &Path,
        opencode_version: &str,
    ) -> Report {
        let restarts = self.restarts();
        let windows = self.windows(&restarts);
        let in_window = |r: &Request| windows.iter().any(|(s, e)| r.start <= *e && r.end >= *s);
        let (inside, outside): (Vec<&Request>, Vec<&Request>) =
            self.requests.iter().partition(|r| in_window(r));
        let lost_outside: Vec<&Request> =
            outside.iter().copied().filter(|r| !r.answer.ok()).collect();
        let unclear_inside: Vec<&Request> = inside
            .iter()
            .copied()
            .filter(|r| !r.answer.ok() && !r.answer.refused() && !r.answer.cut())
            .collect();
        let cut_inside = inside.iter().filter(|r| r.answer.cut()).count();
        let refused_inside = inside.iter().filter(|r| r.answer.refused()).count();
        let mut at_kills: BTreeMap<String, usize> = BTreeMap::new();
        for r in &self.requests {
            if self.kills.iter().any(|k| r.start < k.at && r.end > k.at) {
                *at_kills.entry(r.answer.describe()).or_default() += 1;
            }
        }
        let hung = self
            .requests
            .iter()
            .filter(|r| matches!(r.answer, Answer::Hung))
            .count();
        let unseen = restarts
            .iter()
            .filter(|r| !r.exited || r.ready.is_none())
            .count();
        let window_ms: Vec<Duration> = restarts
            .iter()
            .filter_map(|r| Some(r.ready?.duration_since(r.kill.at)))
            .collect();
        let streams = self.streams_after_kills();
        let slow_streams = streams
            .iter()
            .filter(|d| d.is_none_or(|d| d > goals::STREAM_END))
            .count();
        let other_exits = self
            .opencode_events("exited")
            .filter(|e| !self.kills.iter().any(|k| e.data["pid"] == k.pid))
            .count();
        let failed_events = self.opencode_events("failed").count();

        let rss = |part: &[Sample]| byte_stats(part.iter().map(|s| s.rss));
        let quarter = (self.samples.len() / 4).max(1);
        let (first, last) = (
            rss(&self.samples[..quarter.min(self.samples.len())]).median,
            rss(&self.samples[self.samples.len().saturating_sub(quarter)..]).median,
        );
        let all = rss(&self.samples);
        let (rss_min, rss_max) = (all.min, all.max);
        let fds_max = self.samples.iter().map(|s| s.fds).max().unwrap_or(0);
        let (a, b) = (&self.after_warm_up, &self.at_end);

        let count = |n: usize| Quantity::count(n as u64);
        let none = Goal::Value {
            max: Quantity::count(0),
        };
        let first_of = |list: &[&Request]| {
            list.iter()
                .take(3)
                .map(|r| {
                    format!(
                        "{} at {:.1} s: {}",
                        r.what,
                        r.start
                            .saturating_duration_since(self.started)
                            .as_secs_f64(),
                        r.answer.describe()
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        let seconds = self
            .requests
            .iter()
            .map(|r| r.end)
            .max()
            .map_or(0.0, |end| {
                end.saturating_duration_since(self.started).as_secs_f64()
            });
        let mut rows = vec![
            Row::info("requests through /opencode/*", count(self.requests.len())).note(format!(
                "{} workers at {} requests/s in all, one connection each; mix: {}",
                settings.workers,
                settings.rate,
                MIX.iter()
                    .map(|(what, w)| format!("{what} {w}%"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Row::info("opencode SIGKILLed", count(self.kills.len())).note(format!(
                "at random moments {}-{} s apart (seed {})",
                settings.kill_gap.0.as_secs(),
                settings.kill_gap.1.as_secs(),
                settings.seed
            )),
            Row::info(
                "requests lost outside restart windows",
                count(lost_outside.len()),
            )
            .target(none)
            .note(if lost_outside.is_empty() {
                format!(
                    "{} requests outside the windows (a kill until the new opencode's \
                         `ready` event, +{} ms), all 2xx",
                    outside.len(),
                    WINDOW_GRACE.as_millis()
                )
            } else {
                first_of(&lost_outside)
            }),
            Row::info(
                "requests in restart windows answered 502/503/504 JSON",
                count(refused_inside),
            )
            .note(format!(
                "of {} requests overlapping a window; {cut_inside} had their answer cut short \
                 (opencode died mid-answer); the rest were answered 2xx",
                inside.len()
            )),
            Row::info(
                "requests in restart windows failing otherwise",
                count(unclear_inside.len()),
            )
            .target(none)
            .note(if unclear_inside.is_empty() {
                "no broken connection, no other status".to_string()
            } else {
                first_of(&unclear_inside)
            }),
            Row::info(
                "requests in flight at a kill",
                count(at_kills.values().sum()),
            )
            .note(if at_kills.is_empty() {
                "none this run (opencode answers in milliseconds); the event stream below was"
                    .to_string()
            } else {
                at_kills
                    .iter()
                    .map(|(answer, n)| format!("{answer} x{n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }),
            Row::info("requests that hung", count(hung))
                .target(none)
                .note(format!("no answer within {} s", HANG.as_secs())),
            Row::info("kills not seen in /system/events", count(unseen))
                .target(none)
                .note(format!(
                    "each kill needs an `exited` of the killed pid with signal 9 and a `ready` \
                     of the new one; one connection for the whole soak ({} reconnects)",
                    self.events_reconnects
                )),
            Row::info("/system/events reconnects", count(self.events_reconnects)).target(none),
            Row::info("opencode exits not caused by a kill", count(other_exits)).note(format!(
                "liveness failures or crashes under load; `failed` events: {failed_events}"
            )),
        ];
        if !window_ms.is_empty() {
            let stats = crate::measure::Stats::of(&window_ms);
            rows.push(
                Row::info(
                    "restart window, kill to ready, median",
                    Quantity::ms(stats.median_ms),
                )
                .note(format!(
                    "max {:.0} ms; the supervisor's restart delay (250 ms, doubling only after \
                         runs healthy for less than 10 s) plus opencode's start-up",
                    stats.max_ms
                )),
            );
        }
        let slowest = streams.iter().flatten().max().copied().unwrap_or_default();
        rows.push(
            Row::info(
                "event streams still open 5 s after their opencode died",
                count(slow_streams),
            )
            .target(none)
            .note(format!(
                "opencode's /event followed through the proxy; {} were open at a kill, the \
                     slowest ended {:.0} ms after it",
                streams.len(),
                slowest.as_secs_f64() * 1e3
            )),
        );
        rows.push(
            Row::info(
                "server RSS growth, last quarter over first (medians)",
                Quantity::bytes(last.saturating_sub(first)),
            )
            .target(Goal::Value {
                max: Quantity::bytes(goals::RSS_GROWTH),
            })
            .note(format!(
                "VmRSS every {} s: first quarter {:.2} MB, last {:.2} MB, min {:.2} MB, max \
                 {:.2} MB; {:.2} MB after the warm-up",
                SAMPLE_EVERY.as_secs(),
                first as f64 / 1e6,
                last as f64 / 1e6,
                rss_min as f64 / 1e6,
                rss_max as f64 / 1e6,
                a.rss as f64 / 1e6
            )),
        );
        rows.push(
            Row::info(
                "server file descriptors gained",
                count(b.fds.saturating_sub(a.fds)),
            )
            .target(none)
            .note(format!(
                "at quiet moments (load paused, event stream open): {} after the warm-up, {} at \
                 the end; up to {} under load",
                a.fds, b.fds, fds_max
            )),
        );
        rows.push(
            Row::info(
                "processes gained in the server's tree",
                count(b.tree.len().saturating_sub(a.tree.len()) + b.zombies()),
            )
            .target(none)
            .note(format!(
                "after the warm-up: {}; at the end: {} (zombies count too)",
                a.tree_summary(),
                b.tree_summary()
            )),
        );
        rows.push(
            Row::info(
                "processes left after SIGTERM",
                count(self.left_after_stop.len()),
            )
            .target(none)
            .note(format!(
                "the server ended with {}{}",
                self.exit,
                if self.left_after_stop.is_empty() {
                    String::new()
                } else {
                    format!("; left: {}", self.left_after_stop.join(", "))
                }
            )),
        );
        if self.exit != "exit 0" {
            rows.push(
                Row::info("server exit after SIGTERM", count(1))
                    .target(none)
                    .note(format!("{} instead of exit 0", self.exit)),
            );
        }

        let mut by_what: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
        for r in &self.requests {
            let class = match &r.answer {
                Answer::Status(code, _) => code.to_string(),
                Answer::Cut(code, _) => format!("{code} cut"),
                Answer::Broken(_) => "broken".into(),
                Answer::Hung => "hung".into(),
            };
            *by_what.entry(r.what).or_default().entry(class).or_default() += 1;
        }
        let ms_since = |at: Instant| at.saturating_duration_since(self.started).as_secs_f64() * 1e3;
        Report {
            benchmark: "soak".into(),
            context: format!(
                "{:.0} s of load through /opencode/* of the packed server ({}) with opencode {}, \
                 opencode SIGKILLed at random moments; load average {} before, {} after",
                seconds,
                artifact
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into()),
                opencode_version,
                self.load_average
                    .0
                    .map_or("?".into(), |l| format!("{l:.2}")),
                self.load_average
                    .1
                    .map_or("?".into(), |l| format!("{l:.2}")),
            ),
            rows,
            details: json!({
                "seed": settings.seed,
                "durationS": settings.duration.as_secs_f64(),
                "warmUpS": settings.warm_up.as_secs_f64(),
                "workers": settings.workers,
                "rate": settings.rate,
                "killGapS": [settings.kill_gap.0.as_secs_f64(), settings.kill_gap.1.as_secs_f64()],
                "requests": by_what,
                "kills": restarts.iter().map(|r| json!({
                    "atMs": ms_since(r.kill.at),
                    "pid": r.kill.pid,
                    "exitedSeen": r.exited,
                    "readyAfterMs": r.ready.map(|at| at.duration_since(r.kill.at).as_secs_f64() * 1e3),
                })).collect::<Vec<_>>(),
                "lostOutsideWindows": lost_outside.iter().map(|r| json!({
                    "what": r.what, "atMs": ms_since(r.start), "answer": r.answer.describe(),
                })).collect::<Vec<_>>(),
                "failedInWindows": unclear_inside.iter().map(|r| json!({
                    "what": r.what, "atMs": ms_since(r.start), "answer": r.answer.describe(),
                })).collect::<Vec<_>>(),
                "streams": self.streams.iter().map(|s| json!({
                    "openedMs": ms_since(s.opened),
                    "endedMs": ms_since(s.ended),
                    "answer": s.answer.describe(),
                    "end": s.end,
                    "dataLines": s.data_lines,
                })).collect::<Vec<_>>(),
                "events": self.events.iter().map(|e| json!({
                    "atMs": ms_since(e.at), "event": e.name, "data": e.data,
                })).collect::<Vec<_>>(),
                "afterWarmUp": self.after_warm_up,
                "atEnd": self.at_end,
                "samples": self.samples,
                "exit": self.exit,
                "leftAfterStop": self.left_after_stop,
            }),
        }
    }

    /// For each kill that found the opencode event stream open: how long after the kill
    /// that stream ended (`None`: it did not end, or ended `silent`, hung).
    pub(super) fn streams_after_kills(&self) -> Vec<Option<Duration>> {
        self.kills
            .iter()
            .filter_map(|kill| {
                let run = self.streams.iter().find(|s| {
                    matches!(s.answer, Answer::Status(200, _))
                        && s.opened <= kill.at
                        && s.ended >= kill.at
                })?;
                Some((run.end != "silent").then(|| run.ended.duration_since(kill.at)))
            })
            .collect()
    }
}
