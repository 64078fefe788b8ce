//! Guest tokens: JWT HS256 with every registered claim required.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tandem_signaling::SessionId;

const ISSUER: &str = "tandem";
const AUDIENCE: &str = "tandem-guest";

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    /// The guest's username, so that another node of a cluster can adopt the session
    /// (absent in tokens of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    iat: u64,
    nbf: u64,
    exp: u64,
    jti: String,
    iss: String,
    aud: String,
}

pub struct Tokens {
    enc: EncodingKey,
    dec: DecodingKey,
    validation: Validation,
}

impl Tokens {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 0;
        Self {
            enc: EncodingKey::from_secret(secret),
            dec: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Signs a token for `session` (named `username`) that expires at `exp_ms` (ms since the
    /// epoch).
    pub fn issue(&self, session: SessionId, username: &str, exp_ms: u64) -> anyhow::Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let mut jti = [0u8; 16];
        rand::rng().fill_bytes(&mut jti);
        let claims = Claims {
            sub: session.to_string(),
            name: Some(username.to_owned()),
            iat: now,
            nbf: now,
            exp: exp_ms / 1000,
            jti: jti.iter().map(|b| format!("{b:02x}")).collect(),
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
        };
        Ok(encode(&Header::new(Algorithm::HS256), &claims, &self.enc)?)
    }

    /// The session of a valid token; `None` for anything else (never says why to the client).
    pub fn verify(&self, token: &str) -> Option<SessionId> {
        self.verify_named(token).map(|(id, _, _)| id)
    }

    /// The session of a valid token, the username it carries (empty if none) and its
    /// expiry (Unix ms).
    pub fn verify_named(&self, token: &str) -> Option<(SessionId, String, u64)> {
        let data = decode::<Claims>(token, &self.dec, &self.validation).ok()?;
        if data.claims.jti.is_empty() {
            return None;
        }
        let id = SessionId::parse(&data.claims.sub)?;
        let exp_ms = data.claims.exp.saturating_mul(1000);
        Some((id, data.claims.name.unwrap_or_default(), exp_ms))
    }
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(header: Option<&http::HeaderValue>) -> Option<&str> {
    let v = header?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let t = Tokens::new(b"0123456789abcdef0123456789abcdef");
        let id = SessionId::from_raw(42);
        let far = (SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600)
            * 1000;
        let tok = t.issue(id, "Ann", far).unwrap();
        assert_eq!(t.verify(&tok), Some(id));
        assert_eq!(
            t.verify_named(&tok).map(|(id, name, _)| (id, name)),
            Some((id, "Ann".to_owned()))
        );
        let other = Tokens::new(b"another-secret-another-secret-xx");
        assert_eq!(other.verify(&tok), None);
        let past = (SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - 10)
            * 1000;
        assert_eq!(t.verify(&t.issue(id, "Ann", past).unwrap()), None);
        assert_eq!(t.verify("garbage"), None);
        // alg "none" with the same claims
        let mut parts = tok.split('.');
        let _ = parts.next();
        let body = parts.next().unwrap();
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{body}.");
        assert_eq!(t.verify(&none), None);
    }
}
