//! `GET /api/openapi.json` (SPEC 3.6): an OpenAPI 3.1 document of every route, made from the code
//! that defines them.
//!
//! - Paths and operations come from [`super::route_table`], the list [`super::configure`]
//!   registers: each entry's `#[utoipa::path]` reads the method and path of its `#[get]`/`#[post]`/
//!   `#[delete]`, so a route cannot be served undocumented or documented at a path it is not
//!   served at.
//! - Schemas are derived (`ToSchema`, `IntoParams`) from the types the handlers parse and
//!   serialise: the stream's `formula-results`, `complete` and `stream-error` data, stocks, bars,
//!   chart metadata, leases, stats, errors, the POST body.
//! - Two things are written by hand for speed, so this module holds types used only for the
//!   document: the `chart-batch` event and the `chart-data` answer (their chart JSON is spliced in
//!   as shared bytes, see [`crate::ready_chart`]), and the query strings (read pair by pair by
//!   [`super::params::Query`] so duplicates are caught). `tests/openapi.rs` checks real answers and
//!   real stream events against these schemas, field for field, so they cannot drift either.
//! - Every `/api` operation gets the token's security schemes and a `401`, from
//!   [`super::is_api_path`], the rule the token middleware follows.
//!
//! The document is made once, on first request, and then served as the same bytes.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use bytes::Bytes;
use utoipa::openapi::path::Paths;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, RefOr,
    ResponseBuilder, Tag, schema::Schema, security::SecurityRequirement,
};
use utoipa::{IntoParams, PartialSchema, ToSchema};

use super::error::ErrorBody;
use super::stream::{CompleteData, ErrorData, FormulaResultsData};
use super::{DocumentedRoute, RouteSink, is_api_path, route_table};
use crate::domain::{BarCount, BarsFormat, ChartMetadata, Resolution, Symbol};
use crate::live::QuoteData;

/// The document as served: made on first use, the same bytes afterwards.
pub fn json() -> &'static Bytes {
    static JSON: OnceLock<Bytes> = OnceLock::new();
    JSON.get_or_init(|| {
        // Serialising these plain structures cannot fail (string keys, finite numbers).
        let text = document().to_pretty_json().unwrap_or_else(|_| "{}".into());
        Bytes::from(text)
    })
}

/// Security scheme names, as the operations' requirements refer to them.
const BEARER: &str = "bearerAuth";
const QUERY_TOKEN: &str = "accessToken";

/// The whole document: every route of [`route_table`] and the schemas they refer to.
pub fn document() -> OpenApi {
    let mut collector = Collector::default();
    route_table(&mut collector);
    // The 401 added to every `/api` operation refers to it.
    collector
        .schemas
        .push((ErrorBody::name().into(), ErrorBody::schema()));
    let components = ComponentsBuilder::new()
        .schemas_from_iter(collector.schemas)
        .security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("`Authorization: Bearer <server.api_token>`"))
                    .build(),
            ),
        )
        .security_scheme(
            QUERY_TOKEN,
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "access_token",
                "`?access_token=<server.api_token>` (for clients that cannot set headers, such as \
                 a browser's EventSource)",
            ))),
        )
        .build();
    let tags = [
        ("stream", "the formula stream (Server-Sent Events)"),
        ("charts", "single charts"),
        ("formulas", "MarketInOut screens and their stock lists"),
        (
            "connections",
            "leases that keep upstream connections warm, and stats",
        ),
        (
            "service",
            "health, readiness, metrics, the demo page, this document",
        ),
    ]
    .map(|(name, description)| {
        let mut tag = Tag::new(name);
        tag.description = Some(description.into());
        tag
    });
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("chartgate")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(DESCRIPTION))
                .build(),
        )
        .paths(collector.paths)
        .components(Some(components))
        .tags(Some(tags))
        .build()
}

const DESCRIPTION: &str = "Fetches OHLCV history for whole stock screens from a pool of \
persistent chart-feed connections and streams it as Server-Sent Events.\n\n\
Errors are JSON `{\"error\": \"<human message>\", \"code\": \"<machine_code>\"}` (the `Error` \
schema) with a 4xx or 5xx status; each response lists the codes it can carry. A method a path \
does not take gets `405 method_not_allowed`; an unknown path `404 not_found`.\n\n\
When `server.api_token` is set, every `/api` route (this document included) needs it, as \
`Authorization: Bearer <token>` or `?access_token=<token>`, and answers `401 unauthorized` \
without it; when it is empty no token is needed (the empty security requirement).\n\n\
The stream's events are described by the `StreamEvent` schema: each SSE event's `event:` field \
is the payload's `type`, its single `data:` line the payload's JSON. With `live=true` the stream \
goes on after `complete` with `bar` (and, with `quotes=true`, `quote`) events; their ids resume \
a live stream within `live.resume_window_secs` (the bars changed since, no history again).";

/// Gathers the route table's operations and schemas.
#[derive(Default)]
struct Collector {
    paths: Paths,
    schemas: Vec<(String, RefOr<Schema>)>,
}

impl RouteSink for Collector {
    fn route<R: DocumentedRoute>(&mut self, _route: R) {
        let path = R::path();
        let mut operation = R::operation();
        let tags = operation.tags.get_or_insert_with(Vec::new);
        for tag in R::tags() {
            if !tags.iter().any(|t| t == tag) {
                tags.push(tag.to_string());
            }
        }
        if is_api_path(&path) {
            operation.security = Some(vec![
                SecurityRequirement::default(),
                SecurityRequirement::new(BEARER, Vec::<String>::new()),
                SecurityRequirement::new(QUERY_TOKEN, Vec::<String>::new()),
            ]);
            operation
                .responses
                .responses
                .insert("401".into(), RefOr::T(unauthorized()));
        }
        for method in R::methods() {
            self.paths
                .add_path_operation(&path, vec![method], operation.clone());
        }
        R::schemas(&mut self.schemas);
    }
}

fn unauthorized() -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description("`unauthorized`: `server.api_token` is set and the request did not carry it")
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    ErrorBody::name(),
                ))))
                .build(),
        )
        .build()
}

// ----------------------------------------------------------------------------- the stream

/// One event of the stream, as its `data:` line holds it: `{"type": <the SSE event name>,
/// "data": {...}}`.
#[derive(ToSchema)]
#[serde(tag = "type", content = "data", rename_all = "kebab-case")]
#[allow(dead_code)]
pub(super) enum StreamEvent {
    /// First, as soon as the stock list is known (not sent again when a stream is resumed).
    FormulaResults(FormulaResultsData<'static>),
    /// One per group of `stream.batch_size` consecutive stocks, as each group finishes.
    ChartBatch(ChartBatchData),
    /// Last, when every chart is in; then the response ends.
    Complete(CompleteData),
    /// A failure that ends the stream early (`shutting_down`: reconnect with `Last-Event-ID` to
    /// resume); then the response ends.
    StreamError(ErrorData<'static>),
    /// `live=true`, after `complete`: a chart's bar at `time` is now this. A bar with the time of
    /// the chart's last bar replaces it; a later time begins a new bar (the one before is then
    /// final, and was sent in its final state first). One bar object, whatever `barsFormat`.
    Bar(BarEventData),
    /// `live=true&quotes=true`, after `complete`: a stock's latest quote, in full first, then
    /// whenever it changes (fields the feed has not given yet are left out).
    Quote(QuoteData),
}

/// The data of a `bar` event.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct BarEventData {
    symbol: Symbol,
    resolution: Resolution,
    bar: BarObject,
}

/// The data of a `chart-batch` event. Every requested (symbol, resolution) appears once in the whole stream, in `chartData` or in
/// `errors`.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(super) struct ChartBatchData {
    /// 1-based.
    batch_index: usize,
    total_batches: usize,
    /// The batch's stocks, in the order of the stream's list.
    symbols: Vec<Symbol>,
    /// Symbol, then resolution, to chart.
    chart_data: BTreeMap<Symbol, BTreeMap<Resolution, ChartPayload>>,
    /// Symbol, then resolution, to why that chart failed.
    errors: BTreeMap<Symbol, BTreeMap<Resolution, ErrorData<'static>>>,
    progress: BatchProgress,
    timing: BatchTiming,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct BatchProgress {
    /// Charts finished in the whole stream so far, this batch's included.
    loaded: usize,
    total: usize,
    /// `loaded / total` in percent, one decimal.
    percentage: f64,
}

#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(super) struct BatchTiming {
    /// When the stream started, Unix milliseconds.
    start_time: u64,
    /// When this batch was written, Unix milliseconds.
    end_time: u64,
    duration_ms: u64,
}

/// A chart: its bars (ascending by time) in the requested `barsFormat`, and the symbol's
/// metadata from the feed.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct ChartPayload {
    bars: Bars,
    metadata: ChartMetadata,
}

/// `barsFormat=objects` (the default): one object per bar; `barsFormat=columns`: one array per
/// field.
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub(super) enum Bars {
    Objects(Vec<BarObject>),
    Columns(BarColumns),
}

/// One OHLCV bar (`barsFormat=objects`). The protocol crate's `Bar`, described here because that
/// crate knows nothing of OpenAPI.
#[derive(ToSchema)]
#[schema(as = Bar)]
#[allow(dead_code)]
pub(super) struct BarObject {
    /// Bar open, Unix seconds.
    time: i64,
    open: f64,
    high: f64,
    low: f64,
    close: f64,
    /// Absent for index-like symbols whose feed bars carry no volume.
    #[schema(nullable = false)]
    volume: Option<f64>,
}

/// Bars as columns: element `i` of each array belongs to bar `i`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct BarColumns {
    /// Bar open, Unix seconds.
    time: Vec<i64>,
    open: Vec<f64>,
    high: Vec<f64>,
    low: Vec<f64>,
    close: Vec<f64>,
    /// Present when some bar has a volume; `null` for the bars without.
    #[schema(nullable = false)]
    volume: Option<Vec<Option<f64>>>,
}

// ----------------------------------------------------------------------------- other answers

/// The answer of `/api/chart-data`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct ChartDataBody {
    symbol: Symbol,
    resolution: Resolution,
    bars: Bars,
    metadata: ChartMetadata,
    /// Whether the chart came from the cache.
    cached: bool,
}

// ----------------------------------------------------------------------------- query strings

/// The stream's query (SPEC 3.1): `formula` or `symbols`, exactly one.
#[derive(IntoParams)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
#[allow(dead_code)]
pub(super) struct StreamQuery {
    /// A formula id from `/api/formulas`.
    formula: Option<String>,
    /// Comma-separated symbols (`NSE:TCS,INFY.NS`), at most `server.max_symbols_per_request`;
    /// duplicates are dropped.
    #[param(example = "NSE:TCS,NSE:INFY")]
    symbols: Option<String>,
    /// Comma-separated resolutions.
    #[param(default = "1W,1D", example = "1D")]
    resolutions: Option<String>,
    /// Bars per chart.
    #[param(inline, value_type = Option<BarCount>)]
    bars: Option<u16>,
    #[param(inline, value_type = Option<BarsFormat>, default = "objects")]
    bars_format: Option<String>,
    /// Resume after this event id (the `Last-Event-ID` header wins when both are given).
    last_event_id: Option<String>,
    /// `true`: after `complete`, stay open and send `bar` events as the charts move (SPEC 3.5).
    #[param(default = false)]
    live: Option<bool>,
    /// `true` (with `live=true`): also a `quote` event per stock, first in full, then on change.
    #[param(default = false)]
    quotes: Option<bool>,
}

/// The query of `/api/chart-data` (SPEC 3.2).
#[derive(IntoParams)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
#[allow(dead_code)]
pub(super) struct ChartQuery {
    #[param(inline, value_type = Symbol)]
    symbol: String,
    #[param(inline, value_type = Option<Resolution>, default = "1D")]
    resolution: Option<String>,
    #[param(inline, value_type = Option<BarCount>)]
    bars: Option<u16>,
    #[param(inline, value_type = Option<BarsFormat>, default = "objects")]
    bars_format: Option<String>,
}

/// The query of `/api/formula-results` (SPEC 3.3).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(super) struct FormulaQuery {
    /// A formula id from `/api/formulas`.
    formula: String,
}
