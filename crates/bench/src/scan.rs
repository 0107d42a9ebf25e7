//! A lean reader of the service's event stream for the load client: it finds event boundaries
//! and names, and keeps the data of only the small events the harness reads (`formula-results`,
//! `complete`, `stream-error`). A `chart-batch` is a megabyte the harness only counts, so its
//! bytes are skipped, not copied: with a thousand clients on the same two cores as the service,
//! a client that parsed every event would measure itself more than the service. Live `bar` and
//! `quote` events (a couple of hundred bytes, up to a million a second) are hashed, not parsed:
//! the hash names the (chart, state) for the latency figures of the live scenarios.
//!
//! It reads what the service writes (LF line ends, `event:` before `data:`); the watch client's
//! [`chartgate::watch::sse::SseParser`] is the general, spec-complete parser.

/// Longest line prefix kept of lines whose data is not read: enough for any field name, the
/// event names and a live event id.
const HEAD: usize = 96;

/// The events the harness tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    FormulaResults,
    ChartBatch,
    Complete,
    StreamError,
    /// A live `bar` event.
    Bar,
    /// A live `quote` event.
    Quote,
    Other,
}

impl Kind {
    fn of(name: &[u8]) -> Kind {
        match name {
            b"formula-results" => Kind::FormulaResults,
            b"chart-batch" => Kind::ChartBatch,
            b"complete" => Kind::Complete,
            b"stream-error" => Kind::StreamError,
            b"bar" => Kind::Bar,
            b"quote" => Kind::Quote,
            _ => Kind::Other,
        }
    }

    /// Events whose data the harness reads.
    fn reads_data(self) -> bool {
        matches!(
            self,
            Kind::FormulaResults | Kind::Complete | Kind::StreamError
        )
    }

    /// Live events: their data is hashed (every follower of a chart gets the same bytes for the
    /// same state, so the hash names a (chart, tick)), not kept.
    fn hashes_data(self) -> bool {
        matches!(self, Kind::Bar | Kind::Quote)
    }
}

/// One dispatched event: its kind, its data when it is one the harness reads, and the hash of
/// its data when it is a live event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub kind: Kind,
    pub data: Option<String>,
    /// [`hash`] of a live event's data; 0 for the others.
    pub hash: u64,
}

#[derive(Debug, Default)]
pub struct Scanner {
    /// The start of the current line.
    head: Vec<u8>,
    /// The current line is a `data:` line of an event that is read or hashed: its bytes go to
    /// `data`.
    capturing: bool,
    /// Where the current `data:` line starts in `data`, to drop its one leading space.
    line_start: usize,
    kind: Option<Kind>,
    data: Vec<u8>,
    has_data: bool,
    /// The `id:` of the last event that had one (kept only with `keep_id`).
    pub last_id: Vec<u8>,
    keep_id: bool,
}

/// A fast hash of a live event's data, eight bytes at a time (FxHash's step): the load client
/// hashes every live event it reads, so it must cost little beside reading it.
pub fn hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h: u64 = bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let word = u64::from_le_bytes(w.try_into().unwrap_or_default());
        h = (h.rotate_left(5) ^ word).wrapping_mul(K);
    }
    let mut tail = [0u8; 8];
    let rest = words.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    h = (h.rotate_left(5) ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    // Final mix, so every bit of the result depends on every word (the harness samples by the
    // low bits).
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

impl Scanner {
    /// A scanner that keeps the last event id when `keep_id`.
    pub fn keeping_ids(keep_id: bool) -> Scanner {
        Scanner {
            keep_id,
            ..Scanner::default()
        }
    }

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

    fn kind(&self) -> Kind {
        self.kind.unwrap_or(Kind::Other)
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
            let kind = self.kind();
            if kind.reads_data() || kind.hashes_data() {
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
                let kind = self.kind();
                out.push(Seen {
                    kind,
                    data: kind
                        .reads_data()
                        .then(|| String::from_utf8_lossy(&self.data).into_owned()),
                    hash: if kind.hashes_data() {
                        hash(&self.data)
                    } else {
                        0
                    },
                });
            }
            self.kind = None;
            self.data.clear();
            self.has_data = false;
        } else if let Some(name) = self.head.strip_prefix(b"event:") {
            self.kind = Some(Kind::of(name.strip_prefix(b" ").unwrap_or(name)));
        } else if self.keep_id
            && let Some(id) = self.head.strip_prefix(b"id:")
        {
            self.last_id.clear();
            self.last_id
                .extend_from_slice(id.strip_prefix(b" ").unwrap_or(id));
        }
        self.head.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "retry: 2000\n\nevent: formula-results\nid: a\ndata: {\"x\":1}\n\n: keep-alive\n\nevent: chart-batch\nid: b\ndata: {\"big\":\"0123456789012345678901234567890123456789012345678901234567890123456789\"}\n\nevent: complete\nid: c\ndata: {\"done\":true}\n\nevent: bar\nid: 0123456789abcdef.0123456789abcdef.live.19b2c0ffee0\ndata: {\"type\":\"bar\",\"data\":{\"symbol\":\"NSE:TCS\",\"resolution\":\"1D\",\"bar\":{\"time\":1,\"open\":1,\"high\":2,\"low\":0.5,\"close\":1.5}}}\n\n";
    const BAR: &str = "{\"type\":\"bar\",\"data\":{\"symbol\":\"NSE:TCS\",\"resolution\":\"1D\",\"bar\":{\"time\":1,\"open\":1,\"high\":2,\"low\":0.5,\"close\":1.5}}}";

    fn expected() -> Vec<Seen> {
        vec![
            Seen {
                kind: Kind::FormulaResults,
                data: Some("{\"x\":1}".into()),
                hash: 0,
            },
            Seen {
                kind: Kind::ChartBatch,
                data: None,
                hash: 0,
            },
            Seen {
                kind: Kind::Complete,
                data: Some("{\"done\":true}".into()),
                hash: 0,
            },
            Seen {
                kind: Kind::Bar,
                data: None,
                hash: hash(BAR.as_bytes()),
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
    fn keeps_the_last_id_when_asked() {
        let mut s = Scanner::keeping_ids(true);
        let mut out = Vec::new();
        s.feed(STREAM.as_bytes(), &mut out);
        assert_eq!(
            s.last_id,
            b"0123456789abcdef.0123456789abcdef.live.19b2c0ffee0"
        );
        let mut plain = Scanner::default();
        plain.feed(STREAM.as_bytes(), &mut out);
        assert!(plain.last_id.is_empty());
    }

    #[test]
    fn the_hash_depends_on_every_byte() {
        let a = hash(BAR.as_bytes());
        let mut other = BAR.as_bytes().to_vec();
        for i in [0, 7, 8, 100, other.len() - 1] {
            other[i] ^= 1;
            assert_ne!(hash(&other), a, "byte {i}");
            other[i] ^= 1;
        }
        assert_ne!(hash(&BAR.as_bytes()[..BAR.len() - 1]), a);
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
