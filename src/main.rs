//! The `chartgate` binary: parses the command line, loads the layered configuration, sets up
//! logging, and hands over to the library. Exit codes: 0 success, 2 usage or configuration error,
//! 1 anything else.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use chartgate::config::Settings;

#[derive(Debug, Parser)]
#[command(
    name = "chartgate",
    version,
    about = "Chart feed connection pool with an SSE API"
)]
struct Cli {
    /// With no command, `serve` runs with its defaults.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service (the default): the HTTP API and demo page, on the embedded simulator unless
    /// configured otherwise.
    Serve(ServeArgs),
    /// Run the upstream simulator alone: the chart feed WebSocket and MarketInOut's Web API.
    Simulate(SimulateArgs),
    /// Watch a formula's chart stream from a running chartgate: a progress bar and a summary,
    /// or one JSON line per event with --json; with --live, then the charts live until Ctrl-C.
    Watch(chartgate::watch::WatchArgs),
}

#[derive(Debug, Args, Default)]
struct ServeArgs {
    /// Configuration file (default: config/default.toml when present).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen address (default: server.bind, 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR")]
    bind: Option<String>,
}

#[derive(Debug, Args)]
struct SimulateArgs {
    /// Listen address (default: simulator.bind, 127.0.0.1:8090).
    #[arg(long, value_name = "ADDR")]
    bind: Option<String>,
    /// Configuration file (default: config/default.toml when present).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Loads settings, printing the error and giving exit code 2 when they are bad.
fn load_settings(
    file: Option<&PathBuf>,
    overrides: &[(&str, String)],
) -> Result<Settings, ExitCode> {
    Settings::load(file.map(PathBuf::as_path), overrides).map_err(|e| {
        eprintln!("chartgate: {e}");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let result = match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::Serve(args) => {
            let overrides: Vec<(&str, String)> =
                args.bind.into_iter().map(|b| ("server.bind", b)).collect();
            let settings = match load_settings(args.config.as_ref(), &overrides) {
                Ok(s) => s,
                Err(code) => return code,
            };
            chartgate::app::serve(settings)
        }
        Command::Watch(args) => {
            // Its own exit codes: 2 also when the server refused the input (400/422).
            return match chartgate::watch::run(args) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("chartgate: {e}");
                    ExitCode::from(e.exit_code())
                }
            };
        }
        Command::Simulate(args) => {
            let overrides: Vec<(&str, String)> = args
                .bind
                .into_iter()
                .map(|b| ("simulator.bind", b))
                .collect();
            let settings = match load_settings(args.config.as_ref(), &overrides) {
                Ok(s) => s,
                Err(code) => return code,
            };
            chartgate_simulator::run_standalone(settings.simulator)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chartgate: {e}");
            ExitCode::from(1)
        }
    }
}
