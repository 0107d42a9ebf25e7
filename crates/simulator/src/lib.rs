//! The upstream simulator: a faithful fake of TradingView's chart WebSocket and of MarketInOut's
//! Web API on one port, with fault injection and counters, so chartgate runs and is tested with
//! no credentials and no network.
//!
//! # Layout
//!
//! - [`feed`]: `GET /socket.io/websocket`, the chart protocol, one task per connection; a
//!   directory of its parts (transport and send-side faults, heartbeats, authentication, calls,
//!   chart sessions, symbols, the schedule of series answers, composing answers).
//! - [`wire`]: the feed's answers written in the capture's shapes, with the simulator's constants.
//! - [`bars`]: deterministic bars per (symbol, resolution, count); each simulator's volumeless
//!   symbols and its cache of generated series; [`expected_bars`] is what tests compare against
//!   (the history of a series that has not been followed live).
//! - `live`: what series do after their history, one shared state per (symbol, resolution): the
//!   `du` updates of live series and the prices of quotes, and what later history answers read.
//! - [`screen`]: `GET /run/screen?key=`, MarketInOut's pipe-separated stock lists.
//! - [`tokens`]: `GET /chart/`, the page that carries the feed JWT, and the simulator's own
//!   signing and checking of those tokens.
//! - [`state`]: one simulator's shared state: faults, counters ([`SimStats`]), per-token
//!   connection counts, its bars. Nothing is process-global, so simulators in one process are
//!   independent.
//! - [`settings`]: the `simulator.*` settings and [`Faults`].
//! - [`tickers`]: the embedded NSE tickers screens are made of.
//! - `rng`: SplitMix64, the generator whose fixed sequence the fake data is made from.
//!
//! Control routes: `GET /sim/stats` (the [`SimStats`] JSON), `GET /sim/faults` and
//! `POST /sim/faults` (JSON with any keys of [`Faults`], the pace of live data included; `{}`
//! resets every fault to off and the pace to its defaults).

#![forbid(unsafe_code)]
// `json!` of the feed's full `symbol_resolved` object nests deeper than the default allows.
#![recursion_limit = "256"]

pub mod bars;
pub mod feed;
mod live;
mod rng;
pub mod screen;
pub mod settings;
pub mod state;
pub mod tickers;
pub mod tokens;
pub mod wire;

use std::hash::{Hash, Hasher};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpResponse, HttpServer, web};
use log::info;
use serde_json::json;

pub use bars::expected_bars;
pub use settings::{DEMO_FORMULAS, Faults, SimFormula, SimulatorSettings};
pub use state::SimStats;

use state::SimState;

/// A running simulator. Dropping it leaves the server running until its actix system stops; call
/// [`Simulator::stop`] to stop it.
pub struct Simulator {
    addr: SocketAddr,
    state: Arc<SimState>,
    handle: ServerHandle,
    server: actix_web::rt::task::JoinHandle<std::io::Result<()>>,
}

impl Simulator {
    /// Serves on an already-bound listener (tests bind 127.0.0.1:0) inside the current actix
    /// system.
    pub async fn start(
        settings: &SimulatorSettings,
        listener: TcpListener,
    ) -> std::io::Result<Simulator> {
        let addr = listener.local_addr()?;
        let state = Arc::new(SimState::new(settings));
        let data = web::Data::from(state.clone());
        // Two workers: answers are cached and cheap, and the machine is shared with the service.
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
        let server = HttpServer::new(move || App::new().app_data(data.clone()).configure(routes))
            .workers(workers)
            .disable_signals()
            .tcp_nodelay(true)
            .shutdown_timeout(1)
            .listen(listener)?
            .run();
        let handle = server.handle();
        let server = actix_web::rt::spawn(server);
        Ok(Simulator {
            addr,
            state,
            handle,
            server,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://127.0.0.1:PORT/socket.io/websocket`
    pub fn feed_url(&self) -> String {
        format!("ws://{}/socket.io/websocket", self.addr)
    }

    /// `http://127.0.0.1:PORT/run/screen` (append `?key=<16 hex>`).
    pub fn screen_url(&self) -> String {
        format!("http://{}/run/screen", self.addr)
    }

    /// `http://127.0.0.1:PORT/chart/`
    pub fn token_url(&self) -> String {
        format!("http://{}/chart/", self.addr)
    }

    /// Replaces every fault, as `POST /sim/faults` does; open connections see the new faults at
    /// their next action.
    pub fn set_faults(&self, faults: Faults) {
        self.state.set_faults(faults);
    }

    /// The faults in force now.
    pub fn faults(&self) -> Faults {
        (*self.state.faults()).clone()
    }

    /// A token with `claims`, signed as this simulator's token page signs them: for a client or a
    /// test that needs claims the page does not give (an expiry already past, say).
    pub fn issue_token(&self, claims: &chartgate_protocol::token::Claims) -> String {
        tokens::issue(claims, &self.state.token_key)
    }

    /// The same numbers as `GET /sim/stats`.
    pub fn stats(&self) -> SimStats {
        self.state.stats()
    }

    /// Stops serving and closes every connection.
    pub async fn stop(self) {
        self.handle.stop(false).await;
        let _ = self.server.await;
    }
}

fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/socket.io/websocket", web::get().to(feed::ws_route))
        .route("/run/screen", web::get().to(screen::screen))
        .route("/chart/", web::get().to(tokens::chart_page))
        .route("/chart", web::get().to(tokens::chart_page))
        .route("/sim/stats", web::get().to(get_stats))
        .route("/sim/faults", web::get().to(get_faults))
        .route("/sim/faults", web::post().to(post_faults))
        .default_service(web::to(|| async {
            HttpResponse::NotFound()
                .content_type("text/plain; charset=utf-8")
                .body("not a simulator route: try /socket.io/websocket, /run/screen?key=, /chart/, /sim/stats, /sim/faults\n")
        }));
}

async fn get_stats(state: web::Data<SimState>) -> HttpResponse {
    HttpResponse::Ok().json(state.stats())
}

async fn get_faults(state: web::Data<SimState>) -> HttpResponse {
    HttpResponse::Ok().json(&*state.faults())
}

/// `POST /sim/faults`: the body is the whole new fault set (absent keys are off).
async fn post_faults(state: web::Data<SimState>, body: web::Bytes) -> HttpResponse {
    let bad = |message: String| {
        HttpResponse::BadRequest().json(json!({"error": message, "code": "bad_faults"}))
    };
    let text = if body.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        &body[..]
    };
    let mut de = serde_json::Deserializer::from_slice(text);
    let faults: Faults = match serde_path_to_error::deserialize(&mut de) {
        Ok(f) => f,
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            return bad(if path == "." {
                format!("invalid faults: {inner}")
            } else {
                format!("invalid faults at `{path}`: {inner}")
            });
        }
    };
    if faults.reject_upgrades != 0 && !(400..=599).contains(&faults.reject_upgrades) {
        return bad(
            "invalid faults at `reject_upgrades`: expected an HTTP error status (400 to 599) or 0 for off"
                .into(),
        );
    }
    info!("simulator: faults set to {}", json!(faults));
    state.set_faults(faults);
    HttpResponse::Ok().json(&*state.faults())
}

/// A hash of `value` that is the same on every run (FNV-1a), for the seeds of the simulator's
/// deterministic data: the same request always gets the same bars and screens.
pub(crate) fn stable_hash(value: impl Hash) -> u64 {
    let mut hasher = fnv::FnvHasher::default();
    value.hash(&mut hasher);
    hasher.finish()
}

/// `chartgate simulate`: runs the simulator in its own actix system on `settings.bind` until
/// Ctrl-C.
pub fn run_standalone(settings: SimulatorSettings) -> std::io::Result<()> {
    actix_web::rt::System::new().block_on(async move {
        let bind = settings.bind;
        let listener = TcpListener::bind(bind).map_err(|e| {
            std::io::Error::new(e.kind(), format!("simulator: cannot listen on {bind}: {e}"))
        })?;
        let sim = Simulator::start(&settings, listener).await?;
        info!(
            "simulator: chart feed {}, MarketInOut {}, token page {}",
            sim.feed_url(),
            sim.screen_url(),
            sim.token_url()
        );
        info!(
            "simulator: heartbeats every {} s; faults {}; stats at http://{}/sim/stats",
            settings.heartbeat_secs,
            json!(sim.faults()),
            sim.addr()
        );
        let stopped = actix_web::rt::signal::ctrl_c().await;
        info!("simulator: stopping");
        sim.stop().await;
        stopped
    })
}
