//! Outgoing HTTP and WebSocket clients (awc): the feed connections, the token page, MarketInOut
//! and `chartgate watch` all get theirs here, so TLS is set up one way: rustls 0.23 with the
//! `ring` provider and Mozilla's roots (webpki-roots), no system OpenSSL, HTTP/1.1 only (awc's
//! WebSocket upgrade needs it).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix_service::ServiceExt;
use actix_tls::connect::{Connection, Connector, Resolver};
use actix_web::rt::net::TcpStream;
use awc::http::Uri;

/// rustls 0.23 with the `ring` provider and the webpki roots, built once per process. `None` only
/// if the provider supported no protocol version (it does), in which case awc's default applies.
pub fn tls_config() -> Option<Arc<rustls::ClientConfig>> {
    static CONFIG: OnceLock<Option<Arc<rustls::ClientConfig>>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            match rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
            {
                Ok(builder) => {
                    let mut config = builder.with_root_certificates(roots).with_no_client_auth();
                    config.alpn_protocols = vec![b"http/1.1".to_vec()];
                    Some(Arc::new(config))
                }
                Err(e) => {
                    log::error!("client: TLS set-up failed ({e}); using awc's default TLS");
                    None
                }
            }
        })
        .clone()
}

/// The connector every client shares: TCP with `TCP_NODELAY` (chart requests are small writes
/// answered at once; Nagle's algorithm plus delayed ACKs would hold each back by tens of
/// milliseconds), then TLS from [`tls_config`], each step bounded by `timeout`.
fn connector(
    timeout: Duration,
) -> awc::Connector<
    impl actix_service::Service<
        actix_tls::connect::ConnectInfo<Uri>,
        Response = Connection<Uri, TcpStream>,
        Error = actix_tls::connect::ConnectError,
    > + Clone
    + 'static,
> {
    let tcp =
        Connector::new(Resolver::default())
            .service()
            .map(|conn: Connection<Uri, TcpStream>| {
                let _ = conn.io_ref().set_nodelay(true);
                conn
            });
    let mut connector = awc::Connector::new()
        .connector(tcp)
        .timeout(timeout)
        .handshake_timeout(timeout);
    if let Some(tls) = tls_config() {
        connector = connector.rustls_0_23(tls);
    }
    connector
}

/// An awc client whose connect, TLS handshake and whole request (head and body) are bounded by
/// `timeout` (awc's 5 s default would cut slow handshakes short).
pub fn http_client(timeout: Duration) -> awc::Client {
    awc::Client::builder()
        .timeout(timeout)
        .connector(connector(timeout))
        .finish()
}

/// An awc client for responses that stream for as long as they like: connect and handshake are
/// bounded by `connect_timeout`, the request itself by nothing (awc would otherwise apply its
/// request timeout to reading the body too). Callers bound the head and idleness themselves.
pub fn streaming_client(connect_timeout: Duration) -> awc::Client {
    awc::Client::builder()
        .disable_timeout()
        .connector(connector(connect_timeout))
        .finish()
}
