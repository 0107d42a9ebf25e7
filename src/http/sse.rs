//! The `text/event-stream` body of the formula stream: SSE framing around shared bytes.
//!
//! A `chart-batch` event is about a megabyte, nearly all of it chart JSON that is the same for
//! every client (made once per chart and format, see [`crate::ready_chart::ReadyChart`]). So an
//! [`Event`] here is a list of [`Bytes`]: the framing and the few per-stream fields are written
//! per event, the chart JSON is shared by reference, and the only copy in the process is
//! actix-http's, into the connection's write buffer. A general SSE encoder (actix-web-lab's `Sse`
//! included) takes each event's data as one string, scans it for line breaks and copies it into
//! a new buffer, which for a thousand clients of one screen is gigabytes copied twice more.
//!
//! Every event's data is one line of JSON (serde_json and the chart writer escape line breaks), so
//! there is nothing to split: each event is `event:`, `id:`, one `data:` line and a blank line.
//! `retry:` is a line of the stream's first event, not a block of its own: a block with no data
//! dispatches nothing in a browser, but some SSE clients (httpx-sse, for one) report it as an
//! empty event.
//!
//! The body also yields its worker thread after [`YIELD_AFTER_BYTES`]: actix-http keeps polling a
//! body for as long as the socket takes bytes, and on loopback one fast reader of cached batches
//! would otherwise hold a worker for many megabytes while a new request waits for its first event.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::HttpResponse;
use actix_web::body::{BodySize, MessageBody};
use actix_web::http::header::{CacheControl, CacheDirective, ContentType};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;
use serde::Serialize;

/// Bytes a body hands to its connection before letting other tasks on the worker run: one
/// actix-http write buffer's worth. A smaller budget costs throughput; a larger one makes a new
/// request's first event wait behind more of another client's batches.
pub const YIELD_AFTER_BYTES: usize = 32 * 1024;

/// Shared chunks shorter than this are copied into the framing instead: a separate piece costs
/// more than copying a few hundred bytes.
const SHARE_FROM_BYTES: usize = 1024;

/// One encoded event (or comment): the bytes to write, in order.
#[derive(Debug, Default)]
pub struct Event {
    parts: Vec<Bytes>,
}

impl Event {
    /// A `: <text>` comment, which clients ignore (keep-alives).
    pub fn comment(text: &str) -> Event {
        Event {
            parts: vec![Bytes::from(format!(": {text}\n\n"))],
        }
    }

    /// The event with a `retry: <ms>` line first (how long a client waits before reconnecting),
    /// for the first event of a stream. Only for events: in a comment's block it would make a
    /// block with no data.
    pub fn with_retry(mut self, retry: Duration) -> Event {
        let line = Bytes::from(format!("retry: {}\n", retry.as_millis()));
        self.parts.insert(0, line);
        self
    }

    /// An event whose data is `payload` serialised as JSON.
    pub fn json(name: &str, id: &str, payload: &impl Serialize) -> Event {
        let mut event = EventBuilder::new(name, id);
        if serde_json::to_writer((&mut event.buf).writer(), payload).is_err() {
            event.text("{}");
        }
        event.finish()
    }

    /// Whether this is a comment (a keep-alive), which no client reports as an event.
    pub fn is_comment(&self) -> bool {
        self.parts.first().is_some_and(|p| p.starts_with(b":"))
    }

    /// How many bytes the event takes on the wire (before HTTP chunk framing).
    pub fn len(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The event as one buffer: for tests and benchmarks that read what a client receives.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.len());
        for part in &self.parts {
            out.extend_from_slice(part);
        }
        out.freeze()
    }
}

/// Writes one data event: `event:` and `id:` lines, then a `data:` line assembled from text and
/// shared chunks. The data must hold no line break (it is always one line of JSON here).
#[derive(Debug)]
pub struct EventBuilder {
    parts: Vec<Bytes>,
    buf: BytesMut,
}

impl EventBuilder {
    pub fn new(name: &str, id: &str) -> EventBuilder {
        let mut buf = BytesMut::with_capacity(256);
        let _ = write!(buf, "event: {name}\nid: {id}\ndata: ");
        EventBuilder {
            parts: Vec::new(),
            buf,
        }
    }

    /// Appends text written for this event.
    pub fn text(&mut self, text: &str) -> &mut Self {
        self.buf.extend_from_slice(text.as_bytes());
        self
    }

    /// Appends formatted text (numbers, mostly) without an intermediate string.
    pub fn fmt(&mut self, args: std::fmt::Arguments<'_>) -> &mut Self {
        let _ = self.buf.write_fmt(args);
        self
    }

    /// Appends `s` as a JSON string.
    pub fn json_str(&mut self, s: &str) -> &mut Self {
        if serde_json::to_writer((&mut self.buf).writer(), s).is_err() {
            self.buf.extend_from_slice(b"\"\"");
        }
        self
    }

    /// Appends bytes shared with other events (a cached chart's JSON) by reference.
    pub fn shared(&mut self, bytes: &Bytes) -> &mut Self {
        if bytes.len() < SHARE_FROM_BYTES {
            self.buf.extend_from_slice(bytes);
        } else {
            if !self.buf.is_empty() {
                self.parts.push(self.buf.split().freeze());
            }
            self.parts.push(bytes.clone());
        }
        self
    }

    pub fn finish(mut self) -> Event {
        self.buf.extend_from_slice(b"\n\n");
        self.parts.push(self.buf.freeze());
        Event { parts: self.parts }
    }
}

/// Many small events written into one buffer (a live stream's `bar` and `quote` events of one
/// drain), handed to the body as one [`Event`]: one write and one wake-up for all of them.
#[derive(Debug, Default)]
pub struct EventBatch {
    buf: BytesMut,
    events: usize,
}

impl EventBatch {
    /// Appends an event whose data is `data`, one line of JSON.
    pub fn push(&mut self, name: &str, id: &str, data: &[u8]) {
        self.buf.reserve(data.len() + name.len() + id.len() + 24);
        // Plain copies: formatting the prefix was a twentieth of a live stream's CPU.
        for part in [
            b"event: ".as_slice(),
            name.as_bytes(),
            b"\nid: ",
            id.as_bytes(),
            b"\ndata: ",
            data,
            b"\n\n",
        ] {
            self.buf.extend_from_slice(part);
        }
        self.events += 1;
    }

    /// Events written so far.
    pub fn len(&self) -> usize {
        self.events
    }

    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// The events as one, leaving the batch empty. The buffer goes with them rather than keep
    /// its capacity for the next chunk: an idle follower holds no buffer.
    pub fn take(&mut self) -> Event {
        self.events = 0;
        Event {
            parts: vec![std::mem::take(&mut self.buf).freeze()],
        }
    }
}

/// The response body: events already known when the response starts (for a new stream,
/// `formula-results`, so it leaves with the response head), then the events of `rest`,
/// pulled one at a time as the connection takes them. Dropping the body (the client went away)
/// drops `rest` and whatever work it holds.
pub struct EventStream {
    /// The parts of the event being written, in order.
    parts: VecDeque<Bytes>,
    rest: Pin<Box<dyn Stream<Item = Event>>>,
    /// Bytes handed over since this body last returned `Pending`.
    since_yield: usize,
}

impl EventStream {
    pub fn new(first: Vec<Event>, rest: impl Stream<Item = Event> + 'static) -> EventStream {
        EventStream {
            parts: first.into_iter().flat_map(|e| e.parts).collect(),
            rest: Box::pin(rest),
            since_yield: 0,
        }
    }

    /// `200 text/event-stream` with the headers of SPEC 3.1. Never compressed: no `Compress`
    /// middleware wraps the API (it would buffer the stream), and no `Content-Encoding` is sent,
    /// since "identity" is not a content coding to name.
    pub fn into_response(self) -> HttpResponse {
        HttpResponse::Ok()
            .insert_header(ContentType(actix_web::mime::TEXT_EVENT_STREAM))
            .insert_header(CacheControl(vec![CacheDirective::NoCache]))
            .insert_header(("X-Accel-Buffering", "no"))
            .body(self)
    }
}

impl MessageBody for EventStream {
    type Error = std::convert::Infallible;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = &mut *self;
        if this.since_yield >= YIELD_AFTER_BYTES {
            this.since_yield = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        loop {
            if let Some(part) = this.parts.pop_front() {
                this.since_yield += part.len();
                return Poll::Ready(Some(Ok(part)));
            }
            match this.rest.as_mut().poll_next(cx) {
                Poll::Ready(Some(event)) => this.parts.extend(event.parts),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {
                    this.since_yield = 0;
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::future::poll_fn;

    fn text(event: &Event) -> String {
        String::from_utf8(event.to_bytes().to_vec()).unwrap()
    }

    #[test]
    fn events_are_framed_as_one_data_line() {
        let shared = Bytes::from(vec![b'x'; 2000]);
        let mut b = EventBuilder::new("chart-batch", "a.b.01");
        b.text("{\"k\":").json_str("q\"\n").text(",\"v\":\"");
        b.shared(&shared).shared(&Bytes::from_static(b"tiny"));
        b.fmt(format_args!("\",\"n\":{}}}", 42));
        let event = b.finish();
        let expected = format!(
            "event: chart-batch\nid: a.b.01\ndata: {{\"k\":\"q\\\"\\n\",\"v\":\"{}tiny\",\"n\":42}}\n\n",
            "x".repeat(2000)
        );
        assert_eq!(text(&event), expected);
        assert_eq!(event.len(), expected.len());
        // The big chunk is shared, not copied: framing before it, it, and the rest after it.
        assert_eq!(event.parts.len(), 3);
        assert_eq!(event.parts[1].as_ptr(), shared.as_ptr());
    }

    #[test]
    fn comments_retry_and_json_events() {
        assert_eq!(text(&Event::comment("keep-alive")), ": keep-alive\n\n");
        assert!(Event::comment("keep-alive").is_comment());
        let first = Event::json("formula-results", "x.00", &serde_json::json!({"a": 1}));
        assert!(!first.is_comment());
        assert_eq!(
            text(&first.with_retry(Duration::from_millis(2000))),
            "retry: 2000\nevent: formula-results\nid: x.00\ndata: {\"a\":1}\n\n"
        );
        assert_eq!(
            text(&Event::json(
                "complete",
                "x.done",
                &serde_json::json!({"a": "b\nc"})
            )),
            "event: complete\nid: x.done\ndata: {\"a\":\"b\\nc\"}\n\n"
        );
    }

    /// Polls the body until it is pending or done: (bytes it handed over, whether it ended).
    fn drain(body: &mut EventStream, cx: &mut Context<'_>) -> (usize, bool) {
        let mut n = 0;
        loop {
            match Pin::new(&mut *body).poll_next(cx) {
                Poll::Ready(Some(Ok(b))) => n += b.len(),
                Poll::Ready(None) => return (n, true),
                Poll::Pending => return (n, false),
                Poll::Ready(Some(Err(e))) => match e {},
            }
        }
    }

    #[actix_web::test]
    async fn first_events_then_the_rest_then_end() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
        let rest = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let mut body = EventStream::new(
            vec![
                Event::json("e", "i", &1).with_retry(Duration::from_secs(1)),
                Event::comment("one"),
            ],
            rest,
        );
        poll_fn(|cx| {
            assert_eq!(
                drain(&mut body, cx),
                (
                    "retry: 1000\nevent: e\nid: i\ndata: 1\n\n: one\n\n".len(),
                    false
                )
            );
            Poll::Ready(())
        })
        .await;
        tx.send(Event::comment("two")).unwrap();
        drop(tx);
        poll_fn(|cx| {
            assert_eq!(drain(&mut body, cx), (": two\n\n".len(), true));
            Poll::Ready(())
        })
        .await;
    }

    #[actix_web::test]
    async fn a_busy_body_yields_after_its_budget() {
        let chunk = Bytes::from(vec![b'x'; 100 * 1024]);
        let events: Vec<Event> = (0..5)
            .map(|_| {
                let mut b = EventBuilder::new("e", "i");
                b.shared(&chunk);
                b.finish()
            })
            .collect();
        let mut body = EventStream::new(Vec::new(), futures_util::stream::iter(events));
        let mut rounds = Vec::new();
        poll_fn(|cx| {
            loop {
                let (n, done) = drain(&mut body, cx);
                rounds.push(n);
                if done {
                    return Poll::Ready(());
                }
            }
        })
        .await;
        // Every round but the last stops at the first part past the budget.
        let total: usize = rounds.iter().sum();
        assert!(total > 5 * 100 * 1024);
        assert!(rounds.len() >= 2, "{rounds:?}");
        for n in &rounds[..rounds.len() - 1] {
            assert!(
                *n >= YIELD_AFTER_BYTES && *n < YIELD_AFTER_BYTES + 100 * 1024 + 64,
                "{rounds:?}"
            );
        }
    }
}
