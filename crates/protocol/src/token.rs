//! The feed's auth tokens: JSON Web Tokens whose claims a client reads without verifying them (it
//! cannot: they are signed by the feed's operator). The claims that matter are `exp` (refresh
//! before it) and `max_connections` (how many connections one token may hold).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// Claims chartgate reads from a feed token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Upper bound on simultaneous connections with this token, when the plan sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// The user the token belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<u64>,
}

/// Why a token's claims could not be read. Never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is not three base64url parts")]
    Shape,
    #[error("token payload is not valid JSON claims")]
    Claims,
}

/// Reads the claims of a token without verifying it.
pub fn decode_claims(token: &str) -> Result<Claims, TokenError> {
    let mut parts = token.split('.');
    let (Some(_header), Some(payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Shape);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Shape)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_read_from_the_payload_and_bad_shapes_named() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"exp":2000,"max_connections":5}"#);
        let claims = decode_claims(&format!("h.{payload}.sig")).unwrap();
        assert_eq!((claims.exp, claims.max_connections), (2000, Some(5)));
        assert_eq!(decode_claims("abc"), Err(TokenError::Shape));
        assert_eq!(decode_claims("a.!!!.c"), Err(TokenError::Shape));
        assert_eq!(decode_claims("a.e30.c"), Err(TokenError::Claims));
        assert_eq!(decode_claims("a.b.c.d"), Err(TokenError::Shape));
    }
}
