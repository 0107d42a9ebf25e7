//! The live table's state (`watch --live`): one row per stock of the screen, filled from the
//! history's last bars, then kept current by the `bar` and `quote` events that follow `complete`.
//!
//! It is pure (events in, rows out) so the bar rules of the live contract — a bar with the time
//! of the last bar replaces it, a later one appends and makes the previous one final — are tested
//! without a server. It also records which rows changed since the display last looked
//! ([`LiveBoard::take_changed`]), so that a redraw or a printed line costs nothing when nothing
//! moved.

use std::collections::{BTreeSet, HashMap};

use super::events::{BarEvent, QuoteEvent};

/// A bar as the table uses it: its start (UNIX seconds) and its close.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BarPoint {
    pub time: i64,
    pub close: f64,
}

/// The latest quote of a stock, as sent (the server always sends the whole quote; fields the feed
/// has not given are `None`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QuotePoint {
    pub price: Option<f64>,
    pub change_percent: Option<f64>,
    /// UNIX seconds of the last trade.
    pub time: Option<i64>,
}

/// One stock's row.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveRow {
    pub symbol: String,
    /// The newest bar of the table's resolution.
    pub last: Option<BarPoint>,
    /// The bar before it (final), whose close the change is measured from.
    pub previous: Option<BarPoint>,
    /// With `--quotes`, the latest quote.
    pub quote: Option<QuotePoint>,
    /// `bar` and `quote` events applied to this row (those that changed nothing included).
    pub updates: u64,
}

/// What a row shows: from the quote when there is one (with `--quotes`), else from the bars.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RowView {
    pub price: Option<f64>,
    pub change_percent: Option<f64>,
    /// UNIX seconds: the quote's trade time, or the last bar's start.
    pub time: Option<i64>,
}

impl LiveRow {
    fn new(symbol: String) -> Self {
        LiveRow {
            symbol,
            last: None,
            previous: None,
            quote: None,
            updates: 0,
        }
    }

    /// The change of the last bar's close from the previous bar's, in percent.
    fn bar_change_percent(&self) -> Option<f64> {
        let (last, previous) = (self.last?, self.previous?);
        (previous.close != 0.0).then(|| (last.close - previous.close) / previous.close * 100.0)
    }

    /// The row's figures. A quote's field wins where the quote has it; the bars fill the others
    /// (before the first quote, or when the feed left a field out).
    pub fn view(&self) -> RowView {
        let quote = self.quote.unwrap_or_default();
        RowView {
            price: quote.price.or(self.last.map(|b| b.close)),
            change_percent: quote.change_percent.or_else(|| self.bar_change_percent()),
            time: quote.time.or(self.last.map(|b| b.time)),
        }
    }

    /// Applies one bar by the contract's rule; `true` when the row's bars changed.
    fn apply_bar(&mut self, bar: BarPoint) -> bool {
        match (self.last, self.previous) {
            (Some(last), _) if bar.time == last.time => {
                self.last = Some(bar);
                last != bar
            }
            (Some(last), _) if bar.time > last.time => {
                self.previous = Some(last);
                self.last = Some(bar);
                true
            }
            // The final state of the bar before the last (sent after `complete` when it changed
            // since the history was taken, or on a resume).
            (Some(_), Some(previous)) if bar.time == previous.time => {
                self.previous = Some(bar);
                previous != bar
            }
            // Older than anything the table shows: nothing to do.
            (Some(_), _) => false,
            (None, _) => {
                self.last = Some(bar);
                true
            }
        }
    }
}

/// The rows of the live table and which of them changed since they were last shown.
#[derive(Debug, Clone, Default)]
pub struct LiveBoard {
    /// The resolution whose bars fill the rows: the stream's first (`None` until known, then the
    /// first one a bar arrives for).
    resolution: Option<String>,
    rows: Vec<LiveRow>,
    by_symbol: HashMap<String, usize>,
    /// Row indices changed since the last [`LiveBoard::take_changed`].
    changed: BTreeSet<usize>,
    /// `bar` events applied, whatever their resolution.
    bars: u64,
    /// `quote` events applied.
    quotes: u64,
}

impl LiveBoard {
    /// The screen's stocks, in the stream's order, and the resolution the table follows. Rows of
    /// symbols still listed keep what they had (a resumed history stream repeats the list); the
    /// others go.
    pub fn set_stocks(&mut self, symbols: Vec<String>, resolution: Option<String>) {
        let mut old = std::mem::take(&mut self.by_symbol);
        let mut old_rows: Vec<Option<LiveRow>> = std::mem::take(&mut self.rows)
            .into_iter()
            .map(Some)
            .collect();
        if resolution.is_some() && resolution != self.resolution {
            // Bars of another resolution are not comparable with the new one.
            old.clear();
        }
        for symbol in symbols {
            if self.by_symbol.contains_key(&symbol) {
                continue;
            }
            let row = old
                .remove(&symbol)
                .and_then(|i| old_rows[i].take())
                .unwrap_or_else(|| LiveRow::new(symbol.clone()));
            self.by_symbol.insert(symbol, self.rows.len());
            self.rows.push(row);
        }
        if resolution.is_some() {
            self.resolution = resolution;
        }
        self.changed = (0..self.rows.len()).collect();
    }

    /// The resolution the rows follow.
    pub fn resolution(&self) -> Option<&str> {
        self.resolution.as_deref()
    }

    /// The rows, in the screen's order.
    pub fn rows(&self) -> &[LiveRow] {
        &self.rows
    }

    /// The row of `symbol`.
    pub fn row(&self, symbol: &str) -> Option<&LiveRow> {
        self.by_symbol.get(symbol).map(|&i| &self.rows[i])
    }

    /// `bar` events applied so far, of any resolution.
    pub fn bars_applied(&self) -> u64 {
        self.bars
    }

    /// `quote` events applied so far.
    pub fn quotes_applied(&self) -> u64 {
        self.quotes
    }

    /// Whether `resolution` is the one the table follows (adopting it if none is known yet).
    fn follows(&mut self, resolution: &str) -> bool {
        match &self.resolution {
            Some(r) => r == resolution,
            None => {
                self.resolution = Some(resolution.to_owned());
                true
            }
        }
    }

    /// The row of `symbol`, added at the end if the list did not have it (a server may follow a
    /// stock this client never saw listed, after a resume that started over elsewhere).
    fn row_mut(&mut self, symbol: &str) -> usize {
        if let Some(&i) = self.by_symbol.get(symbol) {
            return i;
        }
        let i = self.rows.len();
        self.rows.push(LiveRow::new(symbol.to_owned()));
        self.by_symbol.insert(symbol.to_owned(), i);
        i
    }

    /// The history of one chart (its bars, oldest first): its last two bars seed the row, if the
    /// chart is of the followed resolution.
    pub fn history(&mut self, symbol: &str, resolution: &str, bars: &[BarPoint]) {
        if bars.is_empty() || !self.follows(resolution) {
            return;
        }
        let i = self.row_mut(symbol);
        let row = &mut self.rows[i];
        row.last = bars.last().copied();
        row.previous = bars.len().checked_sub(2).map(|p| bars[p]);
        self.changed.insert(i);
    }

    /// Applies a `bar` event; `true` when a row changed.
    pub(crate) fn apply_bar(&mut self, event: &BarEvent) -> bool {
        self.bars += 1;
        if !self.follows(&event.resolution) {
            return false;
        }
        let i = self.row_mut(&event.symbol);
        let row = &mut self.rows[i];
        row.updates += 1;
        let bar = BarPoint {
            time: event.bar.time,
            close: event.bar.close,
        };
        let changed = row.apply_bar(bar);
        if changed {
            self.changed.insert(i);
        }
        changed
    }

    /// Applies a `quote` event (the whole latest quote); `true` when the row changed.
    pub(crate) fn apply_quote(&mut self, event: &QuoteEvent) -> bool {
        self.quotes += 1;
        let i = self.row_mut(&event.symbol);
        let row = &mut self.rows[i];
        row.updates += 1;
        let quote = QuotePoint {
            price: event.price,
            change_percent: event.change_percent,
            time: event.time,
        };
        let changed = row.quote != Some(quote);
        row.quote = Some(quote);
        if changed {
            self.changed.insert(i);
        }
        changed
    }

    /// Whether any row changed since the last [`LiveBoard::take_changed`].
    pub fn has_changes(&self) -> bool {
        !self.changed.is_empty()
    }

    /// The rows changed since the last call, in the screen's order, and forgets them.
    pub fn take_changed(&mut self) -> Vec<&LiveRow> {
        let changed = std::mem::take(&mut self.changed);
        changed.into_iter().map(|i| &self.rows[i]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board(symbols: &[&str]) -> LiveBoard {
        let mut board = LiveBoard::default();
        board.set_stocks(
            symbols.iter().map(|s| s.to_string()).collect(),
            Some("1D".into()),
        );
        board.take_changed();
        board
    }

    /// Parses and applies one `bar` event's `data` object, as the session does.
    fn bar(board: &mut LiveBoard, data: &str) -> bool {
        let event: BarEvent = serde_json::from_str(data).expect("a bar event");
        board.apply_bar(&event)
    }

    fn quote(board: &mut LiveBoard, data: &str) -> bool {
        let event: QuoteEvent = serde_json::from_str(data).expect("a quote event");
        board.apply_quote(&event)
    }

    fn point(time: i64, close: f64) -> BarPoint {
        BarPoint { time, close }
    }

    fn changed(board: &mut LiveBoard) -> Vec<String> {
        board
            .take_changed()
            .into_iter()
            .map(|r| r.symbol.clone())
            .collect()
    }

    #[test]
    fn history_seeds_the_row_with_its_last_two_bars() {
        let mut board = board(&["NSE:TCS", "NSE:INFY"]);
        board.history(
            "NSE:TCS",
            "1D",
            &[point(100, 1.0), point(200, 50.0), point(300, 55.0)],
        );
        // Another resolution's chart leaves the row alone.
        board.history("NSE:TCS", "1W", &[point(7, 9.0)]);
        let row = board.row("NSE:TCS").unwrap();
        assert_eq!(row.last, Some(point(300, 55.0)));
        assert_eq!(row.previous, Some(point(200, 50.0)));
        let view = row.view();
        assert_eq!(view.price, Some(55.0));
        assert_eq!(view.time, Some(300));
        assert!((view.change_percent.unwrap() - 10.0).abs() < 1e-9);
        assert_eq!(board.row("NSE:INFY").unwrap().view(), RowView::default());
        assert_eq!(changed(&mut board), ["NSE:TCS"]);
    }

    #[test]
    fn a_bar_with_the_last_time_replaces_it_and_a_later_one_appends() {
        let mut board = board(&["NSE:TCS"]);
        board.history("NSE:TCS", "1D", &[point(100, 40.0), point(200, 50.0)]);
        board.take_changed();

        let same = r#"{"symbol":"NSE:TCS","resolution":"1D","bar":{"time":200,"open":1,"high":60,"low":0.5,"close":60,"volume":5}}"#;
        assert!(bar(&mut board, same));
        let row = board.row("NSE:TCS").unwrap();
        assert_eq!(row.last, Some(point(200, 60.0)));
        assert_eq!(row.previous, Some(point(100, 40.0)), "not moved");
        assert!((row.view().change_percent.unwrap() - 50.0).abs() < 1e-9);
        // The same bar again changes nothing, and is not reported as a change.
        assert_eq!(changed(&mut board), ["NSE:TCS"]);
        assert!(!bar(&mut board, same));
        assert!(!board.has_changes());

        // A later bar: the previous one is final and the change is measured from it. No volume
        // (a volumeless symbol) is fine.
        assert!(bar(
            &mut board,
            r#"{"symbol":"NSE:TCS","resolution":"1D","bar":{"time":300,"open":60,"high":66,"low":60,"close":66}}"#
        ));
        let row = board.row("NSE:TCS").unwrap();
        assert_eq!(row.last, Some(point(300, 66.0)));
        assert_eq!(row.previous, Some(point(200, 60.0)));
        assert!((row.view().change_percent.unwrap() - 10.0).abs() < 1e-9);
        assert_eq!(row.updates, 3);
    }

    #[test]
    fn the_final_state_of_the_previous_bar_updates_the_base_and_older_bars_are_ignored() {
        let mut board = board(&["NSE:TCS"]);
        board.history("NSE:TCS", "1D", &[point(100, 40.0), point(200, 50.0)]);
        board.take_changed();
        // After `complete`, the bar that was last in the history, in its final state.
        assert!(bar(
            &mut board,
            r#"{"symbol":"NSE:TCS","resolution":"1D","bar":{"time":100,"open":1,"high":1,"low":1,"close":25}}"#
        ));
        let row = board.row("NSE:TCS").unwrap();
        assert_eq!(row.previous, Some(point(100, 25.0)));
        assert_eq!(row.last, Some(point(200, 50.0)));
        assert!((row.view().change_percent.unwrap() - 100.0).abs() < 1e-9);
        board.take_changed();
        assert!(!bar(
            &mut board,
            r#"{"symbol":"NSE:TCS","resolution":"1D","bar":{"time":50,"open":1,"high":1,"low":1,"close":1}}"#
        ));
        assert!(!board.has_changes());
        assert_eq!(board.row("NSE:TCS").unwrap().last, Some(point(200, 50.0)));
    }

    #[test]
    fn bars_of_other_resolutions_are_counted_but_not_shown() {
        let mut board = board(&["NSE:TCS"]);
        assert!(!bar(
            &mut board,
            r#"{"symbol":"NSE:TCS","resolution":"1W","bar":{"time":1,"open":1,"high":1,"low":1,"close":1}}"#
        ));
        assert_eq!(board.bars_applied(), 1);
        assert_eq!(board.row("NSE:TCS").unwrap().last, None);
        assert!(!board.has_changes());
    }

    #[test]
    fn a_quote_wins_over_the_bars_field_by_field() {
        let mut board = board(&["NSE:TCS"]);
        board.history("NSE:TCS", "1D", &[point(100, 40.0), point(200, 50.0)]);
        board.take_changed();
        assert!(quote(
            &mut board,
            r#"{"symbol":"NSE:TCS","price":3521.5,"change":12.3,"changePercent":0.35,"volume":123456,"bid":3521.4,"ask":3521.6,"time":1733011200}"#
        ));
        let view = board.row("NSE:TCS").unwrap().view();
        assert_eq!(
            view,
            RowView {
                price: Some(3521.5),
                change_percent: Some(0.35),
                time: Some(1733011200)
            }
        );
        assert_eq!(changed(&mut board), ["NSE:TCS"]);
        // The whole latest quote replaces the previous one: a field left out falls back to the
        // bars, it does not keep the old quote's value.
        assert!(quote(&mut board, r#"{"symbol":"NSE:TCS","price":3522}"#));
        let view = board.row("NSE:TCS").unwrap().view();
        assert_eq!(view.price, Some(3522.0));
        assert!((view.change_percent.unwrap() - 25.0).abs() < 1e-9);
        assert_eq!(view.time, Some(200));
        assert!(!quote(&mut board, r#"{"symbol":"NSE:TCS","price":3522}"#));
        assert_eq!(board.quotes_applied(), 3);
    }

    #[test]
    fn unlisted_symbols_get_a_row_and_a_new_list_keeps_known_rows() {
        let mut board = board(&["NSE:AAA", "NSE:BBB"]);
        board.history("NSE:BBB", "1D", &[point(1, 2.0)]);
        assert!(quote(&mut board, r#"{"symbol":"NSE:NEW","price":1}"#));
        let symbols: Vec<&str> = board.rows().iter().map(|r| r.symbol.as_str()).collect();
        assert_eq!(symbols, ["NSE:AAA", "NSE:BBB", "NSE:NEW"]);

        board.set_stocks(vec!["NSE:BBB".into(), "NSE:CCC".into()], None);
        let symbols: Vec<&str> = board.rows().iter().map(|r| r.symbol.as_str()).collect();
        assert_eq!(symbols, ["NSE:BBB", "NSE:CCC"]);
        assert_eq!(
            board.row("NSE:BBB").unwrap().last,
            Some(point(1, 2.0)),
            "kept"
        );
        assert_eq!(board.resolution(), Some("1D"));
        // Everything is shown again after a new list.
        assert_eq!(changed(&mut board), ["NSE:BBB", "NSE:CCC"]);
    }

    #[test]
    fn without_a_known_resolution_the_first_bar_sets_it() {
        let mut board = LiveBoard::default();
        board.set_stocks(vec!["NSE:AAA".into()], None);
        assert!(bar(
            &mut board,
            r#"{"symbol":"NSE:AAA","resolution":"5","bar":{"time":1,"open":1,"high":1,"low":1,"close":1}}"#
        ));
        assert!(!bar(
            &mut board,
            r#"{"symbol":"NSE:AAA","resolution":"1D","bar":{"time":9,"open":1,"high":1,"low":1,"close":9}}"#
        ));
        assert_eq!(board.resolution(), Some("5"));
        assert_eq!(board.row("NSE:AAA").unwrap().last, Some(point(1, 1.0)));
    }
}
