//! Framing: a WebSocket text message holds one or more packets `~m~<len>~m~<payload>`, where
//! `<len>` counts the payload's characters. A payload `~h~<n>` is a heartbeat, which the client
//! must echo verbatim.
//!
//! chartgate only ever emits ASCII (see [`super::json`]), where characters and bytes agree. The
//! decoder counts characters, as the protocol does, and never allocates by a declared length: a
//! length that runs past the end of the message is an error, not a reservation.

/// One packet of a message, borrowed from the message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// A heartbeat; the string is the counter after `~h~`, which the echo repeats.
    Heartbeat(&'a str),
    /// A JSON payload (a message object, or the server hello).
    Json(&'a str),
}

/// Why a message could not be split into packets. Says where, never echoes the payload (which may
/// be huge or hold a token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("message is empty")]
    Empty,
    #[error("expected `~m~` at character {at}")]
    MissingMarker { at: usize },
    #[error("packet length at character {at} is not a number")]
    BadLength { at: usize },
    #[error("packet at character {at} declares {declared} characters but only {available} remain")]
    Truncated {
        at: usize,
        declared: usize,
        available: usize,
    },
}

const MARKER: &str = "~m~";
const HEARTBEAT: &str = "~h~";
/// A length longer than this many digits cannot describe a message we would accept anyway.
const MAX_LENGTH_DIGITS: usize = 10;

/// Appends one packet holding `payload` to `out`.
pub fn encode_packet(payload: &str, out: &mut String) {
    use std::fmt::Write;
    let chars = if payload.is_ascii() {
        payload.len()
    } else {
        payload.chars().count()
    };
    // Writing to a String cannot fail.
    let _ = write!(out, "{MARKER}{chars}{MARKER}");
    out.push_str(payload);
}

/// The whole message that answers (or sends) heartbeat number `n`.
pub fn encode_heartbeat(n: &str) -> String {
    let mut out = String::with_capacity(16);
    let payload = format!("{HEARTBEAT}{n}");
    encode_packet(&payload, &mut out);
    out
}

/// Splits a WebSocket text message into its packets.
pub fn decode_message(message: &str) -> Result<Vec<Packet<'_>>, FrameError> {
    if message.is_empty() {
        return Err(FrameError::Empty);
    }
    let ascii = message.is_ascii();
    let mut packets = Vec::new();
    let mut pos = 0;
    while pos < message.len() {
        let rest = &message[pos..];
        let Some(after_marker) = rest.strip_prefix(MARKER) else {
            return Err(FrameError::MissingMarker { at: pos });
        };
        let digits = after_marker.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > MAX_LENGTH_DIGITS {
            return Err(FrameError::BadLength {
                at: pos + MARKER.len(),
            });
        }
        let declared: usize =
            after_marker[..digits]
                .parse()
                .map_err(|_| FrameError::BadLength {
                    at: pos + MARKER.len(),
                })?;
        let Some(body) = after_marker[digits..].strip_prefix(MARKER) else {
            return Err(FrameError::MissingMarker {
                at: pos + MARKER.len() + digits,
            });
        };
        let body_start = pos + 2 * MARKER.len() + digits;
        let len = payload_len(body, declared, ascii).ok_or(FrameError::Truncated {
            at: body_start,
            declared,
            available: body.len(),
        })?;
        let payload = &body[..len];
        packets.push(match payload.strip_prefix(HEARTBEAT) {
            Some(n) => Packet::Heartbeat(n),
            None => Packet::Json(payload),
        });
        pos = body_start + len;
    }
    Ok(packets)
}

/// Byte length of a payload of `chars` characters at the start of `body`, or `None` when `body`
/// is shorter. In non-ASCII text a peer that counted bytes instead of characters is tolerated when
/// only the byte count lands on a packet boundary.
fn payload_len(body: &str, chars: usize, ascii: bool) -> Option<usize> {
    if ascii {
        return (chars <= body.len()).then_some(chars);
    }
    let by_chars = match body.char_indices().nth(chars) {
        Some((end, _)) => Some(end),
        None if body.chars().count() == chars => Some(body.len()),
        None => None,
    };
    let at_boundary = |end: usize| end == body.len() || body[end..].starts_with(MARKER);
    match by_chars {
        Some(end) if at_boundary(end) => Some(end),
        _ if chars <= body.len() && body.is_char_boundary(chars) && at_boundary(chars) => {
            Some(chars)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_several_packets_and_heartbeats() {
        let mut msg = String::new();
        encode_packet(r#"{"m":"a"}"#, &mut msg);
        encode_packet("~h~12", &mut msg);
        encode_packet("", &mut msg);
        assert_eq!(
            decode_message(&msg).unwrap(),
            vec![
                Packet::Json(r#"{"m":"a"}"#),
                Packet::Heartbeat("12"),
                Packet::Json("")
            ]
        );
        assert_eq!(encode_heartbeat("7"), "~m~4~m~~h~7");
    }

    #[test]
    fn malformed_messages_are_typed_errors() {
        assert_eq!(decode_message(""), Err(FrameError::Empty));
        assert_eq!(
            decode_message("hello"),
            Err(FrameError::MissingMarker { at: 0 })
        );
        assert_eq!(
            decode_message("~m~x~m~"),
            Err(FrameError::BadLength { at: 3 })
        );
        assert_eq!(
            decode_message("~m~3~x~abc"),
            Err(FrameError::MissingMarker { at: 4 })
        );
        assert!(matches!(
            decode_message("~m~99999999~m~abc"),
            Err(FrameError::Truncated {
                declared: 99_999_999,
                ..
            })
        ));
        assert!(matches!(
            decode_message("~m~99999999999999999999~m~abc"),
            Err(FrameError::BadLength { .. })
        ));
        assert!(matches!(
            decode_message("~m~1~m~ab"),
            Err(FrameError::MissingMarker { at: 8 })
        ));
    }

    #[test]
    fn non_ascii_lengths_count_characters_and_tolerate_bytes() {
        let mut msg = String::new();
        encode_packet("\"é\"", &mut msg);
        assert!(msg.starts_with("~m~3~m~"));
        encode_packet("x", &mut msg);
        assert_eq!(
            decode_message(&msg).unwrap(),
            vec![Packet::Json("\"é\""), Packet::Json("x")]
        );
        // A peer that counted bytes: 4 bytes for the same payload.
        assert_eq!(
            decode_message("~m~4~m~\"é\"~m~1~m~x").unwrap(),
            vec![Packet::Json("\"é\""), Packet::Json("x")]
        );
    }
}
