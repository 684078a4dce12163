//! Reading the journal from a hot standby (`CHANGECAST_READ_DATABASE_URL`): a real
//! primary and a `pg_basebackup -R` standby of clusters of the test's own, faults on
//! either side while writers write, and the ids every subscriber received compared, as
//! sets, with the ids written. Skipped (saying so) where the machine's PostgreSQL has
//! no `pg_basebackup`, unless `CHANGECAST_REQUIRE_STANDBY=1`.

use std::collections::HashSet;
use std::time::Duration;

use changecast::config::ReadFallback;
use changecast::db::embedded::StopMode;
use changecast::secret::Secret;
use tokio::sync::watch;

use crate::helpers::cluster::{OwnCluster, StandbyCluster};
use crate::helpers::followers::{assert_all_followers_got, Follower, Interest, Via};
use crate::helpers::writers::spawn_writers;
use crate::helpers::*;

/// A primary with a database `standby` and a hot standby of it; `None` when the
/// standby cannot be made here (skipped).
async fn primary_and_standby() -> Option<(OwnCluster, StandbyCluster, String)> {
    let cluster = OwnCluster::start().await;
    let db_url = cluster.create_database("standby").await;
    let standby = cluster.standby().await?;
    Some((cluster, standby, db_url))
}

/// The service on the primary at `db_url`, reading the journal from `standby`, and
/// waiting for it however long it lags (`CHANGECAST_READ_FALLBACK=wait`).
async fn reading(standby: &StandbyCluster, db_url: &str, max_lag: Duration) -> TestApp {
    reading_with(standby, db_url, max_lag, ReadFallback::Wait).await
}

async fn reading_with(
    standby: &StandbyCluster,
    db_url: &str,
    max_lag: Duration,
    fallback: ReadFallback,
) -> TestApp {
    let read_url = standby.url("standby");
    start_on(db_url.to_owned(), |config| {
        config.read_database_url = Some(Secret::new(read_url));
        config.read_max_lag = max_lag;
        config.read_fallback = fallback;
    })
    .await
}

async fn followers(addr: &watch::Receiver<String>) -> Vec<Follower> {
    vec![
        Follower::start(addr.clone(), Interest::new(Via::Sse, "acme", None), None).await,
        Follower::start(
            addr.clone(),
            Interest::new(Via::Ws, "acme", Some(vec!["ticket"])),
            None,
        )
        .await,
    ]
}

/// Sessions of the service on `db`, by application name.
async fn sessions(db: &tokio_postgres::Client, name: &str) -> i64 {
    db.query_one(
        "select count(*) from pg_stat_activity where application_name = $1",
        &[&name],
    )
    .await
    .unwrap()
    .get(0)
}

/// Replay paused on the standby while writers go on: delivery waits (and `/readyz`
/// says 503 past the configured lag), then everything arrives once replay resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_standby_holds_delivery_back_and_loses_nothing() {
    let Some((_cluster, standby, db_url)) = primary_and_standby().await else {
        return;
    };
    let app = reading(&standby, &db_url, Duration::from_millis(300)).await;
    let admin = standby.admin().await;
    assert!(
        sessions(&admin, "changecast:standby-reader").await >= 1,
        "the tailer reads the standby"
    );
    let (_addr_tx, addr) = watch::channel(app.addr.to_string());
    let followers = followers(&addr).await;
    let writing = spawn_writers(&db_url, &[("acme", 1), ("acme", 3), ("globex", 1)]);
    writing.until_more(100).await;

    admin
        .execute("select pg_wal_replay_pause()", &[])
        .await
        .unwrap();
    writing.until_more(200).await;
    wait_for_status(&app.http, &app.url("/readyz"), 503).await;
    assert!(app.metric("changecast_standby_lag_bytes").await > Some(0.0));
    admin
        .execute("select pg_wal_replay_resume()", &[])
        .await
        .unwrap();
    app.wait_ready().await;
    writing.until_more(100).await;
    let (written, _) = writing.finish().await;
    for series in [
        "changecast_replays_total",
        "changecast_xid_rewinds_total",
        "changecast_subscribers_lagged_total",
        "changecast_db_reconnects_total",
        "changecast_events_received_total",
    ] {
        eprintln!("{series} {:?}", app.metric(series).await);
    }
    for follower in &followers {
        let missing: Vec<_> = written["acme"]
            .difference(&follower.ids())
            .cloned()
            .collect();
        eprintln!("{:?} misses {missing:?}", follower.interest.via);
    }

    let (n_written, n_received) = assert_all_followers_got(&followers, &written["acme"]).await;
    eprintln!("standby paused: {n_written} changes of acme written, {n_received} received");
    for follower in followers {
        follower.stop().await;
    }
    app.stop().await;
}

/// Replay paused on the standby, falling back to the primary: past the lag bound the
/// batches are read on the primary, so every change written while the standby stands
/// still arrives meanwhile, the instance stays ready, and once replay resumes the
/// batches are read on the standby again — with nothing lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_standby_is_read_around_on_the_primary() {
    let Some((_cluster, standby, db_url)) = primary_and_standby().await else {
        return;
    };
    let app = reading_with(
        &standby,
        &db_url,
        Duration::from_millis(300),
        ReadFallback::Primary,
    )
    .await;
    let admin = standby.admin().await;
    let (_addr_tx, addr) = watch::channel(app.addr.to_string());
    let followers = followers(&addr).await;
    let writing = spawn_writers(&db_url, &[("acme", 1), ("acme", 3), ("globex", 1)]);
    writing.until_more(100).await;

    admin
        .execute("select pg_wal_replay_pause()", &[])
        .await
        .unwrap();
    writing.until_more(200).await;
    let (paused_written, _) = writing.finish().await;
    // Replay is still paused: these can only have been read on the primary.
    let (n_written, _) = assert_all_followers_got(&followers, &paused_written["acme"]).await;
    assert_eq!(app.metric("changecast_standby_fallback").await, Some(1.0));
    assert!(app.metric("changecast_standby_lag_bytes").await > Some(0.0));
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(
        ready.status(),
        200,
        "falling back, the instance stays ready"
    );
    eprintln!("standby paused, read on the primary: {n_written} changes of acme delivered");

    admin
        .execute("select pg_wal_replay_resume()", &[])
        .await
        .unwrap();
    let writing = spawn_writers(&db_url, &[("acme", 1), ("acme", 3)]);
    writing.until_more(100).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while app.metric("changecast_standby_fallback").await != Some(0.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still reading the primary after the standby resumed replay"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    writing.until_more(100).await;
    let (resumed_written, _) = writing.finish().await;
    let all: HashSet<String> = paused_written["acme"]
        .union(&resumed_written["acme"])
        .cloned()
        .collect();
    let (n_written, n_received) = assert_all_followers_got(&followers, &all).await;
    eprintln!(
        "standby paused then resumed: {n_written} changes of acme written, {n_received} received"
    );
    for follower in followers {
        follower.stop().await;
    }
    app.stop().await;
}

/// The standby restarted under the service: its reader reconnects, nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_standby_loses_nothing() {
    let Some((_cluster, mut standby, db_url)) = primary_and_standby().await else {
        return;
    };
    let app = reading(&standby, &db_url, Duration::from_secs(10)).await;
    let (_addr_tx, addr) = watch::channel(app.addr.to_string());
    let followers = followers(&addr).await;
    let writing = spawn_writers(&db_url, &[("acme", 1), ("acme", 3)]);
    writing.until_more(100).await;
    standby.stop(StopMode::Fast).await;
    writing.until_more(100).await;
    standby.start_again().await;
    writing.until_more(100).await;
    let (written, _) = writing.finish().await;
    for series in [
        "changecast_replays_total",
        "changecast_xid_rewinds_total",
        "changecast_subscribers_lagged_total",
        "changecast_db_reconnects_total",
    ] {
        eprintln!("{series} {:?}", app.metric(series).await);
    }
    assert_all_followers_got(&followers, &written["acme"]).await;
    for follower in followers {
        follower.stop().await;
    }
    app.stop().await;
}

/// The primary restarted: LISTEN reconnects, the standby resumes streaming, writers
/// retry; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_primary_loses_nothing() {
    let Some((mut cluster, standby, db_url)) = primary_and_standby().await else {
        return;
    };
    let app = reading(&standby, &db_url, Duration::from_secs(10)).await;
    let (_addr_tx, addr) = watch::channel(app.addr.to_string());
    let followers = followers(&addr).await;
    let writing = spawn_writers(&db_url, &[("acme", 1), ("acme", 3)]);
    writing.until_more(100).await;
    cluster.stop(StopMode::Fast).await;
    writing.until_failures(20).await;
    cluster.start_again().await;
    writing.until_more(100).await;
    let (written, _) = writing.finish().await;
    assert_all_followers_got(&followers, &written["acme"]).await;
    assert!(app.metric("changecast_db_reconnects_total").await >= Some(1.0));
    for follower in followers {
        follower.stop().await;
    }
    app.stop().await;
}

/// Batches read on the standby skip what lies below the primary's id floor marks, and a
/// transaction left open on the primary holds that floor back: its row, committed after
/// several marks, still reaches every subscriber; once it has ended, the floor passes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_id_floor_bounds_standby_reads_and_waits_for_open_transactions() {
    let Some((_cluster, standby, db_url)) = primary_and_standby().await else {
        return;
    };
    let app = reading(&standby, &db_url, Duration::from_secs(10)).await;
    let (_addr_tx, addr) = watch::channel(app.addr.to_string());
    let followers = followers(&addr).await;
    let (slow, early) = app.begin_long_transaction("acme", "slow").await;
    let opened_below = next_id(&app.db).await;
    let writing = spawn_writers(&db_url, &[("acme", 1), ("acme", 3)]);
    // Marks are taken once a second while changes arrive: several go by.
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        writing.until_more(50).await;
    }
    let (mut written, _) = writing.finish().await;
    let floor = app.metric("changecast_tailer_id_floor").await.unwrap() as i64;
    assert!(
        floor < opened_below,
        "the floor ({floor}) passed a transaction still open below {opened_below}"
    );
    slow.batch_execute("commit").await.unwrap();
    let acme = written.get_mut("acme").unwrap();
    acme.insert(early);
    assert_all_followers_got(&followers, acme).await;
    eventually(
        "the floor passes the ended transaction's row on the standby's reads",
        || async {
            app.insert_ticket("acme", "nudge").await;
            app.metric("changecast_tailer_id_floor").await.unwrap() as i64 >= opened_below
        },
    )
    .await;
    for follower in followers {
        follower.stop().await;
    }
    app.stop().await;
}

/// A cursor minted by an instance reading the primary, ahead of what a paused standby
/// has replayed: an instance reading that standby waits for it — no `resync` — and
/// delivers exactly what came after the cursor once the standby catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_ahead_of_the_standby_is_waited_for_not_resynced() {
    let Some((_cluster, standby, db_url)) = primary_and_standby().await else {
        return;
    };
    let on_primary = start_on(db_url.clone(), |_| {}).await;
    let on_standby = reading(&standby, &db_url, Duration::from_secs(10)).await;
    let t = token("acme");
    let admin = standby.admin().await;
    admin
        .execute("select pg_wal_replay_pause()", &[])
        .await
        .unwrap();

    let mut first = on_primary.sse(&t, "").await;
    let before: HashSet<String> = on_primary
        .insert_tickets("acme", 5)
        .await
        .into_iter()
        .collect();
    assert_eq!(first.receive_ids(&before).await, before);
    let cursor = first.last_event_id.clone().expect("a cursor");
    let after: HashSet<String> = on_primary
        .insert_tickets("acme", 5)
        .await
        .into_iter()
        .collect();

    let mut resumed = on_standby.sse_with(&t, "", Some(&cursor)).await;
    // Nothing can arrive while the standby has not replayed the changes.
    resumed
        .assert_no_change_within(Duration::from_millis(500))
        .await;
    admin
        .execute("select pg_wal_replay_resume()", &[])
        .await
        .unwrap();
    let event = resumed.next_within(WAIT).await.expect("an event");
    assert_eq!(event.event, "resource_change", "{:?}", event.data);
    let mut received = HashSet::from([event.data["resource_id"].as_str().unwrap().to_owned()]);
    received.extend(resumed.receive_ids(&after).await);
    // The cursor's own change may come again (a cursor does not see its transaction).
    assert_nothing_lost(&after, &received, &before);
    assert_eq!(
        on_standby
            .metric("changecast_resyncs_total{reason=\"cursor_invalid\"}")
            .await,
        Some(0.0)
    );
    on_primary.stop().await;
    on_standby.stop().await;
}

/// Failover: the primary stops, the standby is promoted (a new timeline). The service,
/// given both hosts for its primary connections (`target_session_attrs=read-write`)
/// and the standby to read, follows: everything committed before the failover arrived
/// before it, subscribers learn of the new timeline with a `resync` (`cursor_invalid`,
/// as for any timeline change: they refetch their state there), and everything
/// committed on the new primary after that arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_standby_takes_over_and_nothing_is_lost() {
    let Some((mut cluster, standby, db_url)) = primary_and_standby().await else {
        return;
    };
    let primary_port = cluster.options().port.expect("the cluster keeps its port");
    let both = format!(
        "{}?target_session_attrs=read-write",
        db_url.replace(
            &format!("127.0.0.1:{primary_port}"),
            &format!("127.0.0.1:{primary_port},127.0.0.1:{}", standby.port())
        )
    );
    let app = reading(&standby, &both, Duration::from_secs(10)).await;
    let (_addr_tx, addr) = watch::channel(app.addr.to_string());
    let followers = followers(&addr).await;
    let writing = spawn_writers(&both, &[("acme", 1), ("acme", 3)]);
    writing.until_more(100).await;
    let (before, _) = writing.finish().await;
    for follower in &followers {
        let want = &before["acme"];
        eventually("every change before the failover arrives", || async {
            want.is_subset(&follower.ids())
        })
        .await;
    }

    cluster.stop(StopMode::Fast).await;
    let admin = standby.admin().await;
    let promoted: bool = admin
        .query_one("select pg_promote()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(promoted);
    // The new timeline reaches every subscriber as a resync (the client refetches its
    // state there); every change committed from then on must arrive.
    for follower in &followers {
        eventually("a resync for the new timeline", || async {
            !follower.received.lock().unwrap().resyncs.is_empty()
        })
        .await;
    }
    let writing = spawn_writers(&both, &[("acme", 1), ("acme", 3)]);
    writing.until_more(100).await;
    let (after, _) = writing.finish().await;
    for follower in followers {
        let want = &after["acme"];
        eventually("every change on the new primary arrives", || async {
            want.is_subset(&follower.ids())
        })
        .await;
        let received = follower.stop().await;
        for resync in &received.resyncs {
            assert_eq!(resync["reason"], "cursor_invalid", "{resync:?}");
        }
    }
    app.stop().await;
}

/// Measurement (run with `--ignored`): delivery latency of an instance reading the
/// standby against one reading the primary, in the same run, over the same commits —
/// from a writer's commit returning to the change arriving at an SSE subscriber of each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run with --ignored --nocapture"]
async fn latency_reading_the_standby_against_the_primary() {
    let Some((_cluster, standby, db_url)) = primary_and_standby().await else {
        return;
    };
    let on_primary = start_on(db_url.clone(), |_| {}).await;
    let on_standby = reading(&standby, &db_url, Duration::from_secs(10)).await;
    let t = token("acme");
    let n: usize = std::env::var("CHANGECAST_STANDBY_BENCH_CHANGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let rate: u64 = 200;
    let mut arrivals = Vec::new();
    for app in [&on_primary, &on_standby] {
        let mut stream = app.sse(&t, "").await;
        arrivals.push(tokio::spawn(async move {
            let mut seen = std::collections::HashMap::new();
            while seen.len() < n {
                let Some(event) = stream.next_within(WAIT).await else {
                    break;
                };
                if event.event == "resource_change" {
                    let id = event.data["resource_id"].as_str().unwrap().to_owned();
                    seen.entry(id).or_insert_with(tokio::time::Instant::now);
                }
            }
            seen
        }));
    }
    let writer = on_primary.connect_db().await;
    let mut committed = std::collections::HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    for _ in 0..n {
        tick.tick().await;
        let id: String = writer
            .query_one(
                "insert into tickets (tenant_id, title) values ('acme', 'lat') returning id::text",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        committed.insert(id, tokio::time::Instant::now());
    }
    for (label, arrived) in ["primary", "standby"].into_iter().zip(arrivals) {
        let arrived = arrived.await.unwrap();
        let mut latencies: Vec<Duration> = committed
            .iter()
            .map(|(id, at)| {
                let got = arrived
                    .get(id)
                    .unwrap_or_else(|| panic!("{label}: {id} lost"));
                got.saturating_duration_since(*at)
            })
            .collect();
        latencies.sort();
        let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
        eprintln!(
            "reading the {label}: {n} changes at {rate}/s, commit-to-SSE latency p50 {:?} \
             p90 {:?} p99 {:?} max {:?}",
            pick(0.5),
            pick(0.9),
            pick(0.99),
            latencies.last().unwrap()
        );
    }
    eprintln!(
        "standby waits: {:?} batches, {:?} s in all",
        on_standby
            .metric("changecast_standby_wait_seconds_count")
            .await,
        on_standby
            .metric("changecast_standby_wait_seconds_sum")
            .await
    );
    on_primary.stop().await;
    on_standby.stop().await;
}

/// A read URL that reaches another cluster is refused at start, naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_url_of_another_cluster_is_refused_at_start() {
    let cluster = OwnCluster::start().await;
    let db_url = cluster.create_database("elsewhere_check").await;
    let elsewhere = server().fresh_database().await;
    let mut config = changecast::ServeConfig::new(&db_url);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.read_database_url = Some(Secret::new(elsewhere));
    let error = changecast::App::build(
        config,
        &Secret::new(SECRET),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .err()
    .expect("another cluster is refused");
    let message = format!("{error:#}");
    assert!(
        message.contains("CHANGECAST_READ_DATABASE_URL")
            && message.contains("another PostgreSQL cluster"),
        "{message}"
    );
}

/// A session of its own on `url`.
async fn session(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// Queries the standby cancelled for a conflict with the replay of a lock: holding a
/// lock replay needs (`confl_lock`), or also waiting for one replay holds, which the
/// waiting query's deadlock check reports (`deadlocks`, or `confl_deadlock`).
async fn lock_conflicts(standby: &tokio_postgres::Client) -> i64 {
    standby
        .query_one(
            "select coalesce(sum(d.deadlocks + c.confl_lock + c.confl_deadlock), 0)::int8
             from pg_stat_database d join pg_stat_database_conflicts c using (datid)
             where d.datname = 'standby'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Partition locks replayed on the standby (as the pruner's TRUNCATE and DROP are)
/// cancel the tailer's read there: the read waits for the DEFAULT partition, whose lock
/// replay holds, while it holds the journal's first partition, which replay then
/// needs; the standby cancels it (a deadlock with recovery). The instance reconnects,
/// is ready again once replay goes on, and every change arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_cancelled_by_a_recovery_conflict_loses_nothing() {
    let Some((_cluster, standby, db_url)) = primary_and_standby().await else {
        return;
    };
    let app = reading(&standby, &db_url, Duration::from_secs(30)).await;
    let admin = standby.admin().await;
    let (_addr_tx, addr) = watch::channel(app.addr.to_string());
    let followers = followers(&addr).await;
    let writing = spawn_writers(&db_url, &[("acme", 1), ("acme", 3)]);
    writing.until_more(50).await;
    let conflicts_before = lock_conflicts(&admin).await;

    // Read before the DEFAULT partition is locked: the view opens every partition.
    let first: String = app
        .db
        .query_one(
            "select partition::text from changecast.journal_partitions
             where not is_default order by lower nulls first limit 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // Sent to the standby with the next commit, or by this one.
    let flush = "begin; select pg_current_xact_id(); commit";
    let default_holder = session(&db_url).await;
    default_holder
        .batch_execute(
            "set lock_timeout = '10s';
             begin; lock table changecast.change_log_default in access exclusive mode",
        )
        .await
        .unwrap();
    app.db.batch_execute(flush).await.unwrap();
    // A batch's read locks the partitions in bound order, the DEFAULT one last.
    eventually(
        "the tailer's read waits for a lock replay holds",
        || async {
            admin
                .query_one(
                    "select count(*) from pg_stat_activity
                 where application_name = 'changecast:standby-reader'
                   and wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
                >= 1
        },
    )
    .await;
    let first_holder = session(&db_url).await;
    first_holder
        .batch_execute(&format!(
            "set lock_timeout = '10s'; begin; lock table {first} in access exclusive mode"
        ))
        .await
        .unwrap();
    app.db.batch_execute(flush).await.unwrap();
    eventually("the standby cancels the tailer's read", || async {
        lock_conflicts(&admin).await > conflicts_before
    })
    .await;
    first_holder.batch_execute("rollback").await.unwrap();
    default_holder.batch_execute("rollback").await.unwrap();
    app.db.batch_execute(flush).await.unwrap();

    app.wait_ready().await;
    writing.until_more(100).await;
    let (written, _) = writing.finish().await;
    assert!(
        app.metric("changecast_db_reconnects_total").await >= Some(1.0),
        "the tailer reconnected after its read was cancelled"
    );
    assert_all_followers_got(&followers, &written["acme"]).await;
    for follower in followers {
        follower.stop().await;
    }
    app.stop().await;
}

/// The primary's present and its WAL insert position, read together.
async fn primary_now(db: &tokio_postgres::Client) -> (changecast::journal::Position, String) {
    let row = db
        .query_one(
            "select pg_current_snapshot()::text, pg_current_wal_insert_lsn()::text",
            &[],
        )
        .await
        .unwrap();
    let seen: changecast::journal::PgSnapshot = row.get::<_, &str>(0).parse().unwrap();
    (changecast::journal::Position::of_snapshot(seen), row.get(1))
}

/// Waits until `standby` has replayed the primary's WAL up to `lsn`.
async fn replayed(standby: &tokio_postgres::Client, lsn: &str) {
    eventually(&format!("the standby replays {lsn}"), || async {
        standby
            .query_one(
                "select pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                &[&lsn],
            )
            .await
            .unwrap()
            .get(0)
    })
    .await;
}

/// A replay page whose connection reaches a standby that has not replayed what the
/// hub published (another standby of a multi-host URL, further behind) is read on the
/// primary once the wait is over: every row inside the boundary is in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_page_on_a_standby_behind_the_boundary_misses_nothing() {
    use changecast::journal::{Journal, Published, ReplayFilter};
    use changecast::tenant::TenantId;

    let Some((_cluster, standby, db_url)) = primary_and_standby().await else {
        return;
    };
    let app = start_on(db_url.clone(), |_| {}).await;
    let admin = standby.admin().await;
    let (from, lsn) = primary_now(&app.db).await;
    replayed(&admin, &lsn).await;
    admin
        .execute("select pg_wal_replay_pause()", &[])
        .await
        .unwrap();
    let written: HashSet<String> = app.insert_tickets("acme", 5).await.into_iter().collect();
    let (upto, lsn) = primary_now(&app.db).await;

    let primary = changecast::db::pool(&db_url, 2, Duration::from_secs(10)).unwrap();
    let journal = Journal::open(&app.db)
        .await
        .unwrap()
        .checked_against(primary)
        .standby_wait_within(Duration::from_millis(500));
    journal.standby_reached(&lsn, &upto);
    let reader =
        changecast::db::standby::read_pool(&standby.url("standby"), 2, Duration::from_secs(10))
            .unwrap();
    let mut client = reader.get().await.unwrap();
    let tenant = TenantId::new("acme").unwrap();
    let cursor = from.cursor();
    let page = journal
        .replay_page(
            &mut client,
            &cursor,
            &Published::complete(upto),
            None,
            ReplayFilter {
                tenant: &tenant,
                types: None,
                app_events: true,
            },
            (1000, 1 << 20),
        )
        .await
        .unwrap();
    assert!(page.honours(&cursor).is_ok());
    let read: HashSet<String> = page
        .entries
        .iter()
        .filter_map(|entry| match entry {
            changecast::journal::Entry::Change(change) => Some(change.resource_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        read, written,
        "the page holds every row inside the boundary"
    );
    admin
        .execute("select pg_wal_replay_resume()", &[])
        .await
        .unwrap();
    app.stop().await;
}

/// A snapshot read on the standby while a transaction stays open on the primary: a
/// stream from its cursor sends the rows committed after it, and of the rows the
/// snapshot already had at most a few again (not everything since the open
/// transaction began).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_on_the_standby_gets_a_cursor_past_its_rows() {
    let Some((_cluster, standby, db_url)) = primary_and_standby().await else {
        return;
    };
    let app = reading(&standby, &db_url, Duration::from_secs(10)).await;
    let t = token("acme");
    let (long, _) = app.begin_long_transaction("acme", "open").await;
    let mut had = HashSet::new();
    for _ in 0..4 {
        had.extend(app.insert_tickets("acme", 5).await);
    }
    app.until_counted(&t, "ticket", 20).await;
    let (status, snapshot) = app.get("/v1/snapshot?types=ticket", Some(&t)).await;
    assert_eq!(status, 200, "{snapshot}");
    let in_snapshot: HashSet<String> = snapshot["resources"]["ticket"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(in_snapshot, had);
    let from = snapshot["cursor"].as_str().unwrap().to_owned();
    let after: HashSet<String> = app.insert_tickets("acme", 3).await.into_iter().collect();
    let mut stream = app.sse_with(&t, "types=ticket", Some(&from)).await;
    let received = stream.receive_ids(&after).await;
    long.batch_execute("rollback").await.unwrap();
    assert!(
        after.is_subset(&received),
        "{received:?} lacks some of {after:?}"
    );
    let again = received.intersection(&had).count();
    assert!(
        again <= 3,
        "{again} of the snapshot's {} rows sent again",
        had.len()
    );
    app.stop().await;
}

/// Writers committing asynchronously: the WAL writer flushes their commits, and the
/// tailer forces a flush of its own (a transaction id and an fsync on the primary) at
/// most about once a second, not for every batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asynchronous_commits_are_not_flushed_for_every_batch() {
    let Some((_cluster, standby, db_url)) = primary_and_standby().await else {
        return;
    };
    let app = reading(&standby, &db_url, Duration::from_secs(10)).await;
    let t = token("acme");
    let writer = app.connect_db().await;
    writer
        .batch_execute("set synchronous_commit = off")
        .await
        .unwrap();
    let first = next_xid(&app.db).await;
    let began = std::time::Instant::now();
    let mut written = 0;
    while began.elapsed() < Duration::from_secs(3) {
        writer
            .execute(
                "insert into tickets (tenant_id, title) values ('acme', 'async')",
                &[],
            )
            .await
            .unwrap();
        written += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.until_counted(&t, "ticket", written).await;
    let others = (next_xid(&app.db).await - first - 1) as u64 - written;
    eprintln!("{written} asynchronous commits, {others} other transaction ids");
    assert!(others <= 5, "{others} transaction ids besides the writer's");
    app.stop().await;
}

/// A new transaction id on the primary (so it takes one).
async fn next_xid(db: &tokio_postgres::Client) -> i64 {
    db.query_one("select pg_current_xact_id()::text::bigint", &[])
        .await
        .unwrap()
        .get(0)
}
