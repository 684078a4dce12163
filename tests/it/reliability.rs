//! Reliability: supervised background tasks, tenant channels that go when
//! their last subscriber does, retention honoured promptly when it is short.

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;

use crate::helpers::*;

const TAILER_RESTARTS: &str = r#"changecast_task_restarts_total{task="tailer"}"#;

/// A journal row the tailer cannot render makes it panic: here one its owner wrote by
/// hand (a backfill or repair) with `occurred_at = 'infinity'`, which the journal's
/// constraints allow and `to_char` turns into NULL. No application role can write such a
/// row, but any panic of the tailer must show the same way: `/readyz` 503 and a counted
/// restart — again and again while the row is there — and once it is gone, everything
/// written meanwhile still reaches subscribers.
#[tokio::test]
async fn a_panicking_tailer_is_reported_restarted_and_loses_nothing() {
    let app = spawn_app().await;
    assert_eq!(app.metric(TAILER_RESTARTS).await, Some(0.0));
    let mut stream = app.sse(&token("acme"), "types=ticket").await;
    let before = app.insert_ticket("acme", "before").await;
    assert_eq!(
        stream.changes_until(1).await[0].data["resource"]["id"],
        before.as_str()
    );

    let poison: i64 = app
        .db
        .query_one(
            "insert into changecast.change_log
                 (tenant_id, resource_type, event, resource_id, resource, occurred_at)
             values ('other', 'ticket', 'created', 'x', '{}', 'infinity')
             returning id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    wait_for_status(&app.http, &app.url("/readyz"), 503).await;
    let during = app.insert_tickets("acme", 3).await;
    // Restarted, it meets the same row: it must crash again, never report ready.
    eventually("the tailer restarted twice", || async {
        app.metric(TAILER_RESTARTS).await >= Some(2.0)
    })
    .await;
    assert_eq!(app.get("/readyz", None).await.0, 503);

    app.db
        .execute(
            "delete from changecast.change_log where id = $1",
            &[&poison],
        )
        .await
        .unwrap();
    app.wait_ready().await;
    let after = app.insert_ticket("acme", "after").await;
    let expected: HashSet<String> = during.into_iter().chain([after]).collect();
    assert_eq!(stream.receive_ids(&expected).await, expected);
    assert_eq!(
        app.metric(r#"changecast_task_restarts_total{task="pruner"}"#)
            .await,
        Some(0.0)
    );
}

const TENANT_CHANNELS: &str = "changecast_tenant_channels";

/// Tenants whose subscribers all left keep no fan-out channel, even if nothing was ever
/// written for them (before, a channel was dropped only by a later change of its tenant).
#[tokio::test]
async fn a_tenant_channel_goes_when_its_last_subscriber_leaves() {
    let app = spawn_app().await;
    assert_eq!(app.metric(TENANT_CHANNELS).await, Some(0.0));
    let mut streams = Vec::new();
    for i in 0..20 {
        let t = token(&format!("sse-{i}"));
        // Two subscribers of one tenant share its channel.
        streams.push(app.sse(&t, "").await);
        streams.push(app.sse(&t, "types=ticket").await);
    }
    let mut sockets = Vec::new();
    for i in 0..5 {
        let mut socket = app.ws(&token(&format!("ws-{i}"))).await;
        socket.subscribe(serde_json::json!({})).await;
        sockets.push(socket);
    }
    // Subscriptions join their tenant's fan-out before the first byte is sent.
    assert_eq!(app.metric(TENANT_CHANNELS).await, Some(25.0));

    streams.truncate(20);
    drop(sockets);
    eventually(
        "the channels of tenants whose subscribers all left went",
        || async { app.metric(TENANT_CHANNELS).await == Some(10.0) },
    )
    .await;
    drop(streams);
    eventually("every channel went", || async {
        app.metric(TENANT_CHANNELS).await == Some(0.0)
    })
    .await;
    assert_eq!(
        app.metric(r#"changecast_subscribers{transport="sse"}"#)
            .await,
        Some(0.0)
    );

    // A tenant that comes back gets a working channel again.
    let mut stream = app.sse(&token("sse-0"), "").await;
    let id = app.insert_ticket("sse-0", "back").await;
    assert_eq!(
        stream.changes_until(1).await[0].data["resource"]["id"],
        id.as_str()
    );
}

/// With a retention shorter than the pruning interval (2 s against the default 60 s), a
/// change is pruned within the retention and a fraction of it, not after two intervals;
/// a cursor that needed it then gets `resync` `cursor_expired`.
#[tokio::test]
async fn a_short_retention_is_honoured_promptly() {
    const RETENTION: Duration = Duration::from_secs(2);
    const SLACK: Duration = Duration::from_secs(1);
    let app = spawn_app_with(|config| config.retention = RETENTION).await;
    let t = token("acme");
    let mut stream = app.sse(&t, "").await;
    let written = app.insert_ticket("acme", "short-lived").await;
    let committed = Instant::now();
    let change = stream.changes_until(1).await.remove(0);
    assert_eq!(change.data["resource"]["id"], written.as_str());
    let cursor = change.id.unwrap();
    drop(stream);

    // A row can be pruned only once every transaction of the cluster older than its own
    // has ended (it might still write older rows); other tests' open transactions on the
    // shared test cluster may hold that back, so the clock starts then, at the latest.
    let mut clock_start = None;
    let deadline = committed + WAIT;
    loop {
        let row = app
            .db
            .query_one(
                "select exists (select 1 from changecast.change_log where resource_id = $1),
                        pg_snapshot_xmin(pg_current_snapshot()) > coalesce(
                            (select xid from changecast.change_log where resource_id = $1),
                            '0')",
                &[&written],
            )
            .await
            .unwrap();
        let (present, prunable): (bool, bool) = (row.get(0), row.get(1));
        if !present {
            break;
        }
        if prunable && clock_start.is_none() {
            clock_start = Some(committed.max(Instant::now() - Duration::from_millis(20)));
        }
        if let Some(start) = clock_start {
            assert!(
                start.elapsed() <= RETENTION + SLACK,
                "the journal row outlived the retention by more than {SLACK:?}"
            );
        }
        assert!(
            Instant::now() < deadline,
            "the journal row was never pruned"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Counted once the pruning run that removed it ends (it may go on to other
    // partitions first).
    eventually("the pruned row counted", || async {
        app.metric("changecast_journal_rows_pruned_total").await >= Some(1.0)
    })
    .await;

    let mut resumed = app.sse_with(&t, "", Some(&cursor)).await;
    let first = resumed.next_within(WAIT).await.unwrap();
    assert_eq!(first.event, "resync");
    assert_eq!(first.data["reason"], "cursor_expired");
}

/// An instance whose listener was away longer than the retention,
/// while the journal was pruned, cannot vouch that its live subscribers missed nothing:
/// they must get `resync` (`cursor_expired`), never silence. Here the instance's own
/// pruner (on a pooled connection opened before the outage) prunes while its listener
/// cannot reconnect — as another instance's pruner would.
#[tokio::test]
async fn a_listener_away_past_the_retention_resyncs_its_live_subscribers() {
    let app = spawn_app_with(|config| config.retention = Duration::from_secs(1)).await;
    let mut stream = app.sse(&token("acme"), "").await;
    let before = app.insert_ticket("acme", "before the outage").await;
    assert!(stream
        .receive_ids(&HashSet::from([before.clone()]))
        .await
        .contains(&before));

    app.allow_new_connections(false).await;
    assert_eq!(app.kill_listener().await, 1);
    let lost: Vec<String> = app.insert_tickets("acme", 5).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let left: i64 = app
            .db
            .query_one(
                "select count(*) from changecast.change_log where resource_id = any($1)",
                &[&lost],
            )
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the changes were never pruned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.allow_new_connections(true).await;

    let deadline = Instant::now() + WAIT;
    let resync = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match stream.next_within(left).await {
            Some(event) if event.event == "resync" => break event,
            Some(event) if event.event == "resource_change" => {
                let id = event.data["resource"]["id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                assert!(
                    !lost.contains(&id),
                    "a pruned change arrived after all: {id}"
                );
            }
            Some(_) => {}
            None => panic!("the subscriber was never told that changes may be missing"),
        }
    };
    assert_eq!(resync.data["reason"], "cursor_expired");
    assert_eq!(app.metric("changecast_journal_gaps_total").await, Some(1.0));
    // The stream goes on live after the resync.
    let after = app.insert_ticket("acme", "after the outage").await;
    assert!(stream
        .receive_ids(&HashSet::from([after.clone()]))
        .await
        .contains(&after));
}

/// The subscriber's side of transaction ids going backwards: a cursor that saw transactions the database
/// has not reached — what clients hold after a failover to a lagging standby or a
/// point-in-time restore — would count the reused transaction ids of new commits as
/// seen and skip them forever. It gets `resync` `cursor_invalid`, then live changes.
#[tokio::test]
async fn a_cursor_from_beyond_the_databases_present_gets_a_resync() {
    use changecast::journal::{Cursor, CursorKey, CursorScope, PgSnapshot};
    use changecast::tenant::TenantId;

    let app = spawn_app().await;
    let row = app
        .db
        .query_one(
            "select journal_id::text, pg_snapshot_xmax(pg_current_snapshot())::text,
                    (select key from changecast.cursor_key)
             from changecast.journal_meta",
            &[],
        )
        .await
        .unwrap();
    let (journal_id, xmax): (&str, &str) = (row.get(0), row.get(1));
    let key = CursorKey::new(row.get(2)).unwrap();
    let ahead = xmax.parse::<u64>().unwrap() + 1_000_000;
    let cursor = CursorScope::new(journal_id, key).encode(
        &TenantId::new("acme").unwrap(),
        &Cursor {
            id: 1,
            seen: PgSnapshot {
                xmin: ahead,
                xmax: ahead,
                xip: Vec::new(),
            },
        },
    );
    let mut stream = app.sse_with(&token("acme"), "", Some(&cursor)).await;
    let resync = loop {
        match stream.next_within(WAIT).await {
            Some(event) if event.event == "resync" => break event,
            Some(_) => {}
            None => panic!("a cursor from beyond the database's present was taken as valid"),
        }
    };
    assert_eq!(resync.data["reason"], "cursor_invalid");
    let id = app.insert_ticket("acme", "after the restore").await;
    assert!(stream
        .receive_ids(&HashSet::from([id.clone()]))
        .await
        .contains(&id));
}

/// Another instance starting the journal over (it found the database copied
/// from elsewhere, see `db::adopt_moved_journal`) while this one runs: this instance
/// follows — its live subscribers resync, its new cursors belong to the new journal, and
/// cursors of the old one resync instead of bouncing between instances as foreign.
#[tokio::test]
async fn a_running_instance_follows_a_journal_started_over_elsewhere() {
    let app = spawn_app().await;
    let t = token("acme");
    let mut live = app.sse(&t, "").await;
    let before = app.insert_ticket("acme", "before").await;
    live.receive_ids(&HashSet::from([before.clone()])).await;
    let old_cursor = live.last_event_id.clone().expect("an id");

    // What a starting instance does to a journal copied from elsewhere.
    app.db
        .batch_execute(
            "truncate changecast.change_log, changecast.journal_ticks;
             update changecast.journal_meta set journal_id = gen_random_uuid(), pruned_below = '0'",
        )
        .await
        .unwrap();
    // The next write wakes the tailer, which finds the new journal. Whether that write
    // is inside the resync's cursor depends on whether the tailer read the new journal
    // before or after it committed: if before, the write follows the resync live.
    let wakes = app.insert_ticket("acme", "wakes the tailer").await;
    let resync = loop {
        let event = live.next_within(WAIT).await.expect("a resync");
        if event.event == "resync" {
            break event;
        }
    };
    assert_eq!(resync.data["reason"], "cursor_invalid");
    let later = app.insert_ticket("acme", "later").await;
    // What the live stream continued with after the resync, in order, through `later`.
    let mut after_resync = Vec::new();
    while after_resync.last() != Some(&later) {
        let event = live.next_within(WAIT).await.expect("`later`, live");
        if event.event == "resource_change" {
            after_resync.push(event.data["resource"]["id"].as_str().unwrap().to_owned());
        }
    }
    assert!(
        after_resync == [later.clone()] || after_resync == [wakes.clone(), later.clone()],
        "after the resync the live stream got {after_resync:?}"
    );

    // The resync's cursor is the new journal's: it resumes here without another resync,
    // with exactly what the live stream got after the resync.
    let mut resumed = app.sse_with(&t, "", resync.id.as_deref()).await;
    let last = app.insert_ticket("acme", "last").await;
    for expected in &after_resync {
        let event = resumed.next_within(WAIT).await.expect("an event");
        assert_eq!(event.event, "resource_change", "{event:?}");
        assert_eq!(event.data["resource"]["id"], expected.as_str());
    }
    assert!(resumed
        .receive_ids(&HashSet::from([last.clone()]))
        .await
        .contains(&last));
    // The old journal's cursor is refused the way a foreign one is.
    let mut old = app.sse_with(&t, "", Some(&old_cursor)).await;
    let event = old.next_within(WAIT).await.expect("an event");
    assert_eq!(
        (event.event.as_str(), &event.data["reason"]),
        ("resync", &serde_json::json!("cursor_invalid"))
    );
}
