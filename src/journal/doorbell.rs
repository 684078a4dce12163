//! The doorbell: whether writers need to `NOTIFY` at all.
//!
//! A transaction that issues NOTIFY commits under a database-wide lock, one at a time,
//! which caps a watched table near 3,600 commits/s. The notification only matters to an
//! instance that is waiting for one; while an instance drains a busy journal it reads
//! batch after batch anyway. So each instance keeps a row in `changecast.listeners`, and
//! the capture trigger rings only while some instance is not draining (migration V5).
//! When to drain is the tailer's call (its `Pace`): when writers are seen queueing on
//! that lock, which [`writers_queued`] looks at.

use std::time::Duration;

use tokio_postgres::{Client, Statement};

use super::DbResult;

/// A row of an instance not seen for this long is left over from a crash.
const FORGET_AFTER: &str = "10 minutes";
/// How often an instance says it is still there.
pub const HEARTBEAT: Duration = Duration::from_secs(60);

/// Whether a transaction of this database waits at commit for the NOTIFY lock right now.
/// PostgreSQL serialises the commits of transactions that notified, in every database of
/// the cluster, on one lock, "object 0 of pg_database" (`PreCommit_Notify` in async.c,
/// PostgreSQL 9.0 to 17). Only this database's writers can stop ringing for us, so only
/// they count. `pg_locks` and the pids and databases of `pg_stat_activity` are readable
/// by every role.
///
/// `$1`: asked while this instance drains. Writers still ring while any other instance
/// waits for wake-ups, so a queue then says nothing about the writers' own NOTIFYs, and
/// counts as none.
pub const QUEUED_ON_NOTIFY_LOCK: &str = "select exists (
     select from pg_locks l join pg_stat_activity a on a.pid = l.pid
      where l.locktype = 'object' and l.database = 0 and l.classid = 'pg_database'::regclass
        and l.objid = 0 and not l.granted and a.datname = current_database())
   and not ($1 and exists (select from changecast.listeners where not draining))";

/// Runs [`QUEUED_ON_NOTIFY_LOCK`], prepared on the tailer's connection.
pub async fn writers_queued(
    client: &Client,
    statement: &Statement,
    draining: bool,
) -> DbResult<bool> {
    Ok(client.query_one(statement, &[&draining]).await?.get(0))
}

/// One instance's row in `changecast.listeners`.
pub struct Doorbell {
    instance: String,
}

impl Doorbell {
    pub fn new() -> Self {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).expect("the OS random source is unavailable");
        // A version-4 UUID, as PostgreSQL's uuid type reads it.
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Doorbell {
            instance: format!(
                "{}-{}-{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            ),
        }
    }

    /// Says this instance waits for the doorbell (not draining); forgets instances that
    /// crashed long ago.
    pub async fn register(&self, client: &Client) -> DbResult<()> {
        client
            .execute(
                "insert into changecast.listeners (instance) values ($1::text::uuid)
                 on conflict (instance) do update set draining = false, seen_at = now()",
                &[&self.instance],
            )
            .await?;
        self.forget_crashed(client).await
    }

    /// While `draining`, writers may skip their NOTIFY (unless another instance waits).
    /// An upsert: the row may have been forgotten meanwhile (see [`Doorbell::heartbeat`]).
    pub async fn set_draining(&self, client: &Client, draining: bool) -> DbResult<()> {
        client
            .execute(
                "insert into changecast.listeners (instance, draining) values ($1::text::uuid, $2)
                 on conflict (instance) do update set draining = $2, seen_at = now()",
                &[&self.instance, &draining],
            )
            .await?;
        Ok(())
    }

    /// Says this instance is still there (another instance forgets rows not seen for
    /// [`FORGET_AFTER`]), restoring its row if it was forgotten anyway.
    pub async fn heartbeat(&self, client: &Client, draining: bool) -> DbResult<()> {
        self.set_draining(client, draining).await?;
        self.forget_crashed(client).await
    }

    /// Removes this instance's row at shutdown.
    pub async fn leave(&self, client: &Client) -> DbResult<()> {
        client
            .execute(
                "delete from changecast.listeners where instance = $1::text::uuid",
                &[&self.instance],
            )
            .await?;
        Ok(())
    }

    async fn forget_crashed(&self, client: &Client) -> DbResult<()> {
        client
            .execute(
                &format!(
                    "delete from changecast.listeners where seen_at < now() - interval '{FORGET_AFTER}'"
                ),
                &[],
            )
            .await?;
        Ok(())
    }
}

impl Default for Doorbell {
    fn default() -> Self {
        Self::new()
    }
}
