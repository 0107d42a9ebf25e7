//! Outgoing HTTP and WebSocket clients (awc): the feed connections, the token page, MarketInOut
//! and `chartgate watch` all get theirs here, so TLS is set up one way: rustls 0.23 with the
//! `ring` provider and Mozilla's roots (webpki-roots), no system OpenSSL, HTTP/1.1 only (awc's
//! WebSocket upgrade needs it).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

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

/// An awc client whose connect, TLS handshake and response-head timeouts are all `timeout`
/// (awc's 5 s default would cut slow handshakes short). A response body has no deadline here:
/// callers that stream bound idleness per read.
pub fn http_client(timeout: Duration) -> awc::Client {
    let mut connector = awc::Connector::new()
        .timeout(timeout)
        .handshake_timeout(timeout);
    if let Some(tls) = tls_config() {
        connector = connector.rustls_0_23(tls);
    }
    awc::Client::builder()
        .timeout(timeout)
        .connector(connector)
        .finish()
}
