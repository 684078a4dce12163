//! Fault tests: each writes changes before, during and after a fault and
//! compares the ids every subscriber received, as sets, with the ids written.
//!
//! - PostgreSQL restarted under the service (`-m fast`, `-m immediate`) on a cluster of
//!   the test's own;
//! - the service killed with SIGKILL and started again;
//! - the database's transaction ids going backwards (a physical copy restored);
//! - a seeded model of concurrent writers (out-of-order commits, rollbacks, savepoints)
//!   against subscribers that drop and resume at random moments.
//!
//! Subscribers here are [`Follower`]s: like a browser's EventSource (or the WebSocket
//! client), they reconnect whenever their stream ends, passing their last cursor. The
//! clusters, writers, followers and service processes are in `helpers`, shared with the
//! flood and wake-up tests.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use changecast::db::embedded::StopMode;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_postgres::NoTls;

use crate::helpers::cluster::{pg_basebackup, postgres_user, start_server, Copy, OwnCluster};
use crate::helpers::followers::{assert_all_followers_got, received_key, Follower, Interest, Via};
use crate::helpers::process::{peak_rss_kib, status_kib, ServiceProcess};
use crate::helpers::rng::Rng;
use crate::helpers::writers::spawn_writers;
use crate::helpers::*;

// ---------------------------------------------------------------------------------------
// PostgreSQL restarted mid-stream.

async fn postgres_restarted_mid_stream(mode: StopMode) {
    let mut cluster = OwnCluster::start().await;
    let db_url = cluster.create_database("faults").await;
    let app = start_on(db_url.clone(), |_| {}).await;
    let (_addr_tx, addr) = watch::channel(app.addr.to_string());
    let followers = vec![
        Follower::start(
            addr.clone(),
            Interest::new(Via::Sse, "acme", Some(vec!["ticket"])),
            None,
        )
        .await,
        Follower::start(
            addr.clone(),
            Interest::new(Via::Ws, "acme", Some(vec!["ticket"])),
            None,
        )
        .await,
        Follower::start(addr.clone(), Interest::new(Via::Sse, "acme", None), None).await,
    ];
    assert_eq!(
        app.metric("changecast_db_reconnects_total").await,
        Some(0.0)
    );
    // Two writers of the subscribers' tenant (one and three rows per transaction), one
    // of another tenant, whose changes must not show up.
    let writing = spawn_writers(&db_url, &[("acme", 1), ("acme", 3), ("globex", 1)]);
    writing.until_more(150).await;
    let before = writing.committed.load(Ordering::SeqCst);

    cluster.stop(mode).await;
    let stopped = Instant::now();
    wait_for_status(&app.http, &app.url("/readyz"), 503).await;
    // Down for a while (about a second of writers retrying): the listener retries with
    // backoff meanwhile, and every writer has a write in flight, retried.
    writing.until_failures(200).await;
    cluster.start_again().await;
    let down_for = stopped.elapsed();
    let restarted = Instant::now();
    app.wait_ready().await;
    let ready_after = restarted.elapsed();
    writing.until_more(150).await;
    let (written, retried) = writing.finish().await;
    assert!(retried >= 3, "the writers retried {retried} writes");

    let (n_written, n_received) = assert_all_followers_got(&followers, &written["acme"]).await;
    assert!(app.metric("changecast_db_reconnects_total").await >= Some(1.0));
    let mut reconnects = Vec::new();
    for follower in followers {
        let received = follower.stop().await;
        reconnects.push(received.connections - 1);
    }
    let total: usize = written.values().map(HashSet::len).sum();
    eprintln!(
        "postgres restart {mode:?}: down {down_for:?}, ready again {ready_after:?} after \
         its start; {total} changes committed ({before} before the stop, {retried} writes \
         in flight during the outage retried, the rest after), {n_written} of them of the \
         subscribers' tenant; {n_received} received by each follower (SSE, WS, SSE \
         unfiltered); follower reconnects {reconnects:?}; test process peak RSS {:?} KiB",
        peak_rss_kib(std::process::id())
    );
    app.stop().await;
}

/// `pg_ctl stop -m fast` (sessions ended, transactions rolled back, checkpoint) and a
/// start on the same port, while writers write and subscribers of both transports read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_fast_mid_stream_loses_nothing() {
    postgres_restarted_mid_stream(StopMode::Fast).await;
}

/// `pg_ctl stop -m immediate`: every PostgreSQL process exits at once, as in a crash;
/// the next start recovers from the WAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crashed_mid_stream_loses_nothing() {
    postgres_restarted_mid_stream(StopMode::Immediate).await;
}

// ---------------------------------------------------------------------------------------
// The service killed outright.

/// SIGKILL mid-stream: no goodbye to anyone. The subscribers' streams break, they retry
/// while nothing listens, and resume with their cursors from the restarted service; the
/// changes committed while it was gone come from the journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_killed_mid_stream_loses_nothing() {
    let db_url = server().fresh_database().await;
    let http = reqwest::Client::new();
    let mut service = ServiceProcess::start(&db_url, "127.0.0.1:0");
    let ready = |addr: &str| format!("http://{addr}/readyz");
    wait_for_status(&http, &ready(&service.addr), 200).await;
    let (_addr_tx, addr) = watch::channel(service.addr.clone());
    let followers = vec![
        Follower::start(addr.clone(), Interest::new(Via::Sse, "acme", None), None).await,
        Follower::start(addr.clone(), Interest::new(Via::Ws, "acme", None), None).await,
        Follower::start(
            addr.clone(),
            Interest::new(Via::Sse, "acme", Some(vec!["ticket"])),
            None,
        )
        .await,
    ];
    let writing = spawn_writers(&db_url, &[("acme", 1), ("acme", 3), ("globex", 1)]);
    writing.until_more(150).await;
    eventually("the followers are receiving", || async {
        followers.iter().all(|f| f.ids().len() >= 50)
    })
    .await;
    let before = writing.committed.load(Ordering::SeqCst);
    let peak_first = peak_rss_kib(service.child.id());

    service.kill();
    let killed = Instant::now();
    // Nothing listens: every follower finds the door shut at least once.
    eventually("the followers notice the service is gone", || async {
        followers
            .iter()
            .all(|f| f.received.lock().unwrap().refused > 0)
    })
    .await;
    writing.until_more(150).await;
    let mut service = ServiceProcess::start(&db_url, &service.addr.clone());
    wait_for_status(&http, &ready(&service.addr), 200).await;
    let down_for = killed.elapsed();
    let during = writing.committed.load(Ordering::SeqCst) - before;
    writing.until_more(150).await;
    let (written, _) = writing.finish().await;

    let (n_written, n_received) = assert_all_followers_got(&followers, &written["acme"]).await;
    let peak_second = peak_rss_kib(service.child.id());
    let mut reconnects = Vec::new();
    for follower in followers {
        let received = follower.stop().await;
        assert!(received.connections >= 2, "every follower resumed");
        reconnects.push(received.connections - 1);
    }
    service.kill();
    let total: usize = written.values().map(HashSet::len).sum();
    eprintln!(
        "service SIGKILL: down {down_for:?}; {total} changes committed ({before} before \
         the kill, {during} while it was down or starting), {n_written} of them of the \
         subscribers' tenant; {n_received} received by each follower (SSE, WS, SSE \
         tickets); follower reconnects {reconnects:?}; service peak RSS {peak_first:?} \
         KiB, after the restart {peak_second:?} KiB"
    );
}

// ---------------------------------------------------------------------------------------
// Transaction ids going backwards.

/// The tailer's side: the cluster is put back to an earlier physical
/// copy of itself (as a point-in-time restore or a failover to a lagging standby does:
/// same system, same database), so new commits reuse transaction ids the tailer has
/// already counted as published. They must still be delivered, and subscribers holding
/// cursors from the lost future are told to resync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_ids_going_backwards_resync_and_lose_no_new_change() {
    let mut cluster = OwnCluster::start().await;
    let db_url = cluster.create_database("rewind").await;
    // The copy to restore: the database migrated, nothing written yet.
    changecast::db::migrate(&db_url).await.unwrap();
    cluster.stop(StopMode::Fast).await;
    let backup = cluster.dir.path().join("backup");
    copy_dir(&cluster.data_dir(), &backup);
    cluster.start_again().await;

    let app = start_on(db_url.clone(), |_| {}).await;
    let t = token("acme");
    let mut stream = app.sse(&t, "").await;
    // A future that will be lost: many transactions, each one change.
    let (_, lost) = commit_one_by_one(&db_url, 50).await;
    assert_eq!(stream.receive_ids(&lost).await, lost);

    cluster.stop(StopMode::Immediate).await;
    std::fs::remove_dir_all(cluster.data_dir()).unwrap();
    copy_dir(&backup, &cluster.data_dir());
    cluster.start_again().await;

    // The live subscriber, whose cursor is from the lost future, is told to resync.
    let resync = first_resync(&mut stream, "future").await;
    assert_eq!(resync.data["reason"], "cursor_invalid");
    wait_for_status(&app.http, &app.url("/readyz"), 200).await;
    assert_eq!(app.metric("changecast_xid_rewinds_total").await, Some(1.0));

    // New commits reuse the ids of the lost ones: every one arrives, live.
    let (writer, new) = commit_one_by_one(&db_url, 20).await;
    let received = stream.receive_ids(&new).await;
    assert_nothing_lost(&new, &received, &HashSet::new());
    // So does a subscriber starting afresh.
    let mut fresh = app.sse(&t, "").await;
    let one = HashSet::from([writer
        .query_one(
            "insert into tickets (tenant_id, title) values ('acme', 'last') returning id::text",
            &[],
        )
        .await
        .unwrap()
        .get::<_, String>(0)]);
    assert_eq!(fresh.receive_ids(&one).await, one);
    app.stop().await;
}

/// A timeline change: a standby that did not receive the newest
/// commits is promoted (here: a `pg_basebackup` copy taken before them, recovered to the
/// end of its WAL, which starts timeline 2), and by the time the service reaches it, new
/// commits have used transaction ids past the ones the service had published. The
/// tailer's `xmax` check (above) cannot tell: the ids did not go backwards from where it
/// looks, yet commits of the new timeline reuse ids its snapshot — and every cursor —
/// counts as seen, and would be skipped silently. What must happen instead: subscribers
/// holding cursors from the lost timeline are told to resync (`cursor_invalid`), before
/// any change, live and on reconnect; every change after that arrives.
///
/// The service notices through the journal identity, which includes the timeline
/// (`JOURNAL_IDENTITY` in `src/journal/mod.rs`): the tailer follows the changed identity,
/// cutting everyone off, and old cursors decode as foreign.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeline_change_with_ids_overtaken_resyncs_and_loses_no_new_change() {
    let mut cluster = OwnCluster::start().await;
    let db_url = cluster.create_database("timeline").await;
    changecast::db::migrate(&db_url).await.unwrap();
    let admin_url = cluster.url("postgres");
    let port = cluster.options().port.expect("the cluster keeps its port");
    // The standby's copy, taken before the commits it will never receive.
    let standby = cluster.dir.path().join("standby");
    let bindir = changecast::db::embedded::find_bindir().unwrap();
    pg_basebackup(&bindir, &admin_url, &standby, Copy::Restore);

    let app = start_on(db_url.clone(), |_| {}).await;
    let t = token("acme");
    let mut stream = app.sse(&t, "").await;
    let (_, lost) = commit_one_by_one(&db_url, 50).await;
    assert_eq!(stream.receive_ids(&lost).await, lost);
    let published_xmax = next_xid(&app.db).await;
    let old_cursor = stream.last_event_id.clone().unwrap();

    // The primary is gone; the standby is promoted on a port of its own.
    cluster.stop(StopMode::Immediate).await;
    let mut options = cluster.options().clone();
    options.data_dir = standby.clone();
    options.port = None;
    options
        .settings
        .push(("restore_command".into(), "false".into()));
    std::fs::write(standby.join("recovery.signal"), "").unwrap();
    chown_to_postgres(&standby.join("recovery.signal"));
    let promoted = start_server(options.clone()).await;
    let promoted_url = format!("{}/timeline", promoted.base_url());
    let (writer, connection) = tokio_postgres::connect(&promoted_url, NoTls).await.unwrap();
    tokio::spawn(connection);
    // The server accepts connections while it still replays its WAL; it promotes itself
    // (a new timeline) once that is done.
    eventually("the copy leaves recovery", || async {
        writer
            .query_one("select not pg_is_in_recovery()", &[])
            .await
            .is_ok_and(|row| row.get(0))
    })
    .await;
    let timeline: String = writer
        .query_one(
            "select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(timeline, "00000002", "the promotion starts a new timeline");
    // Commits before the service gets there: ids of the lost ones again, then beyond.
    let mut xids = Vec::new();
    while xids.last().is_none_or(|&x| x <= published_xmax + 5) {
        let row = writer
            .query_one(
                "insert into tickets (tenant_id, title) values ('acme', 'meanwhile')
                 returning pg_current_xact_id()::text::bigint",
                &[],
            )
            .await
            .unwrap();
        xids.push(row.get::<_, i64>(0) as u64);
    }
    let reused = xids.iter().filter(|&&x| x < published_xmax).count();
    assert!(reused > 0, "the new timeline reuses ids");
    eprintln!(
        "timeline change: {} changes published on timeline 1 (then lost), {} committed on \
         timeline 2 before the service got there, {reused} of them under transaction ids \
         the service had already counted as seen",
        lost.len(),
        xids.len()
    );
    drop(writer);
    // It moves to the address the service knows.
    tokio::task::spawn_blocking(move || promoted.stop_with(StopMode::Fast))
        .await
        .unwrap();
    options.port = Some(port);
    options.existing_only = true;
    let _promoted = start_server(options).await;

    // The live subscriber learns its cursor is from a timeline that is gone.
    let resync = first_resync(&mut stream, "timeline").await;
    assert_eq!(resync.data["reason"], "cursor_invalid");
    app.wait_ready().await;
    // So does a client reconnecting with a cursor of the lost timeline.
    let mut returning = app.sse_with(&t, "", Some(&old_cursor)).await;
    let first = returning.next_within(WAIT).await.expect("an event");
    assert_eq!(first.event, "resync", "{:?}", first.data);
    assert_eq!(first.data["reason"], "cursor_invalid");
    // Every change from here on arrives, to both. (The test's own connection went with
    // the old primary.)
    let (_writer, new) = commit_one_by_one(&db_url, 20).await;
    assert_nothing_lost(&new, &stream.receive_ids(&new).await, &HashSet::new());
    assert_nothing_lost(&new, &returning.receive_ids(&new).await, &HashSet::new());
    app.stop().await;
}

/// The next transaction id the database will assign (its snapshot's `xmax`, with no
/// transaction running).
async fn next_xid(db: &tokio_postgres::Client) -> u64 {
    db.query_one(
        "select pg_snapshot_xmax(pg_current_snapshot())::text::bigint",
        &[],
    )
    .await
    .unwrap()
    .get::<_, i64>(0) as u64
}

fn chown_to_postgres(path: &std::path::Path) {
    if let Some((uid, gid)) = postgres_user() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    }
}

/// `n` tickets of acme, a transaction each, from a new connection to `db_url` (which
/// is returned for more).
async fn commit_one_by_one(db_url: &str, n: usize) -> (tokio_postgres::Client, HashSet<String>) {
    let (writer, connection) = tokio_postgres::connect(db_url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let mut ids = HashSet::new();
    for _ in 0..n {
        ids.extend(insert_tickets(&writer, "acme", 1).await);
    }
    (writer, ids)
}

/// The first event of `stream` that is not a comment or a keepalive, which must be a
/// `resync` (a change before it would be a change skipped or wrong): the subscriber's
/// cursor is from a `lost` history of the database.
async fn first_resync(stream: &mut SseStream, lost: &str) -> SseEvent {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match stream.next_within(left).await {
            Some(event) if event.event == "resync" => return event,
            Some(event) if event.event == "resource_change" => {
                panic!("a change arrived before the resync: {:?}", event.data)
            }
            Some(_) => {}
            None => panic!("the subscriber was never told its cursor is from a lost {lost}"),
        }
    }
}

/// `cp -a`: ownership and modes kept (the server runs as `postgres` when we are root).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

// ---------------------------------------------------------------------------------------
// The model: concurrent writers, random reconnects.

/// Seeds from `CHANGECAST_MODEL_SEEDS`: `1,2,3`, a range `100..200`, or both mixed.
fn model_seeds() -> Vec<u64> {
    let spec = std::env::var("CHANGECAST_MODEL_SEEDS").unwrap_or_else(|_| "1,2,3".into());
    let mut seeds = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once("..") {
            Some((from, to)) => {
                let (from, to): (u64, u64) = (from.parse().unwrap(), to.parse().unwrap());
                seeds.extend(from..to);
            }
            None => seeds.push(part.parse().expect("CHANGECAST_MODEL_SEEDS: numbers")),
        }
    }
    seeds
}

const TENANTS: [&str; 3] = ["m0", "m1", "m2"];
const TYPES: [&str; 2] = ["ticket", "agent"];
/// Connections writing at once, each with at most one open transaction.
const WRITERS: usize = 5;
/// Transactions per seed (committed or rolled back).
const TRANSACTIONS: usize = 60;

/// One row change as a subscriber must see it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Expected {
    tenant: &'static str,
    resource_type: &'static str,
    event: &'static str,
    id: String,
    /// The row's title (ticket) or name (agent) in the event: unique per write.
    mark: String,
}

impl Expected {
    fn key(&self) -> String {
        format!("{}:{}:{}", self.event, self.id, self.mark)
    }
}

#[derive(Clone)]
struct Row {
    tenant: &'static str,
    resource_type: &'static str,
    mark: String,
}

/// A writer's open transaction: the changes it made (each a journal row if it commits),
/// and savepoints as positions in them.
struct Open {
    client: usize,
    changes: Vec<Expected>,
    savepoints: Vec<usize>,
    /// Rows this transaction has written (and so locked): no other transaction touches
    /// them until it ends, so the single-threaded driver never waits on a lock.
    locked: HashSet<String>,
}

struct Model {
    /// Committed rows that exist.
    rows: HashMap<String, Row>,
    /// Every committed change, in commit order.
    committed: Vec<Expected>,
    locked_by: HashMap<String, usize>,
    next_mark: u64,
}

impl Model {
    /// The row as transaction `open` sees it (its own changes applied), if it exists.
    fn row_in(&self, open: &Open, id: &str) -> Option<Row> {
        let mut row = self.rows.get(id).cloned();
        for change in open.changes.iter().filter(|c| c.id == id) {
            row = match change.event {
                "deleted" => None,
                _ => Some(Row {
                    tenant: change.tenant,
                    resource_type: change.resource_type,
                    mark: change.mark.clone(),
                }),
            };
        }
        row
    }

    fn mark(&mut self, seed: u64) -> String {
        self.next_mark += 1;
        format!("s{seed}-{}", self.next_mark)
    }
}

fn uuid(rng: &mut Rng) -> String {
    let (a, b) = (rng.next(), rng.next());
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    )
}

/// Runs one seed: the writers' schedule is a pure function of the seed; so are the
/// moments (counted in changes received) at which each subscriber drops its stream.
async fn model_run(seed: u64) {
    let app = spawn_app().await;
    let (_addr_tx, addr) = watch::channel(app.addr.to_string());
    let followers = model_followers(addr, seed).await;
    let mut clients = Vec::new();
    for _ in 0..WRITERS {
        clients.push(app.connect_db().await);
    }
    let (model, tally) = model_writes(&clients, seed).await;
    // Every follower gets exactly its share of what committed, in order per resource.
    let mut drops = Vec::new();
    for follower in followers {
        drops.push(check_share(follower, &model.committed, seed).await);
    }
    let Tally {
        ended,
        rolled_back,
        savepoints_rolled_back,
        statements,
    } = tally;
    eprintln!(
        "model seed {seed}: {ended} transactions ({rolled_back} rolled back, \
         {savepoints_rolled_back} savepoints rolled back), {statements} row changes, \
         {} committed; subscriber drops {drops:?}",
        model.committed.len()
    );
    app.stop().await;
}

/// Per tenant: SSE and WS, each unfiltered and with a type filter; each drops its
/// stream after a random number of changes (from its own seed) and resumes.
async fn model_followers(addr: watch::Receiver<String>, seed: u64) -> Vec<Follower> {
    let mut followers = Vec::new();
    for (n, tenant) in TENANTS.iter().enumerate() {
        for (m, (via, types)) in [
            (Via::Sse, None),
            (Via::Sse, Some(vec!["ticket"])),
            (Via::Ws, None),
            (Via::Ws, Some(vec!["agent"])),
        ]
        .into_iter()
        .enumerate()
        {
            let dropper = Rng::new(seed ^ ((n * 16 + m) as u64 + 1).wrapping_mul(0x1234_5678_9abc));
            followers.push(
                Follower::start(
                    addr.clone(),
                    Interest::new(via, tenant, types),
                    Some(dropper),
                )
                .await,
            );
        }
    }
    followers
}

/// What the writers did.
struct Tally {
    ended: usize,
    rolled_back: usize,
    savepoints_rolled_back: usize,
    statements: usize,
}

/// Drives the writers' transactions from one task, a step at a time, in an order drawn
/// from `seed`; no step ever waits on another transaction's lock (see [`Open::locked`]).
async fn model_writes(clients: &[tokio_postgres::Client], seed: u64) -> (Model, Tally) {
    let mut rng = Rng::new(seed);
    let mut model = Model {
        rows: HashMap::new(),
        committed: Vec::new(),
        locked_by: HashMap::new(),
        next_mark: 0,
    };
    let mut open: Vec<Option<Open>> = (0..WRITERS).map(|_| None).collect();
    let (mut ended, mut rolled_back, mut savepoints_rolled_back, mut statements) = (0, 0, 0, 0);
    while ended < TRANSACTIONS || open.iter().any(Option::is_some) {
        let w = rng.below(WRITERS as u64) as usize;
        let db = &clients[w];
        let open_now = open.iter().filter(|o| o.is_some()).count();
        let finishing = ended + open_now >= TRANSACTIONS;
        let Some(tx) = open[w].as_mut() else {
            if !finishing {
                db.batch_execute("begin").await.unwrap();
                open[w] = Some(Open {
                    client: w,
                    changes: Vec::new(),
                    savepoints: Vec::new(),
                    locked: HashSet::new(),
                });
            }
            continue;
        };
        let roll = rng.below(100);
        if roll < 10 || (finishing && roll < 40) {
            // End it: mostly commit, sometimes roll back.
            let tx = open[w].take().unwrap();
            for id in &tx.locked {
                model.locked_by.remove(id);
            }
            ended += 1;
            if rng.chance(25) {
                db.batch_execute("rollback").await.unwrap();
                rolled_back += 1;
            } else {
                db.batch_execute("commit").await.unwrap();
                for change in &tx.changes {
                    match change.event {
                        "deleted" => {
                            model.rows.remove(&change.id);
                        }
                        _ => {
                            model.rows.insert(
                                change.id.clone(),
                                Row {
                                    tenant: change.tenant,
                                    resource_type: change.resource_type,
                                    mark: change.mark.clone(),
                                },
                            );
                        }
                    }
                }
                model.committed.extend(tx.changes);
            }
            continue;
        }
        if roll < 16 {
            let name = format!("sp{}", tx.savepoints.len());
            db.batch_execute(&format!("savepoint {name}"))
                .await
                .unwrap();
            tx.savepoints.push(tx.changes.len());
            continue;
        }
        if roll < 22 {
            if let Some(&at) = tx.savepoints.last() {
                let name = format!("sp{}", tx.savepoints.len() - 1);
                if rng.chance(60) {
                    // Its changes are undone; its locks are kept in the model (harmless).
                    db.batch_execute(&format!("rollback to savepoint {name}"))
                        .await
                        .unwrap();
                    tx.changes.truncate(at);
                    savepoints_rolled_back += 1;
                } else {
                    db.batch_execute(&format!("release savepoint {name}"))
                        .await
                        .unwrap();
                }
                tx.savepoints.pop();
            }
            continue;
        }
        // A row change: insert, or update / delete a row nobody else holds.
        statements += 1;
        let tenant = *rng.pick(&TENANTS);
        let resource_type = *rng.pick(&TYPES);
        let candidates: Vec<String> = {
            let mut ids: Vec<String> = model
                .rows
                .keys()
                .chain(tx.changes.iter().map(|c| &c.id))
                .filter(|id| model.locked_by.get(*id).is_none_or(|&o| o == tx.client))
                .cloned()
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            ids.sort();
            ids.retain(|id| model.row_in(tx, id).is_some());
            ids
        };
        let table = |t: &str| if t == "ticket" { "tickets" } else { "agents" };
        let column = |t: &str| if t == "ticket" { "title" } else { "name" };
        let mark = model.mark(seed);
        let change = if candidates.is_empty() || rng.chance(45) {
            let id = uuid(&mut rng);
            db.execute(
                &format!(
                    "insert into {} (id, tenant_id, {}) values ($1::text::uuid, $2, $3)",
                    table(resource_type),
                    column(resource_type)
                ),
                &[&id, &tenant, &mark],
            )
            .await
            .unwrap();
            Expected {
                tenant,
                resource_type,
                event: "created",
                id,
                mark,
            }
        } else {
            let id = rng.pick(&candidates).clone();
            let row = model.row_in(tx, &id).unwrap();
            if rng.chance(70) {
                let updated = db
                    .execute(
                        &format!(
                            "update {} set {} = $2 where id = $1::text::uuid",
                            table(row.resource_type),
                            column(row.resource_type)
                        ),
                        &[&id, &mark],
                    )
                    .await
                    .unwrap();
                assert_eq!(updated, 1, "seed {seed}: the model lost track of {id}");
                Expected {
                    tenant: row.tenant,
                    resource_type: row.resource_type,
                    event: "updated",
                    id,
                    mark,
                }
            } else {
                let deleted = db
                    .execute(
                        &format!(
                            "delete from {} where id = $1::text::uuid",
                            table(row.resource_type)
                        ),
                        &[&id],
                    )
                    .await
                    .unwrap();
                assert_eq!(deleted, 1, "seed {seed}: the model lost track of {id}");
                Expected {
                    tenant: row.tenant,
                    resource_type: row.resource_type,
                    event: "deleted",
                    id,
                    mark: row.mark,
                }
            }
        };
        tx.locked.insert(change.id.clone());
        model.locked_by.insert(change.id.clone(), tx.client);
        tx.changes.push(change);
    }

    let tally = Tally {
        ended,
        rolled_back,
        savepoints_rolled_back,
        statements,
    };
    (model, tally)
}

/// Waits for `follower`'s share of `committed` and checks it: exactly its tenant's and
/// filter's changes (repeats only under the same cursor), per resource in commit order,
/// no resync. Returns how many times it dropped its stream.
async fn check_share(follower: Follower, committed: &[Expected], seed: u64) -> usize {
    let expected: Vec<&Expected> = committed
        .iter()
        .filter(|c| follower.interest.wants(c.tenant, c.resource_type))
        .collect();
    let expected_keys: HashSet<String> = expected.iter().map(|c| c.key()).collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let keys: HashSet<String> = follower
            .received
            .lock()
            .unwrap()
            .changes
            .iter()
            .map(received_key)
            .collect();
        if expected_keys.is_subset(&keys) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let interest = follower.interest.clone();
    let received = follower.stop().await;
    let who = format!(
        "seed {seed}, {:?} of {} ({:?})",
        interest.via, interest.tenant, interest.types
    );
    assert!(
        received.resyncs.is_empty(),
        "{who}: resync {:?}",
        received.resyncs
    );
    // Duplicates (a resume may repeat changes) come with the same cursor: drop them.
    let mut seen_cursors = HashSet::new();
    let firsts: Vec<&Value> = received
        .changes
        .iter()
        .filter(|c| seen_cursors.insert(c["id"].as_str().unwrap_or("").to_owned()))
        .collect();
    let keys: Vec<String> = firsts.iter().map(|c| received_key(c)).collect();
    let key_set: HashSet<String> = keys.iter().cloned().collect();
    let missing: Vec<_> = expected_keys.difference(&key_set).collect();
    let extra: Vec<_> = key_set.difference(&expected_keys).collect();
    if !(missing.is_empty() && extra.is_empty()) {
        let path = std::env::temp_dir().join(format!(
            "changecast-model-{seed}-{}-{:?}.txt",
            interest.tenant, interest.via
        ));
        let mut text = received.trace.join("\n");
        text.push_str("\n\ncommitted, in commit order:\n");
        for change in &expected {
            text.push_str(&format!("  {}\n", change.key()));
        }
        std::fs::write(&path, text).unwrap();
        eprintln!("{who}: trace in {}", path.display());
    }
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{who}: {} of {} committed changes missing (e.g. {:?}), {} received that were \
         never committed or are not its own (e.g. {:?}); {} streams, {} refused, {} \
         changes received",
        missing.len(),
        expected_keys.len(),
        missing.first(),
        extra.len(),
        extra.first(),
        received.connections,
        received.refused,
        received.changes.len()
    );
    assert_eq!(
        keys.len(),
        key_set.len(),
        "{who}: one change arrived under two different cursors"
    );
    // Per resource, the order of commit.
    let mut want: HashMap<&str, Vec<String>> = HashMap::new();
    for change in &expected {
        want.entry(change.id.as_str())
            .or_default()
            .push(change.key());
    }
    let mut got: HashMap<String, Vec<String>> = HashMap::new();
    for (change, key) in firsts.iter().zip(&keys) {
        got.entry(change_id(change)).or_default().push(key.clone());
    }
    for (id, want) in want {
        assert_eq!(
            got.get(id),
            Some(&want),
            "{who}: changes of resource {id} out of commit order"
        );
    }
    received.connections - 1
}

/// Seeded model-based test: writer transactions open at once over three tenants and two
/// resource types, committing out of order, some rolled back, some with savepoints
/// rolled back; twelve subscribers (SSE and WS, with and without a type filter) that
/// drop their streams at random moments and resume with their cursors. Each receives
/// exactly the committed changes of its tenant and filter, per resource in commit order.
/// `CHANGECAST_MODEL_SEEDS=1..200 cargo test --test it model` runs more seeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_concurrent_writers_and_resuming_subscribers() {
    for seed in model_seeds() {
        model_run(seed).await;
    }
}

/// PostgreSQL's snapshot `xmax` is the newest
/// *completed* transaction + 1, not the next id to be assigned, so a transaction whose id
/// is at or above a cursor's `xmax` may have been running — and writing rows — before the
/// cursor's snapshot was taken. Here X writes row a, V (older than X) writes row b and
/// commits, E writes row c with a snapshot whose xmax is X (X is neither visible nor
/// listed as running). A subscriber that got b and c and resumes from c's cursor after X
/// commits must get a. (A cluster of the test's own: another session completing a
/// transaction in between would move xmax past X and hide the case.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_running_beyond_a_cursors_xmax_is_replayed() {
    let cluster = OwnCluster::start().await;
    let db_url = cluster.create_database("beyond").await;
    let app = start_on(db_url, |_| {}).await;
    let t = token("acme");
    let mut stream = app.sse(&t, "").await;
    let (v, x) = (app.connect_db().await, app.connect_db().await);
    let insert = "insert into tickets (tenant_id, title) values ('acme', $1) returning id::text";
    // The service's own rare writes (a doorbell heartbeat, a pruning tick) completing in
    // between would spoil the case: try again then.
    let mut attempts = 0;
    let (a, b, c) = loop {
        attempts += 1;
        v.batch_execute("begin").await.unwrap();
        let v_xid = current_xid(&v).await;
        x.batch_execute("begin").await.unwrap();
        let x_xid = current_xid(&x).await;
        assert!(v_xid < x_xid);
        let a: String = x.query_one(insert, &[&"a"]).await.unwrap().get(0);
        let b: String = v.query_one(insert, &[&"b"]).await.unwrap().get(0);
        v.batch_execute("commit").await.unwrap();
        let row = app
            .db
            .query_one(
                "with w as (insert into tickets (tenant_id, title) values ('acme', 'c')
                            returning id::text)
                 select (select id from w), pg_current_snapshot()::text",
                &[],
            )
            .await
            .unwrap();
        let (c, snapshot): (String, String) = (row.get(0), row.get(1));
        let xmax: i64 = snapshot.split(':').nth(1).unwrap().parse().unwrap();
        if xmax <= x_xid {
            break (a, b, c);
        }
        assert!(
            attempts < 5,
            "the case needs E's snapshot ({snapshot}) not to list X ({x_xid}) as running"
        );
        x.batch_execute("commit").await.unwrap();
        let all = HashSet::from([a, b, c]);
        assert_eq!(stream.receive_ids(&all).await, all);
    };
    let got = stream
        .receive_ids(&HashSet::from([b.clone(), c.clone()]))
        .await;
    assert_eq!(got, HashSet::from([b.clone(), c.clone()]));
    let cursor = stream.last_event_id.clone().unwrap();
    drop(stream);

    x.batch_execute("commit").await.unwrap();
    let mut resumed = app.sse_with(&t, "", Some(&cursor)).await;
    let received = resumed.receive_ids(&HashSet::from([a.clone()])).await;
    assert_nothing_lost(&HashSet::from([a]), &received, &HashSet::from([b, c]));
    app.stop().await;
}

/// The id of the session's transaction (assigned now if it had none).
async fn current_xid(db: &tokio_postgres::Client) -> i64 {
    db.query_one("select pg_current_xact_id()::text::bigint", &[])
        .await
        .unwrap()
        .get(0)
}

// ---------------------------------------------------------------------------------------
// Slow and stalled consumers.

/// Stalled SSE and WebSocket subscribers (connected, never reading) next to a normal one,
/// while 3,000 changes of 4 KiB commit — more than a tenant's fan-out buffer holds. The
/// normal subscriber gets every change, each within 2 s of its commit (its delays are
/// printed: a loose bound that catches head-of-line blocking, not a speed test), the
/// service's memory grows by a bounded amount
/// (the stalled ones fall back to the journal instead of queueing), and once the stalled
/// subscribers read again they get every change too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_consumers_neither_grow_memory_nor_hold_back_others_and_lose_nothing() {
    const STALLED: usize = 10;
    const CHANGES: i64 = 3000;
    let db_url = server().fresh_database().await;
    let service = ServiceProcess::start(&db_url, "127.0.0.1:0");
    let http = reqwest::Client::new();
    wait_for_status(&http, &format!("http://{}/readyz", service.addr), 200).await;
    let t = token("acme");
    let sse = |http: reqwest::Client, addr: String, t: String| async move {
        let response = http
            .get(format!("http://{addr}/v1/events?types=ticket"))
            .bearer_auth(t)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        SseStream::new(response)
    };
    let mut normal = sse(http.clone(), service.addr.clone(), t.clone()).await;
    let mut stalled_sse = Vec::new();
    for _ in 0..STALLED {
        // One HTTP client each: a shared one would stall on the unread streams' connections.
        stalled_sse.push(sse(reqwest::Client::new(), service.addr.clone(), t.clone()).await);
    }
    let mut stalled_ws = Vec::new();
    for _ in 0..STALLED {
        let mut ws = ws_connect(&service.addr, Some(&t), "").await.unwrap();
        ws.expect("connection_established").await;
        ws.subscribe(json!({"resource_types": ["ticket"]})).await;
        stalled_ws.push(ws);
    }
    let pid = service.child.id();
    let before = status_kib(pid, "VmRSS").unwrap();

    // The normal subscriber reads as the changes come, noting when each arrived.
    let reader = tokio::spawn(async move {
        let mut arrived: HashMap<String, Instant> = HashMap::new();
        let deadline = Instant::now() + WAIT;
        while arrived.len() < CHANGES as usize {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(event) = normal.next_within(left).await else {
                break;
            };
            if event.event == "resource_change" {
                let id = event.data["resource"]["id"].as_str().unwrap().to_owned();
                arrived.entry(id).or_insert_with(Instant::now);
            }
        }
        arrived
    });
    let (db, connection) = tokio_postgres::connect(&db_url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let mut committed_at: HashMap<String, Instant> = HashMap::new();
    for _ in 0..(CHANGES / 100) {
        let rows = db
            .query(
                "insert into tickets (tenant_id, title, body)
                 select 'acme', 'slow ' || g, repeat(md5(random()::text), 128)
                 from generate_series(1, 100) g returning id::text",
                &[],
            )
            .await
            .unwrap();
        let at = Instant::now();
        committed_at.extend(rows.iter().map(|row| (row.get::<_, String>(0), at)));
        // Paced (2,000 changes/s at most), so a delay tells a stall rather than a backlog.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let written: HashSet<String> = committed_at.keys().cloned().collect();
    // The normal subscriber is not held back by the stalled ones: it gets every change,
    // each soon after its commit (a head-of-line stall would hold them until the stalled
    // subscribers read, i.e. never within the test's bounds).
    let arrived = tokio::time::timeout(WAIT + Duration::from_secs(5), reader)
        .await
        .expect("the normal subscriber's reader did not end")
        .unwrap();
    let received: HashSet<String> = arrived.keys().cloned().collect();
    assert_nothing_lost(&written, &received, &HashSet::new());
    let mut delays: Vec<Duration> = committed_at
        .iter()
        .map(|(id, committed)| arrived[id].saturating_duration_since(*committed))
        .collect();
    delays.sort();
    let at = |q: f64| delays[((delays.len() - 1) as f64 * q) as usize];
    let (p50, p99, max) = (at(0.5), at(0.99), *delays.last().unwrap());
    eprintln!(
        "stalled consumers: the normal subscriber's delay from commit to receipt \
         p50 {p50:?}, p99 {p99:?}, max {max:?}"
    );
    assert!(
        max < Duration::from_secs(2),
        "a change reached the normal subscriber {max:?} after its commit (p99 {p99:?})"
    );
    let after = status_kib(pid, "VmRSS").unwrap();
    let peak = peak_rss_kib(pid).unwrap();
    eprintln!(
        "stalled consumers: {} changes of 4 KiB, {STALLED} SSE + {STALLED} WS stalled; \
         service RSS {before} KiB before, {after} KiB after, peak {peak} KiB",
        written.len()
    );
    // 12 MB were written; unbounded queues would hold them once per stalled subscriber.
    assert!(
        peak.saturating_sub(before) < 96 * 1024,
        "service memory grew from {before} KiB to a peak of {peak} KiB"
    );

    // Reading again, each stalled subscriber gets every change (from the journal).
    for stream in &mut stalled_sse {
        let got = stream.receive_ids(&written).await;
        assert_nothing_lost(&written, &got, &HashSet::new());
    }
    for ws in &mut stalled_ws {
        let got = ws.receive_ids(&written).await;
        assert_nothing_lost(&written, &got, &HashSet::new());
    }
}
