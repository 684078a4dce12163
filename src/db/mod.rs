//! Connections to PostgreSQL: the pool for ordinary queries, the embedded migrations,
//! and (in `embedded`) the PostgreSQL the service starts itself when no `DATABASE_URL`
//! is given. (The LISTEN connection is capture's: `crate::capture::listener`.)
//!
//! The pool may go through a connection pooler in transaction mode (PgBouncer); the
//! session connections (LISTEN, the doorbell's advisory lock, the migrations' lock) may
//! not, and [`check_notifications`] refuses to start when they would be lost there.

pub mod embedded;
pub mod keeper;
pub mod standby;

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
    let config = with_statement_timeout(pg_config(url, "changecast:pool")?, statement_timeout);
    build_pool(config, size)
}

/// [`pool`], for a `DATABASE_URL` that may go through a connection pooler. PgBouncer
/// refuses the `options` startup parameter that sets the statement timeout (or drops it,
/// with `ignore_startup_parameters = options`); its server connections must then get a
/// timeout of their own (PgBouncer's `connect_query`, or `ALTER ROLE … SET
/// statement_timeout`). Without any, the service refuses to start: a read would run
/// unbounded.
pub async fn connect_pool(
    url: &str,
    size: usize,
    statement_timeout: Duration,
) -> anyhow::Result<Pool> {
    let plain = pg_config(url, "changecast:pool")?;
    let wanted = with_statement_timeout(plain.clone(), statement_timeout);
    let (in_force, config) = match session_statement_timeout(&wanted).await {
        Ok(in_force) => (in_force, wanted),
        Err(error)
            if error
                .downcast_ref::<tokio_postgres::Error>()
                .is_some_and(refuses_startup_options) =>
        {
            let in_force = session_statement_timeout(&plain)
                .await
                .context("connecting the pool to PostgreSQL")?;
            (in_force, plain)
        }
        Err(error) => return Err(error).context("connecting the pool to PostgreSQL"),
    };
    if in_force != statement_timeout {
        if in_force.is_zero() {
            anyhow::bail!(
                "DATABASE_URL goes through a connection pooler (PgBouncer?) that does not pass \
                 the `options` startup parameter, so the pool's statement timeout \
                 (--statement-timeout, {} ms) cannot be set, and its connections have none: \
                 a replay or snapshot could run unbounded. Give the pooler's server \
                 connections one, e.g. PgBouncer's `connect_query = 'SET statement_timeout = \
                 {}'` for the database, or `ALTER ROLE … SET statement_timeout = '{}ms'`",
                statement_timeout.as_millis(),
                statement_timeout.as_millis(),
                statement_timeout.as_millis(),
            );
        }
        tracing::warn!(
            in_force_ms = in_force.as_millis(),
            requested_ms = statement_timeout.as_millis(),
            "DATABASE_URL goes through a connection pooler that does not pass the `options` \
             startup parameter: the pool's statements run under the statement timeout its \
             server connections have, not --statement-timeout"
        );
    }
    build_pool(config, size)
}

/// `config` with `-c statement_timeout=…` added to its startup options.
fn with_statement_timeout(
    mut config: tokio_postgres::Config,
    statement_timeout: Duration,
) -> tokio_postgres::Config {
    let mut options = config.get_options().unwrap_or_default().to_owned();
    options.push_str(&format!(
        " -c statement_timeout={}",
        statement_timeout.as_millis()
    ));
    config.options(options.trim());
    config
}

/// PgBouncer's answer to startup parameters it does not know (`options` among them):
/// FATAL, protocol violation, "unsupported startup parameter: options".
fn refuses_startup_options(error: &tokio_postgres::Error) -> bool {
    error.as_db_error().is_some_and(|db| {
        db.code() == &tokio_postgres::error::SqlState::PROTOCOL_VIOLATION
            && db.message().contains("unsupported startup parameter")
    })
}

/// Longest a check at start may take once connected: a pooler queues a query until it
/// has a server connection free, and a stalled database answers nothing at all.
pub const START_CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// The `statement_timeout` a connection made with `config` runs under.
async fn session_statement_timeout(config: &tokio_postgres::Config) -> anyhow::Result<Duration> {
    let mut config = config.clone();
    config.application_name("changecast:pool-check");
    let (client, connection) = config.connect(NoTls).await?;
    let driver = tokio::spawn(connection);
    // The simple protocol: no prepared statement for a pooler to lose.
    let rows = tokio::time::timeout(
        START_CHECK_TIMEOUT,
        client.simple_query("select setting from pg_settings where name = 'statement_timeout'"),
    )
    .await;
    drop(client);
    let _ = driver.await;
    let Ok(rows) = rows else {
        anyhow::bail!(
            "PostgreSQL (DATABASE_URL) did not answer a query within {}s: a pooler with no \
             server connection free, or a database that does not respond",
            START_CHECK_TIMEOUT.as_secs()
        );
    };
    let millis = first_value(rows?).and_then(|millis| millis.parse().ok());
    Ok(Duration::from_millis(millis.unwrap_or(0)))
}

/// The first column of the first row of a simple query's answer.
fn first_value(messages: Vec<tokio_postgres::SimpleQueryMessage>) -> Option<String> {
    messages.into_iter().find_map(|message| match message {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    })
}

/// How long a notification may take to arrive from one connection at another at start.
/// On a direct connection it takes a millisecond; a pooler that cannot carry LISTEN never
/// delivers it.
const NOTIFICATION_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Refuses to start when the LISTEN connection would miss notifications: LISTENs on a
/// channel of its own through `listen`, sends a NOTIFY on it through `notify` (the
/// pool's `DATABASE_URL`), and waits for it. A pooler in transaction or statement mode
/// (PgBouncer) runs the LISTEN on whichever server connection is free, and no server
/// connection is attached to an idle client, so the notification never arrives; the
/// service would then see changes only at its safety-net polls.
pub async fn check_notifications(
    listen: &tokio_postgres::Config,
    notify: &tokio_postgres::Config,
) -> anyhow::Result<()> {
    const ADVICE: &str = "A connection pooler in transaction or statement mode (PgBouncer's \
        pool_mode = transaction) cannot carry LISTEN: set CHANGECAST_LISTEN_DATABASE_URL to a \
        direct connection to the database (or one through a session-mode pool)";
    let mut listen = listen.clone();
    listen.application_name("changecast:listen-check");
    let (listener, mut connection) = listen.connect(NoTls).await.context(
        "connecting to PostgreSQL for LISTEN \
             (CHANGECAST_LISTEN_DATABASE_URL, or DATABASE_URL when that is unset)",
    )?;
    let (tx, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let tokio_postgres::AsyncMessage::Notification(notification) = message {
                let _ = tx.send(notification.channel().to_owned());
            }
        }
    });
    let mut notify = notify.clone();
    notify.application_name("changecast:listen-check");
    let (notifier, notifier_connection) = notify
        .connect(NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    let notifier_driver = tokio::spawn(notifier_connection);
    let result = async {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let channel = format!("changecast_check_{}_{nanos}", std::process::id());
        // The simple protocol throughout: nothing prepared for a pooler to lose.
        listener.batch_execute(&format!("LISTEN {channel}")).await?;
        notifier.batch_execute(&format!("NOTIFY {channel}")).await?;
        let arrived = tokio::time::timeout(NOTIFICATION_PROBE_TIMEOUT, async {
            while let Some(arrived) = notifications.recv().await {
                if arrived == channel {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        if arrived {
            return anyhow::Ok(());
        }
        let listen_database = current_database(&listener).await?;
        let notify_database = current_database(&notifier).await?;
        if listen_database != notify_database {
            anyhow::bail!(
                "CHANGECAST_LISTEN_DATABASE_URL names database {listen_database:?}, but \
                 DATABASE_URL names {notify_database:?}: both must reach the same database"
            );
        }
        anyhow::bail!(
            "the LISTEN connection does not receive notifications: a NOTIFY sent through \
             DATABASE_URL did not reach a LISTEN on CHANGECAST_LISTEN_DATABASE_URL (or \
             DATABASE_URL, when that is unset) within {} s. {ADVICE}",
            NOTIFICATION_PROBE_TIMEOUT.as_secs()
        )
    }
    .await;
    drop((listener, notifier));
    driver.abort();
    let _ = notifier_driver.await;
    result
}

async fn current_database(client: &tokio_postgres::Client) -> anyhow::Result<String> {
    let rows = client.simple_query("select current_database()").await?;
    Ok(first_value(rows).unwrap_or_default())
}

fn build_pool(config: tokio_postgres::Config, size: usize) -> anyhow::Result<Pool> {
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

/// Logs what `changecast.role_findings()` says an operator should know about roles: a
/// membership in a table owner's role that `watch()` no longer needs, a watched table this
/// role may not read. Warnings only: such a membership may be there for other reasons.
async fn report_role_findings(
    client: &tokio_postgres::Client,
) -> Result<(), tokio_postgres::Error> {
    for row in client
        .query("select changecast.role_findings()", &[])
        .await?
    {
        tracing::warn!("{}", row.get::<_, &str>(0));
    }
    Ok(())
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
        report_role_findings(&client).await?;
        anyhow::Ok(report.applied_migrations().len())
    }
    .await;
    // Closing the session releases the lock in any case.
    drop(client);
    let _ = driver.await;
    result
}
