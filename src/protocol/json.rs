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
}
