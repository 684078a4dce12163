//! The tailer's reads run under the index planner settings in transactions of their
//! own: the connection they are read on (the LISTEN connection, without a standby or
//! while one lags) keeps its own settings for everything else it runs.

use std::collections::HashSet;

use tokio_postgres::NoTls;

use changecast::journal::{Entry, Journal, Position, Published};

use crate::helpers::*;

/// The settings [`changecast::journal::INDEX_PLANNER_SETTINGS`] changes, as `client`
/// has them now.
async fn planner_settings(client: &tokio_postgres::Client) -> Vec<String> {
    let mut values = Vec::new();
    for name in [
        "enable_seqscan",
        "enable_hashjoin",
        "enable_mergejoin",
        "jit",
        "plan_cache_mode",
    ] {
        let row = client
            .query_one(&format!("show {name}"), &[])
            .await
            .unwrap();
        values.push(format!("{name}={}", row.get::<_, String>(0)));
    }
    values
}

#[tokio::test]
async fn the_tailers_reads_leave_their_connections_settings_alone() {
    let app = spawn_app().await;
    let (client, connection) = tokio_postgres::connect(&app.db_url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let defaults = planner_settings(&client).await;
    assert!(
        defaults.contains(&"enable_seqscan=on".to_owned()),
        "{defaults:?}"
    );
    let before = current_snapshot(&client).await;
    let written: HashSet<String> = app.insert_tickets("acme", 3).await.into_iter().collect();

    let journal = Journal::open(&client).await.unwrap();
    let statements = Journal::prepare_tail(&client).await.unwrap();
    let published = Published::complete(Position::of_snapshot(before));
    for _ in 0..3 {
        let read = journal
            .read_new(
                &client,
                &statements,
                &published,
                (1000, 1 << 20),
                None,
                None,
            )
            .await
            .unwrap();
        let ids: HashSet<String> = read
            .entries
            .iter()
            .filter_map(|entry| match entry {
                Entry::Change(change) => Some(change.resource_id.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(ids, written, "every row written since");
        assert_eq!(
            planner_settings(&client).await,
            defaults,
            "the settings end with the read"
        );
        // In a transaction of its own, a statement starts when its transaction does
        // (by the simple protocol: the extended one starts it at Parse).
        let own_transaction = client
            .simple_query("select now() = statement_timestamp()")
            .await
            .unwrap()
            .into_iter()
            .find_map(|message| match message {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(|v| v == "t"),
                _ => None,
            });
        assert_eq!(
            own_transaction,
            Some(true),
            "the read's transaction is over"
        );
    }
    app.stop().await;
}
