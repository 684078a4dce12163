//! The journal partitioned by id: partitions created ahead of the writers and removed
//! whole once past the retention, the DEFAULT partition for ids beyond them, long
//! transactions holding their partition back, and the conversion of a journal that
//! already holds rows — with the received resource ids compared as sets.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use changecast::journal::pruner::{prune_with, Partitioning};
use changecast::journal::{Cursor, CursorKey, CursorScope};
use changecast::tenant::TenantId;
use tokio_postgres::NoTls;

use crate::helpers::*;

/// Transaction ids are the cluster's: one test's long transaction holds every other's
/// horizon back. The tests of this module run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Small partitions, so that a test's few rows span several.
const SMALL: Partitioning = Partitioning {
    min_span: 10,
    max_default_rows: 10_000,
    lock_timeout: Duration::from_millis(100),
};
/// [`SMALL`], waiting for locks longer than a test's writes take, however loaded the
/// machine.
const PATIENT: Partitioning = Partitioning {
    lock_timeout: WAIT,
    ..SMALL
};
const RETENTION: Duration = Duration::from_secs(3600);

/// A partition of the journal: name, bounds, default or not.
#[derive(Debug, Clone, PartialEq)]
struct Partition {
    name: String,
    lower: Option<i64>,
    upper: Option<i64>,
    is_default: bool,
}

async fn partitions(db: &tokio_postgres::Client) -> Vec<Partition> {
    db.query(
        "select partition::text, lower, upper, is_default from changecast.journal_partitions
         order by is_default, lower nulls first",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|row| Partition {
        name: row.get(0),
        lower: row.get(1),
        upper: row.get(2),
        is_default: row.get(3),
    })
    .collect()
}

/// The range partitions that start at or after `next` (no row yet), in order.
async fn partitions_ahead(db: &tokio_postgres::Client, next: i64) -> Vec<Partition> {
    partitions(db)
        .await
        .into_iter()
        .filter(|p| !p.is_default && p.lower.is_some_and(|lower| lower >= next))
        .collect()
}

/// Rows of the journal per partition that holds any.
async fn rows_in(db: &tokio_postgres::Client, partition: &str) -> i64 {
    db.query_one(&format!("select count(*) from {partition}"), &[])
        .await
        .unwrap()
        .get(0)
}

/// A tick taken now, dated `hours_ago`: its horizon is what the pruner's own would be
/// (every transaction still running holds it back).
async fn tick_dated(db: &tokio_postgres::Client, hours_ago: i32) {
    db.execute(
        "insert into changecast.journal_ticks (taken_at, horizon)
         values (now() - make_interval(hours => $1), pg_snapshot_xmin(pg_current_snapshot()))",
        &[&hours_ago],
    )
    .await
    .unwrap();
}

/// Reads changes until every id of `expected` arrived (bounded by [`WAIT`]); returns
/// the ids received and the cursor of the last change. Panics on a `resync`.
async fn receive_with_cursor(
    stream: &mut SseStream,
    expected: &HashSet<String>,
) -> (HashSet<String>, Option<String>) {
    let mut received = HashSet::new();
    let mut cursor = None;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !expected.is_subset(&received) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(event) = stream.next_within(left).await else {
            break;
        };
        assert_ne!(event.event, "resync", "{:?}", event.data);
        if event.event == "resource_change" {
            received.insert(event.data["resource"]["id"].as_str().unwrap().to_owned());
            cursor = event.id.clone();
        }
    }
    (received, cursor)
}

async fn pool(app: &TestApp) -> deadpool_postgres::Pool {
    changecast::db::pool(&app.db_url, 2, Duration::from_secs(30)).unwrap()
}

#[tokio::test]
async fn partitions_are_created_ahead_and_removed_whole_after_the_retention_losing_nothing() {
    let _serial = SERIAL.lock().await;
    let app = spawn_app().await;
    let pool = pool(&app).await;
    let t = token("acme");
    let mut live = app.sse(&t, "").await;

    prune_with(&pool, RETENTION, SMALL).await.unwrap();
    let next = next_id(&app.db).await;
    let ahead = partitions_ahead(&app.db, next).await;
    let covered = ahead.iter().filter_map(|p| p.upper).max().unwrap();
    assert!(
        covered >= next + 2 * SMALL.min_span,
        "partitions created two spans ahead of {next}: {ahead:?}"
    );

    // Old changes, enough to fill the partitions created (and some in the DEFAULT one
    // below and above them).
    let mut old = HashSet::new();
    let mut covered = covered;
    for _ in 0..2 {
        while next_id(&app.db).await < covered {
            old.extend(app.insert_tickets("acme", 7).await);
        }
        // Nothing is past the retention yet: the run only creates partitions.
        assert_eq!(prune_with(&pool, RETENTION, SMALL).await.unwrap(), 0);
        covered = partitions(&app.db)
            .await
            .iter()
            .filter_map(|p| p.upper)
            .max()
            .unwrap();
    }
    let (received, _) = receive_with_cursor(&mut live, &old).await;
    assert_nothing_lost(&old, &received, &HashSet::new());
    let holding: Vec<String> = {
        let mut holding = Vec::new();
        for partition in partitions(&app.db).await {
            if !partition.is_default && rows_in(&app.db, &partition.name).await > 0 {
                holding.push(partition.name);
            }
        }
        holding
    };
    assert!(
        holding.len() >= 2,
        "old changes in range partitions: {holding:?}"
    );

    // Everything so far committed "two hours ago"; then newer changes, a cursor after
    // the first of them (its snapshot sees every old one), and more.
    app.age_committed_changes(2).await;
    let first_new: HashSet<String> = app.insert_tickets("acme", 4).await.into_iter().collect();
    let (_, cursor) = receive_with_cursor(&mut live, &first_new).await;
    let cursor = cursor.unwrap();
    let mut new = HashSet::new();
    for _ in 0..2 {
        new.extend(app.insert_tickets("acme", 4).await);
    }
    let (received, _) = receive_with_cursor(&mut live, &new).await;
    assert_nothing_lost(&new, &received, &HashSet::new());

    let pruned = prune_with(&pool, RETENTION, SMALL).await.unwrap();
    assert_eq!(pruned, old.len() as u64, "every old change, no new one");
    let left = partitions(&app.db).await;
    for name in &holding {
        assert!(
            left.iter().all(|p| &p.name != name),
            "{name} held only old changes: it is gone ({left:?})"
        );
    }
    let journal: i64 = app
        .db
        .query_one("select count(*) from changecast.change_log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(journal, (first_new.len() + new.len()) as i64);
    assert!(
        left.iter()
            .filter(|p| !p.is_default)
            .filter_map(|p| p.upper)
            .max()
            .unwrap()
            >= next_id(&app.db).await + 2 * SMALL.min_span,
        "partitions are kept ahead: {left:?}"
    );

    // A cursor minted after the old changes resumes with exactly the newer ones.
    let mut resumed = app.sse_with(&t, "", Some(&cursor)).await;
    let (received, _) = receive_with_cursor(&mut resumed, &new).await;
    assert_nothing_lost(&new, &received, &first_new);
    // The live subscriber goes on, in the partitions created meanwhile.
    let later: HashSet<String> = app.insert_tickets("acme", 25).await.into_iter().collect();
    let (received, _) = receive_with_cursor(&mut live, &later).await;
    assert_nothing_lost(&later, &received, &HashSet::new());
    let (received, _) = receive_with_cursor(&mut resumed, &later).await;
    assert_nothing_lost(&later, &received, &HashSet::new());
}

#[tokio::test]
async fn a_long_writer_holds_its_partition_back_and_pruning_blocks_no_writer() {
    let _serial = SERIAL.lock().await;
    let app = spawn_app().await;
    let pool = pool(&app).await;
    let t = token("acme");
    let mut live = app.sse(&t, "").await;
    prune_with(&pool, RETENTION, SMALL).await.unwrap();
    let ranges = partitions_ahead(&app.db, next_id(&app.db).await).await;
    let first = ranges.first().unwrap().clone();
    let lower = first.lower.unwrap();
    // The next partition, as the pruner makes them (it would, a span later).
    let second = Partition {
        name: format!("changecast.change_log_p{}", first.upper.unwrap()),
        lower: first.upper,
        upper: Some(first.upper.unwrap() + SMALL.min_span),
        is_default: false,
    };
    app.db
        .batch_execute(&format!(
            "create table {name} (like changecast.change_log including all);
             alter table changecast.change_log attach partition {name}
                 for values from ({}) to ({})",
            second.lower.unwrap(),
            second.upper.unwrap(),
            name = second.name
        ))
        .await
        .unwrap();
    app.db
        .execute(
            "select setval('changecast.change_log_id_seq', $1, false)",
            &[&lower],
        )
        .await
        .unwrap();

    // The first partition: committed changes, and one of a transaction kept open, which
    // the pruner cannot see.
    let mut written: HashSet<String> = app.insert_tickets("acme", 3).await.into_iter().collect();
    let (long, long_id) = app.begin_long_transaction("acme", "long").await;
    assert_eq!(rows_in(&app.db, &first.name).await, 3);
    // The second partition left empty behind the writers: one to drop.
    app.db
        .execute(
            "select setval('changecast.change_log_id_seq', $1, false)",
            &[&second.upper.unwrap()],
        )
        .await
        .unwrap();
    // Past the retention, by the pruner's rule: the open transaction holds the horizon.
    tick_dated(&app.db, 2).await;

    // A writer commits, again and again, while the pruner tries its DDL.
    let writer_db = app.connect_db().await;
    let writer = tokio::spawn(async move {
        let mut slowest = Duration::ZERO;
        let mut ids = HashSet::new();
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            let started = Instant::now();
            ids.extend(insert_tickets(&writer_db, "acme", 1).await);
            slowest = slowest.max(started.elapsed());
        }
        (ids, slowest)
    });
    let started = Instant::now();
    let pruned = tokio::time::timeout(WAIT, prune_with(&pool, RETENTION, SMALL))
        .await
        .expect("pruning waited on the open transaction")
        .unwrap();
    let pruning_took = started.elapsed();
    let (more, slowest) = writer.await.unwrap();
    written.extend(more);
    assert_eq!(pruned, 0, "the open transaction's partition is held back");
    assert!(
        slowest < Duration::from_secs(2),
        "a writer waited {slowest:?} for partition maintenance (pruning took {pruning_took:?})"
    );
    let left = partitions(&app.db).await;
    assert!(left.contains(&first), "held back: {left:?}");
    assert!(
        left.contains(&second),
        "dropping locks the parent: not while a writer is open ({left:?})"
    );

    long.batch_execute("commit").await.unwrap();
    written.insert(long_id);
    let (received, _) = receive_with_cursor(&mut live, &written).await;
    assert_nothing_lost(&written, &received, &HashSet::new());

    // Once it ended, the partition goes whole, and the empty one too.
    tick_dated(&app.db, 2).await;
    let pruned = prune_with(&pool, RETENTION, SMALL).await.unwrap();
    assert_eq!(pruned, written.len() as u64);
    let left = partitions(&app.db).await;
    assert!(
        left.iter()
            .all(|p| p.name != first.name && p.name != second.name),
        "{left:?}"
    );
}

#[tokio::test]
async fn rows_in_the_default_partition_are_delivered_and_pruned() {
    let _serial = SERIAL.lock().await;
    let app = spawn_app().await;
    let pool = pool(&app).await;
    let t = token("acme");
    let mut live = app.sse(&t, "").await;
    prune_with(&pool, RETENTION, SMALL).await.unwrap();
    // The writers overtake the partitions created (the service was down, say).
    let covered = partitions(&app.db)
        .await
        .iter()
        .filter_map(|p| p.upper)
        .max()
        .unwrap();
    app.db
        .execute(
            "select setval('changecast.change_log_id_seq', $1, false)",
            &[&(covered + 5)],
        )
        .await
        .unwrap();
    let early: HashSet<String> = app.insert_tickets("acme", 30).await.into_iter().collect();
    assert_eq!(rows_in(&app.db, "changecast.change_log_default").await, 30);
    let (received, _) = receive_with_cursor(&mut live, &early).await;
    assert_nothing_lost(&early, &received, &HashSet::new());

    // New partitions start above what the DEFAULT partition holds.
    prune_with(&pool, RETENTION, SMALL).await.unwrap();
    let in_default: i64 = app
        .db
        .query_one("select max(id) from changecast.change_log_default", &[])
        .await
        .unwrap()
        .get(0);
    let created: Vec<Partition> = partitions(&app.db)
        .await
        .into_iter()
        .filter(|p| p.lower.is_some_and(|lower| lower > covered))
        .collect();
    assert!(!created.is_empty());
    assert!(
        created.iter().all(|p| p.lower.unwrap() > in_default),
        "{created:?}"
    );

    app.age_committed_changes(2).await;
    let marker = HashSet::from([app.insert_ticket("acme", "marker").await]);
    let (_, cursor) = receive_with_cursor(&mut live, &marker).await;
    let fresh: HashSet<String> = app.insert_tickets("acme", 3).await.into_iter().collect();
    let (received, _) = receive_with_cursor(&mut live, &fresh).await;
    assert_nothing_lost(&fresh, &received, &HashSet::new());
    let pruned = prune_with(&pool, RETENTION, SMALL).await.unwrap();
    assert_eq!(pruned, 30);
    let journal: i64 = app
        .db
        .query_one("select count(*) from changecast.change_log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(journal, 4);
    // A cursor that had seen every pruned change resumes.
    let mut resumed = app.sse_with(&t, "", cursor.as_deref()).await;
    let (received, _) = receive_with_cursor(&mut resumed, &fresh).await;
    assert_nothing_lost(&fresh, &received, &marker);
}

/// Locks on `relation` requested in `mode` and not granted yet.
async fn waiting_on(db: &tokio_postgres::Client, relation: &str, mode: &str) -> i64 {
    db.query_one(
        "select count(*) from pg_locks
         where relation = $1::text::regclass and mode = $2 and not granted",
        &[&relation, &mode],
    )
    .await
    .unwrap()
    .get(0)
}

/// Sets the journal's sequence so that the next id handed out is `next`.
async fn hand_out_next(db: &tokio_postgres::Client, next: i64) {
    db.execute(
        "select setval('changecast.change_log_id_seq', $1, false)",
        &[&next],
    )
    .await
    .unwrap();
}

/// The upper bound of the highest range partition.
async fn covered(db: &tokio_postgres::Client) -> i64 {
    partitions(db)
        .await
        .iter()
        .filter_map(|p| p.upper)
        .max()
        .unwrap()
}

/// Writers past the partitions go into the DEFAULT partition. A writer routes its rows
/// with the partitions there were when its statement began, and PostgreSQL checks a row
/// routed to the DEFAULT partition against its bounds as they are when its lock is
/// granted: a writer queued behind an ATTACH would have its row refused there once the
/// ATTACH commits, were its id in the new range — the user's write would fail. Here
/// the pruner waits behind an open writer while ids are handed out (as rolled-back
/// transactions do) and more writers queue up behind it.
#[tokio::test]
async fn writers_queued_behind_an_attach_are_never_refused() {
    let _serial = SERIAL.lock().await;
    let app = spawn_app().await;
    let pool = pool(&app).await;
    let mut live = app.sse(&token("acme"), "").await;
    prune_with(&pool, RETENTION, SMALL).await.unwrap();
    let covered = covered(&app.db).await;
    hand_out_next(&app.db, covered + 5).await;

    const WRITERS: i64 = 4;
    let mut connections = Vec::new();
    for _ in 0..WRITERS {
        connections.push(app.connect_db().await);
    }
    let (blocker, blocker_id) = app.begin_long_transaction("acme", "blocker").await;
    let mut written = HashSet::from([blocker_id]);
    let before = partitions(&app.db).await.len();
    let pruner = tokio::spawn({
        let pool = pool.clone();
        async move { prune_with(&pool, RETENTION, PATIENT).await }
    });
    eventually("the pruner waits for the open writer", || async {
        waiting_on(&app.db, "changecast.change_log", "ShareRowExclusiveLock").await > 0
    })
    .await;
    app.db
        .batch_execute("select nextval('changecast.change_log_id_seq') from generate_series(1, 10)")
        .await
        .unwrap();
    let mut writers = Vec::new();
    for db in connections {
        writers.push(tokio::spawn(async move {
            db.query_one(
                "insert into tickets (tenant_id, title) values ('acme', 'queued')
                 returning id::text",
                &[],
            )
            .await
            .map(|row| row.get::<_, String>(0))
        }));
    }
    eventually("the writers queue behind the pruner", || async {
        waiting_on(&app.db, "changecast.change_log", "RowExclusiveLock").await >= WRITERS
    })
    .await;
    blocker.batch_execute("commit").await.unwrap();
    tokio::time::timeout(WAIT, pruner)
        .await
        .expect("the pruner ended")
        .unwrap()
        .unwrap();
    for writer in writers {
        let id = writer.await.unwrap().unwrap_or_else(|error| {
            panic!("a writer's INSERT was refused after the pruner attached a partition: {error:?}")
        });
        written.insert(id);
    }
    // (Had the ids handed out meanwhile passed the range it chose, the pruner gave up
    // this time: the next run attaches.)
    prune_with(&pool, RETENTION, PATIENT).await.unwrap();
    assert!(
        partitions(&app.db).await.len() > before,
        "no partition was attached"
    );
    let (received, _) = receive_with_cursor(&mut live, &written).await;
    assert_nothing_lost(&written, &received, &HashSet::new());
}

/// Calls `public.add_tickets(n)`: the ids of the tickets it inserted.
async fn add_tickets(
    db: &tokio_postgres::Client,
    n: i32,
) -> Result<HashSet<String>, tokio_postgres::Error> {
    let rows = db.query("select public.add_tickets($1)", &[&n]).await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// A transaction that wrote to the journal may keep routing its rows with the
/// partitions it knew (a function's cached plan takes no new lock, so it reads no news
/// of the catalog): had a partition been attached above its first row meanwhile, its
/// later rows there, routed to the DEFAULT partition, would be refused. The pruner
/// attaches none while a writer is open, and does once it ended; the writer's rows all
/// arrive.
#[tokio::test]
async fn a_writer_open_across_the_pruner_keeps_writing_past_the_partitions() {
    let _serial = SERIAL.lock().await;
    let app = spawn_app().await;
    let pool = pool(&app).await;
    let mut live = app.sse(&token("acme"), "").await;
    prune_with(&pool, RETENTION, SMALL).await.unwrap();
    let covered = covered(&app.db).await;
    // The writers are close to the end of the partitions: the pruner wants more.
    hand_out_next(&app.db, covered - 5).await;
    app.db
        .batch_execute(
            "create function public.add_tickets(n int) returns setof text
             language plpgsql as $$
             begin
                 return query insert into tickets (tenant_id, title)
                              select 'acme', 'added ' || g from generate_series(1, n) g
                              returning id::text;
             end $$",
        )
        .await
        .unwrap();
    let writer = app.connect_db().await;
    writer.batch_execute("begin").await.unwrap();
    let mut written = add_tickets(&writer, 1).await.unwrap();
    let before = partitions(&app.db).await;

    prune_with(&pool, RETENTION, SMALL).await.unwrap();
    assert_eq!(
        partitions(&app.db).await,
        before,
        "a partition was attached while a writer was open"
    );
    // Past the partitions, in the same transaction, a row at a time as before (the
    // capture's plan for one row, cached at the first).
    for _ in 0..10 {
        written.extend(add_tickets(&writer, 1).await.unwrap_or_else(|error| {
            panic!("the writer's INSERT past the partitions failed: {error:?}")
        }));
    }
    writer.batch_execute("commit").await.unwrap();

    // Patient: the service's reads of the rows just committed hold the DEFAULT
    // partition's lock for a moment.
    prune_with(&pool, RETENTION, PATIENT).await.unwrap();
    assert!(
        partitions(&app.db)
            .await
            .iter()
            .any(|p| p.lower.is_some_and(|lower| lower >= covered)),
        "no partition was attached once the writer ended"
    );
    let (received, _) = receive_with_cursor(&mut live, &written).await;
    assert_nothing_lost(&written, &received, &HashSet::new());
}

#[tokio::test]
async fn the_pruner_creates_partitions_ahead_and_reports_the_journal_size() {
    let _serial = SERIAL.lock().await;
    let app = spawn_app_with(|config| config.prune_interval = Duration::from_millis(100)).await;
    // Fresh: the converted (empty) first partition and the DEFAULT one. The first run
    // drops the former and creates partitions ahead.
    eventually("a partition created ahead", || async {
        partitions(&app.db)
            .await
            .iter()
            .any(|p| p.lower.is_some_and(|lower| lower >= 1))
    })
    .await;
    // The gauges follow the catalog (the run may still be creating partitions).
    let db = &app.db;
    let app = &app;
    eventually("the journal's size reported", || async move {
        let row = db
            .query_one(
                "select sum(pg_total_relation_size(relid))::int8, count(*) filter (where isleaf)
                 from pg_partition_tree('changecast.change_log')",
                &[],
            )
            .await
            .unwrap();
        let (bytes, count) = (row.get::<_, i64>(0), row.get::<_, i64>(1));
        bytes > 0
            && app.metric("changecast_journal_partitions").await == Some(count as f64)
            && app.metric("changecast_journal_bytes").await > Some(0.0)
    })
    .await;
}

mod before_partitions {
    refinery::embed_migrations!("migrations");
}

/// A new database (its URL, and a connection to it) with the migrations up to `version`.
async fn database_migrated_to(version: i32) -> (String, tokio_postgres::Client) {
    let url = server().empty_database().await;
    let (mut db, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    db.batch_execute("create schema if not exists changecast")
        .await
        .unwrap();
    before_partitions::migrations::runner()
        .set_target(refinery::Target::Version(version))
        .set_migration_table_name("changecast.refinery_schema_history")
        .run_async(&mut db)
        .await
        .unwrap();
    (url, db)
}

#[tokio::test]
async fn converting_a_journal_that_holds_rows_keeps_earlier_cursors_valid() {
    let _serial = SERIAL.lock().await;
    let (url, db) = database_migrated_to(13).await;
    // The journal's home, as the service records it on its first start.
    db.batch_execute(
        "update changecast.journal_meta
            set home = (select system_identifier::text from pg_control_system())
                       || '/' || (select oid::text from pg_database where datname = current_database())",
    )
    .await
    .unwrap();

    let seen: HashSet<String> = insert_tickets(&db, "acme", 20).await.into_iter().collect();
    // A cursor minted now, as the service would: everything written so far seen.
    let snapshot = current_snapshot(&db).await;
    let row = db
        .query_one(
            "select journal_id::text, key from changecast.journal_meta, changecast.cursor_key",
            &[],
        )
        .await
        .unwrap();
    let scope = CursorScope::new(
        row.get::<_, &str>(0),
        CursorKey::new(row.get::<_, &[u8]>(1)).unwrap(),
    );
    let cursor = scope.encode(
        &TenantId::new("acme").unwrap(),
        &Cursor::of_snapshot(snapshot),
    );
    let unseen: HashSet<String> = insert_tickets(&db, "acme", 15).await.into_iter().collect();
    let before: i64 = db
        .query_one("select max(id) from changecast.change_log", &[])
        .await
        .unwrap()
        .get(0);

    let app = start_on(url, |_| {}).await;
    let kind: String = app
        .db
        .query_one(
            "select relkind::text from pg_class where oid = 'changecast.change_log'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kind, "p", "the journal is partitioned");
    assert_eq!(rows_in(&app.db, "changecast.change_log_first").await, 35);
    let t = token("acme");
    let mut resumed = app.sse_with(&t, "", Some(&cursor)).await;
    let (received, _) = receive_with_cursor(&mut resumed, &unseen).await;
    assert_nothing_lost(&unseen, &received, &seen);
    assert!(received.is_disjoint(&seen), "the cursor had seen those");
    // Ids continue where the identity stopped.
    let later = app.insert_ticket("acme", "after").await;
    let (received, _) = receive_with_cursor(&mut resumed, &HashSet::from([later.clone()])).await;
    assert!(received.contains(&later));
    let after: i64 = app
        .db
        .query_one("select max(id) from changecast.change_log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(after, before + 1);
}

/// Dropping the journal's CHECK on `event` leaves no copy on any partition, not even on
/// one the pruner created (`LIKE ... INCLUDING ALL` copies it before ATTACH merges it),
/// so no write pays for it.
#[tokio::test]
async fn no_partition_keeps_a_check_on_the_event() {
    let _serial = SERIAL.lock().await;
    let (url, db) = database_migrated_to(20).await;
    // As the pruner creates a partition.
    db.batch_execute(
        "create table changecast.change_log_ahead (like changecast.change_log including all);
         alter table changecast.change_log attach partition changecast.change_log_ahead
             for values from (1000000) to (2000000)",
    )
    .await
    .unwrap();
    let checks = "select count(*) from pg_constraint c
                    join pg_partition_tree('changecast.change_log') p on p.relid = c.conrelid
                   where c.contype = 'c' and pg_get_constraintdef(c.oid) like '%event%'";
    let before: i64 = db.query_one(checks, &[]).await.unwrap().get(0);
    assert_eq!(
        before, 4,
        "the journal, its first, DEFAULT and new partitions"
    );

    let app = start_on(url, |_| {}).await;
    let after: i64 = app.db.query_one(checks, &[]).await.unwrap().get(0);
    assert_eq!(after, 0);
    let mut stream = app.sse(&token("acme"), "").await;
    let id = app.insert_ticket("acme", "after").await;
    let (received, _) = receive_with_cursor(&mut stream, &HashSet::from([id.clone()])).await;
    assert!(received.contains(&id));
}

#[tokio::test]
async fn the_sequence_position_is_read_right_before_its_first_id_is_handed_out() {
    let _serial = SERIAL.lock().await;
    let app = spawn_app().await;
    let pool = pool(&app).await;
    // As the migration leaves it: set, with no id handed out since.
    let next: i64 = app
        .db
        .query_one(
            "select setval('changecast.change_log_id_seq',
                           (select last_value from changecast.change_log_id_seq) + 1000, false)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    prune_with(&pool, RETENTION, SMALL).await.unwrap();
    let recorded: Option<i64> = app
        .db
        .query_one(
            "select next_id from changecast.journal_ticks order by taken_at desc limit 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        recorded,
        Some(next),
        "the tick records the id handed out next"
    );
    let ranges: Vec<Partition> = partitions(&app.db)
        .await
        .into_iter()
        .filter(|p| !p.is_default && p.lower.is_some_and(|lower| lower > 1))
        .collect();
    assert!(
        ranges.iter().any(|p| p.lower.unwrap() >= next),
        "partitions are created ahead of the id handed out next: {ranges:?}"
    );
}

#[tokio::test]
async fn no_partition_is_attached_while_the_default_partition_is_large() {
    let _serial = SERIAL.lock().await;
    let app = spawn_app().await;
    let pool = pool(&app).await;
    let ranges = |all: Vec<Partition>| all.into_iter().filter(|p| !p.is_default).count();
    let before = ranges(partitions(&app.db).await);
    // No partition ahead yet: every row goes to the DEFAULT partition, as after an outage.
    app.db
        .execute(
            "insert into changecast.change_log (tenant_id, resource_type, event, resource_id, resource)
             select 'acme', 'ticket', 'created', 'bulk-' || n, '{}'::jsonb
             from generate_series(1, 10001) n",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        rows_in(&app.db, "changecast.change_log_default").await,
        10001
    );
    prune_with(&pool, RETENTION, SMALL).await.unwrap();
    assert_eq!(
        ranges(partitions(&app.db).await),
        before,
        "ATTACH would scan the large DEFAULT partition under its lock"
    );

    // Once it holds few rows again, partitions come.
    app.db
        .execute(
            "delete from changecast.change_log_default
             where id in (select id from changecast.change_log_default limit 1)",
            &[],
        )
        .await
        .unwrap();
    prune_with(&pool, RETENTION, SMALL).await.unwrap();
    assert!(ranges(partitions(&app.db).await) > before);
}

/// A partition of `app`'s journal holding two changes past [`RETENTION`] and two within
/// it, which the writers have left behind (every id of it handed out).
async fn partition_with_expired_and_newer_rows(
    app: &TestApp,
    pool: &deadpool_postgres::Pool,
) -> Partition {
    prune_with(pool, RETENTION, SMALL).await.unwrap();
    let partition = partitions_ahead(&app.db, next_id(&app.db).await)
        .await
        .into_iter()
        .next()
        .expect("a partition ahead of the next id");
    app.db
        .execute(
            "select setval('changecast.change_log_id_seq', $1, false)",
            &[&partition.lower.unwrap()],
        )
        .await
        .unwrap();
    app.insert_tickets("acme", 2).await;
    tick_dated(&app.db, 2).await;
    app.insert_tickets("acme", 2).await;
    assert_eq!(rows_in(&app.db, &partition.name).await, 4);
    app.db
        .execute(
            "select setval('changecast.change_log_id_seq', $1, false)",
            &[&partition.upper.unwrap()],
        )
        .await
        .unwrap();
    partition
}

#[tokio::test]
async fn a_partition_filled_most_of_a_retention_ago_waits_to_go_whole_instead_of_row_by_row() {
    let _serial = SERIAL.lock().await;
    let app = spawn_app().await;
    let pool = pool(&app).await;
    let partition = partition_with_expired_and_newer_rows(&app, &pool).await;
    // A tick saw every id of it handed out 50 minutes ago (of a 60-minute retention).
    app.db
        .execute(
            "insert into changecast.journal_ticks (taken_at, horizon, next_id)
             values (now() - interval '50 minutes', pg_snapshot_xmin(pg_current_snapshot()), $1)",
            &[&partition.upper.unwrap()],
        )
        .await
        .unwrap();

    let pruned = prune_with(&pool, RETENTION, SMALL).await.unwrap();
    assert_eq!(
        pruned, 0,
        "rows deleted one by one from a partition about to go whole"
    );
    assert_eq!(rows_in(&app.db, &partition.name).await, 4);

    // Once its newest rows are past the retention too, it goes whole.
    tick_dated(&app.db, 2).await;
    let pruned = prune_with(&pool, RETENTION, SMALL).await.unwrap();
    assert_eq!(pruned, 4);
    let left = partitions(&app.db).await;
    assert!(left.iter().all(|p| p.name != partition.name), "{left:?}");
}

#[tokio::test]
async fn a_partition_filled_recently_loses_its_expired_rows_on_time() {
    let _serial = SERIAL.lock().await;
    let app = spawn_app().await;
    let pool = pool(&app).await;
    // (As a slow journal's: it took longer than the retention to fill.)
    let partition = partition_with_expired_and_newer_rows(&app, &pool).await;

    let pruned = prune_with(&pool, RETENTION, SMALL).await.unwrap();
    assert_eq!(pruned, 2);
    assert_eq!(rows_in(&app.db, &partition.name).await, 2);
}

/// Attaches `count` empty range partitions of `span` ids from `lower` up.
async fn attach_partitions(db: &tokio_postgres::Client, lower: i64, span: i64, count: i64) {
    for n in 0..count {
        let from = lower + n * span;
        db.batch_execute(&format!(
            "create table changecast.change_log_test_{from} (like changecast.change_log including all);
             alter table changecast.change_log attach partition changecast.change_log_test_{from}
                 for values from ({from}) to ({})",
            from + span
        ))
        .await
        .unwrap();
    }
}

/// The tailer's read skips the partitions below its id floor (`journal::IdFloor`), and
/// a transaction left open holds the floor back: transactions that wrote first — one a
/// captured row, one an application event — and commit after later partitions filled,
/// over several of the floor's marks, still reach their subscribers. Once they have
/// ended, the floor moves past their partition.
#[tokio::test]
async fn the_tailers_id_floor_waits_for_open_transactions_and_then_skips_their_partition() {
    let _serial = SERIAL.lock().await;
    let app = spawn_app().await;
    let pool = pool(&app).await;
    let t = token("acme");
    let mut tickets = app.sse(&t, "types=ticket").await;
    let mut events = app.sse(&t, "topics=late.event").await;
    prune_with(&pool, RETENTION, SMALL).await.unwrap();
    attach_partitions(&app.db, covered(&app.db).await, SMALL.min_span, 8).await;

    let (slow, early) = app.begin_long_transaction("acme", "slow").await;
    let publisher = app.connect_db().await;
    publisher
        .batch_execute("begin; select changecast.publish('acme', 'late.event', '{}')")
        .await
        .unwrap();
    // Both transactions' journal rows are below this id.
    let opened_below = next_id(&app.db).await;
    let started = Instant::now();
    let mut written = HashSet::new();
    while started.elapsed() < Duration::from_secs(3)
        || next_id(&app.db).await < opened_below + 4 * SMALL.min_span
    {
        written.extend(app.insert_tickets("acme", 3).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (received, _) = receive_with_cursor(&mut tickets, &written).await;
    assert_nothing_lost(&written, &received, &HashSet::new());
    let floor = app.metric("changecast_tailer_id_floor").await.unwrap() as i64;
    assert!(
        floor < opened_below,
        "the floor ({floor}) passed transactions still open below {opened_below}"
    );

    slow.batch_execute("commit").await.unwrap();
    publisher.batch_execute("commit").await.unwrap();
    let late = HashSet::from([early]);
    let (received, _) = receive_with_cursor(&mut tickets, &late).await;
    assert_nothing_lost(&late, &received, &HashSet::new());
    let event = next_events(&mut events, 1).await;
    assert_eq!(event[0].data["topic"], "late.event", "{:?}", event[0].data);

    eventually(
        "the floor passes the partition of the ended transactions",
        || async {
            app.insert_ticket("acme", "nudge").await;
            app.metric("changecast_tailer_id_floor").await.unwrap() as i64 >= opened_below
        },
    )
    .await;
}
