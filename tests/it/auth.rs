//! Bad input: every refusal is a 4xx with a JSON body, and changes nothing.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

use crate::helpers::*;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn signed(secret: &str, claims: serde_json::Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn every_bad_token_gets_401_json_on_every_endpoint() {
    let app = spawn_app().await;
    let alg_none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(json!({"tenant_id": "acme", "exp": now() + 60}).to_string())
    );
    let cases = [
        (None, "missing_token"),
        (
            Some(signed(
                SECRET,
                json!({"tenant_id": "acme", "exp": now() - 5}),
            )),
            "token_expired",
        ),
        (
            Some(signed(
                "wrong-secret",
                json!({"tenant_id": "acme", "exp": now() + 60}),
            )),
            "invalid_token",
        ),
        (Some(alg_none), "invalid_token"),
        (
            Some(signed(SECRET, json!({"exp": now() + 60}))),
            "missing_tenant",
        ),
        (
            Some(signed(SECRET, json!({"tenant_id": "", "exp": now() + 60}))),
            "missing_tenant",
        ),
        (
            Some(signed(SECRET, json!({"tenant_id": "acme"}))),
            "invalid_token",
        ),
        (Some("not.a.jwt".to_owned()), "invalid_token"),
    ];
    for path in ["/v1/events", "/v1/snapshot"] {
        for (token, code) in &cases {
            let (status, body) = app.get(path, token.as_deref()).await;
            assert_eq!(status, 401, "{path} {code}: {body}");
            assert_eq!(body["error"], *code, "{path}: {body}");
            assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
    }
}

#[tokio::test]
async fn the_token_may_come_as_a_query_parameter_and_the_tenant_never_does() {
    let app = spawn_app().await;
    let url = format!(
        "/v1/snapshot?access_token={}&tenant_id=globex",
        token("acme")
    );
    app.insert_ticket("globex", "not yours").await;
    // A tenant in the query is not a parameter of ours: refused, never obeyed.
    let (status, body) = app.get(&url, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unknown_parameter")),
        "{body}"
    );
    let url = format!("/v1/snapshot?access_token={}", token("acme"));
    let (status, body) = app.get(&url, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["resources"]["ticket"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn bad_filters_and_oversized_queries_are_refused_with_json() {
    let app = spawn_app().await;
    let t = token("acme");
    for (query, status, code) in [
        ("types=ticket,invoice", 400, "unknown_resource_type"),
        ("events=created,exploded", 400, "unknown_event"),
    ] {
        let (got, body) = app.get(&format!("/v1/events?{query}"), Some(&t)).await;
        assert_eq!(
            (got, body["error"].as_str().unwrap()),
            (status, code),
            "{query}: {body}"
        );
    }
    let long = format!("/v1/events?types={}", "ticket,".repeat(2000));
    let (status, body) = app.get(&long, Some(&t)).await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (414, "query_too_long")
    );
    let (status, body) = app.get("/v1/snapshot?limit=0", Some(&t)).await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (400, "invalid_limit")
    );
    let (status, body) = app.get("/v1/nowhere", Some(&t)).await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (404, "not_found")
    );
}

#[tokio::test]
async fn an_expiring_token_ends_the_stream_with_auth_expired() {
    let app = spawn_app().await;
    let short = signed(SECRET, json!({"tenant_id": "acme", "exp": now() + 2}));
    let mut stream = app.sse(&short, "").await;
    let event = loop {
        let event = stream
            .next_within(WAIT)
            .await
            .expect("auth_expired before the stream ends");
        if event.event != "resource_change" {
            break event;
        }
    };
    assert_eq!(event.event, "auth_expired");
    assert_eq!(event.data["type"], "auth_expired");
    assert!(
        stream.next_within(WAIT).await.is_none(),
        "the stream ends after auth_expired"
    );
}

#[tokio::test]
async fn only_configured_origins_may_subscribe_cross_origin() {
    let app = spawn_app_with(|c| c.cors_origins = vec!["https://app.example.com".into()]).await;
    let preflight = |origin: &'static str| {
        app.http
            .request(reqwest::Method::OPTIONS, app.url("/v1/events"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header(
                "access-control-request-headers",
                "authorization, last-event-id",
            )
            .send()
    };
    let allowed = preflight("https://app.example.com").await.unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let refused = preflight("https://evil.example.net").await.unwrap();
    assert!(refused.status().is_client_error(), "{}", refused.status());
    assert!(refused
        .headers()
        .get("access-control-allow-origin")
        .is_none());

    let response = app
        .http
        .get(app.url("/v1/snapshot"))
        .header("origin", "https://app.example.com")
        .bearer_auth(token("acme"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
}

#[tokio::test]
async fn without_configured_origins_no_cross_origin_access_is_granted() {
    let app = spawn_app().await;
    let response = app
        .http
        .get(app.url("/v1/snapshot"))
        .header("origin", "https://app.example.com")
        .bearer_auth(token("acme"))
        .send()
        .await
        .unwrap();
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());
}
