//! Request parameters, parsed at the boundary into domain types: a stream request (query string
//! or JSON body) and a chart request. Every refusal names the parameter and what it accepts.

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
}

/// A list given as a JSON array or as one comma-separated string.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ListParam {
    One(String),
    Many(Vec<String>),
}

impl ListParam {
    fn joined(self) -> String {
        match self {
            ListParam::One(s) => s,
            ListParam::Many(items) => items.join(","),
        }
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
}

const DEFAULT_RESOLUTIONS: &str = "1W,1D";

impl StreamRequest {
    pub fn from_query(query: &Query, max_symbols: usize) -> Result<Self, ApiError> {
        Self::build(
            query.get("formula")?,
            query.get("symbols")?,
            query.get("resolutions")?,
            query.get("bars")?,
            query.get("barsFormat")?,
            query.get("lastEventId")?,
            max_symbols,
        )
    }

    pub fn from_body(body: StreamBody, max_symbols: usize) -> Result<Self, ApiError> {
        let symbols = body.symbols.map(ListParam::joined);
        let resolutions = body.resolutions.map(ListParam::joined);
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
            body.last_event_id.as_deref(),
            max_symbols,
        )
    }

    fn build(
        formula: Option<&str>,
        symbols: Option<&str>,
        resolutions: Option<&str>,
        bars: Option<&str>,
        format: Option<&str>,
        last_event_id: Option<&str>,
        max_symbols: usize,
    ) -> Result<Self, ApiError> {
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
            last_event_id: last_event_id.map(str::to_string),
        })
    }
}

/// A comma-separated symbol list: trimmed, empty items skipped, duplicates dropped (first wins).
pub fn parse_symbols(list: &str, max: usize) -> Result<Vec<Symbol>, ApiError> {
    let items: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if items.is_empty() {
        return Err(ApiError::bad_request(
            "missing_parameter",
            "symbols is empty",
        ));
    }
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

/// A comma-separated resolution list, duplicates dropped.
pub fn parse_resolutions(list: &str) -> Result<Vec<Resolution>, ApiError> {
    let mut out: Vec<Resolution> = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let resolution: Resolution = item.parse()?;
        if !out.contains(&resolution) {
            out.push(resolution);
        }
    }
    if out.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_resolution",
            "resolutions is empty",
        ));
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
    match query.get("formula")?.map(str::trim) {
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
        let r = stream("symbols=tcs.ns,%20NSE:INFY,,TCS.NS").unwrap();
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
    }

    #[test]
    fn bodies_accept_lists_and_strings() {
        let body: StreamBody =
            serde_json::from_str(r#"{"symbols":["NSE:TCS"],"resolutions":"1D","barsCount":10}"#)
                .unwrap();
        let r = StreamRequest::from_body(body, 10).unwrap();
        assert_eq!(r.bars.get(), 10);
        assert!(serde_json::from_str::<StreamBody>(r#"{"formula":"x"}"#).is_err());
    }
}
