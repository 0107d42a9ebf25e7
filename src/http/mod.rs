//! The HTTP API (SPEC section 3): routes, the SSE stream, errors, authentication, CORS, request
//! metrics and the demo page.
//!
//! - [`params`]: query strings and bodies parsed into domain types.
//! - [`error`]: `ApiError`, the one mapping from failures to status codes and JSON.
//! - [`stream`] and [`stream_id`]: the formula stream and its resumable event ids.
//! - [`routes`]: the handlers, each with its `#[utoipa::path]` (method, path, parameters,
//!   responses).
//! - [`openapi`]: `GET /api/openapi.json`, built from [`route_table`], the one list of routes that
//!   [`configure`] registers.

pub mod error;
pub mod openapi;
pub mod params;
pub mod routes;
pub mod sse;
pub mod stream;
pub mod stream_id;

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{HttpServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::{Next, from_fn};
use actix_web::{Error, ResponseError, web};
use tokio::sync::watch;

use self::error::ApiError;
use self::params::Query;
use self::stream::StreamDeps;
use crate::charts::ChartService;
use crate::config::Settings;
use crate::formulas::FormulaSource;
use crate::manager::{GetManagerStats, Manager};
use crate::telemetry::Metrics;

/// Everything the handlers share; made once, before the server's workers start.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub charts: ChartService,
    pub formulas: FormulaSource,
    pub manager: Addr<Manager>,
    pub metrics: Metrics,
    /// `chartgate_sse_streams_open`, taken once.
    pub open_streams: metrics::Gauge,
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
            resume_window: std::time::Duration::from_secs(self.settings.live.resume_window_secs),
            shutdown: self.shutdown.clone(),
            open_streams: self.open_streams.clone(),
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

/// Whether `path` is under `/api` (`/api` itself, or `/api/...`), where SPEC 2's
/// `server.api_token` applies. The token middleware and the document's security requirements
/// both ask this, so what is documented as needing the token is what needs it.
pub fn is_api_path(path: &str) -> bool {
    path.strip_prefix("/api")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
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
    if !expected.is_empty() && is_api_path(req.path()) {
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
    if let Some(state) = response.request().app_data::<web::Data<AppState>>() {
        let labels = vec![
            metrics::Label::new("route", route),
            metrics::Label::new("status", status),
        ];
        state
            .metrics
            .counter_with("chartgate_http_requests_total", labels)
            .increment(1);
    }
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

/// Registers every route on an `App` (used by the server and by tests alike): the routes of
/// [`route_table`], each path followed by a catch-all that answers other methods with a JSON 405,
/// and a JSON 404 for everything else.
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
                    .wrap(from_fn(require_token))
                    .wrap(from_fn(count_requests))
                    .wrap(cors(&settings))
                    .configure(|cfg| {
                        let mut registrar = Registrar {
                            cfg,
                            open: None,
                            closed: Vec::new(),
                        };
                        route_table(&mut registrar);
                        registrar.close();
                    })
                    .default_service(web::to(routes::not_found)),
            );
    }
}

/// A handler as the route table holds it: an actix-web service (made by `#[get]`, `#[post]` or
/// `#[delete]`) that also knows its OpenAPI operation (made by `#[utoipa::path]`, which reads the
/// same attribute for the method and path).
///
/// `SchemaReferences` and `Tags` are the (hidden) traits through which utoipa's own `OpenApi`
/// derive and utoipa-actix-web collect a path's schemas and tags.
pub trait DocumentedRoute:
    HttpServiceFactory
    + utoipa::Path
    + utoipa::__dev::SchemaReferences
    + utoipa::__dev::Tags<'static>
    + 'static
{
}

impl<T> DocumentedRoute for T where
    T: HttpServiceFactory
        + utoipa::Path
        + utoipa::__dev::SchemaReferences
        + utoipa::__dev::Tags<'static>
        + 'static
{
}

/// What [`route_table`] hands each route to: the registrar of [`configure`], or the collector
/// of [`openapi::document`].
pub trait RouteSink {
    fn route<R: DocumentedRoute>(&mut self, route: R);
}

/// Every route the service serves, in matching order. Routes of one path are listed together, so
/// that path's 405 catch-all comes right after them (before a later pattern such as
/// `/api/connections/{lease_id}` could take the request).
pub fn route_table(sink: &mut impl RouteSink) {
    sink.route(routes::index);
    sink.route(routes::healthz);
    sink.route(routes::readyz);
    sink.route(routes::metrics);
    sink.route(routes::openapi);
    sink.route(routes::stream_get);
    sink.route(routes::stream_post);
    sink.route(routes::chart_data);
    sink.route(routes::formulas);
    sink.route(routes::formula_results);
    sink.route(routes::stats);
    sink.route(routes::acquire);
    sink.route(routes::force_cleanup);
    sink.route(routes::renew);
    sink.route(routes::release);
}

/// Every (method, path) the service registers, as the route table lists them: for clients that
/// want to know what a chartgate serves, and for checking the API description against it.
pub fn registered_routes() -> std::collections::BTreeSet<(String, String)> {
    struct Collect(std::collections::BTreeSet<(String, String)>);
    impl RouteSink for Collect {
        fn route<R: DocumentedRoute>(&mut self, _route: R) {
            for method in R::methods() {
                // `HttpMethod` serialises as its lower-case name, as the document writes it.
                if let Ok(serde_json::Value::String(name)) = serde_json::to_value(method) {
                    self.0.insert((name, R::path()));
                }
            }
        }
    }
    let mut collect = Collect(Default::default());
    route_table(&mut collect);
    collect.0
}

/// Registers the route table's services, closing each path with a catch-all resource whose
/// default service is the JSON 405 (a request whose method no route of the path takes falls
/// through the routes' method guards to it).
struct Registrar<'a> {
    cfg: &'a mut web::ServiceConfig,
    /// The path whose routes are being registered.
    open: Option<String>,
    /// Paths already closed: a route listed apart from the others of its path would come after
    /// that path's catch-all and never be reached.
    closed: Vec<String>,
}

impl Registrar<'_> {
    fn close(&mut self) {
        if let Some(path) = self.open.take() {
            self.cfg.service(
                web::resource(path.as_str()).default_service(web::to(routes::method_not_allowed)),
            );
            self.closed.push(path);
        }
    }
}

impl RouteSink for Registrar<'_> {
    fn route<R: DocumentedRoute>(&mut self, route: R) {
        let path = R::path();
        if self.open.as_deref() != Some(path.as_str()) {
            self.close();
            // A mistake in the table above, caught by every test that starts the app.
            assert!(
                !self.closed.contains(&path),
                "route_table lists {path} apart from its other routes"
            );
            self.open = Some(path);
        }
        self.cfg.service(route);
    }
}
