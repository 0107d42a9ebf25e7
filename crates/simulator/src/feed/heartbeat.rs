//! Heartbeats: the feed writes `~h~N` every `heartbeat_secs` and expects the client to echo it;
//! a client that has left a heartbeat unechoed for two intervals is closed (`heartbeat timeout`),
//! as the real feed drops clients that stopped listening.
//!
//! Time is the runtime's clock (`tokio::time`), so a test with paused time sees intervals pass
//! at once.

use std::collections::VecDeque;
use std::time::Duration;

use actix_ws::CloseCode;
use log::info;
use tokio::time::{Instant, Interval, MissedTickBehavior, interval_at};

use super::transport::Transport;
use crate::state::{Counters, SimState};

/// One connection's heartbeats.
pub(super) struct Heartbeats {
    /// Time between heartbeats.
    period: Duration,
    /// Number of the last heartbeat sent (the first is 1).
    last: u64,
    /// Heartbeats sent and not echoed yet, with when each was due, oldest first.
    unechoed: VecDeque<(u64, Instant)>,
}

/// What a heartbeat tick does.
#[derive(Debug, PartialEq, Eq)]
enum Beat {
    /// Send heartbeat `n`.
    Send(u64),
    /// Heartbeat `n` has gone unechoed for two periods: close the connection.
    TimedOut(u64),
}

impl Heartbeats {
    pub fn new(period: Duration) -> Heartbeats {
        Heartbeats {
            period,
            last: 0,
            unechoed: VecDeque::new(),
        }
    }

    /// The timer of this connection's heartbeats: the first one period from now. A late tick
    /// delays the ones after it rather than bunching them up.
    pub fn interval(&self) -> Interval {
        let mut ticker = interval_at(Instant::now() + self.period, self.period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticker
    }

    fn beat(&self, at: Instant) -> Beat {
        match self.unechoed.front() {
            Some(&(n, since)) if at.saturating_duration_since(since) >= self.period * 2 => {
                Beat::TimedOut(n)
            }
            _ => Beat::Send(self.last + 1),
        }
    }

    /// The timer fired at `at`: sends the next heartbeat, or closes a client that stopped
    /// echoing.
    pub async fn on_tick(
        &mut self,
        at: Instant,
        out: &mut Transport,
        state: &SimState,
        connection: u64,
    ) {
        if out.is_stalled(&state.faults()) {
            // A stalled feed sends nothing, heartbeats included, and so expects no echo.
            return;
        }
        match self.beat(at) {
            Beat::TimedOut(n) => {
                info!(
                    "simulator: connection {connection} closed: heartbeat {n} not echoed within {} s",
                    (self.period * 2).as_secs()
                );
                out.close(CloseCode::Policy, "heartbeat timeout");
            }
            Beat::Send(n) => {
                self.last = n;
                let payload = format!("~h~{n}");
                if out.send(&[payload.as_str()]).await {
                    Counters::bump(&state.counters.heartbeats_sent);
                    self.unechoed.push_back((n, at));
                }
            }
        }
    }

    /// The client echoed `~h~n`: heartbeats up to `n` are answered.
    pub fn on_echo(&mut self, n: &str, counters: &Counters) {
        Counters::bump(&counters.heartbeats_echoed);
        if let Ok(n) = n.parse::<u64>() {
            while self.unechoed.front().is_some_and(|&(sent, _)| sent <= n) {
                self.unechoed.pop_front();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_left_unechoed_for_two_periods_times_out() {
        let period = Duration::from_secs(10);
        let counters = Counters::default();
        let mut beats = Heartbeats::new(period);
        let mut ticker = beats.interval();

        let first = ticker.tick().await;
        assert_eq!(beats.beat(first), Beat::Send(1));
        beats.last = 1;
        beats.unechoed.push_back((1, first));

        let second = ticker.tick().await;
        assert_eq!(second - first, period);
        assert_eq!(
            beats.beat(second),
            Beat::Send(2),
            "one period is not enough"
        );
        beats.last = 2;
        beats.unechoed.push_back((2, second));

        let third = ticker.tick().await;
        assert_eq!(beats.beat(third), Beat::TimedOut(1));

        beats.on_echo("1", &counters);
        assert_eq!(
            beats.beat(third),
            Beat::Send(3),
            "heartbeat 2 is one period old"
        );
        beats.on_echo("not a number", &counters);
        beats.on_echo("2", &counters);
        assert!(beats.unechoed.is_empty());
        assert_eq!(counters.heartbeats_echoed.into_inner(), 3);
    }
}
