//! Application events, topics, row filters, ids, view transitions, `changed`/`old`,
//! excluded columns and live statistics (API.md §2, §4, §8, §9, §10), black-box: real
//! PostgreSQL, real SSE and WebSocket clients.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

/// Long enough for an event that was going to arrive to have arrived.
const QUIET: Duration = Duration::from_millis(400);

async fn publish(
    db: &impl tokio_postgres::GenericClient,
    tenant: &str,
    topic: &str,
    payload: Value,
) {
    db.execute(
        "select changecast.publish($1, $2, $3::text::jsonb)",
        &[&tenant, &topic, &payload.to_string()],
    )
    .await
    .unwrap();
}

/// Asserts that no event with data arrives within [`QUIET`].
async fn assert_quiet(stream: &mut SseStream) {
    if let Some(event) = stream.next_within(QUIET).await {
        panic!("unexpected event: {event:?}");
    }
}

#[tokio::test]
async fn publish_is_delivered_at_commit_and_never_on_rollback() {
    let app = spawn_app().await;
    let t = token("acme");
    let mut sse = app.sse(&t, "").await;
    let mut ws = app.ws(&t).await;
    ws.expect("connection_established").await;
    ws.subscribe(json!({})).await;

    let mut writer = app.connect_db().await;
    let tx = writer.transaction().await.unwrap();
    publish(
        &tx,
        "acme",
        "config_update",
        json!({"action": "profile_set_default", "n": 1}),
    )
    .await;
    assert_quiet(&mut sse).await; // not before the commit
    tx.commit().await.unwrap();
    let tx = writer.transaction().await.unwrap();
    publish(&tx, "acme", "config_update", json!({"n": 2})).await;
    tx.rollback().await.unwrap();
    publish(&app.db, "globex", "config_update", json!({"n": 3})).await;
    publish(&app.db, "acme", "ticket:progress", json!({"n": 4})).await;

    let events = next_events(&mut sse, 2).await;
    assert_eq!(
        events[0].event, "config_update",
        "SSE event name is the topic"
    );
    let data = &events[0].data;
    assert_eq!(data["type"], "app_event");
    assert_eq!(data["topic"], "config_update");
    assert_eq!(data["tenant_id"], "acme");
    assert_eq!(
        data["payload"],
        json!({"action": "profile_set_default", "n": 1})
    );
    assert_eq!(events[0].id.as_deref(), data["id"].as_str());
    assert!(data["occurred_at"].as_str().unwrap().ends_with('Z'));
    let fields: HashSet<&str> = data.as_object().unwrap().keys().map(|k| &**k).collect();
    assert_eq!(
        fields,
        HashSet::from(["type", "id", "topic", "tenant_id", "payload", "occurred_at"])
    );
    // The rolled-back event and globex's never came: the next is acme's n=4.
    assert_eq!(event_key(&events[1].data), "ticket:progress:4");

    let first = ws.next_of_type("app_event").await;
    assert_eq!(&first, data, "one JSON shape on both transports");
    assert_eq!(
        event_key(&ws.next_of_type("app_event").await),
        "ticket:progress:4"
    );
}

#[tokio::test]
async fn topics_and_types_select_only_what_they_name() {
    let app = spawn_app().await;
    let t = token("acme");
    let mut topics = app.sse(&t, "topics=config_update,agent:*").await;
    let mut types_only = app.sse(&t, "types=ticket").await;
    let mut everything = app.sse(&t, "").await;
    let mut ws = app.ws(&t).await;
    ws.expect("connection_established").await;
    let confirmed = ws.subscribe(json!({"topics": ["agent:*"]})).await;
    assert_eq!(confirmed["topics"], json!(["agent:*"]));

    publish(&app.db, "acme", "config_update", json!({"n": 1})).await;
    publish(&app.db, "acme", "config_updated", json!({"n": 2})).await;
    publish(&app.db, "acme", "agent:stats", json!({"n": 3})).await;
    publish(&app.db, "acme", "agents", json!({"n": 4})).await;
    let ticket = app.insert_ticket("acme", "row").await;
    publish(&app.db, "acme", "agent:heartbeat", json!({"n": 5})).await;

    let keys = |events: Vec<SseEvent>| {
        events
            .iter()
            .map(|e| event_key(&e.data))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        keys(next_events(&mut topics, 3).await),
        ["config_update:1", "agent:stats:3", "agent:heartbeat:5"]
    );
    assert_eq!(
        keys(next_events(&mut types_only, 1).await),
        [format!("created:{ticket}")]
    );
    assert_eq!(next_events(&mut everything, 6).await.len(), 6);
    for stream in [&mut topics, &mut types_only, &mut everything] {
        assert_quiet(stream).await;
    }
    assert_eq!(
        event_key(&ws.next_of_type("app_event").await),
        "agent:stats:3"
    );
    let next = ws.next_json_within(WAIT).await.unwrap();
    assert_eq!(
        event_key(&next),
        "agent:heartbeat:5",
        "no row change for a topics-only subscriber"
    );
}

#[tokio::test]
async fn resume_across_interleaved_publishes_and_row_writes_loses_nothing() {
    let app = spawn_app().await;
    let t = token("acme");
    let mut first = app.sse(&t, "").await;
    let mut written = HashSet::new();
    for n in 0..40 {
        if n % 2 == 0 {
            publish(&app.db, "acme", "job:progress", json!({"n": n})).await;
            written.insert(format!("job:progress:{n}"));
        } else {
            written.insert(format!("created:{}", app.insert_ticket("acme", "t").await));
        }
    }
    let seen = next_events(&mut first, 15).await;
    let cursor = seen.last().unwrap().id.clone().unwrap();
    drop(first);
    let earlier: HashSet<String> = seen.iter().map(|e| event_key(&e.data)).collect();
    for n in 40..60 {
        if n % 3 == 0 {
            publish(&app.db, "acme", "job:progress", json!({"n": n})).await;
            written.insert(format!("job:progress:{n}"));
        } else {
            written.insert(format!("created:{}", app.insert_ticket("acme", "t").await));
        }
    }
    let mut resumed = app.sse_with(&t, "", Some(&cursor)).await;
    let mut received = earlier.clone();
    let mut repeated = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !written.is_subset(&received) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(event) = resumed.next_within(left).await else {
            break;
        };
        let key = event_key(&event.data);
        if !received.insert(key.clone()) {
            repeated.push(key);
        }
    }
    assert_nothing_lost(&written, &received, &HashSet::new());
    assert!(
        repeated.len() <= 1,
        "resumed after the cursor's own change: {repeated:?}"
    );
    assert_quiet(&mut resumed).await;
}

#[tokio::test]
async fn reserved_and_invalid_topics_and_bad_arguments_are_refused() {
    let app = spawn_app().await;
    for (tenant, topic, payload, fragment) in [
        (Some("acme"), Some("resource_change"), "{}", "reserved"),
        (Some("acme"), Some("resync"), "{}", "reserved"),
        (Some("acme"), Some("message"), "{}", "reserved"),
        (Some("acme"), Some("open"), "{}", "reserved"),
        (Some("acme"), Some("Config"), "{}", "must match"),
        (Some("acme"), Some("9lives"), "{}", "must match"),
        (Some("acme"), Some(&*"a".repeat(64)), "{}", "must match"),
        (Some("acme"), None, "{}", "must match"),
        (None, Some("config_update"), "{}", "tenant_id"),
        (Some(""), Some("config_update"), "{}", "tenant_id"),
    ] {
        let error = app
            .db
            .execute(
                "select changecast.publish($1, $2, $3::text::jsonb)",
                &[&tenant, &topic, &payload],
            )
            .await
            .unwrap_err();
        let message = error.as_db_error().unwrap().message().to_owned();
        assert!(message.contains(fragment), "{topic:?}: {message}");
    }
    let error = app
        .db
        .execute("select changecast.publish('acme', 'x', null)", &[])
        .await
        .unwrap_err();
    assert!(error.as_db_error().unwrap().message().contains("payload"));
    let count: i64 = app
        .db
        .query_one(
            "select count(*) from changecast.change_log where event = 'published'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0, "nothing refused reached the journal");

    let t = token("acme");
    for query in ["topics=Config", "topics=a*b", "topics=resource_change*x"] {
        let (status, body) = app.get(&format!("/v1/events?{query}"), Some(&t)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_topic")),
            "{query}"
        );
    }
}

#[tokio::test]
async fn resource_id_is_text_whatever_the_id_column_is_called() {
    let app = spawn_app().await;
    app.db
        .batch_execute(
            "create table public.items (item_no bigint primary key, org text not null, label text);
             select changecast.watch('public.items', 'item', tenant_column => 'org', id_column => 'item_no');",
        )
        .await
        .unwrap();
    let mut sse = app.sse(&token("acme"), "types=item").await;
    app.db
        .batch_execute("insert into public.items values (7, 'acme', 'seven')")
        .await
        .unwrap();
    let event = &next_events(&mut sse, 1).await[0].data;
    assert_eq!(event["resource_id"], "7");
    assert_eq!(
        event["resource"]["item_no"], 7,
        "the row itself keeps its types"
    );
    assert_eq!(event["resource_type"], "item");
    // ids= matches the same text.
    let mut one = app.sse(&token("acme"), "types=item&ids=8").await;
    app.db
        .batch_execute(
            "insert into public.items values (8, 'acme', 'eight'), (9, 'acme', 'nine');
             update public.items set label = 'EIGHT' where item_no = 8;",
        )
        .await
        .unwrap();
    let got: Vec<String> = next_events(&mut one, 2)
        .await
        .iter()
        .map(|e| event_key(&e.data))
        .collect();
    assert_eq!(got, ["created:8", "updated:8"]);
    assert_quiet(&mut one).await;
}

#[tokio::test]
async fn updated_events_say_which_columns_changed_and_what_they_were() {
    let app = spawn_app().await;
    let t = token("acme");
    let mut sse = app.sse(&t, "types=ticket").await;
    let mut ws = app.ws(&t).await;
    ws.expect("connection_established").await;
    ws.subscribe(json!({"resource_types": ["ticket"]})).await;
    let id = app.insert_ticket("acme", "one").await;
    app.db
        .execute(
            "update tickets set state = 'closed', assignee = 'ann' where id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap();
    // Changes nothing: emits nothing.
    app.db
        .execute(
            "update tickets set state = 'closed' where id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap();
    app.db
        .execute("delete from tickets where id = $1::text::uuid", &[&id])
        .await
        .unwrap();

    let events = next_events(&mut sse, 3).await;
    let created = &events[0].data;
    assert!(created.get("changed").is_none() && created.get("old").is_none());
    let updated = &events[1].data;
    assert_eq!(updated["event"], "updated");
    assert_eq!(updated["changed"], json!(["assignee", "state"]));
    assert_eq!(updated["old"], json!({"assignee": null, "state": "open"}));
    assert_eq!(updated["resource"]["state"], "closed");
    assert_eq!(events[2].data["event"], "deleted");
    assert!(events[2].data.get("changed").is_none());
    assert_quiet(&mut sse).await;
    ws.next_of_type("resource_change").await;
    assert_eq!(&ws.next_of_type("resource_change").await, updated);
}

#[tokio::test]
async fn each_filter_operator_selects_its_rows() {
    let app = spawn_app().await;
    app.db
        .batch_execute(
            "create table public.scores (id text primary key, tenant_id text not null, n numeric, label text);
             select changecast.watch('public.scores', 'score');",
        )
        .await
        .unwrap();
    let t = token("acme");
    let cases: [(&str, &[&str]); 10] = [
        ("n=eq.2", &["b"]),
        ("n=neq.2", &["a", "c"]),
        ("n=lt.2", &["a"]),
        ("n=lte.2", &["a", "b"]),
        ("n=gt.2", &["c"]),
        ("n=gte.2", &["b", "c"]),
        ("n=gt.10", &[]),
        ("label=in.(x,\"y,z\")", &["a", "c"]),
        ("n=is.null", &["d"]),
        ("label=gte.y", &["b", "c"]),
    ];
    let mut streams = Vec::new();
    for (filter, _) in cases {
        streams.push(
            app.sse(&t, &format!("types=score&filter={}", urlencode(filter)))
                .await,
        );
    }
    // Two conditions: both must hold.
    let mut both = app
        .sse(&t, "types=score&filter=n=gte.2&filter=label=eq.y")
        .await;
    app.db
        .batch_execute(
            "insert into public.scores values ('a', 'acme', 1, 'x'), ('b', 'acme', 2, 'y'),
                                              ('c', 'acme', 10, 'y,z'), ('d', 'acme', null, 'w'),
                                              ('e', 'globex', 2, 'y')",
        )
        .await
        .unwrap();
    for ((filter, expected), stream) in cases.iter().zip(&mut streams) {
        let got: HashSet<String> = next_events(stream, expected.len())
            .await
            .iter()
            .map(|e| e.data["resource_id"].as_str().unwrap().to_owned())
            .collect();
        let expected: HashSet<String> = expected.iter().map(|s| s.to_string()).collect();
        assert_eq!(got, expected, "{filter}");
        assert_quiet(stream).await;
    }
    assert_eq!(next_events(&mut both, 1).await[0].data["resource_id"], "b");
    assert_quiet(&mut both).await;
}

fn urlencode(text: &str) -> String {
    serde_urlencoded::to_string([("v", text)]).unwrap()[2..].to_owned()
}

/// The moves of one ticket through a view of open tickets, and what a subscriber of
/// that view must see of each.
async fn move_through_the_view(app: &TestApp) -> (String, String) {
    let inside = app.insert_ticket("acme", "starts open").await;
    let outside: String = app
        .db
        .query_one(
            "insert into tickets (tenant_id, title, state) values ('acme', 'starts closed', 'closed')
             returning id::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for (sql, id) in [
        (
            "update tickets set title = 'renamed' where id = $1::text::uuid",
            &inside,
        ), // updated
        (
            "update tickets set state = 'closed' where id = $1::text::uuid",
            &inside,
        ), // leaves
        (
            "update tickets set title = 'still closed' where id = $1::text::uuid",
            &inside,
        ), // -
        (
            "update tickets set state = 'open' where id = $1::text::uuid",
            &outside,
        ), // enters
        ("delete from tickets where id = $1::text::uuid", &outside), // deleted
    ] {
        app.db.execute(sql, &[id]).await.unwrap();
    }
    (inside, outside)
}

#[tokio::test]
async fn rows_entering_and_leaving_a_view_arrive_as_created_and_deleted_live_and_replayed() {
    let app = spawn_app().await;
    let t = token("acme");
    let (status, snapshot) = app
        .get("/v1/snapshot?types=ticket&filter=state=eq.open", Some(&t))
        .await;
    assert_eq!(status, 200, "{snapshot}");
    let start = snapshot["cursor"].as_str().unwrap().to_owned();
    let mut live = app.sse(&t, "types=ticket&filter=state=eq.open").await;
    let mut ws = app.ws(&t).await;
    ws.expect("connection_established").await;
    let confirmed = ws
        .subscribe(json!({"resource_types": ["ticket"], "filter": ["state=eq.open"]}))
        .await;
    assert_eq!(confirmed["filter"], json!(["state=eq.open"]));
    let (inside, outside) = move_through_the_view(&app).await;
    let expected = [
        format!("created:{inside}"),
        format!("updated:{inside}"),
        format!("deleted:{inside}"),
        format!("created:{outside}"),
        format!("deleted:{outside}"),
    ];
    let got: Vec<String> = next_events(&mut live, 5)
        .await
        .iter()
        .map(|e| event_key(&e.data))
        .collect();
    assert_eq!(got, expected, "live");
    assert_quiet(&mut live).await;
    let mut over_ws = Vec::new();
    for _ in 0..5 {
        over_ws.push(ws.next_of_type("resource_change").await);
    }
    let over_ws: Vec<String> = over_ws.iter().map(event_key).collect();
    assert_eq!(over_ws, expected, "WebSocket");

    // The same from the journal: a replay from the snapshot's cursor.
    let mut replayed = app
        .sse_with(&t, "types=ticket&filter=state=eq.open", Some(&start))
        .await;
    let events = next_events(&mut replayed, 5).await;
    let got: Vec<String> = events.iter().map(|e| event_key(&e.data)).collect();
    assert_eq!(got, expected, "replayed");
    assert_eq!(
        events[2].data["resource"]["state"], "closed",
        "a leaving row comes with its new row"
    );
    assert!(events[2].data.get("changed").is_none());
}

#[tokio::test]
async fn a_filtered_snapshot_then_its_stream_keep_the_view_exact() {
    let app = spawn_app().await;
    let t = token("acme");
    let view = "types=ticket&filter=state=in.(open,review)&filter=project_id=eq.p1";
    app.db
        .batch_execute(
            "insert into tickets (tenant_id, title, state, project_id)
             select 'acme', 't' || g, (array['open','review','closed'])[g % 3 + 1], 'p' || (g % 2)
             from generate_series(1, 30) g;",
        )
        .await
        .unwrap();
    let (_, snapshot) = app.get(&format!("/v1/snapshot?{view}"), Some(&t)).await;
    let mut copy: BTreeMap<String, Value> = snapshot["resources"]["ticket"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| (row["id"].as_str().unwrap().to_owned(), row.clone()))
        .collect();
    assert!(!copy.is_empty());
    assert!(copy
        .values()
        .all(|r| r["project_id"] == "p1" && r["state"] != "closed"));
    let mut stream = app.sse_with(&t, view, snapshot["cursor"].as_str()).await;
    // Rows move in and out of the view, in and out of the project, get deleted.
    app.db
        .batch_execute(
            "update tickets set state = 'closed' where title in ('t1', 't2', 't3');
             update tickets set state = 'open' where title in ('t5', 't8', 't11');
             update tickets set project_id = 'p1' where title in ('t4', 't6');
             update tickets set project_id = 'p0' where title in ('t7', 't9');
             delete from tickets where title in ('t10', 't13');
             insert into tickets (tenant_id, title, state, project_id) values ('acme', 'end', 'open', 'p1');",
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let event = stream.next_within(left).await.expect("the view's changes");
        let row = &event.data["resource"];
        let id = row["id"].as_str().unwrap().to_owned();
        match event.data["event"].as_str().unwrap() {
            "deleted" => {
                assert!(
                    copy.remove(&id).is_some(),
                    "deleted a row the view did not have"
                );
            }
            "created" => {
                assert!(
                    copy.insert(id, row.clone()).is_none(),
                    "created a row twice"
                );
            }
            _ => {
                assert!(
                    copy.insert(id, row.clone()).is_some(),
                    "updated a row not in the view"
                );
            }
        }
        if row["title"] == "end" {
            break;
        }
    }
    let (_, now) = app.get(&format!("/v1/snapshot?{view}"), Some(&t)).await;
    let now: BTreeMap<String, Value> = now["resources"]["ticket"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| (row["id"].as_str().unwrap().to_owned(), row.clone()))
        .collect();
    assert_eq!(copy, now, "the client's copy of the view is exact");
}

#[tokio::test]
async fn bad_filters_and_unknown_parameters_are_refused_on_every_transport() {
    let app = spawn_app().await;
    let t = token("acme");
    let seventeen = vec!["filter=state=eq.open"; 17].join("&");
    for (path, query, code) in [
        ("events", "filter=state=like.open", "invalid_filter"),
        ("events", "filter=state", "invalid_filter"),
        ("events", "filter=state=in.open", "invalid_filter"),
        ("events", "filter=state=is.true", "invalid_filter"),
        ("events", seventeen.as_str(), "too_many_filters"),
        ("events", "event_types=created", "unknown_parameter"),
        ("events", "project_id=p1", "unknown_parameter"),
        ("events", "limit=5", "unknown_parameter"),
        ("snapshot", "filter=n=zz.1", "invalid_filter"),
        ("snapshot", "topics=x", "unknown_parameter"),
        ("stats", "types=ticket", "unknown_parameter"),
        ("stats", "interval=0s", "invalid_interval"),
        ("stats", "interval=61s", "invalid_interval"),
    ] {
        let (status, body) = app.get(&format!("/v1/{path}?{query}"), Some(&t)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some(code)),
            "/v1/{path}?{query}: {body}"
        );
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let mut ws = app.ws(&t).await;
    ws.expect("connection_established").await;
    for (subscribe, code) in [
        (
            json!({"type": "subscribe", "filter": ["state=like.open"]}),
            "invalid_filter",
        ),
        (
            json!({"type": "subscribe", "topics": ["Bad"]}),
            "invalid_topic",
        ),
        (
            json!({"type": "subscribe", "filters": ["state=eq.open"]}),
            "invalid_message",
        ),
        (
            json!({"type": "subscribe", "filter": "state=eq.open"}),
            "invalid_message",
        ),
    ] {
        ws.send_json(subscribe.clone()).await;
        let error = ws.expect("error").await;
        assert_eq!(error["code"], code, "{subscribe}");
    }
    ws.assert_usable().await;
    let (status, _) = app.get("/v1/ws?types=ticket", Some(&t)).await;
    assert_eq!(
        status, 400,
        "unknown parameters are refused before the upgrade"
    );
}

#[tokio::test]
async fn excluded_columns_never_leave_the_database() {
    let app = spawn_app().await;
    app.db
        .batch_execute(
            "create table public.accounts (id text primary key, tenant_id text not null, name text,
                                          password_hash text, api_key text);
             select changecast.watch('public.accounts', 'account',
                                     exclude_columns => array['password_hash', 'api_key']);",
        )
        .await
        .unwrap();
    let t = token("acme");
    let mut sse = app.sse(&t, "types=account").await;
    app.db
        .batch_execute(
            "insert into public.accounts values ('a1', 'acme', 'Ann', 'HASH-ONE', 'KEY-ONE');
             update public.accounts set password_hash = 'HASH-TWO' where id = 'a1';
             update public.accounts set name = 'Anne', api_key = 'KEY-TWO' where id = 'a1';
             delete from public.accounts where id = 'a1';
             insert into public.accounts values ('a2', 'acme', 'Bob', 'HASH-THREE', 'KEY-THREE');",
        )
        .await
        .unwrap();
    let events = next_events(&mut sse, 4).await;
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e.data["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["created", "updated", "deleted", "created"],
        "a secret-only update emits nothing"
    );
    assert_eq!(events[1].data["changed"], json!(["name"]));
    assert_eq!(events[1].data["old"], json!({"name": "Ann"}));
    let (_, snapshot) = app.get("/v1/snapshot?types=account", Some(&t)).await;
    let journal: Vec<String> = app
        .db
        .query(
            "select resource::text || coalesce(old::text, '') from changecast.change_log",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let everything = format!(
        "{} {} {}",
        serde_json::to_string(&events.iter().map(|e| &e.data).collect::<Vec<_>>()).unwrap(),
        snapshot,
        journal.join(" ")
    );
    assert!(snapshot["resources"]["account"][0]["name"] == "Bob");
    for secret in ["password_hash", "api_key", "HASH-", "KEY-"] {
        assert!(
            !everything.contains(secret),
            "{secret} left the table: {everything}"
        );
    }
    // A filter on an excluded column learns nothing: the column is not there.
    let (_, probe) = app
        .get(
            "/v1/snapshot?types=account&filter=api_key=eq.KEY-THREE",
            Some(&t),
        )
        .await;
    assert_eq!(probe["resources"]["account"], json!([]));

    for (exclude, fragment) in [
        ("array['tenant_id']", "cannot be excluded"),
        ("array['id']", "cannot be excluded"),
        ("array['nope']", "no column"),
        ("array[null]::text[]", "without nulls"),
    ] {
        let error = app
            .db
            .batch_execute(&format!(
                "select changecast.watch('public.accounts', 'account', exclude_columns => {exclude})"
            ))
            .await
            .unwrap_err();
        let message = error.as_db_error().unwrap().message().to_owned();
        assert!(message.contains(fragment), "{exclude}: {message}");
    }
}

/// `/v1/stats` as soon as its `events_per_minute` is `counts` (the tailer publishes
/// asynchronously), bounded by [`WAIT`].
async fn stats_once_counted(app: &TestApp, token: &str, counts: Value) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, report) = app.get("/v1/stats", Some(token)).await;
        assert_eq!(status, 200, "{report}");
        if report["events_per_minute"] == counts {
            return report;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never counted {counts}: {report}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn stats_count_subscribers_and_events_per_tenant() {
    let app = spawn_app().await;
    let (acme, globex) = (token("acme"), token("globex"));
    let _sse1 = app.sse(&acme, "").await;
    let _sse2 = app.sse(&acme, "types=ticket").await;
    let mut ws = app.ws(&acme).await;
    ws.expect("connection_established").await;
    let _other = app.sse(&globex, "").await;
    for _ in 0..3 {
        app.insert_ticket("acme", "x").await;
    }
    publish(&app.db, "acme", "config_update", json!({})).await;
    publish(&app.db, "acme", "config_update", json!({})).await;
    app.insert_agent("globex", "g").await;

    let report = stats_once_counted(&app, &acme, json!({"ticket": 3, "config_update": 2})).await;
    assert_eq!(report["tenant_id"], "acme");
    assert_eq!(report["subscribers"], json!({"sse": 2, "ws": 1}));
    assert!(report["last_event_at"].as_str().unwrap().ends_with('Z'));
    assert!(report["server_time"].as_str().unwrap().ends_with('Z'));
    let theirs = stats_once_counted(&app, &globex, json!({"agent": 1})).await;
    assert_eq!(theirs["subscribers"], json!({"sse": 1, "ws": 0}));

    ws.send_json(json!({"type": "get_stats"})).await;
    let over_ws = ws.expect("stats").await;
    assert_eq!(over_ws["events_per_minute"], report["events_per_minute"]);
    assert_eq!(over_ws["subscribers"], json!({"sse": 2, "ws": 1}));

    let response = app
        .http
        .get(app.url("/v1/stats?interval=1s"))
        .bearer_auth(&acme)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut stream = SseStream::new(response);
    let started = tokio::time::Instant::now();
    for _ in 0..2 {
        let event = stream.next_within(WAIT).await.unwrap();
        assert_eq!(event.event, "stats");
        assert_eq!(event.data["type"], "stats");
        assert_eq!(event.data["tenant_id"], "acme");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "one per interval"
    );
}
