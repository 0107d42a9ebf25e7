//! The six scenarios of issue 5. Each starts its own simulator and service processes, measures
//! every figure in the same run as the reference it is compared with, and returns a [`Report`].

use std::path::PathBuf;
use std::time::Duration;

use actix_web::rt::time::{Instant, sleep};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::codec;
use crate::load::{LoadClient, StreamResult, StreamSpec};
use crate::procs::{self, Latency, ProcSample, Service, Simulator};
use crate::report::{Report, Row, median, ms, percentile};

/// What every scenario needs.
pub struct Ctx {
    /// The `chartgate` binary.
    pub bin: PathBuf,
    /// Where child logs go.
    pub logs: PathBuf,
    pub quick: bool,
    /// Client threads.
    pub client_threads: usize,
    /// Sizes of the live scenarios, when given on the command line.
    pub live: crate::live::LiveSizes,
}

const STREAM: &str = "/api/formula-results-with-charts";
/// The 150-stock demo formula (`config::DEMO_FORMULAS`) and the two resolutions of the issue.
pub(crate) const FORMULA: &str = "largecaps";
pub(crate) const FORMULA_STOCKS: usize = 150;
pub(crate) const RESOLUTIONS: &str = "1W,1D";

/// The latency profile of the real capture: connect plus auth 300 ms, a series answer 400 ms;
/// scaled down by 5 in `--quick`. `series_concurrency` is the pool's `requests_per_connection`.
pub(crate) fn profile(ctx: &Ctx) -> Latency {
    if ctx.quick {
        Latency {
            connect_ms: 60,
            series_ms: 80,
            series_concurrency: 10,
        }
    } else {
        Latency {
            connect_ms: 300,
            series_ms: 400,
            series_concurrency: 10,
        }
    }
}

pub(crate) fn formula_spec() -> StreamSpec {
    StreamSpec {
        path: format!("{STREAM}?formula={FORMULA}&resolutions={RESOLUTIONS}"),
        ..StreamSpec::default()
    }
}

/// `clients` clients each opening one stream (all at once, on new connections), then `each` more
/// one after another on its kept-alive connection: the opening streams, the measured ones, and the
/// time the measured ones took. Separating the opening streams keeps a burst of simultaneous
/// connects out of the steady state the scenario is about.
async fn run_clients(
    client: &LoadClient,
    clients: usize,
    each: usize,
    spec: StreamSpec,
) -> (Vec<StreamResult>, Vec<StreamResult>, Duration) {
    let started = Instant::now();
    let per_client = (0..clients).map(|_| {
        let spec = spec.clone();
        async move {
            let opening = client.stream(spec.clone()).await;
            let mut measured = Vec::with_capacity(each);
            for _ in 0..each {
                measured.push(client.stream(spec.clone()).await);
            }
            (opening, measured)
        }
    });
    let mut openers = Vec::new();
    let mut results = Vec::new();
    for (opening, measured) in futures_util::future::join_all(per_client).await {
        openers.push(opening);
        results.extend(measured);
    }
    (openers, results, started.elapsed())
}

/// Runs `specs` with at most `concurrency` streams open at once.
pub(crate) async fn run_many(
    client: &LoadClient,
    specs: Vec<StreamSpec>,
    concurrency: usize,
) -> (Vec<StreamResult>, Duration) {
    let started = Instant::now();
    let results = futures_util::stream::iter(specs)
        .map(|s| client.stream(s))
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    (results, started.elapsed())
}

pub(crate) fn failures(results: &[StreamResult]) -> (usize, Option<String>) {
    let failed: Vec<&StreamResult> = results.iter().filter(|r| !r.completed()).collect();
    (failed.len(), failed.first().and_then(|r| r.error.clone()))
}

/// CPU and memory of the service, the simulator and the harness itself.
pub(crate) struct Cpu {
    pub service: ProcSample,
    pub simulator: ProcSample,
    pub harness: ProcSample,
}

impl Cpu {
    pub(crate) fn now(svc: &Service, sim: &Simulator) -> Cpu {
        Cpu {
            service: svc.sample(),
            simulator: sim.proc.sample(),
            harness: procs::sample("self"),
        }
    }

    /// CPU microseconds spent since `self`: (service, simulator, harness).
    pub(crate) fn since(&self, later: &Cpu) -> (u64, u64, u64) {
        (
            later.service.cpu_us.saturating_sub(self.service.cpu_us),
            later.simulator.cpu_us.saturating_sub(self.simulator.cpu_us),
            later.harness.cpu_us.saturating_sub(self.harness.cpu_us),
        )
    }
}

fn cpu_rows(report: &mut Report, before: &Cpu, after: &Cpu, wall: Duration) {
    let (svc, sim, me) = before.since(after);
    let secs = wall.as_secs_f64().max(1e-9);
    report.row(Row::info("service CPU", svc as f64 / 1e3, "ms"));
    report.row(Row::info(
        "service CPU utilisation",
        svc as f64 / 1e6 / secs * 100.0,
        "% of one core",
    ));
    report.row(Row::info("simulator CPU", sim as f64 / 1e3, "ms"));
    report.row(Row::info("load client CPU", me as f64 / 1e3, "ms"));
    report.detail(
        "cpu_us",
        json!({"service": svc, "simulator": sim, "load_client": me, "wall_us": wall.as_micros() as u64}),
    );
}

/// Waits until the simulator has no feed connection open (or 10 s pass).
pub(crate) async fn wait_connections_closed(sim: &Simulator) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open = sim.stats().await?["connectionsOpen"].as_u64().unwrap_or(0);
        if open == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{open} feed connections still open after 10 s"));
        }
        sleep(Duration::from_millis(10)).await;
    }
}

fn require(result: &StreamResult, what: &str) -> Result<(), String> {
    if result.completed() && result.failed == 0 {
        Ok(())
    } else {
        Err(format!(
            "{what}: stream did not complete cleanly: {} ({} failed charts)",
            result.error.as_deref().unwrap_or("no complete event"),
            result.failed
        ))
    }
}

// ------------------------------------------------------------------------------------------------

/// Time from request to `formula-results`, 50 concurrent clients, 500 requests.
pub async fn first_event(ctx: &Ctx) -> Result<Report, String> {
    let mut report = Report::new("first-event", ctx.quick);
    let (requests, concurrency) = if ctx.quick { (100, 20) } else { (500, 50) };
    let lat = profile(ctx);
    let sim = Simulator::start(&ctx.bin, &ctx.logs, "first-event").await?;
    sim.set_latency(lat).await?;
    let svc = Service::start(&ctx.bin, &ctx.logs, "first-event", &sim, &[]).await?;
    let client = LoadClient::new(&svc.base, ctx.client_threads);

    // Warm-up: the pool opens, the formula result and the charts are cached (cache.ttl_secs 300
    // covers the run), so the formula source is out of every measured request.
    require(&client.stream(formula_spec()).await, "warm-up")?;

    // The formula source's own latency, measured directly in the same run.
    let direct = awc::Client::default();
    let screen = format!("{}/run/screen?key=9a8b7c6d5e4f3021", sim.base);
    let mut source = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        procs::http_get(&direct, &screen).await?;
        source.push(ms(t.elapsed()));
    }

    let before = Cpu::now(&svc, &sim);
    let (openers, results, wall) =
        run_clients(&client, concurrency, requests / concurrency, formula_spec()).await;
    let after = Cpu::now(&svc, &sim);
    let (failed, first_error) = failures(&results);
    let opening: Vec<f64> = openers
        .iter()
        .filter_map(|r| r.first_event.map(ms))
        .collect();
    let first: Vec<f64> = results
        .iter()
        .filter_map(|r| r.first_event.map(ms))
        .collect();
    let totals: Vec<f64> = results
        .iter()
        .filter_map(|r| r.complete_at.map(ms))
        .collect();
    let bytes: u64 = results.iter().chain(&openers).map(|r| r.bytes).sum();

    // The same, with clients that hang up after the first event: first-event latency without
    // 50 streams of chart batches competing for the two cores.
    let specs = vec![
        StreamSpec {
            stop_after_first: true,
            ..formula_spec()
        };
        requests
    ];
    let (light, _) = run_many(&client, specs, concurrency).await;
    let light_first: Vec<f64> = light.iter().filter_map(|r| r.first_event.map(ms)).collect();
    let light_head: Vec<f64> = light.iter().filter_map(|r| r.head.map(ms)).collect();

    report.row(Row::check(
        "streams completed",
        (requests - failed) as f64,
        "",
        failed == 0,
        &format!("= {requests}"),
    ));
    report.row(Row::limit(
        "first event p50",
        median(&first),
        "ms",
        5.0,
        false,
    ));
    report.row(Row::limit(
        "first event p99",
        percentile(&first, 99.0),
        "ms",
        20.0,
        false,
    ));
    report.row(Row::info("first event p90", percentile(&first, 90.0), "ms"));
    report.row(Row::info(
        "first event max",
        percentile(&first, 100.0),
        "ms",
    ));
    report.row(Row::info(
        "formula source latency p50 (direct, subtracted: 0, cached)",
        median(&source),
        "ms",
    ));
    report.row(Row::info(
        "first event of the 50 opening requests (new connections, all at once) p50",
        median(&opening),
        "ms",
    ));
    report.row(Row::info(
        "first event of the 50 opening requests, max",
        percentile(&opening, 100.0),
        "ms",
    ));
    report.row(Row::info("whole stream p50", median(&totals), "ms"));
    report.row(Row::info(
        "whole stream p99",
        percentile(&totals, 99.0),
        "ms",
    ));
    report.row(Row::info(
        "SSE delivered",
        bytes as f64 / wall.as_secs_f64() / 1e6,
        "MB/s",
    ));
    cpu_rows(&mut report, &before, &after, wall);
    report.row(Row::info(
        "first event p50, clients hang up after it",
        median(&light_first),
        "ms",
    ));
    report.row(Row::info(
        "first event p99, clients hang up after it",
        percentile(&light_first, 99.0),
        "ms",
    ));
    report.row(Row::info(
        "response head p50, clients hang up after it",
        median(&light_head),
        "ms",
    ));
    report.note(format!(
        "{requests} requests of `{FORMULA}` ({FORMULA_STOCKS} stocks x {RESOLUTIONS}, 300 bars, charts cached after a warm-up) measured after each of {concurrency} concurrent clients opened its connection with one stream; every stream read to its end; latency profile connect {} ms, series {} ms",
        lat.connect_ms, lat.series_ms
    ));
    if let Some(e) = first_error {
        report.note(format!("first failure: {e}"));
    }
    report.detail("first_event_ms", &first);
    report.detail("first_event_hangup_ms", &light_first);
    report.detail("formula_source_ms", &source);
    report.detail("requests", requests);
    report.detail("concurrency", concurrency);
    Ok(report)
}

// ------------------------------------------------------------------------------------------------

/// A 300-chart formula on an empty pool, then on a warm pool (cache disabled), then with
/// `idle_timeout_secs = 0` (connections per request), on two pools: the spec's default
/// (10 connections x 10 slots, three rounds of fetches) and one sized for the request
/// (10 x 30, one round).
///
/// The warm pool saves the naive design its connect, so what it can save is
/// `connect / (connect + rounds x series)`: 300/1500 = 20 % in three rounds, 300/700 = 43 % in
/// one. The 40 % is judged on the pool sized for the request, where it is reachable;
/// the default pool's figure is reported beside its own limit.
pub async fn cold_warm(ctx: &Ctx) -> Result<Report, String> {
    let mut report = Report::new("cold-warm", ctx.quick);
    let sim = Simulator::start(&ctx.bin, &ctx.logs, "cold-warm").await?;
    for (conns, slots, judged) in [(10usize, 10usize, false), (10, 30, true)] {
        cold_warm_on(ctx, &mut report, &sim, conns, slots, judged).await?;
    }
    Ok(report)
}

/// One pool configuration of [`cold_warm`]; `judged` says whether its saving is held to the 40 %.
async fn cold_warm_on(
    ctx: &Ctx,
    report: &mut Report,
    sim: &Simulator,
    conns: usize,
    slots: usize,
    judged: bool,
) -> Result<(), String> {
    let lat = profile(ctx);
    let (cold_runs, warm_runs, naive_runs) = if ctx.quick { (2, 3, 3) } else { (3, 5, 5) };
    let charts = FORMULA_STOCKS * 2;
    let waves = charts.div_ceil(conns * slots) as f64;
    let warm_bound = waves * lat.series_ms as f64;
    let cold_bound = warm_bound + lat.connect_ms as f64;
    let pool = format!("{conns}x{slots}");

    sim.set_latency(Latency {
        series_concurrency: slots,
        ..lat
    })
    .await?;
    let common = [
        ("pool.max_connections", conns.to_string()),
        ("pool.requests_per_connection", slots.to_string()),
        ("cache.max_bytes", "0".to_string()),
    ];

    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let mut warm_cached = 0;
    let warm_cpu;
    {
        let svc = Service::start(&ctx.bin, &ctx.logs, "cold-warm", sim, &common).await?;
        let client = LoadClient::new(&svc.base, ctx.client_threads);
        for run in 0..cold_runs {
            if run > 0 {
                svc.force_cleanup().await?;
                wait_connections_closed(sim).await?;
            }
            let r = client.stream(formula_spec()).await;
            require(&r, "cold run")?;
            cold.push(r.complete_at.map_or(0.0, ms));
        }
        let before = Cpu::now(&svc, sim);
        for _ in 0..warm_runs {
            let r = client.stream(formula_spec()).await;
            require(&r, "warm run")?;
            warm_cached += r.cached;
            warm.push(r.complete_at.map_or(0.0, ms));
        }
        warm_cpu = before.since(&Cpu::now(&svc, sim));
    }
    wait_connections_closed(sim).await?;

    let mut naive = Vec::new();
    {
        let mut overrides = common.to_vec();
        overrides.push(("manager.idle_timeout_secs", "0".to_string()));
        let svc = Service::start(&ctx.bin, &ctx.logs, "naive", sim, &overrides).await?;
        let client = LoadClient::new(&svc.base, ctx.client_threads);
        for _ in 0..naive_runs {
            wait_connections_closed(sim).await?;
            let r = client.stream(formula_spec()).await;
            require(&r, "naive run")?;
            naive.push(r.complete_at.map_or(0.0, ms));
        }
    }
    wait_connections_closed(sim).await?;

    let (cold_m, warm_m, naive_m) = (median(&cold), median(&warm), median(&naive));
    let saved = (1.0 - warm_m / naive_m) * 100.0;
    let limit = (1.0 - warm_bound / cold_bound) * 100.0;
    report.row(Row::ratio(
        format!("{pool}: cold, median"),
        cold_m,
        "ms",
        "bound",
        cold_bound,
        1.15,
        false,
    ));
    report.row(Row::ratio(
        format!("{pool}: warm, median"),
        warm_m,
        "ms",
        "bound",
        warm_bound,
        1.15,
        false,
    ));
    report.row(Row::versus(
        format!("{pool}: naive (idle_timeout_secs=0), median"),
        naive_m,
        "ms",
        "cold bound",
        cold_bound,
    ));
    report.row(Row::versus(
        format!("{pool}: warm time saved vs naive"),
        saved,
        "%",
        "physical limit 1 - warm/cold bound (%)",
        limit,
    ));
    if judged && let Some(row) = report.rows.last_mut() {
        // The target is absolute: at least 40 % faster.
        row.target = ">= 40".into();
        row.pass = Some(saved >= 40.0);
    }
    // The burst of answers at the end of a warm run is CPU-bound on a 2-core machine shared by
    // all three processes: what each spends shows where its time over the bound goes.
    let per_run = |us: u64| us as f64 / 1e3 / warm_runs as f64;
    report.row(Row::info(
        format!("{pool}: service CPU per warm run"),
        per_run(warm_cpu.0),
        "ms",
    ));
    if let Some(row) = report.rows.last_mut() {
        row.reference = Some(format!(
            "simulator {:.0} ms, client {:.0} ms",
            per_run(warm_cpu.1),
            per_run(warm_cpu.2)
        ));
    }
    report.row(Row::check(
        format!("{pool}: charts from cache in warm runs"),
        warm_cached as f64,
        "",
        warm_cached == 0,
        "= 0 (cache disabled)",
    ));
    report.note(format!(
        "{pool}: {charts} charts ({FORMULA}, {RESOLUTIONS}) on C={conns} connections x K={slots} slots, feed series_concurrency {slots}; latency connect {} ms, series {} ms; bound = ceil({charts}/{}) x {} ms (+ {} ms cold); runs: cold {cold:?}, warm {warm:?}, naive {naive:?} (ms, request to `complete`)",
        lat.connect_ms,
        lat.series_ms,
        conns * slots,
        lat.series_ms,
        lat.connect_ms
    ));
    report.detail(
        &pool,
        json!({"cold_ms": cold, "warm_ms": warm, "naive_ms": naive, "bounds_ms": {"cold": cold_bound, "warm": warm_bound}}),
    );
    Ok(())
}

// ------------------------------------------------------------------------------------------------

/// Symbols no other stream asks for, so every chart is a real fetch.
fn distinct_symbols(tag: &str, stream: usize, count: usize) -> String {
    (0..count)
        .map(|j| format!("NSE:{tag}{stream:04}S{j:03}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Zero latency, 300-bar charts, many streams at once: charts per second end to end and the
/// service's CPU per chart.
///
/// Every chart is a real fetch from the feed: the service's cache is disabled, and the streams
/// open at the same time ask for disjoint symbols (stream slot k always asks for symbol set k),
/// so no fetch is shared. The simulator answers from its own cache after a warm-up round (its
/// cache holds about 1,800 300-bar series, so the distinct charts are kept below that), so the
/// machine's two cores go to the service rather than to generating bars.
pub async fn throughput(ctx: &Ctx) -> Result<Report, String> {
    let mut report = Report::new("throughput", ctx.quick);
    let (slots, rounds) = if ctx.quick { (4, 6) } else { (16, 24) };
    let stocks = 40;
    let sim = Simulator::start(&ctx.bin, &ctx.logs, "throughput").await?;
    sim.set_faults(json!({})).await?;
    let svc = Service::start(
        &ctx.bin,
        &ctx.logs,
        "throughput",
        &sim,
        &[
            ("pool.max_queue", "1000000".to_string()),
            ("cache.max_bytes", "0".to_string()),
        ],
    )
    .await?;
    let client = LoadClient::new(&svc.base, ctx.client_threads);
    let spec = |slot: usize| StreamSpec {
        path: format!(
            "{STREAM}?symbols={}&resolutions={RESOLUTIONS}&bars=300",
            distinct_symbols("T", slot, stocks)
        ),
        ..StreamSpec::default()
    };
    let run = |rounds: usize| {
        let client = &client;
        async move {
            let started = Instant::now();
            let per_slot = (0..slots).map(|slot| async move {
                let mut out = Vec::new();
                for _ in 0..rounds {
                    out.push(client.stream(spec(slot)).await);
                }
                out
            });
            let results: Vec<StreamResult> = futures_util::future::join_all(per_slot)
                .await
                .into_iter()
                .flatten()
                .collect();
            (results, started.elapsed())
        }
    };
    // Warm-up round: the pool's connections open and the simulator caches every series.
    let (warm, _) = run(1).await;
    if let (n, Some(e)) = failures(&warm)
        && n > 0
    {
        return Err(format!("warm-up: {e}"));
    }

    let before = Cpu::now(&svc, &sim);
    let served_before = sim.series_served().await?;
    let (results, wall) = run(rounds).await;
    let after = Cpu::now(&svc, &sim);
    let served = sim.series_served().await? - served_before;
    let (failed_streams, first_error) = failures(&results);
    let charts: u64 = results.iter().map(|r| r.successful).sum();
    let failed: u64 = results.iter().map(|r| r.failed).sum();
    let bytes: u64 = results.iter().map(|r| r.bytes).sum();
    let (svc_cpu, sim_cpu, me_cpu) = before.since(&after);
    let per_chart = |us: u64| us as f64 / charts.max(1) as f64;

    report.row(Row::limit(
        "charts per second, end to end",
        charts as f64 / wall.as_secs_f64(),
        "charts/s",
        5000.0,
        true,
    ));
    report.row(Row::info("service CPU per chart", per_chart(svc_cpu), "us"));
    report.row(Row::info(
        "charts/s the service's CPU alone allows",
        if svc_cpu == 0 {
            0.0
        } else {
            charts as f64 * 2e6 / svc_cpu as f64
        },
        "charts/s on 2 cores",
    ));
    report.row(Row::info(
        "simulator CPU per chart",
        per_chart(sim_cpu),
        "us",
    ));
    report.row(Row::info(
        "load client CPU per chart",
        per_chart(me_cpu),
        "us",
    ));
    report.row(Row::check(
        "failed charts",
        failed as f64,
        "",
        failed == 0 && failed_streams == 0,
        "= 0",
    ));
    report.row(Row::info("charts", charts as f64, ""));
    report.row(Row::info("series served by the feed", served as f64, ""));
    report.row(Row::info("wall time", ms(wall), "ms"));
    report.row(Row::info(
        "SSE delivered",
        bytes as f64 / wall.as_secs_f64() / 1e6,
        "MB/s",
    ));
    cpu_rows(&mut report, &before, &after, wall);
    report.note(format!(
        "{slots} streams at once, {rounds} each in turn, of {stocks} symbols x {RESOLUTIONS} (300 bars, objects; {} distinct charts); cache disabled, no simulated latency; default pool (10 x 10)", slots * stocks * 2
    ));
    if let Some(e) = first_error {
        report.note(format!("first failure: {e}"));
    }
    report.detail("slots", slots);
    report.detail("rounds", rounds);
    report.detail("bytes", bytes);
    Ok(report)
}

// ------------------------------------------------------------------------------------------------

/// Criterion lives in `benches/codec.rs`; this is the same workload timed by a simple loop so
/// the harness reports it too.
pub async fn codec(ctx: &Ctx) -> Result<Report, String> {
    let mut report = Report::new("codec", ctx.quick);
    let inputs = codec::load()?;
    let budget = Duration::from_millis(if ctx.quick { 300 } else { 2000 });
    let decode = time_per_iter(budget, || codec::decode_answer(&inputs.message).0.len());
    let value = time_per_iter(budget, || codec::decode_reference(&inputs.payloads));
    let scan = time_per_iter(budget, || codec::scan_reference(&inputs.payloads));
    let update = std::slice::from_ref(&inputs.series_update);
    let update_decode = time_per_iter(budget, || codec::decode_series_update(&update[0]));
    let update_scan = time_per_iter(budget, || codec::scan_reference(update));

    let objects = chartgate::domain::BarsFormat::Objects;
    let cached = codec::cached_charts(&inputs);
    let event = codec::encode_batch(&cached, objects);
    let event_value: serde_json::Value =
        serde_json::from_str(&codec::event_json(&event)).map_err(|e| e.to_string())?;
    let splice = time_per_iter(budget, || codec::encode_batch(&cached, objects).len());
    let flat = time_per_iter(budget, || {
        codec::encode_batch(&cached, objects).to_bytes().len()
    });
    let fresh_sets: Vec<_> = (0..if ctx.quick { 20 } else { 100 })
        .map(|_| codec::cached_charts(&inputs))
        .collect();
    let fresh = time_each(&fresh_sets, |set| codec::encode_batch(set, objects).len());
    let reference = time_per_iter(budget, || codec::encode_reference(&event_value).len());

    let us = |ns: f64| ns / 1e3;
    report.row(Row::ratio(
        "decode 300-bar answer into bars",
        us(decode),
        "us",
        "serde_json -> Value",
        us(value),
        2.0,
        false,
    ));
    report.row(Row::versus(
        "decode 300-bar answer into bars",
        us(decode),
        "us",
        "serde_json IgnoredAny",
        us(scan),
    ));
    report.row(Row::versus(
        "decode its timescale_update packet alone into bars",
        us(update_decode),
        "us",
        "serde_json IgnoredAny",
        us(update_scan),
    ));
    report.row(Row::versus(
        "encode chart-batch, charts' JSON cached (shared, not copied)",
        us(splice),
        "us",
        "serde_json Value -> String",
        us(reference),
    ));
    report.row(Row::versus(
        "encode chart-batch and copy it into one buffer (what a connection does)",
        us(flat),
        "us",
        "serde_json Value -> String",
        us(reference),
    ));
    report.row(Row::versus(
        "encode chart-batch, charts serialised fresh",
        us(fresh),
        "us",
        "serde_json Value -> String",
        us(reference),
    ));
    report.row(Row::info(
        "answer message size",
        inputs.message.len() as f64 / 1024.0,
        "KiB",
    ));
    report.row(Row::info(
        "chart-batch event size",
        event.len() as f64 / 1024.0,
        "KiB",
    ));
    report.note(format!(
        "message {} of the capture; batch of {} stocks x 2 resolutions of its 300 bars; medians of timing loops (criterion: cargo bench --bench codec)",
        codec::ANSWER_INDEX,
        codec::BATCH_STOCKS
    ));
    Ok(report)
}

/// Median nanoseconds per call over samples of at least ~2 ms each, within `budget`.
fn time_per_iter<R>(budget: Duration, mut f: impl FnMut() -> R) -> f64 {
    for _ in 0..3 {
        std::hint::black_box(f());
    }
    let t = std::time::Instant::now();
    std::hint::black_box(f());
    let one = t.elapsed().as_nanos().max(1) as u64;
    let per_sample = (2_000_000 / one).clamp(1, 100_000);
    let mut samples = Vec::new();
    let start = std::time::Instant::now();
    while start.elapsed() < budget || samples.len() < 5 {
        let t = std::time::Instant::now();
        for _ in 0..per_sample {
            std::hint::black_box(f());
        }
        samples.push(t.elapsed().as_nanos() as f64 / per_sample as f64);
    }
    median(&samples)
}

/// Median nanoseconds of `f` over each prepared input (used once each: setup excluded).
fn time_each<T, R>(inputs: &[T], mut f: impl FnMut(&T) -> R) -> f64 {
    let samples: Vec<f64> = inputs
        .iter()
        .map(|input| {
            let t = std::time::Instant::now();
            std::hint::black_box(f(input));
            t.elapsed().as_nanos() as f64
        })
        .collect();
    median(&samples)
}

// ------------------------------------------------------------------------------------------------

/// 1,000 concurrent streams of the same 150-stock formula.
pub async fn fan_out(ctx: &Ctx) -> Result<Report, String> {
    let mut report = Report::new("fan-out", ctx.quick);
    let streams = if ctx.quick { 100 } else { 1000 };
    let lat = profile(ctx);
    let sim = Simulator::start(&ctx.bin, &ctx.logs, "fan-out").await?;
    sim.set_latency(lat).await?;

    // The reference: one stream on a fresh service (cold pool, empty cache).
    let single = {
        let svc = Service::start(&ctx.bin, &ctx.logs, "fan-out-single", &sim, &[]).await?;
        let client = LoadClient::new(&svc.base, ctx.client_threads);
        let r = client.stream(formula_spec()).await;
        require(&r, "single stream")?;
        r.complete_at.map_or(0.0, ms)
    };
    wait_connections_closed(&sim).await?;

    let svc = Service::start(&ctx.bin, &ctx.logs, "fan-out", &sim, &[]).await?;
    let client = LoadClient::new(&svc.base, ctx.client_threads);
    let served_before = sim.series_served().await?;
    let before = Cpu::now(&svc, &sim);
    let (results, wall) = run_many(&client, vec![formula_spec(); streams], streams).await;
    let after = Cpu::now(&svc, &sim);
    let served = sim.series_served().await? - served_before;
    let (failed, first_error) = failures(&results);
    let distinct = (FORMULA_STOCKS * 2) as u64;
    let bytes: u64 = results.iter().map(|r| r.bytes).sum();
    let firsts: Vec<f64> = results
        .iter()
        .filter_map(|r| r.first_event.map(ms))
        .collect();

    report.row(Row::check(
        "streams completed",
        (streams - failed) as f64,
        "",
        failed == 0,
        &format!("= {streams}"),
    ));
    report.row(Row::check(
        "seriesServed",
        served as f64,
        "",
        served == distinct,
        &format!("= {distinct} distinct charts"),
    ));
    report.row(Row::ratio(
        "wall time",
        ms(wall),
        "ms",
        "single stream",
        single,
        3.0,
        false,
    ));
    report.row(Row::info("first event p50", median(&firsts), "ms"));
    report.row(Row::info(
        "first event p99",
        percentile(&firsts, 99.0),
        "ms",
    ));
    report.row(Row::info("SSE delivered", bytes as f64 / 1e9, "GB"));
    report.row(Row::info(
        "SSE delivery rate",
        bytes as f64 / wall.as_secs_f64() / 1e6,
        "MB/s",
    ));
    report.row(Row::info(
        "service peak RSS",
        after.service.peak_rss as f64 / 1e6,
        "MB",
    ));
    cpu_rows(&mut report, &before, &after, wall);
    report.note(format!(
        "{streams} concurrent streams of `{FORMULA}` ({RESOLUTIONS}, 300 bars) on a fresh service; reference: one stream on another fresh service; latency connect {} ms, series {} ms",
        lat.connect_ms, lat.series_ms
    ));
    if let Some(e) = first_error {
        report.note(format!("first failure: {e}"));
    }
    report.detail("streams", streams);
    report.detail("single_ms", single);
    report.detail("bytes", bytes);
    Ok(report)
}

// ------------------------------------------------------------------------------------------------

/// 10,000 open streams held on keep-alives: all held with no error, RSS per open stream.
pub async fn idle(ctx: &Ctx) -> Result<Report, String> {
    let mut report = Report::new("idle", ctx.quick);
    let (streams, keep_alive) = if ctx.quick {
        (500usize, 1u64)
    } else {
        (10_000, 2)
    };
    if let Some(limit) = procs::open_files_limit()
        && limit < streams as u64 + 256
    {
        return Err(format!(
            "the open-files limit is {limit}; {streams} streams need {} (raise it with ulimit -n)",
            streams + 256
        ));
    }
    let sim = Simulator::start(&ctx.bin, &ctx.logs, "idle").await?;
    // Series are never answered during the run, so every stream waits on its one chart.
    sim.set_faults(json!({"latency_ms": 3_600_000})).await?;
    let svc = Service::start(
        &ctx.bin,
        &ctx.logs,
        "idle",
        &sim,
        &[
            ("stream.keep_alive_secs", keep_alive.to_string()),
            ("upstream.request_timeout_ms", "3600000".to_string()),
        ],
    )
    .await?;
    let client = LoadClient::new(&svc.base, ctx.client_threads);
    let spec = |hold: &watch::Receiver<bool>, opened: &mpsc::UnboundedSender<bool>| StreamSpec {
        path: format!("{STREAM}?symbols=NSE:IDLEBENCH&resolutions=1D&bars=300"),
        hold: Some(hold.clone()),
        opened: Some(opened.clone()),
        idle_timeout: None,
        stop_after_first: false,
        ..StreamSpec::default()
    };

    // Warm-up: open and close a few streams, so first-use allocations are in the baseline.
    {
        let (hold_tx, hold_rx) = watch::channel(false);
        let (open_tx, mut open_rx) = mpsc::unbounded_channel();
        let pending: Vec<_> = (0..64)
            .map(|_| client.stream(spec(&hold_rx, &open_tx)))
            .collect();
        for _ in 0..64 {
            if open_rx.recv().await != Some(true) {
                return Err("warm-up: an idle stream did not open".into());
            }
        }
        let _ = hold_tx.send(true);
        futures_util::future::join_all(pending).await;
        sleep(Duration::from_secs(keep_alive + 1)).await;
    }
    let baseline = svc.sample();

    let (hold_tx, hold_rx) = watch::channel(false);
    let (open_tx, mut open_rx) = mpsc::unbounded_channel();
    let started = Instant::now();
    let mut pending = FuturesUnordered::new();
    // Streams whose opening is settled (first event, or failure), and those that opened.
    let (mut settled, mut opened) = (0usize, 0usize);
    let max_opening = 256;
    let open_deadline = Instant::now() + Duration::from_secs(180);
    for _ in 0..streams {
        while pending.len() - settled >= max_opening {
            match open_rx.recv().await {
                Some(ok) => {
                    settled += 1;
                    opened += usize::from(ok);
                }
                None => break,
            }
        }
        pending.push(client.stream(spec(&hold_rx, &open_tx)));
    }
    while settled < streams {
        tokio::select! {
            Some(ok) = open_rx.recv() => {
                settled += 1;
                opened += usize::from(ok);
            }
            _ = sleep(Duration::from_secs(1)) => {
                if Instant::now() > open_deadline {
                    break;
                }
            }
        }
    }
    let open_time = started.elapsed();
    // Hold them through at least two keep-alive intervals.
    sleep(Duration::from_secs(keep_alive * 2 + 1)).await;
    let held = svc.sample();
    let stats = svc.stats().await.unwrap_or_default();
    let _ = hold_tx.send(true);
    let mut results = Vec::new();
    while let Some(r) = pending.next().await {
        results.push(r);
    }

    let errors: Vec<&StreamResult> = results
        .iter()
        .filter(|r| r.error.is_some() || !r.released)
        .collect();
    let kept_alive = results.iter().filter(|r| r.quiet_reads > 0).count();
    let per_stream = held.rss.saturating_sub(baseline.rss) as f64 / streams as f64;
    report.row(Row::check(
        "streams open at once",
        opened as f64,
        "",
        opened == streams,
        &format!("= {streams}"),
    ));
    report.row(Row::check(
        "streams with an error",
        errors.len() as f64,
        "",
        errors.is_empty(),
        "= 0",
    ));
    report.row(Row::check(
        "streams that received keep-alives",
        kept_alive as f64,
        "",
        kept_alive == streams,
        &format!("= {streams}"),
    ));
    report.row(Row::limit(
        "RSS per open stream",
        per_stream / 1024.0,
        "KiB",
        16.0,
        false,
    ));
    report.row(Row::info(
        "service RSS before",
        baseline.rss as f64 / 1e6,
        "MB",
    ));
    report.row(Row::info(
        "service RSS with streams open",
        held.rss as f64 / 1e6,
        "MB",
    ));
    report.row(Row::info("time to open all streams", ms(open_time), "ms"));
    report.row(Row::info(
        "service leases (refCount) while held",
        stats["refCount"].as_f64().unwrap_or(0.0),
        "",
    ));
    report.note(format!(
        "{streams} streams of one never-answered chart (shared fetch), keep-alive every {keep_alive} s, held {} s",
        keep_alive * 2 + 1
    ));
    if let Some(r) = errors.first() {
        report.note(format!(
            "first failure: {}",
            r.error.as_deref().unwrap_or("not held to the end")
        ));
    }
    report.detail("streams", streams);
    report.detail("rss_before", baseline.rss);
    report.detail("rss_held", held.rss);
    Ok(report)
}
