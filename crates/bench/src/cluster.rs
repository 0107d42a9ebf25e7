//! The `cluster` scenario: three `chartgate serve` instances sharing one `redis-server` (SPEC 7)
//! and one simulator, all on this machine. The harness starts Redis itself on a free port
//! (`--save '' --appendonly no`, stopped at the end); without `/usr/bin/redis-server` the scenario
//! reports that it was skipped.
//!
//! 1. **Local hit against shared-tier hit.** Distinct charts fetched on instance A (misses, no
//!    simulated latency), then each once more on A (its in-memory cache) and once on B (B's own
//!    cache is empty, so Redis answers: a chart can be a shared hit on B only once), then once
//!    more on B (now local): latency per request and the instance's CPU per request.
//! 2. **Fan-out spread.** The `fan-out` scenario's streams (the 150-stock formula, same latency
//!    profile) all on A, against the same streams round-robin over A, B and C; each run on fresh
//!    processes after `FLUSHALL`, so every run starts cold. The upstream budget is the same
//!    (`pool.max_connections`, cluster-wide) in both.
//! 3. **Redis commands per chart**, from `INFO commandstats` before and after each phase of 1
//!    (cold charts, shared hits, local hits) and of the spread run of 2, less the background
//!    (membership and permit renewals) measured over an idle window. Commands run inside Lua
//!    scripts are counted by Redis too; the breakdown by command is in the notes.
//! 4. **Losing an instance.** Live streams on A, A killed with SIGKILL, each stream resumed on B
//!    with its `Last-Event-ID` as soon as its connection broke: the time from the kill until every
//!    stream had its next live event on B (beside the same streams opened on C, which relays A's
//!    series), until B and C between them had taken A's live series over upstream (its ownership
//!    lapsed), and until A's permits had lapsed from `chartgate:permits` (and A from
//!    `chartgate:instances`), polled in Redis's own clock. Then history streams cut while A was fetching their second batch:
//!    B waits for A's fetch locks to expire (`upstream.request_timeout_ms`) and fetches the
//!    charts itself; the time from the kill to each stream's next batch on B.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix_web::rt::time::{Instant, sleep};
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use serde_json::json;

use chartgate::cluster::keys;

use crate::live::{self, Held};
use crate::load::{LiveSpec, LoadClient, StreamResult, StreamSpec};
use crate::procs::{self, Latency, Proc, Service, Simulator};
use crate::report::{Report, Row, median, ms, percentile};
use crate::scenarios::{self, Ctx};

/// Where Debian installs it (`.ci/run` does).
const REDIS_SERVER: &str = "/usr/bin/redis-server";
/// The instances' ids; A is the first.
const INSTANCES: [&str; 3] = ["cbench-a", "cbench-b", "cbench-c"];
/// `manager.stale_after_secs`: the permits' and the membership's lease (its minimum in a cluster);
/// `cluster.live_lease_secs` too, live ownership's.
const STALE_AFTER_SECS: u64 = 3;

// ------------------------------------------------------------------------------------------------

/// `redis-server` on a free port with persistence off; stopped (SIGTERM) when dropped.
struct Redis {
    _proc: Proc,
    url: String,
    conn: MultiplexedConnection,
}

/// Calls per command name, from `INFO commandstats` (the harness's own `INFO` left out).
type Commands = BTreeMap<String, f64>;

impl Redis {
    async fn start(ctx: &Ctx) -> Result<Redis, String> {
        let port = procs::free_port().map_err(|e| e.to_string())?;
        let args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            "",
            "--dir",
            &ctx.logs.to_string_lossy(),
        ]
        .map(String::from)
        .to_vec();
        let mut proc = Proc::spawn(
            "cluster-redis",
            Path::new(REDIS_SERVER),
            &args,
            &[],
            &ctx.logs,
        )
        .map_err(|e| e.to_string())?;
        let url = format!("redis://127.0.0.1:{port}");
        let client = redis::Client::open(url.as_str()).map_err(|e| format!("{url}: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let conn = loop {
            proc.check_alive()?;
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            {
                break conn;
            }
            if Instant::now() > deadline {
                return Err(format!("redis-server not answering at {url} after 20 s"));
            }
            sleep(Duration::from_millis(20)).await;
        };
        Ok(Redis {
            _proc: proc,
            url,
            conn,
        })
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, String> {
        let mut conn = self.conn.clone();
        cmd.query_async(&mut conn)
            .await
            .map_err(|e| format!("redis at {}: {e}", self.url))
    }

    async fn flushall(&self) -> Result<(), String> {
        self.query::<()>(&redis::cmd("FLUSHALL")).await
    }

    async fn commands(&self) -> Result<Commands, String> {
        let info: String = self.query(redis::cmd("INFO").arg("commandstats")).await?;
        Ok(parse_commandstats(&info))
    }

    /// Calls per second of each command over `window` with nothing asked of the instances: their
    /// membership and permit renewals.
    async fn background(&self, window: Duration) -> Result<Commands, String> {
        let before = self.commands().await?;
        sleep(window).await;
        let after = self.commands().await?;
        Ok(per(&delta(&before, &after), window.as_secs_f64()))
    }

    /// Members of the sorted set `key` starting with `prefix` whose score (an expiry in Redis's
    /// clock, ms) is still ahead.
    async fn live_members(&self, key: &str, prefix: &str) -> Result<usize, String> {
        let (secs, micros): (u64, u64) = self.query(&redis::cmd("TIME")).await?;
        let now_ms = (secs * 1000 + micros / 1000) as f64;
        let members: Vec<(String, f64)> = self
            .query(
                redis::cmd("ZRANGE")
                    .arg(key)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES"),
            )
            .await?;
        Ok(members
            .iter()
            .filter(|(m, score)| m.starts_with(prefix) && *score > now_ms)
            .count())
    }
}

fn parse_commandstats(info: &str) -> Commands {
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            (name != "info").then(|| (name.to_string(), calls))
        })
        .collect()
}

fn delta(before: &Commands, after: &Commands) -> Commands {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

fn per(commands: &Commands, n: f64) -> Commands {
    let n = n.max(1e-9);
    commands.iter().map(|(k, v)| (k.clone(), v / n)).collect()
}

fn total(commands: &Commands) -> f64 {
    // Not `sum()`: an empty float sum is -0.
    commands.values().fold(0.0, |a, b| a + b)
}

/// `get 1.00, evalsha 0.50`: the commands of at least 0.01 per unit, most first.
fn breakdown(commands: &Commands) -> String {
    let mut v: Vec<(&String, &f64)> = commands.iter().filter(|(_, n)| **n >= 0.01).collect();
    v.sort_by(|a, b| b.1.total_cmp(a.1));
    let parts: Vec<String> = v.iter().map(|(k, n)| format!("{k} {n:.2}")).collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// What was sent to Redis between a start and an end, less the background, per unit of work.
struct Net {
    per_unit: Commands,
}

impl Net {
    async fn measure(
        redis: &Redis,
        before: &Commands,
        background: &Commands,
        secs: f64,
        units: usize,
    ) -> Result<Net, String> {
        let raw = delta(before, &redis.commands().await?);
        let net: Commands = raw
            .iter()
            .map(|(k, v)| {
                let idle = background.get(k).copied().unwrap_or(0.0) * secs;
                (k.clone(), if *v > idle { v - idle } else { 0.0 })
            })
            .collect();
        Ok(Net {
            per_unit: per(&net, units as f64),
        })
    }

    fn total(&self) -> f64 {
        total(&self.per_unit)
    }
}

// ------------------------------------------------------------------------------------------------

/// Redis emptied (`FLUSHALL`), then three new instances on `sim` and `redis` with `extra`
/// settings, once each sees all three in the membership: a cold cluster.
async fn start_instances(
    ctx: &Ctx,
    sim: &Simulator,
    redis: &Redis,
    tag: &str,
    extra: &[(&str, String)],
) -> Result<Vec<Service>, String> {
    redis.flushall().await?;
    let mut nodes = Vec::new();
    for id in INSTANCES {
        let mut overrides = vec![
            ("cluster.redis_url", redis.url.clone()),
            ("cluster.instance_id", id.to_string()),
            ("manager.stale_after_secs", STALE_AFTER_SECS.to_string()),
            ("cluster.live_lease_secs", STALE_AFTER_SECS.to_string()),
        ];
        overrides.extend(extra.iter().cloned());
        let node =
            Service::start(&ctx.bin, &ctx.logs, &format!("{tag}-{id}"), sim, &overrides).await?;
        nodes.push(node);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for node in &nodes {
        loop {
            let stats = node.stats().await?;
            let c = &stats["cluster"];
            if c["redis"] == "ok" && c["instances"] == INSTANCES.len() as u64 {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not see the three instances in 20 s: {c}",
                    node.base
                ));
            }
            sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(nodes)
}

/// Stops the instances (gracefully: each gives back its permits) and waits for the feed to see
/// their connections closed.
async fn stop_instances(nodes: Vec<Service>, sim: &Simulator) -> Result<(), String> {
    drop(nodes);
    scenarios::wait_connections_closed(sim).await
}

/// CPU microseconds of the instances so far, summed.
fn cpu_us(nodes: &[Service]) -> u64 {
    nodes.iter().map(|n| n.sample().cpu_us).sum()
}

/// `/api/chart-data` of `symbol` on 1D, 300 bars (a stream's default), on `node`.
fn chart_url(node: &Service, symbol: &str) -> String {
    format!(
        "{}/api/chart-data?symbol={}&resolution=1D&bars=300",
        node.base,
        live::encode(symbol)
    )
}

/// One `/api/chart-data` request: milliseconds, and whether it was answered from a cache.
async fn get_chart(client: &awc::Client, url: &str) -> Result<(f64, bool), String> {
    let started = Instant::now();
    let (status, body) = procs::http_get(client, url).await?;
    let took = ms(started.elapsed());
    if status != 200 {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        return Err(format!("{url}: {status} {text}"));
    }
    Ok((took, body.ends_with(b",\"cached\":true}")))
}

/// Requests of one phase of part 1 on one instance.
struct Phase {
    latencies: Vec<f64>,
    cached: usize,
    /// The instance's CPU per request, µs.
    cpu_per_request: f64,
    redis: Net,
}

async fn phase(
    redis: &Redis,
    background: &Commands,
    node: &Service,
    urls: &[String],
    concurrency: usize,
) -> Result<Phase, String> {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    let commands = redis.commands().await?;
    let pid = node.proc.pid();
    let cpu = procs::cpu_ns(&pid);
    let started = Instant::now();
    let answers: Vec<Result<(f64, bool), String>> = futures_util::stream::iter(urls)
        .map(|url| get_chart(&client, url))
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let secs = started.elapsed().as_secs_f64();
    let cpu = procs::cpu_ns(&pid).saturating_sub(cpu);
    let redis = Net::measure(redis, &commands, background, secs, urls.len()).await?;
    let answers: Vec<(f64, bool)> = answers.into_iter().collect::<Result<_, _>>()?;
    Ok(Phase {
        latencies: answers.iter().map(|(t, _)| *t).collect(),
        cached: answers.iter().filter(|(_, c)| *c).count(),
        cpu_per_request: cpu as f64 / 1e3 / urls.len().max(1) as f64,
        redis,
    })
}

// ------------------------------------------------------------------------------------------------

pub async fn cluster(ctx: &Ctx) -> Result<Report, String> {
    let mut report = Report::new("cluster", ctx.quick);
    if !Path::new(REDIS_SERVER).exists() {
        report.note(format!(
            "skipped: {REDIS_SERVER} is not installed (apt-get install redis-server)"
        ));
        report.detail("skipped", true);
        return Ok(report);
    }
    let redis = Redis::start(ctx).await?;
    // Heartbeats more often than the 3 s lease, so idle feed connections are not stale.
    let sim = Simulator::start_with(
        &ctx.bin,
        &ctx.logs,
        "cluster",
        &[("simulator.heartbeat_secs", "1".into())],
    )
    .await?;
    hits(ctx, &mut report, &redis, &sim).await?;
    fan_out(ctx, &mut report, &redis, &sim).await?;
    losing(ctx, &mut report, &redis, &sim).await?;
    losing_history(ctx, &mut report, &redis, &sim).await?;
    report.detail("stale_after_secs", STALE_AFTER_SECS);
    Ok(report)
}

/// Parts 1 and 3: local hits, shared-tier hits, and the Redis commands of each.
async fn hits(
    ctx: &Ctx,
    report: &mut Report,
    redis: &Redis,
    sim: &Simulator,
) -> Result<(), String> {
    let charts = if ctx.quick { 200 } else { 1000 };
    sim.set_latency(Latency::default()).await?;
    let nodes = start_instances(ctx, sim, redis, "cluster-hits", &[]).await?;
    let window = Duration::from_secs(if ctx.quick { 2 } else { 4 });
    let background = redis.background(window).await?;
    let symbols = live::symbols(charts);
    let urls =
        |node: &Service| -> Vec<String> { symbols.iter().map(|s| chart_url(node, s)).collect() };
    let (on_a, on_b) = (urls(&nodes[0]), urls(&nodes[1]));
    let cold = phase(redis, &background, &nodes[0], &on_a, 8).await?;
    let local = phase(redis, &background, &nodes[0], &on_a, 1).await?;
    let shared = phase(redis, &background, &nodes[1], &on_b, 1).await?;
    let local_b = phase(redis, &background, &nodes[1], &on_b, 1).await?;
    stop_instances(nodes, sim).await?;

    let (lp50, lp99) = (median(&local.latencies), percentile(&local.latencies, 99.0));
    report.row(Row::info("local hit (A's cache) p50", lp50, "ms"));
    report.row(Row::info("local hit p99", lp99, "ms"));
    let versus = [
        (
            "shared-tier hit (B's first request: Redis) p50",
            median(&shared.latencies),
            "ms",
            "local hit p50",
            lp50,
        ),
        (
            "shared-tier hit p99",
            percentile(&shared.latencies, 99.0),
            "ms",
            "local hit p99",
            lp99,
        ),
        (
            "service CPU per shared-tier hit (B)",
            shared.cpu_per_request,
            "us",
            "per local hit (A)",
            local.cpu_per_request,
        ),
        (
            "B's second request (local hit after the shared one) p50",
            median(&local_b.latencies),
            "ms",
            "A's local hit p50",
            lp50,
        ),
    ];
    for (figure, value, unit, reference, reference_value) in versus {
        report.row(Row::versus(figure, value, unit, reference, reference_value));
    }
    report.row(Row::info(
        "miss (fetched upstream, no simulated latency, 8 at once) p50",
        median(&cold.latencies),
        "ms",
    ));
    let every = |p: &Phase| p.cached == charts;
    report.row(Row::check(
        "requests answered from a cache (local, shared, B local)",
        (local.cached + shared.cached + local_b.cached) as f64,
        "",
        every(&local) && every(&shared) && every(&local_b) && cold.cached == 0,
        &format!("= 3 x {charts}, and 0 of the misses"),
    ));
    report.row(Row::info(
        "Redis commands per chart fetched upstream (A, cold)",
        cold.redis.total(),
        "",
    ));
    report.row(Row::info(
        "Redis commands per shared-tier hit (B)",
        shared.redis.total(),
        "",
    ));
    report.row(Row::info(
        "Redis commands per local hit (A, and B after its shared hit)",
        (local.redis.total() + local_b.redis.total()) / 2.0,
        "",
    ));
    report.note(format!(
        "hits: {charts} distinct charts (1D, 300 bars, objects) by /api/chart-data, one request at a time (misses 8 at once); CPU from /proc/PID/task/*/schedstat over the phase; Redis commands from INFO commandstats less the background of {:.1} commands/s ({})",
        total(&background),
        breakdown(&background)
    ));
    report.note(format!(
        "Redis commands per chart, inside scripts included: cold: {}; shared hit: {}; local hit: {}",
        breakdown(&cold.redis.per_unit),
        breakdown(&shared.redis.per_unit),
        breakdown(&local.redis.per_unit)
    ));
    report.detail(
        "hits",
        json!({
            "charts": charts,
            "local_ms": local.latencies,
            "shared_ms": shared.latencies,
            "b_local_ms": local_b.latencies,
            "cold_ms": cold.latencies,
            "cpu_us_per_request": {
                "cold": cold.cpu_per_request,
                "local": local.cpu_per_request,
                "shared": shared.cpu_per_request,
                "b_local": local_b.cpu_per_request,
            },
            "redis_per_chart": {
                "cold": cold.redis.per_unit,
                "shared": shared.redis.per_unit,
                "local": local.redis.per_unit,
                "b_local": local_b.redis.per_unit,
            },
            "background_per_sec": background,
        }),
    );
    Ok(())
}

/// One fan-out run of part 2.
struct FanOutRun {
    wall: f64,
    served: u64,
    cpu_us: u64,
    first_p50: f64,
    redis: Net,
    /// Per instance (A, B, C): fetches it made (`cache.misses`) and the upstream connections it
    /// had open at the end.
    split: Vec<(u64, u64)>,
    /// Per instance streamed to: its streams' completion, median and last (ms).
    completes: Vec<(f64, f64)>,
}

/// A figure of the fan-out runs: its name, unit, and how it is read off a run.
type FanOutFigure = (&'static str, &'static str, fn(&FanOutRun) -> f64);

/// Part 2: the fan-out scenario on A alone, then round-robin over the three.
async fn fan_out(
    ctx: &Ctx,
    report: &mut Report,
    redis: &Redis,
    sim: &Simulator,
) -> Result<(), String> {
    let streams = if ctx.quick { 100 } else { 1000 };
    let rounds = if ctx.quick { 1 } else { 3 };
    let lat = scenarios::profile(ctx);
    sim.set_latency(lat).await?;
    let (mut one, mut three) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for spread in [false, true] {
            let run = fan_out_run(ctx, redis, sim, streams, spread).await?;
            if spread {
                three.push(run);
            } else {
                one.push(run);
            }
        }
    }
    let med = |runs: &[FanOutRun], f: fn(&FanOutRun) -> f64| {
        median(&runs.iter().map(f).collect::<Vec<_>>())
    };
    let distinct = (scenarios::FORMULA_STOCKS * 2) as u64;
    // Spread against all on A, figure by figure.
    let figures: [FanOutFigure; 4] = [
        (
            "fan-out wall, streams round-robin over A, B, C",
            "ms",
            |r| r.wall,
        ),
        ("fan-out service CPU, the three summed", "ms", |r| {
            r.cpu_us as f64 / 1e3
        }),
        ("fan-out first event p50", "ms", |r| r.first_p50),
        ("Redis commands per stream", "", |r| r.redis.total()),
    ];
    for (figure, unit, f) in figures {
        report.row(Row::versus(
            figure,
            med(&three, f),
            unit,
            "all on A",
            med(&one, f),
        ));
    }
    let all_once = one.iter().chain(&three).all(|r| r.served == distinct);
    report.row(Row::check(
        "seriesServed per run, spread",
        med(&three, |r| r.served as f64),
        "",
        all_once,
        &format!("= {distinct} distinct charts in every run"),
    ));
    report.note(format!(
        "fan-out: {streams} concurrent streams of `{}` ({}, 300 bars), {rounds} round(s) of (all on A, then spread), each on three fresh instances after FLUSHALL; latency connect {} ms, series {} ms; budget pool.max_connections cluster-wide in both; medians of the rounds",
        scenarios::FORMULA,
        scenarios::RESOLUTIONS,
        lat.connect_ms,
        lat.series_ms
    ));
    if let Some(r) = three.first() {
        report.note(format!(
            "Redis commands per stream, spread (inside scripts included): {}",
            breakdown(&r.redis.per_unit)
        ));
    }
    for (name, runs) in [("all on A", &one), ("spread", &three)] {
        let each: Vec<String> = runs
            .iter()
            .map(|r| {
                let (fetches, conns): (Vec<String>, Vec<String>) = r
                    .split
                    .iter()
                    .map(|(f, c)| (f.to_string(), c.to_string()))
                    .unzip();
                let done: Vec<String> = r
                    .completes
                    .iter()
                    .map(|(p50, last)| format!("{p50:.0}/{last:.0}"))
                    .collect();
                format!(
                    "{:.0} ms (fetches {}, connections {}, streams complete p50/last {} ms)",
                    r.wall,
                    fetches.join("/"),
                    conns.join("/"),
                    done.join(", ")
                )
            })
            .collect();
        report.note(format!(
            "fan-out runs, {name}, per instance A/B/C: {}",
            each.join("; ")
        ));
    }
    report.detail(
        "fan_out",
        json!({
            "streams": streams,
            "one_ms": one.iter().map(|r| r.wall).collect::<Vec<_>>(),
            "three_ms": three.iter().map(|r| r.wall).collect::<Vec<_>>(),
            "one_cpu_us": one.iter().map(|r| r.cpu_us).collect::<Vec<_>>(),
            "three_cpu_us": three.iter().map(|r| r.cpu_us).collect::<Vec<_>>(),
        }),
    );
    Ok(())
}

async fn fan_out_run(
    ctx: &Ctx,
    redis: &Redis,
    sim: &Simulator,
    streams: usize,
    spread: bool,
) -> Result<FanOutRun, String> {
    let tag = if spread {
        "cluster-spread"
    } else {
        "cluster-one"
    };
    let nodes = start_instances(ctx, sim, redis, tag, &[]).await?;
    let client = LoadClient::new(&nodes[0].base, ctx.client_threads);
    let bases: Vec<Arc<str>> = nodes.iter().map(|n| Arc::from(n.base.as_str())).collect();
    // Stream i goes to instance i mod 3 (or to A); each instance's streams are run as a group,
    // all groups at once, so that their results stay apart.
    let used = if spread { bases.len() } else { 1 };
    let groups: Vec<Vec<StreamSpec>> = (0..used)
        .map(|n| {
            (n..streams)
                .step_by(used)
                .map(|_| StreamSpec {
                    base: Some(bases[n].clone()),
                    ..scenarios::formula_spec()
                })
                .collect()
        })
        .collect();
    let served = sim.series_served().await?;
    let commands = redis.commands().await?;
    let cpu = cpu_us(&nodes);
    let started = Instant::now();
    let per_node = futures_util::future::join_all(groups.into_iter().map(|g| {
        let n = g.len();
        scenarios::run_many(&client, g, n)
    }))
    .await;
    let wall = started.elapsed();
    let cpu = cpu_us(&nodes).saturating_sub(cpu);
    // Per instance: the median and the last of its streams' completions.
    let completes: Vec<(f64, f64)> = per_node
        .iter()
        .map(|(results, _)| {
            let done: Vec<f64> = results
                .iter()
                .filter_map(|r| r.complete_at.map(ms))
                .collect();
            (median(&done), percentile(&done, 100.0))
        })
        .collect();
    let results: Vec<StreamResult> = per_node.into_iter().flat_map(|(r, _)| r).collect();
    let served = sim.series_served().await? - served;
    // The fan-out's Redis traffic dwarfs the renewals; none subtracted.
    let redis = Net::measure(redis, &commands, &Commands::new(), 0.0, streams).await?;
    let mut split = Vec::new();
    for node in &nodes {
        let stats = node.stats().await?;
        let count = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        split.push((
            count(&stats["cache"]["misses"]),
            count(&stats["pool"]["openConnections"]),
        ));
    }
    let (failed, first_error) = scenarios::failures(&results);
    drop(client);
    stop_instances(nodes, sim).await?;
    if failed > 0 {
        return Err(format!(
            "fan-out ({}): {failed} of {streams} streams failed: {}",
            if spread { "spread" } else { "one" },
            first_error.unwrap_or_default()
        ));
    }
    let firsts: Vec<f64> = results
        .iter()
        .filter_map(|r| r.first_event.map(ms))
        .collect();
    Ok(FanOutRun {
        wall: ms(wall),
        served,
        cpu_us: cpu,
        first_p50: median(&firsts),
        redis,
        split,
        completes,
    })
}

/// What killing A cost, seen from Redis and from the clients.
struct Killed<T> {
    /// Kill to the resumed requests sent (the cut streams' ends read, their ids taken).
    asked: Duration,
    /// Whatever resuming gave.
    resumed: T,
    /// Cut streams whose last id was a live event's.
    live_ids: usize,
    a_permits: usize,
    lapse: Lapse,
}

/// SIGKILLs A (`nodes[0]`), takes the last event id of each of `on_a`'s streams as soon as its
/// connection broke, and runs `resume` with them, while A's permits and membership are watched
/// lapse in Redis.
async fn kill_a<T, F: Future<Output = T>>(
    redis: &Redis,
    nodes: &mut [Service],
    on_a: Held,
    resume: impl FnOnce(Vec<Option<String>>) -> F,
) -> Result<Killed<T>, String> {
    let a_prefix = format!("{}:", INSTANCES[0]);
    let a_permits = redis.live_members(keys::PERMITS, &a_prefix).await?;
    let killed = Instant::now();
    nodes[0].proc.kill()?;
    let gone = on_a.release().await;
    let ids: Vec<Option<String>> = gone.iter().map(|r| r.last_id.clone()).collect();
    let live_ids = ids
        .iter()
        .filter(|id| id.as_deref().is_some_and(|i| i.contains(".live.")))
        .count();
    let asked = killed.elapsed();
    let (resumed, lapse) = futures_util::join!(resume(ids), lapses(redis, &a_prefix, killed));
    Ok(Killed {
        asked,
        resumed,
        live_ids,
        a_permits,
        lapse: lapse?,
    })
}

/// Opens `specs` and holds them, once each had its first event (`formula-results`, or a live
/// event for a live stream); an error if any did not within 60 s.
async fn open_all(client: &LoadClient, specs: Vec<StreamSpec>, what: &str) -> Result<Held, String> {
    let n = specs.len();
    let held = live::open(client, specs, Duration::from_secs(60)).await;
    if held.opened < n {
        return Err(format!(
            "{} of {n} {what} had their first event",
            held.opened
        ));
    }
    Ok(held)
}

/// `last-event-id` as a request header line, or nothing.
fn last_id_header(id: Option<&str>) -> String {
    id.map(|id| format!("last-event-id: {id}\r\n"))
        .unwrap_or_default()
}

/// A `symbols=` stream of `symbols` on 1D.
fn symbols_path(symbols: &[String], bars: usize, live: bool) -> String {
    let list: Vec<String> = symbols.iter().map(|s| live::encode(s)).collect();
    format!(
        "/api/formula-results-with-charts?symbols={}&resolutions=1D&bars={bars}{}",
        list.join(","),
        if live { "&live=true" } else { "" }
    )
}

/// Polls the stats of `nodes` every 10 ms until they subscribe `charts` live series upstream
/// between them (A's series, taken over once its ownership lapsed); an error after 60 s.
async fn taken_over(nodes: &[Arc<str>], charts: usize) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut upstream = 0;
        for base in nodes {
            let stats = procs::http_json(&format!("{base}/api/connections/stats"), None).await?;
            upstream += stats["live"]["series"].as_u64().unwrap_or(0) as usize;
        }
        if upstream >= charts {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{upstream} of {charts} live series taken over within 60 s"
            ));
        }
        sleep(Duration::from_millis(10)).await;
    }
}

/// Part 4: live streams on A, A killed, the streams resumed on B; A's live series taken over and
/// its permits lapsing.
async fn losing(
    ctx: &Ctx,
    report: &mut Report,
    redis: &Redis,
    sim: &Simulator,
) -> Result<(), String> {
    let streams = if ctx.quick { 10 } else { 20 };
    let per_stream = 5;
    // Each instance opens at most 4 connections of the cluster's 10, so B never waits for the
    // permits A leaves behind: the two figures are measured apart.
    let (pool, budget) = (4usize, 10usize);
    let lat = scenarios::profile(ctx);
    sim.set_latency(lat).await?;
    let mut nodes = start_instances(
        ctx,
        sim,
        redis,
        "cluster-losing",
        &[
            ("pool.max_connections", pool.to_string()),
            ("cluster.max_upstream_connections", budget.to_string()),
        ],
    )
    .await?;
    let symbols = live::symbols(streams * per_stream);
    let path = |i: usize| symbols_path(&symbols[i * per_stream..(i + 1) * per_stream], 10, true);
    let (a, b): (Arc<str>, Arc<str>) =
        (nodes[0].base.as_str().into(), nodes[1].base.as_str().into());
    let client = LoadClient::new(&a, ctx.client_threads);
    let specs = (0..streams)
        .map(|i| StreamSpec {
            base: Some(a.clone()),
            keep_id: true,
            ..live::live_spec(path(i), LiveSpec::default())
        })
        .collect();
    let on_a = open_all(&client, specs, "live streams on A").await?;
    // The reference: the same streams opened on C, with no failure (C relays A's series).
    let c: Arc<str> = nodes[2].base.as_str().into();
    let specs = (0..streams)
        .map(|i| StreamSpec {
            base: Some(c.clone()),
            ..live::live_spec(path(i), LiveSpec::default())
        })
        .collect();
    let on_c = live::open(&client, specs, Duration::from_secs(60)).await;
    let fresh_on_c = on_c.open_time;
    on_c.release().await;
    // Past the service's 1 s resume margin after the series' first answers.
    sleep(Duration::from_secs(2)).await;
    let before = nodes[1].stats().await?;
    let charts = streams * per_stream;
    let killed = kill_a(redis, &mut nodes, on_a, |ids| {
        let specs = (0..streams)
            .map(|i| StreamSpec {
                base: Some(b.clone()),
                headers: last_id_header(ids[i].as_deref()),
                ..live::live_spec(path(i), LiveSpec::default())
            })
            .collect();
        let resumed = live::open(&client, specs, Duration::from_secs(60));
        let others = [b.clone(), c.clone()];
        async move {
            let started = Instant::now();
            let (resumed, taken) = futures_util::join!(resumed, taken_over(&others, charts));
            (resumed, taken.map(|()| started.elapsed()))
        }
    })
    .await?;
    let (resumed, taken) = killed.resumed;
    let taken_ms = ms(killed.asked + taken?);
    let after = nodes[1].stats().await?;
    let all_resumed = killed.asked + resumed.open_time;
    let resumed_opened = resumed.opened;
    let results = resumed.release().await;
    drop(client);
    stop_instances(nodes.split_off(1), sim).await?;

    let next: Vec<f64> = results
        .iter()
        .filter_map(|r| r.first_live.map(|t| ms(killed.asked + t)))
        .collect();
    let history_again = results.iter().filter(|r| r.batches > 0).count();
    report.row(Row::check(
        "live streams resumed on B with a live event",
        resumed_opened as f64,
        "",
        resumed_opened == streams && killed.live_ids == streams,
        &format!("= {streams}, each from a live id"),
    ));
    report.row(Row::versus(
        "kill of A to every live stream's next event on B",
        ms(all_resumed),
        "ms",
        "the same streams opened on C (relaying A's series)",
        ms(fresh_on_c),
    ));
    report.row(Row::versus(
        "kill of A to its live series taken over by B or C",
        taken_ms,
        "ms",
        "cluster.live_lease_secs",
        (STALE_AFTER_SECS * 1000) as f64,
    ));
    report.row(Row::info(
        "kill of A to a live stream's next event on B, p50",
        median(&next),
        "ms",
    ));
    report.row(Row::check(
        "resumed live streams that sent their history again",
        history_again as f64,
        "",
        history_again == 0,
        "= 0",
    ));
    for (figure, value) in [
        (
            "kill of A to its permits lapsed in Redis",
            killed.lapse.permits_ms,
        ),
        (
            "kill of A to A gone from the membership",
            killed.lapse.member_ms,
        ),
    ] {
        let lease = (STALE_AFTER_SECS * 1000) as f64;
        report.row(Row::versus(
            figure,
            value,
            "ms",
            "manager.stale_after_secs",
            lease,
        ));
    }
    report.row(Row::info(
        "A's permits at the kill",
        killed.a_permits as f64,
        "",
    ));
    let upstream = |s: &serde_json::Value| s["cluster"]["upstreamConnections"].as_f64();
    report.row(Row::info(
        "cluster upstreamConnections (B's stats) before the kill",
        upstream(&before).unwrap_or(0.0),
        "",
    ));
    report.row(Row::info(
        "cluster upstreamConnections (B's stats) after",
        upstream(&after).unwrap_or(0.0),
        "",
    ));
    report.note(format!(
        "losing (live): {streams} live streams of {per_stream} charts each (1D, 10 bars, tick 1 s) on A, A SIGKILLed 2 s after all were live (and the same streams opened and closed on C, cold, for reference), each resumed on B with its Last-Event-ID as soon as its connection broke (no client retry delay); pool.max_connections {pool}, budget {budget}; latency connect {} ms, series {} ms; lapses polled every 10 ms in Redis's clock",
        lat.connect_ms, lat.series_ms
    ));
    report.detail(
        "losing_live",
        json!({
            "streams": streams,
            "next_event_ms": next,
            "taken_over_ms": taken_ms,
            "asked_ms": ms(killed.asked),
            "permits_ms": killed.lapse.permits_ms,
            "member_ms": killed.lapse.member_ms,
            "a_permits": killed.a_permits,
        }),
    );
    Ok(())
}

/// Part 4, history: streams cut on A while A fetches their second batch (its fetch locks in
/// Redis), resumed on B, which waits for A's locks to expire before it fetches them itself.
async fn losing_history(
    ctx: &Ctx,
    report: &mut Report,
    redis: &Redis,
    sim: &Simulator,
) -> Result<(), String> {
    let streams = if ctx.quick { 3 } else { 5 };
    // One batch (stream.batch_size, 18) cached in Redis beforehand, one fetched when cut.
    let half = 18;
    let request_timeout_ms: u64 = 5000;
    let lat = scenarios::profile(ctx);
    sim.set_latency(Latency::default()).await?;
    let mut nodes = start_instances(
        ctx,
        sim,
        redis,
        "cluster-cut",
        &[
            (
                "upstream.request_timeout_ms",
                request_timeout_ms.to_string(),
            ),
            ("cluster.max_upstream_connections", "30".to_string()),
        ],
    )
    .await?;
    // Distinct from the live part's, which the simulator may still be lingering on.
    let symbols: Vec<String> = live::symbols(1000 + streams * half * 2).split_off(1000);
    let cached_half = |i: usize| &symbols[i * 2 * half..i * 2 * half + half];
    let path = |i: usize| symbols_path(&symbols[i * 2 * half..(i + 1) * 2 * half], 300, false);
    let warm = awc::Client::default();
    for i in 0..streams {
        for s in cached_half(i) {
            get_chart(&warm, &chart_url(&nodes[2], s)).await?;
        }
    }
    // Long enough that the kill lands while A's fetches of the second batches are in flight.
    let series_ms = lat.series_ms.max(400) * 3;
    sim.set_latency(Latency { series_ms, ..lat }).await?;
    let (a, b): (Arc<str>, Arc<str>) =
        (nodes[0].base.as_str().into(), nodes[1].base.as_str().into());
    let client = LoadClient::new(&a, ctx.client_threads);
    let specs = (0..streams)
        .map(|i| StreamSpec {
            base: Some(a.clone()),
            keep_id: true,
            path: path(i),
            ..StreamSpec::default()
        })
        .collect();
    let on_a = open_all(&client, specs, "history streams on A").await?;
    // The first batch is out (shared hits), A's connections are open and its fetches sent.
    sleep(Duration::from_millis(lat.connect_ms + series_ms / 3)).await;
    let served_before = sim.series_served().await?;
    let killed = kill_a(redis, &mut nodes, on_a, |ids| {
        let pending: Vec<_> = (0..streams)
            .map(|i| {
                client.stream(StreamSpec {
                    base: Some(b.clone()),
                    headers: last_id_header(ids[i].as_deref()),
                    path: path(i),
                    ..StreamSpec::default()
                })
            })
            .collect();
        futures_util::future::join_all(pending)
    })
    .await?;
    let served = sim.series_served().await? - served_before;
    drop(client);
    stop_instances(nodes.split_off(1), sim).await?;
    sim.set_latency(Latency::default()).await?;

    let results = &killed.resumed;
    let next: Vec<f64> = results
        .iter()
        .filter_map(|r| r.first_batch.map(|t| ms(killed.asked + t)))
        .collect();
    let clean = results
        .iter()
        .filter(|r| r.completed() && r.failed == 0 && r.batches == 1 && r.first_event.is_none())
        .count();
    report.row(Row::check(
        "cut history streams completed on B, only their missing batch sent",
        clean as f64,
        "",
        clean == streams,
        &format!("= {streams}"),
    ));
    report.row(Row::versus(
        "kill of A to every cut history stream's next batch on B",
        percentile(&next, 100.0),
        "ms",
        "request_timeout_ms + series latency",
        (request_timeout_ms + series_ms) as f64,
    ));
    report.row(Row::info(
        "kill of A to a cut history stream's next batch on B, p50",
        median(&next),
        "ms",
    ));
    report.row(Row::info(
        "series fetched again by B (A's unfinished fetches)",
        served as f64,
        "",
    ));
    report.note(format!(
        "losing (history): {streams} streams of {} charts (1D, 300 bars) on A, the first {half} of each cached in Redis beforehand, A SIGKILLed {} ms after formula-results while it fetched the rest (series latency {series_ms} ms, upstream.request_timeout_ms {request_timeout_ms}: the fetch locks' lifetime; budget 30, so B need not wait for A's permits), each stream resumed on B by its Last-Event-ID",
        half * 2,
        lat.connect_ms + series_ms / 3
    ));
    if let Some(r) = results.iter().find(|r| !r.completed()) {
        report.note(format!(
            "first failure: {}",
            r.error.as_deref().unwrap_or("no complete")
        ));
    }
    report.detail(
        "losing_history",
        json!({
            "streams": streams,
            "next_batch_ms": next,
            "asked_ms": ms(killed.asked),
            "served_again": served,
        }),
    );
    Ok(())
}

/// When A's permits and A's membership had lapsed, in ms after the kill.
struct Lapse {
    permits_ms: f64,
    member_ms: f64,
}

async fn lapses(redis: &Redis, a_prefix: &str, killed: Instant) -> Result<Lapse, String> {
    let a_member = a_prefix.trim_end_matches(':');
    let deadline = killed + Duration::from_secs(STALE_AFTER_SECS * 4);
    let (mut permits_ms, mut member_ms) = (None, None);
    while permits_ms.is_none() || member_ms.is_none() {
        if Instant::now() > deadline {
            return Err(format!(
                "A's permits or membership still live {} s after the kill",
                STALE_AFTER_SECS * 4
            ));
        }
        let now = ms(killed.elapsed());
        if permits_ms.is_none() && redis.live_members(keys::PERMITS, a_prefix).await? == 0 {
            permits_ms = Some(now);
        }
        if member_ms.is_none() && redis.live_members(keys::MEMBERS, a_member).await? == 0 {
            member_ms = Some(now);
        }
        sleep(Duration::from_millis(10)).await;
    }
    Ok(Lapse {
        permits_ms: permits_ms.unwrap_or_default(),
        member_ms: member_ms.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commandstats_are_read_without_the_harness_info() {
        let info = "# Commandstats\r\ncmdstat_mget:calls=12,usec=30,usec_per_call=2.5,rejected_calls=0,failed_calls=0\r\ncmdstat_info:calls=3,usec=1\r\ncmdstat_config|resetstat:calls=1,usec=2\r\n";
        let c = parse_commandstats(info);
        assert_eq!(c.get("mget"), Some(&12.0));
        assert_eq!(c.get("config|resetstat"), Some(&1.0));
        assert!(!c.contains_key("info"));
        let later: Commands = [("mget".to_string(), 20.0), ("set".to_string(), 2.0)].into();
        let d = delta(&c, &later);
        assert_eq!(d.get("mget"), Some(&8.0));
        assert_eq!(d.get("set"), Some(&2.0));
        assert_eq!(breakdown(&per(&d, 4.0)), "mget 2.00, set 0.50");
    }
}
