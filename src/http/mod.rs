//! The HTTP API (SPEC section 3): routes, the SSE stream, errors, authentication, CORS, request
//! metrics and the demo page.
//!
//! - [`params`]: query strings and bodies parsed into domain types.
//! - [`error`]: `ApiError`, the one mapping from failures to status codes and JSON.
//! - [`stream`] and [`stream_id`]: the formula stream and its resumable event ids.
//! - [`routes`]: the handlers.

pub mod error;
pub mod params;
pub mod routes;
pub mod sse;
pub mod stream;
pub mod stream_id;

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::{Next, from_fn};
use actix_web::{Error, ResponseError, web};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

use self::error::ApiError;
use self::params::Query;
use self::stream::StreamDeps;
use crate::charts::ChartService;
use crate::config::Settings;
use crate::formulas::FormulaSource;
use crate::manager::{GetManagerStats, Manager};

/// Everything the handlers share; made once, before the server's workers start.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub charts: ChartService,
    pub formulas: FormulaSource,
    pub manager: Addr<Manager>,
    pub metrics: PrometheusHandle,
    /// `true` once the server is shutting down.
    pub shutdown: watch::Receiver<bool>,
    /// The feed's `host:port`, probed by `/readyz` when no connection is open.
    pub feed_addr: String,
    /// The formula source's `host:port`, probed by `/readyz`.
    pub formula_addr: Option<String>,
}

impl AppState {
    pub fn stream_deps(&self) -> StreamDeps {
        StreamDeps {
            charts: self.charts.clone(),
            formulas: self.formulas.clone(),
            settings: self.settings.stream.clone(),
            shutdown: self.shutdown.clone(),
        }
    }

    /// Ready when connections are open, or when the pool is not down and the feed and formula
    /// source accept TCP connections.
    pub async fn readiness(&self) -> (bool, String) {
        let Ok(stats) = self.manager.send(GetManagerStats).await else {
            return (false, "the connection manager is not running".into());
        };
        if stats.pool.open_connections > 0 {
            return (
                true,
                format!("{} upstream connections open", stats.pool.open_connections),
            );
        }
        if stats.pool.down {
            return (
                false,
                "the chart feed is down (reconnect attempts exhausted)".into(),
            );
        }
        for (what, addr) in [
            ("chart feed", Some(&self.feed_addr)),
            ("formula source", self.formula_addr.as_ref()),
        ] {
            let Some(addr) = addr else { continue };
            let probe = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::net::TcpStream::connect(addr.as_str()),
            )
            .await;
            if !matches!(probe, Ok(Ok(_))) {
                return (false, format!("the {what} is not reachable"));
            }
        }
        (true, "feed and formula source reachable".into())
    }
}

/// Compares tokens in time independent of where they differ.
fn same_token(given: &str, expected: &str) -> bool {
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// `/api/*` needs the configured token, as a Bearer header or `access_token` query parameter.
async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let expected = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.settings.server.api_token.clone())
        .unwrap_or_default();
    if !expected.is_empty() {
        let header = req
            .headers()
            .get("Authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .map(str::to_string);
        let query = || {
            Query::parse(req.query_string())
                .ok()
                .and_then(|q| q.get("access_token").ok().flatten().map(str::to_string))
        };
        let given = header.or_else(query);
        if !given.is_some_and(|g| same_token(&g, expected.expose())) {
            let response = ApiError::unauthorized().error_response();
            return Ok(req.into_response(response));
        }
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// Counts requests by route pattern and status.
async fn count_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let response = next.call(req).await?;
    let route = response
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".into());
    let status = response.status().as_u16().to_string();
    metrics::counter!("chartgate_http_requests_total", "route" => route, "status" => status)
        .increment(1);
    Ok(response)
}

fn cors(settings: &Settings) -> actix_cors::Cors {
    let origins = &settings.server.cors_origins;
    let base = actix_cors::Cors::default()
        .allowed_methods(["GET", "POST", "DELETE", "OPTIONS"])
        .allowed_headers([
            "Authorization",
            "Content-Type",
            "Last-Event-ID",
            "Cache-Control",
        ])
        .max_age(3600);
    if origins.iter().any(|o| o == "*") {
        base.allow_any_origin()
    } else {
        origins
            .iter()
            .fold(base, |cors, origin| cors.allowed_origin(origin))
    }
}

fn json_error(err: actix_web::error::JsonPayloadError, _: &actix_web::HttpRequest) -> Error {
    use actix_web::error::JsonPayloadError as E;
    use actix_web::http::StatusCode;
    let api = match &err {
        E::ContentType => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        ),
        E::Overflow { limit } | E::OverflowKnownLength { limit, .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {limit} bytes"),
        ),
        E::Deserialize(e) => {
            ApiError::bad_request("invalid_json", format!("the JSON body is not valid: {e}"))
        }
        _ => ApiError::bad_request("invalid_json", "the JSON body could not be read"),
    };
    api.into()
}

/// Registers every route on an `App` (used by the server and by tests alike).
pub fn configure(state: web::Data<AppState>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        let settings = state.settings.clone();
        cfg.app_data(state)
            .app_data(
                web::JsonConfig::default()
                    .limit(1024 * 1024)
                    .error_handler(json_error),
            )
            .service(
                web::scope("")
                    .wrap(from_fn(count_requests))
                    .wrap(cors(&settings))
                    .route("/", web::get().to(routes::index))
                    .route("/healthz", web::get().to(routes::healthz))
                    .route("/readyz", web::get().to(routes::readyz))
                    .route("/metrics", web::get().to(routes::metrics))
                    .service(
                        web::scope("/api")
                            .wrap(from_fn(require_token))
                            .service(
                                web::resource("/formula-results-with-charts")
                                    .route(web::get().to(routes::stream_get))
                                    .route(web::post().to(routes::stream_post))
                                    .default_service(web::to(routes::method_not_allowed)),
                            )
                            .service(resource_get("/chart-data", routes::chart_data))
                            .service(resource_get("/formulas", routes::formulas))
                            .service(resource_get("/formula-results", routes::formula_results))
                            .service(resource_get("/connections/stats", routes::stats))
                            .service(resource_post("/connections/acquire", routes::acquire))
                            .service(resource_post(
                                "/connections/force-cleanup",
                                routes::force_cleanup,
                            ))
                            .service(resource_post(
                                "/connections/{lease_id}/renew",
                                routes::renew,
                            ))
                            .service(
                                web::resource("/connections/{lease_id}")
                                    .route(web::delete().to(routes::release))
                                    .default_service(web::to(routes::method_not_allowed)),
                            )
                            .default_service(web::to(routes::not_found)),
                    )
                    .default_service(web::to(routes::not_found)),
            );
    }
}

fn resource_get<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler))
        .default_service(web::to(routes::method_not_allowed))
}

fn resource_post<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::post().to(handler))
        .default_service(web::to(routes::method_not_allowed))
}
