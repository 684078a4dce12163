//! Operations: readiness, metrics, limits, several instances on one database.

use std::collections::HashSet;
use std::time::Duration;

use crate::helpers::*;

async fn readyz(app: &TestApp) -> u16 {
    app.get("/readyz", None).await.0
}

async fn wait_for_readyz(app: &TestApp, status: u16) {
    wait_for_status(&app.http, &app.url("/readyz"), status).await;
}

#[tokio::test]
async fn readiness_flips_to_503_while_the_listener_is_down_and_back() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz", None).await.0, 200);
    assert_eq!(readyz(&app).await, 200);
    // Keep the listener from coming back until we allow it again.
    app.allow_new_connections(false).await;
    assert_eq!(app.kill_listener().await, 1);
    wait_for_readyz(&app, 503).await;
    let (_, body) = app.get("/readyz", None).await;
    assert_eq!(body["status"], "not_ready");
    assert_eq!(
        app.get("/healthz", None).await.0,
        200,
        "alive while not ready"
    );
    app.allow_new_connections(true).await;
    wait_for_readyz(&app, 200).await;
    assert!(app.metric("changecast_db_reconnects_total").await.unwrap() >= 1.0);
}

#[tokio::test]
async fn metrics_move_with_traffic() {
    let app = spawn_app().await;
    for name in [
        "changecast_events_received_total",
        "changecast_subscribers_lagged_total",
        "changecast_replays_total",
        "changecast_db_reconnects_total",
        "changecast_journal_rows_pruned_total",
        "changecast_delivery_latency_seconds_count",
    ] {
        assert_eq!(app.metric(name).await.unwrap(), 0.0, "{name} starts at 0");
    }
    let mut stream = app.sse(&token("acme"), "").await;
    let written: HashSet<String> = app.insert_tickets("acme", 3).await.into_iter().collect();
    stream.receive_ids(&written).await;
    let mut resumed = app.sse(&token("acme"), "last_event_id=garbage").await;
    assert_eq!(resumed.next_within(WAIT).await.unwrap().event, "resync");

    let app = &app;
    let metric = |series: &'static str| async move { app.metric(series).await.unwrap() };
    assert_eq!(
        metric(r#"changecast_subscribers{transport="sse"}"#).await,
        2.0
    );
    assert!(metric("changecast_events_received_total").await >= 3.0);
    assert!(metric(r#"changecast_events_delivered_total{transport="sse"}"#).await >= 3.0);
    assert!(metric("changecast_delivery_latency_seconds_count").await >= 3.0);
    assert_eq!(
        metric(r#"changecast_resyncs_total{reason="cursor_invalid"}"#).await,
        1.0
    );
    drop((stream, resumed));
}

#[tokio::test]
async fn subscriber_limits_answer_with_clear_errors() {
    let app = spawn_app_with(|c| {
        c.max_subscribers_per_tenant = 2;
        c.max_subscribers = 3;
    })
    .await;
    let first = app.sse(&token("acme"), "").await;
    let _second = app.sse(&token("acme"), "").await;
    let (status, body) = app.get("/v1/events", Some(&token("acme"))).await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (429, "too_many_subscribers"),
        "{body}"
    );

    let _other = app.sse(&token("globex"), "").await;
    let (status, body) = app.get("/v1/events", Some(&token("initech"))).await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (503, "server_full"),
        "{body}"
    );

    // A subscriber that leaves frees its place (once the server notices the hang-up).
    drop(first);
    wait_for_status(
        &app.http,
        &format!("{}?access_token={}", app.url("/v1/events"), token("acme")),
        200,
    )
    .await;
}

#[tokio::test]
async fn a_subscriber_moving_between_two_instances_loses_nothing() {
    let a = spawn_app().await;
    let b = start_on(a.db_url.clone(), |_| {}).await;
    let t = token("acme");
    let mut on_a = a.sse(&t, "").await;
    let mut on_b = b.sse(&t, "").await;

    let first: HashSet<String> = a.insert_tickets("acme", 50).await.into_iter().collect();
    assert_nothing_lost(&first, &on_a.receive_ids(&first).await, &HashSet::new());
    assert_nothing_lost(&first, &on_b.receive_ids(&first).await, &HashSet::new());

    // Read part of the next writes on A, then move to B with the last cursor seen.
    let writer = a.spawn_writer("acme", 50, 10).await;
    let mut seen_on_a = HashSet::new();
    let mut cursor = None;
    while seen_on_a.len() < 100 {
        let event = on_a.next_within(WAIT).await.expect("changes on A");
        if event.event == "resource_change" {
            seen_on_a.insert(event.data["resource"]["id"].as_str().unwrap().to_owned());
            cursor = event.id;
        }
    }
    drop(on_a);
    let mut moved = b.sse_with(&t, "", cursor.as_deref()).await;
    let written = writer.await.unwrap();
    let still_missing: HashSet<String> = written.difference(&seen_on_a).cloned().collect();
    let mut received = moved.receive_ids(&still_missing).await;
    received.extend(seen_on_a.iter().cloned());
    assert_nothing_lost(&written, &received, &first);
}

#[tokio::test]
async fn only_one_instance_prunes_at_a_time() {
    let app = spawn_app().await;
    app.insert_tickets("acme", 3).await;
    app.age_committed_changes(48).await;
    let pool = changecast::db::pool(&app.db_url, 2, Duration::from_secs(30)).unwrap();

    // Another instance holds the pruning lock: this one must not prune meanwhile.
    let holder = app.connect_db().await;
    holder.batch_execute("begin").await.unwrap();
    holder
        .execute(
            "select pg_advisory_xact_lock($1)",
            &[&changecast::journal::pruner::PRUNE_LOCK],
        )
        .await
        .unwrap();
    let retention = Duration::from_secs(86_400);
    assert_eq!(
        changecast::journal::pruner::prune(&pool, retention)
            .await
            .unwrap(),
        0
    );
    holder.batch_execute("commit").await.unwrap();
    assert_eq!(
        changecast::journal::pruner::prune(&pool, retention)
            .await
            .unwrap(),
        3
    );
    // Each run records a tick of its own (the skipped one did not): a later run's horizon.
    let ticks: i64 = app
        .db
        .query_one(
            "select count(*) from changecast.journal_ticks where taken_at > now() - interval '1 hour'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ticks, 1);
}

#[tokio::test]
async fn shutdown_tells_sse_subscribers_to_reconnect_and_finishes_promptly() {
    let app = spawn_app().await;
    let mut stream = app.sse(&token("acme"), "").await;
    app.insert_ticket("acme", "before shutdown").await;
    stream.changes_until(1).await;
    let started = std::time::Instant::now();
    let _ = app.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
    let last = stream
        .next_within(WAIT)
        .await
        .expect("a reconnect event before the end");
    assert_eq!(last.event, "reconnect");
    assert_eq!(last.data["reason"], "shutdown");
    assert!(stream.next_within(WAIT).await.is_none(), "the stream ends");
}

#[tokio::test]
async fn on_shutdown_sse_and_ws_subscribers_resume_on_another_instance_without_loss() {
    let a = spawn_app().await;
    let b = start_on(a.db_url.clone(), |_| {}).await;
    let t = token("acme");
    let mut sse = a.sse(&t, "").await;
    let mut ws = a.ws(&t).await;
    ws.expect("connection_established").await;
    ws.subscribe(serde_json::json!({})).await;

    let writer = a.spawn_writer("acme", 60, 5).await;
    // Let some changes flow through A, then shut A down mid-stream.
    let first = sse.changes_until(20).await;
    assert!(first.len() >= 20);
    let _ = a.stop().await;

    // Drain what A sent before it went; remember the last cursor of each client.
    let mut sse_ids: HashSet<String> = HashSet::new();
    let mut sse_cursor = None;
    for event in first {
        sse_ids.insert(event.data["resource"]["id"].as_str().unwrap().to_owned());
        sse_cursor = event.id;
    }
    let mut told_to_reconnect = false;
    while let Some(event) = sse.next_within(WAIT).await {
        match event.event.as_str() {
            "resource_change" => {
                sse_ids.insert(event.data["resource"]["id"].as_str().unwrap().to_owned());
                sse_cursor = event.id;
            }
            "reconnect" => told_to_reconnect = true,
            _ => {}
        }
    }
    assert!(told_to_reconnect, "SSE subscribers are told to reconnect");
    let mut ws_ids = HashSet::new();
    let mut ws_cursor = None;
    while let Some(message) = ws.next_json_within(WAIT).await {
        if message["type"] == "resource_change" {
            ws_ids.insert(change_id(&message));
            ws_cursor = message["id"].as_str().map(str::to_owned);
        }
    }
    assert_eq!(
        ws.close.as_ref().map(|c| c.0),
        Some(1012),
        "WS subscribers get close 1012"
    );

    // Both resume on B with their last cursor.
    let written = writer.await.unwrap();
    let mut sse_b = b.sse_with(&t, "", sse_cursor.as_deref()).await;
    let missing: HashSet<String> = written.difference(&sse_ids).cloned().collect();
    sse_ids.extend(sse_b.receive_ids(&missing).await);
    assert_nothing_lost(&written, &sse_ids, &HashSet::new());
    let mut ws_b = b.ws(&t).await;
    ws_b.expect("connection_established").await;
    let mut resume = serde_json::json!({});
    if let Some(cursor) = ws_cursor {
        resume["last_event_id"] = cursor.into();
    }
    ws_b.subscribe(resume).await;
    let missing: HashSet<String> = written.difference(&ws_ids).cloned().collect();
    ws_ids.extend(ws_b.receive_ids(&missing).await);
    assert_nothing_lost(&written, &ws_ids, &HashSet::new());
}

#[tokio::test]
async fn subscribers_can_connect_during_a_database_outage_and_catch_up_after_it() {
    let app = spawn_app().await;
    // The outage: no new connections, and the service's own are cut.
    app.allow_new_connections(false).await;
    app.db
        .batch_execute(
            "select pg_terminate_backend(pid) from pg_stat_activity
             where datname = current_database() and application_name like 'changecast:%'",
        )
        .await
        .unwrap();
    wait_for_readyz(&app, 503).await;

    let mut stream = app.sse(&token("acme"), "types=ticket").await;
    let (status, body) = app.get("/v1/snapshot", Some(&token("acme"))).await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (503, "unavailable")
    );

    // Written (by the test's own, older connection) while the service cannot connect.
    let written: HashSet<String> = app.insert_tickets("acme", 10).await.into_iter().collect();
    app.allow_new_connections(true).await;
    assert_nothing_lost(
        &written,
        &stream.receive_ids(&written).await,
        &HashSet::new(),
    );
    wait_for_readyz(&app, 200).await;
}

/// With `CHANGECAST_METRICS_LISTEN`, `/metrics` (and the probes) move to that address
/// and the public one no longer answers `/metrics` at all.
#[tokio::test]
async fn metrics_can_be_served_on_an_address_of_their_own() {
    let app = spawn_app_with(|config| {
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let private = app.metrics_addr.expect("a bound metrics address");
    assert_ne!(private, app.addr);
    assert_eq!(app.get("/metrics", None).await.0, 404);
    let response = app
        .http
        .get(format!("http://{private}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.contains("changecast_events_received_total"), "{text}");
    for probe in ["/healthz", "/readyz"] {
        let status = app
            .http
            .get(format!("http://{private}{probe}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "{probe}");
    }
    let subscriber_route = app
        .http
        .get(format!("http://{private}/v1/events"))
        .bearer_auth(token("acme"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        subscriber_route.status(),
        404,
        "only monitoring routes there"
    );
}

/// The unauthenticated description does not name the watched tables' resource types;
/// a subscriber's token gets them spelled out.
#[tokio::test]
async fn the_openapi_description_names_resource_types_only_to_a_token_holder() {
    let app = spawn_app().await;
    let pattern = |spec: &serde_json::Value| {
        spec["components"]["parameters"]["types"]["schema"]["pattern"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (status, public) = app.get("/openapi.json", None).await;
    assert_eq!(status, 200);
    assert!(!pattern(&public).contains("ticket"), "{}", pattern(&public));
    let (status, private) = app.get("/openapi.json", Some(&token("acme"))).await;
    assert_eq!(status, 200);
    assert!(
        pattern(&private).contains("ticket"),
        "{}",
        pattern(&private)
    );
    let (_, forged) = app
        .get("/openapi.json", Some("eyJhbGciOiJub25lIn0.e30."))
        .await;
    assert!(!pattern(&forged).contains("ticket"));
}
