//! Tokens from an identity provider: RS256, ES256 and EdDSA tokens signed by the test,
//! verified with a JWKS the test serves itself on a local port (or a PEM file); key
//! rotation, the refetch rate limit, failed fetches, and tenancy over SSE and WebSocket.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use changecast::auth::{Authenticator, KeySource, TokenRules};
use changecast::secret::Secret;
use changecast::{App, ServeConfig};
use futures_util::FutureExt as _;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/idp/",
            $name
        ))
    };
}

const RSA_A_KEY: &str = fixture!("rsa-a.key");
const RSA_A_JWK: &str = fixture!("rsa-a.jwk.json");
const RSA_B_KEY: &str = fixture!("rsa-b.key");
const RSA_B_JWK: &str = fixture!("rsa-b.jwk.json");
const EC_KEY: &str = fixture!("ec.key");
const EC_JWK: &str = fixture!("ec.jwk.json");
const ED_KEY: &str = fixture!("ed25519.key");
const ED_JWK: &str = fixture!("ed25519.jwk.json");

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token as an identity provider would issue it, signed with a private PEM key.
fn idp_token(alg: Algorithm, kid: Option<&str>, private_pem: &str, claims: Value) -> String {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(private_pem.as_bytes()),
        Algorithm::ES256 => EncodingKey::from_ec_pem(private_pem.as_bytes()),
        _ => EncodingKey::from_ed_pem(private_pem.as_bytes()),
    }
    .unwrap();
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, &claims, &key).unwrap()
}

/// Claims in the shape of a Keycloak organization token: the tenant at `org.id`.
fn org_claims(tenant: &str) -> Value {
    json!({"sub": "user-1", "org": {"id": tenant}, "aud": "changecast", "exp": now() + 600})
}

fn jwks_document(keys: &[&str]) -> String {
    format!("{{\"keys\": [{}]}}", keys.join(","))
}

/// What the test's JWKS endpoint answers.
#[derive(Clone)]
enum Answer {
    Document(String),
    Status(u16),
    /// Headers, then nothing: the fetch must time out.
    Hang,
}

/// A JWKS endpoint on a local port, counting the fetches it answers.
struct JwksServer {
    addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    fetches: watch::Receiver<usize>,
}

impl JwksServer {
    async fn start(document: String) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(Answer::Document(document)));
        let (count, fetches) = watch::channel(0usize);
        let serving = answer.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                count.send_modify(|n| *n += 1);
                let answer = serving.lock().unwrap().clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buffer = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buffer[..n]),
                        }
                    }
                    let response = match &answer {
                        Answer::Document(body) => format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        ),
                        Answer::Status(status) => format!(
                            "HTTP/1.1 {status} Oops\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        ),
                        Answer::Hang => "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{".into(),
                    };
                    let _ = socket.write_all(response.as_bytes()).await;
                    if matches!(answer, Answer::Hang) {
                        // Held open, unanswered, until the client gives up.
                        let _ = socket.read(&mut buffer).await;
                    }
                });
            }
        });
        JwksServer {
            addr,
            answer,
            fetches,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    fn answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn fetches(&self) -> usize {
        *self.fetches.borrow()
    }

    /// Waits (bounded) until the endpoint has been asked `n` times.
    async fn until_fetched(&mut self, n: usize) {
        tokio::time::timeout(WAIT, self.fetches.wait_for(|count| *count >= n))
            .await
            .unwrap_or_else(|_| panic!("the JWKS was not fetched {n} times"))
            .unwrap();
    }
}

async fn app_with_jwks(jwks: &JwksServer) -> TestApp {
    let url = jwks.url();
    spawn_app_with(move |config| {
        config.identity_provider.jwks_url = Some(url);
        config.token_rules.tenant_claim = "org.id".parse().unwrap();
        config.token_rules.jwt_audience = Some("changecast".into());
    })
    .await
}

#[tokio::test]
async fn idp_tokens_subscribe_over_sse_and_ws_to_their_own_tenant_only() {
    let jwks = JwksServer::start(jwks_document(&[RSA_A_JWK, EC_JWK, ED_JWK])).await;
    let app = app_with_jwks(&jwks).await;
    assert_eq!(jwks.fetches(), 1, "fetched once at start");

    let acme_rs = idp_token(
        Algorithm::RS256,
        Some("rsa-a"),
        RSA_A_KEY,
        org_claims("acme"),
    );
    let globex_ed = idp_token(Algorithm::EdDSA, Some("ed-1"), ED_KEY, org_claims("globex"));
    let globex_es = idp_token(Algorithm::ES256, Some("ec-1"), EC_KEY, org_claims("globex"));
    let mut acme_sse = app.sse(&acme_rs, "types=ticket").await;
    let mut globex_sse = app.sse(&globex_es, "types=ticket").await;
    let mut globex_ws = app.ws(&globex_ed).await;
    let hello = globex_ws.expect("connection_established").await;
    assert_eq!(hello["tenant_id"], "globex");
    globex_ws
        .subscribe(json!({"resource_types": ["ticket"]}))
        .await;

    // Another tenant's change committed first: it would arrive first if it leaked.
    let globex_ticket = app.insert_ticket("globex", "theirs").await;
    let acme_ticket = app.insert_ticket("acme", "ours").await;
    let received = acme_sse
        .receive_ids(&HashSet::from([acme_ticket.clone()]))
        .await;
    assert_eq!(received, HashSet::from([acme_ticket.clone()]));
    let received = globex_sse
        .receive_ids(&HashSet::from([globex_ticket.clone()]))
        .await;
    assert_eq!(received, HashSet::from([globex_ticket.clone()]));
    let received = globex_ws
        .receive_ids(&HashSet::from([globex_ticket.clone()]))
        .await;
    assert_eq!(received, HashSet::from([globex_ticket]));
    globex_ws
        .assert_no_change_within(Duration::from_millis(300))
        .await;

    // No secret is configured: HS256 tokens are refused, whatever they are signed with.
    let (status, body) = app.get("/v1/stats", Some(&token("acme"))).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid_token");
    assert!(
        body["message"].as_str().unwrap().contains("HS256"),
        "{body}"
    );
    let refused = app
        .ws_connect(Some(&token("acme")), "")
        .await
        .err()
        .unwrap();
    assert_eq!(refused.0, 401);
    // Tokens without the tenant claim, for another audience, or expired, are refused.
    for (claims, code) in [
        (
            json!({"tenant_id": "acme", "aud": "changecast", "exp": now() + 60}),
            "missing_tenant",
        ),
        (
            json!({"org": {"id": "acme"}, "aud": "billing", "exp": now() + 60}),
            "invalid_token",
        ),
        (
            json!({"org": {"id": "acme"}, "aud": "changecast", "exp": now() - 1}),
            "token_expired",
        ),
    ] {
        let token = idp_token(Algorithm::RS256, Some("rsa-a"), RSA_A_KEY, claims);
        let (status, body) = app.get("/v1/stats", Some(&token)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some(code)),
            "{body}"
        );
    }
    // A token whose `alg` is not its key's.
    let confused = idp_token(Algorithm::ES256, Some("rsa-a"), EC_KEY, org_claims("acme"));
    let (status, body) = app.get("/v1/stats", Some(&confused)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_token")),
        "{body}"
    );
    assert_eq!(jwks.fetches(), 1, "known kids need no fetch");
}

#[tokio::test]
async fn a_rotated_key_is_fetched_and_refetches_are_rate_limited() {
    let mut jwks = JwksServer::start(jwks_document(&[RSA_A_JWK])).await;
    let app = app_with_jwks(&jwks).await;
    let old = idp_token(
        Algorithm::RS256,
        Some("rsa-a"),
        RSA_A_KEY,
        org_claims("acme"),
    );
    assert_eq!(app.get("/v1/stats", Some(&old)).await.0, 200);

    // The provider rotates: the new key is published, and tokens name it.
    jwks.answer(Answer::Document(jwks_document(&[RSA_A_JWK, RSA_B_JWK])));
    let new = idp_token(
        Algorithm::RS256,
        Some("rsa-b"),
        RSA_B_KEY,
        org_claims("acme"),
    );
    // The request that names the new key waits for the refetch: accepted at once (a
    // browser's EventSource would not retry after a 401).
    assert_eq!(app.get("/v1/stats", Some(&new)).await.0, 200);
    assert_eq!(jwks.fetches(), 2, "one refetch brought the new key");
    let mut stream = app.sse(&new, "types=ticket").await;
    let ticket = app.insert_ticket("acme", "after rotation").await;
    let wanted = HashSet::from([ticket]);
    assert_eq!(stream.receive_ids(&wanted).await, wanted);
    assert_eq!(app.get("/v1/stats", Some(&old)).await.0, 200);

    // Made-up kids cannot make the service hammer the provider: within 30 s of the last
    // refetch, none is fetched for them.
    for n in 0..25 {
        let kid = format!("made-up-{n}");
        let forged = idp_token(Algorithm::RS256, Some(&kid), RSA_B_KEY, org_claims("acme"));
        let (status, body) = app.get("/v1/stats", Some(&forged)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_token")),
            "{body}"
        );
        assert!(body["message"].as_str().unwrap().contains(&kid), "{body}");
    }
    let quiet = tokio::time::timeout(Duration::from_millis(500), jwks.until_fetched(3)).await;
    assert!(
        quiet.is_err(),
        "a made-up kid caused a fetch within 30 s of the last"
    );
    assert_eq!(jwks.fetches(), 2);
}

/// An authenticator of the test's JWKS alone (no secret), the tenant at `org.id`.
async fn jwks_authenticator(jwks: &JwksServer) -> Arc<Authenticator> {
    let rules = TokenRules {
        tenant_claim: "org.id".parse().unwrap(),
        ..TokenRules::default()
    };
    Arc::new(
        Authenticator::with_public_keys(None, rules, &KeySource::Jwks(jwks.url()))
            .await
            .unwrap(),
    )
}

#[tokio::test]
async fn verify_fresh_accepts_a_rotated_key_on_the_first_try_with_one_fetch() {
    let mut jwks = JwksServer::start(jwks_document(&[RSA_A_JWK])).await;
    let auth = jwks_authenticator(&jwks).await;
    jwks.answer(Answer::Document(jwks_document(&[RSA_A_JWK, RSA_B_JWK])));
    let new = idp_token(
        Algorithm::RS256,
        Some("rsa-b"),
        RSA_B_KEY,
        org_claims("acme"),
    );
    // Many clients with the new key at once: each waits for the one refetch.
    let verifying: Vec<_> = (0..20)
        .map(|_| {
            let (auth, token) = (auth.clone(), new.clone());
            tokio::spawn(async move { auth.verify_fresh(&token).await })
        })
        .collect();
    for verified in verifying {
        let identity = verified.await.unwrap().expect("accepted on the first try");
        assert_eq!(identity.tenant.as_str(), "acme");
    }
    assert_eq!(jwks.fetches(), 2);
    // A made-up kid right after is refused at once, without a fetch.
    let forged = idp_token(
        Algorithm::RS256,
        Some("made-up"),
        RSA_B_KEY,
        org_claims("acme"),
    );
    let refused = auth.verify_fresh(&forged).await.unwrap_err();
    assert_eq!(refused.code(), "invalid_token");
    let quiet = tokio::time::timeout(Duration::from_millis(300), jwks.until_fetched(3)).await;
    assert!(
        quiet.is_err(),
        "a made-up kid caused a fetch within 30 s of the last"
    );
}

#[tokio::test]
async fn a_waiter_that_gives_up_does_not_cancel_the_refetch_and_long_kids_are_found() {
    let mut jwks = JwksServer::start(jwks_document(&[RSA_A_JWK])).await;
    let auth = jwks_authenticator(&jwks).await;
    // The rotated key's kid is longer than error messages show.
    let long_kid = format!("rotated-{}", "k".repeat(100));
    let rotated_jwk = RSA_B_JWK.replace("\"rsa-b\"", &format!("{long_kid:?}"));
    assert_ne!(rotated_jwk, RSA_B_JWK, "the fixture names its kid");
    jwks.answer(Answer::Document(jwks_document(&[RSA_A_JWK, &rotated_jwk])));
    let new = idp_token(
        Algorithm::RS256,
        Some(&long_kid),
        RSA_B_KEY,
        org_claims("acme"),
    );
    // A client that hangs up at once (its request future polled once, then dropped)
    // starts the refetch but cannot cancel it. (Polled once by hand: a zero timeout
    // fires only at the timer's next tick, by which a local fetch may have finished.)
    let gave_up = auth.verify_fresh(&new).now_or_never();
    assert!(
        gave_up.is_none(),
        "the first caller was answered before the fetch: {gave_up:?}"
    );
    jwks.until_fetched(2).await;
    // The fetch it started finishes and brings the key: accepted on the first try.
    let identity = auth
        .verify_fresh(&new)
        .await
        .expect("the rotated key is known");
    assert_eq!(identity.tenant.as_str(), "acme");
    assert_eq!(
        jwks.fetches(),
        2,
        "one fetch, not cancelled and not repeated"
    );
}

/// Starts with key `rsa-a`, makes the endpoint answer `failure`, and asks for `rsa-b`:
/// the refetch fails, and `rsa-a` tokens keep working.
async fn failed_refetch_keeps_the_last_good_keys(failure: Answer) {
    let mut jwks = JwksServer::start(jwks_document(&[RSA_A_JWK])).await;
    let app = app_with_jwks(&jwks).await;
    jwks.answer(failure);
    let new = idp_token(
        Algorithm::RS256,
        Some("rsa-b"),
        RSA_B_KEY,
        org_claims("acme"),
    );
    let (status, body) = app.get("/v1/stats", Some(&new)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_token")),
        "{body}"
    );
    jwks.until_fetched(2).await;
    let old = idp_token(
        Algorithm::RS256,
        Some("rsa-a"),
        RSA_A_KEY,
        org_claims("acme"),
    );
    let mut stream = app.sse(&old, "types=ticket").await;
    let ticket = app.insert_ticket("acme", "still served").await;
    let wanted = HashSet::from([ticket]);
    assert_eq!(stream.receive_ids(&wanted).await, wanted);
    assert_eq!(app.get("/v1/stats", Some(&new)).await.0, 401);
}

#[tokio::test]
async fn a_refetch_answered_with_an_error_keeps_the_last_good_keys() {
    failed_refetch_keeps_the_last_good_keys(Answer::Status(500)).await;
}

#[tokio::test]
async fn an_oversized_jwks_is_not_read_and_the_last_good_keys_stay() {
    // A valid document holding the new key, but past the 256 KiB cap.
    let padding = format!("\"{}\"", "x".repeat(300 * 1024));
    let oversized = format!("{{\"padding\": {padding}, \"keys\": [{RSA_A_JWK}, {RSA_B_JWK}]}}");
    failed_refetch_keeps_the_last_good_keys(Answer::Document(oversized)).await;
}

#[tokio::test]
async fn a_hanging_jwks_times_out_and_the_last_good_keys_stay() {
    failed_refetch_keeps_the_last_good_keys(Answer::Hang).await;
}

#[tokio::test]
async fn pem_keys_verify_beside_a_configured_secret() {
    let pem = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/idp/ec.pub.pem");
    let app = spawn_app_with(|config| {
        config.identity_provider.jwt_public_key = Some(pem.into());
        config.jwt_secret = Some(Secret::new(SECRET));
    })
    .await;
    let claims = json!({"tenant_id": "acme", "exp": now() + 60});
    let es = idp_token(Algorithm::ES256, None, EC_KEY, claims.clone());
    assert_eq!(app.get("/v1/stats", Some(&es)).await.0, 200);
    // With a secret configured, HS256 tokens signed with it work too...
    assert_eq!(app.get("/v1/stats", Some(&token("acme"))).await.0, 200);
    // ...but keys the file does not hold, or other key types, do not.
    for token in [
        idp_token(Algorithm::RS256, None, RSA_A_KEY, claims.clone()),
        idp_token(Algorithm::EdDSA, None, ED_KEY, claims.clone()),
    ] {
        let (status, body) = app.get("/v1/stats", Some(&token)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_token")),
            "{body}"
        );
    }
}

/// `App::build`'s error for a configuration, which must come before any database work.
async fn build_error(configure: impl FnOnce(&mut ServeConfig)) -> String {
    let mut config = ServeConfig::new("postgres://127.0.0.1:1/unreachable");
    config.listen = "127.0.0.1:0".parse().unwrap();
    configure(&mut config);
    let built = App::build(config, &Secret::new(SECRET), CancellationToken::new()).await;
    format!(
        "{:#}",
        built.err().expect("the configuration must be refused")
    )
}

#[tokio::test]
async fn bad_key_settings_stop_the_start_with_a_clear_error() {
    let private = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/idp/rsa-a.key");
    let message = build_error(|c| c.identity_provider.jwt_public_key = Some(private.into())).await;
    assert!(
        message.contains("CHANGECAST_JWT_PUBLIC_KEY") && message.contains("private key"),
        "{message}"
    );
    let message =
        build_error(|c| c.identity_provider.jwt_public_key = Some("/nonexistent.pem".into())).await;
    assert!(message.contains("/nonexistent.pem"), "{message}");
    let message =
        build_error(|c| c.identity_provider.jwks_url = Some("http://id.example.com/jwks".into()))
            .await;
    assert!(message.contains("https"), "{message}");
    let message = build_error(|c| {
        c.identity_provider.jwks_url = Some("https://127.0.0.1:1/jwks".into());
        c.jwt_secret = Some(Secret::new("short"));
    })
    .await;
    assert!(message.contains("at least 32 bytes"), "{message}");
}
