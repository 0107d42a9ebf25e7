//! WebSocket frames in, whole feed messages out.
//!
//! awc hands the connection one frame at a time and does not reassemble continuation frames; the
//! feed sends large answers (a 300-bar chart is one ~118 KB message) that a proxy or the feed may
//! split. [`FrameReader`] keeps the message being assembled, refuses one that grows beyond
//! `upstream.max_frame_bytes`, and says what each frame means for the connection: a text message
//! to decode, a ping to answer, the feed closing. It also sizes the socket's read buffer
//! ([`with_read_buffer`]). No I/O: the connection actor reads the socket and acts on the result.

use awc::ws::Frame;
use bytes::{Bytes, BytesMut};

/// What one frame means for the connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A whole text message: one frame, or the last of a continuation.
    Text(Bytes),
    /// Answer with a pong carrying these bytes.
    Ping(Bytes),
    /// The feed closed the WebSocket; why, as a log line reads it.
    Closed(String),
    /// The message being assembled grew beyond the cap: the connection cannot go on.
    TooLarge { cap: usize },
    /// Nothing to act on: a pong, a binary message, a continuation still incomplete.
    Nothing,
}

/// Reassembles continuation frames into messages, under a size cap.
#[derive(Debug)]
pub struct FrameReader {
    /// `upstream.max_frame_bytes`: the largest message accepted.
    cap: usize,
    /// A text message arriving in continuation frames. `None` between messages and while a
    /// binary message (which the feed never sends, and which is dropped) goes by.
    partial: Option<BytesMut>,
}

impl FrameReader {
    pub fn new(cap: usize) -> Self {
        FrameReader { cap, partial: None }
    }

    /// What `frame` means, given the frames before it.
    pub fn read(&mut self, frame: Frame) -> Incoming {
        use actix_http::ws::Item;
        match frame {
            Frame::Text(bytes) => Incoming::Text(bytes),
            Frame::Binary(_) | Frame::Pong(_) => Incoming::Nothing,
            Frame::Ping(p) => Incoming::Ping(p),
            Frame::Close(reason) => Incoming::Closed(
                reason
                    .map(|r| format!("closed by upstream ({:?})", r.code))
                    .unwrap_or_else(|| "closed by upstream".into()),
            ),
            Frame::Continuation(Item::FirstText(b)) => {
                self.partial = Some(BytesMut::with_capacity(b.len().min(self.cap)));
                self.append(&b)
            }
            Frame::Continuation(Item::FirstBinary(_)) => {
                self.partial = None;
                Incoming::Nothing
            }
            Frame::Continuation(Item::Continue(b)) => self.append(&b),
            Frame::Continuation(Item::Last(b)) => match self.append(&b) {
                Incoming::Nothing => self
                    .partial
                    .take()
                    .map_or(Incoming::Nothing, |buf| Incoming::Text(buf.freeze())),
                other => other,
            },
        }
    }

    /// Adds a continuation's bytes to the message being assembled, if any.
    fn append(&mut self, bytes: &[u8]) -> Incoming {
        let Some(buf) = self.partial.as_mut() else {
            return Incoming::Nothing;
        };
        if buf.len() + bytes.len() > self.cap {
            self.partial = None;
            return Incoming::TooLarge { cap: self.cap };
        }
        buf.extend_from_slice(bytes);
        Incoming::Nothing
    }
}

/// Bytes the connection's read buffer starts with (and grows by, at least, once shared).
/// awc starts it at 8 KiB and grows it 8 KiB at a time, so a 29 KB series answer would be read in
/// four or more calls, its start copied into a bigger buffer at each; with this it is read in one.
pub const READ_BUFFER: usize = 64 * 1024;

/// `framed` with a [`READ_BUFFER`]-sized read buffer, holding whatever was already read.
pub fn with_read_buffer<T, U>(framed: actix_codec::Framed<T, U>) -> actix_codec::Framed<T, U> {
    let mut parts = framed.into_parts();
    let mut read_buf = BytesMut::with_capacity(READ_BUFFER.max(parts.read_buf.len()));
    read_buf.extend_from_slice(&parts.read_buf);
    parts.read_buf = read_buf;
    actix_codec::Framed::from_parts(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_http::ws::Item;
    use awc::ws::{CloseCode, CloseReason};

    fn text(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    fn first(s: &'static str) -> Frame {
        Frame::Continuation(Item::FirstText(text(s)))
    }

    fn more(s: &'static str) -> Frame {
        Frame::Continuation(Item::Continue(text(s)))
    }

    fn last(s: &'static str) -> Frame {
        Frame::Continuation(Item::Last(text(s)))
    }

    /// What a reader with `cap` makes of `frames`, one outcome per frame.
    fn reads(cap: usize, frames: Vec<Frame>) -> Vec<Incoming> {
        let mut reader = FrameReader::new(cap);
        frames.into_iter().map(|f| reader.read(f)).collect()
    }

    #[test]
    fn a_single_text_frame_is_a_message() {
        assert_eq!(
            reads(100, vec![Frame::Text(text("~m~2~m~hi"))]),
            vec![Incoming::Text(text("~m~2~m~hi"))]
        );
    }

    #[test]
    fn continuation_frames_are_reassembled() {
        use Incoming::Nothing;
        let frames = vec![
            first("~m~5"),
            more("~m~he"),
            // A control frame may come between continuations.
            Frame::Ping(text("p")),
            last("llo"),
            // The next message starts afresh: a stray last frame is nothing.
            last("stray"),
        ];
        assert_eq!(
            reads(100, frames),
            vec![
                Nothing,
                Nothing,
                Incoming::Ping(text("p")),
                Incoming::Text(text("~m~5~m~hello")),
                Nothing
            ]
        );
    }

    #[test]
    fn a_message_up_to_the_cap_passes_and_one_beyond_it_is_refused() {
        use Incoming::Nothing;
        let frames = vec![
            first("12345"),
            last("67890"),
            first("12345"),
            more("678901"),
            // What was assembled is dropped: its last frame gives nothing.
            last("x"),
        ];
        assert_eq!(
            reads(10, frames),
            vec![
                Nothing,
                Incoming::Text(text("1234567890")),
                Nothing,
                Incoming::TooLarge { cap: 10 },
                Nothing
            ]
        );
        assert_eq!(
            reads(3, vec![first("1234")]),
            vec![Incoming::TooLarge { cap: 3 }]
        );
    }

    #[test]
    fn binary_messages_are_dropped_whole() {
        // A binary message abandons a text one under way; its continuations give nothing.
        let frames = vec![
            Frame::Binary(text("b")),
            first("abc"),
            Frame::Continuation(Item::FirstBinary(text("b1"))),
            last("b2"),
        ];
        assert!(
            reads(100, frames)
                .iter()
                .all(|outcome| *outcome == Incoming::Nothing)
        );
    }

    #[test]
    fn close_says_why() {
        let reason = CloseReason {
            code: CloseCode::Away,
            description: None,
        };
        let frames = vec![
            Frame::Close(None),
            Frame::Close(Some(reason)),
            Frame::Pong(text("")),
        ];
        assert_eq!(
            reads(100, frames),
            vec![
                Incoming::Closed("closed by upstream".into()),
                Incoming::Closed("closed by upstream (Away)".into()),
                Incoming::Nothing
            ]
        );
    }
}
