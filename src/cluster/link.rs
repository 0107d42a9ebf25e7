//! The Redis link's supervision as an explicit state machine, pure (no I/O, no clock): the
//! supervisor task in [`super`] feeds it what happened and does what it answers.
//!
//! `Connecting` (a PING and the completion subscription under way) → `Up` (the cluster's shared
//! state is used) → `Down` (a command, the PING or the subscription failed: every instance serves
//! from its own state) → after a backoff, `Connecting` again. The log hears of it once per
//! episode: when the link goes down and when it is back, not at every failed attempt.

use std::time::Duration;

use crate::upstream::backoff::Backoff;

/// Where the link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Trying to (re)connect; `attempt` counts the failed attempts of this episode before it.
    Connecting { attempt: u32 },
    /// Connected and subscribed: shared state is in use.
    Up,
    /// Not usable; the next attempt is `attempt` (1-based) after its backoff.
    Down { attempt: u32 },
}

/// What the supervisor does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Try to connect now.
    Connect,
    /// Watch the link: renew membership, relay notices, check it when asked.
    Watch,
    /// Wait this long, then call [`Link::retry_due`].
    Wait(Duration),
}

/// A line the operator sees once per change (the supervisor logs it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announce {
    /// The link is up for the first time.
    Connected,
    /// The link went down (or never came up): serving from local state.
    WentDown { reason: String },
    /// The link is back after `attempts` failed attempts.
    Back { attempts: u32 },
}

/// The state machine. The backoff is capped, so a Redis that comes back is found within
/// [`Link::MAX_WAIT`] (there is no "give up": Redis down is a mode the service runs in).
#[derive(Debug, Clone)]
pub struct Link {
    state: State,
    backoff: Backoff,
    /// Whether the operator was told the link is down (and so must be told when it is back).
    said_down: bool,
    /// Whether the link was ever up (the first success says "connected", later ones "back").
    ever_up: bool,
}

impl Link {
    /// The longest wait between two attempts.
    pub const MAX_WAIT: Duration = Duration::from_secs(5);

    pub fn new(backoff: Backoff) -> Self {
        Link {
            state: State::Connecting { attempt: 0 },
            backoff,
            said_down: false,
            ever_up: false,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn is_up(&self) -> bool {
        self.state == State::Up
    }

    /// The attempt succeeded: connected and subscribed.
    pub fn connected(&mut self) -> (Next, Option<Announce>) {
        let attempts = match self.state {
            State::Connecting { attempt } => attempt,
            // Already up (a check that passed): nothing changes.
            State::Up => return (Next::Watch, None),
            State::Down { attempt } => attempt,
        };
        self.state = State::Up;
        let announce = if self.said_down {
            Some(Announce::Back { attempts })
        } else if !self.ever_up {
            Some(Announce::Connected)
        } else {
            None
        };
        self.said_down = false;
        self.ever_up = true;
        (Next::Watch, announce)
    }

    /// An attempt, the periodic check or a command failed.
    pub fn failed(&mut self, reason: &str) -> (Next, Option<Announce>) {
        let attempt = match self.state {
            State::Connecting { attempt } => attempt + 1,
            State::Up => 1,
            // A late report while already down changes nothing.
            State::Down { attempt } => return (Next::Wait(self.wait(attempt)), None),
        };
        self.state = State::Down { attempt };
        let announce = (!self.said_down).then(|| Announce::WentDown {
            reason: reason.to_string(),
        });
        self.said_down = true;
        (Next::Wait(self.wait(attempt)), announce)
    }

    /// The backoff of a `Down` link ran out.
    pub fn retry_due(&mut self) -> Next {
        if let State::Down { attempt } = self.state {
            self.state = State::Connecting { attempt };
        }
        match self.state {
            State::Up => Next::Watch,
            _ => Next::Connect,
        }
    }

    fn wait(&self, attempt: u32) -> Duration {
        self.backoff.delay(attempt).min(Self::MAX_WAIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> Link {
        Link::new(Backoff {
            base: Duration::from_millis(100),
            max_attempts: 0,
            jitter: || 0.5,
        })
    }

    #[test]
    fn the_first_connection_is_announced_once() {
        let mut l = link();
        assert_eq!(l.state(), State::Connecting { attempt: 0 });
        assert_eq!(l.connected(), (Next::Watch, Some(Announce::Connected)));
        assert!(l.is_up());
        // A check that passes while up changes nothing and says nothing.
        assert_eq!(l.connected(), (Next::Watch, None));
    }

    #[test]
    fn going_down_and_coming_back_is_said_once_each_with_a_doubling_capped_backoff() {
        let mut l = link();
        l.connected();
        let (next, say) = l.failed("connection refused");
        assert_eq!(next, Next::Wait(Duration::from_millis(100)));
        assert_eq!(
            say,
            Some(Announce::WentDown {
                reason: "connection refused".into()
            })
        );
        assert!(!l.is_up());
        // A late report from a command while down: no second announcement, same wait.
        assert_eq!(
            l.failed("again"),
            (Next::Wait(Duration::from_millis(100)), None)
        );
        let mut waits = Vec::new();
        for _ in 0..8 {
            assert_eq!(l.retry_due(), Next::Connect);
            let (next, say) = l.failed("refused");
            assert_eq!(say, None, "said once per episode");
            waits.push(next);
        }
        assert_eq!(waits[0], Next::Wait(Duration::from_millis(200)));
        assert_eq!(waits[1], Next::Wait(Duration::from_millis(400)));
        assert_eq!(waits[7], Next::Wait(Link::MAX_WAIT), "capped");
        assert_eq!(l.retry_due(), Next::Connect);
        assert_eq!(
            l.connected(),
            (Next::Watch, Some(Announce::Back { attempts: 9 }))
        );
        // The next episode is announced again.
        assert!(matches!(
            l.failed("reset").1,
            Some(Announce::WentDown { .. })
        ));
    }

    #[test]
    fn redis_unreachable_at_start_is_said_once_then_back() {
        let mut l = link();
        assert!(matches!(
            l.failed("refused").1,
            Some(Announce::WentDown { .. })
        ));
        l.retry_due();
        assert_eq!(l.failed("refused").1, None);
        l.retry_due();
        assert_eq!(l.connected().1, Some(Announce::Back { attempts: 2 }));
    }
}
