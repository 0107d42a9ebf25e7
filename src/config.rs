//! Typed settings, layered: built-in defaults, then the TOML file, then `CHARTGATE__SECTION__KEY`
//! environment variables, then command-line flags (later wins).
//!
//! Every key is checked at start-up: an unknown key, a value of the wrong type or a value out of
//! range stops the process with a message naming the key (`pool.max_conections`,
//! `upstream.connect_timeout_ms`), so a typo never silently falls back to a default. Secrets are
//! wrapped in [`Secret`], which neither `Debug` nor error messages reveal.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use chartgate_simulator::DEMO_FORMULAS;
use chartgate_simulator::SimulatorSettings;
use chartgate_simulator::screen::is_formula_key;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The config file used when `--config` is not given (optional: built-in defaults apply without
/// it).
pub const DEFAULT_CONFIG_FILE: &str = "config/default.toml";
/// Environment variables `CHARTGATE__POOL__MAX_CONNECTIONS` and the like.
pub const ENV_PREFIX: &str = "CHARTGATE";

/// A configuration problem, naming the key (or file) and never a secret's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("unknown config key `{key}`")]
    UnknownKey { key: String },
    #[error("config key `{key}`: {reason}")]
    BadValue { key: String, reason: String },
}

/// A secret string (token, cookie). `Debug` and `Display` print `<redacted>`; only
/// [`Secret::expose`] gives the value, at the one place that sends it upstream.
#[derive(Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<empty>"
        } else {
            "<redacted>"
        })
    }
}

impl<'de> Deserialize<'de> for Secret {
    /// Accepts a string; any other type is refused without echoing the value.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Secret(s)),
            _ => Err(serde::de::Error::custom(
                "expected a string (value not shown: it is a secret)",
            )),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Listen address of the HTTP API.
    pub bind: SocketAddr,
    /// When set, `/api/*` needs `Authorization: Bearer <token>` or `?access_token=`.
    pub api_token: Secret,
    /// Larger symbol lists get 400 rather than tying up the pool.
    pub max_symbols_per_request: usize,
    /// Browser origins allowed to call the API (`["*"]` for any).
    pub cors_origins: Vec<String>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_token: Secret::default(),
            max_symbols_per_request: 1000,
            cors_origins: Vec::new(),
        }
    }
}

/// Where the chart feed comes from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamMode {
    /// Start the simulator in-process on a free loopback port and use it.
    Embedded,
    /// Connect to `upstream.url`.
    Remote,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSettings {
    pub mode: UpstreamMode,
    /// Chart feed WebSocket URL (`?from=chart&type=chart` is added when absent).
    pub url: String,
    /// `Origin` header of the handshake; the feed refuses other origins.
    pub origin: String,
    /// A fixed JWT. Empty with no session cookies means `unauthorized_user_token` (delayed data).
    pub auth_token: Secret,
    /// TradingView session cookies: when both are set the JWT is fetched from `token_url`.
    pub session_id: Secret,
    pub session_sign: Secret,
    /// Page whose HTML holds `"auth_token":"<jwt>"`.
    pub token_url: String,
    /// Handshake plus authentication.
    pub connect_timeout_ms: u64,
    /// One chart fetch, from dispatch to `series_completed`.
    pub request_timeout_ms: u64,
    /// Largest WebSocket message accepted from upstream (a 300-bar answer is about 118 KB).
    pub max_frame_bytes: usize,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            mode: UpstreamMode::Embedded,
            url: "wss://prodata.tradingview.com/socket.io/websocket".into(),
            origin: "https://www.tradingview.com".into(),
            auth_token: Secret::default(),
            session_id: Secret::default(),
            session_sign: Secret::default(),
            token_url: "https://www.tradingview.com/chart/".into(),
            connect_timeout_ms: 30_000,
            request_timeout_ms: 15_000,
            max_frame_bytes: 8 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PoolSettings {
    /// Upper bound on open upstream connections (also capped by the JWT's `max_connections`).
    pub max_connections: usize,
    /// Chart fetches in flight on one connection at once.
    pub requests_per_connection: usize,
    /// Fetches waiting for a free slot; beyond it requests fail fast with 503.
    pub max_queue: usize,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: 10,
            requests_per_connection: 10,
            max_queue: 10_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ManagerSettings {
    /// After the last lease is released connections stay open this long; 0 closes them at once.
    pub idle_timeout_secs: u64,
    pub health_check_interval_secs: u64,
    /// A connection with no upstream traffic (heartbeats included) for this long is replaced.
    pub stale_after_secs: u64,
    /// Per failure episode.
    pub max_reconnect_attempts: u32,
    /// First backoff; doubles each attempt, with jitter.
    pub reconnect_backoff_ms: u64,
    /// An explicit lease not renewed for this long expires.
    pub lease_ttl_secs: u64,
}

impl Default for ManagerSettings {
    fn default() -> Self {
        ManagerSettings {
            idle_timeout_secs: 300,
            health_check_interval_secs: 30,
            stale_after_secs: 25,
            max_reconnect_attempts: 3,
            reconnect_backoff_ms: 1000,
            lease_ttl_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// Chart and formula-result lifetime.
    pub ttl_secs: u64,
    /// Size bound; least recently used entries go first.
    pub max_bytes: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            ttl_secs: 300,
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StreamSettings {
    /// Symbols per `chart-batch` event.
    pub batch_size: usize,
    /// An SSE comment is sent when nothing else was sent for this long.
    pub keep_alive_secs: u64,
    /// SSE `retry:` sent first.
    pub retry_ms: u64,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            batch_size: 18,
            keep_alive_secs: 15,
            retry_ms: 2000,
        }
    }
}

/// Live streams (`live=true`): how long unfollowed series stay subscribed, how many one
/// connection carries, how far back a live stream can be resumed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LiveSettings {
    /// An upstream live series with no follower left is kept this long, so a page reload does
    /// not resubscribe.
    pub linger_secs: u64,
    /// Live series one upstream connection carries at once, besides its fetches.
    pub series_per_connection: usize,
    /// How far back a live stream can be resumed by `Last-Event-ID` without starting over.
    pub resume_window_secs: u64,
}

impl Default for LiveSettings {
    fn default() -> Self {
        LiveSettings {
            linger_secs: 30,
            series_per_connection: 50,
            resume_window_secs: 300,
        }
    }
}

/// Several instances as one service (SPEC 7): where their shared state lives, and this instance's
/// name among them. With `redis_url` empty nothing of this applies.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// `redis://[:password@]host[:port][/db]`, or `rediss://` for TLS. Empty: one instance, all
    /// state in process. A secret, since it may carry a password: logs show
    /// [`ClusterSettings::redis_url_redacted`].
    pub redis_url: Secret,
    /// This instance's name in the cluster (membership keys, stats, logs); empty: host name and
    /// process id.
    pub instance_id: String,
    /// Upstream connections allowed across all instances; 0: the token's `max_connections` claim,
    /// else `pool.max_connections`.
    pub max_upstream_connections: usize,
    /// How long a live series' owner holds it without renewing (renewed every third of it): the
    /// longest its updates pause when the owner dies, before another instance takes it over.
    pub live_lease_secs: u64,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            redis_url: Secret::default(),
            instance_id: String::new(),
            max_upstream_connections: 0,
            live_lease_secs: 5,
        }
    }
}

impl ClusterSettings {
    /// Whether several instances share state through Redis.
    pub fn enabled(&self) -> bool {
        !self.redis_url.is_empty()
    }

    /// `redis_url` with any password replaced by `***`, for logs and messages.
    pub fn redis_url_redacted(&self) -> String {
        redact_url_password(self.redis_url.expose())
    }
}

/// `scheme://user:password@rest` as `scheme://user:***@rest`; a URL without a password unchanged.
/// The user-info ends at the last `@` before the path, so a password holding `@` or `/` is still
/// hidden whole.
pub fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return if url.is_empty() {
            String::new()
        } else {
            "<not a URL>".into()
        };
    };
    let Some(at) = rest.rfind('@') else {
        return url.to_string();
    };
    let (userinfo, host) = (&rest[..at], &rest[at + 1..]);
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        // `redis://password@host` is read as a password by some clients: hide it too.
        None => format!("{scheme}://***@{host}"),
    }
}

/// One screen: its public id and name, and where its stock list comes from (never shown to users).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FormulaDef {
    pub id: String,
    pub name: String,
    /// MarketInOut Web API key: 16 hex digits, appended to `formulas.source_url`.
    #[serde(default)]
    pub key: Option<String>,
    /// A full URL instead of a key.
    #[serde(default)]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FormulasSettings {
    /// MarketInOut Web API base; empty means the real one in `remote` mode and the simulator's in
    /// `embedded` mode.
    pub source_url: String,
    /// How long the source may take to answer.
    pub timeout_ms: u64,
    /// Optional JSON array of `{"symbol","name","sector","industry"}` used to enrich stock lists
    /// (MarketInOut gives only symbol and price). Empty: no enrichment.
    pub universe_file: String,
    pub list: Vec<FormulaDef>,
}

impl Default for FormulasSettings {
    fn default() -> Self {
        FormulasSettings {
            source_url: String::new(),
            timeout_ms: 10_000,
            universe_file: String::new(),
            list: DEMO_FORMULAS
                .iter()
                .map(|(id, name, key, _)| FormulaDef {
                    id: (*id).into(),
                    name: (*name).into(),
                    key: Some((*key).into()),
                    url: None,
                })
                .collect(),
        }
    }
}

/// Every setting of chartgate.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub upstream: UpstreamSettings,
    pub pool: PoolSettings,
    pub manager: ManagerSettings,
    pub cache: CacheSettings,
    pub stream: StreamSettings,
    pub formulas: FormulasSettings,
    pub live: LiveSettings,
    pub cluster: ClusterSettings,
    pub simulator: SimulatorSettings,
}

/// Keys whose environment-variable values are comma-separated lists.
const LIST_KEYS: [&str; 3] = [
    "server.cors_origins",
    "simulator.volumeless",
    "simulator.unknown_symbols",
];

impl Settings {
    /// Loads the layers. `file` is required when given; otherwise [`DEFAULT_CONFIG_FILE`] is read
    /// if it exists. `overrides` are `(key, value)` pairs from flags, applied last.
    pub fn load(
        file: Option<&Path>,
        overrides: &[(&str, String)],
    ) -> Result<Settings, ConfigError> {
        Self::load_with_env(file, None, overrides)
    }

    /// [`Settings::load`] with the environment variables given explicitly (`None`: the process
    /// environment), so tests need not touch the process environment.
    pub fn load_with_env(
        file: Option<&Path>,
        env_vars: Option<HashMap<String, String>>,
        overrides: &[(&str, String)],
    ) -> Result<Settings, ConfigError> {
        let env = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .source(env_vars);
        let env = LIST_KEYS
            .iter()
            .fold(env, |env, key| env.with_list_parse_key(key));
        let mut builder = config::Config::builder();
        match file {
            Some(path) => {
                if !path.exists() {
                    return Err(ConfigError::File {
                        path: path.display().to_string(),
                        reason: "not found".into(),
                    });
                }
                builder =
                    builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
            }
            None => {
                builder = builder.add_source(
                    config::File::new(DEFAULT_CONFIG_FILE, config::FileFormat::Toml)
                        .required(false),
                );
            }
        }
        builder = builder.add_source(env);
        for (key, value) in overrides {
            builder =
                builder
                    .set_override(*key, value.as_str())
                    .map_err(|e| ConfigError::BadValue {
                        key: (*key).into(),
                        reason: e.to_string(),
                    })?;
        }
        let layered = builder.build().map_err(|e| ConfigError::File {
            path: file.map_or(DEFAULT_CONFIG_FILE.into(), |p| p.display().to_string()),
            reason: e.to_string(),
        })?;
        let user: Value = layered
            .try_deserialize()
            .map_err(|e| ConfigError::BadValue {
                key: "(config)".into(),
                reason: e.to_string(),
            })?;
        Self::from_value(user)
    }

    /// Checks the user's keys against the known ones, then deserialises on top of the defaults
    /// and validates ranges.
    pub fn from_value(user: Value) -> Result<Settings, ConfigError> {
        let known = serde_json::to_value(Settings::default()).unwrap_or(Value::Null);
        check_known_keys(&user, &known, "")?;
        let mut merged = known;
        merge(&mut merged, user);
        let settings: Settings =
            serde_path_to_error::deserialize(merged).map_err(|e| ConfigError::BadValue {
                key: e.path().to_string(),
                reason: e.into_inner().to_string(),
            })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Range checks that types alone do not express.
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: &str| {
            Err(ConfigError::BadValue {
                key: key.into(),
                reason: reason.into(),
            })
        };
        let positive: [(&str, u64); 15] = [
            (
                "upstream.connect_timeout_ms",
                self.upstream.connect_timeout_ms,
            ),
            (
                "upstream.request_timeout_ms",
                self.upstream.request_timeout_ms,
            ),
            (
                "upstream.max_frame_bytes",
                self.upstream.max_frame_bytes as u64,
            ),
            ("formulas.timeout_ms", self.formulas.timeout_ms),
            ("pool.max_connections", self.pool.max_connections as u64),
            (
                "pool.requests_per_connection",
                self.pool.requests_per_connection as u64,
            ),
            (
                "manager.health_check_interval_secs",
                self.manager.health_check_interval_secs,
            ),
            ("manager.stale_after_secs", self.manager.stale_after_secs),
            ("manager.lease_ttl_secs", self.manager.lease_ttl_secs),
            ("stream.batch_size", self.stream.batch_size as u64),
            ("stream.keep_alive_secs", self.stream.keep_alive_secs),
            ("simulator.heartbeat_secs", self.simulator.heartbeat_secs),
            (
                "live.series_per_connection",
                self.live.series_per_connection as u64,
            ),
            ("live.resume_window_secs", self.live.resume_window_secs),
            ("cluster.live_lease_secs", self.cluster.live_lease_secs),
        ];
        for (key, value) in positive {
            if value == 0 {
                return bad(key, "must be greater than 0");
            }
        }
        if self.server.max_symbols_per_request == 0 {
            return bad("server.max_symbols_per_request", "must be greater than 0");
        }
        for (key, url) in [
            ("upstream.url", &self.upstream.url),
            ("upstream.token_url", &self.upstream.token_url),
        ] {
            let scheme_ok = if key == "upstream.url" {
                url.starts_with("ws://") || url.starts_with("wss://")
            } else {
                url.starts_with("http://") || url.starts_with("https://")
            };
            if !scheme_ok || url.parse::<awc::http::Uri>().is_err() {
                return bad(
                    key,
                    "not a valid URL for this key (ws:// or wss:// for the feed, http(s):// for pages)",
                );
            }
        }
        if self.upstream.session_id.is_empty() != self.upstream.session_sign.is_empty() {
            return bad(
                "upstream.session_sign",
                "set both upstream.session_id and upstream.session_sign, or neither",
            );
        }
        let mut ids = BTreeSet::new();
        for (n, f) in self.formulas.list.iter().enumerate() {
            let key = |field: &str| format!("formulas.list[{n}].{field}");
            if f.id.is_empty()
                || !f
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return bad(&key("id"), "use letters, digits, - and _ only");
            }
            if !ids.insert(f.id.as_str()) {
                return bad(&key("id"), "duplicate formula id");
            }
            match (&f.key, &f.url) {
                (Some(k), None) if is_formula_key(k) => {}
                (Some(_), None) => return bad(&key("key"), "expected 16 hex digits"),
                (None, Some(u)) if u.starts_with("http://") || u.starts_with("https://") => {}
                (None, Some(_)) => return bad(&key("url"), "expected an http:// or https:// URL"),
                _ => return bad(&key("key"), "give exactly one of key or url"),
            }
        }
        if self.cluster.enabled() {
            let url = self.cluster.redis_url.expose();
            let scheme_ok = url.starts_with("redis://") || url.starts_with("rediss://");
            if !scheme_ok || redis::Client::open(url).is_err() {
                return bad(
                    "cluster.redis_url",
                    "expected redis://[:password@]host[:port][/db] or rediss://... for TLS (value not shown: it may hold a password)",
                );
            }
        }
        let id = &self.cluster.instance_id;
        if id.len() > 64
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return bad(
                "cluster.instance_id",
                "use at most 64 letters, digits, '.', '-' and '_' (or leave it empty)",
            );
        }
        let status = self.simulator.faults.reject_upgrades;
        if status != 0 && !(400..=599).contains(&status) {
            return bad(
                "simulator.reject_upgrades",
                "expected an HTTP error status (400 to 599) or 0 for off",
            );
        }
        Ok(())
    }
}

/// Fails on the first key of `user` that `known` (the defaults) does not have. Lists of tables are
/// checked item by item against the union of the default items' keys.
fn check_known_keys(user: &Value, known: &Value, path: &str) -> Result<(), ConfigError> {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (user, known) {
        (Value::Object(user), Value::Object(known)) => {
            for (key, value) in user {
                let Some(known_value) = known.get(key) else {
                    return Err(ConfigError::UnknownKey { key: join(key) });
                };
                check_known_keys(value, known_value, &join(key))?;
            }
            Ok(())
        }
        (Value::Array(items), Value::Array(known_items)) => {
            let mut item_keys = serde_json::Map::new();
            for known_item in known_items {
                if let Value::Object(map) = known_item {
                    item_keys.extend(map.clone());
                }
            }
            if item_keys.is_empty() {
                return Ok(());
            }
            let item_keys = Value::Object(item_keys);
            for (n, item) in items.iter().enumerate() {
                if item.is_object() {
                    check_known_keys(item, &item_keys, &format!("{path}[{n}]"))?;
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Overlays `user` on `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut Value, user: Value) {
    match (base, user) {
        (Value::Object(base), Value::Object(user)) => {
            for (key, value) in user {
                match base.get_mut(&key) {
                    Some(slot) => merge(slot, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (slot, value) => *slot = value,
    }
}
