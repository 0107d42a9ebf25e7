//! Sending: the one way anything reaches the client, and the state of the link it goes over.
//!
//! [`Transport`] frames packets (`~m~<len>~m~<payload>`) into WebSocket messages and applies the
//! send-side faults as it writes: `malformed_every` (a garbage packet after every Nth real one),
//! `stall_after_messages` (nothing more is written, heartbeats included) and
//! `drop_after_messages` (the TCP connection is cut with no close frame). Faults are read at each
//! send, so `POST /sim/faults` reaches connections that are already open. It also counts what was
//! written, since those faults are counted in messages and packets.

use std::sync::Arc;

use actix_ws::{CloseCode, CloseReason, Session};
use chartgate_protocol::ServerMessage;
use chartgate_protocol::clock::unix_ms;
use chartgate_protocol::encode_packet;

use crate::settings::Faults;
use crate::state::SimState;
use crate::wire::encode_message;

/// The link to the client: open, or over and waiting for the connection loop to end it.
enum Link {
    Open(Session),
    /// The connection loop stops at its next turn and [`Transport::finish`] does what this says.
    Ending(Ending),
}

/// How a connection ends.
enum Ending {
    /// The client closed or vanished, or a write failed: nothing more can be written.
    Gone,
    /// Send a close frame with this reason.
    Close(Session, Option<CloseReason>),
    /// `drop_after_messages`: cut the TCP connection with no close frame.
    Drop(Session),
}

/// The sending half of one connection.
pub(super) struct Transport {
    /// For the faults in force at each send.
    state: Arc<SimState>,
    link: Link,
    /// WebSocket messages written, for `drop_after_messages` and `stall_after_messages`.
    messages_sent: u64,
    /// Packets written, for `malformed_every`.
    packets_sent: u64,
}

impl Transport {
    pub fn new(state: Arc<SimState>, session: Session) -> Transport {
        Transport {
            state,
            link: Link::Open(session),
            messages_sent: 0,
            packets_sent: 0,
        }
    }

    /// The connection goes on (nothing has ended it).
    pub fn is_open(&self) -> bool {
        matches!(self.link, Link::Open(_))
    }

    pub fn messages_sent(&self) -> u64 {
        self.messages_sent
    }

    /// `stall_after_messages` is in force and reached: nothing more is written.
    pub fn is_stalled(&self, faults: &Faults) -> bool {
        faults.stall_after_messages > 0 && self.messages_sent >= faults.stall_after_messages
    }

    /// Open and not stalled.
    pub fn can_send(&self, faults: &Faults) -> bool {
        self.is_open() && !self.is_stalled(faults)
    }

    /// Writes `payloads` as one WebSocket message, applying the send-side faults. Returns whether
    /// the message was written.
    pub async fn send(&mut self, payloads: &[&str]) -> bool {
        let faults = self.state.faults();
        if !self.can_send(&faults) {
            return false;
        }
        let size: usize = payloads.iter().map(|p| p.len() + 16).sum();
        let mut text = String::with_capacity(size + 64);
        for payload in payloads {
            encode_packet(payload, &mut text);
            self.packets_sent += 1;
            if faults.malformed_every > 0
                && self.packets_sent.is_multiple_of(faults.malformed_every)
            {
                // A validly framed packet that is not JSON: a robust client skips it and still
                // gets every real packet.
                let garbage = format!("<sim-malformed-packet #{}>", self.packets_sent);
                encode_packet(&garbage, &mut text);
            }
        }
        self.write(text, &faults).await
    }

    /// Writes a message whose `packets` packets are framed already (an answer written ahead of
    /// its time). Only for when `malformed_every` is off: which packets are corrupted is decided
    /// as they are framed.
    pub async fn send_framed(&mut self, text: String, packets: u64, faults: &Faults) -> bool {
        if !self.can_send(faults) {
            return false;
        }
        self.packets_sent += packets;
        self.write(text, faults).await
    }

    /// Writes one whole message, then applies `drop_after_messages`.
    async fn write(&mut self, text: String, faults: &Faults) -> bool {
        let Link::Open(session) = &mut self.link else {
            return false;
        };
        if session.text(text).await.is_err() {
            self.gone();
            return false;
        }
        self.messages_sent += 1;
        if faults.drop_after_messages > 0
            && self.messages_sent >= faults.drop_after_messages
            && let Some(session) = self.take_session()
        {
            self.link = Link::Ending(Ending::Drop(session));
        }
        true
    }

    /// One server message, stamped now.
    pub async fn send_message(&mut self, message: ServerMessage<'_>) {
        let payload = encode_message(&message, unix_ms());
        self.send(&[payload.as_str()]).await;
    }

    /// `critical_error [reason, method]`: a call the feed cannot take.
    pub async fn critical_error(&mut self, reason: &str, method: &str) {
        self.send_message(ServerMessage::CriticalError {
            session: None,
            reason: reason.into(),
            detail: vec![method.into()],
        })
        .await;
    }

    pub async fn series_error(
        &mut self,
        session: &str,
        series_id: &str,
        turnaround: &str,
        why: &str,
    ) {
        self.send_message(ServerMessage::SeriesError {
            session: session.into(),
            series_id: series_id.into(),
            turnaround: turnaround.into(),
            reason: why.into(),
        })
        .await;
    }

    pub async fn symbol_error(&mut self, session: &str, symbol_id: &str, why: &str) {
        self.send_message(ServerMessage::SymbolError {
            session: session.into(),
            symbol_id: symbol_id.into(),
            reason: why.into(),
        })
        .await;
    }

    /// `protocol_error [reason]`, then a close frame (policy violation) with the same reason.
    pub async fn protocol_error_and_close(&mut self, reason: &str) {
        self.send_message(ServerMessage::ProtocolError {
            reason: reason.into(),
        })
        .await;
        self.close(CloseCode::Policy, reason);
    }

    /// Answers a WebSocket ping.
    pub async fn pong(&mut self, bytes: &[u8]) {
        if let Link::Open(session) = &mut self.link
            && session.pong(bytes).await.is_err()
        {
            self.gone();
        }
    }

    /// Ends the connection with a close frame carrying `code` and `why`.
    pub fn close(&mut self, code: CloseCode, why: &str) {
        self.end_with_close(Some(CloseReason {
            code,
            description: Some(why.into()),
        }));
    }

    /// Ends the connection with a close frame that carries no reason (the client closed first).
    pub fn close_quietly(&mut self) {
        self.end_with_close(None);
    }

    /// Ends the connection with nothing more written.
    pub fn gone(&mut self) {
        self.link = Link::Ending(Ending::Gone);
    }

    /// A close replaces whatever ending came before, as long as there is a session to close.
    fn end_with_close(&mut self, reason: Option<CloseReason>) {
        if let Some(session) = self.take_session() {
            self.link = Link::Ending(Ending::Close(session, reason));
        }
    }

    fn take_session(&mut self) -> Option<Session> {
        match std::mem::replace(&mut self.link, Link::Ending(Ending::Gone)) {
            Link::Open(session)
            | Link::Ending(Ending::Close(session, _))
            | Link::Ending(Ending::Drop(session)) => Some(session),
            Link::Ending(Ending::Gone) => None,
        }
    }

    /// Carries out the ending (a close frame, or a cut with none) and says, for the log, how
    /// the connection ended.
    pub async fn finish(&mut self) -> &'static str {
        match std::mem::replace(&mut self.link, Link::Ending(Ending::Gone)) {
            Link::Ending(Ending::Close(session, reason)) => {
                let _ = session.close(reason).await;
                "closed"
            }
            // Dropping the session ends the response body once the queued messages are written:
            // the socket closes with no close frame.
            Link::Ending(Ending::Drop(_session)) => "dropped (drop_after_messages fault)",
            Link::Ending(Ending::Gone) | Link::Open(_) => "gone",
        }
    }
}
