//! Request parameters, parsed at the boundary into domain types: a stream request (query string
//! or JSON body) and a chart request. Every refusal names the parameter and what it accepts.
//!
//! Nothing is skipped silently: an empty entry in a list (`1D,,1W`, `["NSE:TCS", ""]`) and a query
//! parameter the route does not take (`barsformat`) are refused, so a client learns of its typo
//! instead of getting something else than it asked for. Every route also takes `access_token`
//! (the API token may come in the query, SPEC 3) and `_`, the cache-buster some HTTP clients add.

use serde::Deserialize;

use super::error::ApiError;
use crate::domain::{BarCount, BarsFormat, Resolution, Symbol, truncate_for_message};

/// Query-string pairs, kept in order so a parameter given twice is caught rather than one copy
/// silently winning.
#[derive(Debug, Default)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub fn parse(query_string: &str) -> Result<Query, ApiError> {
        serde_urlencoded::from_str(query_string)
            .map(|pairs| Query { pairs })
            .map_err(|_| {
                ApiError::bad_request(
                    "invalid_query",
                    "the query string is not valid URL encoding",
                )
            })
    }

    /// Refuses a parameter that is not in `known` (nor one every route takes), naming it and
    /// listing those the route takes.
    pub fn only(&self, known: &[&str]) -> Result<&Self, ApiError> {
        let unknown = self
            .pairs
            .iter()
            .map(|(k, _)| k.as_str())
            .find(|k| !known.contains(k) && !EVERY_ROUTE.contains(k));
        match unknown {
            None => Ok(self),
            Some(name) => Err(ApiError::bad_request(
                "unknown_parameter",
                format!(
                    "unknown parameter {:?}; this route takes {} (and access_token)",
                    truncate_for_message(name),
                    known.join(", ")
                ),
            )),
        }
    }

    /// The value of `name`, if given once; an error if given more than once.
    pub fn get(&self, name: &str) -> Result<Option<&str>, ApiError> {
        let mut values = self
            .pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str());
        let first = values.next();
        if values.next().is_some() {
            return Err(ApiError::bad_request(
                "duplicate_parameter",
                format!("parameter {name} is given more than once; give it once"),
            ));
        }
        Ok(first)
    }
}

/// Query parameters every route takes besides its own: the API token, and `_`, which jQuery's
/// `cache: false` and others add with a timestamp to defeat caches.
const EVERY_ROUTE: [&str; 2] = ["access_token", "_"];

/// The query parameters of the stream.
const STREAM_PARAMS: [&str; 8] = [
    "formula",
    "symbols",
    "resolutions",
    "bars",
    "barsFormat",
    "lastEventId",
    "live",
    "quotes",
];

/// The query parameters of `/api/chart-data`.
const CHART_PARAMS: [&str; 4] = ["symbol", "resolution", "bars", "barsFormat"];

/// Where a stream's symbols come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SymbolSource {
    Formula(String),
    Symbols(Vec<Symbol>),
}

/// A validated request for the formula stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRequest {
    pub source: SymbolSource,
    pub resolutions: Vec<Resolution>,
    pub bars: BarCount,
    pub format: BarsFormat,
    /// The `lastEventId` parameter; the `Last-Event-ID` header is read by the handler.
    pub last_event_id: Option<String>,
    /// `live=true`: after `complete`, follow every chart delivered (SPEC 3.5).
    pub live: bool,
    /// `quotes=true` (with `live`): follow each stock's quote too.
    pub quotes: bool,
}

/// A boolean query parameter: exactly `true` or `false`.
fn flag(name: &str, value: Option<&str>) -> Result<bool, ApiError> {
    match value {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ApiError::bad_request(
            "invalid_parameter",
            format!(
                "{name} must be true or false, not {:?}",
                truncate_for_message(other)
            ),
        )),
    }
}

/// A list given as a JSON array or as one comma-separated string.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ListParam {
    One(String),
    Many(Vec<String>),
}

impl ListParam {
    /// The list as one comma-separated string; an empty string in an array is refused (in a
    /// string, an empty entry is found when the list is parsed).
    fn joined(self, name: &str) -> Result<String, ApiError> {
        match self {
            ListParam::One(s) => Ok(s),
            ListParam::Many(items) => {
                if let Some(n) = items.iter().position(|i| i.trim().is_empty()) {
                    return Err(empty_entry(name, n, items.len()));
                }
                Ok(items.join(","))
            }
        }
    }
}

/// The refusal of an empty entry (0-based `index`) in list `name` of `count` entries.
fn empty_entry(name: &str, index: usize, count: usize) -> ApiError {
    let code = if name == "resolutions" {
        "invalid_resolution"
    } else {
        "invalid_symbol"
    };
    ApiError::bad_request(
        code,
        format!(
            "{name} has an empty entry (entry {} of {count}); remove it or the extra comma",
            index + 1
        ),
    )
}

/// The trimmed entries of a comma-separated list: `None` when there are none at all, an error
/// naming the first empty one otherwise.
fn entries<'a>(list: &'a str, name: &str) -> Result<Option<Vec<&'a str>>, ApiError> {
    let items: Vec<&str> = list.split(',').map(str::trim).collect();
    if items.iter().all(|s| s.is_empty()) {
        return Ok(None);
    }
    match items.iter().position(|s| s.is_empty()) {
        Some(n) => Err(empty_entry(name, n, items.len())),
        None => Ok(Some(items)),
    }
}

/// A number given as a JSON number or a string.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum NumberParam {
    Number(u64),
    Text(String),
}

/// The JSON body of `POST /api/formula-results-with-charts`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StreamBody {
    pub formula_id: Option<String>,
    pub symbols: Option<ListParam>,
    pub resolutions: Option<ListParam>,
    pub bars_count: Option<NumberParam>,
    pub bars_format: Option<String>,
    pub last_event_id: Option<String>,
    pub live: Option<bool>,
    pub quotes: Option<bool>,
}

/// What a stream request asks for besides its charts.
struct Extras<'a> {
    last_event_id: Option<&'a str>,
    live: bool,
    quotes: bool,
}

const DEFAULT_RESOLUTIONS: &str = "1W,1D";

impl StreamRequest {
    pub fn from_query(query: &Query, max_symbols: usize) -> Result<Self, ApiError> {
        let query = query.only(&STREAM_PARAMS)?;
        Self::build(
            query.get("formula")?,
            query.get("symbols")?,
            query.get("resolutions")?,
            query.get("bars")?,
            query.get("barsFormat")?,
            Extras {
                last_event_id: query.get("lastEventId")?,
                live: flag("live", query.get("live")?)?,
                quotes: flag("quotes", query.get("quotes")?)?,
            },
            max_symbols,
        )
    }

    pub fn from_body(body: StreamBody, max_symbols: usize) -> Result<Self, ApiError> {
        let symbols = body.symbols.map(|l| l.joined("symbols")).transpose()?;
        let resolutions = body
            .resolutions
            .map(|l| l.joined("resolutions"))
            .transpose()?;
        let bars = body.bars_count.map(|b| match b {
            NumberParam::Number(n) => n.to_string(),
            NumberParam::Text(t) => t,
        });
        Self::build(
            body.formula_id.as_deref(),
            symbols.as_deref(),
            resolutions.as_deref(),
            bars.as_deref(),
            body.bars_format.as_deref(),
            Extras {
                last_event_id: body.last_event_id.as_deref(),
                live: body.live.unwrap_or(false),
                quotes: body.quotes.unwrap_or(false),
            },
            max_symbols,
        )
    }

    fn build(
        formula: Option<&str>,
        symbols: Option<&str>,
        resolutions: Option<&str>,
        bars: Option<&str>,
        format: Option<&str>,
        extras: Extras<'_>,
        max_symbols: usize,
    ) -> Result<Self, ApiError> {
        if extras.quotes && !extras.live {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                "quotes=true needs live=true: quotes are followed live, after the history",
            ));
        }
        let source = match (formula.map(str::trim), symbols) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "conflicting_parameters",
                    "give either formula or symbols, not both",
                ));
            }
            (None, None) => {
                return Err(ApiError::bad_request(
                    "missing_parameter",
                    "give formula=<id> (see /api/formulas) or symbols=<comma-separated list>",
                ));
            }
            (Some(""), None) => {
                return Err(ApiError::bad_request(
                    "missing_parameter",
                    "formula is empty",
                ));
            }
            (Some(id), None) => SymbolSource::Formula(id.to_string()),
            (None, Some(list)) => SymbolSource::Symbols(parse_symbols(list, max_symbols)?),
        };
        Ok(StreamRequest {
            source,
            resolutions: parse_resolutions(resolutions.unwrap_or(DEFAULT_RESOLUTIONS))?,
            bars: bars.map(str::parse).transpose()?.unwrap_or_default(),
            format: format.map(str::parse).transpose()?.unwrap_or_default(),
            last_event_id: extras.last_event_id.map(str::to_string),
            live: extras.live,
            quotes: extras.quotes,
        })
    }
}

/// A comma-separated symbol list: trimmed, duplicates dropped (first wins); an empty entry is
/// refused.
pub fn parse_symbols(list: &str, max: usize) -> Result<Vec<Symbol>, ApiError> {
    let Some(items) = entries(list, "symbols")? else {
        return Err(ApiError::bad_request(
            "missing_parameter",
            "symbols is empty",
        ));
    };
    if items.len() > max {
        return Err(ApiError::bad_request(
            "too_many_symbols",
            format!(
                "{} symbols requested; at most {max} per request (server.max_symbols_per_request)",
                items.len()
            ),
        ));
    }
    let mut symbols: Vec<Symbol> = Vec::with_capacity(items.len());
    for item in items {
        let symbol: Symbol = item.parse()?;
        if !symbols.contains(&symbol) {
            symbols.push(symbol);
        }
    }
    Ok(symbols)
}

/// A comma-separated resolution list, duplicates dropped; an empty entry is refused.
pub fn parse_resolutions(list: &str) -> Result<Vec<Resolution>, ApiError> {
    let Some(items) = entries(list, "resolutions")? else {
        return Err(ApiError::bad_request(
            "invalid_resolution",
            "resolutions is empty",
        ));
    };
    let mut out: Vec<Resolution> = Vec::with_capacity(items.len());
    for item in items {
        let resolution: Resolution = item.parse()?;
        if !out.contains(&resolution) {
            out.push(resolution);
        }
    }
    Ok(out)
}

/// A validated `GET /api/chart-data` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChartRequest {
    pub symbol: Symbol,
    pub resolution: Resolution,
    pub bars: BarCount,
    pub format: BarsFormat,
}

impl ChartRequest {
    pub fn from_query(query: &Query) -> Result<Self, ApiError> {
        let query = query.only(&CHART_PARAMS)?;
        let symbol = query.get("symbol")?.ok_or_else(|| {
            ApiError::bad_request("missing_parameter", "give symbol=<EXCHANGE:TICKER>")
        })?;
        Ok(ChartRequest {
            symbol: symbol.parse()?,
            resolution: query
                .get("resolution")?
                .map(str::parse)
                .transpose()?
                .unwrap_or(Resolution::Day),
            bars: query
                .get("bars")?
                .map(str::parse)
                .transpose()?
                .unwrap_or_default(),
            format: query
                .get("barsFormat")?
                .map(str::parse)
                .transpose()?
                .unwrap_or_default(),
        })
    }
}

/// The `formula` parameter of `/api/formula-results`.
pub fn formula_param(query: &Query) -> Result<String, ApiError> {
    match query.only(&["formula"])?.get("formula")?.map(str::trim) {
        Some(id) if !id.is_empty() => Ok(truncate_for_message(id)),
        _ => Err(ApiError::bad_request(
            "missing_parameter",
            "give formula=<id> (see /api/formulas)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(q: &str) -> Result<StreamRequest, ApiError> {
        StreamRequest::from_query(&Query::parse(q)?, 3)
    }

    #[test]
    fn defaults_and_conversions() {
        let r = stream("symbols=tcs.ns,%20NSE:INFY,TCS.NS&_=17&access_token=t").unwrap();
        assert_eq!(
            r.source,
            SymbolSource::Symbols(vec![
                "NSE:TCS".parse().unwrap(),
                "NSE:INFY".parse().unwrap()
            ])
        );
        assert_eq!(r.resolutions, [Resolution::Week, Resolution::Day]);
        assert_eq!((r.bars.get(), r.format), (300, BarsFormat::Objects));
        let r = stream("formula=breakouts&resolutions=1D&bars=50&barsFormat=columns").unwrap();
        assert_eq!(r.source, SymbolSource::Formula("breakouts".into()));
        assert_eq!((r.bars.get(), r.format), (50, BarsFormat::Columns));
    }

    #[test]
    fn refusals_name_the_problem() {
        let code = |q: &str| stream(q).unwrap_err().code;
        assert_eq!(code(""), "missing_parameter");
        assert_eq!(code("formula=a&symbols=NSE:TCS"), "conflicting_parameters");
        assert_eq!(code("formula=a&formula=b"), "duplicate_parameter");
        assert_eq!(code("symbols=NSE:A,NSE:B,NSE:C,NSE:D"), "too_many_symbols");
        assert_eq!(code("symbols=TCS"), "invalid_symbol");
        assert_eq!(code("symbols=NSE:TCS&resolutions=2H"), "invalid_resolution");
        assert_eq!(code("symbols=NSE:TCS&bars=0"), "invalid_bars");
        assert_eq!(code("symbols=NSE:TCS&bars=5001"), "invalid_bars");
        assert_eq!(
            code("symbols=NSE:TCS&barsFormat=csv"),
            "invalid_bars_format"
        );
        assert_eq!(code("symbols=NSE:TCS,,NSE:INFY"), "invalid_symbol");
        assert_eq!(
            code("symbols=NSE:TCS&resolutions=1D,"),
            "invalid_resolution"
        );
        assert_eq!(code("symbols=,%20,"), "missing_parameter");
        assert_eq!(code("symbols=NSE:TCS&bar=5"), "unknown_parameter");
        assert_eq!(code("symbols=NSE:TCS&live=yes"), "invalid_parameter");
        assert_eq!(code("symbols=NSE:TCS&live=1"), "invalid_parameter");
        assert_eq!(code("symbols=NSE:TCS&quotes=true"), "invalid_parameter");
        assert_eq!(
            code("symbols=NSE:TCS&live=false&quotes=true"),
            "invalid_parameter"
        );
        let live = stream("symbols=NSE:TCS&live=true&quotes=true").unwrap();
        assert!(live.live && live.quotes);
        let plain = stream("symbols=NSE:TCS&live=false").unwrap();
        assert!(!plain.live && !plain.quotes);
        let message = stream("symbols=NSE:TCS&resolutions=1D,,1W")
            .unwrap_err()
            .message;
        assert_eq!(
            message,
            "resolutions has an empty entry (entry 2 of 3); remove it or the extra comma"
        );
        let message = stream("formula=a&barsformat=columns").unwrap_err().message;
        assert_eq!(
            message,
            "unknown parameter \"barsformat\"; this route takes formula, symbols, resolutions, \
             bars, barsFormat, lastEventId, live, quotes (and access_token)"
        );
    }

    #[test]
    fn bodies_accept_lists_and_strings() {
        let body: StreamBody =
            serde_json::from_str(r#"{"symbols":["NSE:TCS"],"resolutions":"1D","barsCount":10}"#)
                .unwrap();
        let r = StreamRequest::from_body(body, 10).unwrap();
        assert_eq!(r.bars.get(), 10);
        for (json, code) in [
            (r#"{"symbols":["NSE:TCS"," "]}"#, "invalid_symbol"),
            (r#"{"symbols":"NSE:TCS,,NSE:INFY"}"#, "invalid_symbol"),
            (
                r#"{"formulaId":"a","resolutions":["","1D"]}"#,
                "invalid_resolution",
            ),
        ] {
            let body: StreamBody = serde_json::from_str(json).unwrap();
            let err = StreamRequest::from_body(body, 10).unwrap_err();
            assert_eq!(err.code, code, "{json}");
        }
        assert!(serde_json::from_str::<StreamBody>(r#"{"formula":"x"}"#).is_err());
        assert!(serde_json::from_str::<StreamBody>(r#"{"formulaId":"x","live":"yes"}"#).is_err());
        let body: StreamBody =
            serde_json::from_str(r#"{"formulaId":"x","live":true,"quotes":true}"#).unwrap();
        let r = StreamRequest::from_body(body, 10).unwrap();
        assert!(r.live && r.quotes);
        let body: StreamBody = serde_json::from_str(r#"{"formulaId":"x","quotes":true}"#).unwrap();
        assert_eq!(
            StreamRequest::from_body(body, 10).unwrap_err().code,
            "invalid_parameter"
        );
    }
}
