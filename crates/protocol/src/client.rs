//! Messages a chart client sends: `{"m":"<name>","p":[...]}`.
//!
//! chartgate encodes them; the simulator decodes them, answering a call it cannot make sense of
//! with `critical_error` as the real feed does. Fields are owned strings because these messages
//! are small and few (five or so per chart).

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::json::to_ascii_string;

/// The symbol description inside `resolve_symbol`, sent as `={"adjustment":..,"symbol":..}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SymbolSpec {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub adjustment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub session: Option<String>,
    pub symbol: String,
}

impl SymbolSpec {
    /// Reads a symbol as clients write it in `resolve_symbol` and `quote_add_symbols`: a plain
    /// `EXCHANGE:TICKER`, or `=` and a JSON spec (`={"adjustment":"dividends","symbol":"NSE:TCS"}`,
    /// other keys such as `currency-id` ignored). `None` when the JSON spec is not one.
    pub fn parse(raw: &str) -> Option<SymbolSpec> {
        match raw.strip_prefix('=') {
            Some(spec) => serde_json::from_str(spec).ok(),
            None => Some(SymbolSpec {
                adjustment: None,
                session: None,
                symbol: raw.to_string(),
            }),
        }
    }
}

/// A client-to-server message.
#[derive(Clone, PartialEq, Eq)]
pub enum ClientMessage {
    SetAuthToken {
        token: String,
    },
    SetLocale {
        language: String,
        country: String,
    },
    ChartCreateSession {
        session: String,
    },
    ChartDeleteSession {
        session: String,
    },
    SwitchTimezone {
        session: String,
        timezone: String,
    },
    ResolveSymbol {
        session: String,
        symbol_id: String,
        spec: SymbolSpec,
    },
    CreateSeries {
        session: String,
        series_id: String,
        turnaround: String,
        symbol_id: String,
        resolution: String,
        count: u32,
        range: String,
    },
    ModifySeries {
        session: String,
        series_id: String,
        turnaround: String,
        symbol_id: String,
        resolution: String,
        range: String,
    },
    RequestMoreData {
        session: String,
        series_id: String,
        count: u32,
    },
    RemoveSeries {
        session: String,
        series_id: String,
    },
    QuoteCreateSession {
        session: String,
    },
    QuoteDeleteSession {
        session: String,
    },
    /// The fields the quote session's `qsd` packets are to carry.
    QuoteSetFields {
        session: String,
        fields: Vec<String>,
    },
    /// Symbols as the client writes them (`NSE:TCS` or `={"symbol":"NSE:TCS",...}`): the feed's
    /// `qsd` packets name each one by this exact text.
    QuoteAddSymbols {
        session: String,
        symbols: Vec<String>,
    },
    /// Symbols the client wants updated fast (already added ones, as the capture shows).
    QuoteFastSymbols {
        session: String,
        symbols: Vec<String>,
    },
    QuoteRemoveSymbols {
        session: String,
        symbols: Vec<String>,
    },
    /// Anything else (studies, tick marks): decoded only so it can be ignored.
    Other {
        name: String,
    },
}

/// Debug never shows the auth token.
impl fmt::Debug for ClientMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientMessage::SetAuthToken { .. } => f.write_str("SetAuthToken { token: <redacted> }"),
            ClientMessage::SetLocale { language, country } => {
                write!(f, "SetLocale({language}, {country})")
            }
            ClientMessage::ChartCreateSession { session } => {
                write!(f, "ChartCreateSession({session})")
            }
            ClientMessage::ChartDeleteSession { session } => {
                write!(f, "ChartDeleteSession({session})")
            }
            ClientMessage::SwitchTimezone { session, timezone } => {
                write!(f, "SwitchTimezone({session}, {timezone})")
            }
            ClientMessage::ResolveSymbol {
                session,
                symbol_id,
                spec,
            } => {
                write!(f, "ResolveSymbol({session}, {symbol_id}, {spec:?})")
            }
            ClientMessage::CreateSeries {
                session,
                series_id,
                turnaround,
                symbol_id,
                resolution,
                count,
                range,
            } => write!(
                f,
                "CreateSeries({session}, {series_id}, {turnaround}, {symbol_id}, {resolution}, {count}, {range:?})"
            ),
            ClientMessage::ModifySeries {
                session,
                series_id,
                turnaround,
                symbol_id,
                resolution,
                range,
            } => write!(
                f,
                "ModifySeries({session}, {series_id}, {turnaround}, {symbol_id}, {resolution}, {range:?})"
            ),
            ClientMessage::RequestMoreData {
                session,
                series_id,
                count,
            } => {
                write!(f, "RequestMoreData({session}, {series_id}, {count})")
            }
            ClientMessage::RemoveSeries { session, series_id } => {
                write!(f, "RemoveSeries({session}, {series_id})")
            }
            ClientMessage::QuoteCreateSession { session } => {
                write!(f, "QuoteCreateSession({session})")
            }
            ClientMessage::QuoteDeleteSession { session } => {
                write!(f, "QuoteDeleteSession({session})")
            }
            ClientMessage::QuoteSetFields { session, fields } => {
                write!(f, "QuoteSetFields({session}, {fields:?})")
            }
            ClientMessage::QuoteAddSymbols { session, symbols }
            | ClientMessage::QuoteFastSymbols { session, symbols }
            | ClientMessage::QuoteRemoveSymbols { session, symbols } => {
                write!(f, "{}({session}, {symbols:?})", self.name())
            }
            ClientMessage::Other { name } => write!(f, "Other({name})"),
        }
    }
}

/// Why a payload is not a well-formed client message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientDecodeError {
    #[error("payload is not a JSON message object")]
    NotAMessage,
    /// The method is known but its parameters are not what it takes; the feed answers this with
    /// `critical_error ["invalid parameters", <method>]`.
    #[error("invalid parameters for {method}")]
    InvalidParameters { method: String },
}

/// The ids chartgate's client gives a chart session's one symbol and one series, and the
/// turnaround its `create_series` asks for (the browser's own choices). Constant: each chart
/// session carries one series.
pub const SYMBOL_ID: &str = "sds_sym_1";
pub const SERIES_ID: &str = "sds_1";
pub const TURNAROUND: &str = "s1";

impl ClientMessage {
    /// The three calls that ask a new chart session for `count` bars of `symbol` at
    /// `resolution`, with split adjustment, as chartgate's client (and the browser) sends them
    /// in one message: `chart_create_session`, `resolve_symbol`, `create_series`.
    pub fn chart_series(
        session: &str,
        symbol: &str,
        resolution: &str,
        count: u32,
    ) -> [ClientMessage; 3] {
        [
            ClientMessage::ChartCreateSession {
                session: session.into(),
            },
            ClientMessage::ResolveSymbol {
                session: session.into(),
                symbol_id: SYMBOL_ID.into(),
                spec: SymbolSpec {
                    adjustment: Some("splits".into()),
                    session: None,
                    symbol: symbol.into(),
                },
            },
            ClientMessage::CreateSeries {
                session: session.into(),
                series_id: SERIES_ID.into(),
                turnaround: TURNAROUND.into(),
                symbol_id: SYMBOL_ID.into(),
                resolution: resolution.into(),
                count,
                range: String::new(),
            },
        ]
    }

    /// The method name on the wire.
    pub fn name(&self) -> &str {
        match self {
            ClientMessage::SetAuthToken { .. } => "set_auth_token",
            ClientMessage::SetLocale { .. } => "set_locale",
            ClientMessage::ChartCreateSession { .. } => "chart_create_session",
            ClientMessage::ChartDeleteSession { .. } => "chart_delete_session",
            ClientMessage::SwitchTimezone { .. } => "switch_timezone",
            ClientMessage::ResolveSymbol { .. } => "resolve_symbol",
            ClientMessage::CreateSeries { .. } => "create_series",
            ClientMessage::ModifySeries { .. } => "modify_series",
            ClientMessage::RequestMoreData { .. } => "request_more_data",
            ClientMessage::RemoveSeries { .. } => "remove_series",
            ClientMessage::QuoteCreateSession { .. } => "quote_create_session",
            ClientMessage::QuoteDeleteSession { .. } => "quote_delete_session",
            ClientMessage::QuoteSetFields { .. } => "quote_set_fields",
            ClientMessage::QuoteAddSymbols { .. } => "quote_add_symbols",
            ClientMessage::QuoteFastSymbols { .. } => "quote_fast_symbols",
            ClientMessage::QuoteRemoveSymbols { .. } => "quote_remove_symbols",
            ClientMessage::Other { name } => name,
        }
    }

    /// The JSON payload (to be framed with [`super::encode_packet`]), ASCII only.
    pub fn to_payload(&self) -> String {
        let p = match self {
            ClientMessage::SetAuthToken { token } => json!([token]),
            ClientMessage::SetLocale { language, country } => json!([language, country]),
            ClientMessage::ChartCreateSession { session } => json!([session, ""]),
            ClientMessage::ChartDeleteSession { session } => json!([session]),
            ClientMessage::SwitchTimezone { session, timezone } => json!([session, timezone]),
            ClientMessage::ResolveSymbol {
                session,
                symbol_id,
                spec,
            } => {
                json!([session, symbol_id, format!("={}", to_ascii_string(spec))])
            }
            ClientMessage::CreateSeries {
                session,
                series_id,
                turnaround,
                symbol_id,
                resolution,
                count,
                range,
            } => {
                json!([
                    session, series_id, turnaround, symbol_id, resolution, count, range
                ])
            }
            ClientMessage::ModifySeries {
                session,
                series_id,
                turnaround,
                symbol_id,
                resolution,
                range,
            } => {
                json!([session, series_id, turnaround, symbol_id, resolution, range])
            }
            ClientMessage::RequestMoreData {
                session,
                series_id,
                count,
            } => json!([session, series_id, count]),
            ClientMessage::RemoveSeries { session, series_id } => json!([session, series_id]),
            ClientMessage::QuoteCreateSession { session }
            | ClientMessage::QuoteDeleteSession { session } => json!([session]),
            ClientMessage::QuoteSetFields {
                session,
                fields: list,
            }
            | ClientMessage::QuoteAddSymbols {
                session,
                symbols: list,
            }
            | ClientMessage::QuoteFastSymbols {
                session,
                symbols: list,
            }
            | ClientMessage::QuoteRemoveSymbols {
                session,
                symbols: list,
            } => {
                let mut p = Vec::with_capacity(list.len() + 1);
                p.push(session);
                p.extend(list);
                json!(p)
            }
            ClientMessage::Other { .. } => json!([]),
        };
        to_ascii_string(&json!({ "m": self.name(), "p": p }))
    }

    /// Decodes one JSON payload.
    pub fn from_payload(payload: &str) -> Result<ClientMessage, ClientDecodeError> {
        #[derive(Deserialize)]
        struct Envelope<'a> {
            #[serde(borrow)]
            m: Cow<'a, str>,
            #[serde(default)]
            p: Vec<Value>,
        }
        let env: Envelope<'_> =
            serde_json::from_str(payload).map_err(|_| ClientDecodeError::NotAMessage)?;
        let method = env.m.as_ref();
        let invalid = || ClientDecodeError::InvalidParameters {
            method: method.to_string(),
        };
        let p = &env.p;
        let s = |i: usize| {
            p.get(i)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(invalid)
        };
        // Parameters `1..` as strings: a quote session's fields or symbols. In symbol lists, an
        // object (the `{"flags":["force_permission"]}` some clients append) is skipped.
        let list = |skip_objects: bool| {
            let mut out = Vec::with_capacity(p.len().saturating_sub(1));
            for value in p.iter().skip(1) {
                match value {
                    Value::String(text) => out.push(text.clone()),
                    Value::Object(_) if skip_objects => {}
                    _ => return Err(invalid()),
                }
            }
            Ok(out)
        };
        // A trailing text parameter some clients leave out (a series' range): empty when absent.
        let optional_text = |i: usize| {
            p.get(i)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let n = |i: usize| {
            p.get(i)
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(invalid)
        };
        Ok(match method {
            "set_auth_token" => ClientMessage::SetAuthToken { token: s(0)? },
            "set_locale" => ClientMessage::SetLocale {
                language: s(0)?,
                country: s(1)?,
            },
            "chart_create_session" => ClientMessage::ChartCreateSession { session: s(0)? },
            "chart_delete_session" => ClientMessage::ChartDeleteSession { session: s(0)? },
            "switch_timezone" => ClientMessage::SwitchTimezone {
                session: s(0)?,
                timezone: s(1)?,
            },
            "resolve_symbol" => ClientMessage::ResolveSymbol {
                session: s(0)?,
                symbol_id: s(1)?,
                spec: SymbolSpec::parse(&s(2)?).ok_or_else(invalid)?,
            },
            "create_series" => ClientMessage::CreateSeries {
                session: s(0)?,
                series_id: s(1)?,
                turnaround: s(2)?,
                symbol_id: s(3)?,
                resolution: s(4)?,
                count: n(5)?,
                range: optional_text(6),
            },
            "modify_series" => ClientMessage::ModifySeries {
                session: s(0)?,
                series_id: s(1)?,
                turnaround: s(2)?,
                symbol_id: s(3)?,
                resolution: s(4)?,
                range: optional_text(5),
            },
            "request_more_data" => ClientMessage::RequestMoreData {
                session: s(0)?,
                series_id: s(1)?,
                count: n(2)?,
            },
            "remove_series" => ClientMessage::RemoveSeries {
                session: s(0)?,
                series_id: s(1)?,
            },
            "quote_create_session" => ClientMessage::QuoteCreateSession { session: s(0)? },
            "quote_delete_session" => ClientMessage::QuoteDeleteSession { session: s(0)? },
            "quote_set_fields" => ClientMessage::QuoteSetFields {
                session: s(0)?,
                fields: list(false)?,
            },
            "quote_add_symbols" => ClientMessage::QuoteAddSymbols {
                session: s(0)?,
                symbols: list(true)?,
            },
            "quote_fast_symbols" => ClientMessage::QuoteFastSymbols {
                session: s(0)?,
                symbols: list(true)?,
            },
            "quote_remove_symbols" => ClientMessage::QuoteRemoveSymbols {
                session: s(0)?,
                symbols: list(true)?,
            },
            other => ClientMessage::Other {
                name: other.to_string(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_the_capture() {
        let msg = ClientMessage::CreateSeries {
            session: "cs_2iRcv6K6V6wl".into(),
            series_id: "sds_1".into(),
            turnaround: "s1".into(),
            symbol_id: "sds_sym_1".into(),
            resolution: "1D".into(),
            count: 300,
            range: String::new(),
        };
        assert_eq!(
            msg.to_payload(),
            r#"{"m":"create_series","p":["cs_2iRcv6K6V6wl","sds_1","s1","sds_sym_1","1D",300,""]}"#
        );
        let resolve = ClientMessage::ResolveSymbol {
            session: "cs_1".into(),
            symbol_id: "sds_sym_1".into(),
            spec: SymbolSpec {
                adjustment: Some("splits".into()),
                session: None,
                symbol: "NSE:TCS".into(),
            },
        };
        assert_eq!(
            resolve.to_payload(),
            r#"{"m":"resolve_symbol","p":["cs_1","sds_sym_1","={\"adjustment\":\"splits\",\"symbol\":\"NSE:TCS\"}"]}"#
        );
        assert_eq!(
            ClientMessage::from_payload(&resolve.to_payload()).unwrap(),
            resolve
        );
    }

    #[test]
    fn bad_parameters_name_the_method_and_unknown_methods_pass() {
        assert_eq!(
            ClientMessage::from_payload(r#"{"m":"create_series","p":["cs_1"]}"#),
            Err(ClientDecodeError::InvalidParameters {
                method: "create_series".into()
            })
        );
        assert_eq!(
            ClientMessage::from_payload(r#"{"m":"quote_add_symbols","p":["qs",1]}"#),
            Err(ClientDecodeError::InvalidParameters {
                method: "quote_add_symbols".into()
            })
        );
        assert_eq!(
            ClientMessage::from_payload(r#"{"m":"create_study","p":["cs",1]}"#).unwrap(),
            ClientMessage::Other {
                name: "create_study".into()
            }
        );
        assert_eq!(
            ClientMessage::from_payload("[1]"),
            Err(ClientDecodeError::NotAMessage)
        );
    }

    #[test]
    fn debug_redacts_the_token() {
        let msg = ClientMessage::SetAuthToken {
            token: "eyJsecret".into(),
        };
        assert!(!format!("{msg:?}").contains("eyJ"));
    }

    /// The ids and the series' parameters are the browser's, as in the real capture
    /// (`create_series ["cs_...","sds_1","s1","sds_sym_1","1D",300,""]`).
    #[test]
    fn a_chart_series_asks_as_the_browser_does() {
        let [create, resolve, series] = ClientMessage::chart_series("cs_x", "NSE:TCS", "1D", 300);
        assert_eq!(
            create.to_payload(),
            r#"{"m":"chart_create_session","p":["cs_x",""]}"#
        );
        assert!(
            resolve
                .to_payload()
                .starts_with(r#"{"m":"resolve_symbol","p":["cs_x","sds_sym_1","#),
            "{}",
            resolve.to_payload()
        );
        assert_eq!(
            series.to_payload(),
            r#"{"m":"create_series","p":["cs_x","sds_1","s1","sds_sym_1","1D",300,""]}"#
        );
    }
}
