//! The tailer's connection keeps the index planner settings for its life: every read is
//! planned under them, generically, however often it runs and whenever it is planned
//! again.

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
async fn the_tailers_reads_use_the_generic_plan_under_the_index_settings() {
    let app = spawn_app().await;
    let (client, connection) = tokio_postgres::connect(&app.db_url, NoTls).await.unwrap();
    tokio::spawn(connection);
    assert!(
        planner_settings(&client)
            .await
            .contains(&"enable_seqscan=on".to_owned()),
        "a new connection plans as usual"
    );
    let before = current_snapshot(&client).await;
    let mut written = HashSet::new();

    let journal = Journal::open(&client).await.unwrap();
    let statements = Journal::prepare_tail(&client).await.unwrap();
    let index_settings = planner_settings(&client).await;
    for setting in [
        "enable_seqscan=off",
        "enable_hashjoin=off",
        "enable_mergejoin=off",
        "jit=off",
        "plan_cache_mode=force_generic_plan",
    ] {
        assert!(
            index_settings.contains(&setting.to_owned()),
            "{index_settings:?}"
        );
    }
    let published = Published::complete(Position::of_snapshot(before));
    let reads = 8;
    for read in 0..reads {
        written.extend(app.insert_tickets("acme", 2).await);
        if read == reads / 2 {
            // A new partition invalidates the plans: they are made again, as before.
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
    }
    assert_eq!(
        planner_settings(&client).await,
        index_settings,
        "the settings outlast the reads"
    );
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
                 from pg_prepared_statements where statement like '%changecast.change_log%'",
                &[],
            )
            .await
            .unwrap();
        let (generic, custom): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!(custom, 0, "no read was planned for its parameters");
        // (A plan made again after the invalidation counts once more.)
        assert!(
            generic >= reads,
            "every read ran the generic plan: {generic}"
        );
    }
    app.stop().await;
}
