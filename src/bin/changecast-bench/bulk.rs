//! `bulk`: one transaction of `--rows` rows (`insert ... select generate_series`) into the
//! watched bench table, with S subscribers of its tenant connected. Reports what the
//! transaction cost PostgreSQL against the same statement into an unwatched copy, and
//! for each subscriber when the first and the last of its events arrived after COMMIT
//! returned, whether every row arrived exactly once, and the service's memory and CPU.

use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::client::{Shared, Subscriber, Tracker, Transport};
use crate::procfs;
use crate::service::Service;
use crate::stats::RunReport;
use crate::usage::{settle, Window};
use crate::{BulkArgs, Ctx};

/// Longest wait for subscribers to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the service's RSS is read while the transaction is delivered.
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// The one tenant every row belongs to.
const TENANT: u64 = 0;
/// Counters of `/metrics` that tell how the service delivered (lags, replays).
const COUNTERS: [&str; 4] = [
    "changecast_subscribers_lagged_total",
    "changecast_replays_total",
    "changecast_replay_pages_read_total",
    "changecast_events_delivered_total",
];

/// The timed statement: rows `bench~0~` .. `bench~<rows-1>~` of tenant `t0` into `table`.
fn statement(table: &str) -> String {
    format!(
        "insert into {table} (tenant_id, title)
         select 't{TENANT}', 'bench~' || g || '~' from generate_series(0, $1::bigint - 1) g"
    )
}

/// How long one transaction of the statement took: the statement, then COMMIT.
struct Timed {
    statement: Duration,
    commit: Duration,
}

/// Runs the statement into `table` in a transaction of its own; `committed` is called
/// the moment COMMIT returned.
async fn insert(
    db: &Client,
    table: &str,
    rows: u64,
    mut committed: impl FnMut(),
) -> anyhow::Result<Timed> {
    let prepared = db.prepare(&statement(table)).await?;
    db.batch_execute("begin").await?;
    let started = tokio::time::Instant::now();
    let inserted = db
        .execute(&prepared, &[&(rows as i64)])
        .await
        .map_err(|e| anyhow::anyhow!("inserting into {table}: {e:?}"))?;
    let statement = started.elapsed();
    anyhow::ensure!(inserted == rows, "{inserted} rows inserted, not {rows}");
    let started = tokio::time::Instant::now();
    db.batch_execute("commit")
        .await
        .map_err(|e| anyhow::anyhow!("committing into {table}: {e:?}"))?;
    committed();
    Ok(Timed {
        statement,
        commit: started.elapsed(),
    })
}

pub async fn run(ctx: &Ctx, args: &BulkArgs) -> anyhow::Result<RunReport> {
    let mut report = RunReport::default();
    report.note(format!(
        "machine: {} CPUs, load averages {} before the run",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        procfs::load_averages().unwrap_or_default()
    ));
    let mut service = ctx.service().await?;
    let db = crate::service::connect(&ctx.database_url).await?;

    // The reference: the same statement into a table without a trigger.
    let plain = insert(&db, "bench.plain", args.rows, || {}).await?;

    let shared = Shared::new(0);
    let cancel = CancellationToken::new();
    let mut tasks = Vec::with_capacity(args.subscribers);
    for i in 0..args.subscribers {
        let transport = match args.transport {
            crate::Transports::Sse => Transport::Sse,
            crate::Transports::Ws => Transport::Ws,
            crate::Transports::Mixed if i % 2 == 0 => Transport::Sse,
            crate::Transports::Mixed => Transport::Ws,
        };
        let subscriber = Subscriber {
            addr: service.addr,
            transport,
            token: service.token(&format!("t{TENANT}")),
            tenant: TENANT,
            tenants: 1,
            resume: None,
            until: Some(args.rows),
            max_txn_events: args.max_txn_events,
        };
        tasks.push(tokio::spawn(subscriber.run(shared.clone(), cancel.clone())));
    }
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    while shared.ready.load(std::sync::atomic::Ordering::Relaxed) < args.subscribers {
        if tokio::time::Instant::now() > deadline || tasks.iter().any(|t| t.is_finished()) {
            cancel.cancel();
            anyhow::bail!("the subscribers did not all connect within {CONNECT_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    settle(&service).await;
    let before = counters(&service).await;

    let mut committed_ns = 0;
    let watched = insert(&db, "bench.watched", args.rows, || {
        committed_ns = shared.now_ns();
    })
    .await?;
    // CPU and memory while the transaction is delivered, from COMMIT on.
    let window = Window::start(service.pid, &ctx.database_url).await?;
    let mut peak_sampled = 0u64;
    let deadline = tokio::time::Instant::now() + args.timeout;
    while !tasks.iter().all(|t| t.is_finished()) && tokio::time::Instant::now() < deadline {
        if let Some(rss) = service.pid.and_then(procfs::rss) {
            peak_sampled = peak_sampled.max(rss);
        }
        tokio::time::sleep(RSS_SAMPLE_EVERY).await;
    }
    let timed_out = !tasks.iter().all(|t| t.is_finished());
    let usage = window.finish().await?;
    let after = counters(&service).await;
    let peak_lifetime = service.pid.and_then(procfs::peak_rss);
    cancel.cancel();
    let mut trackers = Vec::with_capacity(tasks.len());
    for task in tasks {
        trackers.push(task.await?);
    }
    service.stop().await;

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    report.add("unwatched: statement", "ms", ms(plain.statement));
    report.add("unwatched: COMMIT", "ms", ms(plain.commit));
    report.add("watched: statement", "ms", ms(watched.statement));
    report.add("watched: COMMIT", "ms", ms(watched.commit));
    report.add(
        "statement + COMMIT, watched / unwatched",
        "x",
        (watched.statement + watched.commit).as_secs_f64()
            / (plain.statement + plain.commit).as_secs_f64().max(1e-9),
    );
    if timed_out {
        report.note(format!(
            "not every subscriber was done within {:?}",
            args.timeout
        ));
    }
    subscribers(&mut report, args, &trackers, committed_ns);
    if let Some(rss) = peak_lifetime {
        report.add("service peak RSS (VmHWM)", "MiB", rss as f64 / MIB);
    }
    if peak_sampled > 0 {
        report.add(
            "service peak RSS (sampled while delivering)",
            "MiB",
            peak_sampled as f64 / MIB,
        );
    }
    usage.add_to(&mut report);
    if let (Some(before), Some(after)) = (before, after) {
        for (name, (b, a)) in COUNTERS.iter().zip(before.iter().zip(&after)) {
            report.add(
                format!("{} (delta)", name.trim_start_matches("changecast_")),
                "",
                a - b,
            );
        }
    }
    usage.judge(&mut report);
    Ok(report)
}

const MIB: f64 = 1024.0 * 1024.0;

/// Per subscriber: COMMIT to first and last event, events/s, missing and duplicates.
fn subscribers(report: &mut RunReport, args: &BulkArgs, trackers: &[Tracker], committed_ns: u64) {
    let since_commit = |ns: u64| ns.saturating_sub(committed_ns) as f64 / 1e6;
    let (mut slowest, mut missing_all, mut duplicates_all) = (f64::INFINITY, 0u64, 0u64);
    for (i, tracker) in trackers.iter().enumerate() {
        let n = i + 1;
        if let Some(error) = &tracker.error {
            report.note(format!("subscriber {n} failed: {error}"));
        }
        if args.max_txn_events.is_some() {
            report.add(
                format!("sub {n}: resyncs"),
                "events",
                tracker.resyncs as f64,
            );
            if let Some(done) = tracker.done_ns {
                report.add(
                    format!("sub {n}: COMMIT to resync"),
                    "ms",
                    since_commit(done),
                );
            }
            report.add(
                format!("sub {n}: events"),
                "events",
                tracker.distinct as f64,
            );
            continue;
        }
        let missing = (0..args.rows).filter(|seq| !tracker.has(*seq)).count() as u64;
        missing_all += missing;
        duplicates_all += tracker.duplicates;
        if let Some(first) = tracker.first_ns {
            report.add(
                format!("sub {n}: COMMIT to first"),
                "ms",
                since_commit(first),
            );
            report.add(
                format!("sub {n}: COMMIT to last"),
                "ms",
                since_commit(tracker.last_ns),
            );
            let rate = tracker.distinct as f64 / (since_commit(tracker.last_ns) / 1e3).max(1e-9);
            report.add(format!("sub {n}: events/s (COMMIT to last)"), "/s", rate);
            slowest = slowest.min(rate);
        } else {
            slowest = 0.0;
        }
        report.add(format!("sub {n}: missing"), "events", missing as f64);
        report.add(
            format!("sub {n}: duplicates"),
            "events",
            tracker.duplicates as f64,
        );
        report.add(
            format!("sub {n}: resyncs"),
            "events",
            tracker.resyncs as f64,
        );
    }
    if args.max_txn_events.is_none() {
        report.add("slowest subscriber events/s", "/s", slowest);
        report.add("missing (all subscribers)", "events", missing_all as f64);
        report.add(
            "duplicates (all subscribers)",
            "events",
            duplicates_all as f64,
        );
        if slowest < 100_000.0 {
            report.note(format!(
                "below the target of 100000 events/s per subscriber (slowest {slowest:.0})"
            ));
        }
    }
}

/// The values of [`COUNTERS`] from the service's `/metrics` (`None` when unreadable).
async fn counters(service: &Service) -> Option<Vec<f64>> {
    let text = tokio::time::timeout(Duration::from_secs(5), get(service, "/metrics"))
        .await
        .ok()?
        .ok()?;
    Some(
        COUNTERS
            .iter()
            .map(|name| {
                text.lines()
                    .filter(|line| line.split([' ', '{']).next() == Some(name))
                    .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum()
            })
            .collect(),
    )
}

async fn get(service: &Service, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(service.addr).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", service.addr);
    stream.write_all(request.as_bytes()).await?;
    let mut body = Vec::new();
    stream.read_to_end(&mut body).await?;
    let text = String::from_utf8_lossy(&body).into_owned();
    let (_, body) = text.split_once("\r\n\r\n").context("no response body")?;
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_numbers_rows_as_the_clients_read_them() {
        let sql = statement("bench.watched");
        assert!(sql.contains("into bench.watched"));
        assert!(sql.contains("'bench~' || g || '~'"));
        assert!(sql.contains("generate_series(0, $1::bigint - 1)"));
    }
}
