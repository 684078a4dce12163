//! Live delivery over SSE: the right changes reach the right tenant, nothing else.

use std::time::Duration;

use crate::helpers::*;

#[tokio::test]
async fn created_updated_deleted_reach_their_tenant_and_no_other() {
    let app = spawn_app().await;
    let mut acme = app.sse(&token("acme"), "").await;
    let mut globex = app.sse(&token("globex"), "").await;

    let id = app.insert_ticket("acme", "first").await;
    app.db
        .execute(
            "update tickets set state = 'closed' where id::text = $1",
            &[&id],
        )
        .await
        .unwrap();
    app.db
        .execute("delete from tickets where id::text = $1", &[&id])
        .await
        .unwrap();
    let other = app.insert_ticket("globex", "theirs").await;

    let events = acme.changes_until(3).await;
    let kinds: Vec<_> = events
        .iter()
        .map(|e| e.data["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["created", "updated", "deleted"]);
    for event in &events {
        assert_eq!(event.data["type"], "resource_change");
        assert_eq!(event.data["tenant_id"], "acme");
        assert_eq!(event.data["resource_type"], "ticket");
        assert_eq!(event.data["resource"]["id"], id.as_str());
        assert_eq!(
            event.id.as_deref(),
            event.data["id"].as_str(),
            "SSE id is the event's cursor"
        );
        assert!(event.data["occurred_at"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(events[1].data["resource"]["state"], "closed");
    assert_eq!(
        events[2].data["resource"]["title"], "first",
        "deleted carries the old row"
    );

    let theirs = globex.changes_until(1).await;
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].data["resource"]["id"], other.as_str());
    acme.assert_no_change_within(Duration::from_millis(300))
        .await;
}

#[tokio::test]
async fn stream_starts_with_retry_and_has_event_stream_headers() {
    let app = spawn_app().await;
    let response = app
        .http
        .get(app.url("/v1/events"))
        .bearer_auth(token("acme"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");
    let mut stream = futures_util::StreamExt::boxed(response.bytes_stream());
    let first = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut stream))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.starts_with(b"retry: "), "{first:?}");
}

#[tokio::test]
async fn keepalive_comments_arrive_on_an_idle_stream() {
    let app = spawn_app_with(|c| c.keepalive = Duration::from_millis(100)).await;
    let mut stream = app.sse(&token("acme"), "").await;
    let _ = stream.next_within(Duration::from_millis(450)).await;
    assert!(
        stream.comments >= 2,
        "only {} keepalive comments",
        stream.comments
    );
}

#[tokio::test]
async fn an_update_that_changes_nothing_emits_nothing() {
    let app = spawn_app().await;
    let id = app.insert_ticket("acme", "same").await;
    let mut stream = app.sse(&token("acme"), "").await;
    app.db
        .execute(
            "update tickets set title = title where id::text = $1",
            &[&id],
        )
        .await
        .unwrap();
    // A marker written afterwards proves the no-op had its chance to arrive first.
    let marker = app.insert_ticket("acme", "marker").await;
    let mut events = Vec::new();
    while let Some(event) = stream.next_within(WAIT).await {
        let is_marker = event.data["resource"]["id"] == marker.as_str();
        events.push(event);
        if is_marker {
            break;
        }
    }
    assert_eq!(
        events.last().unwrap().data["resource"]["id"],
        marker.as_str(),
        "the marker arrived"
    );
    assert!(
        events.iter().all(|e| e.data["event"] != "updated"),
        "a no-op update was delivered: {events:?}"
    );
    let journal: i64 = app
        .db
        .query_one(
            "select count(*) from changecast.change_log where event = 'updated'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(journal, 0, "a no-op update was journaled");
}

#[tokio::test]
async fn types_and_events_filters_apply() {
    let app = spawn_app().await;
    let mut agents_only = app.sse(&token("acme"), "types=agent").await;
    let mut deletions = app.sse(&token("acme"), "events=deleted").await;
    let ticket = app.insert_ticket("acme", "t").await;
    app.db
        .execute(
            "insert into agents (tenant_id, name) values ('acme', 'a1')",
            &[],
        )
        .await
        .unwrap();
    app.db
        .execute("delete from tickets where id::text = $1", &[&ticket])
        .await
        .unwrap();

    let agents = agents_only.changes_until(1).await;
    assert_eq!(agents[0].data["resource_type"], "agent");
    agents_only
        .assert_no_change_within(Duration::from_millis(300))
        .await;

    let deleted = deletions.changes_until(1).await;
    assert_eq!(deleted[0].data["event"], "deleted");
    assert_eq!(deleted[0].data["resource"]["id"], ticket.as_str());
    deletions
        .assert_no_change_within(Duration::from_millis(300))
        .await;
}

#[tokio::test]
async fn a_row_larger_than_notify_allows_arrives_whole() {
    let app = spawn_app().await;
    let mut stream = app.sse(&token("acme"), "").await;
    let body = "x".repeat(50_000);
    app.db
        .execute(
            "insert into tickets (tenant_id, title, body) values ('acme', 'big', $1)",
            &[&body],
        )
        .await
        .unwrap();
    let events = stream.changes_until(1).await;
    assert_eq!(
        events[0].data["resource"]["body"].as_str().unwrap().len(),
        50_000
    );
}

#[tokio::test]
async fn watch_makes_a_new_table_live_and_unwatch_stops_it() {
    let app = spawn_app().await;
    app.db
        .batch_execute(
            "create table invoices (number bigint primary key, org text not null, total numeric);
             select changecast.watch('public.invoices', 'invoice', tenant_column => 'org', id_column => 'number');",
        )
        .await
        .unwrap();
    let mut stream = app.sse(&token("acme"), "types=invoice").await;
    app.db
        .execute(
            "insert into invoices values (7, 'acme', 12.50), (8, 'globex', 1)",
            &[],
        )
        .await
        .unwrap();
    let events = stream.changes_until(1).await;
    assert_eq!(events[0].data["resource_type"], "invoice");
    assert_eq!(events[0].data["resource"]["number"], 7);
    assert_eq!(events[0].data["tenant_id"], "acme");

    let unwatched: bool = app
        .db
        .query_one("select changecast.unwatch('public.invoices')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(unwatched);
    app.db
        .execute("insert into invoices values (9, 'acme', 3)", &[])
        .await
        .unwrap();
    stream
        .assert_no_change_within(Duration::from_millis(300))
        .await;
}

#[tokio::test]
async fn a_row_without_tenant_is_refused_at_write_time() {
    let app = spawn_app().await;
    app.db
        .batch_execute(
            "create table notes (id serial primary key, tenant text, body text);
             select changecast.watch('public.notes', 'note', tenant_column => 'tenant');",
        )
        .await
        .unwrap();
    let error = app
        .db
        .execute("insert into notes (body) values ('orphan')", &[])
        .await
        .unwrap_err();
    let db_error = error.as_db_error().expect("a database error");
    assert!(
        db_error.message().contains("has no tenant"),
        "{}",
        db_error.message()
    );
    let count: i64 = app
        .db
        .query_one("select count(*) from notes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0, "the write was refused");
}

#[tokio::test]
async fn watch_refuses_bad_arguments_clearly() {
    let app = spawn_app().await;
    app.db
        .batch_execute("create table things (id int primary key, tenant_id text)")
        .await
        .unwrap();
    for (sql, expected) in [
        (
            "select changecast.watch('public.things', 'Bad Type')",
            "must match",
        ),
        (
            "select changecast.watch('public.things', 'thing', tenant_column => 'nope')",
            "no tenant column",
        ),
        (
            "select changecast.watch('public.things', 'thing', id_column => 'nope')",
            "no id column",
        ),
        (
            "select changecast.watch('public.things', 'ticket')",
            "already names another table",
        ),
        (
            "select changecast.watch('public.missing', 'missing')",
            "does not exist",
        ),
    ] {
        let error = app.db.batch_execute(sql).await.unwrap_err();
        let message = error.as_db_error().unwrap().message().to_owned();
        assert!(message.contains(expected), "{sql}: {message}");
    }
}

#[tokio::test]
async fn a_row_moved_to_another_tenant_leaves_the_old_one_and_arrives_at_the_new() {
    let app = spawn_app().await;
    let mut acme = app.sse(&token("acme"), "").await;
    let mut globex = app.sse(&token("globex"), "").await;
    let id = app.insert_ticket("acme", "moving").await;
    assert_eq!(acme.changes_until(1).await[0].data["event"], "created");
    app.db
        .execute(
            "update tickets set tenant_id = 'globex' where id::text = $1",
            &[&id],
        )
        .await
        .unwrap();
    let left = acme.changes_until(1).await;
    assert_eq!(left[0].data["event"], "deleted");
    assert_eq!(left[0].data["resource"]["tenant_id"], "acme", "the old row");
    let arrived = globex.changes_until(1).await;
    assert_eq!(arrived[0].data["event"], "created");
    assert_eq!(arrived[0].data["resource"]["id"], id.as_str());
    assert_eq!(arrived[0].data["resource"]["tenant_id"], "globex");
}

#[tokio::test]
async fn a_row_whose_id_changes_is_deleted_under_the_old_id_and_created_under_the_new() {
    let app = spawn_app().await;
    app.db
        .batch_execute(
            "create table codes (code text primary key, tenant_id text not null, label text);
             select changecast.watch('public.codes', 'code', id_column => 'code');",
        )
        .await
        .unwrap();
    let mut stream = app.sse(&token("acme"), "types=code").await;
    app.db
        .batch_execute(
            "insert into codes values ('a', 'acme', 'x');
             update codes set code = 'b' where code = 'a';",
        )
        .await
        .unwrap();
    let mut events = Vec::new();
    while events.len() < 3 {
        events.push(stream.next_within(WAIT).await.expect("three changes"));
    }
    let seen: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e.data["event"].as_str().unwrap().to_owned(),
                e.data["resource"]["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("created".to_owned(), "a".to_owned()),
            ("deleted".to_owned(), "a".to_owned()),
            ("created".to_owned(), "b".to_owned())
        ]
    );
}
