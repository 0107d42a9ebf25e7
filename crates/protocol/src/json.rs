//! ASCII-only JSON: the feed counts packet lengths in characters, so every non-ASCII character is
//! written as a `\uXXXX` escape and the length in characters equals the length in bytes.

use std::io;

use serde::Serialize;
use serde_json::ser::{CompactFormatter, Formatter};

/// A compact formatter that escapes every non-ASCII character.
#[derive(Debug, Default, Clone, Copy)]
pub struct AsciiFormatter;

impl Formatter for AsciiFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        if fragment.is_ascii() {
            return writer.write_all(fragment.as_bytes());
        }
        let mut utf16 = [0u16; 2];
        for c in fragment.chars() {
            if c.is_ascii() {
                writer.write_all(&[c as u8])?;
            } else {
                for unit in c.encode_utf16(&mut utf16) {
                    write!(writer, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }

    fn write_f64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        CompactFormatter.write_f64(writer, value)
    }
}

/// Serialises `value` as compact, ASCII-only JSON.
pub fn to_ascii_string<T: Serialize + ?Sized>(value: &T) -> String {
    let mut buf = Vec::with_capacity(128);
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, AsciiFormatter);
    // Serialising our own message types (strings, numbers, sequences) cannot fail, and the
    // formatter writes only ASCII, so the bytes are valid UTF-8.
    if value.serialize(&mut ser).is_err() {
        return "null".to_string();
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// Below 2^53 every whole `f64` is exactly an `i64` and back.
const EXACT_INT_LIMIT: f64 = 9_007_199_254_740_992.0;

/// How a whole number is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whole {
    /// `90305`: the shortest JSON, what chartgate's clients get.
    Plain,
    /// `90305.0`: the feed's way (times, volumes and round prices are floats to it).
    PointZero,
}

/// Appends `value` as a JSON number, `null` when it is not finite.
///
/// Three exact paths, fastest first (the numbers clients parse back are the same `f64`s):
/// - whole numbers (volumes, times, round prices) below 2^53 through `itoa`: the integer is the
///   value itself, so `90305` parses to `90305.0` exactly;
/// - prices with at most two decimals (what the feed sends for `pricescale` 100) as `<int>.<dd>`,
///   see `exact_cents`;
/// - anything else through `ryu` (shortest round trip).
///
/// `-0.0` takes the `ryu` path so its sign survives. serde_json's default number reader is not
/// always correctly rounding (it misreads some 16- and 17-digit `ryu` outputs by an ulp, e.g.
/// `7344005899772953.0`); the first two paths write text it reads exactly (Clinger's fast path).
#[inline]
pub fn write_number(out: &mut String, value: f64, whole: Whole) {
    if !value.is_finite() {
        out.push_str("null");
    } else if value.abs() < EXACT_INT_LIMIT
        && value as i64 as f64 == value
        && (value != 0.0 || value.is_sign_positive())
    {
        // |value| < 2^53: the cast cannot saturate, and equality means it lost nothing.
        out.push_str(itoa::Buffer::new().format(value as i64));
        if whole == Whole::PointZero {
            out.push_str(".0");
        }
    } else if value != 0.0
        && let Some(cents) = exact_cents(value)
    {
        write_cents(out, cents);
    } else {
        out.push_str(ryu::Buffer::new().format_finite(value));
    }
}

/// `value` as a whole number of hundredths, when the decimal `cents / 100` parses back to exactly
/// `value`.
///
/// Proof: `c` is an integer with `|c| < 2^53`, so `c as f64` is exact, and IEEE division is
/// correctly rounded, so `c as f64 / 100.0` is the `f64` nearest the rational `c / 100`. When that
/// equals `value`, the decimal text of `c / 100` (which [`write_cents`] writes digit for digit)
/// is read by any correctly rounding JSON parser (serde_json, JavaScript) as `value`. How `c` was
/// guessed does not matter: the check alone makes it exact, and a failed check falls back to `ryu`.
#[inline]
fn exact_cents(value: f64) -> Option<i64> {
    let scaled = value * 100.0;
    if scaled.abs() >= EXACT_INT_LIMIT {
        return None;
    }
    // Round half away from zero by truncating cast; |scaled| < 2^53 so the cast cannot saturate.
    let cents = (scaled + 0.5f64.copysign(scaled)) as i64;
    (cents as f64 / 100.0 == value).then_some(cents)
}

/// Writes `cents / 100` in decimal: `90305`, `253.4`, `-0.05`.
#[inline]
fn write_cents(out: &mut String, cents: i64) {
    if cents < 0 {
        out.push('-');
    }
    let magnitude = cents.unsigned_abs();
    let (whole, frac) = (magnitude / 100, magnitude % 100);
    out.push_str(itoa::Buffer::new().format(whole));
    if frac != 0 {
        out.push('.');
        out.push(char::from(b'0' + (frac / 10) as u8));
        if frac % 10 != 0 {
            out.push(char::from(b'0' + (frac % 10) as u8));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_non_ascii_and_round_trips() {
        let text = "Société Générale — 株 😀 \"q\" \n";
        let json = to_ascii_string(&text);
        assert!(json.is_ascii());
        assert!(json.contains("\\u00e9") && json.contains("\\ud83d\\ude00"));
        assert_eq!(serde_json::from_str::<String>(&json).unwrap(), text);
    }

    fn written(value: f64) -> String {
        let mut out = String::new();
        write_number(&mut out, value, Whole::Plain);
        out
    }

    #[test]
    fn numbers_take_the_short_exact_paths() {
        let cases = [
            (90305.0, "90305"),
            (253.42, "253.42"),
            (361.5, "361.5"),
            (0.05, "0.05"),
            (-0.05, "-0.05"),
            (-12.3, "-12.3"),
            (0.0, "0"),
            (-0.0, "-0.0"),
            (1_766_029_500.0, "1766029500"),
            (0.125, "0.125"),
            (1e300, "1e300"),
            (f64::NAN, "null"),
            (f64::INFINITY, "null"),
        ];
        for (value, text) in cases {
            assert_eq!(written(value), text, "{value}");
        }
    }

    proptest::proptest! {
        /// Whatever path a number takes, it reads back as the same `f64`, bit for bit: with a
        /// correctly rounding reader (Rust's, JavaScript's) always, and with serde_json's default
        /// (not always correctly rounding) reader for the integer and decimal paths, whose text
        /// it reads through the exact fast path.
        #[test]
        fn every_finite_number_reads_back_exactly(
            bits in proptest::num::u64::ANY,
            cents in -10_000_000_000i64..10_000_000_000,
            whole in -(1i64 << 53)..(1i64 << 53),
        ) {
            let any = f64::from_bits(bits);
            let short = [cents as f64 / 100.0, whole as f64, cents as f64 / 1000.0];
            for value in std::iter::once(any).chain(short) {
                if !value.is_finite() {
                    continue;
                }
                let text = written(value);
                let back: f64 = text.parse().unwrap();
                proptest::prop_assert_eq!(back.to_bits(), value.to_bits(), "{} -> {}", value, text);
            }
            for value in short {
                let text = written(value);
                let back: f64 = serde_json::from_str(&text).unwrap();
                proptest::prop_assert_eq!(back.to_bits(), value.to_bits(), "{} -> {}", value, text);
            }
        }
    }

    #[test]
    fn the_feeds_whole_numbers_end_in_point_zero() {
        let mut out = String::new();
        for value in [1_728_272_700.0, 361.5, 90305.0] {
            write_number(&mut out, value, Whole::PointZero);
            out.push(',');
        }
        assert_eq!(out, "1728272700.0,361.5,90305.0,");
    }
}
