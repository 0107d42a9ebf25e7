//! The token page, `GET /chart/`: TradingView's chart page embeds the user's feed JWT as
//! `"auth_token":"<jwt>"`; chartgate scrapes it when session cookies are configured.
//!
//! With non-empty `sessionid` and `sessionid_sign` cookies the page carries a fresh token whose
//! `exp` is `token_ttl_secs` ahead and whose `max_connections` claim is the `max_connections`
//! fault (100 when the fault is off); without them the answer is 401. Cookies and tokens are
//! never logged.
//!
//! The simulator signs its tokens with a keyed checksum so it can tell its own from forged or
//! expired ones. That checksum is not cryptography and is not meant to be.

use std::hash::{DefaultHasher, Hash, Hasher};

use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chartgate_protocol::clock;
use chartgate_protocol::token::{Claims, TokenError, decode_claims};

use crate::stable_hash;
use crate::state::{Counters, SimState};

/// Why the feed refuses a token. Never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Unreadable(#[from] TokenError),
    #[error("token signature does not match")]
    Signature,
    #[error("token expired")]
    Expired,
}

fn checksum(key: &[u8], signed_part: &str) -> String {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    signed_part.hash(&mut h);
    URL_SAFE_NO_PAD.encode(h.finish().to_be_bytes())
}

/// Issues a token for `claims`, checksummed with `key` (simulator side).
pub fn issue(claims: &Claims, key: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"SIM","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let signed_part = format!("{header}.{payload}");
    let sig = checksum(key, &signed_part);
    format!("{signed_part}.{sig}")
}

/// Checks a token issued by [`issue`] with the same `key`, and that it has not expired at `now`
/// (Unix seconds).
pub fn verify(token: &str, key: &[u8], now: i64) -> Result<Claims, Refusal> {
    let claims = decode_claims(token)?;
    let (signed_part, sig) = token
        .rsplit_once('.')
        .ok_or(Refusal::Unreadable(TokenError::Shape))?;
    if checksum(key, signed_part) != sig {
        return Err(Refusal::Signature);
    }
    if claims.exp <= now {
        return Err(Refusal::Expired);
    }
    Ok(claims)
}

/// Token lifetime when `token_ttl_secs` is 0.
pub(crate) const DEFAULT_TOKEN_TTL_SECS: u64 = 3600;

/// The `max_connections` claim when the fault does not set one (a generous paid plan).
pub(crate) const DEFAULT_MAX_CONNECTIONS_CLAIM: usize = 100;

/// `GET /chart/`.
pub(crate) async fn chart_page(req: HttpRequest, state: web::Data<SimState>) -> HttpResponse {
    let cookie = |name: &str| {
        req.cookie(name)
            .map(|c| c.value().to_string())
            .filter(|v| !v.is_empty())
    };
    let (Some(session_id), Some(_sign)) = (cookie("sessionid"), cookie("sessionid_sign")) else {
        return HttpResponse::Unauthorized()
            .content_type("text/plain; charset=utf-8")
            .body("not signed in: send the sessionid and sessionid_sign cookies\n");
    };
    let faults = state.faults();
    let ttl = match faults.token_ttl_secs {
        0 => DEFAULT_TOKEN_TTL_SECS,
        ttl => ttl,
    };
    let claims = Claims {
        exp: clock::unix_secs().saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX)),
        max_connections: Some(match faults.max_connections {
            0 => DEFAULT_MAX_CONNECTIONS_CLAIM,
            n => n,
        }),
        // A stable user number per session cookie, as the real site has one user per session.
        user_id: Some(stable_hash(&session_id) % 1_000_000),
    };
    let token = issue(&claims, &state.token_key);
    Counters::bump(&state.counters.tokens_issued);
    let user_id = claims.user_id.unwrap_or_default();
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>Chart (simulated)</title></head>\n<body>\n<div id=\"chart-area\"></div>\n<script>window.initData = {{\"user\":{{\"id\":{user_id},\"username\":\"sim-user-{user_id}\",\"is_pro\":true}},\"auth_token\":\"{token}\",\"max_connections\":{}}};</script>\n</body>\n</html>\n",
        claims.max_connections.unwrap_or_default()
    );
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .body(html)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_and_forged_ones_do_not() {
        let claims = Claims {
            exp: 2_000,
            max_connections: Some(5),
            user_id: Some(7),
        };
        let token = issue(&claims, b"k");
        assert_eq!(decode_claims(&token).unwrap(), claims);
        assert_eq!(verify(&token, b"k", 1_000).unwrap(), claims);
        assert_eq!(verify(&token, b"k", 2_000), Err(Refusal::Expired));
        assert_eq!(verify(&token, b"other", 1_000), Err(Refusal::Signature));
        let forged = issue(
            &Claims {
                exp: 9_999,
                ..claims
            },
            b"guess",
        );
        assert_eq!(verify(&forged, b"k", 1_000), Err(Refusal::Signature));
        assert_eq!(
            verify("abc", b"k", 1_000),
            Err(Refusal::Unreadable(TokenError::Shape))
        );
    }
}
