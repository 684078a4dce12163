//! Reliability (issue #11): supervised background tasks, tenant channels that go when
//! their last subscriber does, retention honoured promptly when it is short.

use std::collections::HashSet;

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
