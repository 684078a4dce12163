//! Tenancy from signed tokens: HS256 JWTs carrying `tenant_id` and `exp`.
//! A subscriber's tenant comes from here and nowhere else (never from a query parameter).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Longest tenant id accepted in a token.
const MAX_TENANT_LEN: usize = 256;

/// A tenant's id, as in tokens and in the journal's `tenant_id` column.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TenantId(Arc<str>);

impl TenantId {
    /// Validates a tenant id from outside (a token, the CLI).
    pub fn new(id: &str) -> Result<TenantId, AuthError> {
        if id.is_empty() || id.len() > MAX_TENANT_LEN || id.chars().any(char::is_control) {
            return Err(AuthError::NoTenant);
        }
        Ok(TenantId(id.into()))
    }

    /// A tenant id the journal recorded (already enforced non-null by the trigger).
    pub fn from_journal(id: &str) -> TenantId {
        TenantId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a token was refused; `code()` is the 401's `error` field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no token: send `Authorization: Bearer <token>` or `?access_token=<token>`")]
    Missing,
    #[error("the token has expired; fetch a fresh one and reconnect with your last event id")]
    Expired,
    #[error("the token carries no usable `tenant_id` claim")]
    NoTenant,
    #[error("the token is not valid: {0}")]
    Invalid(&'static str),
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Expired => "token_expired",
            AuthError::NoTenant => "missing_tenant",
            AuthError::Invalid(_) => "invalid_token",
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Claims {
    #[serde(default)]
    tenant_id: Option<serde_json::Value>,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

/// Who a valid token speaks for, and until when.
#[derive(Clone, Debug)]
pub struct Identity {
    pub tenant: TenantId,
    pub expires_at: SystemTime,
}

/// Verifies and mints tokens with one HS256 secret.
pub struct Authenticator {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
}

impl Authenticator {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // An expired token is expired: the default leeway would accept it for a minute.
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_aud = false;
        Authenticator {
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
            validation,
        }
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|error| match error.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidSignature => AuthError::Invalid("wrong signature"),
                ErrorKind::InvalidAlgorithm
                | ErrorKind::InvalidAlgorithmName
                | ErrorKind::MissingAlgorithm => {
                    AuthError::Invalid("only HS256 tokens are accepted")
                }
                ErrorKind::MissingRequiredClaim(_) => {
                    AuthError::Invalid("the `exp` claim is required")
                }
                _ => AuthError::Invalid("malformed token"),
            })?;
        let tenant = match data.claims.tenant_id {
            Some(serde_json::Value::String(id)) => TenantId::new(&id)?,
            _ => return Err(AuthError::NoTenant),
        };
        Ok(Identity {
            tenant,
            expires_at: UNIX_EPOCH + Duration::from_secs(data.claims.exp),
        })
    }

    /// A token for `tenant` valid for `ttl`.
    pub fn mint(&self, tenant: &TenantId, ttl: Duration) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("BUG: clock before 1970")
            .as_secs();
        let claims = Claims {
            tenant_id: Some(serde_json::Value::String(tenant.as_str().to_owned())),
            exp: now + ttl.as_secs().max(1),
            iat: Some(now),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("BUG: HS256 signing cannot fail")
    }
}

/// 32 random bytes, hex: the signing secret when none is configured.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source is unavailable");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn sign(secret: &[u8], claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[test]
    fn accepts_a_minted_token() {
        let auth = Authenticator::new(b"secret");
        let token = auth.mint(&TenantId::new("acme").unwrap(), Duration::from_secs(60));
        assert_eq!(auth.verify(&token).unwrap().tenant.as_str(), "acme");
    }

    #[test]
    fn refuses_every_bad_token() {
        let auth = Authenticator::new(b"secret");
        let exp = now() + 60;
        let expired = sign(
            b"secret",
            serde_json::json!({"tenant_id": "acme", "exp": now() - 1}),
        );
        assert_eq!(auth.verify(&expired).unwrap_err(), AuthError::Expired);
        let forged = sign(
            b"other",
            serde_json::json!({"tenant_id": "acme", "exp": exp}),
        );
        assert_eq!(auth.verify(&forged).unwrap_err().code(), "invalid_token");
        let tenantless = sign(b"secret", serde_json::json!({"exp": exp}));
        assert_eq!(auth.verify(&tenantless).unwrap_err(), AuthError::NoTenant);
        let numeric_tenant = sign(b"secret", serde_json::json!({"tenant_id": 7, "exp": exp}));
        assert_eq!(
            auth.verify(&numeric_tenant).unwrap_err(),
            AuthError::NoTenant
        );
        let no_exp = sign(b"secret", serde_json::json!({"tenant_id": "acme"}));
        assert_eq!(auth.verify(&no_exp).unwrap_err().code(), "invalid_token");
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(format!(r#"{{"tenant_id":"acme","exp":{exp}}}"#));
        assert_eq!(
            auth.verify(&format!("{header}.{body}."))
                .unwrap_err()
                .code(),
            "invalid_token"
        );
        assert_eq!(auth.verify("garbage").unwrap_err().code(), "invalid_token");
    }
}
