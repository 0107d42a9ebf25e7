//! Formulas: MarketInOut screens and their stock lists.
//!
//! A formula is configured with a public id and name and either a Web API key or a full URL, which
//! are never shown to users. Its stock list comes from MarketInOut's Web API (or the simulator's),
//! a `text/plain` body of `SYMBOL.NS|PRICE|MM/DD/YYYY HH:MM` lines; stocks are enriched with name,
//! sector and industry from an optional universe file (`formulas.universe_file`), since the Web API
//! gives none of them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{FormulaDef, FormulasSettings};
use crate::domain::Symbol;

/// The real MarketInOut Web API, used in remote mode when `formulas.source_url` is empty.
pub const MARKETINOUT_SCREEN_URL: &str = "https://api.marketinout.com/run/screen";

/// One stock of a formula's result. Absent fields are omitted from JSON, not null.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Stock {
    pub symbol: Symbol,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schema(nullable = false)]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schema(nullable = false)]
    pub price: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schema(nullable = false)]
    pub sector: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schema(nullable = false)]
    pub industry: Option<String>,
}

impl Stock {
    /// A stock known only by its symbol (a client's list, before enrichment).
    pub fn new(symbol: Symbol) -> Stock {
        Stock {
            symbol,
            name: None,
            price: None,
            sector: None,
            industry: None,
        }
    }
}

/// A formula's stock list as of one fetch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FormulaResult {
    pub formula_id: String,
    pub formula_name: String,
    pub stocks: Vec<Stock>,
}

/// Why a formula's stocks could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormulaError {
    #[error("unknown formula {0:?}; GET /api/formulas lists the known ones")]
    Unknown(String),
    /// The source failed or answered badly. The message never holds the key or URL.
    #[error("the formula source failed for {formula:?}: {reason}")]
    Source { formula: String, reason: String },
}

/// Parses MarketInOut's Web API text. Blank lines and lines with fewer than two fields are
/// skipped; so are symbols that do not parse (logged); a price that does not parse is absent.
pub fn parse_screen(text: &str) -> Vec<Stock> {
    let mut stocks = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let mut fields = line.split('|');
        let (Some(raw_symbol), Some(raw_price)) = (fields.next(), fields.next()) else {
            continue;
        };
        match raw_symbol.parse::<Symbol>() {
            Ok(symbol) => stocks.push(Stock {
                price: raw_price
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|p| p.is_finite()),
                ..Stock::new(symbol)
            }),
            Err(e) => log::debug!("formulas: skipping line: {e}"),
        }
    }
    stocks
}

/// Name, sector and industry per symbol, from a JSON array of
/// `{"symbol","name","sector","industry",...}` (the shape of an NSE universe listing).
#[derive(Debug, Default, Clone)]
pub struct Universe {
    by_symbol: HashMap<Symbol, UniverseEntry>,
}

#[derive(Debug, Clone, Deserialize)]
struct UniverseEntry {
    symbol: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    sector: Option<String>,
    #[serde(default)]
    industry: Option<String>,
}

impl Universe {
    /// Reads a universe file; entries whose symbol does not parse are skipped.
    pub fn load(path: &Path) -> Result<Universe, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let entries: Vec<UniverseEntry> =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let by_symbol = entries
            .into_iter()
            .filter_map(|e| Some((e.symbol.parse().ok()?, e)))
            .collect();
        Ok(Universe { by_symbol })
    }

    /// A universe that knows only names, e.g. the embedded simulator's tickers.
    pub fn from_names<'a>(names: impl IntoIterator<Item = (Symbol, &'a str)>) -> Universe {
        let by_symbol = names
            .into_iter()
            .map(|(symbol, name)| {
                let entry = UniverseEntry {
                    symbol: symbol.to_string(),
                    name: Some(name.to_string()),
                    sector: None,
                    industry: None,
                };
                (symbol, entry)
            })
            .collect();
        Universe { by_symbol }
    }

    pub fn len(&self) -> usize {
        self.by_symbol.len()
    }

    /// Fills in what the universe knows about each stock.
    pub fn enrich(&self, stocks: &mut [Stock]) {
        for stock in stocks {
            if let Some(entry) = self.by_symbol.get(&stock.symbol) {
                stock.name = stock.name.take().or_else(|| entry.name.clone());
                stock.sector = stock.sector.take().or_else(|| entry.sector.clone());
                stock.industry = stock.industry.take().or_else(|| entry.industry.clone());
            }
        }
    }
}

/// The configured formulas and where their lists come from.
#[derive(Debug, Clone)]
pub struct FormulaSource {
    /// Base URL keys are appended to (`?key=`).
    base_url: String,
    formulas: Arc<Vec<FormulaDef>>,
    universe: Arc<Universe>,
    timeout: Duration,
}

impl FormulaSource {
    /// `base_url` is the resolved `formulas.source_url` (the simulator's in embedded mode).
    pub fn new(
        settings: &FormulasSettings,
        base_url: String,
        universe: Universe,
        timeout: Duration,
    ) -> Self {
        FormulaSource {
            base_url,
            formulas: Arc::new(settings.list.clone()),
            universe: Arc::new(universe),
            timeout,
        }
    }

    /// `(id, name)` of every formula, in configuration order.
    pub fn list(&self) -> impl Iterator<Item = (&str, &str)> {
        self.formulas
            .iter()
            .map(|f| (f.id.as_str(), f.name.as_str()))
    }

    pub fn find(&self, id: &str) -> Option<&FormulaDef> {
        self.formulas.iter().find(|f| f.id == id)
    }

    /// Adds name, sector and industry from the universe file, where it knows the stock.
    pub fn enrich(&self, stocks: &mut [Stock]) {
        self.universe.enrich(stocks);
    }

    /// The URL a formula's list is fetched from. Contains the key: never log or return it.
    fn url_of(&self, formula: &FormulaDef) -> String {
        match (&formula.url, &formula.key) {
            (Some(url), _) => url.clone(),
            (None, Some(key)) => format!("{}?key={key}", self.base_url),
            (None, None) => self.base_url.clone(),
        }
    }

    /// Fetches a formula's stock list from its source, enriched from the universe.
    pub async fn fetch(&self, id: &str) -> Result<FormulaResult, FormulaError> {
        let formula = self
            .find(id)
            .ok_or_else(|| FormulaError::Unknown(id.to_string()))?;
        let source_error = |reason: String| FormulaError::Source {
            formula: id.to_string(),
            reason,
        };
        let client = crate::client::http_client(self.timeout);
        let mut response = client
            .get(self.url_of(formula))
            .send()
            .await
            .map_err(|e| source_error(describe_send_error(&e)))?;
        if !response.status().is_success() {
            return Err(source_error(format!(
                "it answered HTTP {}",
                response.status().as_u16()
            )));
        }
        let body = response
            .body()
            .limit(16 * 1024 * 1024)
            .await
            .map_err(|e| source_error(format!("reading its answer failed: {e}")))?;
        let text = std::str::from_utf8(&body)
            .map_err(|_| source_error("its answer is not UTF-8 text".into()))?;
        let mut stocks = parse_screen(text);
        // An empty answer is a screen that matched nothing; lines none of which parse are not.
        if stocks.is_empty() && text.lines().any(|l| !l.trim().is_empty()) {
            return Err(source_error(
                "its answer is not a MarketInOut stock list".into(),
            ));
        }
        self.universe.enrich(&mut stocks);
        Ok(FormulaResult {
            formula_id: formula.id.clone(),
            formula_name: formula.name.clone(),
            stocks,
        })
    }
}

/// A send error in words, without the URL (which holds the key).
fn describe_send_error(e: &awc::error::SendRequestError) -> String {
    use awc::error::SendRequestError as E;
    match e {
        E::Connect(_) => "it could not be reached".into(),
        E::Timeout => "it did not answer in time".into(),
        _ => "the request failed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_web_api_format() {
        let text = "APLAPOLLO.NS|1764.50|12/17/2025 15:45\n\nBAD\nTCS.BO|n/a|12/17/2025 15:45\r\nnot a symbol|1|x\nINFY.NS|1500\n";
        let stocks = parse_screen(text);
        let symbols: Vec<&str> = stocks.iter().map(|s| s.symbol.as_str()).collect();
        assert_eq!(symbols, ["NSE:APLAPOLLO", "BSE:TCS", "NSE:INFY"]);
        assert_eq!(stocks[0].price, Some(1764.5));
        assert_eq!(stocks[1].price, None);
        let json = serde_json::to_value(&stocks[1]).unwrap();
        assert_eq!(json, serde_json::json!({"symbol": "BSE:TCS"}));
    }
}
