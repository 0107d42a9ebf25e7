//! The live scenarios of issue 12: followers of `live=true` streams, the feed ticking under them.
//!
//! - `live-fanout`: 10,000 followers of 50-stock screens over 500 (symbol, 1D) charts, the feed
//!   ticking every chart every `tick_ms` (1000, 500, 200, 100, 50, 20) until the service
//!   saturates: updates delivered per second, feed-to-client latency, service CPU per delivered
//!   update, RSS per follower. Then, at the 1 s tick, fewer and fewer followers (5,000 ... 200):
//!   every chart ticks at the same instant, so a tick is one burst of followers x 50 deliveries,
//!   and the latency is the time that burst takes.
//! - `live-slow`: slow followers (a small receive buffer, a pause after every read) beside fast
//!   ones: the fast ones' latency with and without them, the service's memory while the slow
//!   ones lag, `live.conflated`.
//! - `live-resume`: reconnecting with `Last-Event-ID`: time to the first live event and bars
//!   re-sent, beside fresh streams of the same screens.
//!
//! **Latency.** Every follower of a chart gets the same `bar` bytes for the same state, so the
//! load client hashes each live event's data and, for a sample of states (every delivery of
//! them), records every arrival ([`crate::tally`]). A state's tick is the feed's grid instant at
//! or before the state's first arrival at any follower, and an arrival's latency is its time
//! past that tick; this stays right past one tick of delay, as long as the first delivery of a
//! state comes within a tick. The grid (the simulator ticks every connection at
//! `epoch + k * tick_ms`) is located by a probe subscribed to the feed directly
//! ([`crate::probe`]): the earliest arrival of its `du` packets modulo 1000 ms, in a quiet
//! second before any follower opens; every tick used divides 1000 ms, so the same phase places
//! every level's grid. The figure is thus from the moment the feed delivers a tick to a direct
//! subscriber, when idle, to the moment a follower has read it; the feed's own lateness under
//! load (the probe's arrivals past the grid) is reported beside it.

use std::time::Duration;

use actix_web::rt::time::{Instant, sleep};
use futures_util::FutureExt;
use futures_util::future::LocalBoxFuture;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::load::{LiveSpec, LoadClient, Slow, StreamResult, StreamSpec};
use crate::probe::{self, FeedProbe};
use crate::procs::{self, Service, Simulator};
use crate::report::{Report, Row, median, ms, percentile};
use crate::scenarios::{Cpu, Ctx};
use crate::tally::{self, Grid, Tally, latencies, unix_ns};

/// Sizes given on the command line, over each scenario's defaults.
#[derive(Debug, Clone, Default)]
pub struct LiveSizes {
    pub followers: Option<usize>,
    pub charts: Option<usize>,
    pub ticks: Option<Vec<u64>>,
    pub window_secs: Option<f64>,
    /// Bars of each chart's history.
    pub bars: Option<usize>,
}

const STREAM: &str = "/api/formula-results-with-charts";
/// Stocks per follower's screen.
const SCREEN: usize = 50;
/// Bars of each chart's history by default: small, the history is not what these scenarios are
/// about.
const HISTORY_BARS: usize = 10;
/// The simulator's default pace, at which the grid is located.
const CALIBRATION_TICK_MS: u64 = 1000;
/// Streams waiting for their first live event at once while followers open.
const MAX_OPENING: usize = 256;
/// States sampled for latency: one in 2^bits, each at every follower.
const SAMPLE_BITS: u32 = 3;

/// `NSE:` and the simulator's tickers in its order, then its synthetic ones (as its screens
/// append them), `charts` in all.
pub(crate) fn symbols(charts: usize) -> Vec<String> {
    let mut out: Vec<String> = chartgate_simulator::tickers::NSE_TICKERS
        .iter()
        .take(charts)
        .map(|(t, _)| format!("NSE:{t}"))
        .collect();
    let mut n = 1;
    while out.len() < charts {
        out.push(format!("NSE:SIMSTOCK{n:04}"));
        n += 1;
    }
    out
}

/// Percent-encodes a symbol for a query (`M&M`).
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b":._-".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The followers' screens: follower `i` watches `size` consecutive symbols from `i * stride`
/// (wrapping), the stride prime to the number of charts, so that `charts` followers in turn start
/// at every chart once and every chart has the same number of followers.
struct Screens {
    symbols: Vec<String>,
    size: usize,
    stride: usize,
    bars: usize,
}

impl Screens {
    fn new(charts: usize, bars: Option<usize>) -> Screens {
        let charts = charts.max(1);
        let stride = (7..).find(|s| gcd(*s, charts) == 1).unwrap_or(1);
        Screens {
            symbols: symbols(charts),
            size: SCREEN.min(charts),
            stride,
            bars: bars.unwrap_or(HISTORY_BARS).clamp(1, 5000),
        }
    }

    /// Follower `follower`'s request.
    fn path(&self, follower: usize) -> String {
        self.path_from(follower.wrapping_mul(self.stride))
    }

    /// The request for the screen starting at chart `start`.
    fn path_from(&self, start: usize) -> String {
        let n = self.symbols.len();
        let list: Vec<String> = (0..self.size)
            .map(|j| encode(&self.symbols[(start + j) % n]))
            .collect();
        format!(
            "{STREAM}?symbols={}&resolutions=1D&bars={}&live=true",
            list.join(","),
            self.bars
        )
    }

    /// Followers per chart on average.
    fn per_chart(&self, followers: usize) -> f64 {
        (followers * self.size) as f64 / self.symbols.len() as f64
    }
}

/// The service with room for `charts` live series on 10 connections.
async fn start_service(
    ctx: &Ctx,
    tag: &str,
    sim: &Simulator,
    charts: usize,
) -> Result<Service, String> {
    let connections = 10usize;
    let per_connection = charts.div_ceil(connections) + 8;
    Service::start(
        &ctx.bin,
        &ctx.logs,
        tag,
        sim,
        &[
            ("pool.max_connections", connections.to_string()),
            ("live.series_per_connection", per_connection.to_string()),
        ],
    )
    .await
}

fn check_fd_limit(streams: usize) -> Result<(), String> {
    if let Some(limit) = procs::open_files_limit()
        && limit < streams as u64 + 256
    {
        return Err(format!(
            "the open-files limit is {limit}; {streams} streams need {} in the harness and as \
             many in the service, which inherits it (raise it with ulimit -n)",
            streams + 256
        ));
    }
    Ok(())
}

/// The simulator with the probe following its feed, and the grid located at the calibration
/// tick: `(phase_ns modulo 1000 ms, the probe's t_ms-based phase in ms, for the record)`.
async fn start_feed(ctx: &Ctx, tag: &str) -> Result<(Simulator, FeedProbe, i64, i64), String> {
    let sim = Simulator::start(&ctx.bin, &ctx.logs, tag).await?;
    sim.set_faults(json!({"tick_ms": CALIBRATION_TICK_MS}))
        .await?;
    let probe = FeedProbe::start(&sim.feed_url());
    let tick_ns = (CALIBRATION_TICK_MS * 1_000_000) as i64;
    let from = unix_ns();
    // The probe's series starts moving at its second tick; then a few ticks.
    let ticks = if ctx.quick { 3 } else { 5 };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if probe.arrivals_since(from).len() >= ticks {
            break;
        }
        if Instant::now() > deadline {
            return Err("the feed probe got no live update in 30 s".into());
        }
        sleep(Duration::from_millis(100)).await;
    }
    let arrivals = probe.arrivals_since(from);
    let phase = probe::grid_phase(&arrivals, tick_ns).ok_or("no probe arrivals")?;
    let t_ms_phase = arrivals
        .iter()
        .map(|a| a.t_ms.rem_euclid(CALIBRATION_TICK_MS as i64))
        .min()
        .unwrap_or(0);
    Ok((sim, probe, phase, t_ms_phase))
}

fn grid(phase_1000_ns: i64, tick_ms: u64) -> Grid {
    let tick_ns = (tick_ms.max(1) * 1_000_000) as i64;
    Grid {
        phase_ns: phase_1000_ns.rem_euclid(tick_ns),
        tick_ns,
    }
}

/// Waits until `after` past the next grid instant.
async fn align(grid: Grid, after: Duration) {
    let now = unix_ns();
    let next = grid.tick_of(now) + grid.tick_ns + after.as_nanos() as i64;
    sleep(Duration::from_nanos((next - now).max(0) as u64)).await;
}

/// Streams held open until their hold is released.
pub(crate) struct Held {
    hold: watch::Sender<bool>,
    pending: Vec<LocalBoxFuture<'static, StreamResult>>,
    pub opened: usize,
    pub open_time: Duration,
}

impl Held {
    /// Hangs every stream up; their results.
    pub async fn release(self) -> Vec<StreamResult> {
        let _ = self.hold.send(true);
        futures_util::future::join_all(self.pending).await
    }
}

/// Opens `specs`, at most [`MAX_OPENING`] waiting for their first live event at once, and
/// waits until each has had it or failed (or `deadline` passed).
pub(crate) async fn open(client: &LoadClient, specs: Vec<StreamSpec>, deadline: Duration) -> Held {
    let (hold, hold_rx) = watch::channel(false);
    let (open_tx, mut open_rx) = mpsc::unbounded_channel();
    let total = specs.len();
    let started = Instant::now();
    let until = started + deadline;
    let mut pending = Vec::with_capacity(total);
    let (mut settled, mut opened) = (0usize, 0usize);
    for mut spec in specs {
        while pending.len() - settled >= MAX_OPENING {
            match open_rx.recv().await {
                Some(ok) => {
                    settled += 1;
                    opened += usize::from(ok);
                }
                None => break,
            }
        }
        spec.hold = Some(hold_rx.clone());
        spec.opened = Some(open_tx.clone());
        pending.push(client.stream(spec).boxed_local());
    }
    while settled < total {
        tokio::select! {
            Some(ok) = open_rx.recv() => {
                settled += 1;
                opened += usize::from(ok);
            }
            _ = sleep(Duration::from_millis(200)) => {
                if Instant::now() > until {
                    break;
                }
            }
        }
    }
    Held {
        hold,
        pending,
        opened,
        open_time: started.elapsed(),
    }
}

pub(crate) fn live_spec(path: String, live: LiveSpec) -> StreamSpec {
    StreamSpec {
        path,
        live: Some(live),
        ..StreamSpec::default()
    }
}

/// The `live` object of the service's stats, and the simulator's `updatesSent`.
async fn counters(svc: &Service, sim: &Simulator) -> Result<(Value, u64), String> {
    let live = svc.stats().await?["live"].clone();
    let feed = sim.stats().await?["updatesSent"].as_u64().unwrap_or(0);
    Ok((live, feed))
}

fn delta(before: &Value, after: &Value, key: &str) -> u64 {
    after[key]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(before[key].as_u64().unwrap_or(0))
}

/// One measured window: what every process did and what the followers read.
struct Window {
    wall: Duration,
    from_ns: i64,
    to_ns: i64,
    tally: Tally,
    /// CPU microseconds: service, simulator, harness.
    cpu: (u64, u64, u64),
    live_before: Value,
    live_after: Value,
    feed_updates: u64,
    rss_after: u64,
}

impl Window {
    fn secs(&self) -> f64 {
        self.wall.as_secs_f64().max(1e-9)
    }

    fn rate(&self, n: u64) -> f64 {
        n as f64 / self.secs()
    }

    fn live(&self, key: &str) -> u64 {
        delta(&self.live_before, &self.live_after, key)
    }

    fn cpu_pct(&self, us: u64) -> f64 {
        us as f64 / 1e6 / self.secs() * 100.0
    }
}

/// Measures a whole number of ticks, `window` rounded, from half a tick past a grid instant to
/// half a tick past a later one: counts read at both ends are then cut at the same point of the
/// tick, so what one tick changes falls wholly inside the window or wholly outside it.
async fn measure(
    client: &LoadClient,
    svc: &Service,
    sim: &Simulator,
    window: Duration,
    grid: Grid,
) -> Result<Window, String> {
    let tick = Duration::from_nanos(grid.tick_ns.max(1) as u64);
    let ticks = (window.as_secs_f64() / tick.as_secs_f64()).round().max(1.0) as u32;
    align(grid, tick / 2).await;
    let end = Instant::now() + tick * ticks;
    let (live_before, feed_before) = counters(svc, sim).await?;
    client.collect().await;
    let before = Cpu::now(svc, sim);
    let (from_ns, t0) = (unix_ns(), Instant::now());
    actix_web::rt::time::sleep_until(end).await;
    let (live_after, feed_after) = counters(svc, sim).await?;
    let tally = client.collect().await;
    let (to_ns, wall) = (unix_ns(), t0.elapsed());
    let after = Cpu::now(svc, sim);
    Ok(Window {
        wall,
        from_ns,
        to_ns,
        tally,
        cpu: before.since(&after),
        live_before,
        live_after,
        feed_updates: feed_after.saturating_sub(feed_before),
        rss_after: after.service.rss,
    })
}

fn p(values: &[f64], q: f64) -> f64 {
    percentile(values, q)
}

fn window_secs(ctx: &Ctx, full: f64, quick: f64) -> Duration {
    let secs = ctx
        .live
        .window_secs
        .unwrap_or(if ctx.quick { quick } else { full });
    Duration::from_secs_f64(secs.max(0.5))
}

fn stream_errors(results: &[StreamResult]) -> (usize, Option<String>) {
    let bad: Vec<&StreamResult> = results
        .iter()
        .filter(|r| r.error.is_some() || !r.released)
        .collect();
    let first = bad.first().map(|r| {
        r.error
            .clone()
            .unwrap_or_else(|| "not held to the end".into())
    });
    (bad.len(), first)
}

// ------------------------------------------------------------------------------------------------

/// One tick level of `live-fanout`.
#[derive(Debug, serde::Serialize)]
struct Level {
    tick_ms: u64,
    followers: usize,
    /// Followers x charts per screen: the deliveries one tick offers when all its charts change.
    deliveries_per_tick: usize,
    window_ms: f64,
    delivered_per_s: f64,
    offered_per_s: f64,
    feed_updates_per_s: f64,
    service_received_per_s: f64,
    service_sent_per_s: f64,
    conflated_per_s: f64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    latency_max_ms: f64,
    first_delivery_p50_ms: f64,
    first_delivery_p99_ms: f64,
    spread_p99_ms: f64,
    feed_lateness_p50_ms: f64,
    feed_lateness_p99_ms: f64,
    latency_samples: usize,
    service_cpu_pct: f64,
    simulator_cpu_pct: f64,
    client_cpu_pct: f64,
    service_cpu_us_per_delivery: f64,
    service_rss_mb: f64,
    saturated: bool,
}

/// The followers left at each step of the second sweep (at the 1 s tick), largest first after
/// all of them.
fn sweep(quick: bool) -> Vec<usize> {
    if quick {
        vec![50, 100, 200]
    } else {
        vec![200, 500, 1000, 2000, 5000]
    }
}

/// What a `live-fanout` level needs.
struct Run<'a> {
    client: &'a LoadClient,
    svc: &'a Service,
    sim: &'a Simulator,
    probe: &'a FeedProbe,
    phase: i64,
    window: Duration,
    screen: usize,
    charts: usize,
}

impl Run<'_> {
    /// Sets the feed's tick, lets it settle, and measures one level with `followers` open.
    async fn level(&self, tick_ms: u64, followers: usize) -> Result<Level, String> {
        let (client, svc, sim) = (self.client, self.svc, self.sim);
        sim.set_faults(json!({"tick_ms": tick_ms})).await?;
        let settle = Duration::from_millis((tick_ms * 3).max(1500));
        sleep(settle).await;
        let g = grid(self.phase, tick_ms);
        let w = measure(client, svc, sim, self.window, g).await?;
        let lat = latencies(&w.tally, g, w.from_ns, w.to_ns, 0);
        let probe_late: Vec<f64> = self
            .probe
            .arrivals_since(w.from_ns)
            .into_iter()
            .filter(|a| a.at_ns < w.to_ns)
            .map(|a| g.lateness_ms(a.at_ns))
            .collect();
        let delivered = w.tally.bars[0];
        let received = w.live("updatesReceived");
        let per_chart = (followers * self.screen) as f64 / self.charts.max(1) as f64;
        let offered = received as f64 * per_chart;
        let (svc_cpu, sim_cpu, me_cpu) = w.cpu;
        let level = Level {
            tick_ms,
            followers,
            deliveries_per_tick: followers * self.screen,
            window_ms: ms(w.wall),
            delivered_per_s: w.rate(delivered),
            offered_per_s: offered / w.secs(),
            // The probe's own series is one of the feed's.
            feed_updates_per_s: w.rate(w.feed_updates.saturating_sub(probe_late.len() as u64)),
            service_received_per_s: w.rate(received),
            service_sent_per_s: w.rate(w.live("updatesSent")),
            conflated_per_s: w.rate(w.live("conflated")),
            latency_p50_ms: median(&lat.total),
            latency_p99_ms: p(&lat.total, 99.0),
            latency_max_ms: p(&lat.total, 100.0),
            first_delivery_p50_ms: median(&lat.first),
            first_delivery_p99_ms: p(&lat.first, 99.0),
            spread_p99_ms: p(&lat.spread, 99.0),
            feed_lateness_p50_ms: median(&probe_late),
            feed_lateness_p99_ms: p(&probe_late, 99.0),
            latency_samples: lat.total.len(),
            service_cpu_pct: w.cpu_pct(svc_cpu),
            simulator_cpu_pct: w.cpu_pct(sim_cpu),
            client_cpu_pct: w.cpu_pct(me_cpu),
            service_cpu_us_per_delivery: if delivered == 0 {
                0.0
            } else {
                svc_cpu as f64 / delivered as f64
            },
            service_rss_mb: w.rss_after as f64 / 1e6,
            saturated: false,
        };
        let saturated = level.delivered_per_s < 0.9 * level.offered_per_s
            || level.latency_p99_ms > tick_ms as f64
            || level.service_received_per_s < 0.9 * level.feed_updates_per_s;
        println!(
            "live-fanout: tick {tick_ms} ms, {followers} followers: {:.0} delivered/s of {:.0} offered, p50 {:.1} ms, p99 {:.1} ms, service CPU {:.0} %{}",
            level.delivered_per_s,
            level.offered_per_s,
            level.latency_p50_ms,
            level.latency_p99_ms,
            level.service_cpu_pct,
            if saturated { " (saturated)" } else { "" }
        );
        Ok(Level { saturated, ..level })
    }
}

/// 10,000 followers of 50-stock screens over 500 charts, the feed ticking faster and faster.
pub async fn fanout(ctx: &Ctx) -> Result<Report, String> {
    let mut report = Report::new("live-fanout", ctx.quick);
    let followers = ctx
        .live
        .followers
        .unwrap_or(if ctx.quick { 500 } else { 10_000 });
    let charts = ctx.live.charts.unwrap_or(if ctx.quick { 100 } else { 500 });
    let ticks: Vec<u64> = ctx.live.ticks.clone().unwrap_or(if ctx.quick {
        vec![1000, 200, 50]
    } else {
        vec![1000, 500, 200, 100, 50, 20]
    });
    let window = window_secs(ctx, 8.0, 2.0);
    check_fd_limit(followers)?;
    let screens = Screens::new(charts, ctx.live.bars);
    let per_chart = screens.per_chart(followers);

    let (sim, probe, phase, t_ms_phase) = start_feed(ctx, "live-fanout").await?;
    let svc = start_service(ctx, "live-fanout", &sim, charts).await?;
    let client = LoadClient::new(&svc.base, ctx.client_threads);
    tally::set_sampling(Some(SAMPLE_BITS));

    // Warm-up: one follower per chart group opens and leaves, so the charts are cached, the
    // series live and first-use allocations made before the baseline.
    let warm: Vec<StreamSpec> = (0..charts.div_ceil(screens.size).max(1))
        .map(|i| live_spec(screens.path_from(i * screens.size), LiveSpec::default()))
        .collect();
    let warm = open(&client, warm, Duration::from_secs(120)).await;
    let warm_total = warm.pending.len();
    let warm_opened = warm.opened;
    let warm_results = warm.release().await;
    if warm_opened < warm_total {
        let (_, e) = stream_errors(&warm_results);
        return Err(format!(
            "warm-up: {warm_opened} of {warm_total} streams went live: {}",
            e.unwrap_or_default()
        ));
    }
    sleep(Duration::from_secs(1)).await;
    let baseline = svc.sample();

    // Opened in groups, so the second sweep can let them go a group at a time.
    let mut bounds: Vec<usize> = sweep(ctx.quick)
        .into_iter()
        .filter(|&b| b < followers)
        .collect();
    bounds.push(followers);
    let mut groups: Vec<(usize, Held)> = Vec::new();
    let (mut opened, mut open_time, mut from) = (0usize, Duration::ZERO, 0usize);
    for &to in &bounds {
        let specs: Vec<StreamSpec> = (from..to)
            .map(|i| live_spec(screens.path(i), LiveSpec::default()))
            .collect();
        let held = open(&client, specs, Duration::from_secs(300)).await;
        opened += held.opened;
        open_time += held.open_time;
        groups.push((to - from, held));
        from = to;
    }
    let mut results = Vec::new();
    let stats_open = svc.stats().await.unwrap_or_default();

    let mut levels: Vec<Level> = Vec::new();
    let mut rss_held = 0u64;
    let run = Run {
        client: &client,
        svc: &svc,
        sim: &sim,
        probe: &probe,
        phase,
        window,
        screen: screens.size,
        charts,
    };
    // Faster and faster, every follower on.
    for &tick_ms in &ticks {
        let level = run.level(tick_ms, followers).await?;
        if rss_held == 0 {
            rss_held = (level.service_rss_mb * 1e6) as u64;
        }
        let saturated = level.saturated;
        levels.push(level);
        if saturated {
            break;
        }
    }
    // At the 1 s tick, fewer and fewer followers: latency against the deliveries of one tick.
    if groups.len() > 1 {
        let mut remaining = followers;
        while groups.len() > 1 {
            if let Some((size, group)) = groups.pop() {
                results.extend(group.release().await);
                remaining -= size;
            }
            levels.push(run.level(CALIBRATION_TICK_MS, remaining).await?);
        }
    }
    let stats_end = svc.stats().await.unwrap_or_default();
    for (_, group) in groups {
        results.extend(group.release().await);
    }
    let (errors, first_error) = stream_errors(&results);

    report.row(Row::check(
        "followers live at once",
        opened as f64,
        "",
        opened == followers,
        &format!("= {followers}"),
    ));
    report.row(Row::check(
        "followers with an error",
        errors as f64,
        "",
        errors == 0,
        "= 0",
    ));
    report.row(Row::check(
        "live series upstream",
        stats_open["live"]["series"].as_f64().unwrap_or(0.0),
        "",
        stats_open["live"]["series"].as_u64() == Some(charts as u64),
        &format!("= {charts} charts"),
    ));
    for l in &levels {
        let t = if l.followers == followers {
            format!("{} ms", l.tick_ms)
        } else {
            format!("{} ms, {} followers", l.tick_ms, l.followers)
        };
        report.row(Row::versus(
            format!("tick {t}: updates delivered"),
            l.delivered_per_s,
            "/s",
            "offered (changes x followers)",
            l.offered_per_s,
        ));
        report.row(Row::info(
            format!("tick {t}: latency p50"),
            l.latency_p50_ms,
            "ms",
        ));
        report.row(Row::info(
            format!("tick {t}: latency p99"),
            l.latency_p99_ms,
            "ms",
        ));
        report.row(Row::info(
            format!("tick {t}: feed's own lateness p99 (probe)"),
            l.feed_lateness_p99_ms,
            "ms",
        ));
        report.row(Row::info(
            format!("tick {t}: service CPU"),
            l.service_cpu_pct,
            "% of one core",
        ));
        report.row(Row::info(
            format!("tick {t}: service CPU per delivered update"),
            l.service_cpu_us_per_delivery,
            "us",
        ));
        report.row(Row::info(
            format!("tick {t}: simulator / load client CPU"),
            l.simulator_cpu_pct + l.client_cpu_pct,
            "% of one core",
        ));
    }
    let within = levels
        .iter()
        .filter(|l| l.latency_p99_ms <= 10.0 && !l.saturated)
        .map(|l| l.delivered_per_s)
        .fold(0.0, f64::max);
    report.row(Row::limit(
        "highest delivery rate with p99 <= 10 ms",
        within,
        "/s",
        500_000.0,
        true,
    ));
    if let Some(best) = levels
        .iter()
        .filter(|l| !l.saturated)
        .max_by(|a, b| a.delivered_per_s.total_cmp(&b.delivered_per_s))
    {
        report.row(Row::limit(
            format!(
                "highest unsaturated delivery rate (tick {} ms)",
                best.tick_ms
            ),
            best.delivered_per_s,
            "/s",
            500_000.0,
            true,
        ));
        report.row(Row::limit(
            format!("p99 latency at that rate (tick {} ms)", best.tick_ms),
            best.latency_p99_ms,
            "ms",
            10.0,
            false,
        ));
        let per_cpu = if best.service_cpu_us_per_delivery > 0.0 {
            1e6 / best.service_cpu_us_per_delivery
        } else {
            0.0
        };
        report.row(Row::versus(
            "updates delivered per service CPU-second",
            per_cpu,
            "/CPU-s",
            "Centrifugo's published ~12,500 messages/s per CPU",
            12_500.0,
        ));
    }
    if let Some(peak) = levels
        .iter()
        .max_by(|a, b| a.delivered_per_s.total_cmp(&b.delivered_per_s))
    {
        report.row(Row::info(
            format!("peak delivery rate (tick {} ms)", peak.tick_ms),
            peak.delivered_per_s,
            "/s",
        ));
    }
    let per_follower = rss_held.saturating_sub(baseline.rss) as f64 / followers.max(1) as f64;
    report.row(Row::info(
        "service RSS per follower",
        per_follower / 1024.0,
        "KiB",
    ));
    report.row(Row::info(
        "service RSS before followers",
        baseline.rss as f64 / 1e6,
        "MB",
    ));
    report.row(Row::info(
        "service RSS with followers",
        rss_held as f64 / 1e6,
        "MB",
    ));
    report.row(Row::info(
        "time to open every follower (history, then first live event)",
        ms(open_time),
        "ms",
    ));
    report.note(format!(
        "{followers} followers of {}-stock screens (symbols=, 1D, bars={}, live=true) over {charts} charts, {per_chart:.0} followers per chart; the feed ticks every chart every tick_ms; each level settles {} ticks (at least 1.5 s), then is measured for {:.1} s; a level is saturated when it delivers under 90 % of what it is offered, its p99 exceeds its tick, or the service takes in under 90 % of the feed's updates, and the first sweep stops there; the second sweep goes back to the 1 s tick and lets followers go a group at a time",
        screens.size,
        screens.bars,
        3,
        window.as_secs_f64()
    ));
    report.note(format!(
        "latency: from the tick instant on the feed's grid (located by a probe subscribed to the feed directly) to the follower's read, for 1 state in {} (every delivery of it); 'feed's own lateness' is the probe's arrivals past the grid: the simulator, on the same cores, ticking late",
        1u32 << SAMPLE_BITS
    ));
    if let Some(e) = first_error {
        report.note(format!("first failure: {e}"));
    }
    report.detail("followers", followers);
    report.detail("charts", charts);
    report.detail("followers_per_chart", per_chart);
    report.detail("levels", &levels);
    report.detail("grid_phase_ns_mod_1000ms", phase);
    report.detail("grid_phase_from_t_ms", t_ms_phase);
    report.detail("rss_before", baseline.rss);
    report.detail("rss_held", rss_held);
    report.detail("live_stats_open", &stats_open["live"]);
    report.detail("live_stats_end", &stats_end["live"]);
    report.detail("sample_bits", SAMPLE_BITS);
    tally::set_sampling(None);
    Ok(report)
}

// ------------------------------------------------------------------------------------------------

/// Slow followers beside fast ones: the fast ones' latency, the service's memory, conflation.
pub async fn slow(ctx: &Ctx) -> Result<Report, String> {
    let mut report = Report::new("live-slow", ctx.quick);
    let fast = ctx
        .live
        .followers
        .unwrap_or(if ctx.quick { 100 } else { 500 });
    let slow = if ctx.quick { 5 } else { 20 };
    let charts = ctx.live.charts.unwrap_or(if ctx.quick { 50 } else { 100 });
    let tick_ms = ctx
        .live
        .ticks
        .as_ref()
        .and_then(|t| t.first().copied())
        .unwrap_or(100);
    let window = window_secs(ctx, 8.0, 2.0);
    // Longest wait for the slow ones' buffers to fill.
    let backlog = if ctx.quick {
        Duration::from_secs(45)
    } else {
        Duration::from_secs(90)
    };
    let pace = Slow {
        rcvbuf: 4096,
        pause: Duration::from_secs(2),
    };
    check_fd_limit(fast + slow)?;
    let screens = Screens::new(charts, ctx.live.bars);

    let (sim, probe, phase, _) = start_feed(ctx, "live-slow").await?;
    drop(probe);
    let svc = start_service(ctx, "live-slow", &sim, charts).await?;
    let client = LoadClient::new(&svc.base, ctx.client_threads);
    tally::set_sampling(Some(SAMPLE_BITS));
    sim.set_faults(json!({"tick_ms": tick_ms})).await?;
    let g = grid(phase, tick_ms);

    let specs = (0..fast)
        .map(|i| live_spec(screens.path(i), LiveSpec::default()))
        .collect();
    let fast_held = open(&client, specs, Duration::from_secs(180)).await;
    sleep(Duration::from_millis((tick_ms * 3).max(1500))).await;

    // Fast only.
    let a = measure(&client, &svc, &sim, window, g).await?;
    let a_lat = latencies(&a.tally, g, a.from_ns, a.to_ns, 0);
    let rss_fast = svc.sample().rss;
    let queued_fast = procs::send_queues(svc.port());

    // Slow ones beside them, once their buffers are full and conflation has begun.
    let specs = (0..slow)
        .map(|i| {
            live_spec(
                screens.path(fast + i),
                LiveSpec {
                    group: 1,
                    slow: Some(pace),
                    ..LiveSpec::default()
                },
            )
        })
        .collect();
    // The slow ones' lag fills the kernel's buffers first (the service's send buffer grows to
    // megabytes); conflation begins when they are full and the service's writes wait. (A slow
    // one takes a while to read its history and so its first live event: it is opened when
    // that is read, and its buffers may be full by then.)
    let conflated_before = svc.stats().await?["live"]["conflated"]
        .as_u64()
        .unwrap_or(0);
    let filling = Instant::now();
    let slow_held = open(&client, specs, backlog).await;
    let slow_open = filling.elapsed();
    let fill_deadline = filling + backlog;
    let mut filled = None;
    loop {
        let now = svc.stats().await?["live"]["conflated"]
            .as_u64()
            .unwrap_or(0);
        if now > conflated_before {
            filled = Some(filling.elapsed());
            break;
        }
        if Instant::now() >= fill_deadline {
            break;
        }
        sleep(Duration::from_millis(250)).await;
    }
    sleep(Duration::from_secs(2)).await;
    let rss_filled = svc.sample().rss;
    let queued_filled = procs::send_queues(svc.port());
    let b = measure(&client, &svc, &sim, window, g).await?;
    let b_lat = latencies(&b.tally, g, b.from_ns, b.to_ns, 0);
    let rss_end = svc.sample().rss;
    let queued_end = procs::send_queues(svc.port());
    let slow_opened = slow_held.opened;
    let slow_results = slow_held.release().await;
    let fast_opened = fast_held.opened;
    let fast_results = fast_held.release().await;
    let (fast_errors, fast_error) = stream_errors(&fast_results);
    let (slow_errors, slow_error) = stream_errors(&slow_results);

    let offered_per_follower = screens.size as f64 * 1000.0 / tick_ms as f64;
    let slow_rate = b.rate(b.tally.bars[1]) / slow.max(1) as f64;
    report.row(Row::check(
        "fast followers live",
        fast_opened as f64,
        "",
        fast_opened == fast && fast_errors == 0,
        &format!("= {fast}, no error"),
    ));
    report.row(Row::check(
        "slow followers live",
        slow_opened as f64,
        "",
        slow_opened == slow && slow_errors == 0,
        &format!("= {slow}, no error"),
    ));
    report.row(Row::ratio(
        "fast followers' latency p50 with slow ones",
        median(&b_lat.total),
        "ms",
        "fast only",
        median(&a_lat.total),
        1.25,
        false,
    ));
    report.row(Row::ratio(
        "fast followers' latency p99 with slow ones",
        p(&b_lat.total, 99.0),
        "ms",
        "fast only",
        p(&a_lat.total, 99.0),
        1.5,
        false,
    ));
    report.row(Row::versus(
        "fast followers' updates delivered with slow ones",
        b.rate(b.tally.bars[0]),
        "/s",
        "fast only",
        a.rate(a.tally.bars[0]),
    ));
    report.row(Row::versus(
        "updates a slow follower read",
        slow_rate,
        "/s",
        "the feed's changes on its screen",
        offered_per_follower,
    ));
    report.row(Row::versus(
        "live.conflated with slow ones",
        b.rate(b.live("conflated")),
        "/s",
        "fast only",
        a.rate(a.live("conflated")),
    ));
    report.row(Row::info(
        "slow ones: request to their first live event read",
        ms(slow_open),
        "ms",
    ));
    report.row(Row::info(
        "slow ones: request to conflation seen (their kernel buffers full)",
        filled.map_or(f64::NAN, ms),
        "ms",
    ));
    report.row(Row::ratio(
        "service RSS at the end",
        rss_end as f64 / 1e6,
        "MB",
        format!(
            "{} s earlier (2 s after conflation was seen)",
            window.as_secs_f64().round()
        ),
        rss_filled as f64 / 1e6,
        1.05,
        false,
    ));
    report.row(Row::versus(
        "kernel send queue of the service's largest socket, at the end",
        queued_end.1 as f64 / 1e6,
        "MB",
        "2 s after conflation was seen",
        queued_filled.1 as f64 / 1e6,
    ));
    report.row(Row::info(
        "kernel send queues of all the service's sockets, at the end",
        queued_end.0 as f64 / 1e6,
        "MB",
    ));
    report.row(Row::versus(
        "service RSS with slow followers",
        rss_filled as f64 / 1e6,
        "MB",
        "fast only",
        rss_fast as f64 / 1e6,
    ));
    report.row(Row::info(
        "service CPU, fast only",
        a.cpu_pct(a.cpu.0),
        "% of one core",
    ));
    report.row(Row::info(
        "service CPU with slow ones",
        b.cpu_pct(b.cpu.0),
        "% of one core",
    ));
    report.note(format!(
        "{fast} fast followers and {slow} slow ones (receive buffer {} B asked, a {} ms pause after every read) of {}-stock screens over {charts} charts, tick {tick_ms} ms; measured {:.1} s fast only, then {:.1} s with the slow ones, from 2 s after their conflation was seen (waited for at most {} s)",
        pace.rcvbuf,
        pace.pause.as_millis(),
        screens.size,
        window.as_secs_f64(),
        window.as_secs_f64(),
        backlog.as_secs()
    ));
    if filled.is_none() {
        report.note("the slow followers' conflation was not seen before the measurement started");
    }
    for e in [fast_error, slow_error].into_iter().flatten() {
        report.note(format!("first failure: {e}"));
    }
    report.detail("fast", fast);
    report.detail("slow", slow);
    report.detail("tick_ms", tick_ms);
    report.detail(
        "fast_only",
        json!({"p50": median(&a_lat.total), "p99": p(&a_lat.total, 99.0), "samples": a_lat.total.len(), "conflated": a.live("conflated")}),
    );
    report.detail(
        "with_slow",
        json!({"p50": median(&b_lat.total), "p99": p(&b_lat.total, 99.0), "samples": b_lat.total.len(), "conflated": b.live("conflated"), "slow_events": b.tally.bars[1]}),
    );
    report.detail(
        "rss",
        json!({"fast_only": rss_fast, "slow_filled": rss_filled, "end": rss_end}),
    );
    report.detail(
        "send_queues_total_largest",
        json!({"fast_only": queued_fast, "slow_filled": queued_filled, "end": queued_end}),
    );
    tally::set_sampling(None);
    Ok(report)
}

// ------------------------------------------------------------------------------------------------

/// Reconnecting with `Last-Event-ID`, beside fresh streams of the same screens.
pub async fn resume(ctx: &Ctx) -> Result<Report, String> {
    let mut report = Report::new("live-resume", ctx.quick);
    let n = ctx
        .live
        .followers
        .unwrap_or(if ctx.quick { 20 } else { 100 });
    let charts = ctx.live.charts.unwrap_or(if ctx.quick { 50 } else { 100 });
    let gap = Duration::from_secs(3);
    // Longer than the service's 1 s resume margin past the series' first answer, whose bars are
    // all stamped with its arrival (a resume from an id within that second re-sends them all).
    const LIVE_BEFORE_LEAVING: Duration = Duration::from_secs(5);
    // Live events within this long of a stream's first are its catch-up; the next tick comes
    // ~950 ms after it.
    let burst = Duration::from_millis(400);
    check_fd_limit(n * 2)?;
    let screens = Screens::new(charts, ctx.live.bars);

    let (sim, probe, phase, _) = start_feed(ctx, "live-resume").await?;
    drop(probe);
    let g = grid(phase, CALIBRATION_TICK_MS);
    let svc = start_service(ctx, "live-resume", &sim, charts).await?;
    let client = LoadClient::new(&svc.base, ctx.client_threads);

    // Followers that will reconnect: live for a few ticks, then gone for `gap`.
    let specs = (0..n)
        .map(|i| StreamSpec {
            keep_id: true,
            ..live_spec(screens.path(i), LiveSpec::default())
        })
        .collect();
    let first = open(&client, specs, Duration::from_secs(120)).await;
    sleep(LIVE_BEFORE_LEAVING).await;
    let first_opened = first.opened;
    let gone = first.release().await;
    let ids: Vec<Option<String>> = gone.iter().map(|r| r.last_id.clone()).collect();
    let with_live_id = ids
        .iter()
        .filter(|id| id.as_deref().is_some_and(|i| i.contains(".live.")))
        .count();
    sleep(gap).await;

    // Resumed, all at once, just after a tick.
    align(g, Duration::from_millis(50)).await;
    let specs = (0..n)
        .map(|i| StreamSpec {
            headers: ids[i]
                .as_deref()
                .map(|id| format!("last-event-id: {id}\r\n"))
                .unwrap_or_default(),
            ..live_spec(
                screens.path(i),
                LiveSpec {
                    group: 1,
                    burst: Some(burst),
                    ..LiveSpec::default()
                },
            )
        })
        .collect();
    let resumed = open(&client, specs, Duration::from_secs(30)).await;
    sleep(burst).await;
    let resumed = resumed.release().await;

    // Fresh streams of the same screens, all at once, just after a later tick.
    align(g, Duration::from_millis(50)).await;
    let specs = (0..n)
        .map(|i| {
            live_spec(
                screens.path(i),
                LiveSpec {
                    group: 2,
                    burst: Some(burst),
                    ..LiveSpec::default()
                },
            )
        })
        .collect();
    let fresh = open(&client, specs, Duration::from_secs(60)).await;
    sleep(burst).await;
    let fresh = fresh.release().await;

    let first_live = |rs: &[StreamResult]| -> Vec<f64> {
        rs.iter().filter_map(|r| r.first_live.map(ms)).collect()
    };
    let (r_first, f_first) = (first_live(&resumed), first_live(&fresh));
    let r_burst: Vec<f64> = resumed.iter().map(|r| r.burst_events as f64).collect();
    let f_burst: Vec<f64> = fresh.iter().map(|r| r.burst_events as f64).collect();
    let started_over = resumed
        .iter()
        .filter(|r| r.first_event.is_some() || r.batches > 0)
        .count();
    let (r_errors, r_error) = stream_errors(&resumed);
    let (f_errors, f_error) = stream_errors(&fresh);
    let avg_bytes = |rs: &[StreamResult]| {
        rs.iter().map(|r| r.bytes as f64).sum::<f64>() / rs.len().max(1) as f64
    };

    report.row(Row::check(
        "followers that got a live id to resume from",
        with_live_id as f64,
        "",
        first_opened == n && with_live_id == n,
        &format!("= {n}"),
    ));
    report.row(Row::check(
        "resumed streams live",
        r_first.len() as f64,
        "",
        r_first.len() == n && r_errors == 0,
        &format!("= {n}, no error"),
    ));
    report.row(Row::check(
        "resumed streams that re-sent history",
        started_over as f64,
        "",
        started_over == 0,
        "= 0",
    ));
    report.row(Row::versus(
        "resume: request to first live event, p50",
        median(&r_first),
        "ms",
        "fresh stream",
        median(&f_first),
    ));
    report.row(Row::versus(
        "resume: request to first live event, p99",
        p(&r_first, 99.0),
        "ms",
        "fresh stream",
        p(&f_first, 99.0),
    ));
    report.row(Row::versus(
        "bars re-sent on resume, per stream (median)",
        median(&r_burst),
        "",
        "charts on the screen",
        screens.size as f64,
    ));
    report.row(Row::info(
        "bars re-sent on resume, per stream (max)",
        p(&r_burst, 100.0),
        "",
    ));
    report.row(Row::info(
        "bars sent right after `complete`, fresh stream (median)",
        median(&f_burst),
        "",
    ));
    report.row(Row::versus(
        "bytes read per resumed stream",
        avg_bytes(&resumed) / 1024.0,
        "KiB",
        "fresh stream (history included)",
        avg_bytes(&fresh) / 1024.0,
    ));
    report.row(Row::check(
        "fresh streams with an error",
        f_errors as f64,
        "",
        f_errors == 0,
        "= 0",
    ));
    report.note(format!(
        "{n} followers of {}-stock screens over {charts} charts (tick 1000 ms) go live, leave after {} s and come back {} s later with Last-Event-ID, all at once 50 ms after a tick; then {n} fresh streams of the same screens, the same way; bars re-sent = live events within {} ms of a stream's first",
        screens.size,
        LIVE_BEFORE_LEAVING.as_secs(),
        gap.as_secs(),
        burst.as_millis()
    ));
    for e in [r_error, f_error].into_iter().flatten() {
        report.note(format!("first failure: {e}"));
    }
    report.detail("streams", n);
    report.detail("charts", charts);
    report.detail(
        "resumed",
        json!({"first_live_ms": r_first, "bars": r_burst}),
    );
    report.detail("fresh", json!({"first_live_ms": f_first, "bars": f_burst}));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn screens_cover_every_chart_equally() {
        let screens = Screens::new(500, None);
        assert_eq!(screens.symbols.len(), 500);
        assert_eq!(screens.symbols[0], "NSE:RELIANCE");
        assert!(screens.symbols[499].starts_with("NSE:SIMSTOCK"));
        let mut counts = vec![0usize; 500];
        for f in 0..1000 {
            let start = (f * screens.stride) % 500;
            for j in 0..screens.size {
                counts[(start + j) % 500] += 1;
            }
        }
        assert!(counts.iter().all(|&c| c == 100), "{counts:?}");
        assert_eq!(screens.per_chart(1000), 100.0);
        // `M&M` is among the first symbols: encoded, it does not cut the list.
        let path = screens.path(0);
        let list = path
            .split("symbols=")
            .nth(1)
            .and_then(|rest| rest.split('&').next())
            .unwrap_or_default();
        assert_eq!(list.split(',').count(), 50, "{path}");
        assert!(list.contains("NSE:M%26M"), "{path}");
    }

    #[test]
    fn symbols_are_percent_encoded() {
        assert_eq!(encode("NSE:M&M"), "NSE:M%26M");
        assert_eq!(encode("NSE:BAJAJ-AUTO"), "NSE:BAJAJ-AUTO");
    }
}
