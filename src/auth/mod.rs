//! Tenancy from signed tokens: JWTs carrying a tenant claim and `exp`, signed either with
//! the service's HS256 secret or by an identity provider (RS256, ES256, EdDSA) whose
//! public keys come from a PEM file or a JWKS URL.
//! A subscriber's tenant comes from here and nowhere else (never from a query parameter),
//! and so does its scope beneath the tenant (`scope.rs`, API.md §3c).

mod jwks;
mod keys;
mod scope;
pub mod policy;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use crate::secret::Secret;
use crate::tenant::TenantId;
pub use jwks::{FETCH_TIMEOUT, MAX_DOCUMENT_BYTES, REFETCH_INTERVAL, START_WINDOW};
pub use keys::{KeySet, MAX_KEYS, PUBLIC_KEY_ALGORITHMS};
pub use scope::Scope;

/// Shortest signing secret accepted: an HS256 key shorter than its hash output (32 bytes)
/// can be guessed offline from any one token.
pub const MIN_SECRET_BYTES: usize = 32;
/// Longest token looked at. Ours are a few hundred bytes, an identity provider's a few
/// KiB; a bigger one is refused before any base64 or JSON parsing is spent on it.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Latest `exp` honoured (9999-12-31): beyond, the expiry cannot be represented by the
/// clocks that enforce it, so such a token is refused rather than trusted forever.
const MAX_EXP: u64 = 253_402_300_799;
/// Most `.`-separated parts of a tenant claim path.
const MAX_CLAIM_PATH_PARTS: usize = 8;
/// Longest `kid` quoted back in an error message.
const MAX_KID_SHOWN: usize = 64;

/// A `kid` as error messages show it: at most [`MAX_KID_SHOWN`] characters.
fn shown_kid(kid: &str) -> String {
    kid.chars().take(MAX_KID_SHOWN).collect()
}

/// Why a token was refused; `code()` is the 401's `error` field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no token: send `Authorization: Bearer <token>` or `?access_token=<token>`")]
    Missing,
    #[error("the token has expired; fetch a fresh one and reconnect with your last event id")]
    Expired,
    #[error("the token carries no usable `{0}` claim (a non-empty tenant id string)")]
    NoTenant(String),
    #[error("the token is not valid yet (its `nbf` lies in the future)")]
    NotYetValid,
    #[error("the token's `{claim}` claim is not a valid scope: {why}")]
    InvalidScope { claim: String, why: String },
    #[error(
        "the token's signing key (`kid` {:?}) is not among the identity provider's keys; \
         if the provider has just rotated its keys, retry in a moment",
        shown_kid(.0)
    )]
    UnknownKey(String),
    #[error("the token is not valid: {0}")]
    Invalid(Cow<'static, str>),
    /// A valid token the access policy (`CHANGECAST_POLICY`) grants nothing: 403, so
    /// that a client does not fetch a fresh token and try again.
    #[error("{0}")]
    Forbidden(policy::PolicyRefusal),
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Expired => "token_expired",
            AuthError::NoTenant(_) => "missing_tenant",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::InvalidScope { .. } => "invalid_scope",
            AuthError::UnknownKey(_) | AuthError::Invalid(_) => "invalid_token",
            AuthError::Forbidden(_) => "forbidden",
        }
    }

    fn invalid(why: impl Into<Cow<'static, str>>) -> AuthError {
        AuthError::Invalid(why.into())
    }
}

/// Where in a token's claims the tenant id is: a dotted path (`org.id`,
/// `app_metadata.tenant_id`) through nested objects. A claim whose own name has dots
/// (Auth0's namespaced `https://example.com/tenant_id`) is found too: at each level the
/// longest name present wins, shorter ones are tried if it leads nowhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimPath {
    path: String,
}

impl ClaimPath {
    pub fn parse(path: &str) -> Result<ClaimPath, String> {
        let path = path.trim();
        let parts = path.split('.').count();
        if path.is_empty() || path.split('.').any(str::is_empty) {
            return Err(format!(
                "{path:?} is not a claim path like `tenant_id` or `org.id` (no empty parts)"
            ));
        }
        if parts > MAX_CLAIM_PATH_PARTS {
            return Err(format!(
                "{path:?} has {parts} parts; at most {MAX_CLAIM_PATH_PARTS} are accepted"
            ));
        }
        Ok(ClaimPath {
            path: path.to_owned(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.path
    }

    /// The value at this path in `claims`, if any.
    pub fn find<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        let parts: Vec<&str> = self.path.split('.').collect();
        find_in(claims, &parts)
    }

    /// `claims` with `value` placed at this path, objects made on the way.
    fn place(&self, claims: &mut Map<String, Value>, value: Value) {
        let mut parts = self.path.split('.').peekable();
        let mut object = claims;
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                object.insert(part.to_owned(), value);
                return;
            }
            let next = object
                .entry(part.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if !next.is_object() {
                *next = Value::Object(Map::new());
            }
            object = next.as_object_mut().expect("BUG: just made an object");
        }
    }
}

impl Default for ClaimPath {
    fn default() -> Self {
        ClaimPath {
            path: "tenant_id".to_owned(),
        }
    }
}

impl std::str::FromStr for ClaimPath {
    type Err = String;
    fn from_str(path: &str) -> Result<Self, String> {
        ClaimPath::parse(path)
    }
}

impl std::fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.path)
    }
}

fn find_in<'a>(object: &'a Map<String, Value>, parts: &[&str]) -> Option<&'a Value> {
    for take in (1..=parts.len()).rev() {
        let Some(value) = object.get(&parts[..take].join(".")) else {
            continue;
        };
        if take == parts.len() {
            return Some(value);
        }
        if let Some(found) = value
            .as_object()
            .and_then(|inner| find_in(inner, &parts[take..]))
        {
            return Some(found);
        }
    }
    None
}

/// What a token must carry, when the operator asks for it (`CHANGECAST_JWT_AUDIENCE`,
/// `CHANGECAST_JWT_ISSUER`), where its tenant is (`CHANGECAST_TENANT_CLAIM`) and where its
/// scope is, if it has one (`CHANGECAST_SCOPE_CLAIM`). Minted tokens follow the same rules.
#[derive(Clone, Debug)]
pub struct TokenRules {
    pub audience: Option<String>,
    pub issuer: Option<String>,
    pub tenant_claim: ClaimPath,
    pub scope_claim: ClaimPath,
    /// `CHANGECAST_POLICY`: when set, every token's scope is what the policy derives
    /// from its claims, narrowed by the token's own scope claim where it has one.
    pub policy: Option<Arc<policy::Policy>>,
}

/// Where a token's scope is by default.
pub const DEFAULT_SCOPE_CLAIM: &str = "changecast";

impl Default for TokenRules {
    fn default() -> Self {
        TokenRules {
            audience: None,
            issuer: None,
            tenant_claim: ClaimPath::default(),
            scope_claim: ClaimPath::parse(DEFAULT_SCOPE_CLAIM).expect("BUG: a valid claim path"),
            policy: None,
        }
    }
}

/// Where an identity provider's public keys come from.
#[derive(Clone, Debug)]
pub enum KeySource {
    /// `CHANGECAST_JWT_PUBLIC_KEY`: a PEM file's path, or the PEM text itself.
    Pem(String),
    /// `CHANGECAST_JWKS_URL`.
    Jwks(String),
}

/// Why a signing secret was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "the JWT secret is {0} bytes long; it must be at least {MIN_SECRET_BYTES} bytes \
     (e.g. `openssl rand -hex 32`), or leave CHANGECAST_JWT_SECRET unset to have `serve` \
     generate one for this run"
)]
pub struct WeakSecret(pub usize);

/// Who a valid token speaks for, what it may see of its tenant, and until when.
#[derive(Clone, Debug)]
pub struct Identity {
    pub tenant: TenantId,
    pub expires_at: SystemTime,
    /// Unrestricted for a token without a scope claim.
    pub scope: Scope,
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

/// The HS256 secret, for verifying and minting.
struct SharedSecret {
    decoding: DecodingKey,
    encoding: EncodingKey,
}

enum PublicKeys {
    /// From a PEM file, fixed for the process's life.
    Fixed(KeySet),
    /// From a JWKS URL, refetched on unknown `kid`s.
    Fetched(Arc<jwks::RemoteKeys>),
}

/// Verifies tokens: HS256 ones with the shared secret (and mints those), RS256, ES256
/// and EdDSA ones with an identity provider's public keys. Which of the two verifies a
/// token is decided by its `alg` against what is configured, never by the key bytes: an
/// HS256 token is checked with the secret or not at all, so a public key can never be
/// taken for an HMAC secret.
pub struct Authenticator {
    secret: Option<SharedSecret>,
    public_keys: Option<PublicKeys>,
    rules: TokenRules,
}

impl Authenticator {
    /// HS256 only. Refuses a secret shorter than [`MIN_SECRET_BYTES`]: an empty one would
    /// let anyone mint a token for any tenant.
    pub fn new(secret: &Secret, rules: TokenRules) -> Result<Self, WeakSecret> {
        Ok(Authenticator {
            secret: Some(shared_secret(secret)?),
            public_keys: None,
            rules,
        })
    }

    /// An identity provider's tokens, verified with keys from `source` (a JWKS is
    /// fetched now, retried for up to [`START_WINDOW`]), and HS256 tokens too when a
    /// `secret` is given. Errors name the setting at fault.
    pub async fn with_public_keys(
        secret: Option<&Secret>,
        rules: TokenRules,
        source: &KeySource,
    ) -> anyhow::Result<Self> {
        let secret = secret.map(shared_secret).transpose()?;
        let public_keys = match source {
            KeySource::Pem(pem) => PublicKeys::Fixed(read_pem(pem)?),
            KeySource::Jwks(url) => {
                PublicKeys::Fetched(jwks::RemoteKeys::start(url, START_WINDOW).await?)
            }
        };
        if rules.audience.is_none() {
            tracing::warn!(
                "identity-provider tokens are accepted without an audience check: any token \
                 this provider signs for another application, if it carries a tenant claim, \
                 is accepted too; set CHANGECAST_JWT_AUDIENCE"
            );
        }
        Ok(Authenticator {
            secret,
            public_keys: Some(public_keys),
            rules,
        })
    }

    /// Verifies `token` against the keys held now. A token naming a `kid` the JWKS lacks
    /// is refused ([`AuthError::UnknownKey`]) and starts a refetch in the background, so
    /// that a retry shortly after finds a freshly rotated key; [`Self::verify_fresh`]
    /// waits for that refetch instead.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let verified = self.check(token);
        if let (Err(AuthError::UnknownKey(_)), Some(PublicKeys::Fetched(remote))) =
            (&verified, &self.public_keys)
        {
            remote.refresh_in_background();
        }
        verified
    }

    /// As [`Self::verify`], but a token naming an unknown `kid` waits for the JWKS to be
    /// refetched (at most [`FETCH_TIMEOUT`], and only if no refetch for an unknown `kid`
    /// happened in the last [`REFETCH_INTERVAL`]) and is then checked again: a client
    /// holding a token from a just-rotated key is served on its first try.
    pub async fn verify_fresh(&self, token: &str) -> Result<Identity, AuthError> {
        match (self.check(token), &self.public_keys) {
            (Err(AuthError::UnknownKey(kid)), Some(PublicKeys::Fetched(remote))) => {
                if remote.refresh_for(&kid).await {
                    self.check(token)
                } else {
                    Err(AuthError::UnknownKey(kid))
                }
            }
            (verified, _) => verified,
        }
    }

    fn check(&self, token: &str) -> Result<Identity, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::invalid("the token is longer than 8 KiB"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            AuthError::invalid("malformed token, or an `alg` that is not accepted (such as `none`)")
        })?;
        // Nothing here understands extensions a token would mark as critical.
        if header.crit.is_some() {
            return Err(AuthError::invalid(
                "the token marks header extensions as critical (`crit`); none are supported",
            ));
        }
        let claims = match header.alg {
            Algorithm::HS256 => match &self.secret {
                Some(secret) => self
                    .decode(token, &secret.decoding, Algorithm::HS256)
                    .map_err(|error| self.refusal(error))?,
                None => {
                    return Err(AuthError::invalid(
                        "HS256 tokens are not accepted: this service verifies its identity \
                         provider's keys and has no CHANGECAST_JWT_SECRET",
                    ))
                }
            },
            alg if PUBLIC_KEY_ALGORITHMS.contains(&alg) && self.public_keys.is_some() => {
                self.decode_public(token, alg, header.kid.as_deref())?
            }
            _ => return Err(AuthError::invalid(self.accepted_algorithms())),
        };
        self.identity(claims)
    }

    fn accepted_algorithms(&self) -> &'static str {
        match (&self.secret, &self.public_keys) {
            (Some(_), None) => "only HS256 tokens are accepted",
            (None, _) => "only RS256, ES256 and EdDSA tokens are accepted",
            (Some(_), Some(_)) => "only HS256, RS256, ES256 and EdDSA tokens are accepted",
        }
    }

    fn decode_public(
        &self,
        token: &str,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<Map<String, Value>, AuthError> {
        let current;
        let set = match &self.public_keys {
            Some(PublicKeys::Fixed(set)) => set,
            Some(PublicKeys::Fetched(remote)) => {
                current = remote.current();
                &current
            }
            None => return Err(AuthError::invalid(self.accepted_algorithms())),
        };
        let candidates = match set.candidates(alg, kid) {
            keys::Lookup::Keys(keys) => keys,
            keys::Lookup::UnknownKid => {
                // Whole: the refetch looks it up again (the token's size bounds it).
                return Err(AuthError::UnknownKey(kid.unwrap_or_default().to_owned()));
            }
            keys::Lookup::WrongAlgorithm(expected) => {
                return Err(AuthError::invalid(format!(
                    "the token is signed with {alg:?}, but its key (`kid`) is an {expected:?} key"
                )))
            }
            keys::Lookup::NoKeyForAlgorithm => {
                return Err(AuthError::invalid(format!(
                    "no configured key verifies {alg:?} tokens"
                )))
            }
        };
        for key in &candidates {
            match self.decode(token, &key.decoding, key.alg) {
                // Only a signature mismatch moves on to the next key: any other refusal
                // means the signature was good and the claims were not.
                Err(error) if matches!(error.kind(), ErrorKind::InvalidSignature) => continue,
                decoded => return decoded.map_err(|error| self.refusal(error)),
            }
        }
        Err(AuthError::invalid("wrong signature"))
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        // An expired token is expired: the default leeway would accept it for a minute.
        validation.leeway = 0;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        match &self.rules.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.rules.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    /// Checks the signature with `key` (for `alg` only) and the time and audience claims.
    fn decode(
        &self,
        token: &str,
        key: &DecodingKey,
        alg: Algorithm,
    ) -> Result<Map<String, Value>, jsonwebtoken::errors::Error> {
        jsonwebtoken::decode::<Map<String, Value>>(token, key, &self.validation(alg))
            .map(|data| data.claims)
    }

    fn refusal(&self, error: jsonwebtoken::errors::Error) -> AuthError {
        match error.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidAudience => AuthError::invalid("wrong audience (`aud`)"),
            ErrorKind::InvalidIssuer => AuthError::invalid("wrong issuer (`iss`)"),
            ErrorKind::InvalidSignature => AuthError::invalid("wrong signature"),
            ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::MissingAlgorithm => AuthError::invalid(self.accepted_algorithms()),
            ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
                "aud" => AuthError::invalid("the `aud` claim is required"),
                "iss" => AuthError::invalid("the `iss` claim is required"),
                _ => AuthError::invalid("the `exp` claim is required"),
            },
            _ => AuthError::invalid("malformed token"),
        }
    }

    fn identity(&self, claims: Map<String, Value>) -> Result<Identity, AuthError> {
        let path = &self.rules.tenant_claim;
        let tenant = match path.find(&claims) {
            Some(Value::String(id)) => {
                TenantId::new(id).map_err(|_| AuthError::NoTenant(path.as_str().to_owned()))?
            }
            _ => return Err(AuthError::NoTenant(path.as_str().to_owned())),
        };
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or_else(|| AuthError::invalid("`exp` must be a whole number of seconds"))?;
        if exp > MAX_EXP {
            return Err(AuthError::invalid("`exp` lies beyond the year 9999"));
        }
        // A scope that cannot be read is refused, never taken for "no scope": that
        // would hand its holder everything the scope was meant to keep from it.
        let scope_claim = &self.rules.scope_claim;
        let own_scope = match scope_claim.find(&claims) {
            None => None,
            Some(claim) => {
                Some(
                    Scope::from_claim(claim).map_err(|why| AuthError::InvalidScope {
                        claim: scope_claim.as_str().to_owned(),
                        why,
                    })?,
                )
            }
        };
        let scope = match &self.rules.policy {
            None => own_scope.unwrap_or_else(Scope::unrestricted),
            Some(policy) => {
                let granted = policy.scope_for(&claims).map_err(AuthError::Forbidden)?;
                // The policy's rules were checked at load with sample values; a claim's
                // value can still make a filter that the scope parser refuses.
                let granted = Scope::from_claim(&granted)
                    .map_err(|why| AuthError::Forbidden(policy::PolicyRefusal::Unusable(why)))?;
                match own_scope {
                    Some(own) => granted.narrowed_by(&own),
                    None => granted,
                }
            }
        };
        Ok(Identity {
            tenant,
            expires_at: UNIX_EPOCH + Duration::from_secs(exp),
            scope,
        })
    }

    /// An HS256 token for `tenant` valid for `ttl`, its tenant at the configured claim
    /// path.
    ///
    /// # Panics
    /// When no secret is configured (an authenticator made by [`Self::new`] always has
    /// one).
    pub fn mint(&self, tenant: &TenantId, ttl: Duration) -> String {
        self.mint_with_claims(tenant, ttl, &[])
    }

    /// As [`Self::mint`], with `extra` claims (such as a scope) at their paths; the
    /// tenant, `exp`, `iat`, `aud` and `iss` are placed after them and so win.
    ///
    /// # Panics
    /// When no secret is configured.
    pub fn mint_with_claims(
        &self,
        tenant: &TenantId,
        ttl: Duration,
        extra: &[(ClaimPath, Value)],
    ) -> String {
        let secret = self
            .secret
            .as_ref()
            .expect("BUG: minting needs the HS256 secret");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("BUG: clock before 1970")
            .as_secs();
        let mut claims = Map::new();
        for (path, value) in extra {
            path.place(&mut claims, value.clone());
        }
        self.rules
            .tenant_claim
            .place(&mut claims, Value::String(tenant.as_str().to_owned()));
        claims.insert(
            "exp".into(),
            now.saturating_add(ttl.as_secs().max(1)).min(MAX_EXP).into(),
        );
        claims.insert("iat".into(), now.into());
        if let Some(audience) = &self.rules.audience {
            claims.insert("aud".into(), audience.clone().into());
        }
        if let Some(issuer) = &self.rules.issuer {
            claims.insert("iss".into(), issuer.clone().into());
        }
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &secret.encoding)
            .expect("BUG: HS256 signing cannot fail")
    }
}

fn shared_secret(secret: &Secret) -> Result<SharedSecret, WeakSecret> {
    check_secret(secret)?;
    let bytes = secret.expose().as_bytes();
    Ok(SharedSecret {
        decoding: DecodingKey::from_secret(bytes),
        encoding: EncodingKey::from_secret(bytes),
    })
}

/// `CHANGECAST_JWT_PUBLIC_KEY`: PEM text as is, or the path of a file holding it.
fn read_pem(setting: &str) -> anyhow::Result<KeySet> {
    let (text, origin) = if setting.trim_start().starts_with("-----BEGIN") {
        (setting.to_owned(), "CHANGECAST_JWT_PUBLIC_KEY".to_owned())
    } else {
        let text = std::fs::read_to_string(setting).with_context(|| {
            format!("CHANGECAST_JWT_PUBLIC_KEY: cannot read the PEM file {setting:?}")
        })?;
        (text, format!("CHANGECAST_JWT_PUBLIC_KEY file {setting:?}"))
    };
    KeySet::from_pem(&text).map_err(|why| anyhow::anyhow!("{origin}: {why}"))
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
    fn the_scope_comes_from_its_claim_and_a_malformed_one_refuses_the_token() {
        let exp = now() + 60;
        let auth = authenticator(TokenRules::default());
        let plain = sign(SECRET, serde_json::json!({"tenant_id": "acme", "exp": exp}));
        assert!(auth.verify(&plain).unwrap().scope.is_unrestricted());
        let scoped = sign(
            SECRET,
            serde_json::json!({"tenant_id": "acme", "exp": exp, "changecast": {"stats": false}}),
        );
        assert!(!auth.verify(&scoped).unwrap().scope.allows_stats());
        let malformed = sign(
            SECRET,
            serde_json::json!({"tenant_id": "acme", "exp": exp, "changecast": {"types": "t"}}),
        );
        let refused = auth.verify(&malformed).unwrap_err();
        assert_eq!(refused.code(), "invalid_scope");
        assert!(refused.to_string().contains("`changecast`"), "{refused}");

        let nested = authenticator(TokenRules {
            scope_claim: ClaimPath::parse("app.scope").unwrap(),
            ..TokenRules::default()
        });
        let token = sign(
            SECRET,
            serde_json::json!({"tenant_id": "acme", "exp": exp,
                               "app": {"scope": {"stats": false}}, "changecast": "ignored"}),
        );
        assert!(!nested.verify(&token).unwrap().scope.allows_stats());
        // Minted tokens carry no scope.
        let minted = nested.mint(&TenantId::new("acme").unwrap(), Duration::from_secs(60));
        assert!(nested.verify(&minted).unwrap().scope.is_unrestricted());
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
        assert_eq!(
            auth.verify(&tenantless).unwrap_err(),
            AuthError::NoTenant("tenant_id".into())
        );
        let numeric_tenant = sign(SECRET, serde_json::json!({"tenant_id": 7, "exp": exp}));
        assert_eq!(
            auth.verify(&numeric_tenant).unwrap_err(),
            AuthError::NoTenant("tenant_id".into())
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
            AuthError::Invalid("the token is longer than 8 KiB".into())
        );
    }

    #[test]
    fn checks_audience_and_issuer_when_configured() {
        let auth = authenticator(TokenRules {
            audience: Some("changecast".into()),
            issuer: Some("https://id.example.com".into()),
            ..TokenRules::default()
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
    // Identity-provider keys (test keys: tests/fixtures/idp/README.md).
    const RSA_A_KEY: &str = include_str!("../../tests/fixtures/idp/rsa-a.key");
    const RSA_A_PUB: &str = include_str!("../../tests/fixtures/idp/rsa-a.pub.pem");
    const RSA_A_CERT: &str = include_str!("../../tests/fixtures/idp/rsa-a.cert.pem");
    const RSA_A_JWK: &str = include_str!("../../tests/fixtures/idp/rsa-a.jwk.json");
    const RSA_B_KEY: &str = include_str!("../../tests/fixtures/idp/rsa-b.key");
    const RSA_B_JWK: &str = include_str!("../../tests/fixtures/idp/rsa-b.jwk.json");
    const EC_KEY: &str = include_str!("../../tests/fixtures/idp/ec.key");
    const EC_PUB: &str = include_str!("../../tests/fixtures/idp/ec.pub.pem");
    const EC_JWK: &str = include_str!("../../tests/fixtures/idp/ec.jwk.json");
    const ED_KEY: &str = include_str!("../../tests/fixtures/idp/ed25519.key");
    const ED_PUB: &str = include_str!("../../tests/fixtures/idp/ed25519.pub.pem");
    const ED_JWK: &str = include_str!("../../tests/fixtures/idp/ed25519.jwk.json");
    const P384_PUB: &str = include_str!("../../tests/fixtures/idp/ec-p384.pub.pem");
    const P384_JWK: &str = include_str!("../../tests/fixtures/idp/ec-p384.jwk.json");
    const RSA_1024_PUB: &str = include_str!("../../tests/fixtures/idp/rsa-1024.pub.pem");
    const RSA_1024_JWK: &str = include_str!("../../tests/fixtures/idp/rsa-1024.jwk.json");

    fn with_keys(keys: KeySet, secret: Option<&[u8]>, rules: TokenRules) -> Authenticator {
        Authenticator {
            secret: secret
                .map(|s| shared_secret(&Secret::new(std::str::from_utf8(s).unwrap())).unwrap()),
            public_keys: Some(PublicKeys::Fixed(keys)),
            rules,
        }
    }

    fn jwks(keys: &[&str]) -> KeySet {
        let document = format!("{{\"keys\": [{}]}}", keys.join(","));
        KeySet::from_jwks(document.as_bytes()).unwrap().0
    }

    fn sign_with(
        alg: Algorithm,
        kid: Option<&str>,
        private_pem: &str,
        claims: serde_json::Value,
    ) -> String {
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(private_pem.as_bytes()),
            Algorithm::ES256 => EncodingKey::from_ec_pem(private_pem.as_bytes()),
            _ => EncodingKey::from_ed_pem(private_pem.as_bytes()),
        }
        .unwrap();
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }

    fn claims() -> serde_json::Value {
        serde_json::json!({"tenant_id": "acme", "exp": now() + 60})
    }

    /// A token with `header` (JSON) over `claims`, signed with HMAC-SHA256 under `key`.
    fn hand_signed(header: &str, claims: &serde_json::Value, key: &[u8]) -> String {
        use hmac::{KeyInit as _, Mac as _};
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
        mac.update(message.as_bytes());
        format!(
            "{message}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    #[test]
    fn accepts_rs256_es256_and_eddsa_with_pem_keys() {
        let pem = format!("{RSA_A_PUB}\n{EC_PUB}\n{ED_PUB}");
        let auth = with_keys(KeySet::from_pem(&pem).unwrap(), None, TokenRules::default());
        for (alg, key) in [
            (Algorithm::RS256, RSA_A_KEY),
            (Algorithm::ES256, EC_KEY),
            (Algorithm::EdDSA, ED_KEY),
        ] {
            // PEM keys have no names: a token's `kid` is not looked at.
            for kid in [None, Some("whatever")] {
                let token = sign_with(alg, kid, key, claims());
                assert_eq!(
                    auth.verify(&token).unwrap().tenant.as_str(),
                    "acme",
                    "{alg:?} {kid:?}"
                );
            }
        }
        // A certificate carries the same key.
        let auth = with_keys(
            KeySet::from_pem(RSA_A_CERT).unwrap(),
            None,
            TokenRules::default(),
        );
        assert!(auth
            .verify(&sign_with(Algorithm::RS256, None, RSA_A_KEY, claims()))
            .is_ok());
        // Another key's token is refused.
        let other = sign_with(Algorithm::RS256, None, RSA_B_KEY, claims());
        assert_eq!(
            auth.verify(&other).unwrap_err(),
            AuthError::Invalid("wrong signature".into())
        );
    }

    #[test]
    fn refuses_algorithm_confusion() {
        let exp = now() + 60;
        let claims = serde_json::json!({"tenant_id": "acme", "exp": exp});
        for secret in [None, Some(SECRET)] {
            let auth = with_keys(
                KeySet::from_pem(RSA_A_PUB).unwrap(),
                secret,
                TokenRules::default(),
            );
            // HS256 "signed" with the public key's bytes, PEM or DER: never checked
            // against the public key, so refused with or without a secret configured.
            let der = base64::engine::general_purpose::STANDARD
                .decode(
                    RSA_A_PUB
                        .lines()
                        .filter(|l| !l.starts_with("-----"))
                        .collect::<String>(),
                )
                .unwrap();
            for key in [RSA_A_PUB.as_bytes(), &der] {
                let token = hand_signed(r#"{"alg":"HS256","typ":"JWT"}"#, &claims, key);
                let refused = auth.verify(&token).unwrap_err();
                assert_eq!(refused.code(), "invalid_token", "{refused}");
                if secret.is_none() {
                    assert!(
                        refused
                            .to_string()
                            .contains("HS256 tokens are not accepted"),
                        "{refused}"
                    );
                }
            }
            // `alg: none`, HS384, and a public-key algorithm this service does not take.
            for header in [
                r#"{"alg":"none"}"#,
                r#"{"alg":"HS384"}"#,
                r#"{"alg":"PS256"}"#,
                r#"{"alg":"RS512"}"#,
            ] {
                let token = hand_signed(header, &claims, RSA_A_PUB.as_bytes());
                assert_eq!(
                    auth.verify(&token).unwrap_err().code(),
                    "invalid_token",
                    "{header}"
                );
            }
            let unsigned = format!(
                "{}.{}.",
                URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            );
            assert_eq!(auth.verify(&unsigned).unwrap_err().code(), "invalid_token");
            // A token whose `alg` is not its key's: ES256 against an RSA-only set.
            let es = sign_with(Algorithm::ES256, None, EC_KEY, claims.clone());
            assert!(auth
                .verify(&es)
                .unwrap_err()
                .to_string()
                .contains("no configured key verifies ES256"));
        }
        // HS256 with the configured secret still works beside the public keys.
        let auth = with_keys(
            KeySet::from_pem(RSA_A_PUB).unwrap(),
            Some(SECRET),
            TokenRules::default(),
        );
        assert!(auth.verify(&sign(SECRET, claims.clone())).is_ok());

        // In a JWKS, a `kid` names one key, bound to one algorithm.
        let auth = with_keys(jwks(&[RSA_A_JWK, EC_JWK]), None, TokenRules::default());
        let es_as_rsa = sign_with(Algorithm::ES256, Some("rsa-a"), EC_KEY, claims.clone());
        let refused = auth.verify(&es_as_rsa).unwrap_err();
        assert!(refused.to_string().contains("is an RS256 key"), "{refused}");
        assert!(auth
            .verify(&sign_with(
                Algorithm::ES256,
                Some("ec-1"),
                EC_KEY,
                claims.clone()
            ))
            .is_ok());
        // The header's own key (`jwk`) is never trusted: signed by an unknown key,
        // naming a trusted key's `kid`, it fails that key's check.
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa-a".into());
        header.jwk = Some(serde_json::from_str(RSA_B_JWK).unwrap());
        let forged = jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_rsa_pem(RSA_B_KEY.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(
            auth.verify(&forged).unwrap_err(),
            AuthError::Invalid("wrong signature".into())
        );
        // Critical header extensions are not understood, so refused.
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa-a".into());
        header.crit = Some(vec!["exp".into()]);
        let critical = jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_rsa_pem(RSA_A_KEY.as_bytes()).unwrap(),
        )
        .unwrap();
        assert!(auth
            .verify(&critical)
            .unwrap_err()
            .to_string()
            .contains("crit"));
    }

    #[test]
    fn jwks_kid_selection() {
        let auth = with_keys(
            jwks(&[RSA_A_JWK, RSA_B_JWK, ED_JWK]),
            None,
            TokenRules::default(),
        );
        let b = sign_with(Algorithm::RS256, Some("rsa-b"), RSA_B_KEY, claims());
        assert!(auth.verify(&b).is_ok());
        // Without a `kid`, each key of the token's algorithm is tried.
        let b_unnamed = sign_with(Algorithm::RS256, None, RSA_B_KEY, claims());
        assert!(auth.verify(&b_unnamed).is_ok());
        assert!(auth
            .verify(&sign_with(Algorithm::EdDSA, None, ED_KEY, claims()))
            .is_ok());
        // Under another key's name it fails that key's check.
        let misnamed = sign_with(Algorithm::RS256, Some("rsa-a"), RSA_B_KEY, claims());
        assert_eq!(
            auth.verify(&misnamed).unwrap_err(),
            AuthError::Invalid("wrong signature".into())
        );
        // An unknown `kid` says so (and, with a JWKS URL, starts a refetch).
        let unknown = sign_with(Algorithm::RS256, Some("rsa-next"), RSA_B_KEY, claims());
        assert_eq!(
            auth.verify(&unknown).unwrap_err(),
            AuthError::UnknownKey("rsa-next".into())
        );
        assert_eq!(AuthError::UnknownKey("x".into()).code(), "invalid_token");
        // Claims are checked after the signature: an expired token of a good key.
        let expired = sign_with(
            Algorithm::RS256,
            Some("rsa-a"),
            RSA_A_KEY,
            serde_json::json!({"tenant_id": "acme", "exp": now() - 1}),
        );
        assert_eq!(auth.verify(&expired).unwrap_err(), AuthError::Expired);
    }

    #[test]
    fn jwks_documents_keep_only_usable_signature_keys() {
        let oct = r#"{"kty":"oct","kid":"hmac","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}"#;
        let enc = RSA_B_JWK.replace("\"sig\"", "\"enc\"");
        let ps256 = RSA_B_JWK
            .replace("\"RS256\"", "\"PS256\"")
            .replace("rsa-b", "rsa-ps");
        let unnamed = r#"{"kty":"RSA","n":"AQAB","e":"AQAB"}"#;
        let unknown_type = r#"{"kty":"XYZ","kid":"what"}"#;
        let document = format!(
            "{{\"keys\": [{RSA_A_JWK}, {oct}, {enc}, {ps256}, {unnamed}, {unknown_type}, {P384_JWK}, {RSA_1024_JWK}, {EC_JWK}, {RSA_A_JWK}]}}"
        );
        let (set, skipped) = KeySet::from_jwks(document.as_bytes()).unwrap();
        assert_eq!(set.len(), 2, "{skipped:?}");
        assert!(set.has_kid("rsa-a") && set.has_kid("ec-1"));
        assert_eq!(skipped.len(), 8, "{skipped:?}");
        let none_usable = format!("{{\"keys\": [{oct}, {P384_JWK}]}}");
        let refused = KeySet::from_jwks(none_usable.as_bytes()).err().unwrap();
        assert!(refused.contains("no usable signature key"), "{refused}");
        assert!(KeySet::from_jwks(b"{\"keys\": []}").is_err());
        assert!(KeySet::from_jwks(b"<html>").is_err());
    }

    #[test]
    fn pem_files_are_checked_at_start() {
        for (pem, says) in [
            (RSA_A_KEY, "private key"),
            (P384_PUB, "P-256"),
            (RSA_1024_PUB, "2048"),
            ("hello", "no PEM block"),
            (
                "-----BEGIN PUBLIC KEY-----\n!!!\n-----END PUBLIC KEY-----\n",
                "base64",
            ),
            ("-----BEGIN PUBLIC KEY-----\nAAAA\n", "END PUBLIC KEY"),
        ] {
            let refused = KeySet::from_pem(pem).err().unwrap();
            assert!(refused.contains(says), "{refused} should say {says}");
        }
        let refused = read_pem("/nonexistent/key.pem").err().unwrap();
        assert!(format!("{refused:#}").contains("CHANGECAST_JWT_PUBLIC_KEY"));
        assert_eq!(read_pem(EC_PUB).unwrap().len(), 1);
    }

    #[test]
    fn tenant_claim_paths() {
        let path = |p: &str| ClaimPath::parse(p).unwrap();
        let claims = serde_json::json!({
            "org": {"id": "acme", "n": 7},
            "app_metadata": {"tenant_id": "globex"},
            "https://example.com/tenant_id": "initech",
            "https://example.com/claims": {"tenant": "hooli"},
            "tenant_id": "plain",
        });
        let claims = claims.as_object().unwrap();
        for (p, expected) in [
            ("tenant_id", Some("plain")),
            ("org.id", Some("acme")),
            ("app_metadata.tenant_id", Some("globex")),
            ("https://example.com/tenant_id", Some("initech")),
            ("https://example.com/claims.tenant", Some("hooli")),
            ("org.missing", None),
            ("org.id.deeper", None),
        ] {
            assert_eq!(
                path(p).find(claims).and_then(Value::as_str),
                expected,
                "{p}"
            );
        }
        for bad in ["", ".", "org.", ".id", "a..b", "a.b.c.d.e.f.g.h.i"] {
            assert!(ClaimPath::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(ClaimPath::default().as_str(), "tenant_id");

        let rules = TokenRules {
            tenant_claim: path("org.id"),
            ..TokenRules::default()
        };
        let auth = with_keys(KeySet::from_pem(EC_PUB).unwrap(), Some(SECRET), rules);
        let exp = now() + 60;
        let nested = sign_with(
            Algorithm::ES256,
            None,
            EC_KEY,
            serde_json::json!({"org": {"id": "acme"}, "exp": exp}),
        );
        assert_eq!(auth.verify(&nested).unwrap().tenant.as_str(), "acme");
        for claims in [
            serde_json::json!({"tenant_id": "acme", "exp": exp}),
            serde_json::json!({"org": {"id": 7}, "exp": exp}),
            serde_json::json!({"org": {"id": ""}, "exp": exp}),
            serde_json::json!({"org": "acme", "exp": exp}),
        ] {
            let token = sign_with(Algorithm::ES256, None, EC_KEY, claims);
            let refused = auth.verify(&token).unwrap_err();
            assert_eq!(refused, AuthError::NoTenant("org.id".into()));
            assert!(refused.to_string().contains("`org.id`"));
        }
        // Minted tokens put the tenant where the path says, so they verify.
        let minted = auth.mint(&TenantId::new("acme").unwrap(), Duration::from_secs(60));
        assert_eq!(auth.verify(&minted).unwrap().tenant.as_str(), "acme");
    }
}
