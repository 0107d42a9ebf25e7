//! What the feed says about a symbol: whether it resolves, and the `symbol_resolved` object
//! (name, exchange, currency, session, kind) it answers with. Plausible constants where the real
//! feed has data the simulator does not model; index-like (volumeless) symbols are `index`.

use chartgate_protocol::SymbolInfo;
use chartgate_protocol::clock::unix_ms;

use crate::settings::Faults;
use crate::stable_hash;
use crate::state::SimState;
use crate::tickers::company_name;
use crate::wire::encode_symbol_resolved;

/// A `symbol_resolved` payload, stamped now, with the symbol object this simulator keeps encoded.
pub(super) fn symbol_resolved_payload(
    state: &SimState,
    session: &str,
    symbol_id: &str,
    info: &SymbolInfo,
) -> String {
    encode_symbol_resolved(session, symbol_id, &state.symbol_object(info), unix_ms())
}

/// What `symbol_resolved` says about `symbol`, or `None` when the feed answers `symbol_error`:
/// not `EXCHANGE:TICKER`, listed in `unknown_symbols` (whole or by ticker), or a ticker starting
/// with `INVALID`.
pub(super) fn symbol_info(symbol: &str, faults: &Faults, volumeless: bool) -> Option<SymbolInfo> {
    let (exchange, ticker) = symbol.split_once(':')?;
    let ok_exchange = (1..=20).contains(&exchange.len())
        && exchange
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    let ok_ticker = (1..=40).contains(&ticker.len())
        && ticker.bytes().all(|b| {
            b.is_ascii_uppercase()
                || b.is_ascii_digit()
                || matches!(b, b'_' | b'.' | b'!' | b'&' | b'-')
        });
    if !ok_exchange || !ok_ticker || ticker.starts_with("INVALID") {
        return None;
    }
    let listed_unknown = faults.unknown_symbols.iter().any(|u| {
        let u = u.trim();
        u.eq_ignore_ascii_case(symbol) || u.eq_ignore_ascii_case(ticker)
    });
    if listed_unknown {
        return None;
    }
    let indian = matches!(exchange, "NSE" | "BSE");
    let description = if indian {
        company_name(ticker).map_or_else(|| format!("{ticker} Ltd"), str::to_string)
    } else {
        ticker.to_string()
    };
    let h = stable_hash(symbol);
    Some(SymbolInfo {
        name: ticker.to_string(),
        full_name: symbol.to_string(),
        description,
        exchange: exchange.to_string(),
        currency_code: if indian { "INR" } else { "USD" }.into(),
        pricescale: 100,
        minmov: 1,
        timezone: if indian {
            "Asia/Kolkata"
        } else {
            "America/New_York"
        }
        .into(),
        kind: if volumeless { "index" } else { "stock" }.into(),
        session: if indian { "0915-1530" } else { "0930-1600" }.into(),
        isin: if indian && !volumeless {
            format!("INE{:06}01{}", h % 1_000_000, h % 10)
        } else {
            String::new()
        },
    })
}
