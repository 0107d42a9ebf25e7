//! SSE event ids that let any instance resume a stream.
//!
//! An id is `<request>.<list>.<delivered>`: a stable hash of the request (source, resolutions,
//! bars, format), a stable hash of the stock list the stream is about, and either the set of
//! batches already sent (a hex bitmap, since batches go out in whatever order they finish) or
//! `done`. Resuming needs nothing else: the request comes again in the URL, the list from the
//! formula cache; if the list hash no longer matches, the stream starts over. Ids are ASCII hex and
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamId {
    pub request: u64,
    pub list: u64,
    pub progress: Progress,
}

impl StreamId {
    pub fn new(request: u64, list: u64) -> Self {
        StreamId {
            request,
            list,
            progress: Progress::Batches(Vec::new()),
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
            Progress::Done => true,
        }
    }

    pub fn done(&self) -> StreamId {
        StreamId {
            progress: Progress::Done,
            ..self.clone()
        }
    }

    /// Parses an id; anything malformed is `None` (the stream then starts over).
    pub fn parse(raw: &str) -> Option<StreamId> {
        let mut parts = raw.trim().split('.');
        let (Some(request), Some(list), Some(progress), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let hex64 = |s: &str| {
            (s.len() == 16)
                .then(|| u64::from_str_radix(s, 16).ok())
                .flatten()
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
        })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}.{:016x}.", self.request, self.list)?;
        match &self.progress {
            Progress::Done => f.write_str("done"),
            Progress::Batches(bits) if bits.is_empty() => f.write_str("00"),
            Progress::Batches(bits) => bits.iter().try_for_each(|b| write!(f, "{b:02x}")),
        }
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
    fnv1a(&[
        source.as_bytes(),
        resolutions.join(",").as_bytes(),
        request.bars.get().to_string().as_bytes(),
        format.as_bytes(),
        batch_size.to_string().as_bytes(),
    ])
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
        assert_eq!(id.to_string(), "00000000deadbeef.000000000000002a.00");
        for i in [0, 3, 9, 17] {
            id.mark(i);
        }
        let parsed = StreamId::parse(&id.to_string()).unwrap();
        assert_eq!(parsed, id);
        assert!(parsed.has(9) && parsed.has(17) && !parsed.has(1) && !parsed.has(100));
        let done = id.done();
        assert_eq!(StreamId::parse(&done.to_string()).unwrap(), done);
        assert!(done.to_string().ends_with(".done"));
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
            "a.b.c.d",
        ] {
            assert_eq!(StreamId::parse(bad), None, "{bad:?}");
        }
    }
}
