//! The write path without the NOTIFY commit lock, and the hot statements' plans: under
//! load writers stop ringing while the service drains the journal — and still nothing
//! is lost; every batch and replay page is driven by its index, whatever the statistics.

use std::collections::{HashMap, HashSet};
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::helpers::cluster::OwnCluster;
use crate::helpers::*;

/// A bare LISTEN client on the service's channel, counting the notifications it gets.
async fn count_notifications(db_url: &str) -> (tokio_postgres::Client, Arc<AtomicUsize>) {
    let (client, mut connection) = tokio_postgres::connect(db_url, NoTls).await.unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Some(Ok(message)) = poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(_) = message {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    client.batch_execute("listen changecast").await.unwrap();
    (client, count)
}

/// A service on a cluster of the test's own that flushes its commits (the shared test
/// cluster runs with `fsync` off, where the NOTIFY lock is held for microseconds); the
/// NOTIFY lock is one per cluster, so other tests' writers do not queue on it either.
async fn durable_app() -> (OwnCluster, TestApp) {
    let cluster = OwnCluster::durable().await;
    let db_url = cluster.create_database("wakeups").await;
    let app = start_on(db_url, |_| {}).await;
    (cluster, app)
}

/// A writer's connection whose commits take at least 2 ms to flush (`commit_delay`), so
/// that sixteen of them ringing keep the NOTIFY lock busy however fast the disk and
/// however loaded the machine: the tests see writers queue whenever they ring.
async fn crowding_writer(app: &TestApp) -> tokio_postgres::Client {
    let db = app.connect_db().await;
    db.batch_execute("set commit_delay = 2000; set commit_siblings = 1")
        .await
        .expect("commit_delay needs a superuser (the test clusters' own)");
    db
}

/// Sixteen [`crowding_writer`]s committing single-row transactions of "acme" back to
/// back until stopped; with `own_notify`, every transaction also notifies on the
/// application's own channel, as an application using LISTEN/NOTIFY itself would.
struct Crowd {
    stop: Arc<AtomicBool>,
    writers: Vec<tokio::task::JoinHandle<HashSet<String>>>,
}

impl Crowd {
    async fn start(app: &TestApp, own_notify: bool) -> Crowd {
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        // Enough writers for the lock to be busy most of the time on a fast disk too.
        for _ in 0..16 {
            let db = crowding_writer(app).await;
            let stop = stop.clone();
            writers.push(tokio::spawn(async move {
                let mut ids = HashSet::new();
                while !stop.load(Ordering::SeqCst) {
                    if !own_notify {
                        ids.extend(insert_tickets(&db, "acme", 1).await);
                        continue;
                    }
                    let row = db
                        .query_one(
                            // (The notification's column is selected: a subquery whose
                            // output nobody reads is not evaluated, and would not notify.)
                            "with added as (insert into tickets (tenant_id, title)
                                            values ('acme', 'noisy') returning id),
                                  rang as (select pg_notify('the_apps_own_channel', 'hi') as n)
                             select added.id::text, rang.n::text from added, rang",
                            &[],
                        )
                        .await
                        .unwrap();
                    ids.insert(row.get::<_, String>(0));
                }
                ids
            }));
        }
        Crowd { stop, writers }
    }

    /// Stops the writers; the ids they committed.
    async fn stop(self) -> HashSet<String> {
        self.stop.store(true, Ordering::SeqCst);
        let mut written = HashSet::new();
        for writer in self.writers {
            written.extend(writer.await.unwrap());
        }
        written
    }
}

/// The doorbell lock's requests by service instances: (granted, waiting).
async fn doorbell_requests(app: &TestApp) -> (i64, i64) {
    let row = app
        .db
        .query_one(&*changecast::capture::doorbell::DOORBELL_REQUESTS, &[])
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Whether the service drains: no instance waits for wake-ups, so writers do not ring.
async fn draining(app: &TestApp) -> bool {
    doorbell_requests(app).await == (0, 0)
}

/// Whether `db`'s open transaction took the doorbell lock shared: it wrote without
/// ringing, since no instance waited.
async fn skipped_ringing(db: &tokio_postgres::Client) -> bool {
    let (class, object) = changecast::capture::doorbell::LOCK;
    db.query_one(
        "select exists (select from pg_locks
          where pid = pg_backend_pid() and locktype = 'advisory' and mode = 'ShareLock'
            and classid = $1::int::oid and objid = $2::int::oid and objsubid = 2)",
        &[&class, &object],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test]
async fn writers_skip_notify_while_the_service_drains_and_nothing_is_lost() {
    let (_cluster, app) = durable_app().await;
    let (_listener, notifications) = count_notifications(&app.db_url).await;
    let mut stream = app.sse(&token("acme"), "").await;
    eventually("an idle service waits for wake-ups", || async {
        doorbell_requests(&app).await == (1, 0)
    })
    .await;

    // Sixteen writers, single-row transactions back to back, commits slowed down: they
    // queue on the NOTIFY lock while they ring. Count the transactions and the
    // notifications they caused.
    let transactions = 16 * 300;
    let mut writers = Vec::new();
    for _ in 0..16 {
        let db = crowding_writer(&app).await;
        writers.push(tokio::spawn(async move {
            let mut ids = HashSet::new();
            for _ in 0..300 {
                ids.extend(insert_tickets(&db, "acme", 1).await);
            }
            ids
        }));
    }
    let mut draining_seen = false;
    let mut written = HashSet::new();
    for writer in writers {
        while !writer.is_finished() {
            draining_seen |= draining(&app).await;
            tokio::task::yield_now().await;
        }
        written.extend(writer.await.unwrap());
    }
    assert_eq!(written.len(), transactions);
    let received = stream.receive_ids(&written).await;
    assert_nothing_lost(&written, &received, &HashSet::new());
    assert!(draining_seen, "the service never drained under load");
    let rang = notifications.load(Ordering::SeqCst);
    assert!(
        rang < transactions,
        "every one of {transactions} transactions rang the doorbell ({rang})"
    );

    // Quiet again: the service waits for wake-ups, and a lone write rings and arrives.
    eventually("the service waits for wake-ups again", || async {
        !draining(&app).await
    })
    .await;
    a_lone_write_rings_and_arrives(&app, &mut stream, &notifications).await;
}

/// Writes one ticket of "acme"; asserts that it rings and reaches `stream`.
async fn a_lone_write_rings_and_arrives(
    app: &TestApp,
    stream: &mut SseStream,
    notifications: &AtomicUsize,
) {
    let before = notifications.load(Ordering::SeqCst);
    let id = app.insert_ticket("acme", "a lone write").await;
    assert!(stream
        .receive_ids(&HashSet::from([id.clone()]))
        .await
        .contains(&id));
    eventually("a lone write rings", || async {
        notifications.load(Ordering::SeqCst) > before
    })
    .await;
}

/// An application whose transactions also NOTIFY on their own channel: its writers queue
/// on the commit lock whether changecast rings or not, so draining would only delay
/// delivery. The service notices that its draining left the queue as it was, gives it up
/// (and says so in a metric) — and nothing is lost either way.
#[tokio::test]
async fn draining_is_given_up_when_the_writers_own_notifies_hold_the_lock() {
    let (_cluster, app) = durable_app().await;
    let mut stream = app.sse(&token("acme"), "").await;
    let crowd = Crowd::start(&app, true).await;
    eventually("the service gives draining up", || async {
        app.metric("changecast_drains_without_effect_total")
            .await
            .unwrap_or(0.0)
            >= 1.0
    })
    .await;
    // Given up, it does not try again for a while: it waits for wake-ups (its request
    // for the doorbell reaches PostgreSQL a moment after the metric).
    eventually(
        "the service waits for wake-ups after giving draining up",
        || async { !draining(&app).await },
    )
    .await;
    let written = crowd.stop().await;
    let received = stream.receive_ids(&written).await;
    assert_nothing_lost(&written, &received, &HashSet::new());
}

/// Writers that skip ringing keep the doorbell lock shared until they end, so a service
/// that stops draining is granted it only after them: a transaction left open across the
/// switch is read when it commits, and the writes meanwhile ring and arrive.
#[tokio::test]
async fn a_writer_that_skipped_ringing_is_read_once_it_ends() {
    let (_cluster, app) = durable_app().await;
    let (_listener, notifications) = count_notifications(&app.db_url).await;
    let mut stream = app.sse(&token("acme"), "").await;
    let crowd = Crowd::start(&app, false).await;
    // While the service drains, a transaction writes a row without ringing, and stays.
    let deadline = tokio::time::Instant::now() + WAIT;
    let (open, open_id) = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no write skipped ringing within {WAIT:?}: the service never drained"
        );
        if draining(&app).await {
            let (db, id) = app.begin_long_transaction("acme", "skipped ringing").await;
            if skipped_ringing(&db).await {
                break (db, id);
            }
            db.batch_execute("rollback").await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let mut written = crowd.stop().await;
    // Calm again: the service asks writers to ring, but cannot count on it before the
    // open transaction ends.
    eventually("the service requests the doorbell", || async {
        doorbell_requests(&app).await == (0, 1)
    })
    .await;
    // Meanwhile writes ring, and arrive.
    let before = notifications.load(Ordering::SeqCst);
    let lone = app
        .insert_ticket("acme", "rings while the request waits")
        .await;
    written.insert(lone.clone());
    let mut received = stream.receive_ids(&HashSet::from([lone.clone()])).await;
    assert!(received.contains(&lone));
    eventually("a write rings while the request waits", || async {
        notifications.load(Ordering::SeqCst) > before
    })
    .await;
    // The open transaction commits without a wake-up of its own: the grant reads it.
    open.batch_execute("commit").await.unwrap();
    written.insert(open_id.clone());
    eventually("the doorbell is granted once the writer ended", || async {
        doorbell_requests(&app).await == (1, 0)
    })
    .await;
    let rest = written.difference(&received).cloned().collect();
    received.extend(stream.receive_ids(&rest).await);
    assert_nothing_lost(&written, &received, &HashSet::new());
}

/// The doorbell's own connection dropped: writers stop ringing for the instance, which
/// reconnects, catches up, and waits for wake-ups again — nothing lost meanwhile.
#[tokio::test]
async fn a_lost_doorbell_connection_is_replaced_and_nothing_is_lost() {
    let app = spawn_app().await;
    let (_listener, notifications) = count_notifications(&app.db_url).await;
    let mut stream = app.sse(&token("acme"), "").await;
    eventually("the service waits for wake-ups", || async {
        doorbell_requests(&app).await == (1, 0)
    })
    .await;
    let reconnects = app
        .metric("changecast_db_reconnects_total")
        .await
        .unwrap_or(0.0);
    let killed: i64 = app
        .db
        .query_one(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity
             where application_name = 'changecast:doorbell' and datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1);
    // Written one by one while the service notices, reconnects and catches up.
    let mut written = HashSet::new();
    for _ in 0..20 {
        written.extend(app.insert_tickets("acme", 1).await);
    }
    let received = stream.receive_ids(&written).await;
    assert_nothing_lost(&written, &received, &HashSet::new());
    eventually("the service reconnected", || async {
        app.metric("changecast_db_reconnects_total")
            .await
            .unwrap_or(0.0)
            > reconnects
    })
    .await;
    eventually("the service waits for wake-ups again", || async {
        doorbell_requests(&app).await == (1, 0)
    })
    .await;
    a_lone_write_rings_and_arrives(&app, &mut stream, &notifications).await;
}

/// Two instances waiting: one holds the doorbell lock, the other queues for it, and
/// writers ring for both; when the holder stops, the other is granted the lock.
#[tokio::test]
async fn with_two_instances_writers_ring_while_either_waits() {
    let first = spawn_app().await;
    let second = start_on(first.db_url.clone(), |_| {}).await;
    let (_listener, notifications) = count_notifications(&first.db_url).await;
    let mut first_stream = first.sse(&token("acme"), "").await;
    let mut second_stream = second.sse(&token("acme"), "").await;
    eventually("both instances wait for wake-ups", || async {
        doorbell_requests(&second).await == (1, 1)
    })
    .await;
    let id = first.insert_ticket("acme", "for both").await;
    let expected = HashSet::from([id.clone()]);
    assert!(first_stream.receive_ids(&expected).await.contains(&id));
    assert!(second_stream.receive_ids(&expected).await.contains(&id));
    eventually("the write rang", || async {
        notifications.load(Ordering::SeqCst) == 1
    })
    .await;

    first.stop().await;
    eventually("the second instance is granted the lock", || async {
        doorbell_requests(&second).await == (1, 0)
    })
    .await;
    let id = second.insert_ticket("acme", "for the second").await;
    assert!(second_stream
        .receive_ids(&HashSet::from([id.clone()]))
        .await
        .contains(&id));
    eventually("the write rang", || async {
        notifications.load(Ordering::SeqCst) == 2
    })
    .await;
}

/// Names of the indexes a plan scans and the scans that read a relation from end to
/// end (sequential, or an index walked without a bound).
fn scans(
    plan: &Value,
    parents: &HashMap<String, String>,
    indexes: &mut Vec<String>,
    unbounded: &mut Vec<String>,
) {
    if let Some(index) = plan["Index Name"].as_str() {
        // A partition's index is named for its partition: count it as the journal's.
        let index = parents.get(index).map_or(index, String::as_str);
        indexes.push(index.to_owned());
        if plan["Index Cond"].is_null() {
            unbounded.push(index.to_owned());
        }
    }
    // The one-row `journal_meta` is read whole, as it should be; no part of the journal is.
    let relation = plan["Relation Name"].as_str().unwrap_or("?");
    if plan["Node Type"] == "Seq Scan" && relation.starts_with("change_log") {
        unbounded.push(relation.to_owned());
    }
    for child in plan["Plans"].as_array().into_iter().flatten() {
        scans(child, parents, indexes, unbounded);
    }
}

/// DESIGN-NOTES: with a young journal (no statistics yet) the planner once answered the
/// tailer's read with a full walk of the primary key. Each hot statement must be driven
/// by its own index on a journal of realistic size, before and after ANALYZE.
#[tokio::test]
async fn hot_statements_use_their_indexes_on_a_realistic_journal() {
    let app = spawn_app().await;
    // Prepared and planned once, generically, on a young journal, as the service's
    // connections may plan them and keep the plan while the journal grows.
    let young = YoungPlans::prepare(&app).await;
    // 200,000 rows over 200 transactions and 100 tenants, written past the triggers.
    app.db
        .batch_execute(
            "do $$ begin
               for i in 1..200 loop
                 insert into changecast.change_log (tenant_id, resource_type, event, resource_id, resource)
                 select 't' || (g % 100), 'ticket', 'created', g::text, jsonb_build_object('n', g)
                 from generate_series(1, 1000) g;
                 commit;
               end loop;
             end $$",
        )
        .await
        .unwrap();
    let row = app
        .db
        .query_one(
            "select max(xid::text::bigint)::text, max(id), pg_current_snapshot()::text,
                    min(xid::text::bigint)::text || ':' || min(xid::text::bigint)::text || ':'
             from changecast.change_log",
            &[],
        )
        .await
        .unwrap();
    let (newest_xid, newest_id, now): (&str, i64, &str) = (row.get(0), row.get(1), row.get(2));
    // A replay from before every row: the worst case for a replay page.
    let before_all: &str = row.get(3);
    let running: Vec<String> = Vec::new();
    // A cursor that saw one transaction running: the newest, which t7 has rows in.
    let one_running = vec![newest_xid.to_owned()];
    let (tail_after, replay_after) = (newest_id - 10, newest_id - 5000);
    let no_filter: Option<Vec<String>> = None;
    let statements = changecast::journal::hot_statements();
    // The plans made on the young journal, now that it holds 200,000 rows.
    for (name, _) in &statements {
        let arguments = match *name {
            "tail_new" => format!(
                "'{newest_xid}', '{{}}', 1000, {}, {}",
                16i64 << 20,
                i64::MIN
            ),
            "tail_page" => format!(
                "'{newest_xid}', '{{}}', '{now}', '{now}', 0, {tail_after}, 1000, {}",
                16i64 << 20
            ),
            "tail_mark" => format!(
                "'{newest_xid}', '{{}}', '{now}', 1000, {}, {}",
                16i64 << 20,
                i64::MIN
            ),
            "replay_start" => format!("'t7', '{newest_xid}', '{{{newest_xid}}}'"),
            "replay_page" => format!(
                "'t7', {replay_after}, '{before_all}', '{now}', '{now}', {}, null, true, 500, {}",
                i64::MAX,
                4i64 << 20
            ),
            "transaction_sizes" => format!("'t7', null, true, 1000, '{{{newest_xid}}}'"),
            "transaction_rows" => format!("'t7', '{newest_xid}', null, true"),
            other => panic!("no arguments for {other}"),
        };
        let plan = young.explain_analyze(name, &arguments).await;
        check_plan(
            name,
            "planned on a young journal",
            &plan,
            &index_parents(&app.db).await,
        );
        // A plan that looks expensive is compiled (JIT) on every run, which costs far
        // more than running a statement this small.
        assert!(
            plan[0]["JIT"].is_null(),
            "{name} is compiled by JIT: {plan}"
        );
    }
    // With an id floor (the rows sit in the DEFAULT partition, above the first one): the
    // read, on the primary or a standby, skips the partition below it as it starts, and
    // still finds rows by xid.
    let floor = newest_id - 10;
    for (name, arguments) in [
        (
            "tail_new",
            format!("'{newest_xid}', '{{}}', 1000, {}, {floor}", 16i64 << 20),
        ),
        (
            "tail_mark",
            format!(
                "'{newest_xid}', '{{}}', '{now}', 1000, {}, {floor}",
                16i64 << 20
            ),
        ),
    ] {
        let floored = young.explain_analyze(name, &arguments).await;
        check_plan(
            name,
            "planned on a young journal, with an id floor",
            &floored,
            &index_parents(&app.db).await,
        );
        assert!(
            floored.to_string().contains("\"Subplans Removed\":1"),
            "{name}: the partition below the floor is not skipped: {floored}"
        );
    }
    // The statements are prepared once per connection, so PostgreSQL may settle on a
    // generic plan (parameters unknown): it must use the indexes too, before and after
    // the journal is analyzed. (The tailer's settings force the generic plan; a replay
    // page's leave the choice to PostgreSQL.)
    for (analyzed, plan_mode) in [
        (false, "auto"),
        (false, "force_generic_plan"),
        (true, "auto"),
        (true, "force_generic_plan"),
    ] {
        if analyzed {
            app.db
                .batch_execute("analyze changecast.change_log")
                .await
                .unwrap();
        }
        app.db
            .batch_execute(&format!("set plan_cache_mode = {plan_mode}"))
            .await
            .unwrap();
        for (name, sql) in &statements {
            let explain = format!("explain (format json) {sql}");
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = match *name {
                "tail_new" => vec![&newest_xid, &running, &1000i64, &(16i64 << 20), &i64::MIN],
                "tail_page" => vec![
                    &newest_xid,
                    &running,
                    &now,
                    &now,
                    &0i64,
                    &tail_after,
                    &1000i64,
                    &(16i64 << 20),
                ],
                "tail_mark" => vec![
                    &newest_xid,
                    &running,
                    &now,
                    &1000i64,
                    &(16i64 << 20),
                    &i64::MIN,
                ],
                "replay_start" => vec![&"t7", &newest_xid, &one_running],
                "replay_page" => vec![
                    &"t7",
                    &replay_after,
                    &before_all,
                    &now,
                    &now,
                    &i64::MAX,
                    &no_filter,
                    &true,
                    &500i64,
                    &(4i64 << 20),
                ],
                "transaction_sizes" => vec![&"t7", &no_filter, &true, &1000i64, &one_running],
                "transaction_rows" => vec![&"t7", &newest_xid, &no_filter, &true],
                other => panic!("no parameters for {other}"),
            };
            // Each statement planned under the settings the service runs it with: the
            // tailer's reads under its connection's, a replay start and a transaction's
            // size or rows under the same in their transaction, a replay page under its
            // own. `set local`, so the loop's `plan_cache_mode` holds again for the next
            // statement.
            let settings = match *name {
                "replay_page" => changecast::journal::REPLAY_PLANNER_SETTINGS,
                _ => changecast::journal::INDEX_PLANNER_SETTINGS_LOCAL.as_str(),
            };
            app.db.batch_execute("begin").await.unwrap();
            app.db.batch_execute(settings).await.unwrap();
            let plan: Value = app.db.query_one(&explain, &params).await.unwrap().get(0);
            app.db.batch_execute("commit").await.unwrap();
            let parents = index_parents(&app.db).await;
            check_plan(
                name,
                &format!("analyzed: {analyzed}, {plan_mode}"),
                &plan,
                &parents,
            );
        }
    }
}

/// The journal's indexes by the names of their partitions' indexes (the journal is
/// partitioned: a plan names the index of each partition it reads).
async fn index_parents(db: &tokio_postgres::Client) -> HashMap<String, String> {
    db.query(
        "select c.relname::text, p.relname::text
         from pg_inherits i
         join pg_class c on c.oid = i.inhrelid
         join pg_class p on p.oid = i.inhparent
         where c.relkind = 'i' and c.relnamespace = 'changecast'::regnamespace",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect()
}

/// What every plan of a hot statement must be: bounded scans, driven by its own index.
fn check_plan(name: &str, how: &str, plan: &Value, parents: &HashMap<String, String>) {
    let (mut indexes, mut unbounded) = (Vec::new(), Vec::new());
    scans(&plan[0]["Plan"], parents, &mut indexes, &mut unbounded);
    assert!(
        unbounded.is_empty(),
        "{name} ({how}) scans without a bound: {unbounded:?}\n{plan}"
    );
    if name == "replay_page" {
        assert!(
            !plan.to_string().contains("\"Sort\""),
            "a replay page ({how}) sorts instead of walking (tenant_id, id): {plan}"
        );
    }
    // Where a replay starts is found by xid, never by walking a tenant's history.
    if name == "replay_start" {
        assert!(
            !indexes.iter().any(|index| index == "change_log_tenant_id"),
            "{name} ({how}) walks the tenant's rows: {plan}"
        );
    }
    // The tailer's reads look rows up by id: never through (tenant_id, id), whose id is
    // no bound (a walk of the whole index per row). PostgreSQL finds the two indexes
    // equally cheap on a partition analyzed while empty. A transaction's rows are found
    // by xid: through (tenant_id, id), every transaction would walk the tenant's history.
    if name.starts_with("tail_") || name.starts_with("transaction_") {
        assert!(
            !indexes.iter().any(|index| index == "change_log_tenant_id"),
            "{name} ({how}) looks rows up through (tenant_id, id): {indexes:?}\n{plan}"
        );
    }
    // A continuation page may start from its id bound or from the xid ranges; both are
    // bounded. The others have one right answer.
    let expected: &[&str] = match name {
        "tail_new" => &["change_log_xid"],
        "tail_page" => &["change_log_xid", "change_log_pkey"],
        "tail_mark" => &["change_log_xid"],
        "replay_start" => &["change_log_pkey", "change_log_xid"],
        "transaction_sizes" | "transaction_rows" => &["change_log_xid"],
        _ => &["change_log_tenant_id"],
    };
    assert!(
        indexes
            .iter()
            .any(|index| expected.contains(&index.as_str())),
        "{name} ({how}) does not use {expected:?}: {indexes:?}\n{plan}"
    );
}

/// The hot statements prepared (SQL `PREPARE`, generic plans forced) and run once on a
/// young journal (300 rows, analyzed: PostgreSQL then prefers hashing the whole journal
/// to looking rows up), each on a connection set up as the service's that runs it.
struct YoungPlans {
    /// Like the tailer's connection (session planner settings); also runs the replay
    /// start and the transaction statements, which the service runs under the same
    /// settings.
    tailer: tokio_postgres::Client,
    /// Like a pooled connection running a replay page in its transaction.
    replay: tokio_postgres::Client,
}

impl YoungPlans {
    async fn prepare(app: &TestApp) -> YoungPlans {
        app.db
            .batch_execute(
                "insert into changecast.change_log (tenant_id, resource_type, event, resource_id, resource)
                 select 't' || (g % 100), 'ticket', 'created', g::text, jsonb_build_object('n', g)
                 from generate_series(1, 300) g;
                 analyze changecast.change_log",
            )
            .await
            .unwrap();
        let young = YoungPlans {
            tailer: app.connect_db().await,
            replay: app.connect_db().await,
        };
        young
            .tailer
            .batch_execute(changecast::journal::INDEX_PLANNER_SETTINGS)
            .await
            .unwrap();
        let young_journal_arguments = [
            (
                "tail_new",
                "'0', '{}', 1000, 16777216, -9223372036854775808",
            ),
            (
                "tail_page",
                "'0', '{}', '1:1:', '1:1:', 0, 0, 1000, 16777216",
            ),
            (
                "tail_mark",
                "'0', '{}', '1:1:', 1000, 16777216, -9223372036854775808",
            ),
            ("replay_start", "'t7', '0', '{}'"),
            ("transaction_sizes", "'t7', null, true, 1000, '{1}'"),
            ("transaction_rows", "'t7', '1', null, true"),
            (
                "replay_page",
                "'t7', 0, '1:1:', '1:1:', '1:1:', 9223372036854775807, null, true, 500, 4194304",
            ),
        ];
        for (name, sql) in changecast::journal::hot_statements() {
            let client = young.client(name);
            client
                .batch_execute(&format!(
                    "set plan_cache_mode = force_generic_plan; prepare {name} as {sql}"
                ))
                .await
                .unwrap();
            let (_, arguments) = young_journal_arguments
                .iter()
                .find(|(n, _)| *n == name)
                .expect("arguments for every hot statement");
            young
                .in_context(name, &format!("execute {name}({arguments})"))
                .await;
        }
        young
    }

    fn client(&self, name: &str) -> &tokio_postgres::Client {
        if name == "replay_page" {
            &self.replay
        } else {
            &self.tailer
        }
    }

    /// Runs `sql` where the service runs `name`: a replay page in a transaction with its
    /// planner settings.
    async fn in_context(&self, name: &str, sql: &str) -> Vec<tokio_postgres::Row> {
        let client = self.client(name);
        if name != "replay_page" {
            return client.query(sql, &[]).await.unwrap();
        }
        client.batch_execute("begin").await.unwrap();
        client
            .batch_execute(changecast::journal::REPLAY_PLANNER_SETTINGS)
            .await
            .unwrap();
        let rows = client.query(sql, &[]).await.unwrap();
        client.batch_execute("commit").await.unwrap();
        rows
    }

    async fn explain_analyze(&self, name: &str, arguments: &str) -> Value {
        let rows = self
            .in_context(
                name,
                &format!("explain (analyze, format json) execute {name}({arguments})"),
            )
            .await;
        rows[0].get(0)
    }
}
