//! The little of JSON Web Tokens that chartgate and its simulator need.
//!
//! chartgate never verifies the feed's tokens (it cannot: they are signed by TradingView); it only
//! reads the claims that matter to it: `exp` (refresh before it) and `max_connections` (cap the
//! pool). The simulator issues tokens with a keyed checksum so it can tell its own tokens from
//! forged or expired ones. That checksum is not cryptography and is not meant to be.

use std::hash::{DefaultHasher, Hash, Hasher};

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
    /// Who the token belongs to (the simulator numbers its users).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<u64>,
}

/// Why a token was refused. Never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("token is not three base64url parts")]
    Shape,
    #[error("token payload is not valid JSON claims")]
    Claims,
    #[error("token signature does not match")]
    Signature,
    #[error("token expired")]
    Expired,
}

/// Reads the claims of a token without verifying it.
pub fn decode_claims(token: &str) -> Result<Claims, JwtError> {
    let mut parts = token.split('.');
    let (Some(_header), Some(payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Shape);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| JwtError::Shape)?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Claims)
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
pub fn verify(token: &str, key: &[u8], now: i64) -> Result<Claims, JwtError> {
    let claims = decode_claims(token)?;
    let (signed_part, sig) = token.rsplit_once('.').ok_or(JwtError::Shape)?;
    if checksum(key, signed_part) != sig {
        return Err(JwtError::Signature);
    }
    if claims.exp <= now {
        return Err(JwtError::Expired);
    }
    Ok(claims)
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
        assert_eq!(verify(&token, b"k", 2_000), Err(JwtError::Expired));
        assert_eq!(verify(&token, b"other", 1_000), Err(JwtError::Signature));
        let forged = issue(
            &Claims {
                exp: 9_999,
                ..claims
            },
            b"guess",
        );
        assert_eq!(verify(&forged, b"k", 1_000), Err(JwtError::Signature));
        assert_eq!(decode_claims("abc"), Err(JwtError::Shape));
        assert_eq!(decode_claims("a.!!!.c"), Err(JwtError::Shape));
        assert_eq!(decode_claims("a.e30.c"), Err(JwtError::Claims));
    }
}
