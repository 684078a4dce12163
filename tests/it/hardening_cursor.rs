//! Cursors are authenticated (API.md §4): one a client altered or made up, or one of
//! another tenant or database, is `resync` `cursor_invalid` before it costs a database
//! read; instances on one database honour each other's. And a replay dropped mid-read
//! stops its statement before its replay-gate turn goes to the next one.

use std::collections::HashSet;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::helpers::*;

/// LEB128, as cursors spell numbers.
fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Cursors a client can make from a valid one without the service's key, each claiming
/// to have seen nothing (`xmin = xmax = 3`): a replay of them would scan every tenant's
/// journal rows.
fn altered_cursors(valid: &str) -> Vec<(&'static str, String)> {
    const MAC_LEN: usize = 16;
    let bytes = URL_SAFE_NO_PAD.decode(valid).unwrap();
    let claim = |prefix: &[u8]| {
        let mut out = prefix.to_vec();
        for n in [1, 3, 0, 0] {
            varint(&mut out, n);
        }
        out
    };
    // The first wire form's layout: a 9-byte header (version, journal and tenant tags)
    // kept as issued, then made-up numbers.
    let kept_header = claim(&bytes[..9]);
    // The current one: version byte, made-up numbers, and the MAC as issued, or another.
    let mut kept_mac = claim(&bytes[..1]);
    kept_mac.extend_from_slice(&bytes[bytes.len().saturating_sub(MAC_LEN)..]);
    let mut made_up_mac = claim(&bytes[..1]);
    made_up_mac.extend((0..MAC_LEN as u8).map(|i| i.wrapping_mul(37) ^ 0xa5));
    // One bit of the issued cursor flipped, in its numbers.
    let mut flipped = bytes.clone();
    flipped[2] ^= 0x01;
    [
        ("kept header", kept_header),
        ("kept MAC", kept_mac),
        ("made-up MAC", made_up_mac),
        ("one bit flipped", flipped),
    ]
    .into_iter()
    .map(|(what, bytes)| (what, URL_SAFE_NO_PAD.encode(bytes)))
    .collect()
}

/// The first SSE event is a `cursor_invalid` resync, then a change written afterwards
/// arrives: the stream went on live.
async fn sse_resyncs_then_goes_live(app: &TestApp, tenant: &str, cursor: &str, what: &str) {
    let mut stream = app.sse_with(&token(tenant), "", Some(cursor)).await;
    let first = stream.next_within(WAIT).await.expect("no first event");
    assert_eq!(first.event, "resync", "{what}: {:?}", first.data);
    assert_eq!(first.data["reason"], "cursor_invalid", "{what}");
    let live = app.insert_ticket(tenant, "after the resync").await;
    assert!(
        stream
            .receive_ids(&HashSet::from([live.clone()]))
            .await
            .contains(&live),
        "{what}: the stream did not go on live"
    );
}

/// The same on a WebSocket `subscribe` with `last_event_id`.
async fn ws_resyncs_then_goes_live(app: &TestApp, tenant: &str, cursor: &str, what: &str) {
    let mut client = app.ws(&token(tenant)).await;
    client.expect("connection_established").await;
    client.subscribe(json!({"last_event_id": cursor})).await;
    let first = client.expect("resync").await;
    assert_eq!(first["reason"], "cursor_invalid", "{what}");
    let live = app.insert_ticket(tenant, "after the resync").await;
    assert!(
        client
            .receive_ids(&HashSet::from([live.clone()]))
            .await
            .contains(&live),
        "{what}: the WebSocket did not go on live"
    );
}

/// A valid cursor of `tenant` (the `id` of a change it received).
async fn issued_cursor(app: &TestApp, tenant: &str) -> String {
    let mut stream = app.sse(&token(tenant), "").await;
    app.insert_ticket(tenant, "to get a cursor").await;
    stream.changes_until(1).await[0].id.clone().unwrap()
}

#[tokio::test]
async fn altered_and_forged_cursors_get_cursor_invalid_without_a_replay() {
    let app = spawn_app().await;
    let valid = issued_cursor(&app, "acme").await;
    let replays = app.metric("changecast_replays_total").await.unwrap();
    for (what, cursor) in altered_cursors(&valid) {
        sse_resyncs_then_goes_live(&app, "acme", &cursor, what).await;
        ws_resyncs_then_goes_live(&app, "acme", &cursor, what).await;
    }
    assert_eq!(
        app.metric("changecast_replays_total").await.unwrap(),
        replays,
        "an altered cursor started a journal replay"
    );
}

/// Refused before any database read: with the journal locked (so any read of it would
/// wait), an altered cursor still gets its resync at once.
#[tokio::test]
async fn an_altered_cursor_is_refused_while_the_journal_cannot_be_read() {
    let app = spawn_app().await;
    let valid = issued_cursor(&app, "acme").await;
    let locker = app.connect_db().await;
    locker
        .batch_execute("begin; lock table changecast.change_log in access exclusive mode")
        .await
        .unwrap();
    for (what, cursor) in altered_cursors(&valid) {
        let mut stream = app.sse_with(&token("acme"), "", Some(&cursor)).await;
        let first = stream.next_within(WAIT).await;
        let first =
            first.unwrap_or_else(|| panic!("{what}: no resync while the journal is locked"));
        assert_eq!(first.event, "resync", "{what}");
        assert_eq!(first.data["reason"], "cursor_invalid", "{what}");
    }
    locker.batch_execute("rollback").await.unwrap();
}

#[tokio::test]
async fn another_tenants_or_databases_cursor_is_cursor_invalid() {
    let app = spawn_app().await;
    let elsewhere = spawn_app().await;
    let acme = issued_cursor(&app, "acme").await;
    let other_database = issued_cursor(&elsewhere, "acme").await;
    sse_resyncs_then_goes_live(&app, "globex", &acme, "another tenant's").await;
    ws_resyncs_then_goes_live(&app, "globex", &acme, "another tenant's").await;
    sse_resyncs_then_goes_live(&app, "acme", &other_database, "another database's").await;
    ws_resyncs_then_goes_live(&app, "acme", &other_database, "another database's").await;
}

/// The key lives in the database: a second instance on it honours the first one's
/// cursors with no configuration, and resumes gaplessly from them.
#[tokio::test]
async fn instances_on_one_database_honour_each_others_cursors() {
    let first = spawn_app().await;
    let second = start_on(first.db_url.clone(), |_| {}).await;
    let cursor = issued_cursor(&first, "acme").await;
    let written: HashSet<String> = first.insert_tickets("acme", 50).await.into_iter().collect();

    let mut stream = second.sse_with(&token("acme"), "", Some(&cursor)).await;
    let mut received = HashSet::new();
    while !written.is_subset(&received) {
        let event = stream.next_within(WAIT).await.expect("replay stalled");
        assert_ne!(event.event, "resync", "{:?}", event.data);
        if event.event == "resource_change" {
            received.insert(event.data["resource"]["id"].as_str().unwrap().to_owned());
        }
    }

    let mut client = first.ws(&token("acme")).await;
    client.expect("connection_established").await;
    let from_second = issued_cursor(&second, "acme").await;
    let later = first.insert_ticket("acme", "later").await;
    client
        .subscribe(json!({"last_event_id": from_second}))
        .await;
    // The change the cursor names may come again (API.md §4), then the later one.
    loop {
        let message: Value = client
            .next_json_within(WAIT)
            .await
            .expect("the later change never came");
        assert_ne!(message["type"], "resync", "{message}");
        if message["type"] == "resource_change" && change_id(&message) == later {
            break;
        }
    }
}

/// Replay statements of the service now running on the server: their backends, each
/// with what it waits for and how its statement begins (for a failure's message).
async fn running_replay_statements(db: &tokio_postgres::Client) -> Vec<(i32, String)> {
    db.query(
        "select pid, coalesce(wait_event_type || '/' || wait_event, 'running') || ': '
                     || left(regexp_replace(query, '\\s+', ' ', 'g'), 120)
         from pg_stat_activity
         where application_name = 'changecast:pool' and state = 'active'
           and query like '%changecast.change_log%'",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect()
}

/// Waits until the newest replay's statement runs (on a backend not in `backends`: a
/// dropped replay's connection is not reused), then checks that no other one does.
async fn at_most_one_runs(observer: &tokio_postgres::Client, backends: &mut HashSet<i32>) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let running = running_replay_statements(observer).await;
        if running.iter().any(|(pid, _)| !backends.contains(pid)) {
            backends.extend(running.iter().map(|(pid, _)| *pid));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the newest replay's statement never ran"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let running = running_replay_statements(observer).await;
    assert!(
        running.len() <= 1,
        "{} replay statements of one tenant run, with one turn: {running:?}",
        running.len()
    );
}

/// With one replay per tenant allowed, a client that keeps dropping its replay (a
/// WebSocket re-subscribing, an SSE stream closed and reopened) while each replay's
/// statement is stuck in the database never gets a second statement running: each
/// dropped replay's statement is cancelled before the next one gets the turn.
#[tokio::test]
async fn dropped_replays_never_run_more_statements_than_the_gate_allows() {
    let app = spawn_app_with(|c| {
        c.max_replays_per_tenant = 1;
        c.max_snapshots = Some(8);
        c.max_tenant_snapshots = Some(8);
    })
    .await;
    let cursor = issued_cursor(&app, "acme").await;
    app.insert_tickets("acme", 20).await;
    // Idle connections in the pool, as a busy service has: a replay's next read need not
    // wait for the connection of the one dropped before it.
    let acme = token("acme");
    let snapshots = (0..8).map(|_| app.get("/v1/snapshot", Some(&acme)));
    for (status, body) in futures_util::future::join_all(snapshots).await {
        assert_eq!(status, 200, "{body}");
    }
    // Every read of the journal now waits, as a long scan would: a statement running on
    // the server that the client no longer waits for.
    let locker = app.connect_db().await;
    locker
        .batch_execute("begin; lock table changecast.change_log in access exclusive mode")
        .await
        .unwrap();
    let observer = app.connect_db().await;
    let mut backends = HashSet::new();
    let mut client = app.ws(&token("acme")).await;
    client.expect("connection_established").await;
    for _ in 0..4 {
        client.subscribe(json!({"last_event_id": cursor})).await;
        at_most_one_runs(&observer, &mut backends).await;
    }
    drop(client);
    for _ in 0..3 {
        let stream = app.sse_with(&token("acme"), "", Some(&cursor)).await;
        at_most_one_runs(&observer, &mut backends).await;
        drop(stream);
    }

    // The journal readable again, a resuming subscriber gets its changes.
    locker.batch_execute("rollback").await.unwrap();
    let mut stream = app.sse_with(&token("acme"), "", Some(&cursor)).await;
    let live = app.insert_ticket("acme", "after the storm").await;
    assert!(stream
        .receive_ids(&HashSet::from([live.clone()]))
        .await
        .contains(&live));
}

/// The key is the service role's alone: a role granted what sql/grants.sql grants (usage
/// of the schema) cannot read it, so it cannot mint cursors.
#[tokio::test]
async fn only_the_service_role_can_read_the_cursor_key() {
    let app = spawn_app().await;
    let role = format!("cc_cursor_reader_{}", std::process::id());
    app.db
        .batch_execute(&format!(
            "create role {role} login password 'changecast';
             grant usage on schema changecast to {role}"
        ))
        .await
        .unwrap();
    let mut config: tokio_postgres::Config = app.db_url.parse().unwrap();
    config.user(&role).password("changecast");
    let (reader, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let refused = reader
        .query("select key from changecast.cursor_key", &[])
        .await
        .expect_err("another role read the cursor key");
    let _ = app
        .db
        .batch_execute(&format!("drop owned by {role}; drop role {role}"))
        .await;
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{refused:?}"
    );
}
