//! The doorbell: whether writers need to `NOTIFY` at all.
//!
//! A transaction that issues NOTIFY commits under a database-wide lock, one at a time,
//! which caps a watched table near 3,600 commits/s. The notification only matters to an
//! instance that is waiting for one; while an instance drains a busy journal it reads
//! batch after batch anyway. Every written row asks whether an instance waits, so the
//! answer must cost next to nothing: it is an advisory lock (migration V7).
//!
//! - An instance that waits for wake-ups holds [`LOCK`] exclusively, on a connection of
//!   its own ([`Doorbell`]); another one queues for it, and a queued request counts too.
//! - The capture trigger tries to take the lock shared for its transaction and rings when
//!   it cannot. When it can, it keeps the lock until it ends: an instance that stops
//!   draining is granted the lock only once every writer that did not ring has ended,
//!   and reads the journal once more then ([`Doorbell::granted`]).
//! - A crashed instance's lock goes with its connection.
//!
//! When to drain is the tailer's call (its `Pace`): when writers are seen queueing on
//! the NOTIFY lock, which [`QueueProbe::writers_queued`] looks at.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, Statement};
use tokio_util::sync::CancellationToken;

use crate::journal::DbResult;

/// The advisory lock, in the two-integer key space ("ccdb", changecast doorbell): the
/// same pair as `changecast.ring()` (migration V7) and the capture trigger (V8) test.
pub const LOCK: (i32, i32) = (1_667_458_146, 1);

/// The rows of `pg_locks` that are instances' requests for [`LOCK`] in this database,
/// granted or waiting (`objsubid` 2: the two-integer key space).
static INSTANCE_REQUESTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "locktype = 'advisory' and mode = 'ExclusiveLock'
         and classid = {} and objid = {} and objsubid = 2
         and database = (select oid from pg_database where datname = current_database())",
        LOCK.0, LOCK.1
    )
});

/// Whether a transaction of this database waits at commit for the NOTIFY lock right now.
/// PostgreSQL serialises the commits of transactions that notified, in every database of
/// the cluster, on one lock, "object 0 of pg_database" (`PreCommit_Notify` in async.c,
/// PostgreSQL 9.0 to 17). Only this database's writers can stop ringing for us, so only
/// they count. `pg_locks` and the pids, databases and transaction ids of
/// `pg_stat_activity` are readable by every role.
///
/// `$1`, while this instance drains: the next transaction id when it released the
/// doorbell. Writers that took their id before may have rung for us, and may still be
/// queueing to commit (on a slow disk, a queue of them can outlast the tailer's wait);
/// a writer that took it later did not ring for us, so it counts (ids compared
/// modulo 2^32, as `pg_stat_activity` shows them). A writer without an id wrote no row:
/// it counts too. And while any other instance waits for wake-ups, writers ring anyway:
/// a queue then says nothing about their own NOTIFYs, and counts as none.
pub static QUEUED_ON_NOTIFY_LOCK: LazyLock<String> = LazyLock::new(|| {
    format!(
        "select exists (
           select from pg_locks l join pg_stat_activity a on a.pid = l.pid
            where l.locktype = 'object' and l.database = 0
              and l.classid = 'pg_database'::regclass and l.objid = 0 and not l.granted
              and a.datname = current_database()
              and ($1::bigint is null or a.backend_xid is null
                   or (a.backend_xid::text::bigint - $1::bigint % 4294967296 + 4294967296)
                      % 4294967296 < 2147483648))
         and not ($1::bigint is not null
                  and exists (select from pg_locks where {}))",
        *INSTANCE_REQUESTS
    )
});

/// Looks at the queue on the NOTIFY lock ([`QUEUED_ON_NOTIFY_LOCK`]) from the tailer's
/// connection, where it is prepared once: while busy, the tailer asks every few
/// milliseconds.
pub struct QueueProbe {
    statement: Statement,
}

impl QueueProbe {
    /// Prepared on `client`, and valid on that connection only.
    pub async fn prepare(client: &Client) -> DbResult<QueueProbe> {
        Ok(QueueProbe {
            statement: client.prepare(&QUEUED_ON_NOTIFY_LOCK).await?,
        })
    }

    /// Whether writers queue on the NOTIFY lock; `released_at`: the next transaction id
    /// when this instance released the doorbell, while it drains.
    pub async fn writers_queued(
        &self,
        client: &Client,
        released_at: Option<u64>,
    ) -> DbResult<bool> {
        let released_at = released_at.map(|xid| xid as i64);
        Ok(client
            .query_one(&self.statement, &[&released_at])
            .await?
            .get(0))
    }
}

/// The id the next transaction will get. (A snapshot's `xmax` is not it: that is the
/// newest *completed* transaction's + 1, and newer ones may be running already.) Takes
/// an id for a transaction that writes nothing: its commit record is all it costs.
pub async fn next_transaction_id(client: &Client) -> DbResult<u64> {
    let row = client
        .query_one("select pg_current_xact_id()::text", &[])
        .await?;
    Ok(row
        .get::<_, &str>(0)
        .parse()
        .expect("BUG: xid8 is a number"))
}

/// The instances that wait for wake-ups in this database: how many hold [`LOCK`], and how
/// many request it (waiting for other instances, or for writers that did not ring).
pub static DOORBELL_REQUESTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "select count(*) filter (where granted), count(*) filter (where not granted)
         from pg_locks where {}",
        *INSTANCE_REQUESTS
    )
});

/// A cancelled request that has not ended after this long is cancelled again.
const CANCEL_AGAIN_AFTER: Duration = Duration::from_millis(100);

/// One instance's hold on the doorbell lock, on a connection of its own: a request for
/// the lock waits inside PostgreSQL, and a connection waiting in a query receives no
/// notifications.
pub struct Doorbell {
    client: Arc<Client>,
    /// Cancelled when the connection is gone: writers stop ringing for this instance.
    pub lost: CancellationToken,
    hold: Hold,
}

enum Hold {
    /// Writers do not ring for us (unless another instance waits).
    Released,
    /// Writers ring for us; those that took the lock shared before may not have.
    Requested(JoinHandle<DbResult<()>>),
    /// Every writer rings for us.
    Held,
}

impl Doorbell {
    pub async fn connect(config: &tokio_postgres::Config) -> DbResult<Doorbell> {
        let mut config = config.clone();
        config.application_name("changecast:doorbell");
        let (client, connection) = config.connect(NoTls).await?;
        let lost = CancellationToken::new();
        let guard = lost.clone().drop_guard();
        tokio::spawn(async move {
            let _lost = guard;
            if let Err(error) = connection.await {
                tracing::warn!(?error, "doorbell connection failed");
            }
        });
        // A request may wait for as long as a writer's transaction lasts, and the lock is
        // held by an idle session. A backend waiting for a lock does not notice that its
        // client left (a crashed instance, a lost cancel) unless it checks (PostgreSQL 14+).
        client
            .batch_execute(
                "set lock_timeout = 0; set statement_timeout = 0;
                 select set_config(name, value, false)
                 from (values ('idle_session_timeout', '0'), ('transaction_timeout', '0'),
                              ('client_connection_check_interval', '1000')) wanted (name, value)
                 where name in (select name from pg_settings)",
            )
            .await?;
        Ok(Doorbell {
            client: Arc::new(client),
            lost,
            hold: Hold::Released,
        })
    }

    /// Asks writers to ring from now on. Writers that took the lock shared before may
    /// not ring: the lock is [`granted`](Doorbell::granted) once they have all ended.
    pub fn request(&mut self) {
        if !matches!(self.hold, Hold::Released) {
            return;
        }
        let client = self.client.clone();
        // One round trip (no prepare): the sooner it waits in PostgreSQL, the sooner writers
        // ring, and the smaller the window in which a cancel arrives before it.
        self.hold = Hold::Requested(tokio::spawn(async move {
            client
                .batch_execute(&format!("select pg_advisory_lock({}, {})", LOCK.0, LOCK.1))
                .await
        }));
    }

    /// Resolves once a requested lock is granted: every change committed without a
    /// wake-up is in the journal by then. Pending while none is requested.
    /// Cancel-safe (a `select!` branch).
    pub async fn granted(&mut self) -> DbResult<()> {
        let Hold::Requested(request) = &mut self.hold else {
            return std::future::pending().await;
        };
        let outcome = request
            .await
            .expect("BUG: the doorbell's lock request panicked");
        self.hold = if outcome.is_ok() {
            Hold::Held
        } else {
            Hold::Released
        };
        outcome
    }

    /// Writers stop ringing for this instance (unless another one waits).
    pub async fn release(&mut self) -> DbResult<()> {
        if let Hold::Requested(request) = &mut self.hold {
            // A cancel that reaches the backend before the request does is lost: cancel
            // until the request ends, granted or cancelled.
            let outcome = loop {
                if !request.is_finished() {
                    self.client.cancel_token().cancel_query(NoTls).await?;
                }
                if let Ok(ended) = tokio::time::timeout(CANCEL_AGAIN_AFTER, &mut *request).await {
                    break ended.expect("BUG: the doorbell's lock request panicked");
                }
            };
            self.hold = Hold::Held;
            if let Err(error) = outcome {
                if error.code() != Some(&SqlState::QUERY_CANCELED) {
                    self.hold = Hold::Released;
                    return Err(error);
                }
            }
        }
        if let Hold::Held = self.hold {
            self.hold = Hold::Released;
            // Also when the request was cancelled: a cancel that arrives as the lock is
            // granted fails the request, but PostgreSQL keeps the lock. This connection
            // holds no other advisory lock.
            self.client
                .batch_execute("select pg_advisory_unlock_all()")
                .await?;
        }
        Ok(())
    }
}

impl Drop for Doorbell {
    fn drop(&mut self) {
        // The request's task keeps the connection open, and a request waiting inside
        // PostgreSQL outlives its connection until it is granted (a backend waiting for
        // a lock does not notice its client leave): end both.
        if let Hold::Requested(request) = &self.hold {
            request.abort();
            let cancel = self.client.cancel_token();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = cancel.cancel_query(NoTls).await;
                });
            }
        }
    }
}
