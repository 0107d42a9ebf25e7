//! `chartgate watch`: a terminal client for the chart stream (`GET
//! /api/formula-results-with-charts`, SPEC 1 and 3.1).
//!
//! It opens the stream, parses SSE ([`sse`]), shows progress on stderr ([`ProgressMode`]),
//! reconnects with `Last-Event-ID` when the connection drops before the end, and prints either
//! one JSON line per event (`--json`) or a summary table on stdout. Failures come back as a
//! [`WatchError`] whose [`exit_code`](WatchError::exit_code) the binary uses.
//!
//! With `--live` (`live=true`) the stream does not end at `complete`: `bar` (and, with
//! `--quotes`, `quote`) events follow, which fold into a [`LiveBoard`] shown as a table on stdout
//! ([`TableMode`]). A drop is resumed with the last live event id, so the server sends only what
//! changed meanwhile; the watch runs until Ctrl-C (a success) or a fatal error.
//!
//! - [`sse`]: the pure SSE parser (bytes in, events out).
//! - `events`: the payloads as far as the client reads them, and the [`Tally`] they fold into.
//! - `live`: the live table's rows and the bar and quote rules that update them.
//! - `render`: the progress bar or lines, the summary table and the live table.

mod events;
mod live;
mod render;
pub mod sse;

use std::future::Future;
use std::io::{self, Write};
use std::time::Duration;

use actix_web::rt::time::{Instant, sleep, timeout};
use awc::error::SendRequestError;
use awc::http::{StatusCode, Uri, header};
use clap::ArgGroup;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::time::timeout_at;

use crate::domain::{BarCount, Resolution, Symbol};

pub use events::{CompleteFigures, FailedChart, Tally};
pub use live::{BarPoint, LiveBoard, LiveRow, QuotePoint, RowView};
use render::Reporter;
pub use render::{Display, ProgressMode, TableMode};
use sse::{SseEvent, SseParser};

/// Where `--server` points when not given: `chartgate serve`'s default bind.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// How many times in a row a dropped stream is reopened before giving up.
pub const MAX_RECONNECTS: u32 = 3;

/// The wait before reconnecting when the server never sent `retry:` (its documented default).
pub const DEFAULT_RETRY: Duration = Duration::from_millis(2000);

/// How long the server may take to answer with the response head. It resolves the formula
/// (a call to MarketInOut) before answering, so awc's default of 5 s is too short; the body
/// itself has no overall deadline, only the `--idle-timeout`.
const HEAD_TIMEOUT: Duration = Duration::from_secs(60);

/// The largest error body read from a non-200 answer.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// The stream's path on the server.
const STREAM_PATH: &str = "/api/formula-results-with-charts";

/// The `watch` command's flags.
#[derive(Debug, Clone, clap::Args)]
#[command(group(ArgGroup::new("target").required(true).args(["formula", "symbols"])))]
pub struct WatchArgs {
    /// Stream the stocks of this formula (screen); `GET /api/formulas` lists the ids.
    #[arg(long, value_name = "ID", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub formula: Option<String>,

    /// Stream these symbols instead of a formula: EXCHANGE:TICKER or TCS.NS, comma-separated.
    #[arg(long, value_name = "A,B,...", value_delimiter = ',')]
    pub symbols: Vec<Symbol>,

    /// The chartgate server.
    #[arg(long, value_name = "URL", default_value = DEFAULT_SERVER, value_parser = parse_server)]
    pub server: String,

    /// Chart resolutions, comma-separated (1,3,5,15,30,45,60,120,180,240,1D,1W,1M) [server default: 1W,1D].
    #[arg(long, value_name = "1D,1W", value_delimiter = ',')]
    pub resolutions: Vec<Resolution>,

    /// Bars per chart, 1 to 5000 [server default: 300].
    #[arg(long, value_name = "N")]
    pub bars: Option<BarCount>,

    /// Print each event as one JSON line {"event","id","data"} on stdout, and nothing else there.
    #[arg(long)]
    pub json: bool,

    /// API token, sent as `Authorization: Bearer` (needed when the server sets server.api_token).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "CHARTGATE_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// Treat the connection as lost after this many seconds without a byte (the server sends a
    /// keep-alive every stream.keep_alive_secs, 15 by default).
    #[arg(long, value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout: u64,

    /// After the history, follow the charts live (live=true) until Ctrl-C: a table of each
    /// stock's last price, change and bar time (of the first resolution), redrawn in place on a
    /// terminal, or the changed rows as lines otherwise; with --json, the bar events as lines.
    #[arg(long)]
    pub live: bool,

    /// With --live, also follow each stock's quote (quotes=true): the table shows the quote's
    /// price, change and trade time; with --json, the quote events as lines.
    #[arg(long, requires = "live")]
    pub quotes: bool,
}

impl WatchArgs {
    /// Arguments for streaming a formula from `server`, with every other flag at its default.
    pub fn formula(server: impl Into<String>, id: impl Into<String>) -> Self {
        WatchArgs {
            formula: Some(id.into()),
            symbols: Vec::new(),
            server: server.into(),
            resolutions: Vec::new(),
            bars: None,
            json: false,
            token: None,
            idle_timeout: 60,
            live: false,
            quotes: false,
        }
    }

    /// Arguments for streaming a symbol list from `server`, with every other flag at its default.
    pub fn symbols(server: impl Into<String>, symbols: Vec<Symbol>) -> Self {
        WatchArgs {
            formula: None,
            symbols,
            ..Self::formula(server, "")
        }
    }

    /// The query string of the stream request; checks what clap's group checks, for callers that
    /// build `WatchArgs` by hand.
    fn query(&self) -> Result<Vec<(&'static str, String)>, WatchError> {
        let mut query = Vec::new();
        match (&self.formula, self.symbols.is_empty()) {
            (Some(id), true) if !id.is_empty() => query.push(("formula", id.clone())),
            (None, false) => {
                let list: Vec<&str> = self.symbols.iter().map(Symbol::as_str).collect();
                query.push(("symbols", list.join(",")));
            }
            _ => {
                return Err(WatchError::Usage(
                    "give exactly one of --formula ID or --symbols A,B,...".to_owned(),
                ));
            }
        }
        // Checked here rather than by clap, whose message would echo the secret.
        if let Some(token) = &self.token
            && (token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(WatchError::Usage(
                "--token (or CHARTGATE_TOKEN) must be non-empty printable ASCII without spaces"
                    .to_owned(),
            ));
        }
        if !self.resolutions.is_empty() {
            let list: Vec<&str> = self.resolutions.iter().map(|r| r.as_str()).collect();
            query.push(("resolutions", list.join(",")));
        }
        if let Some(bars) = self.bars {
            query.push(("bars", bars.get().to_string()));
        }
        match (self.live, self.quotes) {
            (true, quotes) => {
                query.push(("live", "true".to_owned()));
                if quotes {
                    query.push(("quotes", "true".to_owned()));
                }
            }
            (false, true) => {
                return Err(WatchError::Usage(
                    "--quotes needs --live (quotes are only sent on a live stream)".to_owned(),
                ));
            }
            (false, false) => {}
        }
        // Columns are about half the bytes of objects for long histories.
        query.push(("barsFormat", "columns".to_owned()));
        Ok(query)
    }
}

/// `--server`: an `http://` or `https://` URL with a host; a trailing `/` is dropped.
fn parse_server(raw: &str) -> Result<String, String> {
    let trimmed = raw.trim().trim_end_matches('/');
    let uri: Uri = trimmed
        .parse()
        .map_err(|e| format!("{e}; expected a URL such as {DEFAULT_SERVER}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) if uri.query().is_none() => Ok(trimmed.to_owned()),
        _ => Err(format!(
            "expected an http:// or https:// URL with a host and no query, such as {DEFAULT_SERVER}"
        )),
    }
}

/// Why `watch` failed. The binary prints `chartgate: <this>` and exits with
/// [`WatchError::exit_code`].
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The arguments do not make a request (only reachable when `WatchArgs` is built by hand;
    /// clap catches these first on the command line).
    #[error("{0}")]
    Usage(String),
    /// The server answered the request with an error status and its JSON error body.
    #[error("{message} ({code})")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    /// The server ended the stream with `stream-error`.
    #[error("stream failed: {message} ({code})")]
    StreamFailed { code: String, message: String },
    /// The first request got no answer at all.
    #[error(
        "no answer from the chartgate server at {server}: {reason} (is it running? see --server)"
    )]
    Unreachable { server: String, reason: String },
    /// The stream dropped and could not be resumed.
    #[error(
        "lost the connection to {server} and {attempts} reconnect attempts in a row failed: {reason}"
    )]
    ConnectionLost {
        server: String,
        attempts: u32,
        reason: String,
    },
    /// The server answered with something that is not the stream SPEC 3.1 describes.
    #[error("unexpected answer from {server}: {reason}")]
    Protocol { server: String, reason: String },
    /// stdout or stderr could not be written (a closed pipe, a full disk).
    #[error("cannot write output: {0}")]
    Output(#[from] io::Error),
}

impl WatchError {
    /// 2 when the user's input was wrong (bad arguments, or the server's 400/422), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            WatchError::Usage(_) => 2,
            WatchError::Rejected {
                status: 400 | 422, ..
            } => 2,
            _ => 1,
        }
    }
}

/// How a stream ended well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The `complete` event arrived.
    Complete,
    /// A resume got `204 No Content`: the stream had completed while we were away.
    AlreadyComplete,
    /// The caller stopped the watch (Ctrl-C for the binary): how a live watch ends well.
    Stopped,
}

/// What a successful watch saw.
#[derive(Debug, Clone)]
pub struct Report {
    pub ending: Ending,
    /// Counts, failures and the server's final figures.
    pub tally: Tally,
    /// How many times the stream was reopened after a drop.
    pub reconnects: u32,
    /// With `--live`, the live table as last updated.
    pub live: Option<LiveBoard>,
}

/// Runs `chartgate watch` on its own actix system, writing to the process's stdout and stderr,
/// with a progress bar when stderr is a terminal and a redrawn live table when stdout is one.
/// Blocks until the stream ends or, with `--live`, until Ctrl-C.
pub fn run(args: WatchArgs) -> Result<Report, WatchError> {
    actix_web::rt::System::new().block_on(async move {
        // Unlocked handles: indicatif's ticker thread writes to stderr too, and holding the lock
        // here would block it forever.
        let mut out = io::stdout();
        let mut err = io::stderr();
        let display = Display::detect();
        if args.live {
            // A live stream never ends by itself, so Ctrl-C is its normal end (exit 0). If the
            // handler cannot be installed, SIGINT keeps its default and ends the process.
            let stop = async {
                if tokio::signal::ctrl_c().await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            watch(&args, &mut out, &mut err, display, stop).await
        } else {
            watch(&args, &mut out, &mut err, display, std::future::pending()).await
        }
    })
}

/// Watches one stream to its end, or until `stop` completes. Must run on an actix system (awc
/// needs it). `out` gets the JSON lines, or the summary and the live table; `err` the progress
/// lines and notices.
pub async fn watch(
    args: &WatchArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
    display: Display,
    stop: impl Future<Output = ()>,
) -> Result<Report, WatchError> {
    let query = args.query()?;
    // The head may take a while (the server resolves the formula first) and is bounded by
    // HEAD_TIMEOUT below; the body has no deadline at all, idleness is checked per read instead.
    let client = crate::client::streaming_client(HEAD_TIMEOUT);
    let started = Instant::now();
    let mut session = Session {
        args,
        query,
        out,
        reporter: Reporter::new(display.progress, err),
        table_mode: display.table,
        tally: Tally::default(),
        parser: SseParser::new(),
        delivered: false,
        started,
        summary_written: false,
        board: LiveBoard::default(),
        live: false,
        shown_at: None,
        symbol_width: 0,
    };

    let mut stop = std::pin::pin!(stop);
    let mut reconnects = 0;
    let mut failures_in_a_row = 0;
    let mut first = true;
    let ending = loop {
        session.delivered = false;
        // Dropping the attempt on stop closes its connection.
        let attempt = tokio::select! {
            biased;
            () = &mut stop => break Ending::Stopped,
            attempt = session.stream_once(&client, first) => attempt,
        };
        match attempt {
            Ok(ending) => break ending,
            Err(Interrupted::Fatal(e)) => return Err(e),
            Err(Interrupted::Lost(reason)) => {
                // An attempt that delivered events was a success: the count is per episode.
                if session.delivered {
                    failures_in_a_row = 0;
                }
                if failures_in_a_row >= MAX_RECONNECTS {
                    return Err(WatchError::ConnectionLost {
                        server: args.server.clone(),
                        attempts: failures_in_a_row,
                        reason,
                    });
                }
                failures_in_a_row += 1;
                reconnects += 1;
                session.show()?;
                let wait = session.parser.retry().unwrap_or(DEFAULT_RETRY);
                session.reporter.notice(&format!(
                    "connection lost ({reason}); reconnecting in {} (attempt {failures_in_a_row}/{MAX_RECONNECTS})",
                    render::format_ms(wait.as_secs_f64() * 1000.0)
                ))?;
                tokio::select! {
                    biased;
                    () = &mut stop => break Ending::Stopped,
                    () = sleep(wait) => {}
                }
            }
        }
        first = false;
    };

    // What changed since the last redraw or lines is shown before the table is left as it is.
    session.show()?;
    session.reporter.finish_table();
    // A watch stopped during the history leaves its bar where it was, not at 100%.
    session.reporter.finish(ending != Ending::Stopped);
    if ending == Ending::AlreadyComplete {
        session
            .reporter
            .notice("the stream had already completed on the server")?;
    }
    if !args.json && !session.summary_written {
        render::write_summary(session.out, &session.tally, started.elapsed())?;
    }
    Ok(Report {
        ending,
        tally: session.tally,
        reconnects,
        live: args.live.then_some(session.board),
    })
}

/// Why one connection ended without the stream ending.
enum Interrupted {
    /// Worth a reconnect: the connection dropped, stalled, or could not be reopened.
    Lost(String),
    /// Not worth one: the server said no, or said something we cannot follow.
    Fatal(WatchError),
}

impl From<WatchError> for Interrupted {
    fn from(e: WatchError) -> Self {
        Interrupted::Fatal(e)
    }
}

impl From<io::Error> for Interrupted {
    fn from(e: io::Error) -> Self {
        Interrupted::Fatal(WatchError::Output(e))
    }
}

/// The `{"error","code"}` body of a non-200 answer.
#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    #[serde(default)]
    code: Option<String>,
}

/// One `--json` output line.
#[derive(Serialize)]
struct JsonLine<'a> {
    event: &'a str,
    id: Option<&'a str>,
    data: &'a RawValue,
}

/// The state of one watch across its connections.
struct Session<'a> {
    args: &'a WatchArgs,
    query: Vec<(&'static str, String)>,
    out: &'a mut dyn Write,
    reporter: Reporter<'a>,
    tally: Tally,
    /// Kept across connections: it holds the last event id and the `retry:` delay.
    parser: SseParser,
    /// The current connection has delivered at least one event.
    delivered: bool,
    /// How the live table is shown (unless `--json`).
    table_mode: TableMode,
    /// When the watch began: the summary's clock when the server sent no figures.
    started: Instant,
    /// The summary is on stdout already (a live watch writes it at `complete`).
    summary_written: bool,
    /// With `--live`, the live table's rows.
    board: LiveBoard,
    /// A live stream's `complete` came: `bar` and `quote` events follow, and the end of a response
    /// is a drop to resume from, never the end of the watch.
    live: bool,
    /// When the live table was last shown (redrawn, or its changed rows printed).
    shown_at: Option<Instant>,
    /// The symbol column's width in `TableMode::Lines`, fixed when the live phase starts so the
    /// lines stay aligned.
    symbol_width: usize,
}

impl Session<'_> {
    fn protocol_error(&self, reason: impl Into<String>) -> WatchError {
        WatchError::Protocol {
            server: self.args.server.clone(),
            reason: reason.into(),
        }
    }

    /// Opens the stream once (resuming after the last event id, if any) and reads it until it
    /// ends or breaks.
    async fn stream_once(
        &mut self,
        client: &awc::Client,
        first: bool,
    ) -> Result<Ending, Interrupted> {
        let url = format!("{}{STREAM_PATH}", self.args.server);
        let mut request = client
            .get(&url)
            .insert_header((header::ACCEPT, "text/event-stream"))
            .insert_header((header::CACHE_CONTROL, "no-cache"));
        if let Some(token) = &self.args.token {
            request = request.bearer_auth(token);
        }
        let resuming = self.parser.last_event_id().map(str::to_owned);
        if let Some(id) = &resuming {
            request = request.insert_header(("Last-Event-ID", id.as_str()));
        }
        let request = request
            .query(&self.query)
            .map_err(|e| WatchError::Usage(format!("cannot encode the request: {e}")))?;

        let sent = tokio::time::timeout(HEAD_TIMEOUT, request.send())
            .await
            .unwrap_or(Err(SendRequestError::Timeout));
        let mut response = match sent {
            Ok(response) => response,
            Err(e) if first => {
                return Err(WatchError::Unreachable {
                    server: self.args.server.clone(),
                    reason: describe_send_error(&e),
                }
                .into());
            }
            Err(e) => return Err(Interrupted::Lost(describe_send_error(&e))),
        };

        let status = response.status();
        if status == StatusCode::NO_CONTENT {
            return match resuming {
                // A live stream's ids all resume live; a 204 means the server no longer follows it.
                Some(id) if self.args.live => Err(self
                    .protocol_error(format!(
                        "204 No Content to a live resume after event {id}: the server ended the live stream"
                    ))
                    .into()),
                Some(_) => Ok(Ending::AlreadyComplete),
                None => Err(self
                    .protocol_error("204 No Content to a new stream request")
                    .into()),
            };
        }
        if status != StatusCode::OK {
            let body = timeout(
                Duration::from_secs(10),
                response.body().limit(ERROR_BODY_LIMIT),
            )
            .await;
            let body = match body {
                Ok(Ok(bytes)) => bytes,
                _ => Default::default(),
            };
            return Err(rejection(status, &body).into());
        }
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !content_type.starts_with("text/event-stream") {
            return Err(self
                .protocol_error(format!(
                    "expected Content-Type text/event-stream, got {content_type:?}"
                ))
                .into());
        }
        if let Some(id) = &resuming {
            log::debug!("watch: resumed the stream after event {id:?}");
            if self.live {
                self.reporter
                    .notice(&format!("reconnected; resuming the live stream after {id}"))?;
            }
        }

        self.parser.reconnected();
        let idle = Duration::from_secs(self.args.idle_timeout);
        let mut idle_deadline = Instant::now() + idle;
        loop {
            // Wake for the live table too: changes that arrived within the last interval are
            // shown when it ends, even if nothing else comes.
            let wake = self
                .show_due()
                .map_or(idle_deadline, |due| due.min(idle_deadline));
            let next = match timeout_at(wake, response.next()).await {
                Err(_) if Instant::now() < idle_deadline => {
                    self.show()?;
                    continue;
                }
                Err(_) => {
                    return Err(Interrupted::Lost(format!(
                        "nothing received for {} s",
                        idle.as_secs()
                    )));
                }
                Ok(next) => next,
            };
            let chunk = match next {
                None if self.live => {
                    return Err(Interrupted::Lost(
                        "the server ended the live stream".to_owned(),
                    ));
                }
                None => {
                    return Err(Interrupted::Lost(
                        "the server ended the response before `complete`".to_owned(),
                    ));
                }
                Some(Err(e)) => return Err(Interrupted::Lost(e.to_string())),
                Some(Ok(chunk)) => chunk,
            };
            idle_deadline = Instant::now() + idle;
            let events = self
                .parser
                .feed(&chunk)
                .map_err(|e| self.protocol_error(e.to_string()))?;
            for event in events {
                self.delivered = true;
                if let Some(ending) = self.handle(&event)? {
                    return Ok(ending);
                }
            }
            if self.show_due().is_some_and(|due| due <= Instant::now()) {
                self.show()?;
            }
        }
    }

    /// When the live table should next be shown: `None` when nothing changed since it last was
    /// (or there is no table: before the live phase, or with `--json`), else one
    /// [`TableMode::interval`] after the last time, so a fast feed is shown a few times a
    /// second, not at every event.
    fn show_due(&self) -> Option<Instant> {
        if !self.live || self.args.json || !self.board.has_changes() {
            return None;
        }
        Some(
            self.shown_at
                .map_or_else(Instant::now, |at| at + self.table_mode.interval()),
        )
    }

    /// Shows the live rows that changed: redraws the table, or prints one line per changed row.
    fn show(&mut self) -> io::Result<()> {
        if !self.live || self.args.json || !self.board.has_changes() {
            return Ok(());
        }
        let first = self.shown_at.is_none();
        self.shown_at = Some(Instant::now());
        match self.table_mode {
            TableMode::Redraw => {
                self.board.take_changed();
                self.reporter.update_table(&self.board);
                Ok(())
            }
            TableMode::Lines => {
                // The first group (every row) follows the header; a blank line starts each later
                // one, so a log shows which rows moved together.
                if !first {
                    writeln!(self.out)?;
                }
                for row in self.board.take_changed() {
                    writeln!(self.out, "{}", render::live_row(row, self.symbol_width))?;
                }
                self.out.flush()
            }
        }
    }

    /// The live stream's `complete` came: the history's progress and summary are done, and the
    /// live table starts (the header line, or the redrawn table). A stream that started over
    /// comes here again, and then changes nothing: the table goes on.
    fn start_live(&mut self) -> Result<(), WatchError> {
        if self.live {
            return Ok(());
        }
        self.live = true;
        self.reporter.finish(true);
        if !self.args.json {
            render::write_summary(self.out, &self.tally, self.started.elapsed())?;
            self.summary_written = true;
            writeln!(self.out)?;
            self.out.flush()?;
        }
        let following = match self.board.resolution() {
            Some(resolution) => format!("; the table shows {resolution} bars"),
            None => String::new(),
        };
        let quotes = if self.args.quotes { " and quotes" } else { "" };
        self.reporter.notice(&format!(
            "live: following {} charts{quotes}{following} (Ctrl-C to stop)",
            self.tally.ok()
        ))?;
        if !self.args.json {
            match self.table_mode {
                TableMode::Redraw => self.reporter.start_table(&self.board),
                TableMode::Lines => {
                    self.symbol_width = render::symbol_width(&self.board);
                    writeln!(self.out, "{}", render::live_header(self.symbol_width))?;
                    self.out.flush()?;
                }
            }
        }
        Ok(())
    }

    /// Acts on one event: prints it with `--json`, updates the tally and the progress display.
    /// Returns `Some` when the event ends the stream well, `Interrupted::Lost` when the server
    /// asks to be reconnected to (it is shutting down).
    fn handle(&mut self, event: &SseEvent) -> Result<Option<Ending>, Interrupted> {
        log::debug!(
            "watch: event {} id {:?} ({} bytes)",
            event.event,
            event.id,
            event.data.len()
        );
        // The payload is `{"type","data":{...}}`; anything else is passed on whole with --json.
        let whole: Option<&RawValue> = serde_json::from_str(&event.data).ok();
        let data: Option<&RawValue> = whole.and_then(|raw| {
            serde_json::from_str::<events::Envelope>(raw.get())
                .ok()
                .and_then(|e| e.data)
        });

        if self.args.json {
            let owned;
            let printed = match data.or(whole) {
                // Multi-line `data:` leaves newlines in the JSON; in valid JSON they can only be
                // whitespace between tokens, so spaces keep the output one line per event.
                Some(raw) if raw.get().contains(['\n', '\r']) => {
                    owned = RawValue::from_string(raw.get().replace(['\n', '\r'], " "))
                        .map_err(|e| self.protocol_error(e.to_string()))?;
                    &*owned
                }
                Some(raw) => raw,
                None => {
                    owned = serde_json::value::to_raw_value(&event.data)
                        .map_err(|e| self.protocol_error(e.to_string()))?;
                    &*owned
                }
            };
            let line = JsonLine {
                event: &event.event,
                id: event.id.as_deref(),
                data: printed,
            };
            serde_json::to_writer(&mut *self.out, &line).map_err(io::Error::from)?;
            self.out.write_all(b"\n")?;
            self.out.flush()?;
        }

        let known = matches!(
            event.event.as_str(),
            "formula-results" | "chart-batch" | "complete" | "stream-error" | "bar" | "quote"
        );
        if !known {
            return Ok(None);
        }
        let Some(data) = data else {
            return Err(self
                .protocol_error(format!(
                    "event {} (id {:?}) has no {{\"type\",\"data\"}} JSON payload",
                    event.event, event.id
                ))
                .into());
        };
        let bad = |e: serde_json::Error| {
            self.protocol_error(format!("event {} (id {:?}): {e}", event.event, event.id))
        };
        match event.event.as_str() {
            "formula-results" => {
                let fr: events::FormulaResults = serde_json::from_str(data.get()).map_err(bad)?;
                if !fr.resumed && self.tally.batches_received() > 0 {
                    self.reporter
                        .notice("the server could not resume the stream; it started over")?;
                }
                if self.args.live {
                    let symbols = fr.stocks.iter().filter_map(|s| s.symbol.clone()).collect();
                    let first =
                        fr.resolutions.first().cloned().or_else(|| {
                            self.args.resolutions.first().map(|r| r.as_str().to_owned())
                        });
                    self.board.set_stocks(symbols, first);
                }
                self.tally.formula_results(fr);
                self.reporter.formula_results(&self.tally)?;
            }
            "chart-batch" => {
                let batch: events::ChartBatch = serde_json::from_str(data.get()).map_err(bad)?;
                if self.args.live {
                    self.seed_board(&batch);
                }
                let index = batch.batch_index;
                self.tally.chart_batch(batch);
                self.reporter.batch(&self.tally, index)?;
            }
            "complete" => {
                let complete: events::Complete = serde_json::from_str(data.get()).map_err(bad)?;
                self.tally.complete(complete);
                if !self.args.live {
                    return Ok(Some(Ending::Complete));
                }
                self.start_live()?;
            }
            "bar" => {
                let bar: events::BarEvent = serde_json::from_str(data.get()).map_err(bad)?;
                self.board.apply_bar(&bar);
            }
            "quote" => {
                let quote: events::QuoteEvent = serde_json::from_str(data.get()).map_err(bad)?;
                self.board.apply_quote(&quote);
            }
            _ => {
                let failure: events::StreamError = serde_json::from_str(data.get()).map_err(bad)?;
                // A server going away ends its streams so, with an id to resume from (README,
                // the stream's events): a drop like any other. It matters most to a live watch,
                // which may run for hours across restarts.
                if failure.code == "shutting_down" {
                    return Err(Interrupted::Lost(format!(
                        "the server is shutting down: {}",
                        failure.message
                    )));
                }
                return Err(WatchError::StreamFailed {
                    code: failure.code,
                    message: failure.message,
                }
                .into());
            }
        }
        Ok(None)
    }

    /// Seeds the live table from a batch's charts of the followed resolution. A chart whose bars
    /// cannot be read is only left out of the table: the `--json` lines and the summary do not
    /// depend on it.
    fn seed_board(&mut self, batch: &events::ChartBatch<'_>) {
        let Some(resolution) = self.board.resolution().map(str::to_owned) else {
            return;
        };
        for (symbol, charts) in &batch.chart_data {
            let Some(chart) = charts.get(&resolution) else {
                continue;
            };
            match events::last_bars(chart) {
                Ok(bars) => self.board.history(symbol, &resolution, &bars),
                Err(e) => log::debug!("watch: the bars of {symbol} {resolution}: {e}"),
            }
        }
    }
}

/// The error of a non-200 answer: its JSON `{"error","code"}`, or the status when the body is
/// something else (a proxy's HTML page, say).
fn rejection(status: StatusCode, body: &[u8]) -> WatchError {
    let reason = status.canonical_reason().unwrap_or("error");
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(parsed) => WatchError::Rejected {
            status: status.as_u16(),
            code: parsed
                .code
                .unwrap_or_else(|| format!("http_{}", status.as_u16())),
            message: parsed.error,
        },
        Err(_) => WatchError::Rejected {
            status: status.as_u16(),
            code: format!("http_{}", status.as_u16()),
            message: format!("the server answered {} {reason}", status.as_u16()),
        },
    }
}

/// awc's error, in words for the person watching.
fn describe_send_error(e: &SendRequestError) -> String {
    match e {
        SendRequestError::Timeout => {
            format!("no response within {} s", HEAD_TIMEOUT.as_secs())
        }
        other => other.to_string(),
    }
}
