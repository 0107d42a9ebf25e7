//! A lean reader of the service's event stream for the load client: it finds event boundaries
//! and names, and keeps the data of only the small events the harness reads (`formula-results`,
//! `complete`, `stream-error`). A `chart-batch` is a megabyte the harness only counts, so its
//! bytes are skipped, not copied: with a thousand clients on the same two cores as the service,
//! a client that parsed every event would measure itself more than the service.
//!
//! It reads what the service writes (LF line ends, `event:` before `data:`); the watch client's
//! [`chartgate::watch::sse::SseParser`] is the general, spec-complete parser.

/// Longest line prefix kept of lines whose data is not read: enough for any field name and the
/// event names.
const HEAD: usize = 64;

/// Events whose data the harness reads.
const READ: [&[u8]; 3] = [b"formula-results", b"complete", b"stream-error"];

/// One dispatched event: its name, and its data when it is one the harness reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub name: String,
    pub data: Option<String>,
}

#[derive(Debug, Default)]
pub struct Scanner {
    /// The start of the current line.
    head: Vec<u8>,
    /// The current line is a `data:` line of an event that is read: its bytes go to `data`.
    capturing: bool,
    /// Where the current `data:` line starts in `data`, to drop its one leading space.
    line_start: usize,
    name: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
}

impl Scanner {
    /// Scans one chunk; events it completes are appended to `out`.
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<Seen>) {
        while !chunk.is_empty() {
            match memchr::memchr(b'\n', chunk) {
                Some(end) => {
                    self.take(&chunk[..end]);
                    self.end_line(out);
                    chunk = &chunk[end + 1..];
                }
                None => {
                    self.take(chunk);
                    chunk = &[];
                }
            }
        }
    }

    fn reads_data(&self) -> bool {
        READ.contains(&self.name.as_slice())
    }

    fn take(&mut self, piece: &[u8]) {
        if self.capturing {
            self.data.extend_from_slice(piece);
            return;
        }
        let n = piece.len().min(HEAD - self.head.len());
        self.head.extend_from_slice(&piece[..n]);
        if self.head.starts_with(b"data:") {
            self.has_data = true;
            if self.reads_data() {
                self.capturing = true;
                if !self.data.is_empty() {
                    self.data.push(b'\n');
                }
                self.line_start = self.data.len();
                self.data.extend_from_slice(&self.head[5..]);
                self.data.extend_from_slice(&piece[n..]);
            }
        }
    }

    fn end_line(&mut self, out: &mut Vec<Seen>) {
        if self.capturing {
            if self.data.get(self.line_start) == Some(&b' ') {
                self.data.remove(self.line_start);
            }
            self.capturing = false;
        } else if self.head.is_empty() {
            if self.has_data {
                out.push(Seen {
                    name: String::from_utf8_lossy(&self.name).into_owned(),
                    data: self
                        .reads_data()
                        .then(|| String::from_utf8_lossy(&self.data).into_owned()),
                });
            }
            self.name.clear();
            self.data.clear();
            self.has_data = false;
        } else if let Some(name) = self.head.strip_prefix(b"event:") {
            self.name = name.strip_prefix(b" ").unwrap_or(name).to_vec();
        }
        self.head.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "retry: 2000\n\nevent: formula-results\nid: a\ndata: {\"x\":1}\n\n: keep-alive\n\nevent: chart-batch\nid: b\ndata: {\"big\":\"0123456789012345678901234567890123456789012345678901234567890123456789\"}\n\nevent: complete\nid: c\ndata: {\"done\":true}\n\n";

    fn expected() -> Vec<Seen> {
        vec![
            Seen {
                name: "formula-results".into(),
                data: Some("{\"x\":1}".into()),
            },
            Seen {
                name: "chart-batch".into(),
                data: None,
            },
            Seen {
                name: "complete".into(),
                data: Some("{\"done\":true}".into()),
            },
        ]
    }

    #[test]
    fn whole_stream() {
        let mut s = Scanner::default();
        let mut out = Vec::new();
        s.feed(STREAM.as_bytes(), &mut out);
        assert_eq!(out, expected());
    }

    #[test]
    fn every_split_point_and_byte_by_byte() {
        let bytes = STREAM.as_bytes();
        for cut in 0..bytes.len() {
            let mut s = Scanner::default();
            let mut out = Vec::new();
            s.feed(&bytes[..cut], &mut out);
            s.feed(&bytes[cut..], &mut out);
            assert_eq!(out, expected(), "cut at {cut}");
        }
        let mut s = Scanner::default();
        let mut out = Vec::new();
        for b in bytes {
            s.feed(std::slice::from_ref(b), &mut out);
        }
        assert_eq!(out, expected());
    }
}
