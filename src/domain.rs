//! Domain types parsed once at the boundary: a [`Symbol`], a [`Resolution`], a [`BarCount`], and
//! the [`Bar`]s and [`Chart`]s the feed answers with. Once a value of one of these types exists it
//! is valid, so nothing downstream re-checks strings, and nothing user-supplied reaches an upstream
//! message except through them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use chartgate_protocol::Bar;
use chartgate_protocol::SymbolInfo;

/// Why a user-supplied value was refused; the message names the value and says what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error(
        "invalid symbol {0:?}: expected EXCHANGE:TICKER (e.g. NSE:TCS) or a MarketInOut form (TCS.NS, TCS.BO)"
    )]
    Symbol(String),
    #[error("invalid resolution {0:?}: expected one of 1,3,5,15,30,45,60,120,180,240,1D,1W,1M")]
    Resolution(String),
    #[error("invalid bar count {0:?}: expected a whole number from 1 to 5000")]
    BarCount(String),
    #[error("invalid bars format {0:?}: expected objects or columns")]
    BarsFormat(String),
}

/// A feed symbol such as `NSE:TCS`: an exchange and a ticker, upper-case, within the character set
/// and lengths the feed accepts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Symbol {
    /// `EXCHANGE:TICKER`, kept whole so that display and hashing cost nothing.
    full: String,
    /// Byte offset of the colon in `full`.
    colon: usize,
}

impl Symbol {
    /// The exchange part, `NSE` in `NSE:TCS`.
    pub fn exchange(&self) -> &str {
        &self.full[..self.colon]
    }

    /// The ticker part, `TCS` in `NSE:TCS`.
    pub fn ticker(&self) -> &str {
        &self.full[self.colon + 1..]
    }

    /// `EXCHANGE:TICKER`.
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

fn valid_exchange(s: &str) -> bool {
    (1..=20).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

fn valid_ticker(s: &str) -> bool {
    (1..=40).contains(&s.len())
        && s.bytes().all(|b| {
            b.is_ascii_uppercase()
                || b.is_ascii_digit()
                || matches!(b, b'_' | b'.' | b'!' | b'&' | b'-')
        })
}

impl FromStr for Symbol {
    type Err = DomainError;

    /// Accepts `NSE:TCS` and MarketInOut's `TCS.NS` (NSE) and `TCS.BO` (BSE), after trimming and
    /// upper-casing.
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let err = || DomainError::Symbol(truncate_for_message(raw));
        let upper = raw.trim().to_ascii_uppercase();
        let (exchange, ticker) = match upper.split_once(':') {
            Some(parts) => parts,
            None => match upper.rsplit_once('.') {
                Some((ticker, "NS")) => ("NSE", ticker),
                Some((ticker, "BO")) => ("BSE", ticker),
                _ => return Err(err()),
            },
        };
        if !valid_exchange(exchange) || !valid_ticker(ticker) {
            return Err(err());
        }
        Ok(Symbol {
            colon: exchange.len(),
            full: format!("{exchange}:{ticker}"),
        })
    }
}

/// Keeps error messages short when a client sends a huge value.
pub(crate) fn truncate_for_message(raw: &str) -> String {
    const MAX: usize = 64;
    match raw.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &raw[..cut]),
        None => raw.to_string(),
    }
}

impl fmt::Display for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl Serialize for Symbol {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.full)
    }
}

impl<'de> Deserialize<'de> for Symbol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

/// A chart resolution the feed serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resolution {
    M1,
    M3,
    M5,
    M15,
    M30,
    M45,
    H1,
    H2,
    H3,
    H4,
    Day,
    Week,
    Month,
}

impl Resolution {
    /// Every resolution, in ascending length.
    pub const ALL: [Resolution; 13] = [
        Resolution::M1,
        Resolution::M3,
        Resolution::M5,
        Resolution::M15,
        Resolution::M30,
        Resolution::M45,
        Resolution::H1,
        Resolution::H2,
        Resolution::H3,
        Resolution::H4,
        Resolution::Day,
        Resolution::Week,
        Resolution::Month,
    ];

    /// The feed's name for it, also used in the HTTP API.
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::M1 => "1",
            Resolution::M3 => "3",
            Resolution::M5 => "5",
            Resolution::M15 => "15",
            Resolution::M30 => "30",
            Resolution::M45 => "45",
            Resolution::H1 => "60",
            Resolution::H2 => "120",
            Resolution::H3 => "180",
            Resolution::H4 => "240",
            Resolution::Day => "1D",
            Resolution::Week => "1W",
            Resolution::Month => "1M",
        }
    }

    /// Nominal length of one bar in seconds (a month counts as 30 days; only the simulator's bar
    /// spacing uses this, and it aligns months to the calendar itself).
    pub fn seconds(self) -> i64 {
        match self {
            Resolution::Day => 86_400,
            Resolution::Week => 7 * 86_400,
            Resolution::Month => 30 * 86_400,
            minutes => minutes.as_str().parse::<i64>().unwrap_or(1) * 60,
        }
    }
}

impl FromStr for Resolution {
    type Err = DomainError;

    /// Accepts the feed's names; `D`, `W` and `M` alone are accepted as `1D`, `1W`, `1M`, and the
    /// letters in any case.
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let upper = raw.trim().to_ascii_uppercase();
        let wanted = match upper.as_str() {
            "D" => "1D",
            "W" => "1W",
            "M" => "1M",
            other => other,
        };
        Resolution::ALL
            .into_iter()
            .find(|r| r.as_str() == wanted)
            .ok_or_else(|| DomainError::Resolution(truncate_for_message(raw)))
    }
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Resolution {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// How many bars to fetch: 1 to 5000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct BarCount(u16);

impl BarCount {
    /// The most bars the feed answers one series with.
    pub const MAX: u16 = 5000;

    pub fn new(n: u64) -> Result<Self, DomainError> {
        if (1..=u64::from(Self::MAX)).contains(&n) {
            Ok(BarCount(n as u16))
        } else {
            Err(DomainError::BarCount(n.to_string()))
        }
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

impl Default for BarCount {
    fn default() -> Self {
        BarCount(300)
    }
}

impl FromStr for BarCount {
    type Err = DomainError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        raw.trim()
            .parse::<u64>()
            .map_err(|_| DomainError::BarCount(truncate_for_message(raw)))
            .and_then(BarCount::new)
    }
}

/// How bars are laid out in JSON answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum BarsFormat {
    /// `[{"time","open","high","low","close","volume"}, ...]`
    #[default]
    Objects,
    /// `{"time":[...],"open":[...],...}`: about half the bytes for long histories.
    Columns,
}

impl FromStr for BarsFormat {
    type Err = DomainError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "objects" => Ok(BarsFormat::Objects),
            "columns" => Ok(BarsFormat::Columns),
            _ => Err(DomainError::BarsFormat(truncate_for_message(raw))),
        }
    }
}

// OpenAPI schemas of the types parsed by hand (`FromStr`), made from the same rules and constants
// the parsers use, for `GET /api/openapi.json`.

/// What `Symbol` accepts once trimmed and upper-cased (SPEC 3): the rules of `valid_exchange` and
/// `valid_ticker` as a pattern.
pub const SYMBOL_PATTERN: &str = "^[A-Z0-9_]{1,20}:[A-Z0-9_.!&-]{1,40}$";

impl utoipa::PartialSchema for Symbol {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .pattern(Some(SYMBOL_PATTERN))
            .description(Some(
                "EXCHANGE:TICKER as answered (requests may also use MarketInOut's TCS.NS / TCS.BO \
                 forms, any case)",
            ))
            .examples(["NSE:TCS"])
            .into()
    }
}

impl utoipa::ToSchema for Symbol {}

impl utoipa::PartialSchema for Resolution {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .enum_values(Some(Resolution::ALL.map(Resolution::as_str)))
            .description(Some("minutes (1 to 240), a day, a week or a month"))
            .into()
    }
}

impl utoipa::ToSchema for Resolution {}

impl utoipa::PartialSchema for BarCount {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::Integer)
            .minimum(Some(1))
            .maximum(Some(BarCount::MAX))
            .default(Some(BarCount::default().get().into()))
            .into()
    }
}

impl utoipa::ToSchema for BarCount {}

/// What the feed's `symbol_resolved` says about a symbol, reduced to what clients use.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChartMetadata {
    pub name: String,
    pub exchange: String,
    pub description: String,
    pub currency_code: String,
    pub pricescale: u64,
    pub timezone: String,
    #[serde(rename = "type")]
    pub kind: String,
}

impl From<&SymbolInfo> for ChartMetadata {
    fn from(info: &SymbolInfo) -> Self {
        ChartMetadata {
            name: info.name.clone(),
            exchange: info.exchange.clone(),
            description: info.description.clone(),
            currency_code: info.currency_code.clone(),
            pricescale: info.pricescale,
            timezone: info.timezone.clone(),
            kind: info.kind.clone(),
        }
    }
}

/// A finished chart: bars ascending by time, and the symbol's metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub symbol: Symbol,
    pub resolution: Resolution,
    pub bars: Vec<Bar>,
    pub metadata: ChartMetadata,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_parse_in_both_forms() {
        let s: Symbol = " nse:tcs ".parse().unwrap();
        assert_eq!(s.as_str(), "NSE:TCS");
        assert_eq!((s.exchange(), s.ticker()), ("NSE", "TCS"));
        assert_eq!("TCS.NS".parse::<Symbol>().unwrap().as_str(), "NSE:TCS");
        assert_eq!("m&m.bo".parse::<Symbol>().unwrap().as_str(), "BSE:M&M");
        assert_eq!(
            "NSE:BAJAJ-AUTO".parse::<Symbol>().unwrap().ticker(),
            "BAJAJ-AUTO"
        );
    }

    #[test]
    fn bad_symbols_are_refused_with_the_value_named() {
        for bad in [
            "",
            "TCS",
            "NSE:",
            ":TCS",
            "NSE:T CS",
            "TCS.XX",
            "N\"SE:TCS",
            "NSE:TCS\n{",
        ] {
            let err = bad.parse::<Symbol>().unwrap_err();
            assert!(matches!(err, DomainError::Symbol(_)), "{bad:?}");
        }
        let long = format!("NSE:{}", "A".repeat(41));
        assert!(long.parse::<Symbol>().is_err());
        let huge = "X".repeat(10_000);
        assert!(huge.parse::<Symbol>().unwrap_err().to_string().len() < 300);
    }

    #[test]
    fn resolutions_round_trip_and_refuse_others() {
        for r in Resolution::ALL {
            assert_eq!(r.as_str().parse::<Resolution>().unwrap(), r);
        }
        assert_eq!("1d".parse::<Resolution>().unwrap(), Resolution::Day);
        assert_eq!("W".parse::<Resolution>().unwrap(), Resolution::Week);
        for bad in ["2", "1H", "", "1Y", "60m"] {
            assert!(bad.parse::<Resolution>().is_err(), "{bad:?}");
        }
        assert_eq!(Resolution::H4.seconds(), 4 * 3600);
    }

    #[test]
    fn bar_counts_are_bounded() {
        assert_eq!("1".parse::<BarCount>().unwrap().get(), 1);
        assert_eq!("5000".parse::<BarCount>().unwrap().get(), 5000);
        for bad in ["0", "5001", "-1", "abc", "", "99999999999999999999"] {
            assert!(bad.parse::<BarCount>().is_err(), "{bad:?}");
        }
        assert_eq!(BarCount::default().get(), 300);
    }
}
