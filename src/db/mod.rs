//! Connections to PostgreSQL: the pool for ordinary queries, the embedded migrations,
//! and (in `embedded`) the PostgreSQL the service starts itself when no `DATABASE_URL`
//! is given. (The LISTEN connection is capture's: `crate::capture::listener`.)

pub mod embedded;
pub mod keeper;

use std::time::Duration;

use anyhow::Context as _;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

mod migrations {
    refinery::embed_migrations!("migrations");
}

/// Arbitrary but fixed: serialises `migrate` across instances starting at once.
const MIGRATION_LOCK: i64 = 0x6368_616e_6765_6301; // "change" + 1
/// Keeps a dead network peer from hanging a connection for the OS default of 2 hours.
const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(10);

/// Parses `DATABASE_URL` (URL or `key=value` form) and names the connection, so an
/// operator (or a test) can find it in `pg_stat_activity`.
pub fn pg_config(url: &str, application_name: &str) -> anyhow::Result<tokio_postgres::Config> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .context("DATABASE_URL is not a valid PostgreSQL connection string")?;
    config
        .application_name(application_name)
        .keepalives_idle(TCP_KEEPALIVE_IDLE)
        .connect_timeout(Duration::from_secs(10));
    Ok(config)
}

/// The pool for replays, snapshots and pruning. Each statement on it is cancelled by
/// PostgreSQL after `statement_timeout`, so no client-driven read can run unbounded.
pub fn pool(url: &str, size: usize, statement_timeout: Duration) -> anyhow::Result<Pool> {
    let mut config = pg_config(url, "changecast:pool")?;
    let mut options = config.get_options().unwrap_or_default().to_owned();
    options.push_str(&format!(
        " -c statement_timeout={}",
        statement_timeout.as_millis()
    ));
    config.options(options.trim());
    let manager = Manager::from_config(
        config,
        NoTls,
        // `Verified` also catches half-open connections, at one round trip per checkout.
        ManagerConfig {
            recycling_method: RecyclingMethod::Verified,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(10)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .context("building the connection pool")
}

/// A journal copied elsewhere (dump and restore, a logical-replication upgrade, a
/// database made from a template) carries transaction ids or rows that mean nothing
/// there: cursors would "see" changes they never got. Recognised by a different home
/// (cluster system identifier and database oid) or rows from this cluster's future; the
/// journal then starts over under a new identity, so every old cursor gets `resync`.
const ADOPT_MOVED_JOURNAL: &str = "
do $$
declare
    here text;
begin
    begin
        here := (select system_identifier::text from pg_control_system())
                || '/' || (select oid::text from pg_database where datname = current_database());
    exception when insufficient_privilege then
        here := null;  -- managed services may hide it: rely on the xid check alone
    end;
    if (here is not null and here is distinct from (select home from changecast.journal_meta))
       or exists (select 1 from changecast.change_log
                  where xid >= pg_snapshot_xmax(pg_current_snapshot())) then
        if (select home from changecast.journal_meta) is not null then
            raise warning 'changecast: the journal was copied from elsewhere; starting it over';
        end if;
        truncate changecast.change_log, changecast.journal_ticks;
        update changecast.journal_meta
           set journal_id = gen_random_uuid(), pruned_below = '0', home = here;
    end if;
end
$$";

async fn adopt_moved_journal(client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(ADOPT_MOVED_JOURNAL).await
}

/// Applies the embedded migrations. Safe when several instances start at once: an
/// advisory lock serialises them (refinery has none of its own).
pub async fn migrate(url: &str) -> anyhow::Result<usize> {
    let config = pg_config(url, "changecast:migrate")?;
    let (mut client, connection) = config
        .connect(NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    let driver = tokio::spawn(connection);
    client
        .execute("select pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = async {
        // The history table lives in our schema, which must exist before the runner looks.
        client
            .batch_execute("create schema if not exists changecast")
            .await?;
        let report = migrations::migrations::runner()
            .set_migration_table_name("changecast.refinery_schema_history")
            .run_async(&mut client)
            .await
            .context("applying migrations")?;
        adopt_moved_journal(&client).await?;
        anyhow::Ok(report.applied_migrations().len())
    }
    .await;
    // Closing the session releases the lock in any case.
    drop(client);
    let _ = driver.await;
    result
}
