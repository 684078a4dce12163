//! `GET /v1/ws` with a real WebSocket client: the message flow, live filter changes,
//! resume, tenancy, bad input, and every way the server closes a connection.

use std::collections::HashSet;
use std::time::Duration;

use changecast::tenant::TenantId;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

/// Connects, checks the greeting and subscribes with `filter`.
async fn subscribed(app: &TestApp, tenant: &str, filter: Value) -> WsClient {
    let mut client = app.ws(&token(tenant)).await;
    client.expect("connection_established").await;
    client.subscribe(filter).await;
    client
}

#[tokio::test]
async fn greeting_subscribe_change_and_ping_in_order() {
    let app = spawn_app().await;
    let mut client = app.ws(&token("acme")).await;
    let hello = client.expect("connection_established").await;
    assert_eq!(hello["tenant_id"], "acme");

    // No filter: `null` means all, echoed as such.
    let confirmed = client.subscribe(json!({})).await;
    assert_eq!(confirmed["resource_types"], Value::Null);
    assert_eq!(confirmed["events"], Value::Null);
    let mut sse = app.sse(&token("acme"), "").await;

    let id = app.insert_ticket("acme", "hello").await;
    let change = client.expect("resource_change").await;
    let fields: HashSet<&str> = change.as_object().unwrap().keys().map(|k| &**k).collect();
    assert_eq!(
        fields,
        HashSet::from([
            "type",
            "id",
            "event",
            "resource_type",
            "tenant_id",
            "resource_id",
            "resource",
            "occurred_at"
        ])
    );
    assert_eq!(change["event"], "created");
    assert_eq!(change["resource_type"], "ticket");
    assert_eq!(change["tenant_id"], "acme");
    assert_eq!(change["resource"]["id"], id.as_str());
    assert_eq!(change["resource_id"], id.as_str());
    assert_eq!(change["resource"]["title"], "hello");
    assert!(change["id"].as_str().is_some_and(|c| !c.is_empty()));
    assert!(change["occurred_at"].as_str().unwrap().ends_with('Z'));
    // Byte for byte the event SSE delivers (§4: one shape on both transports).
    let over_sse = sse.changes_until(1).await;
    assert_eq!(over_sse[0].data, change);

    client.assert_usable().await;

    // A filter is echoed as lists, deduplicated as SSE does.
    let confirmed = client
        .subscribe(json!({"resource_types": ["ticket", "ticket"], "events": ["created"]}))
        .await;
    assert_eq!(confirmed["resource_types"], json!(["ticket"]));
    assert_eq!(confirmed["events"], json!(["created"]));
    assert!(
        app.metric("changecast_events_delivered_total{transport=\"ws\"}")
            .await
            .unwrap()
            >= 1.0
    );
    assert_eq!(
        app.metric("changecast_subscribers{transport=\"ws\"}").await,
        Some(1.0)
    );

    // A client close is answered with a close frame, not a dropped connection (frames
    // already in flight, such as a resumed duplicate, may come first).
    client.socket.close(None).await.unwrap();
    loop {
        match tokio::time::timeout(WAIT, client.socket.next()).await {
            Ok(Some(Ok(Message::Close(_)))) => break,
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close reply: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_second_subscribe_changes_the_filter_live_without_losing_anything() {
    let app = spawn_app().await;
    let mut client = subscribed(&app, "acme", json!({"resource_types": ["ticket"]})).await;

    // Changes in flight while the filter changes: none may fall between the two.
    let mut tickets: HashSet<String> = app.insert_tickets("acme", 200).await.into_iter().collect();
    // Once the first arrived, the rest are queued for the old subscription.
    let first = client.expect("resource_change").await;
    client
        .send_json(json!({"type": "subscribe", "resource_types": ["ticket", "agent"]}))
        .await;
    tickets.extend(app.insert_tickets("acme", 50).await);
    let agent = app.insert_agent("acme", "after the switch").await;
    let mut expected = tickets.clone();
    expected.insert(agent.clone());
    let changes = client.changes_until_ids(&expected).await;
    let mut received: HashSet<String> = changes.iter().map(change_id).collect();
    received.insert(change_id(&first));
    assert_nothing_lost(&expected, &received, &HashSet::new());

    // Narrow to agents: tickets stop, agents keep coming.
    let confirmed = client.subscribe(json!({"resource_types": ["agent"]})).await;
    assert_eq!(confirmed["resource_types"], json!(["agent"]));
    app.insert_tickets("acme", 20).await;
    let last = app.insert_agent("acme", "agents only").await;
    let after = client
        .changes_until_ids(&HashSet::from([last.clone()]))
        .await;
    assert!(
        after.iter().any(|c| change_id(c) == last),
        "agent not delivered"
    );
    assert!(
        after.iter().all(|c| c["resource_type"] == "agent"),
        "a ticket arrived after the filter excluded tickets: {after:?}"
    );
    client
        .assert_no_change_within(Duration::from_millis(300))
        .await;

    // Unsubscribe: nothing at all, while the connection stays usable.
    client.send_json(json!({"type": "unsubscribe"})).await;
    client.assert_usable().await;
    app.insert_agent("acme", "nobody listens").await;
    client
        .assert_no_change_within(Duration::from_millis(300))
        .await;
}

#[tokio::test]
async fn a_filter_change_before_anything_was_forwarded_loses_nothing() {
    let app = spawn_app().await;
    let mut client = subscribed(&app, "acme", json!({"resource_types": ["ticket"]})).await;
    // No change forwarded yet when the filter changes: the replacement resumes from
    // where the first subscription started.
    let tickets: HashSet<String> = app.insert_tickets("acme", 200).await.into_iter().collect();
    client
        .send_json(json!({"type": "subscribe", "resource_types": ["ticket", "agent"]}))
        .await;
    let received = client.receive_ids(&tickets).await;
    assert_nothing_lost(&tickets, &received, &HashSet::new());
}

#[tokio::test]
async fn last_event_id_resumes_after_500_writes_while_disconnected() {
    let app = spawn_app().await;
    let mut client = subscribed(&app, "acme", json!({})).await;
    let before = HashSet::from([app.insert_ticket("acme", "before").await]);
    let cursor = client.expect("resource_change").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    drop(client);

    let mut written = HashSet::new();
    for _ in 0..100 {
        written.extend(app.insert_tickets("acme", 5).await);
    }
    let globex: HashSet<String> = app.insert_tickets("globex", 20).await.into_iter().collect();

    let mut resumed = subscribed(&app, "acme", json!({"last_event_id": cursor})).await;
    let received = resumed.receive_ids(&written).await;
    assert_eq!(written.len(), 500);
    assert_nothing_lost(&written, &received, &before);
    assert!(
        received.is_disjoint(&globex),
        "another tenant's changes leaked into the replay"
    );
}

#[tokio::test]
async fn a_reader_that_falls_behind_catches_up_without_losing_anything() {
    // A tiny fan-out buffer: the unread subscriber lags and must go back to the journal.
    let app = spawn_app_with(|c| c.subscriber_buffer = 16).await;
    let mut client = subscribed(&app, "acme", json!({})).await;
    let mut written = HashSet::new();
    for _ in 0..20 {
        written.extend(app.insert_tickets("acme", 100).await);
    }
    let received = client.receive_ids(&written).await;
    assert_nothing_lost(&written, &received, &HashSet::new());
    assert!(app.metric("changecast_subscribers_lagged_total").await >= Some(1.0));
}

#[tokio::test]
async fn a_transaction_of_several_pages_arrives_whole_once_each_and_in_order() {
    // Thousands of changes ready at once go out in shared socket writes: the last of
    // them must not wait in a buffer for a flush, and none may be repeated or reordered.
    let app = spawn_app().await;
    let mut client = subscribed(&app, "acme", json!({})).await;
    let written = app.insert_tickets("acme", 5_000).await;
    let expected: HashSet<String> = written.iter().cloned().collect();
    let changes = client.changes_until_ids(&expected).await;
    let received: Vec<String> = changes.iter().map(change_id).collect();
    assert_nothing_lost(
        &expected,
        &received.iter().cloned().collect(),
        &HashSet::new(),
    );
    // One statement's rows are journalled in insertion order, and delivered so.
    assert_eq!(received, written, "changes repeated or out of order");
}

#[tokio::test]
async fn three_tenants_at_once_each_see_only_their_own() {
    let app = spawn_app().await;
    let tenants = ["acme", "globex", "initech"];
    let mut clients = Vec::new();
    for tenant in tenants {
        clients.push(subscribed(&app, tenant, json!({})).await);
    }
    let mut written: Vec<HashSet<String>> = vec![HashSet::new(); tenants.len()];
    for _ in 0..10 {
        for (i, tenant) in tenants.iter().enumerate() {
            written[i].extend(app.insert_tickets(tenant, 3).await);
        }
    }
    for (i, client) in clients.iter_mut().enumerate() {
        let changes = client.changes_until_ids(&written[i]).await;
        assert!(
            changes.iter().all(|c| c["tenant_id"] == tenants[i]),
            "{} received another tenant's change",
            tenants[i]
        );
        let received: HashSet<String> = changes.iter().map(change_id).collect();
        assert_nothing_lost(&written[i], &received, &HashSet::new());
    }
}

#[tokio::test]
async fn bad_input_gets_an_error_code_and_the_connection_stays_usable() {
    let app = spawn_app().await;
    let mut client = subscribed(&app, "acme", json!({"resource_types": ["ticket"]})).await;
    let many: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();
    let cases: Vec<(Message, &str)> = vec![
        (Message::text("{not json"), "invalid_json"),
        (Message::text(r#"{"type":"dance"}"#), "unknown_type"),
        (Message::text("[1, 2]"), "invalid_message"),
        (Message::text(r#"{"type": 5}"#), "invalid_message"),
        (
            Message::text(r#"{"type":"subscribe","resource_types":"ticket"}"#),
            "invalid_message",
        ),
        (
            Message::text(r#"{"type":"subscribe","events":[1]}"#),
            "invalid_message",
        ),
        (
            Message::text(r#"{"type":"subscribe","last_event_id":7}"#),
            "invalid_message",
        ),
        (
            Message::text(r#"{"type":"subscribe","resource_types":["invoice"]}"#),
            "unknown_resource_type",
        ),
        (
            Message::text(r#"{"type":"subscribe","events":["exploded"]}"#),
            "unknown_event",
        ),
        (
            Message::text(json!({"type": "subscribe", "resource_types": many}).to_string()),
            "too_many_filters",
        ),
        (Message::binary(vec![1, 2, 3]), "binary_not_supported"),
        // Past the 16 KiB message limit, within the 64 KiB frame limit.
        (
            Message::text(json!({"type": "ping", "pad": "x".repeat(20_000)}).to_string()),
            "message_too_large",
        ),
    ];
    for (message, code) in cases {
        client.send(message).await;
        let error = client.expect("error").await;
        assert_eq!(error["code"], code, "{error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        client.assert_usable().await;
    }
    // Refused subscribes left the subscription as it was.
    let id = app.insert_ticket("acme", "still subscribed").await;
    app.insert_agent("acme", "still filtered out").await;
    let change = client.expect("resource_change").await;
    assert_eq!(change["resource"]["id"], id.as_str());
    client
        .assert_no_change_within(Duration::from_millis(300))
        .await;
}

#[tokio::test]
async fn a_frame_over_the_transport_limit_closes_with_1009() {
    let app = spawn_app().await;
    let mut client = app.ws(&token("acme")).await;
    client.expect("connection_established").await;
    client.send(Message::text("x".repeat(100 * 1024))).await;
    let (code, _) = client.close_within(WAIT).await.expect("no close frame");
    assert_eq!(code, 1009);
}

#[tokio::test]
async fn bad_tokens_are_refused_with_401_json_before_the_upgrade() {
    let app = spawn_app().await;
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"tenant_id": "acme", "exp": 1_000_000}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let cases = [
        (None, "", "missing_token"),
        (Some("not.a.token"), "", "invalid_token"),
        (Some(expired.as_str()), "", "token_expired"),
        (None, "access_token=garbage", "invalid_token"),
    ];
    for (token, query, code) in cases {
        let Err((status, body)) = app.ws_connect(token, query).await else {
            panic!("upgraded with {code:?}");
        };
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"], code, "{body}");
        assert!(body["message"].is_string());
    }
    // The query parameter authenticates like the header (browsers cannot set headers).
    let mut by_query = app
        .ws_connect(None, &format!("access_token={}", token("acme")))
        .await
        .unwrap_or_else(|refusal| panic!("refused: {refusal:?}"));
    assert_eq!(
        by_query.expect("connection_established").await["tenant_id"],
        "acme"
    );
    // A plain GET is authenticated first, then told to upgrade.
    assert_eq!(app.get("/v1/ws", None).await.0, 401);
    let (status, body) = app.get("/v1/ws", Some(&token("acme"))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (426, Some("upgrade_required"))
    );
}

#[tokio::test]
async fn heartbeats_and_protocol_pings_arrive_every_keepalive() {
    let app = spawn_app_with(|c| c.keepalive = Duration::from_millis(500)).await;
    let mut client = app.ws(&token("acme")).await;
    client.expect("connection_established").await;
    let (mut heartbeats, mut pings) = (0, 0);
    while heartbeats < 4 || pings < 4 {
        match client.next_frame_within(WAIT).await {
            Some(Message::Text(text)) => {
                let message: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(message["type"], "heartbeat", "{message}");
                heartbeats += 1;
            }
            Some(Message::Ping(_)) => pings += 1,
            other => panic!("expected heartbeats and pings, got {other:?}"),
        }
    }
    // Four intervals on: a client that reads answers the pings and is not dropped.
    client.assert_usable().await;
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_disconnected() {
    let app = spawn_app_with(|c| c.keepalive = Duration::from_millis(200)).await;
    let mut client = app.ws(&token("acme")).await;
    // The greeting proves the session (and its gauge) is up.
    client.expect("connection_established").await;
    // Not reading from here: the client's WebSocket answers no ping.
    eventually("the silent peer is disconnected", || async {
        app.metric("changecast_subscribers{transport=\"ws\"}").await == Some(0.0)
    })
    .await;
    let (code, _) = client.close_within(WAIT).await.expect("no close frame");
    assert_eq!(code, 1001);
}

#[tokio::test]
async fn shutdown_closes_connections_with_1012() {
    let app = spawn_app().await;
    let mut client = subscribed(&app, "acme", json!({})).await;
    let (_, close) = tokio::join!(app.stop(), client.close_within(WAIT));
    let (code, reason) = close.expect("no close frame on shutdown");
    assert_eq!(code, 1012, "{reason}");
}

#[tokio::test]
async fn an_expiring_token_gets_auth_expired_then_close_4001() {
    let app = spawn_app().await;
    let short = crate::helpers::authenticator()
        .mint(&TenantId::new("acme").unwrap(), Duration::from_secs(2));
    // Subscribed (the subscription reports it) and idle (the session enforces it).
    let mut subscribed = app.ws(&short).await;
    subscribed.expect("connection_established").await;
    subscribed.subscribe(json!({})).await;
    let mut idle = app.ws(&short).await;
    idle.expect("connection_established").await;

    let id = app.insert_ticket("acme", "before expiry").await;
    assert_eq!(
        subscribed.expect("resource_change").await["resource"]["id"],
        id.as_str()
    );
    for client in [&mut subscribed, &mut idle] {
        client.next_of_type("auth_expired").await;
        let (code, _) = client.close_within(WAIT).await.expect("no close frame");
        assert_eq!(code, 4001);
    }
}

#[tokio::test]
async fn a_message_flood_closes_with_1008() {
    let app = spawn_app().await;
    let mut client = app.ws(&token("acme")).await;
    client.expect("connection_established").await;
    let ping = Message::text(r#"{"type":"ping"}"#);
    for _ in 0..60 {
        // The server may close mid-flood; what it says is read below.
        if client.socket.send(ping.clone()).await.is_err() {
            break;
        }
    }
    let (code, reason) = client.close_within(WAIT).await.expect("no close frame");
    assert_eq!(code, 1008);
    assert!(reason.contains("rate limit"), "{reason}");
}

#[tokio::test]
async fn a_long_running_transaction_that_commits_late_is_not_lost_over_ws() {
    let app = spawn_app().await;
    let t = token("acme");
    let mut ws = app.ws(&t).await;
    ws.expect("connection_established").await;
    ws.subscribe(json!({})).await;

    let (slow, early) = app.begin_long_transaction("acme", "slow").await;
    let quick = app.insert_ticket("acme", "quick").await;
    let seen = ws.next_of_type("resource_change").await;
    assert_eq!(change_id(&seen), quick);
    let cursor = seen["id"].as_str().unwrap().to_owned();
    drop(ws);

    slow.batch_execute("commit").await.unwrap();
    let later = app.insert_ticket("acme", "after").await;

    let mut resumed = app.ws(&t).await;
    resumed.expect("connection_established").await;
    resumed.subscribe(json!({"last_event_id": cursor})).await;
    let expected = HashSet::from([early, later]);
    assert_nothing_lost(
        &expected,
        &resumed.receive_ids(&expected).await,
        &HashSet::from([quick]),
    );
}
