//! What a table owner can do to the service through its own table (API.md §2): rename
//! an excluded column, or give a column a type with a cast to json of its own making.

use serde_json::json;

use crate::helpers::*;

/// Every journal row's `resource` and `old`, as text.
async fn journal_text(app: &TestApp) -> String {
    app.db
        .query(
            "select resource::text || coalesce(old::text, '') from changecast.change_log",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A non-superuser role that may create in `public`, a session of it, and its table
/// `public.<calls>` where its trap functions record who ran them (anyone may insert).
async fn owner_with_calls_table(
    app: &TestApp,
    what: &str,
    calls: &str,
) -> (Role, tokio_postgres::Client) {
    let role = Role::create(app, what).await;
    app.db
        .batch_execute(&format!("grant create on schema public to {}", role.name))
        .await
        .unwrap();
    let owner = role.connect(app).await;
    owner
        .batch_execute(&format!(
            "create table public.{calls} (who text);
             grant insert on public.{calls} to public;"
        ))
        .await
        .unwrap();
    (role, owner)
}

/// Roles other than the owner's that ran its trap functions (which record
/// `current_user` into `public.<table>`).
async fn trap_callers(app: &TestApp, table: &str, owner: &Role) -> Vec<String> {
    app.db
        .query(
            &format!("select distinct who from public.{table} where who <> $1"),
            &[&owner.name],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[tokio::test]
async fn an_excluded_column_stays_excluded_when_renamed_and_renamed_back() {
    let app = spawn_app().await;
    app.db
        .batch_execute(
            "create table public.accounts (id text primary key, tenant_id text not null, name text,
                                          password_hash text);
             select changecast.watch('public.accounts', 'account',
                                     exclude_columns => array['password_hash']);",
        )
        .await
        .unwrap();
    let t = token("acme");
    let mut sse = app.sse(&t, "types=account").await;
    app.db
        .batch_execute(
            "insert into public.accounts values ('a1', 'acme', 'Ann', 'HASH-ONE');
             alter table public.accounts rename column password_hash to pw_hash;
             update public.accounts set pw_hash = 'HASH-TWO' where id = 'a1';
             update public.accounts set name = 'Anne', pw_hash = 'HASH-THREE' where id = 'a1';
             insert into public.accounts values ('a2', 'acme', 'Bob', 'HASH-FOUR');
             delete from public.accounts where id = 'a1';",
        )
        .await
        .unwrap();
    let mut events = next_events(&mut sse, 4).await;
    let (_, renamed_snapshot) = app.get("/v1/snapshot?types=account", Some(&t)).await;
    assert_eq!(
        renamed_snapshot["resources"]["account"],
        json!([{"id": "a2", "tenant_id": "acme", "name": "Bob"}]),
        "{renamed_snapshot}"
    );
    // A filter on the renamed secret finds nothing: the column is not there.
    let (_, probe) = app
        .get(
            "/v1/snapshot?types=account&filter=pw_hash=eq.HASH-FOUR",
            Some(&t),
        )
        .await;
    assert_eq!(probe["resources"]["account"], json!([]), "{probe}");

    app.db
        .batch_execute(
            "alter table public.accounts rename column pw_hash to password_hash;
             update public.accounts set password_hash = 'HASH-FIVE' where id = 'a2';
             update public.accounts set name = 'Bobby', password_hash = 'HASH-SIX' where id = 'a2';",
        )
        .await
        .unwrap();
    events.extend(next_events(&mut sse, 1).await);
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e.data["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["created", "updated", "created", "deleted", "updated"],
        "a secret-only update emits nothing, under either name"
    );
    assert_eq!(events[1].data["old"], json!({"name": "Ann"}));
    assert_eq!(events[4].data["changed"], json!(["name"]));
    let (_, snapshot) = app.get("/v1/snapshot?types=account", Some(&t)).await;
    assert_eq!(
        snapshot["resources"]["account"],
        json!([{"id": "a2", "tenant_id": "acme", "name": "Bobby"}]),
        "{snapshot}"
    );

    let everything = format!(
        "{} {renamed_snapshot} {snapshot} {}",
        serde_json::to_string(&events.iter().map(|e| &e.data).collect::<Vec<_>>()).unwrap(),
        journal_text(&app).await
    );
    for secret in ["password_hash", "pw_hash", "HASH-"] {
        assert!(
            !everything.contains(secret),
            "{secret} left the table: {everything}"
        );
    }
}

/// A non-superuser table owner gives a column an enum type of its own with casts to json
/// and to text whose function records who runs it and tries to make the owner a
/// superuser. Writes through the capture trigger and snapshots (the service's role is a
/// superuser here, as in the embedded default) never run it with the service's rights; a
/// `to_jsonb` planted on the service's search_path is not called either. Rows still read
/// as they would without the casts.
#[tokio::test]
async fn a_table_owners_casts_and_functions_never_run_as_the_service_role() {
    let app = spawn_app().await;
    let (role, owner) = owner_with_calls_table(&app, "castowner", "cast_calls").await;
    owner
        .batch_execute(&format!(
            "create function public.record_and_escalate() returns void language plpgsql as $$
             begin
                 insert into public.cast_calls values (current_user);
                 begin
                     execute 'alter role {name} superuser';
                 exception when others then null;
                 end;
             end $$;
             grant execute on function public.record_and_escalate() to public;
             create type public.mood as enum ('happy', 'sad');
             create function public.mood_json(public.mood) returns json language plpgsql as $$
             begin perform public.record_and_escalate(); return '\"cast\"'::json; end $$;
             create cast (public.mood as json) with function public.mood_json(public.mood);
             create function public.mood_text(public.mood) returns text language plpgsql as $$
             begin perform public.record_and_escalate(); return 'cast'; end $$;
             create cast (public.mood as text) with function public.mood_text(public.mood);
             create table public.diaries (id text primary key, tenant_id text not null,
                                          mood public.mood, moods public.mood[]);
             create function public.to_jsonb(public.diaries) returns jsonb language plpgsql as $$
             begin perform public.record_and_escalate(); return '{{}}'::jsonb; end $$;
             grant execute on function public.mood_json(public.mood), public.mood_text(public.mood),
                                       public.to_jsonb(public.diaries) to public;",
            name = role.name
        ))
        .await
        .unwrap();
    // The trap is armed: to_jsonb of the type runs the owner's cast.
    let armed: String = owner
        .query_one("select to_jsonb('happy'::public.mood)::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(armed, "\"cast\"");

    app.db
        .batch_execute("select changecast.watch('public.diaries', 'diary')")
        .await
        .unwrap();
    let t = token("acme");
    let mut sse = app.sse(&t, "types=diary").await;
    owner
        .batch_execute(
            "insert into public.diaries values ('d1', 'acme', 'happy', '{happy,NULL,sad}');
             insert into public.diaries values ('d2', 'acme', null, null);
             update public.diaries set mood = 'sad' where id = 'd1';
             delete from public.diaries where id = 'd2';",
        )
        .await
        .unwrap();
    let events = next_events(&mut sse, 4).await;
    assert_eq!(
        events[0].data["resource"],
        json!({"id": "d1", "tenant_id": "acme", "mood": "happy", "moods": ["happy", null, "sad"]})
    );
    assert_eq!(events[2].data["old"], json!({"mood": "happy"}));
    assert_eq!(events[3].data["event"], "deleted");
    let (status, snapshot) = app.get("/v1/snapshot?types=diary", Some(&t)).await;
    assert_eq!(status, 200, "{snapshot}");
    assert_eq!(
        snapshot["resources"]["diary"],
        json!([{"id": "d1", "tenant_id": "acme", "mood": "sad", "moods": ["happy", null, "sad"]}])
    );
    let (status, filtered) = app
        .get("/v1/snapshot?types=diary&filter=mood=eq.sad", Some(&t))
        .await;
    assert_eq!(status, 200, "{filtered}");
    assert_eq!(filtered["resources"]["diary"][0]["id"], "d1");
    owner
        .batch_execute("truncate public.diaries")
        .await
        .unwrap();

    assert_eq!(
        trap_callers(&app, "cast_calls", &role).await,
        Vec::<String>::new(),
        "the owner's code ran with another role's rights"
    );
    assert!(!role.is_superuser(&app).await, "the owner became superuser");
    role.drop(&app).await;
}

/// A writer whose REPEATABLE READ snapshot predates the table's newest columns sees the
/// catalog as it was, while the row it writes has every column: the owner adds a column,
/// adds one of its own type with a cast, drops the first, and writes through a
/// transaction that began before. The write is refused as a serialization failure, or
/// journalled without the cast; the cast never runs with the service's rights.
#[tokio::test]
async fn a_snapshot_older_than_the_tables_columns_runs_no_cast_of_theirs() {
    let app = spawn_app().await;
    let (role, owner) = owner_with_calls_table(&app, "staleowner", "stale_calls").await;
    owner
        .batch_execute(
            "create type public.tone as enum ('calm', 'loud');
             create function public.tone_json(public.tone) returns json language plpgsql as $$
             begin insert into public.stale_calls values (current_user); return '\"cast\"'::json; end $$;
             grant execute on function public.tone_json(public.tone) to public;
             create cast (public.tone as json) with function public.tone_json(public.tone);
             create table public.notes (id text primary key, tenant_id text not null);",
        )
        .await
        .unwrap();
    app.db
        .batch_execute("select changecast.watch('public.notes', 'note')")
        .await
        .unwrap();
    // The writer's snapshot is taken on another table: a lock on this one would hold
    // the owner's changes back until it ends.
    let writer = role.connect(&app).await;
    writer
        .batch_execute(
            "begin isolation level repeatable read;
             select count(*) from public.stale_calls;",
        )
        .await
        .unwrap();
    owner
        .batch_execute(
            "alter table public.notes add column spacer text;
             alter table public.notes add column tone public.tone default 'loud';
             alter table public.notes drop column spacer;",
        )
        .await
        .unwrap();
    let written = writer
        .batch_execute(
            "insert into public.notes (id, tenant_id, tone) values ('n1', 'acme', 'calm')",
        )
        .await;
    match written {
        Ok(()) => writer.batch_execute("commit").await.unwrap(),
        Err(error) => {
            assert_eq!(
                error.code(),
                Some(&tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE),
                "{error}"
            );
            writer.batch_execute("rollback").await.unwrap();
        }
    }
    assert_eq!(
        trap_callers(&app, "stale_calls", &role).await,
        Vec::<String>::new(),
        "the owner's cast ran as another role"
    );
    role.drop(&app).await;
}

/// A composite type its owner changes after the table was watched (an attribute of a
/// type with a cast of its own), and a composite tenant column with a cast to text: the
/// table's own definition never changes, the owner's code never runs as the service.
#[tokio::test]
async fn an_owners_composite_types_run_none_of_its_casts_as_the_service_role() {
    let app = spawn_app().await;
    let (role, owner) = owner_with_calls_table(&app, "compowner", "comp_calls").await;
    owner
        .batch_execute(
            "create type public.parts as (label text);
             create table public.boxes (id text primary key, tenant_id text not null, contents public.parts);
             create type public.owner_tenant as (name text);
             create function public.owner_tenant_text(public.owner_tenant) returns text language plpgsql as $$
             begin insert into public.comp_calls values (current_user); return 'acme'; end $$;
             grant execute on function public.owner_tenant_text(public.owner_tenant) to public;
             create cast (public.owner_tenant as text) with function public.owner_tenant_text(public.owner_tenant);
             create table public.crates (id text primary key, tenant_id public.owner_tenant not null);",
        )
        .await
        .unwrap();
    app.db
        .batch_execute("select changecast.watch('public.boxes', 'box')")
        .await
        .unwrap();
    let refused = app
        .db
        .batch_execute("select changecast.watch('public.crates', 'crate')")
        .await
        .expect_err("a tenant column of an owner's composite type is refused");
    let message = refused
        .as_db_error()
        .map(|e| e.message())
        .unwrap_or_default();
    assert!(message.contains("tenant column"), "{refused:?}");
    let t = token("acme");
    let mut sse = app.sse(&t, "types=box").await;
    owner
        .batch_execute("insert into public.boxes values ('b1', 'acme', row('first'))")
        .await
        .unwrap();
    owner
        .batch_execute(
            "create type public.flag as enum ('up', 'down');
             create function public.flag_json(public.flag) returns json language plpgsql as $$
             begin insert into public.comp_calls values (current_user); return '\"cast\"'::json; end $$;
             grant execute on function public.flag_json(public.flag) to public;
             create cast (public.flag as json) with function public.flag_json(public.flag);
             alter type public.parts add attribute flag public.flag;
             update public.boxes set contents = row('second', 'up')::public.parts where id = 'b1';",
        )
        .await
        .unwrap();
    let events = next_events(&mut sse, 2).await;
    assert_eq!(events[1].data["resource"]["contents"], "(second,up)");
    let (status, snapshot) = app.get("/v1/snapshot?types=box", Some(&t)).await;
    assert_eq!(status, 200, "{snapshot}");
    assert_eq!(snapshot["resources"]["box"][0]["contents"], "(second,up)");
    owner.batch_execute("truncate public.boxes").await.unwrap();
    assert_eq!(
        trap_callers(&app, "comp_calls", &role).await,
        Vec::<String>::new()
    );
    assert!(!role.is_superuser(&app).await);
    role.drop(&app).await;
}

/// An excluded column renamed while a REPEATABLE READ writer's snapshot still shows its
/// old name, and one dropped and added again under its old name: neither secret reaches
/// the journal.
#[tokio::test]
async fn excluded_secrets_stay_out_across_old_snapshots_and_columns_added_again() {
    let app = spawn_app().await;
    app.db
        .batch_execute(
            "create table public.logins (id text primary key, tenant_id text not null,
                                         note text, password_hash text);
             select changecast.watch('public.logins', 'login', exclude_columns => array['password_hash']);
             insert into public.logins values ('l1', 'acme', 'one', 'HASH-ONE');",
        )
        .await
        .unwrap();
    let writer = app.connect_db().await;
    writer
        .batch_execute("begin isolation level repeatable read; select 1 from changecast.cursor_key")
        .await
        .unwrap();
    app.db
        .batch_execute("alter table public.logins rename column password_hash to pw_hash")
        .await
        .unwrap();
    match writer
        .batch_execute(
            "update public.logins set note = 'two', pw_hash = 'HASH-TWO' where id = 'l1'",
        )
        .await
    {
        Ok(()) => writer.batch_execute("commit").await.unwrap(),
        Err(error) => {
            assert_eq!(
                error.code(),
                Some(&tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE),
                "{error}"
            );
            writer.batch_execute("rollback").await.unwrap();
        }
    }
    app.db
        .batch_execute(
            "alter table public.logins rename column pw_hash to retired_hash;
             alter table public.logins add column password_hash text;
             update public.logins set note = 'three', password_hash = 'HASH-THREE' where id = 'l1';
             insert into public.logins values ('l2', 'acme', 'four', 'HASH-OLD', 'HASH-FOUR');",
        )
        .await
        .unwrap();
    let journal = journal_text(&app).await;
    assert!(journal.contains("three"), "{journal}");
    assert!(
        !journal.contains("HASH-"),
        "a secret reached the journal: {journal}"
    );
    let (status, snapshot) = app
        .get("/v1/snapshot?types=login", Some(&token("acme")))
        .await;
    assert_eq!(status, 200, "{snapshot}");
    assert!(!snapshot.to_string().contains("HASH-"), "{snapshot}");
}

/// A partitioned table: watched, written through its partitions, snapshotted and
/// truncated.
#[tokio::test]
async fn a_partitioned_table_is_watched_snapshotted_and_truncated() {
    let app = spawn_app().await;
    app.db
        .batch_execute(
            "create table public.readings (id text, tenant_id text not null, value int,
                                           primary key (tenant_id, id)) partition by list (tenant_id);
             create table public.readings_acme partition of public.readings for values in ('acme');
             create table public.readings_rest partition of public.readings default;
             select changecast.watch('public.readings', 'reading');",
        )
        .await
        .unwrap();
    let t = token("acme");
    let mut sse = app.sse(&t, "types=reading").await;
    app.db
        .batch_execute(
            "insert into public.readings values ('r1', 'acme', 1), ('r2', 'globex', 2);
             update public.readings set value = 3 where id = 'r1';",
        )
        .await
        .unwrap();
    let events = next_events(&mut sse, 2).await;
    assert_eq!(events[0].data["event"], "created");
    assert_eq!(events[1].data["old"], json!({"value": 1}));
    let (status, snapshot) = app.get("/v1/snapshot", Some(&t)).await;
    assert_eq!(status, 200, "{snapshot}");
    assert_eq!(snapshot["resources"]["reading"][0]["value"], 3);
    app.db
        .batch_execute("truncate public.readings")
        .await
        .unwrap();
    let resync = next_events(&mut sse, 1).await;
    assert_eq!(resync[0].data["reason"], "truncated");
}
