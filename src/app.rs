//! Startup and shutdown of the service: the embedded simulator (in `embedded` mode), the pool and
//! manager actors (started once, before the HTTP workers), the cache, the formula source and the
//! HTTP server on an already-bound listener, so tests can use port 0.
//!
//! Shutdown on Ctrl-C or SIGTERM: stop accepting, end open streams with a `stream-error` the
//! client can resume from, close the upstream connections, stop the simulator, exit 0.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr};
use actix_web::{App, HttpServer, web};
use tokio::sync::watch;

use crate::cache::Cache;
use crate::charts::ChartService;
use crate::cluster::Cluster;
use crate::config::{Settings, UpstreamMode};
use crate::formulas::{FormulaSource, MARKETINOUT_SCREEN_URL, Universe};
use crate::http::{AppState, configure};
use crate::live::Live;
use crate::manager::Manager;
use crate::telemetry::Metrics;
use crate::upstream::{CloseAll, Pool, UpstreamTarget};
use chartgate_simulator::Simulator;

/// `host:port` of a URL, for readiness probes.
fn host_port(url: &str) -> Option<String> {
    let uri: awc::http::Uri = url.parse().ok()?;
    let host = uri.host()?;
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("https" | "wss") => 443,
        _ => 80,
    });
    Some(format!("{host}:{port}"))
}

/// chartgate's parts, started and ready to be mounted on an actix-web `App`: the embedded
/// simulator (in `embedded` mode), the pool and manager actors, the cache and the formula source.
/// [`Application`] serves it on a listener; a test of another app can mount it in actix's test
/// server instead:
///
/// ```no_run
/// # async fn example() -> std::io::Result<()> {
/// use actix_web::{App, test};
///
/// let chartgate = chartgate::Chartgate::start(chartgate::config::Settings::default()).await?;
/// let app = test::init_service(App::new().configure(chartgate.routes())).await;
/// let request = test::TestRequest::get().uri("/api/formulas").to_request();
/// let formulas: serde_json::Value = test::call_and_read_body_json(&app, request).await;
/// # Ok(()) }
/// ```
pub struct Chartgate {
    state: web::Data<AppState>,
    simulator: Option<Simulator>,
    pool: Addr<Pool>,
    manager: Addr<Manager>,
    /// With `cluster.redis_url` set: the shared state's handle, told to leave on stop.
    cluster: Option<Cluster>,
    shutdown: watch::Sender<bool>,
}

impl Chartgate {
    /// Starts every part inside the current actix system (`#[actix_web::main]`,
    /// `#[actix_web::test]`). The actors are started once here, not per HTTP worker.
    pub async fn start(mut settings: Settings) -> std::io::Result<Chartgate> {
        let simulator = match settings.upstream.mode {
            UpstreamMode::Embedded => {
                let sim_listener = TcpListener::bind(("127.0.0.1", 0))?;
                let sim = Simulator::start(&settings.simulator, sim_listener).await?;
                settings.upstream.url = sim.feed_url();
                settings.upstream.token_url = sim.token_url();
                if settings.formulas.source_url.is_empty() {
                    settings.formulas.source_url = sim.screen_url();
                }
                log::info!(
                    "simulator: embedded chart feed and MarketInOut at http://{}",
                    sim.addr()
                );
                Some(sim)
            }
            UpstreamMode::Remote => {
                if settings.formulas.source_url.is_empty() {
                    settings.formulas.source_url = MARKETINOUT_SCREEN_URL.into();
                }
                None
            }
        };
        let universe = match settings.formulas.universe_file.as_str() {
            // The embedded simulator's screens list its own tickers, whose names it knows.
            "" if simulator.is_some() => {
                Universe::from_names(chartgate_simulator::tickers::NSE_TICKERS.iter().filter_map(
                    |(ticker, name)| Some((format!("NSE:{ticker}").parse().ok()?, *name)),
                ))
            }
            "" => Universe::default(),
            path => {
                let universe =
                    Universe::load(std::path::Path::new(path)).map_err(std::io::Error::other)?;
                log::info!(
                    "formulas: enriching stock lists from {} symbols in {path}",
                    universe.len()
                );
                universe
            }
        };
        let settings = Arc::new(settings);
        let metrics = Metrics::new();
        let upkeep = metrics.clone();
        actix_web::rt::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                upkeep.upkeep();
            }
        });
        let target = UpstreamTarget::from_settings(&settings);
        // Made here, on the system runtime, once: see `cluster`'s module doc.
        let cluster = Cluster::start(&settings, &metrics)?;
        let pool = Pool::new(settings.clone(), target, &metrics)
            .with_cluster(cluster.clone())
            .start();
        let manager = Manager::new(settings.clone(), pool.clone(), &metrics).start();
        let formulas = FormulaSource::new(
            &settings.formulas,
            settings.formulas.source_url.clone(),
            universe,
            Duration::from_millis(settings.formulas.timeout_ms),
        );
        let (shutdown, shutdown_rx) = watch::channel(false);
        let cache = Arc::new(Cache::new(&settings.cache, &metrics).with_cluster(cluster.clone()));
        let live = Live::new(
            &settings,
            pool.clone(),
            cache.clone(),
            cluster.clone(),
            &metrics,
        );
        let state = web::Data::new(AppState {
            settings: settings.clone(),
            charts: ChartService::new(cache, pool.clone(), live, &metrics)
                .with_cluster(cluster.clone()),
            formula_addr: host_port(&settings.formulas.source_url),
            feed_addr: host_port(&settings.upstream.url).unwrap_or_default(),
            formulas,
            manager: manager.clone(),
            open_streams: metrics.gauge("chartgate_sse_streams_open"),
            metrics,
            shutdown: shutdown_rx,
        });
        Ok(Chartgate {
            state,
            simulator,
            pool,
            manager,
            cluster,
            shutdown,
        })
    }

    /// Registers every route (the API, the stream, the demo page, health and metrics) on an
    /// `App`; call it once per `App` (`HttpServer` and `actix_test::start` call their factory
    /// once per worker).
    pub fn routes(&self) -> impl Fn(&mut web::ServiceConfig) + Clone + Send + 'static {
        let state = self.state.clone();
        move |cfg| configure(state.clone())(cfg)
    }

    /// The settings in force, with embedded mode's simulator addresses filled in.
    pub fn settings(&self) -> &Settings {
        &self.state.settings
    }

    /// The embedded simulator, in `embedded` mode.
    pub fn simulator(&self) -> Option<&Simulator> {
        self.simulator.as_ref()
    }

    pub fn manager(&self) -> &Addr<Manager> {
        &self.manager
    }

    /// Tells open streams that the service is going away: each ends with a `stream-error` the
    /// client can resume from.
    pub fn begin_shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Closes the upstream connections and stops the embedded simulator.
    pub async fn stop(self) {
        self.begin_shutdown();
        self.state.charts.live.stop().await;
        let closed = self.pool.send(CloseAll).await.unwrap_or(0);
        log::info!("shutdown: closed {closed} upstream connections");
        if let Some(cluster) = &self.cluster {
            cluster.stop().await;
            log::info!(
                "shutdown: instance {} left the cluster",
                cluster.instance_id()
            );
        }
        if let Some(sim) = self.simulator {
            sim.stop().await;
        }
    }
}

/// A running service: [`Chartgate`] served by an `HttpServer` on an already-bound listener.
pub struct Application {
    port: u16,
    server: actix_web::dev::Server,
    chartgate: Chartgate,
}

impl Application {
    /// Builds everything and starts serving on `listener`, inside the current actix system.
    pub async fn build(settings: Settings, listener: TcpListener) -> std::io::Result<Application> {
        let chartgate = Chartgate::start(settings).await?;
        let port = listener.local_addr()?.port();
        let routes = chartgate.routes();
        let server = HttpServer::new(move || App::new().configure(routes.clone()))
            .listen(listener)?
            .disable_signals()
            .tcp_nodelay(true)
            .shutdown_timeout(10)
            .run();
        Ok(Application {
            port,
            server,
            chartgate,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The embedded simulator, in `embedded` mode.
    pub fn simulator(&self) -> Option<&Simulator> {
        self.chartgate.simulator()
    }

    pub fn manager(&self) -> &Addr<Manager> {
        self.chartgate.manager()
    }

    pub fn settings(&self) -> &Settings {
        self.chartgate.settings()
    }

    /// A handle that stops the service gracefully (what Ctrl-C and SIGTERM do).
    pub fn stopper(&self) -> Stopper {
        Stopper {
            shutdown: self.chartgate.shutdown.clone(),
            server: self.server.handle(),
        }
    }

    /// Serves until stopped, then closes upstream connections and the simulator.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        self.chartgate.stop().await;
        result
    }
}

/// Stops an [`Application`] gracefully.
#[derive(Clone)]
pub struct Stopper {
    shutdown: watch::Sender<bool>,
    server: actix_web::dev::ServerHandle,
}

impl Stopper {
    pub async fn stop(&self) {
        let _ = self.shutdown.send(true);
        self.server.stop(true).await;
    }
}

/// Resolves on Ctrl-C or SIGTERM. The listeners are registered when this is called (not when the
/// future is first polled), so a signal that arrives as soon as the service says it is listening
/// is already caught.
fn termination() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    #[cfg(unix)]
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = interrupt.recv() => log::info!("shutdown: interrupted (Ctrl-C)"),
            _ = term.recv() => log::info!("shutdown: SIGTERM"),
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// `chartgate serve`: runs the service until Ctrl-C or SIGTERM.
pub fn serve(settings: Settings) -> std::io::Result<()> {
    actix_web::rt::System::new().block_on(async move {
        let bind = settings.server.bind;
        let listener = TcpListener::bind(bind)
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {bind}: {e}")))?;
        // The address really bound (port 0 in the configuration means any free port).
        let bind = listener.local_addr()?;
        let app = Application::build(settings, listener).await?;
        let signalled = termination()?;
        println!("chartgate: listening on http://{bind}/");
        log::info!("http: listening on http://{bind}/ (demo page at /, API under /api)");
        let stopper = app.stopper();
        actix_web::rt::spawn(async move {
            signalled.await;
            log::info!("shutdown: stopping; ending open streams");
            stopper.stop().await;
        });
        app.run_until_stopped().await
    })
}
