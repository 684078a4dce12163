//! `max_txn_events` (API.md §5, §6): a transaction bringing a subscriber more events than
//! its bound arrives as one `resync` (`bulk_change`) whose id is a cursor past it —
//! none of its events, live or on replay — and a resume from that id gets what follows
//! and nothing of it.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

const QUIET: Duration = Duration::from_millis(700);

/// What a stream brought: the resource ids of its changes and its resyncs (reason, id).
#[derive(Default, Debug)]
struct Seen {
    changes: Vec<String>,
    resyncs: Vec<(String, String)>,
    /// Changes (their ids) and resyncs (`resync`), as they arrived.
    order: Vec<String>,
}

/// Reads SSE events until `done` holds of what was read (bounded by [`WAIT`]).
async fn read_sse(stream: &mut SseStream, done: impl Fn(&Seen) -> bool) -> Seen {
    let mut seen = Seen::default();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(&seen) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(event) = stream.next_within(left).await else {
            panic!("stream ended or went quiet; so far {seen:?}");
        };
        note(&mut seen, &event.data);
    }
    seen
}

async fn read_ws(ws: &mut WsClient, done: impl Fn(&Seen) -> bool) -> Seen {
    let mut seen = Seen::default();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(&seen) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(message) = ws.next_json_within(left).await else {
            panic!("socket closed or went quiet; so far {seen:?}");
        };
        note(&mut seen, &message);
    }
    seen
}

fn note(seen: &mut Seen, data: &Value) {
    match data["type"].as_str() {
        Some("resource_change") => {
            seen.changes.push(change_id(data));
            seen.order.push(change_id(data));
        }
        Some("resync") => {
            seen.resyncs.push((
                data["reason"].as_str().unwrap().to_owned(),
                data["id"].as_str().unwrap().to_owned(),
            ));
            seen.order.push("resync".to_owned());
        }
        _ => {}
    }
}

fn set(ids: &[String]) -> HashSet<String> {
    ids.iter().cloned().collect()
}

/// Inserts tickets in one transaction: `hits` titled `hit`, `misses` titled `miss`.
async fn insert_mixed(app: &TestApp, tenant: &str, hits: i64, misses: i64) -> Vec<String> {
    app.db
        .query(
            "insert into tickets (tenant_id, title)
             select $1, case when g <= $2 then 'hit' else 'miss' end
             from generate_series(1, $2::bigint + $3::bigint) g returning id::text",
            &[&tenant, &hits, &misses],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

#[tokio::test]
async fn sse_a_transaction_over_the_bound_is_one_resync_and_its_cursor_skips_it() {
    let app = spawn_app().await;
    let t = token("acme");
    let mut bounded = app.sse(&t, "types=ticket&max_txn_events=5").await;
    let mut unbounded = app.sse(&t, "types=ticket").await;

    let bulk = app.insert_tickets("acme", 6).await;
    let seen = read_sse(&mut bounded, |s| !s.resyncs.is_empty()).await;
    assert!(
        seen.changes.is_empty(),
        "events of the bulk transaction: {seen:?}"
    );
    assert_eq!(seen.resyncs.len(), 1);
    let (reason, cursor) = seen.resyncs[0].clone();
    assert_eq!(reason, "bulk_change");
    // Without the parameter every event arrives.
    assert_eq!(unbounded.receive_ids(&set(&bulk)).await, set(&bulk));

    // The stream goes on: the next transaction arrives whole.
    let next = app.insert_tickets("acme", 2).await;
    let seen = read_sse(&mut bounded, |s| set(&s.changes) == set(&next)).await;
    assert!(seen.resyncs.is_empty(), "{seen:?}");

    // Resuming from the resync's id: the next transaction, nothing of the bulk one.
    let mut resumed = app
        .sse_with(&t, "types=ticket&max_txn_events=5", Some(&cursor))
        .await;
    assert_eq!(resumed.receive_ids(&set(&next)).await, set(&next));
    resumed.assert_no_change_within(QUIET).await;
    // (And so without the bound: the cursor is past the bulk transaction either way.)
    let mut resumed = app.sse_with(&t, "types=ticket", Some(&cursor)).await;
    assert_eq!(resumed.receive_ids(&set(&next)).await, set(&next));
    resumed.assert_no_change_within(QUIET).await;
}

#[tokio::test]
async fn sse_a_transaction_of_exactly_the_bound_and_a_filter_that_keeps_it_within_arrive_whole() {
    let app = spawn_app().await;
    let t = token("acme");
    let mut exact = app.sse(&t, "types=ticket&max_txn_events=4").await;
    let mut filtered = app
        .sse(&t, "types=ticket&max_txn_events=4&filter=title=eq.hit")
        .await;
    let mut filtered_over = app
        .sse(&t, "types=ticket&max_txn_events=3&filter=title=eq.hit")
        .await;

    let four = app.insert_tickets("acme", 4).await;
    let seen = read_sse(&mut exact, |s| s.changes.len() >= 4).await;
    assert_eq!(set(&seen.changes), set(&four));
    assert!(seen.resyncs.is_empty());

    // 4 hits and 10 misses: 14 rows, 4 events for a subscriber of `hit` only.
    let mixed = insert_mixed(&app, "acme", 4, 10).await;
    let hits: Vec<String> = mixed[..4].to_vec();
    // (The first four tickets, titled `bulk n`, are not of its view.)
    let seen = read_sse(&mut filtered, |s| s.changes.len() >= 4).await;
    assert_eq!(set(&seen.changes), set(&hits));
    assert!(seen.resyncs.is_empty(), "{seen:?}");
    filtered.assert_no_change_within(QUIET).await;

    // The same 4 events over a bound of 3; the 4 earlier tickets (no `hit` title) are
    // not of its view at all.
    let seen = read_sse(&mut filtered_over, |s| !s.resyncs.is_empty()).await;
    assert!(seen.changes.is_empty(), "{seen:?}");
    assert_eq!(seen.resyncs[0].0, "bulk_change");
}

#[tokio::test]
async fn sse_a_bulk_transaction_met_on_replay_is_one_resync_too() {
    let app = spawn_app().await;
    let t = token("acme");
    let (status, snapshot) = app.get("/v1/snapshot?types=ticket", Some(&t)).await;
    assert_eq!(status, 200, "{snapshot}");
    let from = snapshot["cursor"].as_str().unwrap().to_owned();

    let before = app.insert_tickets("acme", 2).await;
    let bulk = app.insert_tickets("acme", 7).await;
    let after = app.insert_tickets("acme", 3).await;
    app.until_counted(&t, "ticket", 12).await;

    let mut replayed = app
        .sse_with(&t, "types=ticket&max_txn_events=5", Some(&from))
        .await;
    // What comes before the bulk transaction, then its resync, which stands in for what
    // follows it too (the client refetches; an event after it first would pass it).
    let seen = read_sse(&mut replayed, |s| !s.resyncs.is_empty()).await;
    assert_eq!(set(&seen.changes), set(&before), "{seen:?}");
    assert!(set(&seen.changes).is_disjoint(&set(&after)), "{seen:?}");
    assert_eq!(seen.resyncs.len(), 1);
    assert_eq!(seen.resyncs[0].0, "bulk_change");
    for id in &bulk {
        assert!(!seen.changes.contains(id));
    }
    replayed.assert_no_change_within(QUIET).await;

    // From the resync's id: nothing of the bulk transaction or the one after it, then
    // what comes next.
    let mut resumed = app
        .sse_with(
            &t,
            "types=ticket&max_txn_events=5",
            Some(&seen.resyncs[0].1),
        )
        .await;
    let next = app.insert_tickets("acme", 1).await;
    let got = read_sse(&mut resumed, |s| set(&next).is_subset(&set(&s.changes))).await;
    assert!(set(&got.changes).is_disjoint(&set(&bulk)), "{got:?}");
    assert!(got.resyncs.is_empty(), "{got:?}");
}

#[tokio::test]
async fn sse_refuses_bad_bounds() {
    let app = spawn_app().await;
    let t = token("acme");
    for bad in ["0", "-1", "1.5", "abc", "10001", "", "99999999999999999999"] {
        let (status, body) = app
            .get(&format!("/v1/events?max_txn_events={bad}"), Some(&t))
            .await;
        assert_eq!(status, 400, "{bad:?}: {body}");
        assert_eq!(body["error"], "invalid_max_txn_events", "{bad:?}: {body}");
    }
}

#[tokio::test]
async fn ws_a_transaction_over_the_bound_is_one_resync_and_its_cursor_skips_it() {
    let app = spawn_app().await;
    let t = token("acme");
    let mut ws = app.ws(&t).await;
    let confirmed = ws
        .subscribe(json!({"resource_types": ["ticket"], "max_txn_events": 5}))
        .await;
    assert_eq!(confirmed["max_txn_events"], 5, "{confirmed}");

    let bulk = app.insert_tickets("acme", 6).await;
    let seen = read_ws(&mut ws, |s| !s.resyncs.is_empty()).await;
    assert!(seen.changes.is_empty(), "{seen:?}");
    assert_eq!(seen.resyncs.len(), 1);
    assert_eq!(seen.resyncs[0].0, "bulk_change");
    let cursor = seen.resyncs[0].1.clone();

    let exact = app.insert_tickets("acme", 5).await;
    let seen = read_ws(&mut ws, |s| s.changes.len() >= 5).await;
    assert_eq!(set(&seen.changes), set(&exact));
    assert!(seen.resyncs.is_empty(), "{seen:?}");

    let mut resumed = app.ws(&t).await;
    resumed
        .subscribe(
            json!({"resource_types": ["ticket"], "max_txn_events": 5, "last_event_id": cursor}),
        )
        .await;
    let got = resumed.receive_ids(&set(&exact)).await;
    assert_eq!(got, set(&exact));
    assert!(got.is_disjoint(&set(&bulk)));
    resumed.assert_no_change_within(QUIET).await;
}

#[tokio::test]
async fn ws_a_bulk_transaction_met_on_replay_is_one_resync_too() {
    let app = spawn_app().await;
    let t = token("acme");
    let (_, snapshot) = app.get("/v1/snapshot?types=ticket", Some(&t)).await;
    let from = snapshot["cursor"].as_str().unwrap().to_owned();
    app.insert_tickets("acme", 9).await;
    app.insert_tickets("acme", 2).await;
    app.until_counted(&t, "ticket", 11).await;

    let mut ws = app.ws(&t).await;
    ws.subscribe(json!({"resource_types": ["ticket"], "max_txn_events": 8, "last_event_id": from}))
        .await;
    // The resync comes first and stands in for the transaction after the bulk one too.
    let seen = read_ws(&mut ws, |s| !s.resyncs.is_empty()).await;
    assert!(seen.changes.is_empty(), "{seen:?}");
    assert_eq!(seen.resyncs[0].0, "bulk_change");
    let next = app.insert_tickets("acme", 1).await;
    let seen = read_ws(&mut ws, |s| set(&next).is_subset(&set(&s.changes))).await;
    assert_eq!(set(&seen.changes), set(&next), "{seen:?}");
    assert!(seen.resyncs.is_empty(), "{seen:?}");
}

#[tokio::test]
async fn ws_refuses_bad_bounds_with_an_error_frame_and_stays_open() {
    let app = spawn_app().await;
    let t = token("acme");
    let mut ws = app.ws(&t).await;
    for bad in [
        json!(0),
        json!(-1),
        json!(1.5),
        json!(1.0),
        json!("5"),
        json!(true),
        json!(10_001),
        json!([5]),
    ] {
        ws.send_json(json!({"type": "subscribe", "max_txn_events": bad}))
            .await;
        let error = ws.next_of_type("error").await;
        assert_eq!(error["code"], "invalid_max_txn_events", "{bad}: {error}");
    }
    ws.assert_usable().await;
}

#[tokio::test]
async fn on_replay_only_events_of_the_subscribers_view_count() {
    let app = spawn_app().await;
    let t = token("acme");
    let (_, snapshot) = app.get("/v1/snapshot?types=ticket", Some(&t)).await;
    let from = snapshot["cursor"].as_str().unwrap().to_owned();
    // 13 rows, 3 in the view: within a bound of 5 (the journal counts 13, the view 3).
    let within = insert_mixed(&app, "acme", 3, 10).await;
    // 6 in the view: over it.
    let over = insert_mixed(&app, "acme", 6, 0).await;
    app.until_counted(&t, "ticket", 19).await;

    let mut replayed = app
        .sse_with(
            &t,
            "types=ticket&max_txn_events=5&filter=title=eq.hit",
            Some(&from),
        )
        .await;
    let hits = set(&within[..3]);
    let seen = read_sse(&mut replayed, |s| {
        !s.resyncs.is_empty() && hits.is_subset(&set(&s.changes))
    })
    .await;
    assert_eq!(set(&seen.changes), hits, "{seen:?}");
    assert!(set(&seen.changes).is_disjoint(&set(&over)));
    assert_eq!(seen.resyncs.len(), 1);
    assert_eq!(seen.resyncs[0].0, "bulk_change");
    replayed.assert_no_change_within(QUIET).await;
}

#[tokio::test]
async fn on_replay_only_events_of_a_scoped_tokens_view_count() {
    let app = spawn_app().await;
    let t = token("acme");
    let claims = json!({
        "tenant_id": "acme",
        "exp": jsonwebtoken::get_current_timestamp() + 3600,
        "changecast": {"filter": {"ticket": ["title=eq.hit"]}},
    });
    let scoped = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let (_, snapshot) = app.get("/v1/snapshot?types=ticket", Some(&t)).await;
    let from = snapshot["cursor"].as_str().unwrap().to_owned();
    // 13 rows, 3 in the scope's view: within a bound of 5 (the journal counts 13).
    let within = insert_mixed(&app, "acme", 3, 10).await;
    // 6 in the view: over it.
    let over = insert_mixed(&app, "acme", 6, 0).await;
    app.until_counted(&t, "ticket", 19).await;

    let mut replayed = app
        .sse_with(&scoped, "types=ticket&max_txn_events=5", Some(&from))
        .await;
    let hits = set(&within[..3]);
    let seen = read_sse(&mut replayed, |s| {
        !s.resyncs.is_empty() && hits.is_subset(&set(&s.changes))
    })
    .await;
    assert_eq!(set(&seen.changes), hits, "{seen:?}");
    assert!(set(&seen.changes).is_disjoint(&set(&over)));
    assert_eq!(seen.resyncs.len(), 1, "{seen:?}");
    assert_eq!(seen.resyncs[0].0, "bulk_change");
    replayed.assert_no_change_within(QUIET).await;
}

/// Commits a transaction of `bulk` tickets, then one of a single ticket, back to back;
/// the bulk tickets' ids and the single ticket's.
async fn bulk_then_small(app: &TestApp, bulk: i64) -> (Vec<String>, String) {
    let ids = app.insert_tickets("acme", bulk).await;
    (ids, app.insert_tickets("acme", 1).await.remove(0))
}

/// The resync of a bulk transaction arrived before any event of the transaction after it,
/// and resuming from the resync's cursor brings that transaction's changes no more.
async fn assert_resync_first(app: &TestApp, t: &str, seen: &Seen, bulk: &[String], small: &str) {
    let resync_at = seen.order.iter().position(|item| item == "resync");
    let small_at = seen.order.iter().position(|item| item == small);
    assert!(resync_at.is_some(), "{seen:?}");
    assert!(
        small_at.is_none_or(|small_at| resync_at < Some(small_at)),
        "the later transaction's event came before the bulk one's resync: {seen:?}"
    );
    assert_eq!(seen.resyncs[0].0, "bulk_change");
    assert!(set(&seen.changes).is_disjoint(&set(bulk)), "{seen:?}");
    assert!(
        seen.changes.iter().all(|id| id == small),
        "only the later transaction's event may follow: {seen:?}"
    );
    // Resuming from the resync's cursor brings nothing of the bulk transaction.
    let mut resumed = app
        .sse_with(t, "types=ticket&max_txn_events=5", Some(&seen.resyncs[0].1))
        .await;
    let mut after = Seen::default();
    while let Some(event) = resumed.next_within(QUIET).await {
        note(&mut after, &event.data);
    }
    assert!(after.resyncs.is_empty(), "{after:?}");
    assert!(set(&after.changes).is_disjoint(&set(bulk)), "{after:?}");
}

#[tokio::test]
async fn sse_live_a_bulk_transactions_resync_comes_before_the_next_transactions_events() {
    let app = spawn_app().await;
    let t = token("acme");
    let mut bounded = app.sse(&t, "types=ticket&max_txn_events=5").await;
    // Both written first and committed back to back, so the tailer likely publishes the
    // two in one batch: one boundary makes both whole at once.
    let (first, second) = (app.connect_db().await, app.connect_db().await);
    first.batch_execute("begin").await.unwrap();
    second.batch_execute("begin").await.unwrap();
    let bulk = insert_tickets(&first, "acme", 6).await;
    let small = insert_tickets(&second, "acme", 1).await.remove(0);
    first.batch_execute("commit").await.unwrap();
    second.batch_execute("commit").await.unwrap();
    let mut seen = read_sse(&mut bounded, |s| !s.resyncs.is_empty()).await;
    while let Some(event) = bounded.next_within(QUIET).await {
        note(&mut seen, &event.data);
    }
    assert_eq!(seen.resyncs.len(), 1, "{seen:?}");
    assert_resync_first(&app, &t, &seen, &bulk, &small).await;
}

#[tokio::test]
async fn sse_replay_a_bulk_transactions_resync_comes_before_the_next_transactions_events() {
    let app = spawn_app().await;
    let t = token("acme");
    let (_, snapshot) = app.get("/v1/snapshot?types=ticket", Some(&t)).await;
    let from = snapshot["cursor"].as_str().unwrap().to_owned();
    let (bulk, small) = bulk_then_small(&app, 6).await;
    app.until_counted(&t, "ticket", 7).await;

    let mut replayed = app
        .sse_with(&t, "types=ticket&max_txn_events=5", Some(&from))
        .await;
    let mut seen = read_sse(&mut replayed, |s| !s.resyncs.is_empty()).await;
    while let Some(event) = replayed.next_within(QUIET).await {
        note(&mut seen, &event.data);
    }
    assert_eq!(seen.resyncs.len(), 1, "{seen:?}");
    assert_resync_first(&app, &t, &seen, &bulk, &small).await;
}
