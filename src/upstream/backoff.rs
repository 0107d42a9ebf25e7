//! How long to wait before the next connection attempt of a failure episode.
//!
//! Exponential from a base, doubling per attempt, scaled by a jitter of ±20 % so that many
//! instances refused at once do not come back at once, for at most `max_attempts` attempts. The
//! jitter is a function the caller chooses: random in service, fixed in tests, so a test can say
//! exactly when the third attempt is due.

use std::time::Duration;

/// The reconnect schedule (`manager.reconnect_backoff_ms`, `manager.max_reconnect_attempts`).
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The wait before the first reconnect attempt, before jitter.
    pub base: Duration,
    /// Reconnect attempts per failure episode before the pool gives up (is `down`).
    pub max_attempts: u32,
    /// A sample in `[0, 1)`; the delay is scaled by `0.8 + 0.4 × sample`.
    pub jitter: fn() -> f64,
}

impl Backoff {
    /// The schedule with random jitter.
    pub fn new(base: Duration, max_attempts: u32) -> Self {
        Backoff {
            base,
            max_attempts,
            jitter: rand::random::<f64>,
        }
    }

    /// The wait before reconnect attempt `attempt` (1-based): `base × 2^(attempt-1)`, jittered.
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(30) as i32;
        let exp = self.base.as_millis() as f64 * 2f64.powi(doublings);
        let scale = 0.8 + 0.4 * (self.jitter)().clamp(0.0, 1.0);
        Duration::from_millis((exp * scale) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(sample: fn() -> f64) -> Backoff {
        Backoff {
            base: Duration::from_millis(1000),
            max_attempts: 3,
            jitter: sample,
        }
    }

    #[test]
    fn doubles_from_the_base() {
        let b = fixed(|| 0.5);
        let delays: Vec<u128> = (1..=4).map(|a| b.delay(a).as_millis()).collect();
        assert_eq!(delays, vec![1000, 2000, 4000, 8000]);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        assert_eq!(fixed(|| 0.0).delay(2), Duration::from_millis(1600));
        assert_eq!(fixed(|| 1.0).delay(2), Duration::from_millis(2400));
        let random = Backoff::new(Duration::from_millis(1000), 3);
        for _ in 0..100 {
            let d = random.delay(1);
            assert!(d >= Duration::from_millis(800) && d <= Duration::from_millis(1200));
        }
    }

    #[test]
    fn a_huge_attempt_number_does_not_overflow() {
        let d = fixed(|| 0.5).delay(u32::MAX);
        assert_eq!(d, Duration::from_millis(1000 * (1 << 30)));
    }
}
