//! The one server-sent-events reader of the tests and benchmarks: frames (`id:`, `event:`,
//! `data:`, ended by an empty line) from a response body read line by line, as the
//! [`crate::http::stream`] reader gives it.
//!
//! Lines that are no field of a frame are skipped, as the SSE format says of unknown fields:
//! comments (`:`), and the chunk-size lines of a chunked body, which the tests read
//! undecoded.

use std::io::{self, BufRead};

/// One frame.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    /// Its `id:`, if it had one.
    pub id: Option<String>,
    /// Its `event:` (empty without one).
    pub name: String,
    /// Its `data:` lines, joined with `\n`.
    pub data: String,
}

impl Event {
    /// The data as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or(serde_json::Value::Null)
    }
}

/// Frames from `reader`.
#[derive(Debug)]
pub struct SseReader<R> {
    reader: R,
    last_id: Option<String>,
    data_lines: u64,
}

impl<R: BufRead> SseReader<R> {
    /// Reads frames from `reader`, positioned at the body.
    pub fn new(reader: R) -> Self {
        Self {
            reader,
            last_id: None,
            data_lines: 0,
        }
    }

    /// The next frame; `None` when the stream ended. A read error (a read timeout among
    /// them) is returned as it is.
    pub fn next_event(&mut self) -> io::Result<Option<Event>> {
        let mut event = Event::default();
        let mut fields = false;
        let mut data: Vec<String> = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Ok(None);
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if fields {
                    event.data = data.join("\n");
                    if event.id.is_some() {
                        self.last_id.clone_from(&event.id);
                    }
                    return Ok(Some(event));
                }
                continue;
            }
            let Some((field, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => event.id = Some(value.trim().to_owned()),
                "event" => event.name = value.trim().to_owned(),
                "data" => {
                    self.data_lines += 1;
                    data.push(value.to_owned());
                }
                _ => continue,
            }
            fields = true;
        }
    }

    /// The id of the last frame that had one: what to send as `Last-Event-ID` to resume.
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// How many `data:` lines were read so far, frames still open included.
    pub fn data_lines(&self) -> u64 {
        self.data_lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_from_a_chunked_body_read_undecoded() {
        let body = "3a\r\nid: 7\nevent: ready\ndata: {\"pid\":3}\n\n\r\n10\r\n: comment\ndata: a\ndata: b\n\n\r\n";
        let mut reader = SseReader::new(body.as_bytes());
        let first = reader.next_event().unwrap().unwrap();
        assert_eq!(
            (
                first.id.as_deref(),
                first.name.as_str(),
                first.json()["pid"].as_u64()
            ),
            (Some("7"), "ready", Some(3))
        );
        let second = reader.next_event().unwrap().unwrap();
        assert_eq!((second.name.as_str(), second.data.as_str()), ("", "a\nb"));
        assert_eq!(reader.last_event_id(), Some("7"));
        assert_eq!(reader.data_lines(), 3);
        assert_eq!(reader.next_event().unwrap(), None);
    }
}
