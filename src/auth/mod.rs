//! Tenancy from signed tokens: HS256 JWTs carrying `tenant_id` and `exp`.
//! A subscriber's tenant comes from here and nowhere else (never from a query parameter).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::secret::Secret;
use crate::tenant::TenantId;

/// Shortest signing secret accepted: an HS256 key shorter than its hash output (32 bytes)
/// can be guessed offline from any one token.
pub const MIN_SECRET_BYTES: usize = 32;
/// Longest token looked at. Ours are a few hundred bytes; a bigger one is refused before
/// any base64 or JSON parsing is spent on it.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Latest `exp` honoured (9999-12-31): beyond, the expiry cannot be represented by the
/// clocks that enforce it, so such a token is refused rather than trusted forever.
const MAX_EXP: u64 = 253_402_300_799;

/// Why a token was refused; `code()` is the 401's `error` field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no token: send `Authorization: Bearer <token>` or `?access_token=<token>`")]
    Missing,
    #[error("the token has expired; fetch a fresh one and reconnect with your last event id")]
    Expired,
    #[error("the token carries no usable `tenant_id` claim")]
    NoTenant,
    #[error("the token is not valid yet (its `nbf` lies in the future)")]
    NotYetValid,
    #[error("the token is not valid: {0}")]
    Invalid(&'static str),
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Expired => "token_expired",
            AuthError::NoTenant => "missing_tenant",
            AuthError::NotYetValid => "token_not_yet_valid",
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
    // Values, not strings: `aud` may be an array; jsonwebtoken checks both when asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<serde_json::Value>,
}

/// Claims a token must carry beyond `tenant_id` and `exp`, when the operator asks for
/// them (`CHANGECAST_JWT_AUDIENCE`, `CHANGECAST_JWT_ISSUER`). Minted tokens carry them.
#[derive(Clone, Debug, Default)]
pub struct TokenRules {
    pub audience: Option<String>,
    pub issuer: Option<String>,
}

/// Why a signing secret was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "the JWT secret is {0} bytes long; it must be at least {MIN_SECRET_BYTES} bytes \
     (e.g. `openssl rand -hex 32`), or leave CHANGECAST_JWT_SECRET unset to have `serve` \
     generate one for this run"
)]
pub struct WeakSecret(pub usize);

/// Who a valid token speaks for, and until when.
#[derive(Clone, Debug)]
pub struct Identity {
    pub tenant: TenantId,
    pub expires_at: SystemTime,
}

impl Identity {
    /// When the token expires, on the clock streams sleep on (now, if it already has).
    pub fn expiry(&self) -> tokio::time::Instant {
        let left = self
            .expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        tokio::time::Instant::now() + left
    }
}

/// Verifies and mints tokens with one HS256 secret.
pub struct Authenticator {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
    rules: TokenRules,
}

impl Authenticator {
    /// Refuses a secret shorter than [`MIN_SECRET_BYTES`]: an empty one would let anyone
    /// mint a token for any tenant.
    pub fn new(secret: &Secret, rules: TokenRules) -> Result<Self, WeakSecret> {
        check_secret(secret)?;
        let secret = secret.expose().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        // An expired token is expired: the default leeway would accept it for a minute.
        validation.leeway = 0;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        match &rules.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &rules.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(Authenticator {
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
            validation,
            rules,
        })
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Invalid("the token is longer than 8 KiB"));
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|error| match error.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience (`aud`)"),
                ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer (`iss`)"),
                ErrorKind::InvalidSignature => AuthError::Invalid("wrong signature"),
                ErrorKind::InvalidAlgorithm
                | ErrorKind::InvalidAlgorithmName
                | ErrorKind::MissingAlgorithm => {
                    AuthError::Invalid("only HS256 tokens are accepted")
                }
                ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
                    "aud" => AuthError::Invalid("the `aud` claim is required"),
                    "iss" => AuthError::Invalid("the `iss` claim is required"),
                    _ => AuthError::Invalid("the `exp` claim is required"),
                },
                _ => AuthError::Invalid("malformed token"),
            })?;
        let tenant = match data.claims.tenant_id {
            Some(serde_json::Value::String(id)) => {
                TenantId::new(&id).map_err(|_| AuthError::NoTenant)?
            }
            _ => return Err(AuthError::NoTenant),
        };
        if data.claims.exp > MAX_EXP {
            return Err(AuthError::Invalid("`exp` lies beyond the year 9999"));
        }
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
            exp: now.saturating_add(ttl.as_secs().max(1)).min(MAX_EXP),
            iat: Some(now),
            aud: self.rules.audience.clone().map(serde_json::Value::String),
            iss: self.rules.issuer.clone().map(serde_json::Value::String),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("BUG: HS256 signing cannot fail")
    }
}

/// Refuses a signing secret shorter than [`MIN_SECRET_BYTES`].
pub fn check_secret(secret: &Secret) -> Result<(), WeakSecret> {
    match secret.expose().len() {
        len if len < MIN_SECRET_BYTES => Err(WeakSecret(len)),
        _ => Ok(()),
    }
}

/// 32 random bytes, hex: the signing secret when none is configured.
pub fn random_secret() -> Secret {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source is unavailable");
    Secret::new(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
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

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn authenticator(rules: TokenRules) -> Authenticator {
        Authenticator::new(&Secret::new(std::str::from_utf8(SECRET).unwrap()), rules).unwrap()
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
        let auth = authenticator(TokenRules::default());
        let token = auth.mint(&TenantId::new("acme").unwrap(), Duration::from_secs(60));
        assert_eq!(auth.verify(&token).unwrap().tenant.as_str(), "acme");
    }

    #[test]
    fn refuses_every_bad_token() {
        let auth = authenticator(TokenRules::default());
        let exp = now() + 60;
        let expired = sign(
            SECRET,
            serde_json::json!({"tenant_id": "acme", "exp": now() - 1}),
        );
        assert_eq!(auth.verify(&expired).unwrap_err(), AuthError::Expired);
        let forged = sign(
            b"other",
            serde_json::json!({"tenant_id": "acme", "exp": exp}),
        );
        assert_eq!(auth.verify(&forged).unwrap_err().code(), "invalid_token");
        let tenantless = sign(SECRET, serde_json::json!({"exp": exp}));
        assert_eq!(auth.verify(&tenantless).unwrap_err(), AuthError::NoTenant);
        let numeric_tenant = sign(SECRET, serde_json::json!({"tenant_id": 7, "exp": exp}));
        assert_eq!(
            auth.verify(&numeric_tenant).unwrap_err(),
            AuthError::NoTenant
        );
        let no_exp = sign(SECRET, serde_json::json!({"tenant_id": "acme"}));
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

    #[test]
    fn refuses_an_empty_or_short_secret() {
        for secret in ["", "short", &"x".repeat(MIN_SECRET_BYTES - 1)] {
            let refused = Authenticator::new(&Secret::new(secret), TokenRules::default());
            assert_eq!(refused.err(), Some(WeakSecret(secret.len())));
        }
        assert!(Authenticator::new(
            &Secret::new("x".repeat(MIN_SECRET_BYTES)),
            TokenRules::default()
        )
        .is_ok());
    }

    #[test]
    fn honours_nbf_and_refuses_unrepresentable_exp_and_huge_tokens() {
        let auth = authenticator(TokenRules::default());
        let exp = now() + 60;
        let early = sign(
            SECRET,
            serde_json::json!({"tenant_id": "acme", "exp": exp, "nbf": now() + 30}),
        );
        assert_eq!(auth.verify(&early).unwrap_err(), AuthError::NotYetValid);
        let started = sign(
            SECRET,
            serde_json::json!({"tenant_id": "acme", "exp": exp, "nbf": now() - 1}),
        );
        assert!(auth.verify(&started).is_ok());
        for exp in [
            serde_json::json!(9_223_372_036_854_775_813u64),
            serde_json::json!(u64::MAX),
            serde_json::json!(1e30),
        ] {
            let far = sign(SECRET, serde_json::json!({"tenant_id": "acme", "exp": exp}));
            assert_eq!(auth.verify(&far).unwrap_err().code(), "invalid_token");
        }
        let padding = "x".repeat(MAX_TOKEN_BYTES);
        let huge = sign(
            SECRET,
            serde_json::json!({"tenant_id": "acme", "exp": exp, "pad": padding}),
        );
        assert_eq!(
            auth.verify(&huge).unwrap_err(),
            AuthError::Invalid("the token is longer than 8 KiB")
        );
    }

    #[test]
    fn checks_audience_and_issuer_when_configured() {
        let auth = authenticator(TokenRules {
            audience: Some("changecast".into()),
            issuer: Some("https://id.example.com".into()),
        });
        let exp = now() + 60;
        let good = sign(
            SECRET,
            serde_json::json!({"tenant_id": "acme", "exp": exp, "aud": ["other", "changecast"], "iss": "https://id.example.com"}),
        );
        assert!(auth.verify(&good).is_ok());
        let minted = auth.mint(&TenantId::new("acme").unwrap(), Duration::from_secs(60));
        assert!(auth.verify(&minted).is_ok());
        for claims in [
            serde_json::json!({"tenant_id": "acme", "exp": exp, "iss": "https://id.example.com"}),
            serde_json::json!({"tenant_id": "acme", "exp": exp, "aud": "other", "iss": "https://id.example.com"}),
            serde_json::json!({"tenant_id": "acme", "exp": exp, "aud": "changecast"}),
            serde_json::json!({"tenant_id": "acme", "exp": exp, "aud": "changecast", "iss": "https://evil.example.com"}),
        ] {
            assert_eq!(
                auth.verify(&sign(SECRET, claims)).unwrap_err().code(),
                "invalid_token"
            );
        }
    }
}
