//! Route handlers: thin functions that parse input into domain types, ask the actors or the cache,
//! and shape the answer. Errors go through [`ApiError`].
//!
//! Each handler's `#[get]` / `#[post]` / `#[delete]` says where it is served, and its
//! `#[utoipa::path]` (which reads that same attribute) what it takes and answers; both are
//! registered and documented from [`super::route_table`]. Error responses list the `code`s a
//! handler can answer with. `401 unauthorized` is added to every `/api` operation by
//! [`super::openapi`], from the same rule the token middleware follows.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError, delete, get, post, web};
use bytes::BytesMut;
use serde::Serialize;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::openapi::{ChartDataBody, ChartQuery, FormulaQuery, StreamEvent, StreamQuery};
use super::params::{ChartRequest, Query, StreamBody, StreamRequest, formula_param};
use super::stream;
use crate::cache::{CacheStats, ChartKey};
use crate::cluster::ClusterStats;
use crate::formulas::FormulaResult;
use crate::live::LiveStats;
use crate::manager::{
    Acquire, ForceCleanup, GetManagerStats, LeaseInfo, ManagerStats, Release, Renew,
    acquire_implicit,
};

const INDEX_HTML: &str = include_str!("assets/index.html");

/// The demo page (SPEC 3.4): pick a formula or symbols and watch the stream arrive.
#[utoipa::path(tag = "service", responses(
    (status = 200, description = "the demo page, self-contained (no script from another host)", content_type = "text/html", body = String),
))]
#[get("/")]
pub async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(INDEX_HTML)
}

/// Liveness: 200 while the process runs.
#[utoipa::path(tag = "service", responses(
    (status = 200, description = "`ok`", content_type = "text/plain", body = String),
))]
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// The answer of `/readyz`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Readiness {
    ready: bool,
    /// Why, for an operator: what is open or what cannot be reached.
    reason: String,
}

/// Readiness: whether the service can serve.
///
/// Ready when upstream connections are open, or when the feed and the formula source are
/// reachable.
#[utoipa::path(tag = "service", responses(
    (status = 200, description = "ready", body = Readiness),
    (status = 503, description = "not ready (the pool is down, or the feed or formula source unreachable)", body = Readiness),
))]
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let (ready, reason) = state.readiness().await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    HttpResponse::build(status).json(Readiness { ready, reason })
}

/// Prometheus metrics.
///
/// Requests by route and status, open streams, charts fetched, upstream connections,
/// reconnects, leases, cache hits and misses, chart fetch latency.
#[utoipa::path(tag = "service", responses(
    (status = 200, description = "Prometheus text format", content_type = "text/plain; version=0.0.4", body = String),
))]
#[get("/metrics")]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

/// This document (SPEC 3.6), made once from the route table and served as the same bytes.
#[utoipa::path(tag = "service", responses(
    (status = 200, description = "an OpenAPI 3.1 document of every route", content_type = "application/json", body = Object),
))]
#[get("/api/openapi.json")]
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(super::openapi::json().clone())
}

pub async fn not_found() -> HttpResponse {
    ApiError::not_found("not_found", "no such route; see the README for the API").error_response()
}

pub async fn method_not_allowed() -> HttpResponse {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
    .error_response()
}

fn lease_unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the connection manager is not running",
    )
}

/// The formula stream (SPEC 3.1), as Server-Sent Events.
///
/// `retry:`, then `formula-results`, a `chart-batch` per group of `stream.batch_size` stocks as each group finishes, then
/// `complete` (or `stream-error`). Each event's `event:` is its `type`, its one `data:` line the
/// JSON of the `StreamEvent` schema, its `id:` a resume point for `Last-Event-ID`. `: keep-alive`
/// comments keep idle streams open. Errors known before streaming starts are plain JSON errors.
#[utoipa::path(tag = "stream",
    params(
        StreamQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "resume after this event (takes precedence over `lastEventId`)"),
    ),
    responses(
        (status = 200, description = "the stream; every event's `data:` is one `StreamEvent`", content_type = "text/event-stream", body = StreamEvent),
        (status = 204, description = "the `Last-Event-ID` names a stream that already completed"),
        (status = 400, description = "bad parameter: `missing_parameter`, `conflicting_parameters`, `duplicate_parameter`, `too_many_symbols`, `invalid_symbol`, `invalid_resolution`, `invalid_bars`, `invalid_bars_format`, `invalid_query`, `unknown_parameter`, `invalid_parameter` (`live`/`quotes` not a boolean, `quotes` without `live`)", body = ErrorBody),
        (status = 404, description = "`unknown_formula`", body = ErrorBody),
        (status = 502, description = "`formula_source_error`: MarketInOut failed or answered non-2xx", body = ErrorBody),
        (status = 503, description = "`unavailable`: the connection manager is not running; `live_capacity`: the live series this request needs do not fit (`pool.max_connections` x `live.series_per_connection`)", body = ErrorBody),
    ),
)]
#[get("/api/formula-results-with-charts")]
pub async fn stream_get(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = Query::parse(req.query_string())?;
    let request = StreamRequest::from_query(&query, state.settings.server.max_symbols_per_request)?;
    open_stream(req, state, request).await
}

/// The formula stream (SPEC 3.1), its parameters in a JSON body.
///
/// Answers as the `GET` does.
#[utoipa::path(tag = "stream",
    params(
        ("Last-Event-ID" = Option<String>, Header, description = "resume after this event (takes precedence over `lastEventId`)"),
    ),
    request_body = StreamBody,
    responses(
        (status = 200, description = "the stream; every event's `data:` is one `StreamEvent`", content_type = "text/event-stream", body = StreamEvent),
        (status = 204, description = "the `Last-Event-ID` names a stream that already completed"),
        (status = 400, description = "bad parameter: `missing_parameter`, `conflicting_parameters`, `duplicate_parameter`, `too_many_symbols`, `invalid_symbol`, `invalid_resolution`, `invalid_bars`, `invalid_bars_format`, `invalid_query`, `unknown_parameter`, `invalid_json`", body = ErrorBody),
        (status = 404, description = "`unknown_formula`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is over 1 MiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: send `Content-Type: application/json`", body = ErrorBody),
        (status = 502, description = "`formula_source_error`", body = ErrorBody),
        (status = 503, description = "`unavailable`", body = ErrorBody),
    ),
)]
#[post("/api/formula-results-with-charts")]
pub async fn stream_post(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<StreamBody>,
) -> Result<HttpResponse, ApiError> {
    let request = StreamRequest::from_body(
        body.into_inner(),
        state.settings.server.max_symbols_per_request,
    )?;
    open_stream(req, state, request).await
}

async fn open_stream(
    req: HttpRequest,
    state: web::Data<AppState>,
    request: StreamRequest,
) -> Result<HttpResponse, ApiError> {
    let header_id = req
        .headers()
        .get("Last-Event-ID")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let last_event_id = header_id.or_else(|| request.last_event_id.clone());
    let lease = acquire_implicit(&state.manager).map_err(|_| lease_unavailable())?;
    stream::open(state.stream_deps(), request, last_event_id, lease).await
}

#[derive(Serialize)]
struct ChartDataHead<'a> {
    symbol: &'a str,
    resolution: &'a str,
}

/// One chart (SPEC 3.2).
#[utoipa::path(tag = "charts",
    params(ChartQuery),
    responses(
        (status = 200, description = "the chart", body = ChartDataBody),
        (status = 400, description = "bad parameter: `missing_parameter`, `duplicate_parameter`, `invalid_symbol`, `invalid_resolution`, `invalid_bars`, `invalid_bars_format`, `invalid_query`, `unknown_parameter`", body = ErrorBody),
        (status = 404, description = "`unknown_symbol`: the feed does not know the symbol", body = ErrorBody),
        (status = 422, description = "`series_error` (e.g. resolution not allowed), `invalid_parameters`: the feed refused the series", body = ErrorBody),
        (status = 503, description = "`upstream_unavailable` (no connection could be made), `queue_full` (`pool.max_queue` reached), `connection_lost`, `unavailable`", body = ErrorBody),
        (status = 504, description = "`upstream_timeout`", body = ErrorBody),
    ),
)]
#[get("/api/chart-data")]
pub async fn chart_data(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let request = ChartRequest::from_query(&Query::parse(req.query_string())?)?;
    let _lease = acquire_implicit(&state.manager).map_err(|_| lease_unavailable())?;
    let key = ChartKey {
        symbol: request.symbol.clone(),
        resolution: request.resolution,
        bars: request.bars,
    };
    let (chart, cached) = state
        .charts
        .get(key)
        .await
        .map_err(|f| ApiError::new(f.status(), f.code, f.message))?;
    let head = serde_json::to_string(&ChartDataHead {
        symbol: request.symbol.as_str(),
        resolution: request.resolution.as_str(),
    })
    .unwrap_or_else(|_| "{}".into());
    let fields = chart.json_fields(request.format);
    let mut body = BytesMut::with_capacity(head.len() + fields.len() + 24);
    body.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
    body.extend_from_slice(b",");
    body.extend_from_slice(fields);
    body.extend_from_slice(if cached {
        b",\"cached\":true}"
    } else {
        b",\"cached\":false}"
    });
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body.freeze()))
}

/// The answer of `/api/formulas`: ids and names, never a key or URL.
#[derive(Serialize, utoipa::ToSchema)]
pub struct FormulaList<'a> {
    formulas: Vec<FormulaEntry<'a>>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct FormulaEntry<'a> {
    id: &'a str,
    name: &'a str,
}

/// The configured formulas (SPEC 3.3).
#[utoipa::path(tag = "formulas", responses((status = 200, description = "the formulas", body = FormulaList)))]
#[get("/api/formulas")]
pub async fn formulas(state: web::Data<AppState>) -> HttpResponse {
    let formulas = state
        .formulas
        .list()
        .map(|(id, name)| FormulaEntry { id, name })
        .collect();
    HttpResponse::Ok().json(FormulaList { formulas })
}

/// A formula's stock list (SPEC 3.3), cached for `cache.ttl_secs`.
#[utoipa::path(tag = "formulas",
    params(FormulaQuery),
    responses(
        (status = 200, description = "the stock list", body = FormulaResult),
        (status = 400, description = "`missing_parameter`, `duplicate_parameter`, `invalid_query`, `unknown_parameter`", body = ErrorBody),
        (status = 404, description = "`unknown_formula`", body = ErrorBody),
        (status = 502, description = "`formula_source_error`: MarketInOut failed or answered non-2xx", body = ErrorBody),
    ),
)]
#[get("/api/formula-results")]
pub async fn formula_results(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = formula_param(&Query::parse(req.query_string())?)?;
    if state.formulas.find(&id).is_none() {
        return Err(crate::formulas::FormulaError::Unknown(id).into());
    }
    let source = state.formulas.clone();
    let fetch_id = id.clone();
    let result = state
        .charts
        .cache
        .formula(&id, || async move { source.fetch(&fetch_id).await })
        .await
        .map_err(|e| ApiError::from((*e).clone()))?;
    Ok(HttpResponse::Ok().json(&*result))
}

/// A lease (SPEC 3.4).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Lease)]
pub struct LeaseBody {
    lease_id: String,
    ttl_secs: u64,
    ref_count: usize,
}

impl From<LeaseInfo> for LeaseBody {
    fn from(l: LeaseInfo) -> Self {
        LeaseBody {
            lease_id: l.lease_id,
            ttl_secs: l.ttl_secs,
            ref_count: l.ref_count,
        }
    }
}

/// Takes an explicit lease, which keeps the pool warm until released, cleaned up or expired.
#[utoipa::path(tag = "connections", responses(
    (status = 200, description = "the new lease", body = LeaseBody),
    (status = 503, description = "`unavailable`: the connection manager is not running", body = ErrorBody),
))]
#[post("/api/connections/acquire")]
pub async fn acquire(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let lease = state
        .manager
        .send(Acquire { explicit: true })
        .await
        .map_err(|_| lease_unavailable())?;
    Ok(HttpResponse::Ok().json(LeaseBody::from(lease)))
}

/// Lease ids are ours; anything else cannot name one, so it is not passed to the manager.
fn lease_id(raw: &str) -> Option<String> {
    (raw.len() <= 64 && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .then(|| raw.to_string())
}

/// Renews an explicit lease for another `ttlSecs`.
#[utoipa::path(tag = "connections",
    params(("lease_id" = String, Path, description = "the `leaseId` that `acquire` answered")),
    responses(
        (status = 200, description = "the renewed lease", body = LeaseBody),
        (status = 404, description = "`unknown_lease`: unknown or expired", body = ErrorBody),
        (status = 503, description = "`unavailable`", body = ErrorBody),
    ),
)]
#[post("/api/connections/{lease_id}/renew")]
pub async fn renew(
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let unknown = || {
        ApiError::not_found(
            "unknown_lease",
            "no such lease (it may have expired); acquire a new one",
        )
    };
    let lease_id = lease_id(&path).ok_or_else(unknown)?;
    let renewed = state
        .manager
        .send(Renew { lease_id })
        .await
        .map_err(|_| lease_unavailable())?;
    renewed
        .map(|l| HttpResponse::Ok().json(LeaseBody::from(l)))
        .ok_or_else(unknown)
}

/// Releases a lease; idempotent (unknown or already released leases also get 204).
#[utoipa::path(tag = "connections",
    params(("lease_id" = String, Path, description = "the `leaseId` that `acquire` answered")),
    responses(
        (status = 204, description = "released (or was not held)"),
        (status = 503, description = "`unavailable`", body = ErrorBody),
    ),
)]
#[delete("/api/connections/{lease_id}")]
pub async fn release(
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if let Some(lease_id) = lease_id(&path) {
        state
            .manager
            .send(Release { lease_id })
            .await
            .map_err(|_| lease_unavailable())?;
    }
    Ok(HttpResponse::NoContent().finish())
}

/// Drops every lease and closes every upstream connection.
#[utoipa::path(tag = "connections", responses(
    (status = 204, description = "done"),
    (status = 503, description = "`unavailable`", body = ErrorBody),
))]
#[post("/api/connections/force-cleanup")]
pub async fn force_cleanup(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state
        .manager
        .send(ForceCleanup)
        .await
        .map_err(|_| lease_unavailable())?;
    Ok(HttpResponse::NoContent().finish())
}

/// The answer of `/api/connections/stats`: the manager's and pool's state, and the cache's
/// counters.
#[derive(Serialize, utoipa::ToSchema)]
pub struct StatsBody {
    #[serde(flatten)]
    manager: ManagerStats,
    cache: CacheStats,
    live: LiveStats,
    /// Only with `cluster.redis_url` set.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    cluster: Option<ClusterStats>,
}

/// Leases, connection health, the pool and the cache (SPEC 3.4).
#[utoipa::path(tag = "connections", responses(
    (status = 200, description = "the stats", body = StatsBody),
    (status = 503, description = "`unavailable`", body = ErrorBody),
))]
#[get("/api/connections/stats")]
pub async fn stats(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let manager = state
        .manager
        .send(GetManagerStats)
        .await
        .map_err(|_| lease_unavailable())?;
    let cache = state.charts.cache.stats().await;
    let live = state.charts.live.stats();
    let cluster = match &state.charts.cluster {
        Some(cluster) => Some(cluster.stats(&manager.pool).await),
        None => None,
    };
    Ok(HttpResponse::Ok().json(StatsBody {
        manager,
        cache,
        live,
        cluster,
    }))
}
