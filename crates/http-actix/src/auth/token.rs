//! Access tokens: JWTs signed with HMAC-SHA256 (HS256) under `SECRET_KEY`.
//!
//! Only what this service issues is accepted: the header must name HS256 (so `alg: none`
//! and algorithm confusion are refused before anything else), the signature is checked in
//! constant time before the payload is read, and `exp`, `iss` and `aud` must match. The
//! `ver` claim must equal the user's current token version, which a password change moves
//! on. Hand-written on `hmac` and `sha2` (already in the dependency tree) rather than a JWT
//! crate that would bring RSA and elliptic-curve code this service never uses.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

/// Longer tokens are refused unread (ours are about 300 bytes).
const MAX_TOKEN_BYTES: usize = 4096;
/// The one header this service writes and accepts.
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;
/// Tolerated clock difference between instances for `iat`.
const CLOCK_SKEW_SECONDS: i64 = 30;

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: Uuid,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// The user's token version when issued.
    pub ver: i32,
    /// A random id, so that two logins in the same second get two tokens (a stolen one is
    /// never also the owner's). Absent in tokens issued before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<Uuid>,
}

/// Why a token was refused. Callers only ever learn "invalid token".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url segments, too long, or not JSON.
    #[error("malformed token")]
    Malformed,
    /// Any algorithm but HS256.
    #[error("unsupported token algorithm")]
    Algorithm,
    /// The signature does not match.
    #[error("bad token signature")]
    Signature,
    /// Past `exp`, or issued in the future.
    #[error("token expired or not yet valid")]
    Expired,
    /// Another issuer or audience.
    #[error("token issued for someone else")]
    Audience,
}

/// Issues and verifies access tokens.
#[derive(Clone)]
pub struct TokenKeys {
    secret: SecretString,
    issuer: String,
    audience: String,
    ttl: Duration,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl TokenKeys {
    /// Keys for tokens signed with `secret`, valid for `ttl`.
    pub fn new(secret: SecretString, issuer: String, audience: String, ttl: Duration) -> Self {
        Self { secret, issuer, audience, ttl }
    }

    /// How long issued tokens live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
        <Hmac<Sha256> as KeyInit>::new_from_slice(self.secret.expose_secret().as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"))
    }

    /// Issues a token for `user` under `token_version`, at `now` (Unix seconds).
    pub fn issue(&self, user: Uuid, token_version: i32, now: i64) -> String {
        let claims = Claims {
            sub: user,
            iat: now,
            exp: now.saturating_add(i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX)),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            ver: token_version,
            jti: Some(Uuid::new_v4()),
        };
        let payload = serde_json::to_vec(&claims).unwrap_or_default();
        let signing_input = format!("{}.{}", URL_SAFE_NO_PAD.encode(HEADER), URL_SAFE_NO_PAD.encode(payload));
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{signature}")
    }

    /// Verifies a token at `now` (Unix seconds) and returns its claims.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed);
        }
        let (signing_input, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let (header, payload) = signing_input.split_once('.').ok_or(TokenError::Malformed)?;
        if payload.contains('.') {
            return Err(TokenError::Malformed);
        }

        #[derive(Deserialize)]
        struct Header {
            alg: String,
        }
        let header: Header = URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or(TokenError::Malformed)?;
        if header.alg != "HS256" {
            return Err(TokenError::Algorithm);
        }

        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        mac.verify_slice(&signature).map_err(|_| TokenError::Signature)?;

        let claims: Claims = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or(TokenError::Malformed)?;
        if claims.exp <= now || claims.iat > now.saturating_add(CLOCK_SKEW_SECONDS) {
            return Err(TokenError::Expired);
        }
        if claims.iss != self.issuer || claims.aud != self.audience {
            return Err(TokenError::Audience);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn keys(secret: &str) -> TokenKeys {
        TokenKeys::new(
            SecretString::from(secret),
            "user-service".into(),
            "user-service".into(),
            Duration::from_secs(3600),
        )
    }

    fn forge(header: &str, claims: &serde_json::Value, signature: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            URL_SAFE_NO_PAD.encode(signature)
        )
    }

    #[test]
    fn an_issued_token_verifies_with_its_claims() {
        let keys = keys("0123456789abcdef0123456789abcdef");
        let user = Uuid::now_v7();
        let claims = keys.verify(&keys.issue(user, 7, NOW), NOW + 10).unwrap();
        assert_eq!((claims.sub, claims.ver, claims.exp), (user, 7, NOW + 3600));
        // Two tokens issued in the same second differ.
        assert_ne!(keys.issue(user, 7, NOW), keys.issue(user, 7, NOW));
    }

    #[test]
    fn forged_tokens_are_refused() {
        let keys = keys("0123456789abcdef0123456789abcdef");
        let user = Uuid::now_v7();
        let genuine = keys.issue(user, 0, NOW);
        let claims = serde_json::json!({"sub": user, "iat": NOW, "exp": NOW + 3600, "iss": "user-service", "aud": "user-service", "ver": 0});

        let none = forge(r#"{"alg":"none","typ":"JWT"}"#, &claims, b"");
        assert_eq!(keys.verify(&none, NOW), Err(TokenError::Algorithm));
        let none_no_signature = format!("{}.", &none[..none.len() - 1].trim_end_matches('.'));
        assert!(keys.verify(&none_no_signature, NOW).is_err());
        let hs512 = forge(r#"{"alg":"HS512","typ":"JWT"}"#, &claims, b"sig");
        assert_eq!(keys.verify(&hs512, NOW), Err(TokenError::Algorithm));

        let other_key = self::keys("another-secret-another-secret-xx").issue(user, 0, NOW);
        assert_eq!(keys.verify(&other_key, NOW), Err(TokenError::Signature));

        assert_eq!(keys.verify(&genuine, NOW + 3600), Err(TokenError::Expired));
        assert_eq!(keys.verify(&genuine, NOW - 3600), Err(TokenError::Expired));

        let elsewhere = TokenKeys::new(
            SecretString::from("0123456789abcdef0123456789abcdef"),
            "user-service".into(),
            "another-audience".into(),
            Duration::from_secs(3600),
        );
        assert_eq!(keys.verify(&elsewhere.issue(user, 0, NOW), NOW), Err(TokenError::Audience));

        // Tampering with the payload breaks the signature.
        let mut parts: Vec<&str> = genuine.split('.').collect();
        let tampered_claims = URL_SAFE_NO_PAD.encode(claims.to_string().replace("\"ver\":0", "\"ver\":1"));
        parts[1] = &tampered_claims;
        assert_eq!(keys.verify(&parts.join("."), NOW), Err(TokenError::Signature));

        for garbage in ["", "garbage", "a.b", "a.b.c.d", "!!!.###.$$$", &"x".repeat(20_000)] {
            assert!(keys.verify(garbage, NOW).is_err(), "{garbage:.20} accepted");
        }
    }
}
