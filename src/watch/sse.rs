//! A Server-Sent Events parser: bytes in, in whatever chunks the network delivers, events out.
//!
//! It follows the WHATWG "event stream interpretation" rules: lines end in LF, CRLF or a lone CR
//! (a CRLF split across two chunks still counts once); `:` starts a comment; `event:`, `data:`,
//! `id:` and `retry:` are the fields, with one space after the colon dropped; several `data:`
//! lines join with `\n`; a blank line dispatches. It is pure (no I/O) so the chunk-boundary cases
//! are tested byte by byte. Hand-written rather than a crate because it is ~100 lines and the
//! client needs the id and `retry:` handling exactly as the reconnect logic uses them.

use std::time::Duration;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; `message` when the event had none, as browsers do.
    pub event: String,
    /// The `data:` lines joined with `\n`, without the final newline.
    pub data: String,
    /// The last event id in force when this event was dispatched (ids are sticky across events),
    /// `None` until the stream has sent one.
    pub id: Option<String>,
}

/// Why the stream cannot be parsed further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A line or an event's data grew past the cap: a runaway server must not exhaust memory.
    #[error("an SSE event is larger than {limit} bytes")]
    TooLarge { limit: usize },
}

/// The incremental parser. Feed it chunks with [`SseParser::feed`]; it keeps partial lines and
/// partial events between calls.
#[derive(Debug)]
pub struct SseParser {
    /// Bytes of the line being read; bytes, not a `String`, because a chunk may end inside a
    /// multi-byte UTF-8 character.
    line: Vec<u8>,
    /// The previous byte was a CR, so an LF right after it ends nothing (CRLF is one line end).
    after_cr: bool,
    /// No byte has been seen yet, so a leading byte-order mark is still to be skipped.
    at_start: bool,
    /// The `event:` field of the event being assembled.
    event: String,
    /// The `data:` lines of the event being assembled, each followed by `\n`.
    data: String,
    /// The last `id:` seen, which becomes the event's id on dispatch.
    id_buffer: Option<String>,
    /// The id of the last dispatched event: what a reconnect sends as `Last-Event-ID`.
    last_event_id: Option<String>,
    /// The last valid `retry:` value: how long to wait before reconnecting.
    retry: Option<Duration>,
    /// Largest line or event data accepted, in bytes.
    limit: usize,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl SseParser {
    /// A parser with a 256 MiB cap per event: far above the largest `chart-batch` (18 stocks ×
    /// 13 resolutions × 5000 bars) yet bounded.
    pub fn new() -> Self {
        Self::with_limit(256 * 1024 * 1024)
    }

    /// A parser that refuses lines or event data longer than `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        SseParser {
            line: Vec::new(),
            after_cr: false,
            at_start: true,
            event: String::new(),
            data: String::new(),
            id_buffer: None,
            last_event_id: None,
            retry: None,
            limit,
        }
    }

    /// The id of the last dispatched event, to send as `Last-Event-ID` when reconnecting.
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }

    /// The reconnection delay the server asked for with `retry:`, if any.
    pub fn retry(&self) -> Option<Duration> {
        self.retry
    }

    /// Starts reading a new connection: a partial line or event left by the old one is dropped
    /// (the spec discards an event not ended by a blank line), while the last event id and the
    /// retry delay carry over.
    pub fn reconnected(&mut self) {
        self.line.clear();
        self.after_cr = false;
        self.at_start = true;
        self.event.clear();
        self.data.clear();
        self.id_buffer = self.last_event_id.clone();
    }

    /// Parses one chunk and returns the events it completed.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        let mut events = Vec::new();
        if self.at_start && !chunk.is_empty() {
            // A BOM may itself be split across chunks; only a whole one at the start is skipped,
            // which is all the spec requires of a stream's first bytes in practice.
            if let Some(rest) = chunk.strip_prefix(b"\xEF\xBB\xBF") {
                chunk = rest;
            }
            self.at_start = false;
        }
        while !chunk.is_empty() {
            if self.after_cr && chunk[0] == b'\n' {
                chunk = &chunk[1..];
                self.after_cr = false;
                continue;
            }
            self.after_cr = false;
            match chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(end) => {
                    self.push_line_bytes(&chunk[..end])?;
                    self.after_cr = chunk[end] == b'\r';
                    chunk = &chunk[end + 1..];
                    let line = std::mem::take(&mut self.line);
                    if let Some(event) = self.process_line(&line)? {
                        events.push(event);
                    }
                }
                None => {
                    self.push_line_bytes(chunk)?;
                    chunk = &[];
                }
            }
        }
        Ok(events)
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + bytes.len() > self.limit {
            return Err(SseError::TooLarge { limit: self.limit });
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    /// Interprets one complete line; a blank line may dispatch an event.
    fn process_line(&mut self, line: &[u8]) -> Result<Option<SseEvent>, SseError> {
        if line.is_empty() {
            return Ok(self.dispatch());
        }
        if line[0] == b':' {
            return Ok(None);
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        match field {
            "event" => value.clone_into(&mut self.event),
            "data" => {
                if self.data.len() + value.len() + 1 > self.limit {
                    return Err(SseError::TooLarge { limit: self.limit });
                }
                self.data.push_str(value);
                self.data.push('\n');
            }
            // The spec ignores an id holding NUL, so that it can always be sent back in a header.
            "id" if !value.contains('\0') => self.id_buffer = Some(value.to_owned()),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(ms) = value.parse::<u64>() {
                    self.retry = Some(Duration::from_millis(ms));
                }
            }
            _ => {}
        }
        Ok(None)
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        // The id takes effect even for an event without data, as the spec says.
        self.last_event_id.clone_from(&self.id_buffer);
        let event = std::mem::take(&mut self.event);
        if self.data.is_empty() {
            return None;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop();
        Some(SseEvent {
            event: if event.is_empty() {
                "message".to_owned()
            } else {
                event
            },
            data,
            id: self.last_event_id.clone(),
        })
    }
}
