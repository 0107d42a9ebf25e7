//! MarketInOut's Web API, `GET /run/screen?key=<16 hex>`: `text/plain`, one stock per line,
//! `TICKER.NS|PRICE|MM/DD/YYYY HH:MM`.
//!
//! The list is deterministic per key (a seeded shuffle of the embedded tickers), so a formula's
//! stocks never change between runs; its size comes from `simulator.formulas` or
//! `default_formula_stocks`. Each price is the last daily close the chart feed gives for that
//! stock, so a screen and its charts agree.

use actix_web::{HttpRequest, HttpResponse, web};

use crate::bars::{Bars, SimResolution};
use crate::rng::SplitMix64;
use crate::stable_hash;
use crate::state::SimState;
use crate::tickers::NSE_TICKERS;

/// The screen's timestamp: the close of the anchor day (IST), as MarketInOut writes it.
const SCREEN_TIME: &str = "12/17/2025 15:45";

/// The tickers of the screen with `key`, `stocks` of them.
pub(crate) fn screen_tickers(key: &str, stocks: usize) -> Vec<String> {
    let mut rng = SplitMix64::new(stable_hash(("screen", key.to_ascii_lowercase())));
    let mut order: Vec<usize> = (0..NSE_TICKERS.len()).collect();
    // Fisher-Yates with our own PRNG: stable forever.
    for i in (1..order.len()).rev() {
        let j = rng.below(i + 1);
        order.swap(i, j);
    }
    let mut out: Vec<String> = order
        .into_iter()
        .take(stocks)
        .map(|i| NSE_TICKERS[i].0.to_string())
        .collect();
    let mut n = 1;
    while out.len() < stocks {
        out.push(format!("SIMSTOCK{n:04}"));
        n += 1;
    }
    out
}

/// The screen's text body.
pub(crate) fn screen_body(key: &str, stocks: usize, bars: &Bars) -> String {
    let mut body = String::with_capacity(stocks * 40);
    for ticker in screen_tickers(key, stocks) {
        let symbol = format!("NSE:{ticker}");
        let last = bars.series(&symbol, SimResolution::Days(1), 1);
        let price = last.bars.last().map_or(0.0, |b| b.close);
        body.push_str(&format!("{ticker}.NS|{price:.2}|{SCREEN_TIME}\n"));
    }
    body
}

/// `GET /run/screen`.
pub(crate) async fn screen(req: HttpRequest, state: web::Data<SimState>) -> HttpResponse {
    let bad = |msg: &str| {
        HttpResponse::BadRequest()
            .content_type("text/plain; charset=utf-8")
            .body(msg.to_string())
    };
    let query = match web::Query::<Vec<(String, String)>>::from_query(req.query_string()) {
        Ok(q) => q.into_inner(),
        Err(_) => return bad("malformed query string\n"),
    };
    let Some(key) = query
        .iter()
        .find(|(name, _)| name == "key")
        .map(|(_, v)| v.as_str())
    else {
        return bad("missing key: use /run/screen?key=<16 hex digits>\n");
    };
    if !is_formula_key(key) {
        return bad("invalid key: expected 16 hex digits\n");
    }
    let key = key.to_ascii_lowercase();
    let stocks = state
        .formulas
        .get(&key)
        .copied()
        .unwrap_or(state.default_formula_stocks);
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(screen_body(&key, stocks, &state.bars))
}

/// A MarketInOut Web API key: 16 hex digits.
pub fn is_formula_key(key: &str) -> bool {
    key.len() == 16 && key.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn screens_are_deterministic_and_sized() {
        let a = screen_tickers("a1b2c3d4e5f60718", 20);
        assert_eq!(a, screen_tickers("A1B2C3D4E5F60718", 20));
        assert_eq!(a.len(), 20);
        assert_ne!(a, screen_tickers("0f1e2d3c4b5a6978", 20));
        let big = screen_tickers("a1b2c3d4e5f60718", NSE_TICKERS.len() + 5);
        assert_eq!(big.last().map(String::as_str), Some("SIMSTOCK0005"));
        let mut unique = big.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), big.len());
    }
}
