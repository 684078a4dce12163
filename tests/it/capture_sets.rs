//! Capture by statement (migration V14): the statement triggers changecast.capture_set()
//! write exactly what the row trigger changecast.capture() writes, and partitioned
//! tables keep the row trigger, so nothing written to a partition is lost.
//!
//! The property test applies the same random statements to two tables of the same
//! shape, one watched (statement triggers), one with the row trigger attached by hand
//! (as scripts/bench-trigger.sh does), and compares their journal rows statement by
//! statement. The seed is printed; `CHANGECAST_CAPTURE_SEED=<seed>` repeats a run.

use tokio_postgres::NoTls;

use crate::helpers::rng::Rng;
use crate::helpers::*;

async fn fresh_db() -> tokio_postgres::Client {
    connect(&server().fresh_database().await).await
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (db, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    db
}

/// The capture triggers of `table`: (name, function, enabled), by name.
async fn capture_triggers(
    db: &tokio_postgres::Client,
    table: &str,
) -> Vec<(String, String, String)> {
    db.query(
        "select tgname::text, tgfoid::regproc::text, tgenabled::text from pg_trigger
         where tgrelid = $1::text::regclass and tgname like 'changecast_capture%' order by 1",
        &[&table],
    )
    .await
    .unwrap()
    .iter()
    .map(|row| (row.get(0), row.get(1), row.get(2)))
    .collect()
}

/// A table captured by statement: the statement triggers fire in origin and local mode
/// (`O`), the row trigger in replica mode alone (`R`: logical replication's apply fires
/// no statement trigger).
fn statement_triggers() -> Vec<(String, String, String)> {
    let row = (
        "changecast_capture".to_owned(),
        "changecast.capture".to_owned(),
        "R".to_owned(),
    );
    std::iter::once(row)
        .chain(["delete", "insert", "update"].iter().map(|op| {
            (
                format!("changecast_capture_{op}"),
                "changecast.capture_set".to_owned(),
                "O".to_owned(),
            )
        }))
        .collect()
}

/// Journal rows of `resource_type` after journal id `after`, in journal order:
/// (event, tenant, id, resource, old) and the last journal id.
async fn journal_after(
    db: &tokio_postgres::Client,
    resource_type: &str,
    after: i64,
) -> (Vec<String>, i64) {
    let rows = db
        .query(
            "select id, concat_ws(' | ', event, tenant_id, resource_id, resource::text, coalesce(old::text, '-'))
             from changecast.change_log where resource_type = $1 and id > $2 order by id",
            &[&resource_type, &after],
        )
        .await
        .unwrap();
    let last = rows.last().map_or(after, |row| row.get(0));
    (rows.iter().map(|row| row.get(1)).collect(), last)
}

/// SQL that watches `{name}_set` with the statement triggers and `{name}_row` (a copy)
/// through the row trigger alone, as watch() leaves it for replica mode, with the same
/// tenant and id columns and excluded column: two ways to journal the same statements.
fn watch_set_and_row(name: &str, tenant: &str, id: &str, excluded: &str) -> String {
    format!(
        "select changecast.watch('public.{name}_set', '{name}_set', '{tenant}', '{id}', array['{excluded}']);
         select changecast.watch('public.{name}_row', '{name}_row', '{tenant}', '{id}', array['{excluded}']);
         drop trigger changecast_capture_insert on public.{name}_row;
         drop trigger changecast_capture_update on public.{name}_row;
         drop trigger changecast_capture_delete on public.{name}_row;
         alter table public.{name}_row enable always trigger changecast_capture;"
    )
}

/// Rows inserted at once by [`bulk_insert`]: more than changecast.bulk_rows().
const BULK_INSERT_ROWS: i64 = 70;

/// An INSERT of [`BULK_INSERT_ROWS`] rows with the next keys.
fn bulk_insert(next_key: &mut i64) -> String {
    let first = *next_key + 1;
    *next_key += BULK_INSERT_ROWS;
    format!(
        "insert into {{t}} (k, tenant, rid, a, b, secret, mood)
         select g, 't' || (g % 3), g % 8, 'x', g % 4, 's', 'calm'
           from generate_series({first}, {}) g",
        *next_key
    )
}

/// One random statement on table `{t}`: multi-row INSERTs (ids may repeat: the id
/// column is no key), UPDATEs of every kind (no-ops, excluded columns only, id and
/// tenant changes, swaps of ids, nulls), DELETEs.
fn random_statement(rng: &mut Rng, next_key: &mut i64) -> String {
    let tenant = |rng: &mut Rng| match rng.below(20) {
        0 => "null".to_owned(),
        n => format!("'t{}'", n % 3),
    };
    let rid = |rng: &mut Rng| match rng.below(25) {
        0 => "null".to_owned(),
        n => (n % 8).to_string(),
    };
    let text = |rng: &mut Rng| rng.pick(&["null", "'x'", "'y'", "'zz'"]).to_string();
    let filter = |rng: &mut Rng| match rng.below(6) {
        0 => "true".to_owned(),
        1 => format!("k % {} = {}", 2 + rng.below(3), rng.below(2)),
        2 => format!("rid = {}", rng.below(8)),
        3 => format!("tenant = 't{}'", rng.below(3)),
        4 => format!("k > {}", rng.below((*next_key).max(1) as u64)),
        _ => format!("mood = '{}'", rng.pick(&["calm", "glad"])),
    };
    match rng.below(10) {
        // Many rows at once: UPDATEs of at least changecast.bulk_rows() rows are
        // journalled by a statement planned for them.
        0 if rng.below(4) == 0 => bulk_insert(next_key),
        0..=2 => {
            let rows: Vec<String> = (0..1 + rng.below(5))
                .map(|_| {
                    *next_key += 1;
                    format!(
                        "({}, {}, {}, {}, {}, {}, '{}')",
                        next_key,
                        tenant(rng),
                        rid(rng),
                        text(rng),
                        rng.below(4),
                        text(rng),
                        rng.pick(&["calm", "glad"])
                    )
                })
                .collect();
            format!(
                "insert into {{t}} (k, tenant, rid, a, b, secret, mood) values {}",
                rows.join(", ")
            )
        }
        3..=8 => {
            let mut sets = Vec::new();
            for _ in 0..1 + rng.below(3) {
                sets.push(match rng.below(12) {
                    0 => format!("a = {}", text(rng)),
                    1 => "b = b + 1".to_owned(),
                    2 => "b = b".to_owned(),
                    3 => format!("secret = {}", text(rng)),
                    4 => format!("rid = {}", rid(rng)),
                    5 => "rid = 7 - rid".to_owned(),
                    6 => format!("tenant = {}", tenant(rng)),
                    7 => "a = a".to_owned(),
                    8 => "mood = case mood when 'calm' then 'glad'::mood else 'calm'::mood end"
                        .to_owned(),
                    9 => format!("b = {}", rng.below(4)),
                    10 => "secret = secret || 's'".to_owned(),
                    _ => "tenant = case tenant when 't0' then 't1' else tenant end".to_owned(),
                });
            }
            // (One assignment per column.)
            let mut seen = std::collections::HashSet::new();
            sets.retain(|set| seen.insert(set.split(' ').next().unwrap().to_owned()));
            format!("update {{t}} set {} where {}", sets.join(", "), filter(rng))
        }
        _ => format!("delete from {{t}} where {}", filter(rng)),
    }
}

/// changecast.bulk_rows(): from this many rows, an UPDATE is journalled by a statement
/// planned for it (migration V16).
const BULK_ROWS: u64 = 64;

/// Runs `statements` random statements on `public.p_set` (watched: statement triggers)
/// and `public.p_row` (the row trigger) and compares their journals after each.
async fn compare_capture_paths(url: &str, seed: u64, statements: usize, typed: bool) {
    let db = &connect(url).await;
    // `mood` is an enum; owned by a role that is no superuser (`typed`), it sends every
    // row through changecast.row_to_jsonb.
    db.batch_execute(
        "create type public.mood as enum ('calm', 'glad');
         create table public.p_set (k int, tenant text, rid int, a text, b int, secret text,
                                    mood public.mood,
                                    -- (named as the trigger's aliases of transition rows)
                                    o text default 'o', n text default 'n', t text default 't')
             with (autovacuum_enabled = off);
         create table public.p_row (like public.p_set including defaults) with (autovacuum_enabled = off);",
    )
    .await
    .unwrap();
    db.batch_execute(&watch_set_and_row("p", "tenant", "rid", "secret"))
        .await
        .unwrap();
    if typed {
        let owner = format!("changecast_mood_owner_{}", std::process::id());
        db.batch_execute(&format!(
            "do $$ begin
                 if not exists (select from pg_roles where rolname = '{owner}') then
                     create role {owner} nologin;
                 end if;
             end $$;
             alter type public.mood owner to {owner};"
        ))
        .await
        .unwrap();
    }
    assert_eq!(
        capture_triggers(db, "public.p_set").await,
        statement_triggers()
    );
    // Page pruning removes dead rows that no snapshot of the database still needs, so
    // where the next statement puts its rows depends on the snapshots other sessions
    // hold at that moment, which differ between the statement on p_set and the one on
    // p_row. A snapshot held open for the whole run keeps every dead row of both tables,
    // so both place their rows alike and the journals compare in order.
    let holder = connect(url).await;
    holder
        .batch_execute(
            "begin isolation level repeatable read;
             select 1;",
        )
        .await
        .unwrap();

    let mut rng = Rng::new(seed);
    let mut next_key = 0;
    let (mut after_set, mut after_row) = (0, 0);
    let (mut events, mut refused) = (0, 0);
    let (mut compared_in_order, mut compared_as_sets) = (0, 0);
    let mut bulk_updates = 0;
    for n in 0..statements {
        // Halfway, whatever the seed: rows enough for an UPDATE of the bulk path, and one.
        let statement = if n == statements / 2 {
            bulk_insert(&mut next_key)
        } else if n == statements / 2 + 1 {
            format!(
                "update {{t}} set b = b + 1 where k > {}",
                next_key - BULK_INSERT_ROWS
            )
        } else {
            random_statement(&mut rng, &mut next_key)
        };
        // The statements read the tables in their physical order, which is the same for
        // both unless something outside the test placed a row elsewhere: then only the
        // statement's rows, not their order, can be compared.
        let same_order: bool = db
            .query_one(
                "select (select array_agg(k order by ctid) from public.p_set)
                        is not distinct from (select array_agg(k order by ctid) from public.p_row)",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let on_set = db
            .execute(&statement.replace("{t}", "public.p_set"), &[])
            .await;
        let on_row = db
            .execute(&statement.replace("{t}", "public.p_row"), &[])
            .await;
        let context = format!("seed {seed}, statement {n}: {statement}");
        match (&on_set, &on_row) {
            (Ok(set), Ok(row)) => {
                assert_eq!(set, row, "{context}: rows changed");
                if statement.starts_with("update") && *set >= BULK_ROWS {
                    bulk_updates += 1;
                }
            }
            (Err(set), Err(row)) => {
                let (set, row) = (set.as_db_error().unwrap(), row.as_db_error().unwrap());
                assert_eq!(set.code(), row.code(), "{context}");
                assert_eq!(
                    set.message().replace("p_set", "p_row"),
                    row.message(),
                    "{context}"
                );
                assert_eq!(set.hint(), row.hint(), "{context}");
                refused += 1;
            }
            _ => panic!("{context}: statement trigger {on_set:?}, row trigger {on_row:?}"),
        }
        let (set, last_set) = journal_after(db, "p_set", after_set).await;
        let (row, last_row) = journal_after(db, "p_row", after_row).await;
        if same_order {
            assert_eq!(set, row, "{context}");
            compared_in_order += 1;
        } else {
            let (mut set, mut row) = (set.clone(), row.clone());
            set.sort();
            row.sort();
            assert_eq!(set, row, "{context} (rows in another physical order)");
            compared_as_sets += 1;
        }
        events += set.len();
        (after_set, after_row) = (last_set, last_row);
    }
    eprintln!(
        "capture paths agree: seed {seed}, {statements} statements ({compared_as_sets} with rows in another physical order, {bulk_updates} UPDATEs of {BULK_ROWS} rows or more), {events} events, {refused} refused (typed: {typed})"
    );
    // (A table with a type a non-superuser owns journals its UPDATEs pair by pair.)
    assert!(
        typed || bulk_updates > 0,
        "no UPDATE changed {BULK_ROWS} rows or more"
    );
    assert!(
        compared_in_order > statements / 2,
        "only {compared_in_order} of {statements} statements found both tables in the same physical order"
    );
    assert!(
        events > statements / 2,
        "the statements wrote too few events to compare: {events}"
    );
    assert!(refused > 0, "no statement met a null tenant or id");
}

fn seed() -> u64 {
    let seed = std::env::var("CHANGECAST_CAPTURE_SEED")
        .ok()
        .map(|s| s.parse().expect("CHANGECAST_CAPTURE_SEED: a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("capture_sets seed: {seed} (repeat with CHANGECAST_CAPTURE_SEED={seed})");
    seed
}

#[tokio::test]
async fn statement_and_row_capture_write_the_same_journal_for_random_statements() {
    let url = server().fresh_database().await;
    compare_capture_paths(&url, seed(), 300, false).await;
}

#[tokio::test]
async fn statement_and_row_capture_agree_for_a_type_a_non_superuser_owns() {
    let url = server().fresh_database().await;
    compare_capture_paths(&url, seed(), 120, true).await;
}

#[tokio::test]
async fn a_moved_row_is_deleted_before_it_is_created_and_swapped_ids_pair_by_row() {
    let db = fresh_db().await;
    db.batch_execute(
        "create table public.pairs (k int primary key, tenant_id text, id int, v text);
         select changecast.watch('public.pairs', 'pair');
         insert into public.pairs values (1, 'a', 1, 'one'), (2, 'a', 2, 'two');
         delete from changecast.change_log;
         update public.pairs set id = 3 - id;
         update public.pairs set v = v;
         update public.pairs set tenant_id = 'b', v = 'moved' where k = 1;",
    )
    .await
    .unwrap();
    let (journal, _) = journal_after(&db, "pair", 0).await;
    assert_eq!(
        journal,
        [
            r#"deleted | a | 1 | {"k": 1, "v": "one", "id": 1, "tenant_id": "a"} | -"#,
            r#"created | a | 2 | {"k": 1, "v": "one", "id": 2, "tenant_id": "a"} | -"#,
            r#"deleted | a | 2 | {"k": 2, "v": "two", "id": 2, "tenant_id": "a"} | -"#,
            r#"created | a | 1 | {"k": 2, "v": "two", "id": 1, "tenant_id": "a"} | -"#,
            r#"deleted | a | 2 | {"k": 1, "v": "one", "id": 2, "tenant_id": "a"} | -"#,
            r#"created | b | 2 | {"k": 1, "v": "moved", "id": 2, "tenant_id": "b"} | -"#,
        ]
    );
}

#[tokio::test]
async fn statement_capture_refuses_a_table_not_registered_with_its_arguments() {
    let db = fresh_db().await;
    db.batch_execute(
        "create table public.stray (id text, tenant_id text);
         create trigger changecast_capture_insert after insert on public.stray
             referencing new table as changecast_new
             for each statement execute function changecast.capture_set('ticket', 'tenant_id', 'id');
         create trigger stray_capture after insert on public.tickets
             referencing new table as changecast_new
             for each statement execute function changecast.capture_set('ticket', 'title', 'id');",
    )
    .await
    .unwrap();
    for statement in [
        "insert into public.stray values ('s1', 'acme')",
        "insert into public.tickets (tenant_id, title) values ('acme', 'x')",
    ] {
        let error = db.batch_execute(statement).await.unwrap_err();
        let error = error.as_db_error().unwrap();
        assert_eq!(
            *error.code(),
            tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE,
            "{statement}: {}",
            error.message()
        );
    }
    let journal: i64 = db
        .query_one("select count(*) from changecast.change_log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(journal, 0);
}

#[tokio::test]
async fn watch_again_gives_a_row_trigger_table_the_statement_triggers_and_unwatch_drops_them() {
    let db = fresh_db().await;
    // A table as a migration before V14 left it, without its owner: the row trigger.
    db.batch_execute(
        "create table public.legacy (id text, tenant_id text, v int);
         select changecast.watch('public.legacy', 'legacy');
         drop trigger changecast_capture_insert on public.legacy;
         drop trigger changecast_capture_update on public.legacy;
         drop trigger changecast_capture_delete on public.legacy;
         alter table public.legacy enable always trigger changecast_capture;",
    )
    .await
    .unwrap();
    db.batch_execute("select changecast.watch('public.legacy', 'legacy')")
        .await
        .unwrap();
    assert_eq!(
        capture_triggers(&db, "public.legacy").await,
        statement_triggers()
    );
    db.batch_execute("insert into public.legacy values ('l1', 'acme', 1), ('l2', 'acme', 2)")
        .await
        .unwrap();
    let (journal, _) = journal_after(&db, "legacy", 0).await;
    assert_eq!(journal.len(), 2, "{journal:?}");
    let unwatched: bool = db
        .query_one("select changecast.unwatch('public.legacy')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(unwatched);
    assert_eq!(capture_triggers(&db, "public.legacy").await, []);
}

#[tokio::test]
async fn a_partitioned_table_keeps_the_row_trigger_so_writes_to_a_later_partition_are_captured() {
    let db = fresh_db().await;
    db.batch_execute(
        "create table public.readings (id text, tenant_id text, v int) partition by list (tenant_id);
         create table public.readings_acme partition of public.readings for values in ('acme');
         select changecast.watch('public.readings', 'reading');
         create table public.readings_globex partition of public.readings for values in ('globex');
         create table public.readings_initech (like public.readings);
         alter table public.readings attach partition public.readings_initech for values in ('initech');
         insert into public.readings values ('r1', 'acme', 1), ('r2', 'globex', 2);
         insert into public.readings_globex values ('r3', 'globex', 3);
         insert into public.readings_initech values ('r4', 'initech', 4);
         update public.readings_globex set v = v + 10;
         update public.readings set tenant_id = 'initech' where id = 'r1';
         delete from public.readings_initech where id = 'r4';",
    )
    .await
    .unwrap();
    for table in [
        "public.readings",
        "public.readings_acme",
        "public.readings_globex",
        "public.readings_initech",
    ] {
        assert_eq!(
            capture_triggers(&db, table).await,
            [(
                "changecast_capture".to_owned(),
                "changecast.capture".to_owned(),
                "A".to_owned()
            )],
            "{table}"
        );
    }
    let (journal, _) = journal_after(&db, "reading", 0).await;
    let events: Vec<String> = journal
        .iter()
        .map(|row| row.split(" | ").take(3).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        events,
        [
            "created acme r1",
            "created globex r2",
            "created globex r3",
            "created initech r4",
            "updated globex r2",
            "updated globex r3",
            "deleted acme r1",
            "created initech r1",
            "deleted initech r4",
        ]
    );
}

/// A statement that changes no row is refused nothing, as under the row trigger (which
/// never fires for it): not even in a REPEATABLE READ transaction whose snapshot predates
/// a column added since, where one that changes a row is refused.
#[tokio::test]
async fn a_statement_that_changes_no_row_is_refused_nothing() {
    let url = server().fresh_database().await;
    let connect = || async {
        let (db, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
        tokio::spawn(connection);
        db
    };
    let (db, other) = (connect().await, connect().await);
    db.batch_execute(
        "create table public.quiet (id text, tenant_id text, v int);
         select changecast.watch('public.quiet', 'quiet');
         insert into public.quiet values ('q1', 'acme', 1);",
    )
    .await
    .unwrap();
    db.batch_execute("begin isolation level repeatable read; select 1")
        .await
        .unwrap();
    other
        .batch_execute("alter table public.quiet add column note text")
        .await
        .unwrap();
    for statement in [
        "update public.quiet set v = 2 where id = 'none'",
        "delete from public.quiet where id = 'none'",
        "insert into public.quiet select * from public.quiet where false",
    ] {
        db.batch_execute(statement)
            .await
            .unwrap_or_else(|error| panic!("{statement}: {error}"));
    }
    let refused = db
        .batch_execute("update public.quiet set v = 2 where id = 'q1'")
        .await
        .expect_err("a row changed under a snapshot older than the table's columns");
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE),
        "{refused}"
    );
    db.batch_execute("rollback").await.unwrap();
}

/// A bulk UPDATE (changecast.bulk_rows() rows or more) compares some columns by their
/// type's own equality and the others as jsonb: both must find the changes the row
/// trigger finds, in the same order, for values whose jsonb equality and text differ
/// (1.0 and 1.00, "1" and 1, SQL null and a json null, -0 and 0).
#[tokio::test]
async fn a_bulk_update_finds_the_changes_the_row_trigger_finds_for_every_kind_of_column() {
    let url = server().fresh_database().await;
    let db = connect(&url).await;
    db.batch_execute(
        "create domain public.label as text;
         create type public.mood2 as enum ('calm', 'glad');
         create table public.kinds_set (k int, tenant_id text, id int, num numeric, f float8,
                                        js jsonb, j json, l public.label, c char(3), ts timestamptz,
                                        iv interval, u uuid, b bool, arr int[], m public.mood2, note text,
                                        v varchar(8), s2 int2, i8 int8, d date, t time, ttz timetz,
                                        tsn timestamp)
             with (autovacuum_enabled = off);
         create table public.kinds_row (like public.kinds_set) with (autovacuum_enabled = off);",
    )
    .await
    .unwrap();
    db.batch_execute(&watch_set_and_row("kinds", "tenant_id", "id", "note"))
        .await
        .unwrap();
    let insert = "insert into {t}
        select g, 't' || (g % 3), g, 1.0, 0, '\"1\"', case when g % 2 = 0 then '{\"a\": 1.0}'::json end, 'x',
               'ab', '2024-01-01 00:00:00+00', '1 day', md5(g::text)::uuid, g % 2 = 0, array[g],
               'calm', 'n', 'v', g % 7, g::int8 * 1000000000, '2024-01-01', '12:00', '12:00+02',
               case when g % 3 = 0 then 'infinity'::timestamp else '2024-01-01 12:00' end
          from generate_series(1, 200) g";
    let updates = [
        // Equal as jsonb, other text: no change, nothing written.
        "update {t} set num = 1.00",
        "update {t} set num = 1.0, f = -f, j = coalesce(j, 'null')",
        "update {t} set j = case when k % 2 = 0 then '{\"a\": 1.00}'::json end",
        "update {t} set note = 'excluded only'",
        // Equal as jsonb, other text, beside a change: not among the previous values.
        "update {t} set num = num * 1.000, j = coalesce(j, 'null'), l = l || 'z'",
        // Other jsonb ("1" against 1), same text.
        "update {t} set js = '1' where k % 3 <> 0",
        "update {t} set iv = '24 hours', num = 2.50 where k % 2 = 0",
        "update {t} set l = l || 'y', c = 'a', ts = ts + interval '1 microsecond', b = not b",
        "update {t} set arr = array[k, 1], m = 'glad', u = null where k > 10",
        // Moves among changes: deleted right before created, in row order.
        "update {t} set id = 201 - id, num = 3 where k % 4 <> 0",
        "update {t} set tenant_id = case when k % 5 = 0 then 'moved' else tenant_id end, c = 'b'",
        "update {t} set f = 1.5",
        // Compared by their type's equality: values to null and back, infinity, the
        // same instant in another zone (timetz keeps its offset: other JSON).
        "update {t} set v = case when k % 2 = 0 then null else v end, s2 = -s2, i8 = i8 + 1",
        "update {t} set v = coalesce(v, 'w'), d = case when k % 4 = 0 then 'infinity' else d end",
        "update {t} set tsn = case when k % 3 = 0 then '-infinity' else tsn end, t = null",
        "update {t} set ttz = '13:00+03', t = '12:00', d = d",
    ];
    let written = compare_bulk_updates(&url, &db, "kinds", insert, &updates).await;
    // (What each statement writes is the row trigger's to say; these two write nothing.)
    assert_eq!((written[0], written[3]), (0, 0), "{written:?}");
    assert!(written.iter().sum::<usize>() > 400, "{written:?}");
}

/// A bulk UPDATE compares each column by a rule that holds exactly when its JSON is
/// equal (migration V19): text of a collation that calls other strings equal, a domain
/// over it, char without a length (whose equality ignores trailing blanks) and numeric
/// ids (other text, same number) must be found changed or moved as the row trigger
/// finds them; columns named as the statement names its own, a dropped column and a
/// table wider than one jsonb_build_object() call must not confuse it.
#[tokio::test(flavor = "multi_thread")]
async fn a_bulk_update_compares_columns_as_their_json_does_whatever_their_names_collations_and_width(
) {
    let url = server().fresh_database().await;
    let db = connect(&url).await;
    let wide: Vec<String> = (1..=55).map(|i| format!("w{i} int")).collect();
    db.batch_execute(&format!(
        "create collation public.nocase (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
         create domain public.nocase_text as text collate public.nocase;
         create table public.shapes_set (k int, tenant_id text collate public.nocase, gone int, id numeric, pos int, new_pos int,
                                         cur text, o_1 text, n_1 text, changed_1 bool, seq int, e int,
                                         ci text collate public.nocase, cd public.nocase_text, pc bpchar,
                                         note text, {})
             with (autovacuum_enabled = off);
         alter table public.shapes_set drop column gone;
         create table public.shapes_row (like public.shapes_set) with (autovacuum_enabled = off);",
        wide.join(", ")
    ))
    .await
    .unwrap();
    db.batch_execute(&watch_set_and_row("shapes", "tenant_id", "id", "note"))
        .await
        .unwrap();
    let wide_values: Vec<String> = (1..=55).map(|i| format!("g + {i}")).collect();
    let insert = format!(
        "insert into {{t}}
         select g, 't' || (g % 3), g, g, g, 'c', 'o', 'n', true, g, g, 'abc', 'abc', 'p', 'n', {}
           from generate_series(1, 100) g",
        wide_values.join(", ")
    );
    let updates = [
        // Equal under the column's collation, other JSON: changed.
        "update {t} set ci = upper(ci) where k % 2 = 0 or k > 20",
        "update {t} set cd = upper(cd), ci = ci",
        // Equal as bpchar, other JSON: changed.
        "update {t} set pc = 'p ' where k % 3 <> 0",
        // A tenant equal under its collation, other JSON: moved.
        "update {t} set tenant_id = case when k % 2 = 0 then upper(tenant_id) else tenant_id end",
        // A numeric id of other text: moved where anything changed, else nothing.
        "update {t} set id = id * 1.0",
        "update {t} set id = id * 1.00, w1 = w1 + 1 where k % 2 = 0 or k > 20",
        // Columns named as the statement's own.
        "update {t} set pos = pos + 1, new_pos = -new_pos, cur = 'd', o_1 = null, n_1 = 'm', changed_1 = false, seq = 0, e = 1",
        // Many columns at once, and moves of rows wider than one jsonb_build_object() call.
        "update {t} set w2 = -w2, w30 = w30 + 1, w55 = null, pos = pos",
        "update {t} set tenant_id = 'moved', w54 = 0 where k % 4 <> 0",
        "update {t} set id = id + 1000, w53 = 1",
    ];
    let written = compare_bulk_updates(&url, &db, "shapes", &insert, &updates).await;
    // (What each statement writes is the row trigger's to say; that changes under
    // collation and padding are found, and the id's new text alone writes nothing, is
    // what this test is for.)
    assert_eq!(
        (written[0], written[1], written[2], written[3], written[4]),
        (90, 100, 67, 2 * 50, 0),
        "{written:?}"
    );
    assert_eq!((written[5], written[9]), (2 * 90, 2 * 100), "{written:?}");
}

/// A table wider than changecast.bulk_columns() columns: its bulk UPDATE's pairs would
/// not fit in a select list column by column, so they are compared as jsonb, and must
/// still find what the row trigger finds.
#[tokio::test(flavor = "multi_thread")]
async fn a_bulk_update_of_a_table_too_wide_to_pair_by_column_finds_what_the_row_trigger_finds() {
    let url = server().fresh_database().await;
    let db = connect(&url).await;
    let columns: Vec<String> = (1..=1000).map(|i| format!("w{i} int")).collect();
    db.batch_execute(&format!(
        "create table public.broad_set (k int, tenant_id text, id int, note text, {})
             with (autovacuum_enabled = off);
         create table public.broad_row (like public.broad_set) with (autovacuum_enabled = off);",
        columns.join(", ")
    ))
    .await
    .unwrap();
    db.batch_execute(&watch_set_and_row("broad", "tenant_id", "id", "note"))
        .await
        .unwrap();
    let insert = "insert into {t} (k, tenant_id, id, note, w1, w1000)
                  select g, 't' || (g % 3), g, 'n', g, g from generate_series(1, 100) g";
    let updates = [
        "update {t} set w1 = w1 + 1, w500 = 5 where k % 2 = 0 or k > 10",
        "update {t} set note = 'excluded only'",
        "update {t} set id = id + 100, w1000 = null where k % 4 <> 0",
    ];
    let written = compare_bulk_updates(&url, &db, "broad", insert, &updates).await;
    assert_eq!(written, [95, 0, 2 * 75], "{written:?}");
}

/// Runs `insert` and then each of `updates` (each of at least changecast.bulk_rows()
/// rows) on `{name}_set` and `{name}_row` (see [`watch_set_and_row`]), asserting after
/// each UPDATE that both journalled the same rows; returns how many each UPDATE wrote.
async fn compare_bulk_updates(
    url: &str,
    db: &tokio_postgres::Client,
    name: &str,
    insert: &str,
    updates: &[&str],
) -> Vec<usize> {
    let (set_table, row_table) = (format!("public.{name}_set"), format!("public.{name}_row"));
    let (set_type, row_type) = (format!("{name}_set"), format!("{name}_row"));
    // Types a role other than a superuser owns would send every row through
    // changecast.row_to_jsonb, pair by pair: not the path under test.
    let typed: bool = db
        .query_one(
            "select exists (select from changecast.owned_columns($1::text::regclass))",
            &[&set_table],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        !typed,
        "the test's types are owned by a role that is no superuser: run it as one"
    );
    // A snapshot held open keeps every dead row of both tables, so both UPDATEs read
    // their rows in the same order (see compare_capture_paths()).
    let holder = connect(url).await;
    holder
        .batch_execute("begin isolation level repeatable read; select 1;")
        .await
        .unwrap();
    db.batch_execute(&insert.replace("{t}", &set_table))
        .await
        .unwrap();
    db.batch_execute(&insert.replace("{t}", &row_table))
        .await
        .unwrap();
    let (_, mut after_set) = journal_after(db, &set_type, 0).await;
    let (_, mut after_row) = journal_after(db, &row_type, 0).await;
    let mut written = Vec::new();
    for update in updates {
        let on_set = db
            .execute(&update.replace("{t}", &set_table), &[])
            .await
            .unwrap_or_else(|error| panic!("{update}: {error:?}"));
        let on_row = db
            .execute(&update.replace("{t}", &row_table), &[])
            .await
            .unwrap();
        assert_eq!(on_set, on_row, "{update}");
        assert!(
            on_set >= BULK_ROWS,
            "{update}: {on_set} rows, no bulk UPDATE"
        );
        let (set, last_set) = journal_after(db, &set_type, after_set).await;
        let (row, last_row) = journal_after(db, &row_type, after_row).await;
        assert_eq!(set, row, "{update}");
        written.push(set.len());
        (after_set, after_row) = (last_set, last_row);
    }
    written
}

/// Statements of one row take the statement trigger's single-row path (migration V20):
/// what it writes, and what it refuses, must be what the row trigger writes and refuses,
/// for every kind of change of one row: values equal as jsonb but of other text, excluded
/// columns (also once renamed), moves of tenant or id (also from a null key), null keys.
#[tokio::test]
async fn single_row_statements_journal_what_the_row_trigger_journals() {
    let url = server().fresh_database().await;
    let db = connect(&url).await;
    db.batch_execute(
        "create table public.one_set (k int, tenant_id text, id int, num numeric, j json, v text,
                                      secret text)
             with (autovacuum_enabled = off);
         create table public.one_row (like public.one_set) with (autovacuum_enabled = off);
         insert into public.one_set values (1, 'a', 1, 1.0, null, 'v', 's'), (2, 'a', 2, 2, '[1]', 'w', 's'),
                                           (3, null, 3, 3, null, 'x', 's'), (4, 'a', null, 4, null, 'y', 's');
         insert into public.one_row select * from public.one_set;",
    )
    .await
    .unwrap();
    db.batch_execute(&watch_set_and_row("one", "tenant_id", "id", "secret"))
        .await
        .unwrap();
    let statements = [
        "insert into {t} values (5, 'b', 5, 5, null, 'z', 's')",
        "insert into {t} values (6, null, 6, 6, null, 'z', 's')",
        "insert into {t} values (7, 'b', null, 7, null, 'z', 's')",
        "insert into {t} select * from {t} where false",
        // No change as jsonb, or of an excluded column only: nothing written.
        "update {t} set num = 1.00 where k = 1",
        "update {t} set v = v, j = j where k = 2",
        "update {t} set secret = 'other' where k = 1",
        "update {t} set v = 'changed' where k = 1",
        "update {t} set num = num * 1.000, v = 'again', secret = 't' where k = 1",
        "update {t} set j = coalesce(j, 'null') where k = 1",
        "update {t} set j = '[1.0]', num = 2.0 where k = 2",
        // Moves: deleted then created; from a null key, created alone.
        "update {t} set id = 10, v = 'moved' where k = 2",
        "update {t} set tenant_id = 'c' where k = 2",
        "update {t} set tenant_id = 'a' where k = 3",
        "update {t} set id = 4 where k = 4",
        // Null keys refused, tenant first.
        "update {t} set tenant_id = null where k = 5",
        "update {t} set id = null, tenant_id = null where k = 5",
        "update {t} set id = null where k = 5",
        "update {t} set v = 'none' where k = 99",
        "alter table {t} rename column secret to hidden",
        "update {t} set hidden = 'renamed' where k = 1",
        "update {t} set hidden = 'renamed and', v = 'changed' where k = 1",
        "delete from {t} where k = 1",
        "delete from {t} where k = 99",
        "update {t} set id = null where k = 4",
        "delete from {t} where k = 4",
    ];
    let (mut after_set, mut after_row) = (0, 0);
    let mut written = Vec::new();
    for statement in statements {
        let on_set = db
            .execute(&statement.replace("{t}", "public.one_set"), &[])
            .await;
        let on_row = db
            .execute(&statement.replace("{t}", "public.one_row"), &[])
            .await;
        match (&on_set, &on_row) {
            (Ok(set), Ok(row)) => assert_eq!(set, row, "{statement}: rows changed"),
            (Err(set), Err(row)) => {
                let (set, row) = (set.as_db_error().unwrap(), row.as_db_error().unwrap());
                assert_eq!(set.code(), row.code(), "{statement}");
                assert_eq!(
                    set.message().replace("one_set", "one_row"),
                    row.message(),
                    "{statement}"
                );
                assert_eq!(set.hint(), row.hint(), "{statement}");
            }
            _ => panic!("{statement}: statement trigger {on_set:?}, row trigger {on_row:?}"),
        }
        let (set, last_set) = journal_after(&db, "one_set", after_set).await;
        let (row, last_row) = journal_after(&db, "one_row", after_row).await;
        assert_eq!(set, row, "{statement}");
        written.push((statement, on_set.is_ok(), set.len()));
        (after_set, after_row) = (last_set, last_row);
    }
    let written_by = |statement: &str| {
        let (_, ok, rows) = written.iter().find(|(s, ..)| *s == statement).unwrap();
        (*ok, *rows)
    };
    assert_eq!(
        written_by("update {t} set num = 1.00 where k = 1"),
        (true, 0)
    );
    assert_eq!(
        written_by("update {t} set secret = 'other' where k = 1"),
        (true, 0)
    );
    assert_eq!(
        written_by("update {t} set hidden = 'renamed' where k = 1"),
        (true, 0)
    );
    assert_eq!(
        written_by("update {t} set id = 10, v = 'moved' where k = 2"),
        (true, 2)
    );
    assert_eq!(
        written_by("update {t} set tenant_id = 'a' where k = 3"),
        (true, 1)
    );
    assert_eq!(
        written_by("update {t} set tenant_id = null where k = 5"),
        (false, 0)
    );
    // The single-row path leaves the writer's transaction id (and snapshot) to the
    // journal's defaults, evaluated by its INSERT: the writing transaction's.
    db.batch_execute("begin; insert into public.one_set values (8, 'b', 8, 8, null, 'z', 's')")
        .await
        .unwrap();
    let (rows, own): (i64, bool) = db
        .query_one(
            "select count(*), coalesce(bool_and(xid = pg_current_xact_id()), false)
               from changecast.change_log where resource_type = 'one_set' and id > $1",
            &[&after_set],
        )
        .await
        .map(|row| (row.get(0), row.get(1)))
        .unwrap();
    db.batch_execute("commit").await.unwrap();
    assert_eq!((rows, own), (1, true));
}
