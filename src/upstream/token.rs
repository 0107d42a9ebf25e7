//! Where the feed's auth token comes from.
//!
//! Three sources, chosen from the settings: a fixed `upstream.auth_token`; a JWT fetched from
//! `upstream.token_url` with the `sessionid`/`sessionid_sign` cookies (and fetched again before
//! its `exp`); or `unauthorized_user_token`, which the feed accepts for delayed data. The pool owns
//! a [`TokenProvider`] and decides when to refresh; this module only knows how to get a token and
//! what its claims say.
//!
//! Tokens and cookies are [`Secret`]s: they appear in no log line, `Debug` output or error.

use std::time::Duration;

use crate::config::{Secret, Settings};
use chartgate_protocol::{clock, token};

/// The token the feed accepts without an account (delayed data).
pub const UNAUTHORIZED_USER_TOKEN: &str = "unauthorized_user_token";

/// Largest token page read; TradingView's chart page is a few hundred KB.
const MAX_PAGE_BYTES: usize = 8 * 1024 * 1024;

/// A token and what its claims say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthToken {
    /// Sent in `set_auth_token`, nowhere else.
    pub value: Secret,
    /// `exp` claim, Unix seconds, when the token has one: refresh before it.
    pub exp: Option<i64>,
    /// `max_connections` claim: caps the pool.
    pub max_connections: Option<usize>,
}

impl AuthToken {
    /// A token whose claims are read (not verified) from the JWT; a token that is not a JWT (the
    /// anonymous one, or an opaque fixed one) has no claims.
    pub fn new(value: Secret) -> Self {
        let claims = token::decode_claims(value.expose()).ok();
        AuthToken {
            exp: claims.as_ref().map(|c| c.exp),
            max_connections: claims.and_then(|c| c.max_connections),
            value,
        }
    }

    /// How long from now to refresh: a fifth of the remaining lifetime before `exp` (at most a
    /// minute early), so a short-lived token is replaced well before it runs out.
    pub fn refresh_in(&self) -> Option<Duration> {
        let exp = self.exp?;
        let remaining_ms = (exp * 1000 - clock::unix_ms()).max(0);
        let margin = (remaining_ms / 5).min(60_000);
        Some(Duration::from_millis((remaining_ms - margin).max(0) as u64))
    }
}

/// Why a token could not be obtained. Never contains the token or the cookies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token page request failed: {0}")]
    Request(String),
    #[error(
        "token page answered HTTP {0} (are upstream.session_id and upstream.session_sign valid?)"
    )]
    Status(u16),
    #[error("token page holds no \"auth_token\" (are the session cookies valid?)")]
    NotFound,
}

/// Which of the three sources is configured.
#[derive(Clone)]
enum Source {
    Fixed(Secret),
    Session {
        id: Secret,
        sign: Secret,
        url: String,
    },
    Anonymous,
}

/// Gets tokens from the configured source.
#[derive(Clone)]
pub struct TokenProvider {
    source: Source,
    timeout: Duration,
}

impl std::fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.source {
            Source::Fixed(_) => "fixed",
            Source::Session { .. } => "session",
            Source::Anonymous => "anonymous",
        };
        write!(f, "TokenProvider({kind})")
    }
}

impl TokenProvider {
    /// Session cookies win over a fixed token; neither means anonymous.
    pub fn from_settings(settings: &Settings, token_url: &str) -> Self {
        let up = &settings.upstream;
        let source = if !up.session_id.is_empty() && !up.session_sign.is_empty() {
            Source::Session {
                id: up.session_id.clone(),
                sign: up.session_sign.clone(),
                url: token_url.to_string(),
            }
        } else if !up.auth_token.is_empty() {
            Source::Fixed(up.auth_token.clone())
        } else {
            Source::Anonymous
        };
        TokenProvider {
            source,
            timeout: Duration::from_millis(up.connect_timeout_ms),
        }
    }

    /// Whether a new token can be fetched (only with session cookies); with a fixed or anonymous
    /// token a rejected token stays rejected.
    pub fn can_refresh(&self) -> bool {
        matches!(self.source, Source::Session { .. })
    }

    /// The token available without I/O, if the source is not the token page.
    pub fn immediate(&self) -> Option<AuthToken> {
        match &self.source {
            Source::Fixed(token) => Some(AuthToken::new(token.clone())),
            Source::Anonymous => Some(AuthToken::new(Secret::new(UNAUTHORIZED_USER_TOKEN))),
            Source::Session { .. } => None,
        }
    }

    /// Gets a token: at once for fixed and anonymous, from the token page with the cookies
    /// otherwise. Runs on the actix runtime (awc's client is created here, on this thread).
    pub async fn fetch(&self) -> Result<AuthToken, TokenError> {
        let (id, sign, url) = match &self.source {
            Source::Session { id, sign, url } => (id, sign, url),
            _ => return self.immediate().ok_or(TokenError::NotFound),
        };
        let client = crate::client::http_client(self.timeout);
        // The one place the cookies leave the process.
        let cookie = format!(
            "sessionid={}; sessionid_sign={}",
            id.expose(),
            sign.expose()
        );
        let mut response = client
            .get(url.as_str())
            .insert_header((awc::http::header::COOKIE, cookie))
            .insert_header((awc::http::header::USER_AGENT, super::connection::USER_AGENT))
            .send()
            .await
            .map_err(|e| TokenError::Request(e.to_string()))?;
        if !response.status().is_success() {
            return Err(TokenError::Status(response.status().as_u16()));
        }
        let body = response
            .body()
            .limit(MAX_PAGE_BYTES)
            .await
            .map_err(|e| TokenError::Request(e.to_string()))?;
        let html = String::from_utf8_lossy(&body);
        extract_auth_token(&html)
            .map(|t| AuthToken::new(Secret::new(t)))
            .ok_or(TokenError::NotFound)
    }
}

/// Finds `"auth_token":"<jwt>"` (spaces around the colon tolerated) in a page.
pub fn extract_auth_token(html: &str) -> Option<String> {
    const KEY: &str = "\"auth_token\"";
    let mut rest = html;
    while let Some(at) = rest.find(KEY) {
        let after = rest[at + KEY.len()..].trim_start();
        if let Some(value) = after.strip_prefix(':').map(str::trim_start)
            && let Some(value) = value.strip_prefix('"')
            && let Some(end) = value.find('"')
        {
            let token = &value[..end];
            if !token.is_empty() {
                return Some(token.to_string());
            }
        }
        rest = &rest[at + KEY.len()..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_token_in_a_page() {
        let html = r#"<script>window.user = {"id":1,"auth_token":"aa.bb.cc","x":2};</script>"#;
        assert_eq!(extract_auth_token(html).as_deref(), Some("aa.bb.cc"));
        assert_eq!(
            extract_auth_token(r#"{"auth_token" : "t1"}"#).as_deref(),
            Some("t1")
        );
        assert_eq!(extract_auth_token(r#"{"auth_token":""}"#), None);
        assert_eq!(extract_auth_token("no token here"), None);
    }

    #[test]
    fn claims_are_read_and_refresh_comes_before_expiry() {
        let now = clock::unix_secs();
        let token = chartgate_simulator::tokens::issue(
            &token::Claims {
                exp: now + 100,
                max_connections: Some(4),
                user_id: None,
            },
            b"k",
        );
        let t = AuthToken::new(Secret::new(token));
        assert_eq!(t.max_connections, Some(4));
        let refresh = t.refresh_in().unwrap();
        assert!(refresh < Duration::from_secs(100) && refresh > Duration::from_secs(70));
        let anon = AuthToken::new(Secret::new(UNAUTHORIZED_USER_TOKEN));
        assert_eq!(anon.refresh_in(), None);
        assert!(!format!("{t:?}").contains('.'));
    }
}
