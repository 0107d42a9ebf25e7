//! The service's Prometheus metrics: one registry per running chartgate, not the process-global
//! recorder, so that each instance (several may run in one process: tests, an app that embeds
//! chartgate) reports only its own streams, fetches and leases at its `/metrics`.
//!
//! Each part takes the handles it needs from [`Metrics`] when it is made; a handle is a shared
//! atomic, so counting costs no lookup on the hot path.

use std::sync::Arc;

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

/// Histogram buckets for `*_seconds` metrics: from a cached answer to a slow feed.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The metrics operators rely on: name, kind, help text. All are registered at zero when the
/// registry is made, so a dashboard sees every series from the first scrape.
const DESCRIBED: [(&str, Kind, &str); 18] = [
    (
        "chartgate_http_requests_total",
        Kind::Counter,
        "HTTP requests by route pattern and status",
    ),
    (
        "chartgate_sse_streams_open",
        Kind::Gauge,
        "formula streams currently open",
    ),
    (
        "chartgate_charts_fetched_total",
        Kind::Counter,
        "chart fetches from the feed, by outcome",
    ),
    (
        "chartgate_charts_served_total",
        Kind::Counter,
        "charts served to clients, by outcome (ok, cached, failed)",
    ),
    (
        "chartgate_upstream_connections_open",
        Kind::Gauge,
        "upstream WebSocket connections open",
    ),
    (
        "chartgate_upstream_reconnects_total",
        Kind::Counter,
        "reconnect attempts to the feed",
    ),
    ("chartgate_leases", Kind::Gauge, "live leases (refCount)"),
    (
        "chartgate_cache_hits_total",
        Kind::Counter,
        "chart lookups answered from the cache",
    ),
    (
        "chartgate_cache_joined_total",
        Kind::Counter,
        "chart lookups that joined a fetch already in flight",
    ),
    (
        "chartgate_cache_misses_total",
        Kind::Counter,
        "chart lookups that made a fetch from the feed",
    ),
    (
        "chartgate_chart_fetch_seconds",
        Kind::Histogram,
        "time from dispatch to series_completed",
    ),
    (
        "chartgate_live_series",
        Kind::Gauge,
        "live series subscribed upstream (lingering ones included)",
    ),
    (
        "chartgate_live_relayed",
        Kind::Gauge,
        "live series followed through another instance's upstream subscription (a cluster)",
    ),
    (
        "chartgate_live_followers",
        Kind::Gauge,
        "live streams following charts",
    ),
    (
        "chartgate_live_updates_received_total",
        Kind::Counter,
        "live updates from the feed that changed a series or a quote",
    ),
    (
        "chartgate_live_updates_sent_total",
        Kind::Counter,
        "bar and quote events written to live streams",
    ),
    (
        "chartgate_live_conflated_total",
        Kind::Counter,
        "changes a slow follower never saw because a newer state replaced them",
    ),
    (
        "chartgate_live_delivery_seconds",
        Kind::Histogram,
        "from a live update's arrival to its write to a follower (the oldest of each write)",
    ),
];

/// Buckets of `chartgate_live_delivery_seconds`: a live update reaches a reader in well under a
/// millisecond to a few, unless the reader is slow.
const DELIVERY_BUCKETS: [f64; 10] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0,
];

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One chartgate's metrics registry; cheap to clone (the clones share it).
#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A new, empty registry with every described metric at zero.
    pub fn new() -> Metrics {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("chartgate_live_delivery_seconds".into()),
                &DELIVERY_BUCKETS,
            )
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS))
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let metrics = Metrics {
            recorder: Arc::new(builder.build_recorder()),
        };
        for (name, kind, help) in DESCRIBED {
            let (key, help) = (name.into(), SharedString::const_str(help));
            match kind {
                Kind::Counter => {
                    metrics.recorder.describe_counter(key, None, help);
                    metrics.counter(name, &[]).increment(0);
                }
                Kind::Gauge => {
                    metrics.recorder.describe_gauge(key, None, help);
                    metrics.gauge(name).increment(0.0);
                }
                Kind::Histogram => {
                    metrics
                        .recorder
                        .describe_histogram(key, Some(Unit::Seconds), help);
                }
            }
        }
        metrics
    }

    /// The counter `name` with `labels`.
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &'static str)]) -> Counter {
        let labels = labels.iter().map(|&(k, v)| Label::from_static_parts(k, v));
        self.recorder
            .register_counter(&Key::from_parts(name, labels.collect::<Vec<_>>()), &META)
    }

    /// The counter `name` with labels known only at run time (a route pattern, a status).
    pub fn counter_with(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &META)
    }

    pub fn gauge(&self, name: &'static str) -> Gauge {
        self.recorder
            .register_gauge(&Key::from_static_name(name), &META)
    }

    pub fn histogram(&self, name: &'static str) -> Histogram {
        self.recorder
            .register_histogram(&Key::from_static_name(name), &META)
    }

    /// Folds recorded histogram samples into their buckets. The recorder keeps samples until
    /// then; [`crate::app`] calls this every few seconds so an unscraped registry stays small.
    pub fn upkeep(&self) {
        self.recorder.handle().run_upkeep();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.recorder.handle().render()
    }
}

static META: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse().ok())
    }

    #[test]
    fn registries_are_separate_and_start_at_zero() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.counter("chartgate_charts_fetched_total", &[("outcome", "ok")])
            .increment(3);
        a.gauge("chartgate_leases").set(2.0);
        let (a, b) = (a.render(), b.render());
        assert_eq!(
            value(&a, "chartgate_charts_fetched_total{outcome=\"ok\"} "),
            Some(3.0)
        );
        assert_eq!(value(&a, "chartgate_leases "), Some(2.0));
        assert_eq!(value(&b, "chartgate_leases "), Some(0.0), "{b}");
        assert_eq!(
            value(&b, "chartgate_charts_fetched_total{outcome=\"ok\"} "),
            None
        );
        assert!(b.contains("# HELP chartgate_cache_joined_total"), "{b}");
    }

    #[test]
    fn live_delivery_has_sub_millisecond_buckets_and_upkeep_folds_samples() {
        let m = Metrics::new();
        m.histogram("chartgate_live_delivery_seconds")
            .record(0.0002);
        m.histogram("chartgate_chart_fetch_seconds").record(0.2);
        m.upkeep();
        let text = m.render();
        assert_eq!(
            value(
                &text,
                "chartgate_live_delivery_seconds_bucket{le=\"0.00025\"} "
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(&text, "chartgate_chart_fetch_seconds_bucket{le=\"0.25\"} "),
            Some(1.0),
            "{text}"
        );
    }
}
