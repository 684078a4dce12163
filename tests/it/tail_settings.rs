//! The tailer's reads run under the index planner settings, generically planned however
//! often they run and whenever they are planned again: on its own connection the
//! settings are the session's; on one that may be pooled they end with each read.

use std::collections::HashSet;

use tokio_postgres::NoTls;

use changecast::journal::{Entry, Journal, Position, Published, TailConnection};

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

const INDEX_SETTINGS: [&str; 5] = [
    "enable_seqscan=off",
    "enable_hashjoin=off",
    "enable_mergejoin=off",
    "jit=off",
    "plan_cache_mode=force_generic_plan",
];

/// Whether `client` is inside a transaction: there a statement does not start when its
/// transaction does (by the simple protocol: the extended one starts it at Parse).
async fn in_transaction(client: &tokio_postgres::Client) -> bool {
    let own_transaction = client
        .simple_query("select now() = statement_timestamp()")
        .await
        .unwrap()
        .into_iter()
        .find_map(|message| match message {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(|v| v == "t"),
            _ => None,
        });
    own_transaction != Some(true)
}

/// Reads what is written, on a connection prepared as `kind`, before and after a new
/// partition invalidates the plans; checks the rows, the connection's settings after
/// each read and, where PostgreSQL counts them (14 on), that every read ran the generic
/// plan.
async fn reads_under_the_index_settings(kind: TailConnection) {
    let app = spawn_app().await;
    let (client, connection) = tokio_postgres::connect(&app.db_url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let defaults = planner_settings(&client).await;
    assert!(
        defaults.contains(&"enable_seqscan=on".to_owned()),
        "a new connection plans as usual: {defaults:?}"
    );
    let before = current_snapshot(&client).await;
    let mut written = HashSet::new();

    let journal = Journal::open(&client).await.unwrap();
    let statements = Journal::prepare_tail(&client, kind).await.unwrap();
    let between_reads = match kind {
        TailConnection::Own => INDEX_SETTINGS.map(str::to_owned).to_vec(),
        TailConnection::MaybePooled => defaults,
    };
    assert_eq!(planner_settings(&client).await, between_reads, "{kind:?}");
    let published = Published::complete(Position::of_snapshot(before));
    let reads = 8;
    for read in 0..reads {
        written.extend(app.insert_tickets("acme", 2).await);
        if read == reads / 2 {
            // A new partition invalidates the plans: they are made again, under the
            // same settings.
            client
                .batch_execute(
                    "create table changecast.change_log_tail_settings
                         (like changecast.change_log including all);
                     alter table changecast.change_log attach partition
                         changecast.change_log_tail_settings
                         for values from (900000000000) to (900000001000)",
                )
                .await
                .unwrap();
        }
        let read = journal
            .read_new(
                &client,
                &statements,
                &published,
                (1000, 1 << 20),
                None,
                None,
                i64::MIN,
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
        assert_eq!(ids, written, "{kind:?}: every row written since");
        assert_eq!(
            planner_settings(&client).await,
            between_reads,
            "{kind:?}: the connection's settings between reads"
        );
        assert!(
            !in_transaction(&client).await,
            "{kind:?}: the read left a transaction open"
        );
    }
    // Left to choose, PostgreSQL would plan "rows from the newest transaction on" anew
    // for every read from the sixth on. (PostgreSQL 13 does not count plans.)
    let counts_plans = client
        .query_one(
            "select current_setting('server_version_num')::int >= 140000",
            &[],
        )
        .await
        .unwrap()
        .get::<_, bool>(0);
    if counts_plans {
        let row = client
            .query_one(
                "select sum(generic_plans)::int8, sum(custom_plans)::int8
                 from pg_prepared_statements
                 where statement like '%changecast.change_log%'
                   and statement not like '%pg_prepared_statements%'",
                &[],
            )
            .await
            .unwrap();
        let (generic, custom): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!(
            custom, 0,
            "{kind:?}: no read was planned for its parameters"
        );
        assert_eq!(generic, reads, "{kind:?}: every read ran the generic plan");
    }
    app.stop().await;
}

#[tokio::test]
async fn on_its_own_connection_the_tailer_reads_under_the_sessions_index_settings() {
    reads_under_the_index_settings(TailConnection::Own).await;
}

#[tokio::test]
async fn on_a_connection_that_may_be_pooled_each_read_brings_its_settings_and_ends_them() {
    reads_under_the_index_settings(TailConnection::MaybePooled).await;
}
