//! SSE event ids that let any instance resume a stream.
//!
//! An id is `<request>.<list>.<delivered>.<ok>.<failed>.<cached>.<ms>`: a stable hash of the
//! request (source, resolutions, bars, format), a stable hash of the stock list the stream is
//! about, the set of batches already sent (a hex bitmap, since batches go out in whatever order
//! they finish), and what those batches held and took ([`Sent`], in hex), so that the `complete`
//! of a resumed stream can describe the whole stream. A completed stream's id is
//! `<request>.<list>.done`. A live event's id (and a live stream's `complete`) is
//! `<request>.<list>.live.<ms>`: every change the feed sent before that wall-clock millisecond has
//! reached the client, so resuming sends each chart's bars changed since then. Resuming needs
//! nothing else: the request comes again in the URL, the
//! list from the formula cache; if the list hash no longer matches, or the figures do not fit the
//! batches (see [`StreamId::delivered_charts`]), the stream starts over. Ids are ASCII hex and
//! dots only, so they never hold CR, LF or NUL.

use std::fmt;

use super::params::{StreamRequest, SymbolSource};
use crate::domain::{BarsFormat, Symbol};
use crate::hash::fnv1a;

/// Which batches of a stream a client has received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Batch indices (0-based) already sent; bit `i` of byte `i / 8`.
    Batches(Vec<u8>),
    /// The stream completed.
    Done,
    /// A live stream: every change stamped before these Unix milliseconds has been sent.
    Live(u64),
}

/// What the batches already sent held, and how long the stream had been at work when the last
/// of them went out (summed over the connections it was sent on).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    pub ok: usize,
    pub failed: usize,
    /// Of `ok`, the charts that came from the cache.
    pub cached: usize,
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamId {
    pub request: u64,
    pub list: u64,
    pub progress: Progress,
    /// Meaningful while `progress` is `Batches`; a `done` id carries none.
    pub sent: Sent,
}

impl StreamId {
    pub fn new(request: u64, list: u64) -> Self {
        StreamId {
            request,
            list,
            progress: Progress::Batches(Vec::new()),
            sent: Sent::default(),
        }
    }

    /// Marks batch `index` (0-based) as sent.
    pub fn mark(&mut self, index: usize) {
        if let Progress::Batches(bits) = &mut self.progress {
            if bits.len() <= index / 8 {
                bits.resize(index / 8 + 1, 0);
            }
            bits[index / 8] |= 1 << (index % 8);
        }
    }

    pub fn has(&self, index: usize) -> bool {
        match &self.progress {
            Progress::Batches(bits) => bits
                .get(index / 8)
                .is_some_and(|b| b & (1 << (index % 8)) != 0),
            Progress::Done | Progress::Live(_) => true,
        }
    }

    /// The id of a live event: changes before `since_ms` have been sent.
    pub fn live(&self, since_ms: u64) -> StreamId {
        StreamId {
            progress: Progress::Live(since_ms),
            sent: Sent::default(),
            ..self.clone()
        }
    }

    pub fn done(&self) -> StreamId {
        StreamId {
            progress: Progress::Done,
            sent: Sent::default(),
            ..self.clone()
        }
    }

    /// How many charts the batches marked as sent hold, `charts_in(batch)` being the charts of
    /// a batch; `None` when a batch past `total_batches` is marked (an id of another stream, or
    /// made up). A resumable id's `ok + failed` equals this.
    pub fn delivered_charts(
        &self,
        total_batches: usize,
        charts_in: impl Fn(usize) -> usize,
    ) -> Option<usize> {
        let Progress::Batches(bits) = &self.progress else {
            return None;
        };
        let marked = (0..bits.len() * 8).filter(|&b| self.has(b));
        let mut charts = 0;
        for batch in marked {
            if batch >= total_batches {
                return None;
            }
            charts += charts_in(batch);
        }
        Some(charts)
    }

    /// Parses an id; anything malformed is `None` (the stream then starts over).
    pub fn parse(raw: &str) -> Option<StreamId> {
        let parts: Vec<&str> = raw.trim().split('.').collect();
        let (request, list, progress, figures) = match parts.as_slice() {
            [request, list, "done"] => (request, list, "done", &[][..]),
            [request, list, "live", ms] => {
                let ms = (!ms.is_empty() && ms.len() <= 16)
                    .then(|| u64::from_str_radix(ms, 16).ok())
                    .flatten()?;
                return Some(StreamId {
                    request: u64::from_str_radix(request, 16)
                        .ok()
                        .filter(|_| request.len() == 16)?,
                    list: u64::from_str_radix(list, 16)
                        .ok()
                        .filter(|_| list.len() == 16)?,
                    progress: Progress::Live(ms),
                    sent: Sent::default(),
                });
            }
            [request, list, progress, figures @ ..]
                if figures.len() == 4 && *progress != "done" =>
            {
                (request, list, *progress, figures)
            }
            _ => return None,
        };
        let hex64 = |s: &str| {
            (s.len() == 16)
                .then(|| u64::from_str_radix(s, 16).ok())
                .flatten()
        };
        let number = |s: &str| {
            (!s.is_empty() && s.len() <= 16)
                .then(|| u64::from_str_radix(s, 16).ok())
                .flatten()
        };
        let count = |s: &str| number(s).and_then(|n| usize::try_from(n).ok());
        let sent = match figures {
            [] => Sent::default(),
            [ok, failed, cached, ms] => Sent {
                ok: count(ok)?,
                failed: count(failed)?,
                cached: count(cached)?,
                elapsed_ms: number(ms)?,
            },
            _ => return None,
        };
        let progress = if progress == "done" {
            Progress::Done
        } else {
            if progress.len() % 2 != 0 || progress.len() > 1024 {
                return None;
            }
            let bytes = (0..progress.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(progress.get(i..i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()?;
            Progress::Batches(bytes)
        };
        Some(StreamId {
            request: hex64(request)?,
            list: hex64(list)?,
            progress,
            sent,
        })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}.{:016x}.", self.request, self.list)?;
        match &self.progress {
            Progress::Done => return f.write_str("done"),
            Progress::Live(ms) => return write!(f, "live.{ms:x}"),
            Progress::Batches(bits) if bits.is_empty() => f.write_str("00")?,
            Progress::Batches(bits) => bits.iter().try_for_each(|b| write!(f, "{b:02x}"))?,
        }
        let Sent {
            ok,
            failed,
            cached,
            elapsed_ms,
        } = self.sent;
        write!(f, ".{ok:x}.{failed:x}.{cached:x}.{elapsed_ms:x}")
    }
}

/// The stable hash of what a request asks for (not of its `lastEventId`).
pub fn request_hash(request: &StreamRequest, batch_size: usize) -> u64 {
    let source = match &request.source {
        SymbolSource::Formula(id) => format!("formula:{id}"),
        SymbolSource::Symbols(symbols) => {
            format!(
                "symbols:{}",
                symbols
                    .iter()
                    .map(Symbol::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            )
        }
    };
    let resolutions: Vec<&str> = request.resolutions.iter().map(|r| r.as_str()).collect();
    let format = match request.format {
        BarsFormat::Objects => "objects",
        BarsFormat::Columns => "columns",
    };
    let live = match (request.live, request.quotes) {
        (false, _) => "",
        (true, false) => "live",
        (true, true) => "live+quotes",
    };
    let resolutions = resolutions.join(",");
    let mut parts: Vec<&[u8]> = vec![source.as_bytes(), resolutions.as_bytes()];
    let bars = request.bars.get().to_string();
    let batch_size = batch_size.to_string();
    parts.extend([bars.as_bytes(), format.as_bytes(), batch_size.as_bytes()]);
    // A stream without live keeps the hash it had before live existed.
    if !live.is_empty() {
        parts.push(live.as_bytes());
    }
    fnv1a(&parts)
}

/// The stable hash of a stock list.
pub fn list_hash(symbols: &[&Symbol]) -> u64 {
    let parts: Vec<&[u8]> = symbols.iter().map(|s| s.as_str().as_bytes()).collect();
    fnv1a(&parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        let mut id = StreamId::new(0xdead_beef, 42);
        assert_eq!(
            id.to_string(),
            "00000000deadbeef.000000000000002a.00.0.0.0.0"
        );
        for i in [0, 3, 9, 17] {
            id.mark(i);
        }
        id.sent = Sent {
            ok: 30,
            failed: 2,
            cached: 17,
            elapsed_ms: 2_400,
        };
        assert!(id.to_string().ends_with(".1e.2.11.960"), "{id}");
        let parsed = StreamId::parse(&id.to_string()).unwrap();
        assert_eq!(parsed, id);
        assert!(parsed.has(9) && parsed.has(17) && !parsed.has(1) && !parsed.has(100));
        let done = id.done();
        assert_eq!(StreamId::parse(&done.to_string()).unwrap(), done);
        assert!(done.to_string().ends_with("2a.done"));
        let live = id.live(0x18c_0000_0000);
        assert!(live.to_string().ends_with("2a.live.18c00000000"), "{live}");
        assert_eq!(StreamId::parse(&live.to_string()).unwrap(), live);
    }

    #[test]
    fn the_charts_of_the_batches_sent() {
        let mut id = StreamId::new(1, 2);
        assert_eq!(id.delivered_charts(3, |_| 8), Some(0));
        id.mark(0);
        id.mark(2);
        // The last batch is smaller.
        assert_eq!(
            id.delivered_charts(3, |b| if b == 2 { 5 } else { 8 }),
            Some(13)
        );
        id.mark(9);
        assert_eq!(
            id.delivered_charts(3, |_| 8),
            None,
            "a batch it does not have"
        );
        assert_eq!(id.done().delivered_charts(3, |_| 8), None);
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "",
            "x",
            "1.2.3",
            "00000000deadbeef.000000000000002a",
            "00000000deadbeef.000000000000002a.0g",
            "00000000deadbeef.000000000000002a.0",
            "00000000deadbeef.000000000000002a.01",
            "00000000deadbeef.000000000000002a.01.1.0.0",
            "00000000deadbeef.000000000000002a.01.1.0.0.1.1",
            "00000000deadbeef.000000000000002a.01.1.0.x.1",
            "00000000deadbeef.000000000000002a.01.1..0.1",
            "00000000deadbeef.000000000000002a.01.1.0.0.11111111111111111",
            "00000000deadbeef.000000000000002a.done.1.0.0.1",
            "00000000deadbeef.000000000000002a.live",
            "00000000deadbeef.000000000000002a.live.",
            "00000000deadbeef.000000000000002a.live.xyz",
            "00000000deadbeef.000000000000002a.live.1.2",
            "deadbeef.000000000000002a.live.1",
            "a.b.c.d",
        ] {
            assert_eq!(StreamId::parse(bad), None, "{bad:?}");
        }
    }
}
