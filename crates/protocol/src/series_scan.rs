//! The fast path for the feed's biggest packets: a `timescale_update` or `du` written the way the
//! feed writes it (no whitespace, `m` first, bars as `{"i":..,"v":[..]}` with five or six plain
//! numbers) is read here in one tight pass, without serde; anything else, or anything unusual in
//! it (an escape in a string, an exponent, a `null` value, a seventh value, more digits than an
//! `f64` holds exactly) makes it give up, and [`ServerMessage::decode`] reads the packet with
//! serde_json as before.
//!
//! Why: a first answer of 300 bars is about 20 KB of numbers, and decoding it was half of the
//! service's CPU when a burst of answers arrives; serde_json needs about as long merely to skip
//! that text as this takes to read it. What it accepts it reads exactly as the serde path does
//! (the unit tests compare the two on generated packets): numbers are read as serde_json reads them
//! (`digits as f64 / 10^decimals` when at most 15 digits, which is the correctly rounded value),
//! and like that path it reads only up to the end of the series map.
//!
//! [`ServerMessage::decode`]: super::server::ServerMessage::decode

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::server::Bar;
use super::server::{IndexedBar, SeriesData, ServerMessage};

/// The series update in `payload`, or `None` when the fast path does not apply.
pub(crate) fn series_update(payload: &str) -> Option<ServerMessage<'_>> {
    let (du, rest) = if let Some(rest) = payload.strip_prefix(r#"{"m":"timescale_update","p":["#) {
        (false, rest)
    } else {
        (true, payload.strip_prefix(r#"{"m":"du","p":["#)?)
    };
    let mut s = Scanner {
        text: rest.as_bytes(),
        pos: 0,
        source: rest,
    };
    let session = s.string()?;
    s.literal(b",{")?;
    // Keyed and ordered by id, the last of duplicate ids winning, as the serde path's map does.
    let mut by_id: BTreeMap<&str, (Option<&str>, Option<Vec<IndexedBar>>)> = BTreeMap::new();
    if !s.eat(b'}') {
        loop {
            let id = s.string()?;
            s.literal(b":{")?;
            by_id.insert(id, s.series_payload()?);
            if s.eat(b'}') {
                break;
            }
            s.literal(b",")?;
        }
    }
    let series = by_id
        .into_iter()
        .filter_map(|(id, (turnaround, bars))| {
            Some(SeriesData {
                series_id: Cow::Borrowed(id),
                turnaround: turnaround.map(Cow::Borrowed),
                bars: bars?,
            })
        })
        .collect();
    let session = Cow::Borrowed(session);
    Some(if du {
        ServerMessage::DataUpdate { session, series }
    } else {
        ServerMessage::TimescaleUpdate { session, series }
    })
}

/// Significant digits an `f64` holds exactly: up to here `digits / 10^decimals` is one correctly
/// rounded division of two exact values.
const MAX_DIGITS: usize = 15;

const POW10: [f64; MAX_DIGITS + 1] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// A number as the scanner read it.
enum Number {
    Int(i64),
    Float(f64),
}

impl Number {
    /// As serde_json gives it to an `f64`: integers through `i64` (so `-0` is `0.0`).
    fn as_f64(&self) -> f64 {
        match *self {
            Number::Int(n) => n as f64,
            Number::Float(f) => f,
        }
    }
}

struct Scanner<'a> {
    text: &'a [u8],
    pos: usize,
    source: &'a str,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let hit = self.peek() == Some(byte);
        self.pos += usize::from(hit);
        hit
    }

    fn literal(&mut self, lit: &[u8]) -> Option<()> {
        let end = self.pos + lit.len();
        (self.text.get(self.pos..end)? == lit).then(|| self.pos = end)
    }

    /// A string without escapes or control characters, borrowed.
    fn string(&mut self) -> Option<&'a str> {
        self.literal(b"\"")?;
        let start = self.pos;
        let len = memchr::memchr(b'"', &self.text[start..])?;
        let body = &self.text[start..start + len];
        if body.iter().any(|&b| b == b'\\' || b < 0x20) {
            return None;
        }
        self.pos = start + len + 1;
        // Quotes are ASCII, so both ends are on character boundaries of the source.
        self.source.get(start..start + len)
    }

    /// `{"node":..,"s":[..],"t":"..",..}` after its `{`: the turnaround and the bars, if any.
    #[allow(clippy::type_complexity)]
    fn series_payload(&mut self) -> Option<(Option<&'a str>, Option<Vec<IndexedBar>>)> {
        let (mut turnaround, mut bars) = (None, None);
        if self.eat(b'}') {
            return Some((turnaround, bars));
        }
        loop {
            let key = self.string()?;
            self.literal(b":")?;
            match key {
                // A key given twice is refused by the serde path: leave it to that.
                "s" if bars.is_none() => bars = Some(self.bars()?),
                "t" if turnaround.is_none() => turnaround = Some(self.string()?),
                "s" | "t" => return None,
                _ => self.skip_value(0)?,
            }
            if self.eat(b'}') {
                return Some((turnaround, bars));
            }
            self.literal(b",")?;
        }
    }

    /// `[{"i":..,"v":[..]},...]`.
    fn bars(&mut self) -> Option<Vec<IndexedBar>> {
        self.literal(b"[")?;
        // About 70 bytes a bar: one allocation for a whole answer.
        let mut bars = Vec::with_capacity(self.text.len().saturating_sub(self.pos) / 70 + 1);
        if self.eat(b']') {
            return Some(bars);
        }
        loop {
            self.literal(br#"{"i":"#)?;
            let Number::Int(index) = self.number()? else {
                return None;
            };
            self.literal(br#","v":["#)?;
            let mut values = [0.0; 6];
            let mut len = 0;
            loop {
                if len == values.len() {
                    return None;
                }
                values[len] = self.number()?.as_f64();
                len += 1;
                if self.eat(b']') {
                    break;
                }
                self.literal(b",")?;
            }
            if len < 5 {
                return None;
            }
            self.literal(b"}")?;
            bars.push(IndexedBar {
                index,
                bar: Bar {
                    time: values[0] as i64,
                    open: values[1],
                    high: values[2],
                    low: values[3],
                    close: values[4],
                    volume: (len == 6).then_some(values[5]),
                },
            });
            if self.eat(b']') {
                return Some(bars);
            }
            self.literal(b",")?;
        }
    }

    /// A JSON number of at most [`MAX_DIGITS`] digits and no exponent.
    fn number(&mut self) -> Option<Number> {
        let negative = self.eat(b'-');
        let (int_len, mut digits) = self.int_part()?;
        if int_len > MAX_DIGITS {
            return None;
        }
        let number = if self.eat(b'.') {
            let decimals;
            (decimals, digits) = self.digits(digits);
            if decimals == 0 || int_len + decimals > MAX_DIGITS {
                return None;
            }
            let magnitude = digits as f64 / POW10[decimals];
            Number::Float(if negative { -magnitude } else { magnitude })
        } else if negative && digits == 0 {
            // serde_json reads a bare `-0` as the float -0.0.
            Number::Float(-0.0)
        } else {
            // At most 15 digits: no overflow either way.
            let n = digits as i64;
            Number::Int(if negative { -n } else { n })
        };
        if matches!(self.peek(), Some(b'e' | b'E')) {
            return None;
        }
        Some(number)
    }

    /// The integer part of a number: how many digits, and their value (see [`Self::digits`]).
    /// JSON wants at least one digit, and no leading zero before another.
    fn int_part(&mut self) -> Option<(usize, u64)> {
        let start = self.pos;
        let (len, value) = self.digits(0);
        (len > 0 && (len == 1 || self.text[start] != b'0')).then_some((len, value))
    }

    /// Reads a run of digits onto `value`: how many, and the value. Past 19 digits the value
    /// wraps; callers refuse more than [`MAX_DIGITS`] before using it.
    #[inline]
    fn digits(&mut self, mut value: u64) -> (usize, u64) {
        let rest = &self.text[self.pos..];
        let mut n = 0;
        while let Some(&b) = rest.get(n) {
            let d = b.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            value = value.wrapping_mul(10).wrapping_add(u64::from(d));
            n += 1;
        }
        self.pos += n;
        (n, value)
    }

    /// Skips one value (other fields of a series: `node`, `ns`, `lbs`), checking it is JSON as
    /// far as this reads it; anything it does not read plainly ends the fast path.
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        if depth > 32 {
            return None;
        }
        match self.peek()? {
            b'"' => self.skip_string(),
            b'{' => {
                self.pos += 1;
                if self.eat(b'}') {
                    return Some(());
                }
                loop {
                    self.string()?;
                    self.literal(b":")?;
                    self.skip_value(depth + 1)?;
                    if self.eat(b'}') {
                        return Some(());
                    }
                    self.literal(b",")?;
                }
            }
            b'[' => {
                self.pos += 1;
                if self.eat(b']') {
                    return Some(());
                }
                loop {
                    self.skip_value(depth + 1)?;
                    if self.eat(b']') {
                        return Some(());
                    }
                    self.literal(b",")?;
                }
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.skip_number(),
        }
    }

    /// Skips a string, escapes included (a study's `ns.d` is JSON in a string).
    fn skip_string(&mut self) -> Option<()> {
        self.literal(b"\"")?;
        loop {
            let at = self.pos + memchr::memchr2(b'"', b'\\', &self.text[self.pos..])?;
            if self.text[self.pos..at].iter().any(|&b| b < 0x20) {
                return None;
            }
            self.pos = at + 1;
            if self.text[at] == b'"' {
                return Some(());
            }
            match self.peek()? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.pos += 1,
                b'u' => {
                    let hex = self.text.get(self.pos + 1..self.pos + 5)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    self.pos += 5;
                }
                _ => return None,
            }
        }
    }

    /// Skips a number of any length, exponent included, checking its grammar.
    fn skip_number(&mut self) -> Option<()> {
        self.eat(b'-');
        self.int_part()?;
        if self.eat(b'.') && self.digits(0).0 == 0 {
            return None;
        }
        if self.eat(b'e') || self.eat(b'E') {
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            if self.digits(0).0 == 0 {
                return None;
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::{Packet, ServerError, decode_message};

    /// The capture's series updates (`timescale_update` and `du` packets).
    fn captured_updates() -> Vec<String> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/tradingview-capture.jsonl"
        );
        let text = std::fs::read_to_string(path).expect("the capture in tests/fixtures");
        let mut updates = Vec::new();
        for line in text.lines() {
            let record: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            let Some(data) = record["data"].as_str() else {
                continue;
            };
            for packet in decode_message(data).unwrap_or_default() {
                if let Packet::Json(json) = packet
                    && (json.starts_with(r#"{"m":"timescale_update""#)
                        || json.starts_with(r#"{"m":"du""#))
                {
                    updates.push(json.to_string());
                }
            }
        }
        updates
    }

    #[test]
    fn the_captures_series_updates_take_the_fast_path_and_read_the_same() {
        let updates = captured_updates();
        assert!(updates.len() >= 5, "{} updates", updates.len());
        let mut with_bars = 0;
        for update in &updates {
            let fast = series_update(update).expect("the fast path applies to the feed's packets");
            assert_eq!(Ok(fast.clone()), ServerMessage::decode_with_serde(update));
            if let ServerMessage::TimescaleUpdate { series, .. }
            | ServerMessage::DataUpdate { series, .. } = &fast
            {
                with_bars += series.iter().map(|s| s.bars.len()).sum::<usize>();
            }
        }
        assert!(with_bars >= 300, "{with_bars} bars");
    }

    /// Number text in the shapes a feed (or a broken one) might write.
    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            (-10_000_000i64..10_000_000).prop_map(|n| n.to_string()),
            (0u64..100_000_000_000_000_000).prop_map(|n| n.to_string()),
            (-1_000_000i64..1_000_000, 1u32..6).prop_map(|(n, d)| {
                let s = format!("{:0width$}", n.unsigned_abs(), width = d as usize + 1);
                let (int, frac) = s.split_at(s.len() - d as usize);
                format!("{}{int}.{frac}", if n < 0 { "-" } else { "" })
            }),
            any::<f64>().prop_map(|f| f.to_string()),
            Just("-0".to_string()),
            Just("-0.0".to_string()),
            Just("0.30000000000000004".to_string()),
            Just("1e5".to_string()),
            Just("2.5E-3".to_string()),
            Just("01".to_string()),
            Just("1.".to_string()),
            Just("null".to_string()),
            Just("\"7\"".to_string()),
        ]
    }

    fn bar() -> impl Strategy<Value = String> {
        (
            prop_oneof![number(), (-5000i64..5000).prop_map(|n| n.to_string())],
            prop::collection::vec(number(), 3..8),
        )
            .prop_map(|(i, v)| format!(r#"{{"i":{i},"v":[{}]}}"#, v.join(",")))
    }

    fn series_payload() -> impl Strategy<Value = String> {
        (
            prop::option::of(prop::collection::vec(bar(), 0..6)),
            prop::option::of(prop_oneof![
                Just(r#""s1""#),
                Just(r#""s\u0031""#),
                Just("1")
            ]),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(bars, t, ns_first, duplicate_s)| {
                let mut fields = vec![r#""node":"sim-1""#.to_string()];
                let ns = r#""ns":{"d":"{\"a\":[1,true,null]}","indexes":[]}"#.to_string();
                if ns_first {
                    fields.insert(0, ns.clone());
                }
                if let Some(bars) = &bars {
                    fields.push(format!(r#""s":[{}]"#, bars.join(",")));
                    if duplicate_s {
                        fields.push(r#""s":[]"#.to_string());
                    }
                }
                if let Some(t) = t {
                    fields.push(format!(r#""t":{t}"#));
                }
                if !ns_first {
                    fields.push(ns);
                }
                fields.push(r#""lbs":{"bar_close_time":1766102400}"#.to_string());
                format!("{{{}}}", fields.join(","))
            })
    }

    fn update() -> impl Strategy<Value = String> {
        (
            prop_oneof![Just("timescale_update"), Just("du")],
            prop::collection::vec((0u8..3, series_payload()), 0..4),
            prop_oneof![Just(""), Just(",{\"index\":1}")],
        )
            .prop_map(|(method, series, tail)| {
                let map: Vec<String> = series
                    .iter()
                    .map(|(id, payload)| format!(r#""sds_{id}":{payload}"#))
                    .collect();
                format!(
                    r#"{{"m":"{method}","p":["cs_x",{{{}}}{tail}],"t":1,"t_ms":1000}}"#,
                    map.join(",")
                )
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever the fast path accepts it reads exactly as the serde path does, and what it
        /// turns down is read by the serde path: `decode` gives the same answer either way. (The
        /// one difference, by design: the fast path does not read past the series map, so it does
        /// not see a fault in the tick marks after it; see `a_series_update_is_read_up_to_the_end_
        /// of_its_series_map` in `tests/capture.rs`.)
        #[test]
        fn the_fast_path_reads_what_it_accepts_exactly_as_serde_does(payload in update()) {
            // Compared as text: a `null` value is NaN, which equals nothing.
            let serde = format!("{:?}", ServerMessage::decode_with_serde(&payload));
            if let Some(fast) = series_update(&payload) {
                prop_assert_eq!(format!("{:?}", Ok::<_, ServerError>(fast)), serde.clone(), "{}", payload);
            }
            prop_assert_eq!(format!("{:?}", ServerMessage::decode(&payload)), serde);
        }
    }

    #[test]
    fn the_feeds_shape_takes_the_fast_path_and_odd_shapes_do_not() {
        let canonical = r#"{"m":"timescale_update","p":["cs_x",{"sds_1":{"node":"n","s":[{"i":0,"v":[1766102400.0,2345.65,2350,2340.1,-0.5,90305]},{"i":1,"v":[1766188800,1,2,0.5,1.5]}],"ns":{"d":"","indexes":[]},"t":"s1","lbs":{"bar_close_time":1766188800}}},{"index":1}],"t":1,"t_ms":1000}"#;
        let Some(ServerMessage::TimescaleUpdate { session, series }) = series_update(canonical)
        else {
            panic!("the fast path applies");
        };
        assert_eq!(session, "cs_x");
        assert_eq!(series.len(), 1);
        assert_eq!(series[0].turnaround.as_deref(), Some("s1"));
        let bars: Vec<Bar> = series[0].bars.iter().map(|b| b.bar).collect();
        assert_eq!(bars[0].close, -0.5);
        assert_eq!(bars[0].volume, Some(90305.0));
        assert_eq!(bars[1].volume, None);
        for odd in [
            canonical.replace("2345.65", "2.34565e3"),
            canonical.replace("\"s1\"", "\"s\\u0031\""),
            canonical.replace(",90305]", ",90305,7]"),
            canonical.replace(",1.5]", "]"),
            canonical.replace("{\"m\"", "{ \"m\""),
            canonical.replace("2345.65", "2345.6500000000001"),
        ] {
            assert!(series_update(&odd).is_none(), "{odd}");
        }
    }
}
