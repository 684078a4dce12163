//! The hot standby the journal is read from (`CHANGECAST_READ_DATABASE_URL`): its pool,
//! and the check at start that it is a copy of the primary's database.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use deadpool_postgres::Pool;
use tokio_postgres::{Client, NoTls};

use super::{build_pool, first_value, pg_config, with_statement_timeout, START_CHECK_TIMEOUT};

const SETTING: &str = "CHANGECAST_READ_DATABASE_URL";

/// The connection settings of `url`, named for `pg_stat_activity`.
pub fn read_config(url: &str, application_name: &str) -> anyhow::Result<tokio_postgres::Config> {
    pg_config(url, application_name)
        .with_context(|| format!("{SETTING} is not a valid PostgreSQL connection string"))
}

/// The pool for replays and snapshots on the standby, each statement bounded by
/// `statement_timeout` as on the primary's pool.
pub fn read_pool(url: &str, size: usize, statement_timeout: Duration) -> anyhow::Result<Pool> {
    let config =
        with_statement_timeout(read_config(url, "changecast:read-pool")?, statement_timeout);
    build_pool(config, size)
}

/// Refuses to start unless `read` reaches the database of `primary` in the same
/// cluster: a hot standby of it (same system identifier, in recovery), or the primary
/// itself. Waits (a bounded while) for the standby to replay what the primary had
/// written, then compares the journal's identity on both, so a standby of another
/// database, or a copy promoted on a timeline of its own, is refused too. Assumes the
/// migrations have run on the primary.
pub async fn check_read_database(
    primary: &tokio_postgres::Config,
    read: &tokio_postgres::Config,
) -> anyhow::Result<()> {
    let (primary, primary_driver) = connect(primary, "DATABASE_URL").await?;
    let (read, read_driver) = connect(read, SETTING).await?;
    let result = tokio::time::timeout(START_CHECK_TIMEOUT, compare(&primary, &read))
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "{SETTING}: checking the standby against DATABASE_URL took over {}s: a \
                 standby that does not replay the primary's WAL, or a database that does \
                 not respond",
                START_CHECK_TIMEOUT.as_secs()
            ))
        });
    drop((primary, read));
    let _ = primary_driver.await;
    let _ = read_driver.await;
    result
}

async fn connect(
    config: &tokio_postgres::Config,
    setting: &str,
) -> anyhow::Result<(Client, tokio::task::JoinHandle<()>)> {
    let mut config = config.clone();
    config.application_name("changecast:standby-check");
    let (client, connection) = tokio::time::timeout(START_CHECK_TIMEOUT, config.connect(NoTls))
        .await
        .map_err(|_| anyhow::anyhow!("connecting to PostgreSQL ({setting}) timed out"))?
        .with_context(|| format!("connecting to PostgreSQL ({setting})"))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, driver))
}

async fn compare(primary: &Client, read: &Client) -> anyhow::Result<()> {
    let primary_id = system_identifier(primary).await?;
    let read_id = system_identifier(read).await?;
    match (&primary_id, &read_id) {
        (Some(primary_id), Some(read_id)) if primary_id != read_id => anyhow::bail!(
            "{SETTING} reaches another PostgreSQL cluster (system identifier {read_id}) than \
             DATABASE_URL ({primary_id}): it must name a hot standby (streaming replica) of \
             DATABASE_URL's cluster, e.g. one made with `pg_basebackup -R`"
        ),
        (None, _) | (_, None) => tracing::warn!(
            "pg_control_system() is not executable by this role: the standby's cluster is \
             checked by its journal alone"
        ),
        _ => {}
    }
    let position = one(primary, "select pg_current_wal_flush_lsn()::text").await?;
    let in_recovery = one(read, "select pg_is_in_recovery()::text").await? == "true";
    if in_recovery {
        wait_for_replay(read, &position).await?;
    }
    // A standby is on the primary's timeline once it has replayed the primary's
    // position; a server out of recovery must be on the same one as the primary.
    let primary_journal = journal_identity(primary, !in_recovery)
        .await
        .context("reading the journal's identity on DATABASE_URL")?;
    let read_journal = journal_identity(read, !in_recovery)
        .await
        .with_context(|| {
            format!(
                "reading the journal's identity through {SETTING}: is it a standby of \
             DATABASE_URL's database (same database name)?"
            )
        })?;
    if primary_journal != read_journal {
        anyhow::bail!(
            "{SETTING} does not reach DATABASE_URL's database: its changecast journal is \
             {read_journal:?}, DATABASE_URL's is {primary_journal:?} (another database of the \
             cluster, or a copy promoted on a timeline of its own)"
        );
    }
    if !in_recovery {
        tracing::warn!(
            "{SETTING} reaches a server that is not a standby (DATABASE_URL's primary \
             itself?): journal reads load it as they would without the setting"
        );
    }
    Ok(())
}

/// The journal's id, with the timeline when `timeline` (the server is not in recovery),
/// as `journal::JOURNAL_IDENTITY` spells it.
async fn journal_identity(client: &Client, timeline: bool) -> anyhow::Result<String> {
    let timeline = if timeline {
        " || coalesce('/' || nullif(substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8), \
         '00000001'), '')"
    } else {
        ""
    };
    one(
        client,
        &format!(
            "select coalesce((select journal_id::text from changecast.journal_meta){timeline}, \
             '(none)')"
        ),
    )
    .await
}

/// The cluster's system identifier, or `None` where the role may not read it.
async fn system_identifier(client: &Client) -> anyhow::Result<Option<String>> {
    let allowed = one(
        client,
        "select has_function_privilege('pg_control_system()', 'execute')::text",
    )
    .await?;
    if allowed != "true" {
        return Ok(None);
    }
    Ok(Some(
        one(
            client,
            "select system_identifier::text from pg_control_system()",
        )
        .await?,
    ))
}

/// Waits until the standby behind `read` has replayed WAL up to `position`.
async fn wait_for_replay(read: &Client, position: &str) -> anyhow::Result<()> {
    let began = Instant::now();
    let sql = format!(
        "select coalesce(pg_wal_lsn_diff('{position}'::pg_lsn, pg_last_wal_replay_lsn()) <= 0, \
         false)::text"
    );
    while one(read, &sql).await? != "true" {
        if began.elapsed() > START_CHECK_TIMEOUT {
            anyhow::bail!(
                "the standby behind {SETTING} did not replay the primary's WAL within {}s",
                START_CHECK_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The first value of a one-row answer, by the simple protocol.
async fn one(client: &Client, sql: &str) -> anyhow::Result<String> {
    Ok(first_value(client.simple_query(sql).await?).unwrap_or_default())
}
