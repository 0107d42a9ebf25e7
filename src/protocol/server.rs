//! Messages the feed sends, decoded by borrowing from the message text.
//!
//! The 118 KB `timescale_update` of a 300-bar chart is the hot path: its bars are read straight into
//! [`IndexedBar`]s through a typed visitor (no `serde_json::Value`), and study entries that share
//! the message are skipped without being built. Everything this module does not use is kept as
//! [`ServerMessage::Other`] so callers can ignore it.
//!
//! The encoders produce the same shapes as the capture's `recv` side (field names, nesting, the
//! tick-mark element of `timescale_update`, `t`/`t_ms` stamps); the simulator answers with them.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::json::to_ascii_string;
use crate::domain::{Bar, ChartMetadata};

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

impl SymbolInfo {
    pub fn to_metadata(&self) -> ChartMetadata {
        ChartMetadata {
            name: self.name.clone(),
            exchange: self.exchange.clone(),
            description: self.description.clone(),
            currency_code: self.currency_code.clone(),
            pricescale: self.pricescale,
            timezone: self.timezone.clone(),
            kind: self.kind.clone(),
        }
    }
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

    /// Encodes the message as the feed would, stamped with `now_ms` (Unix milliseconds) where the
    /// feed stamps it. `Other` cannot be encoded and gives an empty object.
    pub fn to_payload(&self, now_ms: i64) -> String {
        let stamped = |m: &str, p: Value| {
            to_ascii_string(&json!({"m": m, "p": p, "t": now_ms / 1000, "t_ms": now_ms}))
        };
        match self {
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
                encode_series_update(self.name(), session, &parts, now_ms)
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
            ServerMessage::Other { .. } => "{}".to_string(),
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
        push_float(&mut out, bar.time as f64);
        for value in [bar.open, bar.high, bar.low, bar.close]
            .into_iter()
            .chain(bar.volume)
        {
            out.push(',');
            push_float(&mut out, value);
        }
        out.push_str("]}");
    }
    out.push(']');
    out
}

/// Writes a float as JSON the way the feed does (`361.5`, `1728272700.0`).
fn push_float(out: &mut String, value: f64) {
    if !value.is_finite() {
        out.push_str("null");
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        out.push_str(itoa::Buffer::new().format(value as i64));
        out.push_str(".0");
    } else {
        out.push_str(ryu::Buffer::new().format_finite(value));
    }
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
        push_float(&mut out, bar.time as f64);
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
