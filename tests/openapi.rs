//! `GET /api/openapi.json` (SPEC 3.6) against the real server and the simulator.
//!
//! - The document is valid OpenAPI 3.1: checked with the `jsonschema` crate against the official
//!   OpenAPI 3.1 JSON Schema (vendored in `tests/fixtures/`, see its README), every Schema Object
//!   against the JSON Schema 2020-12 meta-schema, and the rules that schema cannot express (every
//!   `$ref` resolves, path templates and path parameters agree, operation ids are unique). All
//!   offline, so it runs on a bare clone.
//! - Every route the app registers is documented: the routes are the ones its route table lists
//!   (`chartgate::registered_routes`), and every documented operation is probed on the running app, which must serve it
//!   (not answer the catch-all 404 or 405), while every other method on a documented path must
//!   get the 405.
//! - Real answers and real stream events (`formula-results`, `chart-batch` in both bar formats
//!   and with failed charts, `complete`, `stream-error`) validate against their schemas made
//!   strict (no property the schema does not name), so a field added to or dropped from what is
//!   written, by serde or by hand, fails here until the document says the same.

mod common;

use std::collections::BTreeSet;

use awc::http::Method;
use serde_json::{Value, json};

use chartgate::config::Secret;
use chartgate::registered_routes;

use common::app::{
    TestApp, read_stream_until, response_json, send_json, spawn_app, stream_cut_by_shutdown,
};

const STREAM: &str = "/api/formula-results-with-charts";
const OPENAPI_31_SCHEMA: &str = include_str!("fixtures/openapi-3.1-schema.json");

async fn document(app: &TestApp) -> Value {
    let (status, doc) = app.get_json("/api/openapi.json").await;
    assert_eq!(status, 200, "{doc}");
    doc
}

// ------------------------------------------------------------------------------- validity

/// Every Schema Object of the document, with where it is.
fn schema_objects(doc: &Value) -> Vec<(String, &Value)> {
    fn walk<'a>(value: &'a Value, at: String, out: &mut Vec<(String, &'a Value)>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    let here = format!("{at}/{key}");
                    if key == "schema" {
                        out.push((here.clone(), child));
                    }
                    walk(child, here, out);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(child, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&doc["paths"], "#/paths".into(), &mut out);
    if let Some(schemas) = doc["components"]["schemas"].as_object() {
        for (name, schema) in schemas {
            out.push((format!("#/components/schemas/{name}"), schema));
        }
    }
    out
}

/// Every `$ref` in the document.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                out.push(r.clone());
            }
            map.values().for_each(|v| refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// What a `#/...` reference points at.
fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

#[actix_web::test]
async fn the_document_is_valid_openapi_3_1() {
    let app = spawn_app(|_| {}).await;
    let doc = document(&app).await;
    assert_eq!(doc["openapi"], "3.1.0");

    // The official schema of OpenAPI 3.1 documents.
    let meta: Value = serde_json::from_str(OPENAPI_31_SCHEMA).expect("the vendored schema");
    let validator = jsonschema::draft202012::new(&meta).expect("the OpenAPI 3.1 schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "not a valid OpenAPI 3.1 document: {errors:#?}"
    );
    // The check has teeth: a document with a malformed response is refused.
    let mut broken = doc.clone();
    broken["paths"]["/healthz"]["get"]["responses"]["200"] = json!({"content": {}});
    assert!(
        !validator.is_valid(&broken),
        "a response without a description passed"
    );

    // That schema leaves Schema Objects to the JSON Schema dialect: each must be a valid
    // 2020-12 schema.
    let schemas = schema_objects(&doc);
    assert!(schemas.len() > 30, "only {} schemas found", schemas.len());
    for (at, schema) in &schemas {
        if let Err(e) = jsonschema::draft202012::meta::validate(schema) {
            panic!("{at} is not a valid JSON Schema: {e}");
        }
    }

    // What no JSON Schema can check.
    let mut all_refs = Vec::new();
    refs(&doc, &mut all_refs);
    assert!(!all_refs.is_empty());
    for r in &all_refs {
        assert!(resolve(&doc, r).is_some(), "{r} points nowhere");
    }
    let mut operation_ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let templated: BTreeSet<&str> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        for (method, op) in item.as_object().expect("a path item") {
            let id = op["operationId"]
                .as_str()
                .expect("every operation has an id");
            assert!(operation_ids.insert(id.to_string()), "{id} used twice");
            let declared: BTreeSet<&str> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "path")
                .map(|p| {
                    assert_eq!(
                        p["required"], true,
                        "{method} {path}: path parameters are required"
                    );
                    p["name"].as_str().expect("a name")
                })
                .collect();
            assert_eq!(templated, declared, "{method} {path}: path parameters");
            assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()));
        }
    }

    // Made once: the same bytes every time.
    let body = |path: &'static str| {
        let app = &app;
        async move {
            let mut resp = app.get(path).send().await.expect("GET");
            assert_eq!(resp.status(), 200);
            assert_eq!(
                resp.headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok()),
                Some("application/json")
            );
            resp.body().limit(4 << 20).await.expect("the body")
        }
    };
    assert_eq!(
        body("/api/openapi.json").await,
        body("/api/openapi.json").await
    );
}

// ------------------------------------------------------------------------------- coverage

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            out.insert((method.clone(), path.clone()));
        }
    }
    out
}

#[actix_web::test]
async fn every_route_the_app_registers_is_documented_and_served() {
    let app = spawn_app(|_| {}).await;
    let doc = document(&app).await;
    let registered = registered_routes();
    assert_eq!(registered, documented(&doc));
    assert!(registered.len() >= 15, "{registered:?}");

    // Ask the app itself: a documented operation is served (whatever it answers to an empty
    // request, it is not the catch-all's 404 or 405); any other method on its path gets the 405.
    let paths: BTreeSet<&String> = registered.iter().map(|(_, p)| p).collect();
    for path in paths {
        let url = path.replace("{lease_id}", "probe-lease");
        for method in ["get", "post", "put", "delete", "patch"] {
            let req = app.client.request(
                Method::from_bytes(method.to_uppercase().as_bytes()).expect("a method"),
                app.url(&url),
            );
            let resp = match method {
                "post" => req.send_json(&json!({})).await,
                _ => req.send().await,
            }
            .expect("send");
            let status = resp.status().as_u16();
            let served = registered.contains(&(method.to_string(), path.clone()));
            let (_, body) = response_json(resp).await;
            if served {
                assert!(
                    status != 405
                        && body["code"] != "not_found"
                        && body["code"] != "method_not_allowed",
                    "{method} {path} is documented but not served: {status} {body}"
                );
            } else {
                assert_eq!(
                    (status, body["code"].as_str()),
                    (405, Some("method_not_allowed")),
                    "{method} {path} is not documented, so it must not be served"
                );
            }
        }
    }
    // The demo page links to the document.
    let mut page = app.get("/").send().await.expect("GET /");
    let page = page.body().await.expect("the page");
    let page = String::from_utf8_lossy(&page);
    assert!(
        page.contains(r#"href="/api/openapi.json""#),
        "no API link on the demo page"
    );

    let (status, body) = app.get_json("/api/undocumented").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
}

#[actix_web::test]
async fn the_document_is_behind_the_api_token_like_every_api_route() {
    let token = "doc-t0ken";
    let app = spawn_app(|s| s.server.api_token = Secret::new(token)).await;
    let (status, body) = app.get_json("/api/openapi.json").await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    let (status, doc) = app
        .get_json(&format!("/api/openapi.json?access_token={token}"))
        .await;
    assert_eq!(status, 200);
    assert!(
        !doc.to_string().contains(token),
        "the document never holds the token"
    );
    // And it says so: every /api operation offers the token's schemes and answers 401.
    for (method, path) in documented(&doc) {
        let op = &doc["paths"][&path][&method];
        let api = path == "/api" || path.starts_with("/api/");
        assert_eq!(op["responses"].get("401").is_some(), api, "{method} {path}");
        assert_eq!(op.get("security").is_some(), api, "{method} {path}");
    }
}

// ------------------------------------------------------------------------------- real payloads

/// `schema` with every `$ref` inlined, `allOf` merged, and every object closed
/// (`additionalProperties: false` unless it says otherwise): a validator of exactly the
/// documented fields.
fn strict(doc: &Value, schema: &Value) -> Value {
    let Value::Object(map) = schema else {
        return schema.clone();
    };
    if let Some(Value::String(r)) = map.get("$ref") {
        let target = resolve(doc, r).unwrap_or_else(|| panic!("{r} points nowhere"));
        return strict(doc, target);
    }
    let mut out = serde_json::Map::new();
    for (key, value) in map {
        let value = match key.as_str() {
            "properties" => Value::Object(
                value
                    .as_object()
                    .expect("properties")
                    .iter()
                    .map(|(k, v)| (k.clone(), strict(doc, v)))
                    .collect(),
            ),
            "items" | "additionalProperties" | "propertyNames" => strict(doc, value),
            "oneOf" | "anyOf" => Value::Array(
                value
                    .as_array()
                    .expect("a list")
                    .iter()
                    .map(|v| strict(doc, v))
                    .collect(),
            ),
            "allOf" => continue,
            _ => value.clone(),
        };
        out.insert(key.clone(), value);
    }
    // allOf (serde's flatten): one object with every member's properties.
    if let Some(Value::Array(members)) = map.get("allOf") {
        for member in members {
            let member = strict(doc, member);
            for key in ["properties", "required"] {
                match (out.get_mut(key), member.get(key)) {
                    (Some(Value::Object(have)), Some(Value::Object(more))) => {
                        have.extend(more.clone());
                    }
                    (Some(Value::Array(have)), Some(Value::Array(more))) => {
                        have.extend(more.iter().cloned());
                    }
                    (None, Some(more)) => {
                        out.insert(key.into(), more.clone());
                    }
                    _ => {}
                }
            }
        }
        out.insert("type".into(), "object".into());
    }
    if out.contains_key("properties") && !out.contains_key("additionalProperties") {
        out.insert("additionalProperties".into(), false.into());
    }
    Value::Object(out)
}

/// Where `instance` differs from the fields of `schema` (made [`strict`]).
fn mismatches(doc: &Value, schema: &Value, instance: &Value) -> Vec<String> {
    let strict = strict(doc, schema);
    let validator = jsonschema::draft202012::new(&strict)
        .unwrap_or_else(|e| panic!("the strict schema does not compile: {e}"));
    validator
        .iter_errors(instance)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .take(10)
        .collect()
}

/// Panics unless `instance` has exactly the fields of `schema`.
fn assert_matches(doc: &Value, schema: &Value, instance: &Value, what: &str) {
    let errors = mismatches(doc, schema, instance);
    assert!(
        errors.is_empty(),
        "{what} does not match its schema: {errors:#?}\ninstance: {:.2000}",
        instance.to_string()
    );
}

/// The documented schema of `method path`'s `status` answer (JSON or the event stream).
fn response_schema<'a>(doc: &'a Value, method: &str, path: &str, status: u16) -> &'a Value {
    let content = &doc["paths"][path][method]["responses"][status.to_string()]["content"];
    let schema = ["application/json", "text/event-stream"]
        .iter()
        .find_map(|t| content.get(t))
        .map(|c| &c["schema"]);
    schema.unwrap_or_else(|| panic!("{method} {path} documents no {status} JSON answer"))
}

/// Sends `req` and checks its JSON answer against what `method path` documents for its status.
async fn check_answer(doc: &Value, method: &str, path: &str, req: awc::ClientRequest) -> Value {
    let (status, body) = send_json(req).await;
    let schema = response_schema(doc, method, path, status);
    assert_matches(doc, schema, &body, &format!("{method} {path} {status}"));
    body
}

#[actix_web::test]
async fn real_answers_have_exactly_the_documented_fields() {
    let app = spawn_app(|_| {}).await;
    let doc = document(&app).await;
    let get = |p: &str| app.get(p);
    check_answer(&doc, "get", "/readyz", get("/readyz")).await;
    check_answer(&doc, "get", "/api/formulas", get("/api/formulas")).await;
    check_answer(
        &doc,
        "get",
        "/api/formula-results",
        get("/api/formula-results?formula=breakouts"),
    )
    .await;
    for query in [
        "symbol=NSE:TCS&resolution=1D&bars=20",
        "symbol=NSE:TCS&resolution=1W&bars=20&barsFormat=columns",
        "symbol=NSE:NIFTY&bars=20",
        "symbol=NSE:NIFTY&bars=20&barsFormat=columns",
    ] {
        let body = check_answer(
            &doc,
            "get",
            "/api/chart-data",
            get(&format!("/api/chart-data?{query}")),
        )
        .await;
        assert!(body.get("bars").is_some(), "{query}: {body}");
    }
    let lease = check_answer(
        &doc,
        "post",
        "/api/connections/acquire",
        app.post("/api/connections/acquire"),
    )
    .await;
    let lease_id = lease["leaseId"].as_str().expect("a lease id");
    let renew = app.post(&format!("/api/connections/{lease_id}/renew"));
    check_answer(&doc, "post", "/api/connections/{lease_id}/renew", renew).await;
    let stats = check_answer(
        &doc,
        "get",
        "/api/connections/stats",
        get("/api/connections/stats"),
    )
    .await;
    assert!(
        stats["pool"]["connections"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
    );
    // Errors: the one body every error has.
    for (method, path, req) in [
        ("get", "/api/chart-data", get("/api/chart-data?symbol=NOPE")),
        (
            "get",
            "/api/chart-data",
            get("/api/chart-data?symbol=NSE:INVALIDX"),
        ),
        (
            "get",
            "/api/formula-results",
            get("/api/formula-results?formula=nope"),
        ),
        (
            "get",
            STREAM,
            get(&format!("{STREAM}?symbols=NSE:TCS&bars=0")),
        ),
        (
            "post",
            "/api/connections/{lease_id}/renew",
            app.post("/api/connections/gone/renew"),
        ),
    ] {
        let body = check_answer(&doc, method, path, req).await;
        assert!(body["code"].is_string(), "{body}");
    }
}

/// Every event of the stream at `query`, checked against the documented event schema; the
/// names of the events seen.
async fn check_stream(doc: &Value, app: &TestApp, query: &str, seen: &mut BTreeSet<String>) {
    let s = read_stream_until(app.get(&format!("{STREAM}?{query}")), |_| false).await;
    assert_eq!(s.status, 200, "{query}");
    check_events(doc, &s, query, seen);
}

fn check_events(doc: &Value, s: &common::app::StreamRead, what: &str, seen: &mut BTreeSet<String>) {
    let schema = response_schema(doc, "get", STREAM, 200);
    assert!(!s.events.is_empty(), "{what}: no events");
    for event in &s.events {
        let data: Value = serde_json::from_str(&event.data).expect("event data is JSON");
        assert_eq!(
            data["type"],
            event.event.as_str(),
            "{what}: `type` is the event name"
        );
        assert_matches(
            doc,
            schema,
            &data,
            &format!("{what}: {} event", event.event),
        );
        // The check has teeth: a field the schema does not name is refused.
        let mut extra = data.clone();
        extra["data"]["undocumented"] = json!(1);
        assert!(
            !mismatches(doc, schema, &extra).is_empty(),
            "{what}: an undocumented field passed"
        );
        seen.insert(event.event.clone());
    }
}

#[actix_web::test]
async fn real_stream_events_have_exactly_the_documented_fields() {
    let app = spawn_app(|s| s.stream.batch_size = 2).await;
    let doc = document(&app).await;
    let mut seen = BTreeSet::new();
    for query in [
        "formula=breakouts&resolutions=1D,1W&bars=20",
        // Volume-less bars, failed charts (unknown ticker), both formats.
        "symbols=NSE:TCS,NSE:NIFTY,NSE:INVALIDX&resolutions=1D,60&bars=15",
        "symbols=NSE:TCS,NSE:NIFTY,NSE:INVALIDX&resolutions=1D&bars=15&barsFormat=columns",
    ] {
        check_stream(&doc, &app, query, &mut seen).await;
    }

    // stream-error: a stream open while the server shuts down.
    let (s, _stopped) = stream_cut_by_shutdown(&format!(
        "{STREAM}?formula=breakouts&resolutions=1D,1W&bars=30"
    ))
    .await;
    check_events(&doc, &s, "a stream cut by shutdown", &mut seen);

    // bar and quote: a live stream, read until both have come after `complete`.
    let live = spawn_app(|s| s.simulator.faults.tick_ms = 50).await;
    let mut live_seen = BTreeSet::new();
    let s = read_stream_until(
        live.get(&format!(
            "{STREAM}?symbols=NSE:TCS,NSE:NIFTY&resolutions=1D&bars=5&live=true&quotes=true"
        )),
        |event| {
            live_seen.insert(event.event.clone());
            live_seen.contains("bar") && live_seen.contains("quote")
        },
    )
    .await;
    check_events(&doc, &s, "a live stream", &mut seen);

    // Every documented event was seen and checked.
    let documented: BTreeSet<String> = response_schema(&doc, "get", STREAM, 200)["$ref"]
        .as_str()
        .and_then(|r| resolve(&doc, r))
        .and_then(|s| s["oneOf"].as_array())
        .expect("StreamEvent is a oneOf")
        .iter()
        .map(|variant| {
            let variant = strict(&doc, variant);
            variant["properties"]["type"]["enum"][0]
                .as_str()
                .expect("each variant names its type")
                .to_string()
        })
        .collect();
    let want: BTreeSet<String> = [
        "formula-results",
        "chart-batch",
        "complete",
        "stream-error",
        "bar",
        "quote",
    ]
    .map(String::from)
    .into();
    assert_eq!(documented, want);
    assert_eq!(seen, want, "events seen");
}

#[actix_web::test]
async fn the_stats_of_a_cluster_instance_have_exactly_the_documented_fields() {
    let Some(redis) = common::redis::RedisServer::start() else {
        return;
    };
    let app = spawn_app(|s| {
        s.cluster.redis_url = Secret::new(redis.url());
    })
    .await;
    let doc = document(&app).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let stats = check_answer(
            &doc,
            "get",
            "/api/connections/stats",
            app.get("/api/connections/stats"),
        )
        .await;
        if stats["cluster"]["redis"] == "ok" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{stats}");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    app.stopper.stop().await;
}
