//! What the person watching sees: progress on stderr (an indicatif bar on a terminal, plain lines
//! otherwise, so logs and CI output stay readable), the summary table on stdout and, with
//! `--live`, the live table after it (redrawn in place on a terminal, changed rows as lines
//! otherwise).

use std::io::{self, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::events::Tally;
use super::live::{LiveBoard, LiveRow};

/// How progress is shown on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// An indicatif bar drawn on the terminal behind stderr.
    Bar,
    /// One plain line per event, for pipes, files and tests.
    Lines,
}

impl ProgressMode {
    /// `Bar` when stderr is a terminal, `Lines` otherwise.
    pub fn detect() -> Self {
        use std::io::IsTerminal;
        if io::stderr().is_terminal() {
            ProgressMode::Bar
        } else {
            ProgressMode::Lines
        }
    }
}

/// How the live table (`--live` without `--json`) is shown on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableMode {
    /// Redrawn in place on the terminal behind stdout (indicatif), at most
    /// [`TableMode::interval`]'s rate.
    Redraw,
    /// The rows that changed, one line each, in groups at most once per
    /// [`TableMode::interval`] (a blank line before each group after the first, which is the
    /// whole table): for pipes, files and tests.
    Lines,
}

impl TableMode {
    /// `Redraw` when stdout is a terminal, `Lines` otherwise.
    pub fn detect() -> Self {
        use std::io::IsTerminal;
        if io::stdout().is_terminal() {
            TableMode::Redraw
        } else {
            TableMode::Lines
        }
    }

    /// The shortest time between two redraws or two groups of lines: a few per second on a
    /// terminal, one group a second in a log (a fast feed would otherwise print every tick).
    pub fn interval(self) -> Duration {
        match self {
            TableMode::Redraw => Duration::from_millis(250),
            TableMode::Lines => Duration::from_secs(1),
        }
    }
}

/// How `watch` shows what it sees: the progress on stderr and the live table on stdout, each
/// chosen by whether its stream is a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Display {
    pub progress: ProgressMode,
    pub table: TableMode,
}

impl Display {
    /// From the terminals behind stderr and stdout.
    pub fn detect() -> Self {
        Display {
            progress: ProgressMode::detect(),
            table: TableMode::detect(),
        }
    }

    /// Plain lines everywhere, whatever the terminals: what tests capture.
    pub fn lines() -> Self {
        Display {
            progress: ProgressMode::Lines,
            table: TableMode::Lines,
        }
    }
}

/// Progress reporting on stderr, and the live table when it is redrawn on the terminal.
pub(crate) struct Reporter<'a> {
    /// Where notices and (in `Lines` mode) progress lines go.
    err: &'a mut dyn Write,
    /// The bar, in `Bar` mode; it draws on the real stderr, since indicatif needs a terminal.
    bar: Option<ProgressBar>,
    /// The live table in `TableMode::Redraw`: one indicatif bar whose message is the whole
    /// table, drawn on the real stdout.
    table: Option<ProgressBar>,
}

impl<'a> Reporter<'a> {
    pub(crate) fn new(mode: ProgressMode, err: &'a mut dyn Write) -> Self {
        let bar = (mode == ProgressMode::Bar).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_message("connecting…");
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Reporter {
            err,
            bar,
            table: None,
        }
    }

    /// A line for the person watching, printed above the bar or the live table when there is
    /// one (they share the terminal, and indicatif must know to redraw below the line).
    pub(crate) fn notice(&mut self, message: &str) -> io::Result<()> {
        let err = &mut *self.err;
        match (&self.bar, &self.table) {
            (Some(bar), _) => bar.suspend(|| writeln!(err, "{message}")),
            (None, Some(table)) => table.suspend(|| writeln!(err, "{message}")),
            (None, None) => writeln!(err, "{message}"),
        }
    }

    /// Starts redrawing the live table on the terminal behind stdout. The steady tick redraws
    /// the latest message even when indicatif's rate limit skipped a draw.
    pub(crate) fn start_table(&mut self, board: &LiveBoard) {
        if self.table.is_some() {
            return;
        }
        let table = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout_with_hz(4));
        table.set_style(
            ProgressStyle::with_template("{msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        table.set_message(live_table(board));
        table.enable_steady_tick(TableMode::Redraw.interval());
        self.table = Some(table);
    }

    /// Redraws the live table with the board's current rows.
    pub(crate) fn update_table(&mut self, board: &LiveBoard) {
        if let Some(table) = &self.table {
            table.set_message(live_table(board));
        }
    }

    /// The symbol list is known: size the bar, or print what will be fetched.
    pub(crate) fn formula_results(&mut self, tally: &Tally) -> io::Result<()> {
        let name = formula_label(tally);
        let total = tally.total_charts.unwrap_or(0);
        match &self.bar {
            Some(bar) => {
                bar.set_style(
                    ProgressStyle::with_template(
                        "{msg} [{wide_bar}] {pos}/{len} charts ({percent}%) {elapsed_precise} ETA {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_length(total);
                bar.set_position(tally.loaded().min(total));
                bar.set_message(name);
                Ok(())
            }
            None => writeln!(
                self.err,
                "{name}: {} stocks, {total} charts",
                tally.stocks.unwrap_or(0)
            ),
        }
    }

    /// A batch arrived: move the bar, or print `batch 3/9: 54/162 charts (33%)`.
    pub(crate) fn batch(&mut self, tally: &Tally, batch_index: u64) -> io::Result<()> {
        let loaded = tally.loaded();
        match &self.bar {
            Some(bar) => {
                if let Some(total) = tally.total_charts {
                    bar.set_length(total);
                }
                bar.set_position(loaded);
                Ok(())
            }
            None => {
                let batch = match tally.total_batches {
                    Some(n) => format!("batch {batch_index}/{n}"),
                    None => format!("batch {batch_index}"),
                };
                match tally.total_charts {
                    Some(total) if total > 0 => writeln!(
                        self.err,
                        "{batch}: {loaded}/{total} charts ({}%)",
                        loaded * 100 / total
                    ),
                    _ => writeln!(self.err, "{batch}: {loaded} charts"),
                }
            }
        }
    }

    /// The stream ended (or reached its live phase): leave the bar showing its final state, or
    /// stop it where it failed.
    pub(crate) fn finish(&mut self, success: bool) {
        if let Some(bar) = self.bar.take() {
            if success {
                bar.finish();
            } else {
                bar.abandon();
            }
            // indicatif leaves the cursor at the end of the bar's line; what follows (the summary
            // on stdout, or the error) starts on a line of its own.
            let _ = writeln!(self.err);
        }
    }

    /// The live watch ended (Ctrl-C, or an error): the table stays on the terminal as last drawn,
    /// and what follows starts on a line of its own (on stdout, where the table is drawn).
    pub(crate) fn finish_table(&mut self) {
        if let Some(table) = self.table.take() {
            table.finish();
            let _ = writeln!(io::stdout());
        }
    }
}

impl Drop for Reporter<'_> {
    /// An early return (an error) must not leave a spinner ticking over the error message, nor
    /// the table redrawing under it.
    fn drop(&mut self) {
        self.finish(false);
        self.finish_table();
    }
}

/// `Breakouts (breakouts)`, or a plain description for a symbol list.
fn formula_label(tally: &Tally) -> String {
    match (&tally.formula_name, &tally.formula_id) {
        (Some(name), Some(id)) if name != id => format!("{name} ({id})"),
        (Some(name), _) => name.clone(),
        (None, Some(id)) => id.clone(),
        (None, None) => "symbol list".to_owned(),
    }
}

/// `2.41 s` or `830 ms`.
pub(crate) fn format_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

/// Writes the end-of-stream table: the server's `complete` figures when it sent them, the
/// client's own counts and clock otherwise (after a `204` resume, for instance).
pub(crate) fn write_summary(
    out: &mut dyn Write,
    tally: &Tally,
    elapsed: Duration,
) -> io::Result<()> {
    let figures = tally.complete_figures().unwrap_or_default();
    let failed = tally.failed();
    let ok = figures.successful_charts.unwrap_or_else(|| tally.ok());
    let failed_count = figures.failed_charts.unwrap_or(failed.len() as u64);
    let cached = figures
        .cached_charts
        .map_or_else(|| "-".to_owned(), |c| c.to_string());
    let total_ms = figures
        .total_time_ms
        .unwrap_or(elapsed.as_secs_f64() * 1000.0);
    let charts = ok + failed_count;
    let avg_ms = figures
        .avg_time_per_chart_ms
        .or_else(|| (charts > 0).then(|| total_ms / charts as f64));

    let rows = [
        ("formula", formula_label(tally)),
        (
            "stocks",
            tally
                .stocks
                .map_or_else(|| "-".to_owned(), |s| s.to_string()),
        ),
        ("charts ok", ok.to_string()),
        ("charts failed", failed_count.to_string()),
        ("charts cached", cached),
        ("total time", format_ms(total_ms)),
        (
            "avg per chart",
            avg_ms.map_or_else(|| "-".to_owned(), format_ms),
        ),
    ];
    for (label, value) in rows {
        writeln!(out, "{label:<14} {value}")?;
    }
    if !failed.is_empty() {
        writeln!(out)?;
        writeln!(out, "failed charts:")?;
        let w_symbol = failed.iter().map(|f| f.symbol.len()).max().unwrap_or(0);
        let w_res = failed.iter().map(|f| f.resolution.len()).max().unwrap_or(0);
        let w_code = failed.iter().map(|f| f.code.len()).max().unwrap_or(0);
        for f in &failed {
            writeln!(
                out,
                "{:<w_symbol$} {:<w_res$}  {:<w_code$}  {}",
                f.symbol, f.resolution, f.code, f.message
            )?;
        }
    }
    out.flush()
}

/// The widths of the live table's columns after the symbol's.
const PRICE_WIDTH: usize = 12;
const CHANGE_WIDTH: usize = 9;

/// The symbol column's width for `board`: its longest symbol, at least the header's.
pub(crate) fn symbol_width(board: &LiveBoard) -> usize {
    board
        .rows()
        .iter()
        .map(|r| r.symbol.len())
        .max()
        .unwrap_or(0)
        .max("symbol".len())
}

/// `symbol  last  chg %  time (UTC)`, aligned with [`live_row`].
pub(crate) fn live_header(symbol_width: usize) -> String {
    format!(
        "{:<symbol_width$} {:>PRICE_WIDTH$} {:>CHANGE_WIDTH$}  time (UTC)",
        "symbol", "last", "chg %"
    )
}

/// One row: `NSE:TCS   3521.50   +0.35%  2025-12-17 10:00`, `-` for what is not known yet.
pub(crate) fn live_row(row: &LiveRow, symbol_width: usize) -> String {
    let view = row.view();
    let price = view.price.map_or_else(|| "-".to_owned(), format_price);
    let change = view
        .change_percent
        .map_or_else(|| "-".to_owned(), |c| format!("{c:+.2}%"));
    let time = view.time.map_or_else(|| "-".to_owned(), format_utc);
    format!(
        "{:<symbol_width$} {price:>PRICE_WIDTH$} {change:>CHANGE_WIDTH$}  {time}",
        row.symbol
    )
}

/// The whole live table: the header, then every row in the screen's order.
pub(crate) fn live_table(board: &LiveBoard) -> String {
    let width = symbol_width(board);
    let mut table = live_header(width);
    for row in board.rows() {
        table.push('\n');
        table.push_str(&live_row(row, width));
    }
    table
}

/// A price with two decimals, four below 1 (where two would hide the moves).
fn format_price(price: f64) -> String {
    if price.abs() < 1.0 {
        format!("{price:.4}")
    } else {
        format!("{price:.2}")
    }
}

/// UNIX seconds as `2025-12-17 10:00` (UTC): bar times are UTC instants whatever the exchange.
pub(crate) fn format_utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        of_day / 3600,
        of_day % 3600 / 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm),
/// so that the client needs no date crate for one column.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times() {
        assert_eq!(format_utc(0), "1970-01-01 00:00");
        assert_eq!(format_utc(1_733_011_200), "2024-12-01 00:00");
        assert_eq!(format_utc(1_765_965_600), "2025-12-17 10:00");
        assert_eq!(format_utc(951_782_400 + 86_400 - 60), "2000-02-29 23:59");
        assert_eq!(format_utc(-60), "1969-12-31 23:59");
    }

    #[test]
    fn table_rows_align_and_show_dashes_for_what_is_unknown() {
        let mut board = LiveBoard::default();
        board.set_stocks(
            vec!["NSE:TCS".into(), "NSE:RELIANCE".into()],
            Some("1D".into()),
        );
        board.history(
            "NSE:TCS",
            "1D",
            &[
                super::super::live::BarPoint {
                    time: 1_765_879_200,
                    close: 3500.0,
                },
                super::super::live::BarPoint {
                    time: 1_765_965_600,
                    close: 3521.5,
                },
            ],
        );
        let table = live_table(&board);
        assert_eq!(
            table,
            "\
symbol               last     chg %  time (UTC)
NSE:TCS           3521.50    +0.61%  2025-12-17 10:00
NSE:RELIANCE            -         -  -"
        );
    }
}
