//! What the simulator writes, the protocol crate reads back as the same message: every server
//! message the simulator can encode decodes to itself, whichever order its keys come in.

use chartgate_protocol::server::SeriesData;
use chartgate_protocol::{Bar, IndexedBar, QuoteFields, ServerMessage, SymbolInfo};
use chartgate_simulator::wire::encode_message;
use proptest::prelude::*;

/// The same JSON object with `p` first: the decoder must not depend on the feed writing `m` first.
fn p_first(json: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    let object = value.as_object()?;
    let mut out = format!("{{\"p\":{}", object.get("p")?);
    for (key, value) in object.iter().filter(|(k, _)| k.as_str() != "p") {
        out.push_str(&format!(",{}:{value}", serde_json::to_string(key).unwrap()));
    }
    out.push('}');
    Some(out)
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9_:.=-]{0,24}",
        any::<String>(),
        Just("~m~5~m~~h~1".to_string()),
        Just("\"quoted\" \\ back".to_string())
    ]
}

fn price() -> impl Strategy<Value = f64> {
    (0u64..10_000_000).prop_map(|cents| cents as f64 / 100.0)
}

fn series_data() -> impl Strategy<Value = SeriesData<'static>> {
    let bar = (
        0i64..2_000_000_000,
        price(),
        price(),
        price(),
        price(),
        proptest::option::of(price()),
    )
        .prop_map(|(time, open, high, low, close, volume)| Bar {
            time,
            open,
            high,
            low,
            close,
            volume,
        });
    (
        "sds_[0-9]{1,3}",
        "s[0-9]{1,2}",
        -5000i64..5000,
        proptest::collection::vec(bar, 0..20),
    )
        .prop_map(|(series_id, turnaround, first, bars)| SeriesData {
            series_id: series_id.into(),
            turnaround: Some(turnaround.into()),
            bars: bars
                .into_iter()
                .enumerate()
                .map(|(n, bar)| IndexedBar {
                    index: first + n as i64,
                    bar,
                })
                .collect(),
        })
}

fn server_message() -> impl Strategy<Value = ServerMessage<'static>> {
    let s = || text().prop_map(std::borrow::Cow::Owned);
    prop_oneof![
        (s(), s(), s()).prop_map(
            |(session, series_id, turnaround)| ServerMessage::SeriesLoading {
                session,
                series_id,
                turnaround
            }
        ),
        (s(), s(), s(), s()).prop_map(|(session, series_id, status, turnaround)| {
            ServerMessage::SeriesCompleted {
                session,
                series_id,
                status,
                turnaround,
            }
        }),
        (s(), s(), s()).prop_map(|(session, symbol_id, reason)| ServerMessage::SymbolError {
            session,
            symbol_id,
            reason
        }),
        (s(), s(), s(), s()).prop_map(|(session, series_id, turnaround, reason)| {
            ServerMessage::SeriesError {
                session,
                series_id,
                turnaround,
                reason,
            }
        }),
        (s(), series_data()).prop_map(|(session, data)| ServerMessage::TimescaleUpdate {
            session,
            series: vec![data]
        }),
        (s(), series_data()).prop_map(|(session, data)| ServerMessage::DataUpdate {
            session,
            series: vec![data]
        }),
        (s(), s(), "[A-Z]{1,10}", 1u64..10_000).prop_map(
            |(session, symbol_id, name, pricescale)| {
                ServerMessage::SymbolResolved {
                    session,
                    symbol_id,
                    info: SymbolInfo {
                        full_name: format!("NSE:{name}"),
                        name,
                        pricescale,
                        ..SymbolInfo::default()
                    },
                }
            }
        ),
        text().prop_map(|reason| ServerMessage::ProtocolError { reason }),
        (s(), s(), quote_fields()).prop_map(|(session, symbol, fields)| {
            ServerMessage::QuoteData {
                session,
                symbol,
                status: Some("ok".into()),
                fields: Box::new(fields),
            }
        }),
        (s(), s()).prop_map(|(session, symbol)| ServerMessage::QuoteCompleted { session, symbol }),
    ]
}

/// Partial quotes: any subset of a few fields of each type.
fn quote_fields() -> impl Strategy<Value = QuoteFields> {
    (
        proptest::option::of(price()),
        proptest::option::of(0i64..4_000_000_000),
        proptest::option::of(price()),
        proptest::option::of(text()),
        proptest::option::of(1u64..100_000),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(
            |(lp, lp_time, volume, description, pricescale, fractional)| QuoteFields {
                lp,
                lp_time,
                volume,
                description,
                pricescale,
                fractional,
                ..QuoteFields::default()
            },
        )
}

proptest! {
    #[test]
    fn server_messages_round_trip(msg in server_message(), now_ms in 0i64..4_000_000_000_000) {
        let payload = encode_message(&msg, now_ms);
        prop_assert!(payload.is_ascii());
        prop_assert_eq!(ServerMessage::decode(&payload).unwrap(), msg.clone());
        let swapped = p_first(&payload).unwrap();
        prop_assert_eq!(ServerMessage::decode(&swapped).unwrap(), msg);
    }
}
