//! Messages the feed sends, decoded by borrowing from the message text.
//!
//! Two readers, one answer: a series update written the feed's way (the bulk of every chart
//! answer) is read by the fast path in `series_scan.rs`; everything else by one serde path, which
//! finds the method and reads the packet once with that method's parameters typed, bars straight
//! into [`IndexedBar`]s through a typed visitor (no `serde_json::Value`). Everything this module does not use is kept
//! as [`ServerMessage::Other`] so callers can ignore it.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The server hello, the first packet of every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub session_id: String,
    #[serde(default)]
    pub timestamp: i64,
    #[serde(default)]
    pub release: String,
    #[serde(default)]
    pub protocol: String,
}

/// The part of `symbol_resolved` chartgate reads; the feed sends about fifty keys.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SymbolInfo {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub full_name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub exchange: String,
    #[serde(default)]
    pub currency_code: String,
    #[serde(default)]
    pub pricescale: u64,
    #[serde(default)]
    pub minmov: u64,
    #[serde(default)]
    pub timezone: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub session: String,
    #[serde(default)]
    pub isin: String,
}

/// One OHLCV bar as the feed sends it. `time` is the bar's open in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bar {
    pub time: i64,
    pub open: f64,
    pub high: f64,
    pub low: f64,
    pub close: f64,
    /// Absent for index-like symbols whose feed bars carry five values.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub volume: Option<f64>,
}

/// Declares [`QuoteFields`] once: the struct (every field optional, absent when not sent) and
/// its merge, so a new field is added in one place.
macro_rules! quote_fields {
    ($($(#[$attr:meta])* $name:ident: $ty:ty,)*) => {
        /// The fields of a `qsd` packet's `v` that chartgate reads, each optional: a `qsd` is a
        /// partial update (the feed sends a field again only when it changed), so a client keeps
        /// the last known fields per symbol and [`QuoteFields::merge`]s each update into them.
        /// The feed sends many more keys (fundamentals, logos); they are skipped.
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        pub struct QuoteFields {
            $(
                $(#[$attr])*
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $name: Option<$ty>,
            )*
        }

        impl QuoteFields {
            /// Takes every field `update` carries; the others keep their value.
            pub fn merge(&mut self, update: &QuoteFields) {
                $(
                    if let Some(value) = &update.$name {
                        self.$name = Some(value.clone());
                    }
                )*
            }
        }
    };
}

quote_fields! {
    /// Last price.
    lp: f64,
    /// Time of the last price, Unix seconds.
    lp_time: i64,
    /// Change from the previous session's close.
    ch: f64,
    /// `ch` in percent.
    chp: f64,
    /// Volume of the current session.
    volume: f64,
    bid: f64,
    ask: f64,
    bid_size: f64,
    ask_size: f64,
    open_price: f64,
    high_price: f64,
    low_price: f64,
    prev_close_price: f64,
    description: String,
    short_name: String,
    pro_name: String,
    original_name: String,
    exchange: String,
    listed_exchange: String,
    currency_code: String,
    currency_id: String,
    #[serde(rename = "type")]
    kind: String,
    pricescale: u64,
    minmov: u64,
    fractional: bool,
    /// `streaming`, or `delayed_streaming_900` for delayed data.
    update_mode: String,
    /// `market`, `pre_market`, `post_market`, `out_of_session`.
    current_session: String,
}

/// A bar with the feed's index: 0.. for the first answer, negative for `request_more_data`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IndexedBar {
    pub index: i64,
    pub bar: Bar,
}

/// The bars one `timescale_update` or `du` carries for one series.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesData<'a> {
    pub series_id: Cow<'a, str>,
    pub turnaround: Option<Cow<'a, str>>,
    pub bars: Vec<IndexedBar>,
}

/// A server-to-client message.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage<'a> {
    Hello(Hello),
    SeriesLoading {
        session: Cow<'a, str>,
        series_id: Cow<'a, str>,
        turnaround: Cow<'a, str>,
    },
    SymbolResolved {
        session: Cow<'a, str>,
        symbol_id: Cow<'a, str>,
        info: SymbolInfo,
    },
    TimescaleUpdate {
        session: Cow<'a, str>,
        series: Vec<SeriesData<'a>>,
    },
    DataUpdate {
        session: Cow<'a, str>,
        series: Vec<SeriesData<'a>>,
    },
    SeriesCompleted {
        session: Cow<'a, str>,
        series_id: Cow<'a, str>,
        /// `streaming`, or `delayed_streaming_900` for unauthorised (delayed) data.
        status: Cow<'a, str>,
        turnaround: Cow<'a, str>,
    },
    SeriesTimeframe {
        session: Cow<'a, str>,
        series_id: Cow<'a, str>,
        turnaround: Cow<'a, str>,
    },
    SymbolError {
        session: Cow<'a, str>,
        symbol_id: Cow<'a, str>,
        reason: Cow<'a, str>,
    },
    SeriesError {
        session: Cow<'a, str>,
        series_id: Cow<'a, str>,
        turnaround: Cow<'a, str>,
        reason: Cow<'a, str>,
    },
    /// `critical_error`: the chart session (when the first parameter names one), the reason
    /// (`invalid parameters`), and the rest as text.
    CriticalError {
        session: Option<Cow<'a, str>>,
        reason: String,
        detail: Vec<String>,
    },
    /// `protocol_error`, e.g. `bad auth token`: the whole connection is unusable.
    ProtocolError {
        reason: String,
    },
    /// `qsd`: quote data of one symbol of a quote session.
    QuoteData {
        session: Cow<'a, str>,
        /// The symbol exactly as the client wrote it in `quote_add_symbols` (`n`): the key to
        /// merge updates under.
        symbol: Cow<'a, str>,
        /// `ok`, or `error` for a symbol the feed does not know (`s`; absent when not sent).
        status: Option<Cow<'a, str>>,
        /// The fields this packet carries (`v`): all of them at first, then what changed. Boxed:
        /// it is many times the size of every other variant.
        fields: Box<QuoteFields>,
    },
    /// `quote_completed`: the first, full data of `symbol` has been sent.
    QuoteCompleted {
        session: Cow<'a, str>,
        symbol: Cow<'a, str>,
    },
    Other {
        name: Cow<'a, str>,
    },
}

/// Why a packet is not a message this module can read. Never echoes the payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    #[error("packet is not a JSON object: {0}")]
    NotJson(String),
    #[error("{method} has unexpected parameters: {detail}")]
    BadParameters { method: String, detail: String },
}

/// Five or six numbers (time, open, high, low, close, volume); longer arrays (studies) are cut.
#[derive(Debug, Clone, Copy)]
struct BarValues {
    values: [f64; 6],
    len: usize,
}

impl<'de> Deserialize<'de> for BarValues {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BarValues;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of bar values")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<BarValues, A::Error> {
                let mut out = BarValues {
                    values: [0.0; 6],
                    len: 0,
                };
                while let Some(v) = seq.next_element::<Option<f64>>()? {
                    if out.len < 6 {
                        out.values[out.len] = v.unwrap_or(f64::NAN);
                        out.len += 1;
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V)
    }
}

#[derive(Deserialize)]
struct RawBar {
    i: i64,
    v: BarValues,
}

/// The `s` array of one series, read straight into bars. A row with fewer than five values is
/// remembered (the first one) rather than refused at once, so that, as before, only series the
/// message keeps (the last of duplicate ids, with an `s`) can make it fail.
struct SeriesBars {
    bars: Vec<IndexedBar>,
    short: Option<String>,
}

impl<'de> Deserialize<'de> for SeriesBars {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SeriesBars;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of bars")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SeriesBars, A::Error> {
                // serde_json gives no length hint; a first answer is typically 300 bars.
                let mut out = SeriesBars {
                    bars: Vec::with_capacity(seq.size_hint().unwrap_or(64)),
                    short: None,
                };
                while let Some(row) = seq.next_element::<RawBar>()? {
                    let v = &row.v.values;
                    if row.v.len < 5 {
                        out.short.get_or_insert_with(|| {
                            format!("bar {} has {} values, expected 5 or 6", row.i, row.v.len)
                        });
                        continue;
                    }
                    out.bars.push(IndexedBar {
                        index: row.i,
                        bar: Bar {
                            time: v[0] as i64,
                            open: v[1],
                            high: v[2],
                            low: v[3],
                            close: v[4],
                            volume: (row.v.len >= 6).then_some(v[5]),
                        },
                    });
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V)
    }
}

#[derive(Deserialize)]
struct SeriesPayload<'a> {
    #[serde(default)]
    s: Option<SeriesBars>,
    #[serde(default, borrow)]
    t: Option<Cow<'a, str>>,
}

/// The object of a `qsd` packet: `{"n": symbol, "s": status, "v": fields}`.
#[derive(Deserialize)]
struct QuotePayload<'a> {
    #[serde(borrow)]
    n: Text<'a>,
    #[serde(default, borrow)]
    s: Option<Text<'a>>,
    #[serde(default)]
    v: QuoteFields,
}

/// A string borrowed from the message text when it has no escapes (serde's own `Cow` impl always
/// copies), ordered by its text so it can key the series map.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// The series map of a `timescale_update` or `du` (`{"sds_1": {"s": [...], "t": "s1"}, ...}`),
/// ascending by series id, series without `s` left out.
struct SeriesMap<'a>(Vec<SeriesData<'a>>);

impl<'de: 'a, 'a> Deserialize<'de> for SeriesMap<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<Text<'a>, SeriesPayload<'a>>::deserialize(d)?;
        let mut series = Vec::with_capacity(map.len());
        for (series_id, payload) in map {
            let Some(bars) = payload.s else { continue };
            if let Some(short) = bars.short {
                return Err(de::Error::custom(short));
            }
            series.push(SeriesData {
                series_id: series_id.0,
                turnaround: payload.t,
                bars: bars.bars,
            });
        }
        Ok(SeriesMap(series))
    }
}

/// A packet whose method is known, read in one pass and in any key order: `m` (read so that a
/// packet naming it twice is refused), `p` as `P`, every other key (the `t`/`t_ms` stamps)
/// skipped.
#[derive(Deserialize)]
#[serde(bound(deserialize = "P: Deserialize<'de>"))]
struct Packet<'a, P> {
    #[serde(rename = "m", borrow)]
    _method: Text<'a>,
    #[serde(default)]
    p: Option<P>,
}

/// The method of a packet, for one whose `m` does not come first (the feed always writes it
/// first; see [`method_written_first`]).
#[derive(Deserialize)]
struct Method<'a> {
    #[serde(borrow)]
    m: Option<Text<'a>>,
    /// Named so that an envelope written as an array, `[m, p]`, reads too.
    #[serde(rename = "p", default)]
    _params: Option<IgnoredAny>,
}

/// The method of a packet written the feed's way, `{"m":"<method>",...`, without parsing it.
fn method_written_first(payload: &str) -> Option<&str> {
    let rest = payload.strip_prefix(r#"{"m":""#)?;
    let name = &rest[..rest.find('"')?];
    (!name.contains('\\')).then_some(name)
}

/// The leading parameters of a method, typed, in order; any after them are skipped (the feed
/// adds parameters over time). Errors name the parameter by its position.
struct Leading<T>(T);

macro_rules! leading {
    ($($index:tt $param:ident),+) => {
        impl<'de, $($param: Deserialize<'de>),+> Deserialize<'de> for Leading<($($param,)+)> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V<$($param),+>(std::marker::PhantomData<($($param,)+)>);
                impl<'de, $($param: Deserialize<'de>),+> Visitor<'de> for V<$($param),+> {
                    type Value = Leading<($($param,)+)>;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("an array of parameters")
                    }
                    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                        let params = ($(
                            seq.next_element::<$param>()
                                .map_err(|e| de::Error::custom(format_args!("parameter {}: {e}", $index)))?
                                .ok_or_else(|| de::Error::custom(format_args!("missing parameter {}", $index)))?,
                        )+);
                        while seq.next_element::<IgnoredAny>()?.is_some() {}
                        Ok(Leading(params))
                    }
                }
                d.deserialize_seq(V(std::marker::PhantomData))
            }
        }
    };
}

leading!(0 P0, 1 P1);
leading!(0 P0, 1 P1, 2 P2);
leading!(0 P0, 1 P1, 2 P2, 3 P3);

/// `p` of a packet whose method is `method`, read as `P`. A packet that is an envelope but whose
/// parameters have another shape is `BadParameters`; anything else that fails is `NotJson`.
fn params<'a, P: Deserialize<'a>>(payload: &'a str, method: &str) -> Result<P, ServerError> {
    let bad = |detail: String| ServerError::BadParameters {
        method: method.to_string(),
        detail,
    };
    match serde_json::from_str::<Packet<'a, P>>(payload) {
        Ok(Packet { p: Some(p), .. }) => Ok(p),
        Ok(Packet { p: None, .. }) => Err(bad("missing parameter 0".into())),
        // The envelope read alone tells a packet that is not one (not JSON, a key given twice)
        // from one whose parameters have another shape.
        Err(e) => match serde_json::from_str::<Method<'_>>(payload) {
            Ok(_) if e.is_data() => Err(bad(e.to_string())),
            Ok(_) => Err(ServerError::NotJson(e.to_string())),
            Err(envelope) => Err(ServerError::NotJson(envelope.to_string())),
        },
    }
}

/// Parameters as text: strings as they read, anything else as its JSON.
fn texts(values: Vec<Value>) -> Vec<String> {
    values
        .into_iter()
        .map(|value| match value {
            Value::String(text) => text,
            other => other.to_string(),
        })
        .collect()
}

impl<'a> ServerMessage<'a> {
    /// Decodes one JSON packet. A series update (`timescale_update`, `du`) written the feed's way
    /// is read by the fast path in `series_scan.rs`, only up to the end of its series map; any
    /// other packet, and a series update written otherwise, by serde, in one pass.
    pub fn decode(payload: &'a str) -> Result<ServerMessage<'a>, ServerError> {
        if let Some(message) = super::series_scan::series_update(payload) {
            return Ok(message);
        }
        Self::decode_with_serde(payload)
    }

    /// [`ServerMessage::decode`] without the fast path for series updates: the method is found
    /// (by its place in a packet written the feed's way, or else by reading `m` alone), then the
    /// packet is read in one pass with that method's parameters typed.
    pub(super) fn decode_with_serde(payload: &'a str) -> Result<ServerMessage<'a>, ServerError> {
        let method = match method_written_first(payload) {
            Some(method) => Cow::Borrowed(method),
            None => {
                let read: Method<'a> = serde_json::from_str(payload)
                    .map_err(|e| ServerError::NotJson(e.to_string()))?;
                let Some(Text(method)) = read.m else {
                    let hello: Hello = serde_json::from_str(payload)
                        .map_err(|e| ServerError::NotJson(e.to_string()))?;
                    return Ok(ServerMessage::Hello(hello));
                };
                method
            }
        };
        Ok(match method.as_ref() {
            "series_loading" => {
                let Leading((Text(session), Text(series_id), Text(turnaround))) =
                    params(payload, &method)?;
                ServerMessage::SeriesLoading {
                    session,
                    series_id,
                    turnaround,
                }
            }
            "symbol_resolved" => {
                let Leading((Text(session), Text(symbol_id), info)) = params(payload, &method)?;
                ServerMessage::SymbolResolved {
                    session,
                    symbol_id,
                    info,
                }
            }
            "timescale_update" | "du" => {
                let Leading((Text(session), SeriesMap(series))) = params(payload, &method)?;
                if method == "du" {
                    ServerMessage::DataUpdate { session, series }
                } else {
                    ServerMessage::TimescaleUpdate { session, series }
                }
            }
            "series_completed" => {
                let Leading((Text(session), Text(series_id), Text(status), Text(turnaround))) =
                    params(payload, &method)?;
                ServerMessage::SeriesCompleted {
                    session,
                    series_id,
                    status,
                    turnaround,
                }
            }
            "series_timeframe" => {
                let Leading((Text(session), Text(series_id), Text(turnaround))) =
                    params(payload, &method)?;
                ServerMessage::SeriesTimeframe {
                    session,
                    series_id,
                    turnaround,
                }
            }
            "symbol_error" => {
                let Leading((Text(session), Text(symbol_id), Text(reason))) =
                    params(payload, &method)?;
                ServerMessage::SymbolError {
                    session,
                    symbol_id,
                    reason,
                }
            }
            "series_error" => {
                let Leading((Text(session), Text(series_id), Text(turnaround), Text(reason))) =
                    params(payload, &method)?;
                ServerMessage::SeriesError {
                    session,
                    series_id,
                    turnaround,
                    reason,
                }
            }
            "critical_error" => {
                let mut all = texts(params(payload, &method)?);
                let session = match all.first() {
                    Some(first) if first.starts_with("cs_") => Some(Cow::Owned(all.remove(0))),
                    _ => None,
                };
                let reason = if all.is_empty() {
                    String::new()
                } else {
                    all.remove(0)
                };
                ServerMessage::CriticalError {
                    session,
                    reason,
                    detail: all,
                }
            }
            "protocol_error" => ServerMessage::ProtocolError {
                reason: texts(params(payload, &method)?).join(": "),
            },
            "qsd" => {
                let Leading((Text(session), quote)): Leading<(Text<'a>, QuotePayload<'a>)> =
                    params(payload, &method)?;
                ServerMessage::QuoteData {
                    session,
                    symbol: quote.n.0,
                    status: quote.s.map(|s| s.0),
                    fields: Box::new(quote.v),
                }
            }
            "quote_completed" => {
                let Leading((Text(session), Text(symbol))) = params(payload, &method)?;
                ServerMessage::QuoteCompleted { session, symbol }
            }
            // Read only to be sure it is JSON; nothing of it is used.
            _ => match serde_json::from_str::<IgnoredAny>(payload) {
                Ok(_) => ServerMessage::Other { name: method },
                Err(e) => return Err(ServerError::NotJson(e.to_string())),
            },
        })
    }

    /// The method name on the wire (`hello` for the hello, which has none).
    pub fn name(&self) -> &str {
        match self {
            ServerMessage::Hello(_) => "hello",
            ServerMessage::SeriesLoading { .. } => "series_loading",
            ServerMessage::SymbolResolved { .. } => "symbol_resolved",
            ServerMessage::TimescaleUpdate { .. } => "timescale_update",
            ServerMessage::DataUpdate { .. } => "du",
            ServerMessage::SeriesCompleted { .. } => "series_completed",
            ServerMessage::SeriesTimeframe { .. } => "series_timeframe",
            ServerMessage::SymbolError { .. } => "symbol_error",
            ServerMessage::SeriesError { .. } => "series_error",
            ServerMessage::CriticalError { .. } => "critical_error",
            ServerMessage::ProtocolError { .. } => "protocol_error",
            ServerMessage::QuoteData { .. } => "qsd",
            ServerMessage::QuoteCompleted { .. } => "quote_completed",
            ServerMessage::Other { name } => name,
        }
    }
}

/// Bars gathered from one or more updates (a first answer, then `request_more_data` pages with
/// negative indices, possibly overlapping), as one series ascending by time with no duplicates.
pub fn into_ascending(mut bars: Vec<IndexedBar>) -> Vec<Bar> {
    bars.sort_by_key(|b| b.bar.time);
    // A later update for the same time replaces the earlier one; keep the last of each run.
    let mut out: Vec<Bar> = Vec::with_capacity(bars.len());
    for b in bars {
        match out.last_mut() {
            Some(last) if last.time == b.bar.time => *last = b.bar,
            _ => out.push(b.bar),
        }
    }
    out
}
