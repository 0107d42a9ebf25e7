//! The simulator's live data over real loopback sockets: `du` updates of live series and how they
//! stop, quote sessions (`qsd` in full, then what changed), the stats gauges, and agreement
//! between what subscribers were sent and a later history request.
//!
//! The simulator runs on its own worker threads, which a test's paused clock cannot reach, so
//! these tests run on real time with a short `tick_ms` and a high `time_scale`, and wait with
//! deadlines (never a fixed sleep); what they assert is counted in ticks, not in time.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use chartgate_protocol::client::{ClientMessage, SymbolSpec};
use chartgate_protocol::clock::unix_ms;
use chartgate_protocol::server::{IndexedBar, ServerMessage};
use chartgate_protocol::{Bar, QuoteFields};
use chartgate_simulator::wire::FULL_QUOTE_FIELDS;
use chartgate_simulator::{Faults, SimStats, Simulator, SimulatorSettings, expected_bars};
use serde_json::Value;

use common::harness::{
    WAIT, bars_of, connect_unauthorized, fetch_chart, is_completed_or_error, json_packets, keys,
    plain, post_faults, start, stats_eventually,
};
use common::sim_client::{SimClient, chart_calls, messages};

/// 20 ms ticks of one simulated minute each: a 5-minute bar lasts five ticks.
fn fast_live() -> Faults {
    Faults {
        tick_ms: 20,
        time_scale: 3000,
        ..SimulatorSettings::default().faults
    }
}

async fn start_live() -> Simulator {
    start(SimulatorSettings {
        faults: fast_live(),
        ..SimulatorSettings::default()
    })
    .await
}

/// The bars of the `du` packets in `text` for `session`.
fn updates_of(text: &str, session: &str) -> Vec<IndexedBar> {
    messages(text)
        .into_iter()
        .filter_map(|m| match m {
            ServerMessage::DataUpdate { session: s, series } if s == session => Some(series),
            _ => None,
        })
        .flatten()
        .flat_map(|data| data.bars)
        .collect()
}

/// A series' bars by index: its history, then its updates laid over it.
#[derive(Default)]
struct Merged(BTreeMap<i64, Bar>);

impl Merged {
    fn of(history: &[IndexedBar]) -> Merged {
        Merged(history.iter().map(|b| (b.index, b.bar)).collect())
    }

    fn newest_index(&self) -> i64 {
        self.0.keys().next_back().copied().unwrap_or(-1)
    }

    /// Lays `updates` over the bars, checking that a new bar comes right after the newest one,
    /// at the resolution's next time (`step` seconds on), opening at its close.
    fn apply(&mut self, updates: &[IndexedBar], step: i64) {
        for update in updates {
            let newest = self.newest_index();
            assert!(
                update.index <= newest + 1,
                "no gap: {update:?} after {newest}"
            );
            if update.index == newest + 1
                && let Some(prev) = self.0.get(&newest)
            {
                assert_eq!(update.bar.time, prev.time + step, "the next bar's time");
                assert_eq!(update.bar.open, prev.close, "opens at the previous close");
            }
            self.0.insert(update.index, update.bar);
        }
    }

    /// The newest `n` bars, oldest first.
    fn newest(&self, n: usize) -> Vec<Bar> {
        let all: Vec<Bar> = self.0.values().copied().collect();
        all[all.len().saturating_sub(n)..].to_vec()
    }
}

/// Reads until `done` holds for the updates of `session` merged so far; returns every text read.
async fn follow_until(
    client: &mut SimClient,
    session: &str,
    merged: &mut Merged,
    step: i64,
    done: impl Fn(&Merged) -> bool,
) -> Vec<String> {
    let mut texts = Vec::new();
    while !done(merged) {
        let text = client.next_text(WAIT).await;
        merged.apply(&updates_of(&text, session), step);
        texts.push(text);
    }
    texts
}

fn resolve(session: &str, symbol_id: &str, symbol: &str) -> ClientMessage {
    ClientMessage::ResolveSymbol {
        session: session.into(),
        symbol_id: symbol_id.into(),
        spec: SymbolSpec {
            adjustment: None,
            session: None,
            symbol: symbol.into(),
        },
    }
}

#[actix_web::test]
async fn a_live_series_gets_updates_that_merged_into_its_history_equal_a_later_history() {
    let sim = start_live().await;
    let mut client = connect_unauthorized(&sim).await;
    let asked_at = unix_ms();
    let answer = fetch_chart(&mut client, "cs_a", "NSE:TCS", "5", 50).await;
    let history = bars_of(&answer, "cs_a");
    assert_eq!(plain(&history), *expected_bars("NSE:TCS", "5", 50));

    // Updates of the newest bar, until two new bars have begun (index 49 is the newest).
    let mut merged = Merged::of(&history);
    let texts = follow_until(&mut client, "cs_a", &mut merged, 300, |m| {
        m.newest_index() >= 51
    })
    .await;
    let mut stamps = 0;
    for text in &texts {
        for packet in json_packets(text) {
            if packet["m"] == "du" {
                assert_eq!(
                    keys(&packet["p"][1]["sds_1"]),
                    names_of(&["lbs", "node", "ns", "s", "t"])
                );
                assert_eq!(packet["p"][1]["sds_1"]["t"], "s1");
                let t_ms = packet["t_ms"].as_i64().expect("du stamped with t_ms");
                assert!(t_ms >= asked_at && t_ms <= unix_ms(), "{t_ms}");
                assert_eq!(packet["t"].as_i64(), Some(t_ms / 1000));
                stamps += 1;
            }
        }
    }
    assert!(stamps >= 3, "{stamps} du packets");
    let first_update = texts.iter().flat_map(|t| updates_of(t, "cs_a")).next();
    assert_eq!(
        first_update.map(|u| u.index),
        Some(49),
        "the newest bar moves first"
    );

    // Unsubscribe, and mark the point with a call answered at once: every update before the
    // mark is merged, none comes after it.
    client
        .send(&[
            ClientMessage::RemoveSeries {
                session: "cs_a".into(),
                series_id: "sds_1".into(),
            },
            resolve("cs_a", "sds_sym_9", "NSE:INFY"),
        ])
        .await;
    let rest = client
        .collect_until(WAIT, |m| matches!(m, ServerMessage::SymbolResolved { .. }))
        .await;
    for text in &rest {
        merged.apply(&updates_of(text, "cs_a"), 300);
    }

    // A later history request, on another connection, is the history with the updates merged.
    let mut other = connect_unauthorized(&sim).await;
    let later = fetch_chart(&mut other, "cs_b", "NSE:TCS", "5", 50).await;
    let later = plain(&bars_of(&later, "cs_b"));
    assert_eq!(later, merged.newest(50));
    assert_ne!(
        later,
        *expected_bars("NSE:TCS", "5", 50),
        "the series moved"
    );
    // More history reaches back past the live bars into the generated ones.
    let longer = fetch_chart(&mut other, "cs_c", "NSE:TCS", "5", 120).await;
    let longer = plain(&bars_of(&longer, "cs_c"));
    assert_eq!(longer[70..], later[..]);
    let generated = expected_bars("NSE:TCS", "5", 120);
    assert_eq!(longer[..68], generated[2..70]);
    sim.stop().await;
}

#[actix_web::test]
async fn remove_modify_and_delete_session_stop_updates_and_modify_follows_its_new_symbol() {
    let sim = start_live().await;
    let mut client = connect_unauthorized(&sim).await;
    let sessions = [
        ("cs_keep", "NSE:SBIN"),
        ("cs_remove", "NSE:ITC"),
        ("cs_modify", "NSE:HDFCBANK"),
        ("cs_delete", "NSE:WIPRO"),
    ];
    for (session, symbol) in sessions {
        fetch_chart(&mut client, session, symbol, "5", 50).await;
    }
    assert_eq!(sim.stats().live_series, 4);
    // Each gets updates.
    let mut seen = BTreeSet::new();
    while seen.len() < 4 {
        let text = client.next_text(WAIT).await;
        for (session, _) in sessions {
            if !updates_of(&text, session).is_empty() {
                seen.insert(session);
            }
        }
    }

    client
        .send(&[
            ClientMessage::RemoveSeries {
                session: "cs_remove".into(),
                series_id: "sds_1".into(),
            },
            resolve("cs_modify", "sds_sym_2", "NSE:INFY"),
            ClientMessage::ModifySeries {
                session: "cs_modify".into(),
                series_id: "sds_1".into(),
                turnaround: "s2".into(),
                symbol_id: "sds_sym_2".into(),
                resolution: "5".into(),
                range: String::new(),
            },
            ClientMessage::ChartDeleteSession {
                session: "cs_delete".into(),
            },
        ])
        .await;
    let modified = client.collect_until(WAIT, is_completed_or_error).await;
    let infy = bars_of(&modified, "cs_modify");
    assert_eq!(plain(&infy), *expected_bars("NSE:INFY", "5", 50));
    assert_eq!(sim.stats().live_series, 2, "cs_keep, and cs_modify again");

    // Five more ticks of the series kept: nothing for the removed or deleted ones, and the
    // modified one follows NSE:INFY from its new answer.
    let mut kept = 0;
    let mut merged = Merged::of(&infy);
    while kept < 5 {
        let text = client.next_text(WAIT).await;
        kept += usize::from(!updates_of(&text, "cs_keep").is_empty());
        assert!(
            updates_of(&text, "cs_remove").is_empty(),
            "removed: {text:.200}"
        );
        assert!(
            updates_of(&text, "cs_delete").is_empty(),
            "deleted: {text:.200}"
        );
        merged.apply(&updates_of(&text, "cs_modify"), 300);
    }
    assert!(merged.newest_index() >= 49);
    let newest_infy = infy.last().map(|b| b.bar);
    let moved = merged.0.get(&49).copied();
    assert_eq!(
        moved.map(|b| (b.time, b.open)),
        newest_infy.map(|b| (b.time, b.open)),
        "the modified series' updates are NSE:INFY's newest bar"
    );
    client.close().await;
    let stats = stats_eventually(&sim, |s| s.live_series == 0).await;
    assert_eq!(stats.live_series, 0);
    sim.stop().await;
}

/// The `qsd` packets of `text`: (quote session, symbol key, status, fields present).
fn quotes_of(text: &str) -> Vec<(String, String, Option<String>, QuoteFields)> {
    messages(text)
        .into_iter()
        .filter_map(|m| match m {
            ServerMessage::QuoteData {
                session,
                symbol,
                status,
                fields,
            } => Some((
                session.into_owned(),
                symbol.into_owned(),
                status.map(|s| s.into_owned()),
                *fields,
            )),
            _ => None,
        })
        .collect()
}

fn completed_of(text: &str) -> Vec<(String, String)> {
    messages(text)
        .into_iter()
        .filter_map(|m| match m {
            ServerMessage::QuoteCompleted { session, symbol } => {
                Some((session.into_owned(), symbol.into_owned()))
            }
            _ => None,
        })
        .collect()
}

/// The names of the fields present.
fn names(fields: &QuoteFields) -> BTreeSet<String> {
    let value = serde_json::to_value(fields).unwrap_or_default();
    value
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

#[actix_web::test]
async fn quotes_come_in_full_then_as_changes_keyed_by_the_symbol_as_written() {
    let sim = start_live().await;
    let mut client = connect_unauthorized(&sim).await;
    let spec_form = r#"={"adjustment":"dividends","currency-id":"INR","symbol":"NSE:TCS"}"#;
    let symbols = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    client
        .send(&[
            ClientMessage::QuoteCreateSession {
                session: "qs_all".into(),
            },
            ClientMessage::QuoteCreateSession {
                session: "qs_few".into(),
            },
            ClientMessage::QuoteSetFields {
                session: "qs_few".into(),
                fields: symbols(&["lp", "ch", "volume"]),
            },
            ClientMessage::QuoteAddSymbols {
                session: "qs_all".into(),
                symbols: symbols(&["NSE:TCS", spec_form, "NSE:INVALIDX"]),
            },
            ClientMessage::QuoteAddSymbols {
                session: "qs_few".into(),
                symbols: symbols(&["NSE:TCS"]),
            },
        ])
        .await;
    // Each quote call is answered at once, in its own message, before any tick.
    let first = [client.next_text(WAIT).await, client.next_text(WAIT).await].concat();
    let full = quotes_of(&first);
    let keys_of = |quotes: &[(String, String, Option<String>, QuoteFields)]| {
        quotes
            .iter()
            .map(|(s, n, st, _)| (s.clone(), n.clone(), st.clone()))
            .collect::<Vec<_>>()
    };
    let ok = Some("ok".to_string());
    assert_eq!(
        keys_of(&full),
        [
            ("qs_all".into(), "NSE:TCS".into(), ok.clone()),
            ("qs_all".into(), spec_form.into(), ok.clone()),
            ("qs_all".into(), "NSE:INVALIDX".into(), Some("error".into())),
            ("qs_few".into(), "NSE:TCS".into(), ok.clone()),
        ],
        "n is the symbol exactly as written"
    );
    assert_eq!(
        completed_of(&first),
        [
            ("qs_all".into(), "NSE:TCS".into()),
            ("qs_all".into(), spec_form.into()),
            ("qs_few".into(), "NSE:TCS".into()),
        ],
        "quote_completed for each known symbol"
    );
    let daily = expected_bars("NSE:TCS", "1D", 2);
    let tcs = &full[0].3;
    for name in FULL_QUOTE_FIELDS {
        assert!(names(tcs).contains(name), "{name} in the full qsd");
    }
    assert_eq!(tcs.lp, Some(daily[1].close), "lp is the last daily close");
    assert_eq!(tcs.volume, daily[1].volume);
    assert_eq!(
        tcs.description.as_deref(),
        Some("Tata Consultancy Services Ltd")
    );
    assert_eq!(full[1].3, full[0].3, "both spellings quote the same symbol");
    assert!(names(&full[2].3).is_empty(), "an error carries no fields");
    assert_eq!(names(&full[3].3), names_of(&["ch", "lp", "volume"]));
    assert_eq!(sim.stats().quote_symbols, 3);

    // Then changes only, merged per session and key.
    let mut merged: BTreeMap<(String, String), QuoteFields> = full
        .iter()
        .filter(|q| q.2 == ok)
        .map(|(s, n, _, f)| ((s.clone(), n.clone()), f.clone()))
        .collect();
    let mut partials: BTreeMap<(String, String), usize> = BTreeMap::new();
    while partials.len() < 3 || partials.values().any(|n| *n < 3) {
        let text = client.next_text(WAIT).await;
        assert!(completed_of(&text).is_empty());
        for (session, symbol, status, fields) in quotes_of(&text) {
            assert_eq!(status, ok);
            assert_ne!(
                symbol, "NSE:INVALIDX",
                "an unknown symbol gets nothing more"
            );
            let present = names(&fields);
            assert!(!present.is_empty());
            for constant in ["description", "exchange", "pricescale", "currency_code"] {
                assert!(!present.contains(constant), "{constant} did not change");
            }
            if session == "qs_few" {
                assert!(present.is_subset(&names_of(&["ch", "lp", "volume"])));
            }
            let key = (session, symbol);
            merged.entry(key.clone()).or_default().merge(&fields);
            *partials.entry(key).or_default() += 1;
        }
    }

    // Removing the symbols stops their quotes; the daily history asked for right after ends at
    // the last price they were sent.
    let mut calls = vec![
        ClientMessage::QuoteRemoveSymbols {
            session: "qs_all".into(),
            symbols: symbols(&["NSE:TCS", spec_form]),
        },
        ClientMessage::QuoteDeleteSession {
            session: "qs_few".into(),
        },
    ];
    calls.extend(chart_calls("cs_q", "NSE:TCS", "1D", 10));
    client.send(&calls).await;
    let answer = client.collect_until(WAIT, is_completed_or_error).await;
    assert_eq!(sim.stats().quote_symbols, 0);
    let newest = plain(&bars_of(&answer, "cs_q"))
        .last()
        .copied()
        .expect("daily bars");
    for fields in merged.values() {
        assert_eq!(fields.lp, Some(newest.close));
    }
    assert_eq!(
        merged[&("qs_all".into(), "NSE:TCS".into())].volume,
        newest.volume
    );
    assert_ne!(newest.close, daily[1].close, "the price moved");
    // Three ticks of the chart's own updates bring no quote.
    let mut ticks = 0;
    while ticks < 3 {
        let text = client.next_text(WAIT).await;
        assert!(quotes_of(&text).is_empty(), "{text:.200}");
        ticks += usize::from(!updates_of(&text, "cs_q").is_empty());
    }
    sim.stop().await;
}

fn names_of(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[actix_web::test]
async fn the_pace_is_set_at_run_time_and_nothing_is_sent_after_a_connection_closes() {
    let sim = start(SimulatorSettings::default()).await;
    let (status, body) = post_faults(&sim, r#"{"tick_ms": 20, "time_scale": 3000}"#).await;
    assert_eq!(status, 200, "{body}");
    let faults: Value = serde_json::from_str(&body).expect("faults JSON");
    assert_eq!(
        (faults["tick_ms"].as_u64(), faults["time_scale"].as_u64()),
        (Some(20), Some(3000))
    );

    let mut a = connect_unauthorized(&sim).await;
    let history = bars_of(
        &fetch_chart(&mut a, "cs_a", "NSE:TCS", "5", 20).await,
        "cs_a",
    );
    a.send(&[
        ClientMessage::QuoteCreateSession {
            session: "qs_a".into(),
        },
        ClientMessage::QuoteAddSymbols {
            session: "qs_a".into(),
            symbols: vec!["NSE:ITC".into()],
        },
    ])
    .await;
    let mut merged = Merged::of(&history);
    follow_until(&mut a, "cs_a", &mut merged, 300, |m| m.newest_index() >= 20).await;
    let stats = sim.stats();
    assert_eq!((stats.live_series, stats.quote_symbols), (1, 1));
    assert!(stats.updates_sent >= 3, "{stats:?}");

    a.close().await;
    let idle = |s: &SimStats| s.connections_open == 0 && s.live_series == 0 && s.quote_symbols == 0;
    let stats = stats_eventually(&sim, idle).await;
    assert!(idle(&stats), "{stats:?}");
    let before = stats.updates_sent;

    // Three ticks of another connection's series: its updates are the only ones sent.
    let mut b = connect_unauthorized(&sim).await;
    fetch_chart(&mut b, "cs_b", "NSE:INFY", "5", 20).await;
    let mut received = 0;
    while received < 3 {
        let text = b.next_text(WAIT).await;
        received += updates_of(&text, "cs_b").len().min(1) as u64;
    }
    let sent = sim.stats().updates_sent - before;
    assert!(
        (received..=received + 1).contains(&sent),
        "{sent} sent, {received} received"
    );
    sim.stop().await;
}
