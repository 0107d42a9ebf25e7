//! Durations as log lines print them: `38 ms` below a second, `2.4 s` below ten, `26 s` from
//! there on (sub-10 ms ones with a decimal, `0.4 ms`), so that a 38 ms stream does not read
//! "0.0 s" and a five-minute idle timer does not read "300000 ms".

use std::fmt;
use std::time::Duration;

/// A duration formatted for an operator: `log::info!("... in {}", LogDuration(elapsed))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogDuration(pub Duration);

impl fmt::Display for LogDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Each unit is chosen after rounding, so 999.7 ms prints as 1.0 s, not 1000 ms.
        let micros = self.0.as_micros();
        let tenth_ms = (micros + 50) / 100;
        if tenth_ms < 100 {
            return write!(f, "{}.{} ms", tenth_ms / 10, tenth_ms % 10);
        }
        let ms = (micros + 500) / 1000;
        if ms < 1000 {
            return write!(f, "{ms} ms");
        }
        let tenth_s = (ms + 50) / 100;
        if tenth_s < 100 {
            return write!(f, "{}.{} s", tenth_s / 10, tenth_s % 10);
        }
        write!(f, "{} s", (ms + 500) / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(d: Duration) -> String {
        LogDuration(d).to_string()
    }

    #[test]
    fn each_range_has_its_unit() {
        let ms = Duration::from_millis;
        let us = Duration::from_micros;
        for (d, want) in [
            (Duration::ZERO, "0.0 ms"),
            (us(449), "0.4 ms"),
            (us(3_250), "3.3 ms"),
            (us(9_949), "9.9 ms"),
            (us(9_950), "10 ms"),
            (ms(38), "38 ms"),
            (ms(412), "412 ms"),
            (us(999_499), "999 ms"),
            (us(999_500), "1.0 s"),
            (ms(2_400), "2.4 s"),
            (ms(2_449), "2.4 s"),
            (ms(9_949), "9.9 s"),
            (ms(9_950), "10 s"),
            (ms(26_400), "26 s"),
            (Duration::from_secs(300), "300 s"),
            (Duration::from_secs(86_400), "86400 s"),
        ] {
            assert_eq!(shown(d), want, "{d:?}");
        }
    }
}
