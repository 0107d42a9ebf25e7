//! Wall-clock time as the feed counts it: messages are stamped (`t`, `t_ms`) and tokens expire
//! (`exp`) in Unix time, which no monotonic clock can give. The one place that reads it; anything
//! that measures intervals uses the runtime's monotonic clock instead.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the system clock is set before it).
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Seconds since the Unix epoch.
pub fn unix_secs() -> i64 {
    unix_ms() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_and_milliseconds_agree_and_are_after_2025() {
        let (ms, secs) = (unix_ms(), unix_secs());
        assert!(ms > 1_735_689_600_000, "{ms}");
        assert!((secs - ms / 1000).abs() <= 1);
    }
}
