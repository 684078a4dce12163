//! "Nothing lost": resume from a cursor under every fault the contract names, with the
//! received resource ids compared as sets.

use std::collections::HashSet;
use std::time::Duration;

use tokio_postgres::NoTls;

use crate::helpers::*;

/// Writes `n` tickets for `tenant`, in transactions of `per_tx`; returns their ids.
async fn write_tickets(app: &TestApp, tenant: &str, n: i64, per_tx: i64) -> HashSet<String> {
    let mut ids = HashSet::new();
    for _ in 0..n / per_tx {
        ids.extend(app.insert_tickets(tenant, per_tx).await);
    }
    ids
}

#[tokio::test]
async fn resume_after_disconnect_delivers_every_change_written_meanwhile() {
    let app = spawn_app().await;
    let t = token("acme");
    let mut stream = app.sse(&t, "").await;
    let before = HashSet::from([app.insert_ticket("acme", "before").await]);
    let first = stream.changes_until(1).await;
    let cursor = first[0].id.clone().unwrap();
    drop(stream);

    // Another tenant writes in between; a last acme change comes after all of it, so
    // reading up to that one would have met any leak.
    let globex = write_tickets(&app, "globex", 20, 20).await;
    let mut written = write_tickets(&app, "acme", 500, 5).await;
    let globex_later = write_tickets(&app, "globex", 20, 20).await;
    written.insert(app.insert_ticket("acme", "last").await);

    let mut resumed = app.sse_with(&t, "", Some(&cursor)).await;
    let received = resumed.receive_ids(&written).await;
    assert_nothing_lost(&written, &received, &before);
    assert!(
        received.is_disjoint(&globex) && received.is_disjoint(&globex_later),
        "another tenant's changes leaked into the replay"
    );
    assert!(
        received.is_disjoint(&globex),
        "another tenant's changes leaked into the replay"
    );
    // The query parameter works the same as the header.
    let mut by_query = app.sse(&t, &format!("last_event_id={cursor}")).await;
    assert_nothing_lost(&written, &by_query.receive_ids(&written).await, &before);
}

#[tokio::test]
async fn a_long_running_transaction_that_commits_late_is_not_lost() {
    let app = spawn_app().await;
    let t = token("acme");
    let mut live = app.sse(&t, "").await;

    // T1 writes first (lower journal id) but commits last.
    let (slow, early) = app.begin_long_transaction("acme", "slow").await;
    let quick = app.insert_ticket("acme", "quick").await;
    let seen = live.changes_until(1).await;
    assert_eq!(seen[0].data["resource"]["id"], quick.as_str());
    let cursor = seen[0].id.clone().unwrap();
    drop(live);

    slow.batch_execute("commit").await.unwrap();
    let later = app.insert_ticket("acme", "after").await;

    let mut resumed = app.sse_with(&t, "", Some(&cursor)).await;
    let expected = HashSet::from([early, later]);
    assert_nothing_lost(
        &expected,
        &resumed.receive_ids(&expected).await,
        &HashSet::from([quick]),
    );
}

#[tokio::test]
async fn a_connected_subscriber_gets_a_late_commit_live() {
    let app = spawn_app().await;
    let mut live = app.sse(&token("acme"), "").await;
    let (slow, _) = app.begin_long_transaction("acme", "slow").await;
    let quick = app.insert_ticket("acme", "quick").await;
    assert_eq!(
        live.changes_until(1).await[0].data["resource"]["id"],
        quick.as_str()
    );
    slow.batch_execute("commit").await.unwrap();
    assert_eq!(
        live.changes_until(1).await[0].data["resource"]["title"],
        "slow"
    );
}

#[tokio::test]
async fn killing_the_listener_connection_mid_stream_loses_nothing() {
    let app = spawn_app().await;
    let mut stream = app.sse(&token("acme"), "").await;
    let writer = app.spawn_writer("acme", 100, 10).await;
    let mut kills = 0;
    while !writer.is_finished() {
        kills += app.kill_listener().await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let written = writer.await.unwrap();
    assert!(kills >= 1, "the listener was never killed");
    assert_eq!(written.len(), 1000);
    let received = stream.receive_ids(&written).await;
    assert_nothing_lost(&written, &received, &HashSet::new());
}

#[tokio::test]
async fn resume_across_a_service_restart() {
    let app = spawn_app().await;
    let t = token("acme");
    let mut stream = app.sse(&t, "").await;
    let before = HashSet::from([app.insert_ticket("acme", "one").await]);
    let cursor = stream.changes_until(1).await[0].id.clone().unwrap();
    drop(stream);
    let db_url = app.stop().await;

    // Written while no service runs at all.
    let (db, connection) = tokio_postgres::connect(&db_url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let written: HashSet<String> = db
        .query("insert into tickets (tenant_id, title) select 'acme', 'down' from generate_series(1, 100) returning id::text", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();

    let app = start_on(db_url, |_| {}).await;
    let mut resumed = app.sse_with(&t, "", Some(&cursor)).await;
    assert_nothing_lost(&written, &resumed.receive_ids(&written).await, &before);
}

#[tokio::test]
async fn snapshot_then_stream_from_its_cursor_misses_nothing_and_repeats_nothing() {
    let app = spawn_app().await;
    let t = token("acme");
    let before: HashSet<String> = app.insert_tickets("acme", 5).await.into_iter().collect();
    // In flight while the snapshot is taken: not in it, so the stream must bring it.
    let (slow, in_flight) = app.begin_long_transaction("acme", "in flight").await;

    let (status, snapshot) = app.get("/v1/snapshot?types=ticket,agent", Some(&t)).await;
    assert_eq!(status, 200, "{snapshot}");
    assert_eq!(snapshot["truncated"], false);
    assert_eq!(snapshot["resources"]["agent"], serde_json::json!([]));
    let in_snapshot: HashSet<String> = snapshot["resources"]["ticket"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(in_snapshot, before);

    let after: HashSet<String> = app.insert_tickets("acme", 5).await.into_iter().collect();
    slow.batch_execute("commit").await.unwrap();

    let cursor = snapshot["cursor"].as_str().unwrap();
    let mut stream = app.sse_with(&t, "", Some(cursor)).await;
    let mut expected = after.clone();
    expected.insert(in_flight);
    let streamed = stream.receive_ids(&expected).await;
    assert_eq!(
        streamed, expected,
        "exactly the changes the snapshot does not contain"
    );
    assert!(streamed.is_disjoint(&in_snapshot));
}

#[tokio::test]
async fn snapshot_limit_truncates() {
    let app = spawn_app().await;
    app.insert_tickets("acme", 5).await;
    let (status, body) = app
        .get("/v1/snapshot?types=ticket&limit=3", Some(&token("acme")))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["resources"]["ticket"].as_array().unwrap().len(), 3);
    assert_eq!(body["truncated"], true);
    assert!(
        body["resources"].get("agent").is_none(),
        "only the asked types"
    );
}

#[tokio::test]
async fn pruning_removes_old_rows_and_an_old_cursor_gets_resync() {
    let app = spawn_app().await;
    let t = token("acme");
    let mut stream = app.sse(&t, "").await;
    app.insert_tickets("acme", 3).await;
    let old_cursor = stream.changes_until(3).await[0].id.clone().unwrap();
    drop(stream);
    app.insert_tickets("acme", 2).await;
    // Everything so far committed "two hours ago"; then one fresh change.
    app.age_committed_changes(2).await;
    app.insert_ticket("acme", "fresh").await;
    // Pruning what the tailer has not published yet would (rightly) cut every live
    // subscriber off and resync them: prune once it has published all six.
    app.until_counted(&t, "ticket", 6).await;

    let pool = changecast::db::pool(&app.db_url, 2, Duration::from_secs(30)).unwrap();
    let pruned = changecast::journal::pruner::prune(&pool, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(pruned, 5);
    let left: i64 = app
        .db
        .query_one("select count(*) from changecast.change_log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 1);

    let mut resumed = app.sse_with(&t, "", Some(&old_cursor)).await;
    let first = resumed.next_within(WAIT).await.unwrap();
    assert_eq!(first.event, "resync");
    assert_eq!(first.data["reason"], "cursor_expired");
    assert!(
        first.id.is_some(),
        "resync carries a fresh cursor so the browser stops resending the old one"
    );
    // The stream continues live.
    let next = app.insert_ticket("acme", "live").await;
    assert_eq!(
        resumed.changes_until(1).await[0].data["resource"]["id"],
        next.as_str()
    );
}

#[tokio::test]
async fn malformed_and_foreign_cursors_get_resync_not_an_error() {
    let app = spawn_app().await;
    let mut acme = app.sse(&token("acme"), "").await;
    app.insert_ticket("acme", "x").await;
    let acme_cursor = acme.changes_until(1).await[0].id.clone().unwrap();

    for (tenant, cursor) in [
        ("acme", "garbage!"),
        ("acme", "AAAAAAAAAAAAAA"),
        ("globex", acme_cursor.as_str()),
    ] {
        let mut stream = app.sse_with(&token(tenant), "", Some(cursor)).await;
        let first = stream.next_within(WAIT).await.unwrap();
        assert_eq!(first.event, "resync", "{tenant} {cursor}");
        assert_eq!(first.data["reason"], "cursor_invalid");
        let live = app.insert_ticket(tenant, "after resync").await;
        assert_eq!(
            stream.changes_until(1).await[0].data["resource"]["id"],
            live.as_str()
        );
    }
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_catches_up_from_the_journal() {
    let app = spawn_app_with(|c| c.subscriber_buffer = 8).await;
    let mut stream = app.sse(&token("acme"), "").await;
    // One transaction: the tailer publishes it in one burst, far past the buffer.
    let written: HashSet<String> = app.insert_tickets("acme", 600).await.into_iter().collect();
    let received = stream.receive_ids(&written).await;
    assert_nothing_lost(&written, &received, &HashSet::new());
    let lagged = app
        .metric("changecast_subscribers_lagged_total")
        .await
        .unwrap();
    assert!(
        lagged >= 1.0,
        "the subscriber never lagged, so this test proved nothing"
    );
}

#[tokio::test]
async fn subscribers_get_a_transaction_of_several_pages_whole_and_in_order() {
    // Far more than the buffer and than one tailer page: the tailer publishes the batch
    // in parts as the subscribers make room (each part with its own boundary), and a
    // subscriber it stops waiting for catches up from the journal; either way every row
    // arrives once, in journal order. (Whether a subscriber lagged depends on how fast
    // this test reads on a busy machine: `changecast-bench bulk` shows that.)
    let app = spawn_app_with(|c| c.subscriber_buffer = 64).await;
    let mut first = app.sse(&token("acme"), "").await;
    let mut second = app.sse(&token("acme"), "").await;
    let written = app.insert_tickets("acme", 2500).await;
    // Both read at once: a stream not read while the other is would stall, and be right
    // to lag.
    let (one, two) = tokio::join!(
        first.changes_until(written.len()),
        second.changes_until(written.len())
    );
    for events in [one, two] {
        let ids: Vec<String> = events
            .iter()
            .map(|e| e.data["resource"]["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids, written, "every row once, in journal order");
    }
}

#[tokio::test]
async fn pruning_goes_by_commit_time_so_a_long_transaction_is_kept_and_cursors_stay_valid() {
    let app = spawn_app().await;
    let t = token("acme");
    let old: HashSet<String> = app.insert_tickets("acme", 3).await.into_iter().collect();
    // A long transaction writes before the tick but commits after it.
    let (slow, late) = app.begin_long_transaction("acme", "long").await;
    let (_, snapshot) = app.get("/v1/snapshot?types=ticket", Some(&t)).await;
    app.age_committed_changes(2).await;
    slow.batch_execute("commit").await.unwrap();

    let pool = changecast::db::pool(&app.db_url, 2, Duration::from_secs(30)).unwrap();
    let pruned = changecast::journal::pruner::prune(&pool, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(
        pruned, 3,
        "only the transactions that had ended before the tick"
    );
    let kept: i64 = app
        .db
        .query_one("select count(*) from changecast.change_log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1, "the long transaction's row is kept");

    // The snapshot was taken while the long transaction ran: its cursor is still good.
    let cursor = snapshot["cursor"].as_str().unwrap();
    let mut stream = app.sse_with(&t, "", Some(cursor)).await;
    let first = stream.next_within(WAIT).await.unwrap();
    assert_eq!(
        first.event, "resource_change",
        "no resync: {:?}",
        first.data
    );
    assert_eq!(first.data["resource"]["id"], late.as_str());
    assert!(!old.contains(&late));
}

#[tokio::test]
async fn a_client_that_received_nothing_yet_still_resumes_without_loss() {
    let app = spawn_app().await;
    let t = token("acme");
    // SSE: the stream's first bytes carry an id, though no change has arrived.
    let mut quiet = app.sse(&t, "").await;
    let _ = quiet.next_within(Duration::from_millis(200)).await;
    let sse_cursor = quiet
        .last_event_id
        .clone()
        .expect("the preamble sets an event id");
    drop(quiet);
    // WS: subscription_confirmed carries one.
    let mut ws = app.ws(&t).await;
    ws.expect("connection_established").await;
    let confirmed = ws.subscribe(serde_json::json!({})).await;
    let ws_cursor = confirmed["id"]
        .as_str()
        .expect("subscription_confirmed has an id")
        .to_owned();
    drop(ws);

    let written: HashSet<String> = app.insert_tickets("acme", 5).await.into_iter().collect();

    let mut sse = app.sse_with(&t, "", Some(&sse_cursor)).await;
    assert_nothing_lost(&written, &sse.receive_ids(&written).await, &HashSet::new());
    let mut ws = app.ws(&t).await;
    ws.expect("connection_established").await;
    ws.subscribe(serde_json::json!({"last_event_id": ws_cursor}))
        .await;
    assert_nothing_lost(&written, &ws.receive_ids(&written).await, &HashSet::new());
}

#[tokio::test]
async fn a_journal_copied_elsewhere_starts_over_and_old_cursors_resync() {
    for (copy, sql) in [
        (
            "restored into a younger cluster: rows from its future",
            "update changecast.change_log
             set xid = (pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 1000000)::text::xid8",
        ),
        (
            "restored into another database: the old home, even with the journal pruned empty",
            "update changecast.journal_meta set home = '1234567890/1';
             truncate changecast.change_log;",
        ),
    ] {
        let app = spawn_app().await;
        let t = token("acme");
        let mut stream = app.sse(&t, "").await;
        app.insert_ticket("acme", "before the move").await;
        let cursor = stream.changes_until(1).await[0].id.clone().unwrap();
        drop(stream);
        let db_url = app.stop().await;
        let (db, connection) = tokio_postgres::connect(&db_url, NoTls).await.unwrap();
        tokio::spawn(connection);
        db.batch_execute(sql).await.unwrap();

        let app = start_on(db_url, |_| {}).await;
        let left: i64 = app
            .db
            .query_one("select count(*) from changecast.change_log", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 0, "{copy}: the foreign journal was dropped");
        let mut resumed = app.sse_with(&t, "", Some(&cursor)).await;
        let first = resumed.next_within(WAIT).await.unwrap();
        assert_eq!(first.event, "resync", "{copy}");
        assert_eq!(first.data["reason"], "cursor_invalid", "{copy}");
        let live = app.insert_ticket("acme", "after the move").await;
        assert_eq!(
            resumed.changes_until(1).await[0].data["resource"]["id"],
            live.as_str(),
            "{copy}: the stream continues live"
        );
    }
}

#[tokio::test]
async fn subscribers_joining_while_a_large_transaction_is_paged_out_miss_nothing() {
    // 2500 rows in one transaction: the tailer publishes them in several pages, and
    // subscribers join at different points of that.
    let app = spawn_app().await;
    let t = token("acme");
    let (_, snapshot) = app.get("/v1/snapshot?types=ticket", Some(&t)).await;
    let cursor = snapshot["cursor"].as_str().unwrap().to_owned();
    let writer = app.spawn_writer("acme", 1, 2500).await;
    let mut streams = Vec::new();
    while !writer.is_finished() || streams.len() < 6 {
        streams.push(app.sse_with(&t, "", Some(&cursor)).await);
        if streams.len() >= 12 {
            break;
        }
    }
    let written = writer.await.unwrap();
    for mut stream in streams {
        assert_nothing_lost(
            &written,
            &stream.receive_ids(&written).await,
            &HashSet::new(),
        );
    }
}
