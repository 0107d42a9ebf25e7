//! Route handlers: thin functions that parse input into domain types, ask the actors or the cache,
//! and shape the answer. Errors go through [`ApiError`].

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use bytes::BytesMut;
use serde::Serialize;
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::params::{ChartRequest, Query, StreamBody, StreamRequest, formula_param};
use super::stream;
use crate::cache::ChartKey;
use crate::manager::{
    Acquire, ForceCleanup, GetManagerStats, LeaseInfo, Release, Renew, acquire_implicit,
};

const INDEX_HTML: &str = include_str!("assets/index.html");

pub async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(INDEX_HTML)
}

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let (ready, reason) = state.readiness().await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    HttpResponse::build(status).json(json!({ "ready": ready, "reason": reason }))
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
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

pub async fn stream_get(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = Query::parse(req.query_string())?;
    let request = StreamRequest::from_query(&query, state.settings.server.max_symbols_per_request)?;
    open_stream(req, state, request).await
}

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

pub async fn formulas(state: web::Data<AppState>) -> HttpResponse {
    let list: Vec<_> = state
        .formulas
        .list()
        .map(|(id, name)| json!({ "id": id, "name": name }))
        .collect();
    HttpResponse::Ok().json(json!({ "formulas": list }))
}

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

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LeaseBody {
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

pub async fn force_cleanup(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state
        .manager
        .send(ForceCleanup)
        .await
        .map_err(|_| lease_unavailable())?;
    Ok(HttpResponse::NoContent().finish())
}

pub async fn stats(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let stats = state
        .manager
        .send(GetManagerStats)
        .await
        .map_err(|_| lease_unavailable())?;
    let mut body = serde_json::to_value(stats).unwrap_or_else(|_| json!({}));
    body["cache"] =
        serde_json::to_value(state.charts.cache.stats().await).unwrap_or_else(|_| json!({}));
    Ok(HttpResponse::Ok().json(body))
}
