//! The feed's answers as the simulator writes them: the same shapes as the capture's `recv` side
//! (field names, nesting, the tick-mark element of `timescale_update`, `t`/`t_ms` stamps), with
//! numbers written the feed's way (`1728272700.0`) and the simulator's own plausible constants
//! where the real feed has data the simulator does not model.

use std::fmt::Write as _;

use chartgate_protocol::json::{Whole, to_ascii_string, write_number};
use chartgate_protocol::{Bar, QuoteFields, ServerMessage, SymbolInfo};
use serde_json::{Map, Value, json};

/// The `s` array of a series update: `[{"i":0,"v":[t,o,h,l,c,v]},...]`, numbers written as the
/// feed writes them (times and prices as floats). Kept separate so a server can cache it.
pub fn bars_json(bars: &[Bar], first_index: i64) -> String {
    let mut out = String::with_capacity(bars.len() * 64 + 2);
    out.push('[');
    for (n, bar) in bars.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        let _ = write!(out, "{{\"i\":{},\"v\":[", first_index + n as i64);
        write_number(&mut out, bar.time as f64, Whole::PointZero);
        for value in [bar.open, bar.high, bar.low, bar.close]
            .into_iter()
            .chain(bar.volume)
        {
            out.push(',');
            write_number(&mut out, value, Whole::PointZero);
        }
        out.push_str("]}");
    }
    out.push(']');
    out
}

/// One series' element of a `timescale_update` or `du`.
pub struct SeriesPart<'a> {
    pub series_id: &'a str,
    pub turnaround: &'a str,
    /// The `s` array, from [`bars_json`] (which a server may cache).
    pub bars_json: &'a str,
    pub bars: &'a [Bar],
    /// The tick-mark element from [`tick_marks_json`] (which a server may cache too), written
    /// after the series of a `timescale_update`.
    pub tick_marks: &'a str,
}

/// The tick-mark element of a `timescale_update`: the bars' times as `changes` and `marks`,
/// indexed from `first_index`.
pub fn tick_marks_json(bars: &[Bar], first_index: i64) -> String {
    let mut out = String::with_capacity(bars.len() * 32 + 64);
    let _ = write!(out, "{{\"index\":{first_index},\"zoffset\":0,\"changes\":[");
    for (n, bar) in bars.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        write_number(&mut out, bar.time as f64, Whole::PointZero);
    }
    out.push_str("],\"marks\":[");
    for (n, bar) in bars.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        let mut int = itoa::Buffer::new();
        out.push_str("[40,");
        out.push_str(int.format(bar.time));
        out.push(',');
        out.push_str(int.format(first_index + n as i64));
        out.push(']');
    }
    out.push_str("],\"index_diff\":[]}");
    out
}

/// A whole `timescale_update` (or `du`) payload: one element per series with `node`, `s`, `ns`,
/// `t`, `lbs`, then (for `timescale_update`) the tick-mark element of the first series, stamped.
pub fn encode_series_update(
    method: &str,
    session: &str,
    series: &[SeriesPart<'_>],
    now_ms: i64,
) -> String {
    let size: usize = series
        .iter()
        .map(|s| s.bars_json.len() + s.tick_marks.len() + 160)
        .sum();
    let mut out = String::with_capacity(size + 128);
    let _ = write!(
        out,
        "{{\"m\":{},\"p\":[{},{{",
        to_ascii_string(method),
        to_ascii_string(session)
    );
    for (n, part) in series.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        let last_close = part.bars.last().map_or(0, |b| b.time);
        let _ = write!(
            out,
            "{}:{{\"node\":\"sim-series-1\",\"s\":{},\"ns\":{{\"d\":\"\",\"indexes\":[]}},\"t\":{},\"lbs\":{{\"bar_close_time\":{last_close}}}}}",
            to_ascii_string(part.series_id),
            part.bars_json,
            to_ascii_string(part.turnaround),
        );
    }
    out.push('}');
    if let Some(part) = series.first().filter(|_| method == "timescale_update") {
        out.push(',');
        out.push_str(part.tick_marks);
    }
    let _ = write!(out, "],\"t\":{},\"t_ms\":{now_ms}}}", now_ms / 1000);
    out
}

/// A whole `symbol_resolved` payload around an already encoded symbol object (a server may cache
/// the object: it is the same for every answer about that symbol).
pub fn encode_symbol_resolved(
    session: &str,
    symbol_id: &str,
    object_json: &str,
    now_ms: i64,
) -> String {
    let mut out = String::with_capacity(object_json.len() + 128);
    out.push_str("{\"m\":\"symbol_resolved\",\"p\":[");
    out.push_str(&to_ascii_string(session));
    out.push(',');
    out.push_str(&to_ascii_string(symbol_id));
    out.push(',');
    out.push_str(object_json);
    out.push_str("],\"t\":");
    out.push_str(itoa::Buffer::new().format(now_ms / 1000));
    out.push_str(",\"t_ms\":");
    out.push_str(itoa::Buffer::new().format(now_ms));
    out.push('}');
    out
}

/// The full `symbol_resolved` object in the feed's shape: the keys the capture shows, filled from
/// `info` and plausible constants.
pub fn symbol_resolved_object(info: &SymbolInfo) -> Value {
    let exchange = &info.exchange;
    json!({
        "source2": {"country": "IN", "description": exchange, "exchange-type": "exchange", "id": exchange, "name": exchange, "url": ""},
        "currency_code": info.currency_code,
        "source_id": exchange,
        "session_holidays": "",
        "subsession_id": "regular",
        "provider_id": "sim",
        "currency_id": info.currency_code,
        "country": "IN",
        "pro_perm": "",
        "measure": "price",
        "allowed_adjustment": "any",
        "short_description": info.description,
        "variable_tick_size": "",
        "isin": info.isin,
        "language": "en",
        "name": info.name,
        "full_name": info.full_name,
        "pro_name": info.full_name,
        "base_name": [info.full_name],
        "description": info.description,
        "exchange": exchange,
        "pricescale": info.pricescale,
        "pointvalue": 1.0,
        "minmov": info.minmov,
        "session": info.session,
        "session_display": info.session,
        "subsessions": [{"description": "Regular Trading Hours", "id": "regular", "private": false, "session": info.session, "session-correction": "", "session-display": info.session}],
        "type": info.kind,
        "typespecs": ["common"],
        "has_intraday": true,
        "fractional": false,
        "listed_exchange": exchange,
        "legs": [info.full_name],
        "is_tradable": false,
        "minmove2": 0,
        "timezone": info.timezone,
        "aliases": [],
        "alternatives": [],
        "is_replayable": true,
        "has_adjustment": true,
        "has_extended_hours": false,
        "bar_source": "trade",
        "bar_transform": "none",
        "bar_fillgaps": false,
        "visible_plots_set": "ohlcv",
        "isin-displayed": info.isin,
        "is-tickbars-available": false,
        "figi": {"country-composite": "", "exchange-level": ""},
        "exchange_listed_name": exchange,
    })
}

/// A `series_timeframe` packet, as the feed sends it (twice: `complete` false, then true) when a
/// `modify_series` asks for a range of bars the series already holds: the indices of the first
/// and last bar in range and the requested range string. Unstamped, like the capture's.
pub fn encode_series_timeframe(
    session: &str,
    series_id: &str,
    turnaround: &str,
    first_index: i64,
    last_index: i64,
    range: &str,
    complete: bool,
) -> String {
    to_ascii_string(&json!({
        "m": "series_timeframe",
        "p": [session, series_id, turnaround, first_index, last_index, range, complete],
    }))
}

/// Fields every full `qsd` of a known symbol carries (when its session did not narrow them with
/// `quote_set_fields`): what clients read for a price.
pub const FULL_QUOTE_FIELDS: [&str; 11] = [
    "lp",
    "ch",
    "chp",
    "volume",
    "bid",
    "ask",
    "lp_time",
    "description",
    "exchange",
    "currency_code",
    "pricescale",
];

/// A `qsd` packet: quote data `v` of `symbol` (named exactly as the client wrote it) with status
/// `ok` or `error`. Unstamped, like the capture's.
pub fn encode_quote_data(
    session: &str,
    symbol: &str,
    status: &str,
    fields: &Map<String, Value>,
) -> String {
    to_ascii_string(&json!({
        "m": "qsd",
        "p": [session, {"n": symbol, "s": status, "v": fields}],
    }))
}

/// A `quote_completed` packet: the first, full `qsd` of `symbol` has been sent. Unstamped.
pub fn encode_quote_completed(session: &str, symbol: &str) -> String {
    to_ascii_string(&json!({"m": "quote_completed", "p": [session, symbol]}))
}

/// `fields` as the JSON object of a `qsd`'s `v` (absent fields left out).
pub fn quote_fields_object(fields: &QuoteFields) -> Map<String, Value> {
    match serde_json::to_value(fields) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

/// Encodes a message as the feed would, stamped with `now_ms` (Unix milliseconds) where the
/// feed stamps it. `Other` cannot be encoded and gives an empty object.
pub fn encode_message(message: &ServerMessage<'_>, now_ms: i64) -> String {
    let stamped = |m: &str, p: Value| {
        to_ascii_string(&json!({"m": m, "p": p, "t": now_ms / 1000, "t_ms": now_ms}))
    };
    match message {
        ServerMessage::Hello(hello) => to_ascii_string(hello),
        ServerMessage::SeriesLoading {
            session,
            series_id,
            turnaround,
        } => stamped("series_loading", json!([session, series_id, turnaround])),
        ServerMessage::SymbolResolved {
            session,
            symbol_id,
            info,
        } => encode_symbol_resolved(
            session,
            symbol_id,
            &to_ascii_string(&symbol_resolved_object(info)),
            now_ms,
        ),
        ServerMessage::TimescaleUpdate { session, series }
        | ServerMessage::DataUpdate { session, series } => {
            let owned: Vec<(Vec<Bar>, i64)> = series
                .iter()
                .map(|data| {
                    let bars: Vec<Bar> = data.bars.iter().map(|b| b.bar).collect();
                    (bars, data.bars.first().map_or(0, |b| b.index))
                })
                .collect();
            let jsons: Vec<(String, String)> = owned
                .iter()
                .map(|(bars, first)| (bars_json(bars, *first), tick_marks_json(bars, *first)))
                .collect();
            let parts: Vec<SeriesPart<'_>> = series
                .iter()
                .zip(&owned)
                .zip(&jsons)
                .map(|((data, (bars, _)), (json, tick_marks))| SeriesPart {
                    series_id: &data.series_id,
                    turnaround: data.turnaround.as_deref().unwrap_or("s1"),
                    bars_json: json,
                    bars,
                    tick_marks,
                })
                .collect();
            encode_series_update(message.name(), session, &parts, now_ms)
        }
        ServerMessage::SeriesCompleted {
            session,
            series_id,
            status,
            turnaround,
        } => stamped(
            "series_completed",
            json!([session, series_id, status, turnaround, {"rt_update_period": 0}]),
        ),
        ServerMessage::SeriesTimeframe {
            session,
            series_id,
            turnaround,
        } => to_ascii_string(
            &json!({"m": "series_timeframe", "p": [session, series_id, turnaround, 0, 0, "", true]}),
        ),
        ServerMessage::SymbolError {
            session,
            symbol_id,
            reason,
        } => stamped("symbol_error", json!([session, symbol_id, reason])),
        ServerMessage::SeriesError {
            session,
            series_id,
            turnaround,
            reason,
        } => stamped(
            "series_error",
            json!([session, series_id, turnaround, reason]),
        ),
        ServerMessage::CriticalError {
            session,
            reason,
            detail,
        } => {
            let mut p: Vec<Value> = session.iter().map(|s| json!(s)).collect();
            p.push(json!(reason));
            p.extend(detail.iter().map(|d| json!(d)));
            to_ascii_string(&json!({"m": "critical_error", "p": p}))
        }
        ServerMessage::ProtocolError { reason } => {
            to_ascii_string(&json!({"m": "protocol_error", "p": [reason]}))
        }
        ServerMessage::QuoteData {
            session,
            symbol,
            status,
            fields,
        } => encode_quote_data(
            session,
            symbol,
            status.as_deref().unwrap_or("ok"),
            &quote_fields_object(fields),
        ),
        ServerMessage::QuoteCompleted { session, symbol } => {
            encode_quote_completed(session, symbol)
        }
        ServerMessage::Other { .. } => "{}".to_string(),
    }
}
