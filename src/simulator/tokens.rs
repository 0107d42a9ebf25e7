//! The token page, `GET /chart/`: TradingView's chart page embeds the user's feed JWT as
//! `"auth_token":"<jwt>"`; chartgate scrapes it when session cookies are configured.
//!
//! With non-empty `sessionid` and `sessionid_sign` cookies the page carries a fresh token whose
//! `exp` is `token_ttl_secs` ahead and whose `max_connections` claim is the `max_connections`
//! fault (100 when the fault is off); without them the answer is 401. Cookies and tokens are
//! never logged.

use actix_web::{HttpRequest, HttpResponse, web};

use crate::jwt::{Claims, issue};

use super::state::{Counters, SimState, fnv1a};

/// Token lifetime when `token_ttl_secs` is 0.
pub(crate) const DEFAULT_TOKEN_TTL_SECS: u64 = 3600;

/// The `max_connections` claim when the fault does not set one (a generous paid plan).
pub(crate) const DEFAULT_MAX_CONNECTIONS_CLAIM: usize = 100;

/// Wall-clock Unix seconds: JWT expiry is wall-clock time by definition.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

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
        exp: unix_now().saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX)),
        max_connections: Some(match faults.max_connections {
            0 => DEFAULT_MAX_CONNECTIONS_CLAIM,
            n => n,
        }),
        // A stable user number per session cookie, as the real site has one user per session.
        user_id: Some(fnv1a(&[session_id.as_bytes()]) % 1_000_000),
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
