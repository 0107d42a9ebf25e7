//! What the person watching sees: progress on stderr (an indicatif bar on a terminal, plain lines
//! otherwise, so logs and CI output stay readable) and the summary table on stdout.

use std::io::{self, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::events::Tally;

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

/// Progress reporting on stderr.
pub(crate) struct Reporter<'a> {
    /// Where notices and (in `Lines` mode) progress lines go.
    err: &'a mut dyn Write,
    /// The bar, in `Bar` mode; it draws on the real stderr, since indicatif needs a terminal.
    bar: Option<ProgressBar>,
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
        Reporter { err, bar }
    }

    /// A line for the person watching, printed above the bar when there is one.
    pub(crate) fn notice(&mut self, message: &str) -> io::Result<()> {
        let err = &mut *self.err;
        match &self.bar {
            Some(bar) => bar.suspend(|| writeln!(err, "{message}")),
            None => writeln!(err, "{message}"),
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

    /// The stream ended: leave the bar showing its final state, or stop it where it failed.
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
}

impl Drop for Reporter<'_> {
    /// An early return (an error) must not leave a spinner ticking over the error message.
    fn drop(&mut self) {
        self.finish(false);
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
