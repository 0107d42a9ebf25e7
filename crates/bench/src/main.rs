//! `chartgate-bench`: the benchmark harness of issue 5.
//!
//! It starts `chartgate simulate` and `chartgate serve` as separate processes on loopback (so the
//! CPU time and memory read from `/proc` are the service's alone), sets the simulator's latencies
//! through `POST /sim/faults`, drives the service with its own load client, and prints a table
//! per scenario (figure, reference, ratio, target, pass/miss) and writes it as JSON into
//! `bench-results/<scenario>.json`. Every figure is measured in the same run as the reference it
//! is compared with. `--quick` scales every scenario down (CI runs `all --quick` so the harness
//! keeps working); no figure is asserted anywhere: misses are reported, and the exit code is
//! non-zero only when a scenario could not run.
//!
//! ```sh
//! cargo run --release --bin chartgate-bench -- all            # every scenario, full size
//! cargo run --release --bin chartgate-bench -- fan-out --quick
//! cargo run --release --bin chartgate-bench -- live-fanout --followers 2000 --ticks 1000,200
//! ```

// The harness measures wall time across processes, where no clock is paused.
#![allow(clippy::disallowed_types)]

mod cluster;
mod codec;
mod http1;
mod live;
mod load;
mod probe;
mod procs;
mod report;
mod scan;
mod scenarios;
mod tally;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use clap::{Parser, ValueEnum};

use scenarios::Ctx;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Every scenario below, in this order.
    All,
    /// Request to `formula-results`, 50 concurrent clients, 500 requests.
    FirstEvent,
    /// 300 charts on an empty pool, a warm pool, and with connections per request.
    ColdWarm,
    /// Charts per second end to end with no simulated latency; CPU per chart.
    Throughput,
    /// Decoding the capture's 300-bar answer and encoding a chart-batch, beside serde_json.
    Codec,
    /// 1,000 concurrent streams of the same formula.
    FanOut,
    /// 10,000 open streams held on keep-alives; RSS per stream.
    Idle,
    /// 10,000 live followers of 50-stock screens over 500 charts, the feed ticking faster and
    /// faster until the service saturates.
    LiveFanout,
    /// Slow live followers beside fast ones: the fast ones' latency, memory, conflation.
    LiveSlow,
    /// Reconnecting a live stream with Last-Event-ID, beside fresh streams.
    LiveResume,
    /// Three instances and one Redis: shared-cache hits, fan-out spread over the three, Redis
    /// commands per chart, losing an instance.
    Cluster,
}

#[derive(Debug, Parser)]
#[command(
    name = "chartgate-bench",
    about = "Benchmarks chartgate against its simulator, each in its own process"
)]
struct Cli {
    #[arg(value_enum)]
    scenario: Scenario,
    /// Smaller sizes and shorter latencies, for CI.
    #[arg(long)]
    quick: bool,
    /// Where the JSON results (and child logs, under logs/) go.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// The chartgate binary (default: built with `cargo build --release` next to this one).
    #[arg(long, value_name = "PATH")]
    chartgate: Option<PathBuf>,
    /// Load-client threads.
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Live scenarios: followers (live-fanout, live-slow: the fast ones; live-resume: streams
    /// resumed).
    #[arg(long, value_name = "N")]
    followers: Option<usize>,
    /// Live scenarios: distinct (symbol, 1D) charts the screens are drawn from.
    #[arg(long, value_name = "N")]
    charts: Option<usize>,
    /// Live scenarios: the feed's tick_ms levels (live-fanout), or the one tick (live-slow),
    /// e.g. `1000,200,50`; each must divide 1000.
    #[arg(long, value_name = "MS,...", value_delimiter = ',')]
    ticks: Option<Vec<u64>>,
    /// Live scenarios: seconds each level or phase is measured for.
    #[arg(long, value_name = "SECS")]
    window: Option<f64>,
    /// Live scenarios: bars of each chart's history (default 10).
    #[arg(long, value_name = "N")]
    bars: Option<usize>,
}

/// The `chartgate` binary beside this one, built first when run through cargo (which builds
/// only the binary it runs).
fn chartgate_binary(explicit: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(path) = explicit {
        return Ok(path);
    }
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = me.parent().ok_or("no directory for this binary")?;
    if let Some(cargo) = std::env::var_os("CARGO") {
        let release = dir.ends_with("release");
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--bin", "chartgate"]);
        // `cargo run` gives this process the package's variables (CARGO_PKG_*, CARGO_MANIFEST_*,
        // a library path into target/); a nested cargo that sees them fingerprints some build
        // scripts differently and rebuilds half the dependency tree, and the next `cargo run`
        // rebuilds it back. Hand it the caller's environment instead.
        let target = dir.parent().map(|t| t.to_path_buf());
        for (key, value) in std::env::vars_os() {
            let name = key.to_string_lossy();
            let package_var = [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
            ]
            .iter()
            .any(|p| name.starts_with(p));
            if package_var {
                cmd.env_remove(&key);
            } else if name == "LD_LIBRARY_PATH" {
                let kept: Vec<PathBuf> = std::env::split_paths(&value)
                    .filter(|p| target.as_ref().is_none_or(|t| !p.starts_with(t)))
                    .filter(|p| !p.to_string_lossy().contains("/.rustup/toolchains/"))
                    .collect();
                match std::env::join_paths(kept) {
                    Ok(v) if !v.is_empty() => cmd.env(&key, v),
                    _ => cmd.env_remove(&key),
                };
            }
        }
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().map_err(|e| format!("cargo build: {e}"))?;
        if !status.success() {
            return Err("cargo build --bin chartgate failed".into());
        }
    }
    let bin = dir.join("chartgate");
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not found: build it with `cargo build --release` or pass --chartgate",
            bin.display()
        ))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cfg!(debug_assertions) {
        eprintln!(
            "chartgate-bench: built without optimisations; figures are meaningless (use --release)"
        );
    }
    let bin = match chartgate_binary(cli.chartgate.clone()) {
        Ok(bin) => bin,
        Err(e) => {
            eprintln!("chartgate-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let ctx = Ctx {
        bin,
        logs: cli.out.join("logs"),
        quick: cli.quick,
        client_threads: cli.clients.max(1),
        live: live::LiveSizes {
            followers: cli.followers,
            charts: cli.charts,
            ticks: cli.ticks.clone(),
            window_secs: cli.window,
            bars: cli.bars,
        },
    };
    if let Some(bad) = cli
        .ticks
        .iter()
        .flatten()
        .find(|t| **t == 0 || 1000 % **t != 0)
    {
        eprintln!("chartgate-bench: --ticks {bad}: each tick must divide 1000 ms");
        return ExitCode::from(2);
    }
    let order = [
        Scenario::FirstEvent,
        Scenario::ColdWarm,
        Scenario::Throughput,
        Scenario::Codec,
        Scenario::FanOut,
        Scenario::Idle,
        Scenario::LiveFanout,
        Scenario::LiveSlow,
        Scenario::LiveResume,
        Scenario::Cluster,
    ];
    let chosen: Vec<Scenario> = match cli.scenario {
        Scenario::All => order.to_vec(),
        one => vec![one],
    };
    let mut broken = Vec::new();
    let mut misses = Vec::new();
    actix_web::rt::System::new().block_on(async {
        for scenario in chosen {
            let started = std::time::Instant::now();
            let result = match scenario {
                Scenario::FirstEvent => scenarios::first_event(&ctx).await,
                Scenario::ColdWarm => scenarios::cold_warm(&ctx).await,
                Scenario::Throughput => scenarios::throughput(&ctx).await,
                Scenario::Codec => scenarios::codec(&ctx).await,
                Scenario::FanOut => scenarios::fan_out(&ctx).await,
                Scenario::Idle => scenarios::idle(&ctx).await,
                Scenario::LiveFanout => live::fanout(&ctx).await,
                Scenario::LiveSlow => live::slow(&ctx).await,
                Scenario::LiveResume => live::resume(&ctx).await,
                Scenario::Cluster => cluster::cluster(&ctx).await,
                Scenario::All => unreachable!("expanded above"),
            };
            match result {
                Ok(mut report) => {
                    report.detail("elapsed_ms", started.elapsed().as_millis() as u64);
                    report.print();
                    for row in report.rows.iter().filter(|r| r.pass == Some(false)) {
                        misses.push(format!("{}: {}", report.scenario, row.figure));
                    }
                    if let Err(e) = report.write_json(&cli.out) {
                        eprintln!("chartgate-bench: cannot write results: {e}");
                        broken.push(format!("{scenario:?}"));
                    }
                }
                Err(e) => {
                    eprintln!("chartgate-bench: {scenario:?} failed: {e}");
                    broken.push(format!("{scenario:?}"));
                }
            }
        }
    });
    println!();
    if misses.is_empty() {
        println!("targets: all met");
    } else {
        println!("targets missed ({}):", misses.len());
        for m in &misses {
            println!("  - {m}");
        }
    }
    println!("results: {}/<scenario>.json", cli.out.display());
    if broken.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "chartgate-bench: scenarios that could not run: {}",
            broken.join(", ")
        );
        ExitCode::FAILURE
    }
}
