//! Every Redis key and channel chartgate uses, in one place, so that "everything is under
//! `chartgate:` and every key has a TTL" can be checked by reading one file.
//!
//! A chart's keys put its identity in a hash tag (`{NSE:TCS:1D:300}`), so that its cached JSON and
//! its lock land in one slot of a Redis Cluster and the scripts that touch both stay legal there.

use crate::cache::ChartKey;
use crate::domain::BarsFormat;
use crate::live::SeriesKey;

/// The namespace of every key and channel.
pub const PREFIX: &str = "chartgate:";

/// Completion notices of chart fetches are published on `chartgate:done:<chart>`; every instance
/// subscribes to the pattern once, when its link comes up.
pub const DONE_PATTERN: &str = "chartgate:done:*";

/// The sorted set of live instances (member: instance id, score: expiry in Redis's clock, ms).
pub const MEMBERS: &str = "chartgate:instances";

/// The sorted set of upstream connection permits (member: instance id and connection id, score:
/// expiry in Redis's clock, ms); see [`super::budget`].
pub const PERMITS: &str = "chartgate:permits";

/// The channel a released permit is announced on, for instances waiting for one.
pub const PERMITS_FREED: &str = "chartgate:permits:freed";

/// `{SYMBOL:RESOLUTION:BARS}`: a chart's identity, as a hash tag.
fn chart_tag(key: &ChartKey) -> String {
    format!(
        "{{{}:{}:{}}}",
        key.symbol.as_str(),
        key.resolution.as_str(),
        key.bars.get()
    )
}

/// The chart's served JSON (`"bars":...,"metadata":...`) in one bars format.
pub fn chart(key: &ChartKey, format: BarsFormat) -> String {
    let format = match format {
        BarsFormat::Objects => "objects",
        BarsFormat::Columns => "columns",
    };
    format!("{PREFIX}chart:{}:{format}", chart_tag(key))
}

/// The single-flight lock of the chart's fetch.
pub fn lock(key: &ChartKey) -> String {
    format!("{PREFIX}lock:{}", chart_tag(key))
}

/// The channel a finished fetch of the chart is announced on (a channel, not a key: it holds
/// nothing).
pub fn done(key: &ChartKey) -> String {
    format!("{PREFIX}done:{}", chart_tag(key))
}

/// `{SYMBOL:RESOLUTION}`: a live series' identity, as a hash tag (its lock and stream share a
/// slot).
fn series_tag(key: &SeriesKey) -> String {
    format!("{{{}:{}}}", key.symbol.as_str(), key.resolution.as_str())
}

/// The lock naming the instance that owns a live series upstream (see [`super::live`]).
pub fn live_owner(key: &SeriesKey) -> String {
    format!("{PREFIX}live:owner:{}", series_tag(key))
}

/// The stream of a live series' updates, written by its owner, read by the other instances.
pub fn live_stream(key: &SeriesKey) -> String {
    format!("{PREFIX}live:stream:{}", series_tag(key))
}

/// A formula's stock list (JSON of `FormulaResult`).
pub fn formula(id: &str) -> String {
    format!("{PREFIX}formula:{id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{BarCount, Resolution};

    #[test]
    fn keys_are_namespaced_and_share_the_charts_hash_tag() {
        let key = ChartKey {
            symbol: "NSE:TCS".parse().unwrap(),
            resolution: Resolution::Day,
            bars: BarCount::new(300).unwrap(),
        };
        assert_eq!(
            chart(&key, BarsFormat::Columns),
            "chartgate:chart:{NSE:TCS:1D:300}:columns"
        );
        assert_eq!(lock(&key), "chartgate:lock:{NSE:TCS:1D:300}");
        assert_eq!(done(&key), "chartgate:done:{NSE:TCS:1D:300}");
        assert!(done(&key).starts_with(DONE_PATTERN.trim_end_matches('*')));
        assert_eq!(formula("breakouts"), "chartgate:formula:breakouts");
        let series = SeriesKey {
            symbol: key.symbol.clone(),
            resolution: key.resolution,
        };
        assert_eq!(live_owner(&series), "chartgate:live:owner:{NSE:TCS:1D}");
        assert_eq!(live_stream(&series), "chartgate:live:stream:{NSE:TCS:1D}");
    }
}
