//! Messages the feed sends, decoded by borrowing from the message text.
//!
//! The 118 KB `timescale_update` of a 300-bar chart is the hot path: its bars are read straight into
//! [`IndexedBar`]s through a typed visitor (no `serde_json::Value`), and study entries that share
//! the message are skipped without being built. Everything this module does not use is kept as
//! [`ServerMessage::Other`] so callers can ignore it.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::BTreeMap;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

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

/// A string borrowed from the message text when it has no escapes (serde's own `Cow` impl always
/// copies), ordered by its text so it can key the series map.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Text<'a>(Cow<'a, str>);

impl<'a> Deserialize<'a> for Text<'a> {
    fn deserialize<D: Deserializer<'a>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'a> Visitor<'a> for V {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'a str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The series map of a `timescale_update` or `du` (`{"sds_1": {"s": [...], "t": "s1"}, ...}`),
/// ascending by series id, series without `s` left out.
fn series_of<'a>(
    map: BTreeMap<Text<'a>, SeriesPayload<'a>>,
) -> Result<Vec<SeriesData<'a>>, String> {
    let mut series = Vec::with_capacity(map.len());
    for (series_id, payload) in map {
        let Some(bars) = payload.s else { continue };
        if let Some(short) = bars.short {
            return Err(short);
        }
        series.push(SeriesData {
            series_id: series_id.0,
            turnaround: payload.t,
            bars: bars.bars,
        });
    }
    Ok(series)
}

/// What `p` became while the envelope was read.
// Lives on the stack for one decode and is moved once; boxing the message would cost an
// allocation per packet.
#[allow(clippy::large_enum_variant)]
enum Params<'a> {
    /// Read straight into the message: `m` came first and names a method read here.
    Message(ServerMessage<'a>),
    /// Skipped: a method this module does not read.
    Skipped,
    /// Kept as raw values, for the two-pass path: `p` came before `m` (the feed never does that),
    /// or the method reads its parameters as text (`critical_error`, `protocol_error`).
    Raw(Vec<&'a RawValue>),
}

/// The envelope `{"m": method, "p": [...], ...}` read in one pass: the feed writes `m` before
/// `p`, so by the time `p` comes its method is known and its parameters are read into the message
/// straight from the text (the bars of a `timescale_update` exactly once). Parameter errors are
/// reported through `outcome`, so that `decode` can tell them from a packet that is not JSON.
struct EnvelopeSeed<'f, 'a> {
    outcome: &'f Cell<Option<Early<'a>>>,
}

/// Why reading stopped before the end of the packet, told to `decode` beside serde's error.
// One per decode, on the stack, like `Params`.
#[allow(clippy::large_enum_variant)]
enum Early<'a> {
    /// The parameters have the wrong shape.
    Failed(ServerError),
    /// The message is complete and the rest of the packet is not needed (a series update's tick
    /// marks).
    Finished(ServerMessage<'a>),
}

struct Envelope<'a> {
    method: Option<Cow<'a, str>>,
    params: Params<'a>,
}

impl<'a> DeserializeSeed<'a> for EnvelopeSeed<'_, 'a> {
    type Value = Envelope<'a>;
    fn deserialize<D: Deserializer<'a>>(self, d: D) -> Result<Envelope<'a>, D::Error> {
        // As a struct, like the derived envelope before it: an object, or an array `[m, p]`.
        d.deserialize_struct("Envelope", &["m", "p"], self)
    }
}

/// The envelope's keys; every other key is skipped.
enum Key {
    M,
    P,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "m" => Key::M,
                    "p" => Key::P,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

impl<'a> EnvelopeSeed<'_, 'a> {
    /// `p`, read according to `method` when it is already known.
    fn params<E>(
        &self,
        method: Option<&Option<Text<'a>>>,
        next: impl FnOnce(Option<ParamsSeed<'_, 'a>>) -> Result<Option<Params<'a>>, E>,
    ) -> Result<Params<'a>, E> {
        let seed = match method {
            Some(Some(Text(method))) => Some(ParamsSeed {
                method,
                outcome: self.outcome,
            }),
            _ => None,
        };
        // `p` absent or null reads as no parameters, as before.
        Ok(next(seed)?.unwrap_or(Params::Raw(Vec::new())))
    }
}

impl<'a> Visitor<'a> for EnvelopeSeed<'_, 'a> {
    type Value = Envelope<'a>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a feed message")
    }

    fn visit_map<A: MapAccess<'a>>(self, mut map: A) -> Result<Envelope<'a>, A::Error> {
        let mut method: Option<Option<Text<'a>>> = None;
        let mut params: Option<Params<'a>> = None;
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::M => {
                    if method.is_some() {
                        return Err(de::Error::duplicate_field("m"));
                    }
                    method = Some(map.next_value()?);
                }
                Key::P => {
                    if params.is_some() {
                        return Err(de::Error::duplicate_field("p"));
                    }
                    params = Some(self.params(method.as_ref(), |seed| {
                        match seed {
                            Some(seed) => map.next_value_seed(seed),
                            None => Ok(map
                                .next_value::<Option<Vec<&'a RawValue>>>()?
                                .map(Params::Raw)),
                        }
                    })?);
                }
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Envelope {
            method: method.flatten().map(|m| m.0),
            params: params.unwrap_or(Params::Raw(Vec::new())),
        })
    }

    /// `[m, p]`: serde's derived structs read arrays too, and the two-field envelope did.
    fn visit_seq<A: SeqAccess<'a>>(self, mut seq: A) -> Result<Envelope<'a>, A::Error> {
        let method: Option<Option<Text<'a>>> = Some(seq.next_element()?.flatten());
        let params = self.params(method.as_ref(), |seed| match seed {
            Some(seed) => Ok(seq.next_element_seed(seed)?.flatten()),
            None => Ok(seq
                .next_element::<Option<Vec<&'a RawValue>>>()?
                .flatten()
                .map(Params::Raw)),
        })?;
        Ok(Envelope {
            method: method.flatten().map(|m| m.0),
            params,
        })
    }
}

/// `p` of a method known beforehand. `None` for `null`.
struct ParamsSeed<'m, 'a> {
    method: &'m str,
    outcome: &'m Cell<Option<Early<'a>>>,
}

impl<'a> DeserializeSeed<'a> for ParamsSeed<'_, 'a> {
    type Value = Option<Params<'a>>;
    fn deserialize<D: Deserializer<'a>>(self, d: D) -> Result<Option<Params<'a>>, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'a> Visitor<'a> for ParamsSeed<'_, 'a> {
    type Value = Option<Params<'a>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of parameters")
    }

    fn visit_none<E: de::Error>(self) -> Result<Option<Params<'a>>, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Option<Params<'a>>, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'a>>(self, d: D) -> Result<Option<Params<'a>>, D::Error> {
        match self.method {
            "critical_error" | "protocol_error" => {
                <Vec<&'a RawValue>>::deserialize(d).map(|raw| Some(Params::Raw(raw)))
            }
            "series_loading" | "symbol_resolved" | "timescale_update" | "du"
            | "series_completed" | "series_timeframe" | "symbol_error" | "series_error" => {
                d.deserialize_seq(self)
            }
            _ => d
                .deserialize_seq(SkipParams)
                .map(|()| Some(Params::Skipped)),
        }
    }

    fn visit_seq<A: SeqAccess<'a>>(self, mut seq: A) -> Result<Option<Params<'a>>, A::Error> {
        let mut p = PositionalParams {
            seq: &mut seq,
            method: self.method,
            outcome: self.outcome,
            next: 0,
        };
        let message = match self.method {
            "series_loading" => ServerMessage::SeriesLoading {
                session: p.text()?,
                series_id: p.text()?,
                turnaround: p.text()?,
            },
            "symbol_resolved" => ServerMessage::SymbolResolved {
                session: p.text()?,
                symbol_id: p.text()?,
                info: p.value("missing symbol info")?,
            },
            "timescale_update" | "du" => {
                let session = p.text()?;
                let map: BTreeMap<Text<'a>, SeriesPayload<'a>> = p.value("missing series map")?;
                let series = series_of(map).map_err(|detail| p.fail(detail))?;
                let message = if self.method == "du" {
                    ServerMessage::DataUpdate { session, series }
                } else {
                    ServerMessage::TimescaleUpdate { session, series }
                };
                // The rest of the packet is not read: after the series map comes the tick-mark
                // element (a third of a 300-bar answer's text, all numbers) and the envelope's
                // `t` and `t_ms`, none of which chartgate uses. Stopping is an error to serde;
                // `decode` takes the message from `outcome` instead.
                self.outcome.set(Some(Early::Finished(message)));
                return Err(de::Error::custom("message complete"));
            }
            "series_completed" => ServerMessage::SeriesCompleted {
                session: p.text()?,
                series_id: p.text()?,
                status: p.text()?,
                turnaround: p.text()?,
            },
            "series_timeframe" => ServerMessage::SeriesTimeframe {
                session: p.text()?,
                series_id: p.text()?,
                turnaround: p.text()?,
            },
            "symbol_error" => ServerMessage::SymbolError {
                session: p.text()?,
                symbol_id: p.text()?,
                reason: p.text()?,
            },
            "series_error" => ServerMessage::SeriesError {
                session: p.text()?,
                series_id: p.text()?,
                turnaround: p.text()?,
                reason: p.text()?,
            },
            _ => {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                return Ok(Some(Params::Skipped));
            }
        };
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Some(Params::Message(message)))
    }
}

/// Reads the parameters of a known method one after the other, naming the one at fault.
struct PositionalParams<'s, 'm, 'a, A> {
    seq: &'s mut A,
    method: &'m str,
    outcome: &'m Cell<Option<Early<'a>>>,
    next: usize,
}

impl<'a, A: SeqAccess<'a>> PositionalParams<'_, '_, 'a, A> {
    /// Records why the parameters are bad and gives the error that stops reading.
    fn fail(&self, detail: String) -> A::Error {
        let error = de::Error::custom(&detail);
        self.outcome
            .set(Some(Early::Failed(ServerError::BadParameters {
                method: self.method.to_string(),
                detail,
            })));
        error
    }

    fn text(&mut self) -> Result<Cow<'a, str>, A::Error> {
        let i = self.next;
        self.next += 1;
        match self.seq.next_element::<Text<'a>>() {
            Ok(Some(text)) => Ok(text.0),
            Ok(None) => Err(self.fail(format!("missing parameter {i}"))),
            Err(e) => Err(self.fail(format!("parameter {i}: {e}"))),
        }
    }

    fn value<T: Deserialize<'a>>(&mut self, missing: &str) -> Result<T, A::Error> {
        self.next += 1;
        match self.seq.next_element::<T>() {
            Ok(Some(value)) => Ok(value),
            Ok(None) => Err(self.fail(missing.to_string())),
            Err(e) => Err(self.fail(e.to_string())),
        }
    }
}

/// The parameters of a method this module does not read: checked to be an array, not kept.
struct SkipParams;

impl<'a> Visitor<'a> for SkipParams {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of parameters")
    }
    fn visit_seq<A: SeqAccess<'a>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

impl<'a> ServerMessage<'a> {
    /// Decodes one JSON packet. A series update (`timescale_update`, `du`) written the feed's way
    /// is read by the fast path in `protocol/series_scan.rs`; anything else in one serde pass over
    /// the text when `m` comes before `p` (as the feed always writes it). Either way a series
    /// update is read only up to the end of its series map: what follows is neither parsed nor
    /// checked.
    pub fn decode(payload: &'a str) -> Result<ServerMessage<'a>, ServerError> {
        if let Some(message) = super::series_scan::series_update(payload) {
            return Ok(message);
        }
        Self::decode_with_serde(payload)
    }

    /// [`ServerMessage::decode`] without the fast path for series updates.
    pub(super) fn decode_with_serde(payload: &'a str) -> Result<ServerMessage<'a>, ServerError> {
        let outcome = Cell::new(None);
        let mut de = serde_json::Deserializer::from_str(payload);
        let read = EnvelopeSeed { outcome: &outcome }
            .deserialize(&mut de)
            .and_then(|env| de.end().map(|()| env));
        let env = match read {
            Ok(env) => env,
            Err(e) => {
                return Err(match outcome.take() {
                    Some(Early::Finished(message)) => return Ok(message),
                    // Parameters of the wrong shape, in a packet that is JSON throughout (a
                    // syntax error anywhere, even after them, makes it not JSON).
                    Some(Early::Failed(bad))
                        if e.classify() == serde_json::error::Category::Data
                            && serde_json::from_str::<IgnoredAny>(payload).is_ok() =>
                    {
                        bad
                    }
                    _ => ServerError::NotJson(
                        serde_json::from_str::<IgnoredAny>(payload)
                            .err()
                            .unwrap_or(e)
                            .to_string(),
                    ),
                });
            }
        };
        let Some(method) = env.method else {
            let hello: Hello =
                serde_json::from_str(payload).map_err(|e| ServerError::NotJson(e.to_string()))?;
            return Ok(ServerMessage::Hello(hello));
        };
        match env.params {
            Params::Message(message) => Ok(message),
            Params::Skipped => Ok(ServerMessage::Other { name: method }),
            Params::Raw(p) => Self::from_raw_params(method, &p),
        }
    }

    /// The two-pass path: parameters captured as raw values, then read one by one.
    fn from_raw_params(
        method: Cow<'a, str>,
        p: &[&'a RawValue],
    ) -> Result<ServerMessage<'a>, ServerError> {
        let bad = |detail: String| ServerError::BadParameters {
            method: method.to_string(),
            detail,
        };
        let s = |i: usize| -> Result<Cow<'a, str>, ServerError> {
            let raw = p
                .get(i)
                .ok_or_else(|| bad(format!("missing parameter {i}")))?;
            Text::deserialize(&mut serde_json::Deserializer::from_str(raw.get()))
                .map(|t| t.0)
                .map_err(|e| bad(format!("parameter {i}: {e}")))
        };
        let texts = |from: usize| -> Vec<String> {
            p.iter()
                .skip(from)
                .map(|raw| match serde_json::from_str::<Value>(raw.get()) {
                    Ok(Value::String(text)) => text,
                    _ => raw.get().to_string(),
                })
                .collect()
        };
        Ok(match method.as_ref() {
            "series_loading" => ServerMessage::SeriesLoading {
                session: s(0)?,
                series_id: s(1)?,
                turnaround: s(2)?,
            },
            "symbol_resolved" => {
                let raw = p.get(2).ok_or_else(|| bad("missing symbol info".into()))?;
                let info = serde_json::from_str(raw.get()).map_err(|e| bad(e.to_string()))?;
                ServerMessage::SymbolResolved {
                    session: s(0)?,
                    symbol_id: s(1)?,
                    info,
                }
            }
            "timescale_update" | "du" => {
                let raw = p.get(1).ok_or_else(|| bad("missing series map".into()))?;
                let map: BTreeMap<Text<'a>, SeriesPayload<'a>> =
                    serde_json::from_str(raw.get()).map_err(|e| bad(e.to_string()))?;
                let series = series_of(map).map_err(bad)?;
                if method == "du" {
                    ServerMessage::DataUpdate {
                        session: s(0)?,
                        series,
                    }
                } else {
                    ServerMessage::TimescaleUpdate {
                        session: s(0)?,
                        series,
                    }
                }
            }
            "series_completed" => ServerMessage::SeriesCompleted {
                session: s(0)?,
                series_id: s(1)?,
                status: s(2)?,
                turnaround: s(3)?,
            },
            "series_timeframe" => ServerMessage::SeriesTimeframe {
                session: s(0)?,
                series_id: s(1)?,
                turnaround: s(2)?,
            },
            "symbol_error" => ServerMessage::SymbolError {
                session: s(0)?,
                symbol_id: s(1)?,
                reason: s(2)?,
            },
            "series_error" => ServerMessage::SeriesError {
                session: s(0)?,
                series_id: s(1)?,
                turnaround: s(2)?,
                reason: s(3)?,
            },
            "critical_error" => {
                let mut all = texts(0);
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
                reason: texts(0).join(": "),
            },
            _ => ServerMessage::Other { name: method },
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
