//! The database side of security, as an attacker and an
//! operator meet it: second database roles, planted functions, forged triggers, replica
//! mode, TRUNCATE, collations, dropped tables and error messages.

use std::collections::HashSet;

use serde_json::{json, Value};
use tokio_postgres::error::SqlState;

use crate::helpers::*;

/// The SQLSTATE of a statement that must fail.
async fn refused(db: &tokio_postgres::Client, sql: &str) -> SqlState {
    match db.batch_execute(sql).await {
        Ok(()) => panic!("accepted: {sql}"),
        Err(error) => error
            .code()
            .unwrap_or_else(|| panic!("{sql}: {error}"))
            .clone(),
    }
}

/// The next event of `stream`, whatever its kind (bounded by [`WAIT`]).
async fn next(stream: &mut SseStream) -> SseEvent {
    stream.next_within(WAIT).await.expect("no event in time")
}

/// Asserts that the next event is the `resource_change` of resource `id`.
/// The events (name and `reason`) that arrive before the row change of `id`.
async fn events_before_change(stream: &mut SseStream, id: &str) -> Vec<(String, Value)> {
    let mut seen = Vec::new();
    loop {
        let event = next(stream).await;
        if event.event == "resource_change" && event.data["resource"]["id"] == id {
            return seen;
        }
        seen.push((event.event, event.data["reason"].clone()));
    }
}

/// Resumes from `cursor`, writes a ticket, and returns the ids of the resyncs that come
/// before it.
async fn resyncs_before_a_new_change(app: &TestApp, types: &str, cursor: &str) -> Vec<String> {
    let mut resumed = app.sse_with(&token("acme"), types, Some(cursor)).await;
    let sentinel = app.insert_ticket("acme", "sentinel").await;
    let mut resyncs = Vec::new();
    loop {
        let event = next(&mut resumed).await;
        if event.data["resource"]["id"] == sentinel.as_str() {
            return resyncs;
        }
        if event.event == "resync" {
            resyncs.push(event.id.expect("a resync carries an id"));
        }
    }
}

async fn assert_next_change(stream: &mut SseStream, id: &str) {
    let event = next(stream).await;
    assert_eq!(event.event, "resource_change", "{event:?}");
    assert_eq!(event.data["resource"]["id"], id, "{event:?}");
}

/// `watch()`/`unwatch()` call `format()`; with `public` writable, a low-privilege
/// role plants look-alikes there that would run as whoever calls them.
#[tokio::test]
async fn watch_and_unwatch_ignore_functions_planted_on_the_callers_search_path() {
    let app = spawn_app().await;
    app.db
        .batch_execute("grant create on schema public to public")
        .await
        .unwrap();
    let attacker = Role::create(&app, "planter").await;
    let planter = attacker.connect(&app).await;
    planter
        .batch_execute(
            "create table public.planted_calls (who text);
             grant insert on public.planted_calls to public;
             create function public.format(text, regclass, text, text, text) returns text
                 language sql as $$ insert into public.planted_calls values (current_user)
                                    returning 'select 1' $$;
             create function public.format(text, regclass) returns text
                 language sql as $$ insert into public.planted_calls values (current_user)
                                    returning 'select 1' $$;",
        )
        .await
        .unwrap();
    let planted_calls = || async {
        app.db
            .query_one("select count(*) from public.planted_calls", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    // The trap is armed: on the caller's default search_path the plants win.
    app.db
        .batch_execute(
            "select format('%s %L %L %L', 'public.tickets'::regclass, 'a', 'b', 'c');
             select format('%s', 'public.tickets'::regclass);",
        )
        .await
        .unwrap();
    assert_eq!(
        planted_calls().await,
        2,
        "the planted functions are not reached"
    );

    app.db
        .batch_execute(
            "create table public.invoices (id text primary key, tenant_id text not null);
             select changecast.watch('public.invoices', 'invoice');",
        )
        .await
        .unwrap();
    let mut stream = app.sse(&token("acme"), "types=invoice").await;
    app.db
        .batch_execute("insert into public.invoices values ('inv-1', 'acme')")
        .await
        .unwrap();
    assert_next_change(&mut stream, "inv-1").await;
    let unwatched: bool = app
        .db
        .query_one("select changecast.unwatch('public.invoices')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(unwatched);
    let triggers: i64 = app
        .db
        .query_one(
            "select count(*) from pg_trigger where tgrelid = 'public.invoices'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(triggers, 0, "unwatch() left a trigger behind");
    assert_eq!(
        planted_calls().await,
        2,
        "watch() or unwatch() ran a planted function"
    );
    attacker.drop(&app).await;
}

/// A role with USAGE on `changecast` (as `publish()` callers will have) cannot
/// put events into another tenant's stream: not by attaching the capture trigger, not by
/// writing the journal or the watch list, not by watching a table of its own, and a
/// capture trigger attached by hand to an unwatched table (or with other arguments)
/// refuses to run.
#[tokio::test]
async fn an_application_role_cannot_forge_events_into_another_tenants_stream() {
    let app = spawn_app().await;
    let mut victim = app.sse(&token("victim"), "").await;
    let role = Role::create(&app, "forger").await;
    app.db
        .batch_execute(&format!(
            "grant usage on schema changecast to {0};
             grant create on schema public to {0};",
            role.name
        ))
        .await
        .unwrap();
    let forger = role.connect(&app).await;

    let executable: Vec<String> = app
        .db
        .query(
            "select p.oid::regprocedure::text from pg_proc p
             where p.pronamespace = 'changecast'::regnamespace
               and has_function_privilege($1, p.oid, 'execute')",
            &[&role.name],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        executable,
        Vec::<String>::new(),
        "executable without a grant"
    );

    forger
        .batch_execute(
            "create temp table forged (id text, tenant_id text);
             create table public.own_forged (id text primary key, tenant_id text);",
        )
        .await
        .unwrap();
    for attempt in [
        "create trigger forged after insert on forged for each row
             execute function changecast.capture('ticket', 'tenant_id', 'id')",
        "create trigger forged after insert on public.own_forged for each row
             execute function changecast.capture('ticket', 'tenant_id', 'id')",
        "create trigger forged before truncate on public.own_forged for each statement
             execute function changecast.capture_truncate('ticket', 'tenant_id', 'id')",
        "insert into changecast.change_log (tenant_id, resource_type, event, resource_id, resource)
             values ('victim', 'ticket', 'created', 'forged', '{}')",
        "insert into changecast.watched values ('public.own_forged', 'ticket_x', 'tenant_id', 'id')",
        "update changecast.watched set tenant_column = 'id'",
        "select changecast.watch('public.own_forged', 'forged')",
        "select changecast.attach('public.own_forged', 'ticket', 'tenant_id', 'id')",
        "select changecast.register('public.own_forged', 'ticket', 'tenant_id', 'id', '{}')",
        "insert into changecast.watch_requests (table_name, resource_type, tenant_column, id_column, exclude_columns)
             values ('public.own_forged', 'forged', 'tenant_id', 'id', '{}')",
        "insert into changecast.watch_requests (table_name, unwatch) values ('public.tickets', true)",
    ] {
        assert_eq!(
            refused(&forger, attempt).await,
            SqlState::INSUFFICIENT_PRIVILEGE,
            "{attempt}"
        );
    }

    // Were a capture trigger attached by hand, it still refuses rows of a table that is
    // not watched with exactly its arguments.
    app.db
        .batch_execute(&format!(
            "create trigger forged after insert on public.own_forged for each row
                 execute function changecast.capture('ticket', 'tenant_id', 'id');
             create trigger forged after insert on public.agents for each row
                 execute function changecast.capture('ticket', 'tenant_id', 'id');
             grant insert on public.agents to {};",
            role.name
        ))
        .await
        .unwrap();
    for attempt in [
        "insert into public.own_forged values ('forged-1', 'victim')",
        "insert into public.agents (tenant_id, name) values ('victim', 'forged-2')",
    ] {
        assert_eq!(
            refused(&forger, attempt).await,
            SqlState::INSUFFICIENT_PRIVILEGE,
            "{attempt}"
        );
    }
    app.db
        .batch_execute("drop trigger forged on public.agents")
        .await
        .unwrap();

    let sentinel = app.insert_ticket("victim", "sentinel").await;
    assert_next_change(&mut victim, &sentinel).await;
    role.drop(&app).await;
}

/// `watch()` and `unwatch()` act as the calling role, which must hold the privileges of
/// the table's owner: TRIGGER and SELECT on it are not enough (a role granted those
/// could otherwise publish the table's rows to subscribers).
#[tokio::test]
async fn watch_requires_the_privileges_of_the_tables_owner() {
    let app = spawn_app().await;
    let role = Role::create(&app, "watcher").await;
    app.db
        .batch_execute(&format!(
            "grant usage on schema changecast to {0};
             grant execute on function changecast.watch(regclass, text, text, text, text[]),
                                       changecast.unwatch(regclass) to {0};
             create table public.secrets (id text primary key, tenant_id text not null);
             insert into public.secrets values ('s1', 'acme');
             grant trigger, select on public.secrets to {0};",
            role.name
        ))
        .await
        .unwrap();
    let watcher = role.connect(&app).await;
    let watch = "select changecast.watch('public.secrets', 'secret')";

    assert_eq!(
        refused(&watcher, watch).await,
        SqlState::INSUFFICIENT_PRIVILEGE
    );
    assert_eq!(
        refused(&watcher, "select changecast.unwatch('public.tickets')").await,
        SqlState::INSUFFICIENT_PRIVILEGE
    );
    app.db
        .batch_execute(&format!(
            "alter table public.secrets owner to {}",
            role.name
        ))
        .await
        .unwrap();
    watcher.batch_execute(watch).await.unwrap();

    let mut stream = app.sse(&token("acme"), "types=secret").await;
    app.db
        .batch_execute("insert into public.secrets values ('s2', 'acme')")
        .await
        .unwrap();
    assert_next_change(&mut stream, "s2").await;
    let unwatched: bool = watcher
        .query_one("select changecast.unwatch('public.secrets')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(unwatched);
    role.drop(&app).await;
}

/// The triggers fire ALWAYS, also under `session_replication_role = replica`
/// (logical replication apply, `pg_restore --disable-triggers`).
#[tokio::test]
async fn writes_in_replica_mode_are_still_delivered() {
    let app = spawn_app().await;
    let mut stream = app.sse(&token("acme"), "").await;
    let replica = app.connect_db().await;
    replica
        .batch_execute("set session_replication_role = replica")
        .await
        .unwrap();
    let id: String = replica
        .query_one(
            "insert into tickets (tenant_id, title) values ('acme', 'replicated') returning id::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_next_change(&mut stream, &id).await;
    // Captured once: the next change is the next write's, not the same row again.
    let origin_id: String = app
        .db
        .query_one(
            "insert into tickets (tenant_id, title) values ('acme', 'local') returning id::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_next_change(&mut stream, &origin_id).await;

    let enabled: Vec<String> = app
        .db
        .query(
            "select tgenabled::text from pg_trigger t join changecast.watched w on w.table_name = t.tgrelid
             order by w.table_name, t.tgname",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    // Per example table: the row trigger in replica mode, the three statement triggers
    // in origin and local mode, the TRUNCATE trigger always.
    assert_eq!(enabled.len(), 15, "{enabled:?}");
    for table in enabled.chunks(5) {
        assert_eq!(table, ["R", "O", "O", "O", "A"], "{enabled:?}");
    }
}

/// TRUNCATE resyncs every subscriber of each affected tenant (live and on
/// replay, SSE and WS, whatever its `events=`), nobody else, and resuming from the
/// resync's id loses nothing written after it.
#[tokio::test]
async fn truncate_resyncs_the_subscribers_of_every_affected_tenant() {
    let app = spawn_app().await;
    let mut acme = app.sse(&token("acme"), "types=ticket&events=created").await;
    let early = app.insert_ticket("acme", "early").await;
    let before = next(&mut acme).await.id.expect("changes carry an id");
    app.insert_ticket("globex", "other").await;
    app.insert_agent("initech", "no tickets").await;
    // Published by the tailer before the streams below start, so they begin after it.
    app.until_counted(&token("initech"), "agent", 1).await;

    let mut globex = app.sse(&token("globex"), "").await;
    let mut initech = app.sse(&token("initech"), "").await;
    let mut acme_agents = app.sse(&token("acme"), "types=agent").await;
    let mut ws = app.ws(&token("acme")).await;
    ws.expect("connection_established").await;
    ws.subscribe(json!({"resource_types": ["ticket"], "events": ["updated"]}))
        .await;

    app.db.batch_execute("truncate tickets").await.unwrap();

    let mut resync_ids = Vec::new();
    for stream in [&mut acme, &mut globex] {
        let event = next(stream).await;
        assert_eq!(event.event, "resync", "{event:?}");
        assert_eq!(event.data["reason"], "truncated");
        assert_eq!(event.id.as_deref(), event.data["id"].as_str());
        resync_ids.push(event.id.unwrap());
    }
    let resync = ws.expect("resync").await;
    assert_eq!(resync["reason"], "truncated");

    // Not affected: another tenant, and the same tenant's subscriber of other types.
    let agent = app.insert_agent("initech", "sentinel").await;
    assert_next_change(&mut initech, &agent).await;
    let agent = app.insert_agent("acme", "sentinel").await;
    assert_next_change(&mut acme_agents, &agent).await;

    // Resuming from the resync: everything written since, and no second resync.
    let after = app.insert_ticket("acme", "after").await;
    let mut resumed = app
        .sse_with(&token("acme"), "types=ticket", Some(&resync_ids[0]))
        .await;
    assert_next_change(&mut resumed, &after).await;

    // A replay across the truncation resyncs too (SSE and WS), then continues.
    let mut replayed = app
        .sse_with(&token("acme"), "types=ticket", Some(&before))
        .await;
    let seen = events_before_change(&mut replayed, &after).await;
    assert!(
        seen.contains(&("resync".into(), json!("truncated"))),
        "no resync on replay: {seen:?}"
    );
    let mut ws = app.ws(&token("acme")).await;
    ws.expect("connection_established").await;
    ws.subscribe(json!({"resource_types": ["ticket"], "last_event_id": before}))
        .await;
    let resync = ws.next_of_type("resync").await;
    assert_eq!(resync["reason"], "truncated");
    let changes = ws.receive_ids(&HashSet::from([after.clone()])).await;
    assert!(changes.contains(&after), "{changes:?}");
    assert!(
        !changes.contains(&early),
        "a truncated row came back: {changes:?}"
    );
}

/// A transaction that truncates two watched tables writes two markers, and a
/// subscriber of both types gets one resync for it, live and on replay. Resuming from
/// that resync brings no other: resuming from each resync in turn would otherwise
/// alternate between the two for ever.
#[tokio::test]
async fn one_transaction_truncating_two_tables_resyncs_once() {
    let app = spawn_app().await;
    let mut acme = app.sse(&token("acme"), "types=ticket,agent").await;
    app.insert_agent("acme", "agent").await;
    let before = app.insert_ticket("acme", "before").await;
    let before_id = loop {
        let event = next(&mut acme).await;
        if event.data["resource"]["id"] == before.as_str() {
            break event.id.expect("changes carry an id");
        }
    };

    app.db
        .batch_execute("truncate tickets, agents")
        .await
        .unwrap();
    let markers: i64 = app
        .db
        .query_one(
            "select count(*) from changecast.change_log where event = 'truncated' and tenant_id = 'acme'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(markers, 2, "one marker per table");
    let event = next(&mut acme).await;
    assert_eq!(event.event, "resync", "{event:?}");
    let live_resync = event.id.expect("a resync carries an id");
    let after = app.insert_ticket("acme", "after").await;
    assert_eq!(events_before_change(&mut acme, &after).await, vec![]);

    let mut replayed = app
        .sse_with(&token("acme"), "types=ticket,agent", Some(&before_id))
        .await;
    let mut resyncs = Vec::new();
    loop {
        let event = next(&mut replayed).await;
        if event.data["resource"]["id"] == after.as_str() {
            break;
        }
        if event.event == "resync" {
            resyncs.push(event.id.expect("a resync carries an id"));
        }
    }
    assert_eq!(resyncs.len(), 1, "{resyncs:?}");

    for resync in [&live_resync, &resyncs[0]] {
        let again = resyncs_before_a_new_change(&app, "types=ticket,agent", resync).await;
        assert_eq!(again, Vec::<String>::new());
    }
}

/// Two concurrent transactions truncate one watched table each: neither writer's
/// snapshot sees the other, so a resync carrying its marker's own cursor would, resumed
/// from, replay the other transaction's marker, whose resync would bring the first back
/// in turn, for ever. Resuming from the resync a subscriber got brings at most one more,
/// and resuming from that one none.
#[tokio::test]
async fn resuming_from_resyncs_of_concurrent_truncations_ends() {
    let app = spawn_app().await;
    let types = "types=ticket,agent";
    let mut acme = app.sse(&token("acme"), types).await;
    app.insert_agent("acme", "agent").await;
    let ticket = app.insert_ticket("acme", "ticket").await;
    while next(&mut acme).await.data["resource"]["id"] != ticket.as_str() {}

    let first = app.connect_db().await;
    let second = app.connect_db().await;
    first
        .batch_execute("begin; truncate tickets")
        .await
        .unwrap();
    second
        .batch_execute("begin; truncate agents")
        .await
        .unwrap();
    first.batch_execute("commit").await.unwrap();
    second.batch_execute("commit").await.unwrap();
    let mut resyncs = Vec::new();
    for _ in 0..2 {
        let event = next(&mut acme).await;
        assert_eq!(event.event, "resync", "{event:?}");
        resyncs.push(event.id.expect("a resync carries an id"));
    }
    let after = app.insert_ticket("acme", "after").await;
    assert_eq!(events_before_change(&mut acme, &after).await, vec![]);

    for resync in &resyncs {
        // Follow the resyncs a client reconnecting from each would get.
        let mut from = resync.clone();
        for hop in 0.. {
            assert!(hop < 2, "resuming from resyncs does not end: {resyncs:?}");
            match resyncs_before_a_new_change(&app, types, &from).await.pop() {
                Some(id) => from = id,
                None => break,
            }
        }
    }
}

/// A journal row of an event this build does not know (as a newer version sharing the
/// database could write) resyncs the subscribers of its type in its tenant, live and on
/// replay, and nobody else; the stream goes on, and resuming from the resync does not
/// bring it again.
#[tokio::test]
async fn a_journal_row_of_an_unknown_kind_resyncs_the_subscribers_of_its_type() {
    let app = spawn_app().await;
    let mut acme = app.sse(&token("acme"), "types=ticket").await;
    let mut acme_agents = app.sse(&token("acme"), "types=agent").await;
    let mut globex = app.sse(&token("globex"), "types=ticket").await;
    let before = app.insert_ticket("acme", "before").await;
    let event = next(&mut acme).await;
    assert_eq!(event.data["resource"]["id"], before.as_str(), "{event:?}");
    let before_id = event.id.expect("changes carry an id");

    app.db
        .batch_execute(
            "insert into changecast.change_log (tenant_id, resource_type, event, resource_id, resource)
             values ('acme', 'ticket', 'archived', 'x', '{}');
             select pg_notify('changecast', '')",
        )
        .await
        .unwrap();
    let event = next(&mut acme).await;
    assert_eq!(event.event, "resync", "{event:?}");
    assert_eq!(event.data["reason"], "unknown_change");
    let resync_id = event.id.expect("a resync carries an id");

    let after = app.insert_ticket("acme", "after").await;
    assert_next_change(&mut acme, &after).await;
    let agent = app.insert_agent("acme", "sentinel").await;
    assert_next_change(&mut acme_agents, &agent).await;
    let other = app.insert_ticket("globex", "sentinel").await;
    assert_next_change(&mut globex, &other).await;

    let mut replayed = app
        .sse_with(&token("acme"), "types=ticket", Some(&before_id))
        .await;
    // (Resuming from a change may bring that change again, with the same id.)
    let seen = events_before_change(&mut replayed, &after).await;
    assert_eq!(
        seen.last(),
        Some(&("resync".to_owned(), json!("unknown_change"))),
        "{seen:?}"
    );
    let mut resumed = app
        .sse_with(&token("acme"), "types=ticket", Some(&resync_id))
        .await;
    assert_next_change(&mut resumed, &after).await;
}

/// A nondeterministic (case-insensitive) collation on the tenant column must not
/// merge tenants, neither in snapshots nor in truncation markers.
#[tokio::test]
async fn tenants_differing_in_case_stay_apart_under_a_case_insensitive_collation() {
    let app = spawn_app().await;
    let icu: bool = app
        .db
        .query_one(
            "select exists (select 1 from pg_collation where collprovider = 'i')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    if !icu {
        eprintln!("skipped: this PostgreSQL has no ICU, so no nondeterministic collation");
        return;
    }
    app.db
        .batch_execute(
            "create collation ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
             create table public.accounts (id text primary key, tenant_id text collate ci not null);
             create index on public.accounts (tenant_id);
             select changecast.watch('public.accounts', 'account');
             insert into public.accounts values ('lower', 'acme'), ('upper', 'ACME');",
        )
        .await
        .unwrap();
    for (tenant, id) in [("acme", "lower"), ("ACME", "upper")] {
        let (status, body) = app
            .get("/v1/snapshot?types=account", Some(&token(tenant)))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["resources"]["account"],
            json!([{"id": id, "tenant_id": tenant}])
        );
    }

    app.db.batch_execute("truncate accounts").await.unwrap();
    let marked: HashSet<String> = app
        .db
        .query(
            "select tenant_id from changecast.change_log where event = 'truncated'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(marked, HashSet::from(["acme".into(), "ACME".into()]));
}

/// A dropped table's entry neither blocks its resource type nor names a table
/// that took over its oid.
#[tokio::test]
async fn a_dropped_tables_resource_type_can_be_watched_again() {
    let app = spawn_app().await;
    let ddl = "create table public.notes (id text primary key, tenant_id text not null);
               select changecast.watch('public.notes', 'note');";
    app.db.batch_execute(ddl).await.unwrap();
    app.db
        .batch_execute("drop table public.notes")
        .await
        .unwrap();
    let (status, body) = app.get("/v1/events?types=note", Some(&token("acme"))).await;
    assert_eq!(
        (status, &body["error"]),
        (400, &json!("unknown_resource_type"))
    );

    app.db.batch_execute(ddl).await.unwrap();
    let mut stream = app.sse(&token("acme"), "types=note").await;
    app.db
        .batch_execute("insert into public.notes values ('n1', 'acme')")
        .await
        .unwrap();
    assert_next_change(&mut stream, "n1").await;

    // An entry whose oid now belongs to a table without our trigger (what a reused oid
    // looks like) is not watched, and the next watch() removes it.
    app.db
        .batch_execute(
            "create table public.unrelated (id text primary key, tenant_id text not null);
             insert into changecast.watched values ('public.unrelated', 'ghost', 'tenant_id', 'id');",
        )
        .await
        .unwrap();
    let (status, _) = app
        .get("/v1/events?types=ghost", Some(&token("acme")))
        .await;
    assert_eq!(status, 400);
    let (_, snapshot) = app
        .get("/v1/snapshot?types=note", Some(&token("acme")))
        .await;
    assert_eq!(snapshot["resources"]["note"][0]["id"], "n1");
    app.db
        .batch_execute("select changecast.watch('public.notes', 'note')")
        .await
        .unwrap();
    let types: Vec<String> = app
        .db
        .query(
            "select resource_type from changecast.watched order by 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(types, ["agent", "note", "profile", "ticket"]);
}

/// Refusing an unknown resource type tells nothing about the others.
#[tokio::test]
async fn an_unknown_resource_type_error_names_no_other_type() {
    let app = spawn_app().await;
    let (status, body) = app
        .get("/v1/events?types=ticket,payroll", Some(&token("acme")))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "unknown_resource_type");
    assert_eq!(body["message"], r#"unknown resource type "payroll""#);

    let mut ws = app.ws(&token("acme")).await;
    ws.expect("connection_established").await;
    ws.send_json(json!({"type": "subscribe", "resource_types": ["payroll"]}))
        .await;
    let error = ws.expect("error").await;
    assert_eq!(error["code"], "unknown_resource_type");
    assert_eq!(error["message"], r#"unknown resource type "payroll""#);
}
