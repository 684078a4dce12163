//! The database side of a measurement: writers committing single-row transactions at
//! a fixed rate from their own connections, and the bare LISTEN client that is the
//! reference. Both run on a thread of their own, so the subscribers' load in this
//! process does not delay a commit stamp or a reference receipt.

use std::future::{poll_fn, Future};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

use crate::client::{self, Shared};
use crate::stats::Histogram;

/// Where the rows go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// `public.tickets`, watched by changecast. The same statement NOTIFYs the row's
    /// title on [`REFERENCE_CHANNEL`], so the bare LISTEN reference sees the same commits.
    Watched,
    /// `public.tickets` alone: no reference NOTIFY, for PostgreSQL's CPU per change
    /// without the reference's share.
    WatchedAlone,
    /// `bench.bridge`, whose trigger NOTIFYs the whole row on [`BRIDGE_CHANNEL`]: what a
    /// LISTEN/NOTIFY bridge costs PostgreSQL.
    Bridge,
}

pub const REFERENCE_CHANNEL: &str = "bench_reference";
pub const BRIDGE_CHANNEL: &str = "bench_bridge";

impl Table {
    fn statement(self) -> &'static str {
        match self {
            Table::Watched => {
                "with row as (insert into public.tickets (tenant_id, title) values ($1, $2) returning 1)
                 select pg_notify('bench_reference', $2) from row"
            }
            Table::WatchedAlone => "insert into public.tickets (tenant_id, title) values ($1, $2)",
            Table::Bridge => "insert into bench.bridge (tenant_id, title) values ($1, $2)",
        }
    }
}

/// A writing load.
#[derive(Clone)]
pub struct Load {
    pub url: String,
    pub table: Table,
    pub writers: usize,
    /// Rows per second over all writers.
    pub rate: f64,
    pub tenants: u64,
    pub duration: Duration,
}

#[derive(Debug, Default)]
pub struct Written {
    pub committed: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    /// How long writing took, from the first row to the last commit.
    pub elapsed: Duration,
}

/// Runs `make()` on a new thread with a single-threaded runtime of its own.
pub async fn on_own_thread<T, F, Fut>(name: &str, make: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building a runtime");
            let _ = tx.send(runtime.block_on(make()));
        })?;
    rx.await.context("the writer thread panicked")
}

/// Writes at `load.rate` for `load.duration`, numbering rows from `next_seq` and stamping
/// each row's COMMIT return in `shared`.
pub async fn write(load: Load, shared: Arc<Shared>, next_seq: Arc<AtomicU64>) -> Written {
    let start = Instant::now();
    let end = start + load.duration;
    let interval = Duration::from_secs_f64(load.writers as f64 / load.rate);
    let mut tasks = Vec::new();
    for writer in 0..load.writers {
        let (load, shared, next_seq) = (load.clone(), shared.clone(), next_seq.clone());
        // Writers start staggered across one interval, so their commits interleave evenly.
        let first = start + interval.mul_f64(writer as f64 / load.writers as f64);
        tasks.push(tokio::spawn(async move {
            write_one(load, shared, next_seq, first, interval, end).await
        }));
    }
    let mut written = Written::default();
    for task in tasks {
        let one = task.await.unwrap_or_else(|e| Written {
            failed: 1,
            first_error: Some(format!("writer panicked: {e}")),
            ..Written::default()
        });
        written.committed += one.committed;
        written.failed += one.failed;
        written.first_error = written.first_error.or(one.first_error);
    }
    written.elapsed = start.elapsed();
    written
}

async fn write_one(
    load: Load,
    shared: Arc<Shared>,
    next_seq: Arc<AtomicU64>,
    first: Instant,
    interval: Duration,
    end: Instant,
) -> Written {
    let mut written = Written::default();
    let db = match crate::service::connect(&load.url).await {
        Ok(db) => db,
        Err(error) => {
            written.failed = 1;
            written.first_error = Some(format!("{error:#}"));
            return written;
        }
    };
    let statement = match db.prepare(load.table.statement()).await {
        Ok(statement) => statement,
        Err(error) => {
            written.failed = 1;
            written.first_error = Some(format!("preparing the insert: {error:?}"));
            return written;
        }
    };
    let tenants: Vec<String> = (0..load.tenants).map(|t| format!("t{t}")).collect();
    let mut due = first;
    // Open loop: a row is due every `interval`; a writer that fell behind sends at once
    // (and stops at the end all the same: the achieved rate then shows the shortfall).
    while due < end && Instant::now() < end {
        tokio::time::sleep_until(due).await;
        due += interval;
        let seq = next_seq.fetch_add(1, Ordering::Relaxed);
        let Some(slot) = shared.committed.get(seq as usize) else {
            break;
        };
        let tenant = &tenants[(seq % load.tenants) as usize];
        match db.query(&statement, &[tenant, &client::title(seq)]).await {
            Ok(_) => {
                slot.store(shared.now_ns().max(1), Ordering::Release);
                written.committed += 1;
            }
            Err(error) => {
                written.failed += 1;
                written
                    .first_error
                    .get_or_insert_with(|| format!("{error:?}"));
            }
        }
    }
    written
}

/// What the bare LISTEN client received.
#[derive(Default)]
pub struct Heard {
    pub latency: Histogram,
    pub received: u64,
}

/// A bare LISTEN client on `channel` until `stop`: latency of each row (by the title in
/// the payload) from its COMMIT returning, as [`Shared::latency_ns`] defines it.
/// `listening` is cancelled once LISTEN is in effect, or on failure (then the error
/// is the result).
pub async fn listen(
    url: String,
    channel: &'static str,
    shared: Arc<Shared>,
    listening: CancellationToken,
    stop: CancellationToken,
) -> anyhow::Result<Heard> {
    let listening_guard = listening.drop_guard();
    let (client, mut connection) = tokio_postgres::connect(&url, NoTls).await?;
    let driver = tokio::spawn(async move {
        let mut heard = Heard {
            latency: Histogram::default(),
            received: 0,
        };
        // Driven by poll_message: a spawned `connection` future would drop notifications.
        while let Some(Ok(message)) = poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(notification) = message {
                let now = shared.now_ns();
                if let Some(seq) = client::parse_seq(notification.payload().as_bytes()) {
                    heard.received += 1;
                    if let Some(latency) = shared.latency_ns(seq, now) {
                        heard.latency.record_ns(latency);
                    }
                }
            }
        }
        heard
    });
    client.batch_execute(&format!("LISTEN {channel}")).await?;
    drop(listening_guard);
    stop.cancelled().await;
    drop(client);
    Ok(driver.await?)
}
