//! The wire protocol against the real capture in `tests/fixtures`, and property tests: no input
//! panics a decoder, and encoding then decoding gives back what was encoded (server messages
//! encoded by the simulator, a dev-dependency, as the feed would write them).

use std::collections::BTreeMap;
use std::path::PathBuf;

use chartgate_protocol::client::{ClientMessage, SymbolSpec};
use chartgate_protocol::server::{
    IndexedBar, QuoteFields, SeriesData, ServerMessage, into_ascending,
};
use chartgate_protocol::{Bar, SymbolInfo};
use chartgate_protocol::{Packet, decode_message, encode_heartbeat, encode_packet};
use chartgate_simulator::wire::encode_message;
use proptest::prelude::*;
use serde::Deserialize;

#[derive(Deserialize)]
struct CapturedMessage {
    dir: String,
    data: String,
}

fn capture() -> Vec<CapturedMessage> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tradingview-capture.jsonl");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .map(|line| serde_json::from_str(line).expect("capture line is JSON"))
        .collect()
}

fn received() -> Vec<String> {
    capture()
        .into_iter()
        .filter(|m| m.dir == "recv")
        .map(|m| m.data)
        .collect()
}

#[test]
fn every_received_message_decodes_and_kinds_match_the_capture() {
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for message in received() {
        for packet in decode_message(&message).expect("framing") {
            let kind = match packet {
                Packet::Heartbeat(_) => "heartbeat".to_string(),
                Packet::Json(json) => ServerMessage::decode(json)
                    .expect("server message")
                    .name()
                    .to_string(),
            };
            *kinds.entry(kind).or_default() += 1;
        }
    }
    let expected: BTreeMap<String, usize> = [
        ("du", 15),
        ("heartbeat", 9),
        ("hello", 1),
        ("qsd", 49),
        ("quote_completed", 12),
        ("series_completed", 4),
        ("series_loading", 4),
        ("series_timeframe", 2),
        ("study_completed", 17),
        ("study_deleted", 1),
        ("study_loading", 18),
        ("symbol_resolved", 2),
        ("timescale_update", 7),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_string(), n))
    .collect();
    assert_eq!(kinds, expected);
}

#[test]
fn every_heartbeat_is_recognised_and_its_echo_is_what_the_browser_sent() {
    let messages = capture();
    let mut echoed = 0;
    for (n, message) in messages.iter().enumerate() {
        if message.dir != "recv" {
            continue;
        }
        let packets = decode_message(&message.data).unwrap();
        if let [Packet::Heartbeat(counter)] = packets.as_slice() {
            let reply = &messages[n + 1];
            assert_eq!(reply.dir, "send");
            assert_eq!(encode_heartbeat(counter), reply.data);
            echoed += 1;
        }
    }
    assert_eq!(echoed, 9);
}

#[test]
fn every_packet_reencodes_to_the_same_bytes() {
    for message in capture() {
        let mut out = String::new();
        for packet in decode_message(&message.data).unwrap() {
            match packet {
                Packet::Heartbeat(n) => out.push_str(&encode_heartbeat(n)),
                Packet::Json(json) => encode_packet(json, &mut out),
            }
        }
        assert_eq!(out, message.data);
    }
}

#[test]
fn every_sent_message_decodes_as_a_client_message() {
    let mut names = BTreeMap::<String, usize>::new();
    for message in capture().into_iter().filter(|m| m.dir == "send") {
        for packet in decode_message(&message.data).unwrap() {
            if let Packet::Json(json) = packet {
                let msg = ClientMessage::from_payload(json).expect("client message");
                *names.entry(msg.name().to_string()).or_default() += 1;
            }
        }
    }
    assert_eq!(names["create_series"], 2);
    assert_eq!(names["resolve_symbol"], 2);
    assert_eq!(names["set_auth_token"], 1);
    assert_eq!(names["request_more_data"], 1);
}

#[test]
fn every_sent_quote_call_decodes_typed_and_reencodes_byte_for_byte() {
    let mut quote_calls = 0;
    for message in capture().into_iter().filter(|m| m.dir == "send") {
        for packet in decode_message(&message.data).unwrap() {
            let Packet::Json(json) = packet else { continue };
            let msg = ClientMessage::from_payload(json).expect("client message");
            // `quote_hibernate_all` is a browser tab going idle: not one of the quote calls.
            if !msg.name().starts_with("quote_") || msg.name() == "quote_hibernate_all" {
                continue;
            }
            assert!(
                !matches!(msg, ClientMessage::Other { .. }),
                "{} decodes typed",
                msg.name()
            );
            assert_eq!(msg.to_payload(), json);
            quote_calls += 1;
        }
    }
    assert_eq!(quote_calls, 22);
    // The browser's `={...}` symbol form is kept exactly as written.
    let add = r#"{"m":"quote_add_symbols","p":["qs_1","={\"adjustment\":\"dividends\",\"symbol\":\"NSE:JUNIPER\"}",{"flags":["force_permission"]}]}"#;
    let ClientMessage::QuoteAddSymbols { symbols, .. } = ClientMessage::from_payload(add).unwrap()
    else {
        panic!("quote_add_symbols")
    };
    assert_eq!(
        symbols,
        [r#"={"adjustment":"dividends","symbol":"NSE:JUNIPER"}"#],
        "the flags object some clients append is skipped"
    );
    assert_eq!(
        SymbolSpec::parse(&symbols[0]).map(|s| s.symbol),
        Some("NSE:JUNIPER".to_string())
    );
}

/// The JSON packets of the capture's `recv` side with method `m`, as text.
fn received_packets(m: &str) -> Vec<String> {
    let mut out = Vec::new();
    for message in received() {
        for packet in decode_message(&message).unwrap() {
            let Packet::Json(json) = packet else { continue };
            let value: serde_json::Value = serde_json::from_str(json).unwrap();
            if value["m"] == m {
                out.push(json.to_string());
            }
        }
    }
    out
}

#[test]
fn every_captured_qsd_decodes_with_its_symbol_status_and_typed_fields() {
    let packets = received_packets("qsd");
    assert_eq!(packets.len(), 49);
    let mut typed_fields = 0;
    for json in &packets {
        let raw: serde_json::Value = serde_json::from_str(json).unwrap();
        let ServerMessage::QuoteData {
            session,
            symbol,
            status,
            fields,
        } = ServerMessage::decode(json).expect("qsd decodes")
        else {
            panic!("qsd is QuoteData: {json:.200}")
        };
        assert_eq!(session, raw["p"][0].as_str().unwrap());
        assert_eq!(
            symbol,
            raw["p"][1]["n"].as_str().unwrap(),
            "n exactly as sent"
        );
        assert_eq!(status.as_deref(), Some("ok"));
        // Every field read is the value the packet carries; every field the packet carries
        // among those read is read.
        let read = serde_json::to_value(&fields).unwrap();
        let v = raw["p"][1]["v"].as_object().unwrap();
        for (name, value) in read.as_object().unwrap() {
            assert_eq!(&v[name], value, "{name} in {json:.120}");
            typed_fields += 1;
        }
        for (name, value) in v {
            // A field QuoteFields knows reads on its own into a non-empty QuoteFields.
            let alone: QuoteFields =
                serde_json::from_value(serde_json::json!({ name: value })).unwrap_or_default();
            if alone != QuoteFields::default() {
                assert!(read.get(name).is_some(), "{name} read from {json:.120}");
            }
        }
    }
    assert!(typed_fields > 150, "{typed_fields}");

    let completed = received_packets("quote_completed");
    assert_eq!(completed.len(), 12);
    for json in &completed {
        let raw: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(
            ServerMessage::decode(json).unwrap(),
            ServerMessage::QuoteCompleted {
                session: raw["p"][0].as_str().unwrap().into(),
                symbol: raw["p"][1].as_str().unwrap().into(),
            }
        );
    }
}

#[test]
fn partial_quotes_merge_into_the_last_known_fields() {
    let packets = received_packets("qsd");
    let mut by_symbol: BTreeMap<String, QuoteFields> = BTreeMap::new();
    for json in &packets {
        if let ServerMessage::QuoteData { symbol, fields, .. } =
            ServerMessage::decode(json).unwrap()
        {
            by_symbol
                .entry(symbol.into_owned())
                .or_default()
                .merge(&fields);
        }
    }
    let juniper = &by_symbol["NSE:JUNIPER"];
    assert_eq!(
        juniper.description.as_deref(),
        Some("Juniper Hotels Limited")
    );
    assert_eq!(juniper.pricescale, Some(100));
    // The last bid/ask update of the capture wins, and fields it did not carry stay.
    assert_eq!((juniper.bid, juniper.ask), (Some(253.0), Some(253.25)));
    assert!(juniper.ch.is_some() && juniper.lp.is_some());
    assert_eq!(by_symbol["NSE:CNX500"].lp, Some(23418.6));
    // Three spellings of JUNIPER are three keys, merged apart.
    assert_eq!(
        by_symbol
            .keys()
            .filter(|k| k.contains("NSE:JUNIPER"))
            .count(),
        3
    );
}

#[test]
fn every_captured_du_decodes_and_a_series_du_reads_the_same_on_both_paths() {
    let packets = received_packets("du");
    assert_eq!(packets.len(), 15);
    for json in &packets {
        let raw: serde_json::Value = serde_json::from_str(json).unwrap();
        let ServerMessage::DataUpdate { session, series } = ServerMessage::decode(json).unwrap()
        else {
            panic!("du is DataUpdate")
        };
        assert_eq!(session, raw["p"][0].as_str().unwrap());
        // The capture's du packets are studies (`st`, no `s`): no series bars in them.
        assert!(series.is_empty(), "{json:.200}");
    }
    // A series du in the simulator's shape (the series element of a timescale_update, stamped):
    // the fast path and serde (keys reordered) read the same bars.
    let du = r#"{"m":"du","p":["cs_1",{"sds_1":{"node":"sim-series-1","s":[{"i":299,"v":[1765929600.0,3012.5,3031.0,2990.15,3024.35,1234567.0]},{"i":300,"v":[1766016000.0,3024.35,3024.35,3020.0,3021.1,812.0]}],"ns":{"d":"","indexes":[]},"t":"s1","lbs":{"bar_close_time":1766016000}}}],"t":1766031047,"t_ms":1766031047747}"#;
    let swapped = p_first(du).unwrap();
    let (fast, serde) = (
        ServerMessage::decode(du).unwrap(),
        ServerMessage::decode(&swapped).unwrap(),
    );
    assert_eq!(fast, serde);
    let ServerMessage::DataUpdate { series, .. } = fast else {
        panic!("du")
    };
    assert_eq!(series[0].series_id, "sds_1");
    assert_eq!(series[0].turnaround.as_deref(), Some("s1"));
    let indices: Vec<i64> = series[0].bars.iter().map(|b| b.index).collect();
    assert_eq!(indices, [299, 300]);
    assert_eq!(series[0].bars[1].bar.close, 3021.1);
}

/// All series bars the capture carries, by (chart session, series id).
fn captured_series() -> BTreeMap<(String, String), Vec<IndexedBar>> {
    let mut series = BTreeMap::<(String, String), Vec<IndexedBar>>::new();
    let messages = received();
    for message in &messages {
        for packet in decode_message(message).unwrap() {
            let Packet::Json(json) = packet else { continue };
            if let ServerMessage::TimescaleUpdate {
                session,
                series: data,
            } = ServerMessage::decode(json).unwrap()
            {
                for d in data {
                    series
                        .entry((session.to_string(), d.series_id.to_string()))
                        .or_default()
                        .extend(d.bars);
                }
            }
        }
    }
    series
}

#[test]
fn the_daily_series_has_the_300_bars_the_capture_shows() {
    let series = captured_series();
    let bars =
        into_ascending(series[&("cs_2iRcv6K6V6wl".to_string(), "sds_1".to_string())].clone());
    assert_eq!(bars.len(), 300);
    let (first, last) = (bars[0], bars[299]);
    assert_eq!((first.time, first.open), (1_728_272_700, 361.5));
    assert_eq!((last.time, last.close), (1_766_029_500, 253.42));
    assert!(bars.windows(2).all(|w| w[0].time < w[1].time));
    assert!(bars.iter().all(|b| b.volume.is_some() && b.low <= b.high));
}

#[test]
fn request_more_data_pages_with_negative_indices_join_in_time_order() {
    let series = captured_series();
    let raw = &series[&("cs_1EScFq71Fjjf".to_string(), "sds_2".to_string())];
    assert!(
        raw.iter().any(|b| b.index < 0),
        "the capture pages older bars with negative indices"
    );
    let bars = into_ascending(raw.clone());
    assert!(bars.windows(2).all(|w| w[0].time < w[1].time));
    let oldest_page_start = raw.iter().min_by_key(|b| b.index).unwrap();
    assert_eq!(bars[0], oldest_page_start.bar);
}

#[test]
fn symbol_resolved_gives_the_metadata_clients_need() {
    let message = &received()[1];
    let packets = decode_message(message).unwrap();
    let info = packets
        .iter()
        .find_map(|p| match p {
            Packet::Json(json) => match ServerMessage::decode(json).unwrap() {
                ServerMessage::SymbolResolved { info, .. } => Some(info),
                _ => None,
            },
            _ => None,
        })
        .expect("symbol_resolved in the first answer");
    assert_eq!(info.name, "JUNIPER");
    assert_eq!(info.exchange, "NSE");
    assert_eq!(info.description, "Juniper Hotels Limited");
    assert_eq!((info.currency_code.as_str(), info.pricescale), ("INR", 100));
    assert_eq!(
        (info.timezone.as_str(), info.kind.as_str()),
        ("Asia/Kolkata", "stock")
    );
}

#[test]
fn five_value_bars_have_no_volume_and_short_bars_are_refused() {
    let json = r#"{"m":"du","p":["cs_a",{"sds_1":{"s":[{"i":3,"v":[1700000000.0,1,2,0.5,1.5]}],"t":"s2"}}]}"#;
    let ServerMessage::DataUpdate { series, .. } = ServerMessage::decode(json).unwrap() else {
        panic!()
    };
    assert_eq!(series[0].bars[0].bar.volume, None);
    assert_eq!(series[0].turnaround.as_deref(), Some("s2"));
    let short = r#"{"m":"du","p":["cs_a",{"sds_1":{"s":[{"i":3,"v":[1700000000.0,1,2]}]}}]}"#;
    assert!(ServerMessage::decode(short).is_err());
}

#[test]
fn errors_keep_their_session_and_reason() {
    let critical = ServerMessage::decode(
        r#"{"m":"critical_error","p":["cs_x","invalid parameters","create_series"]}"#,
    );
    assert_eq!(
        critical.unwrap(),
        ServerMessage::CriticalError {
            session: Some("cs_x".into()),
            reason: "invalid parameters".into(),
            detail: vec!["create_series".into()],
        }
    );
    let protocol =
        ServerMessage::decode(r#"{"m":"protocol_error","p":["bad auth token"]}"#).unwrap();
    assert_eq!(
        protocol,
        ServerMessage::ProtocolError {
            reason: "bad auth token".into()
        }
    );
}

/// `{"p":..,"m":..}`: the same packet with `p` before `m`, which takes the two-pass path.
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

#[test]
fn every_captured_packet_decodes_alike_with_its_parameters_first() {
    let mut compared = 0;
    for message in received() {
        for packet in decode_message(&message).unwrap() {
            let Packet::Json(json) = packet else { continue };
            let Some(swapped) = p_first(json) else {
                continue;
            };
            assert!(swapped.starts_with("{\"p\":"));
            assert_eq!(
                ServerMessage::decode(json).unwrap(),
                ServerMessage::decode(&swapped).unwrap()
            );
            compared += 1;
        }
    }
    assert_eq!(
        compared,
        141 - 9 - 1,
        "every packet but heartbeats and the hello"
    );
}

#[test]
fn a_series_update_is_read_up_to_the_end_of_its_series_map() {
    use chartgate_protocol::ServerError;
    let bars = |r: Result<ServerMessage<'_>, ServerError>| match r {
        Ok(ServerMessage::TimescaleUpdate { series, .. }) => Ok(series[0].bars.clone()),
        other => Err(format!("{other:?}")),
    };
    let head =
        r#"{"m":"timescale_update","p":["cs",{"sds_1":{"s":[{"i":0,"v":[60,2,3,1,2.5,9]}]}}"#;
    let whole = bars(ServerMessage::decode(&format!(
        r#"{head},{{"index":0,"marks":[[1,2]]}}],"t":1}}"#
    )))
    .unwrap();
    assert_eq!(whole.len(), 1);
    assert_eq!((whole[0].bar.time, whole[0].bar.close), (60, 2.5));
    // What follows the map (the tick marks, `t`, `t_ms`) is not read, so a fault there does not
    // cost the bars...
    for tail in [r#",{"index":0,"marks":[[1,"#, ",{]}", ""] {
        let packet = format!("{head}{tail}");
        assert_eq!(
            bars(ServerMessage::decode(&packet)),
            Ok(whole.clone()),
            "{packet}"
        );
    }
    // ...but one anywhere before the map's end is still a packet that is not JSON.
    for packet in [
        r#"{"m":"timescale_update","p":["cs",{"sds_1":{"s":[{"i":0,"v":[60,2,3,1,2.5,9]}]},}]}"#,
        r#"{"m":"timescale_update","p":["cs",{"sds_1":{"s":[{"i":0,"v":[60,2,3,1,2.5,9]]}}]}"#,
    ] {
        assert!(
            matches!(ServerMessage::decode(packet), Err(ServerError::NotJson(_))),
            "{packet}"
        );
    }
}

#[test]
fn bad_parameters_and_bad_json_are_told_apart_in_either_key_order() {
    use chartgate_protocol::ServerError;
    #[derive(Debug, PartialEq)]
    enum Kind {
        Ok,
        NotJson,
        Bad(&'static str, &'static str),
    }
    let cases: &[(&str, &str, Kind)] = &[
        (
            r#"{"m":"series_loading","p":["a",1,"c"]}"#,
            r#"{"p":["a",1,"c"],"m":"series_loading"}"#,
            Kind::Bad("series_loading", "parameter 1: "),
        ),
        (
            r#"{"m":"series_loading","p":["a","b"]}"#,
            r#"{"p":["a","b"],"m":"series_loading"}"#,
            Kind::Bad("series_loading", "missing parameter 2"),
        ),
        (
            r#"{"m":"du","p":["cs",{"sds_1":{"s":[{"i":4,"v":[1,2,3]}]}}]}"#,
            r#"{"p":["cs",{"sds_1":{"s":[{"i":4,"v":[1,2,3]}]}}],"m":"du"}"#,
            Kind::Bad("du", "parameter 1: bar 4 has 3 values, expected 5 or 6"),
        ),
        (
            // A later duplicate series id replaces the short one, as a map does.
            r#"{"m":"du","p":["cs",{"sds_1":{"s":[{"i":4,"v":[1,2,3]}]},"sds_1":{"s":[]}}]}"#,
            r#"{"p":["cs",{"sds_1":{"s":[{"i":4,"v":[1,2,3]}]},"sds_1":{"s":[]}}],"m":"du"}"#,
            Kind::Ok,
        ),
        (
            r#"{"m":"du","p":["cs"]}"#,
            r#"{"p":["cs"],"m":"du"}"#,
            Kind::Bad("du", "missing parameter 1"),
        ),
        (
            r#"{"m":"du","p":["cs",{"sds_1":{"s":[{"i":"x","v":[1,2,3,4,5]}]}}]}"#,
            r#"{"p":["cs",{"sds_1":{"s":[{"i":"x","v":[1,2,3,4,5]}]}}],"m":"du"}"#,
            Kind::Bad("du", "parameter 1: invalid type"),
        ),
        (
            r#"{"m":"symbol_resolved","p":["cs","sym",[]]}"#,
            r#"{"p":["cs","sym",[]],"m":"symbol_resolved"}"#,
            Kind::Ok,
        ),
        (
            r#"{"m":"symbol_resolved","p":["cs","sym",{"pricescale":"x"}]}"#,
            r#"{"p":["cs","sym",{"pricescale":"x"}],"m":"symbol_resolved"}"#,
            Kind::Bad("symbol_resolved", "parameter 2: invalid type"),
        ),
        (
            r#"{"m":"series_completed"}"#,
            r#"{"m":"series_completed","p":null}"#,
            Kind::Bad("series_completed", "missing parameter 0"),
        ),
        (
            r#"{"m":"series_loading","p":{"a":1}}"#,
            r#"{"p":{"a":1},"m":"series_loading"}"#,
            Kind::Bad("series_loading", "invalid type: map"),
        ),
        (
            r#"{"m":"series_loading","p":["a",1,"c"]"#,
            r#"{"p":["a",1,"c"],"m":"series_loading""#,
            Kind::NotJson,
        ),
        (
            // Bad parameters, but a syntax error after them: not JSON, as before.
            r#"{"m":"series_loading","p":["a",1,"c"],"t":}"#,
            r#"{"p":["a",1,"c"],"m":"series_loading","t":}"#,
            Kind::NotJson,
        ),
        (
            // A key given twice: JSON, but not an envelope.
            r#"{"m":"series_loading","p":["a","b","c"],"m":"x"}"#,
            r#"{"p":["a","b","c"],"m":"series_loading","p":[]}"#,
            Kind::NotJson,
        ),
        (
            r#"{"m":"qsd","p":{"x":1}}"#,
            r#"{"p":{"x":1},"m":"qsd"}"#,
            Kind::Bad("qsd", "invalid type: map"),
        ),
        (
            r#"{"m":"qsd","p":["qs",{"n":"NSE:X","v":{"lp":1.5}}],"t":1}"#,
            r#"{"p":["qs",{"n":"NSE:X","v":{"lp":1.5}}],"t":1,"m":"qsd"}"#,
            Kind::Ok,
        ),
        (
            r#"{"m":"series_loading","p":["a\"b","b\u00e9","c"],"extra":[1,{"m":2}]}"#,
            r#"{"extra":[1,{"m":2}],"p":["a\"b","b\u00e9","c"],"m":"series_loading"}"#,
            Kind::Ok,
        ),
        (
            r#"["series_loading",["a","b","c"]]"#,
            r#"{"m":"series_loading","p":["a","b","c"]}"#,
            Kind::Ok,
        ),
        (
            r#"{"m":"critical_error","p":["cs_x","invalid parameters",{"a":1}]}"#,
            r#"{"p":["cs_x","invalid parameters",{"a":1}],"m":"critical_error"}"#,
            Kind::Ok,
        ),
    ];
    for (m_first, p_first, expected) in cases {
        let (a, b) = (
            ServerMessage::decode(m_first),
            ServerMessage::decode(p_first),
        );
        let kind = |r: &Result<ServerMessage<'_>, ServerError>| match r {
            Ok(_) => Kind::Ok,
            Err(ServerError::NotJson(_)) => Kind::NotJson,
            Err(ServerError::BadParameters { method, detail }) => {
                let (m, d) = match expected {
                    Kind::Bad(m, d) => (*m, *d),
                    _ => ("?", "?"),
                };
                assert!(detail.starts_with(d), "{detail:?} for {m_first}");
                assert_eq!(method, m);
                Kind::Bad(m, d)
            }
        };
        assert_eq!(&kind(&a), expected, "{m_first}: {a:?}");
        assert_eq!(&kind(&b), expected, "{p_first}: {b:?}");
        if let (Ok(a), Ok(b)) = (&a, &b) {
            assert_eq!(a, b, "{m_first}");
        }
        if let (
            Err(ServerError::BadParameters { detail: a, .. }),
            Err(ServerError::BadParameters { detail: b, .. }),
        ) = (&a, &b)
            && !a.contains(" at line ")
        {
            assert_eq!(a, b, "{m_first}");
        }
    }
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9_:.=-]{0,24}",
        any::<String>(),
        Just("~m~5~m~~h~1".to_string()),
        Just("\"quoted\" \\ back".to_string())
    ]
}

fn client_message() -> impl Strategy<Value = ClientMessage> {
    prop_oneof![
        text().prop_map(|token| ClientMessage::SetAuthToken { token }),
        (text(), text())
            .prop_map(|(language, country)| ClientMessage::SetLocale { language, country }),
        text().prop_map(|session| ClientMessage::ChartCreateSession { session }),
        text().prop_map(|session| ClientMessage::ChartDeleteSession { session }),
        (text(), text())
            .prop_map(|(session, timezone)| ClientMessage::SwitchTimezone { session, timezone }),
        (text(), text(), proptest::option::of(text()), text()).prop_map(
            |(session, symbol_id, adjustment, symbol)| {
                ClientMessage::ResolveSymbol {
                    session,
                    symbol_id,
                    spec: SymbolSpec {
                        adjustment,
                        session: None,
                        symbol,
                    },
                }
            }
        ),
        (text(), text(), text(), text(), text(), any::<u32>(), text()).prop_map(
            |(session, series_id, turnaround, symbol_id, resolution, count, range)| {
                ClientMessage::CreateSeries {
                    session,
                    series_id,
                    turnaround,
                    symbol_id,
                    resolution,
                    count,
                    range,
                }
            }
        ),
        (text(), text(), text(), text(), text(), text()).prop_map(
            |(session, series_id, turnaround, symbol_id, resolution, range)| {
                ClientMessage::ModifySeries {
                    session,
                    series_id,
                    turnaround,
                    symbol_id,
                    resolution,
                    range,
                }
            }
        ),
        (text(), text(), any::<u32>()).prop_map(|(session, series_id, count)| {
            ClientMessage::RequestMoreData {
                session,
                series_id,
                count,
            }
        }),
        (text(), text())
            .prop_map(|(session, series_id)| ClientMessage::RemoveSeries { session, series_id }),
        text().prop_map(|session| ClientMessage::QuoteCreateSession { session }),
        text().prop_map(|session| ClientMessage::QuoteDeleteSession { session }),
        (text(), proptest::collection::vec(text(), 0..4))
            .prop_map(|(session, fields)| ClientMessage::QuoteSetFields { session, fields }),
        (text(), proptest::collection::vec(text(), 0..4))
            .prop_map(|(session, symbols)| ClientMessage::QuoteAddSymbols { session, symbols }),
        (text(), proptest::collection::vec(text(), 0..4))
            .prop_map(|(session, symbols)| ClientMessage::QuoteFastSymbols { session, symbols }),
        (text(), proptest::collection::vec(text(), 0..4)).prop_map(|(session, symbols)| {
            ClientMessage::QuoteRemoveSymbols { session, symbols }
        }),
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
    fn random_input_never_panics_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = decode_message(&text);
        let _ = ServerMessage::decode(&text);
        let _ = ClientMessage::from_payload(&text);
    }

    #[test]
    fn framed_random_text_never_panics(payload in any::<String>(), declared in 0usize..64) {
        let message = format!("~m~{declared}~m~{payload}");
        if let Ok(packets) = decode_message(&message) {
            for packet in packets {
                if let Packet::Json(json) = packet {
                    let _ = ServerMessage::decode(json);
                }
            }
        }
    }

    #[test]
    fn framing_round_trips(payloads in proptest::collection::vec(any::<String>(), 1..6)) {
        let payloads: Vec<String> = payloads.into_iter().filter(|p| !p.starts_with("~h~")).collect();
        prop_assume!(!payloads.is_empty());
        let mut message = String::new();
        for p in &payloads {
            encode_packet(p, &mut message);
        }
        let decoded: Vec<&str> = decode_message(&message)
            .unwrap()
            .into_iter()
            .map(|p| match p { Packet::Json(j) => j, Packet::Heartbeat(h) => h })
            .collect();
        prop_assert_eq!(decoded, payloads.iter().map(String::as_str).collect::<Vec<_>>());
    }

    #[test]
    fn client_messages_round_trip(msg in client_message()) {
        let payload = msg.to_payload();
        prop_assert!(payload.is_ascii());
        prop_assert_eq!(ClientMessage::from_payload(&payload).unwrap(), msg);
    }
}

proptest! {
    /// What the simulator writes, as the feed would, reads back as the same message, whichever
    /// order its keys come in.
    #[test]
    fn server_messages_round_trip(msg in server_message(), now_ms in 0i64..4_000_000_000_000) {
        let payload = encode_message(&msg, now_ms);
        prop_assert!(payload.is_ascii());
        prop_assert_eq!(ServerMessage::decode(&payload).unwrap(), msg.clone());
        let swapped = p_first(&payload).unwrap();
        prop_assert_eq!(ServerMessage::decode(&swapped).unwrap(), msg);
    }
}
