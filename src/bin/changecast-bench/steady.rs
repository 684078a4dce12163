//! `steady`: what a changecast deployment costs the user's database in the long run. The
//! same write load (single-row transactions, a mix of INSERTs and UPDATEs) runs twice:
//! on an unwatched table (`bench.plain`: no trigger) and then on a watched one
//! (`bench.watched`) with a service running at the given retention and subscribers
//! receiving every change. Sampled every few seconds: WAL, the table's and the journal's
//! size, rows, dead rows and (auto)vacuum counts, pruned rows, writer latency; reported:
//! whether the journal stays flat past the retention, its plateau against
//! retention × rate × bytes per row, WAL per change watched and unwatched and how much of
//! it pruning adds, autovacuum runs, writer latency watched and unwatched.
//!
//! WAL figures are the cluster's (pg_current_wal_lsn): on a shared cluster they include
//! everyone's writes, so measure on a cluster of its own when they matter.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::builder::TypedValueParser as _;
use clap::Args;
use tokio::time::Instant;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::client::{self, Shared, Subscriber, Transport};
use crate::live;
use crate::procfs::MachineCpu;
use crate::service::{self, Launch, Service};
use crate::stats::{fmt_num, Histogram, RunReport};
use crate::writer::on_own_thread;
use crate::Ctx;

/// The unwatched copy and the watched table: both `like public.tickets` (sql/bench/setup.sql).
const UNWATCHED: &str = "bench.plain";
const WATCHED: &str = "bench.watched";
const JOURNAL: &str = "changecast.change_log";
/// Recently inserted rows each writer keeps per tenant, to pick its UPDATEs from.
const RECENT_PER_TENANT: usize = 32;
const MIB: f64 = 1024.0 * 1024.0;

#[derive(Args, Debug)]
#[command(after_long_help = "\
Method. Each phase starts from emptied tables right after a CHECKPOINT, so checkpoints \
(and their full-page images) fall at the same times in both phases. WAL is read with \
pg_current_wal_lsn() (and pg_stat_wal's full-page images on PostgreSQL 14+): it is the \
whole cluster's, so other databases' writes count too: on a shared cluster, point --database-url at a cluster of its own (same version and settings) for these figures.

WAL attributable to pruning: the watched phase's WAL per change after the first prune \
(from the first sample that saw pruned rows to the end) minus its WAL per change before \
it (from the start to the last sample without pruned rows); the same difference over the \
same sample times of the unwatched phase (table growth, checkpoint cycle) is subtracted. \
What remains is the WAL of deleting journal rows and of vacuuming them away.

Bytes per journal row: the journal's size (tables, indexes, TOAST, every partition) over \
its rows at the last sample before the first prune. The plateau is expected near \
retention × the rate the writers reached × that; flat means the largest and smallest \
journal size after the retention plus 1/8 of it (when every row past the retention is \
pruned) are within --flat-tolerance. Growth over the last retention: the journal's size at \
the end against its size one retention earlier (within that same stretch): near zero when \
pruning and autovacuum keep up, whatever space the first vacuum cycles settle at.

One run lasts twice --duration plus set-up: pass --runs 1.")]
pub struct SteadyArgs {
    /// Changes committed per second over all writers; one row per transaction.
    #[arg(long, default_value_t = 1000.0, value_parser = crate::parse_rate)]
    pub rate: f64,
    /// How long each phase (unwatched, then watched) writes.
    #[arg(long, default_value = "30m", value_parser = positive_duration)]
    pub duration: Duration,
    /// The service's retention (CHANGECAST_RETENTION); it prunes at least 20 times per
    /// retention.
    #[arg(long, default_value = "10m", value_parser = positive_duration)]
    pub retention: Duration,
    /// Share of changes that UPDATE a recently inserted row of the same tenant (its
    /// title and updated_at); the others INSERT a row.
    #[arg(long, default_value_t = 0.5, value_parser = parse_share)]
    pub update_share: f64,
    /// Writer connections sharing the rate. Each has one transaction in flight, so the
    /// rate holds only while a transaction takes less than writers / rate: many, so that
    /// a disturbed machine slows the writes rather than the rate.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=64).map(|n| n as usize))]
    pub writers: usize,
    /// SSE subscribers in the watched phase, one tenant each in turn.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    pub subscribers: usize,
    /// Tenants the rows are spread over.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub tenants: u64,
    /// Time between samples.
    #[arg(long, default_value = "10s", value_parser = positive_duration)]
    pub sample: Duration,
    /// Largest (max - min) / min of the journal size past the retention still called flat.
    #[arg(long, default_value_t = 0.2, value_parser = parse_share)]
    pub flat_tolerance: f64,
    /// After writing, the longest wait for the last deliveries before counting missing ones.
    #[arg(long, default_value = "30s", value_parser = changecast::config::parse_duration)]
    pub drain: Duration,
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    match changecast::config::parse_duration(text)? {
        Duration::ZERO => Err("must be more than zero".into()),
        duration => Ok(duration),
    }
}

fn parse_share(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(share) if (0.0..=1.0).contains(&share) => Ok(share),
        _ => Err(format!("{text:?} is not a number from 0 to 1")),
    }
}

/// One look at the database during a phase. Counters are since the phase started.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// Seconds since the phase started writing.
    pub t: f64,
    pub changes: u64,
    pub wal_bytes: u64,
    pub wal_fpi: u64,
    /// The written table (phase 1) or the journal (phase 2): every partition, with
    /// indexes and TOAST.
    pub size: u64,
    pub live_rows: i64,
    pub dead_rows: i64,
    pub autovacuums: i64,
    pub autoanalyzes: i64,
    /// Journal rows the service pruned (its metric); 0 in the unwatched phase.
    pub pruned: u64,
    /// Writer latency p99 since the previous sample, in ms.
    pub writer_p99_ms: f64,
}

/// WAL bytes per change between two samples; `None` without changes between them.
pub fn wal_per_change(from: &Sample, to: &Sample) -> Option<f64> {
    let changes = to.changes.checked_sub(from.changes)?;
    (changes > 0).then(|| to.wal_bytes.saturating_sub(from.wal_bytes) as f64 / changes as f64)
}

/// The last sample before anything was pruned and the first after: indexes into `samples`.
pub fn prune_split(samples: &[Sample]) -> Option<(usize, usize)> {
    let after = samples.iter().position(|s| s.pruned > 0)?;
    after.checked_sub(1).map(|before| (before, after))
}

/// Smallest, largest and mean size of the samples from `from_s` seconds on, and how many.
#[derive(Debug, PartialEq)]
pub struct Plateau {
    pub min: u64,
    pub max: u64,
    pub mean: f64,
    pub samples: usize,
}

impl Plateau {
    pub fn of(samples: &[Sample], from_s: f64) -> Option<Plateau> {
        let sizes: Vec<u64> = samples
            .iter()
            .filter(|s| s.t >= from_s)
            .map(|s| s.size)
            .collect();
        if sizes.len() < 2 {
            return None;
        }
        Some(Plateau {
            min: *sizes.iter().min()?,
            max: *sizes.iter().max()?,
            mean: sizes.iter().sum::<u64>() as f64 / sizes.len() as f64,
            samples: sizes.len(),
        })
    }

    /// (max - min) / min.
    pub fn spread(&self) -> f64 {
        (self.max - self.min) as f64 / self.min.max(1) as f64
    }
}

/// How much the size grew over the last `window_s` seconds of samples (as a fraction of
/// the size at its start), counting only samples from `from_s` on; `None` when the
/// samples past `from_s` do not span the window.
pub fn growth_over(samples: &[Sample], window_s: f64, from_s: f64) -> Option<f64> {
    let last = samples.last()?;
    let start = samples
        .iter()
        .find(|s| s.t >= from_s && s.t >= last.t - window_s - 1e-9)?;
    (last.t - start.t >= window_s * 0.9 && start.size > 0)
        .then(|| (last.size as f64 - start.size as f64) / start.size as f64)
}

/// When every row older than the retention is gone: the service prunes a row within
/// the retention plus 1/8 of it (see `changecast serve --help`, --retention).
pub fn plateau_from(retention: Duration) -> Duration {
    retention + retention / 8
}

/// The journal's expected steady size: every change of the last retention period.
pub fn expected_plateau(rate: f64, retention: Duration, bytes_per_row: f64) -> f64 {
    rate * retention.as_secs_f64() * bytes_per_row
}

/// What the sampler reads of a table (all its partitions). pg_partition_tree() lists
/// nothing for a table that is not partitioned: then the table itself is the tree.
struct TableStats {
    size: u64,
    live: i64,
    dead: i64,
    autovacuums: i64,
    /// Each relation's (auto)vacuum and autoanalyze counts, for [`VacuumRuns`].
    runs: Vec<RelationRuns>,
}

/// A relation of a table's tree: its oid, autovacuum and autoanalyze counts.
pub type RelationRuns = (u32, i64, i64);

const TABLE_STATS: &str = "
    select t.relid::oid, pg_total_relation_size(t.relid),
           coalesce(s.n_live_tup, 0), coalesce(s.n_dead_tup, 0),
           coalesce(s.autovacuum_count, 0), coalesce(s.autoanalyze_count, 0)
      from (select relid from pg_partition_tree($1::text::regclass)
            union all select $1::text::regclass
             where not exists (select from pg_partition_tree($1::text::regclass))) t
      left join pg_stat_user_tables s on s.relid = t.relid";

async fn table_stats(db: &Client, table: &str) -> anyhow::Result<TableStats> {
    let mut stats = TableStats {
        size: 0,
        live: 0,
        dead: 0,
        autovacuums: 0,
        runs: Vec::new(),
    };
    for row in db.query(TABLE_STATS, &[&table]).await? {
        stats.size += row.get::<_, i64>(1) as u64;
        stats.live += row.get::<_, i64>(2);
        stats.dead += row.get::<_, i64>(3);
        stats.autovacuums += row.get::<_, i64>(4);
        stats.runs.push((row.get(0), row.get(4), row.get(5)));
    }
    Ok(stats)
}

/// Autovacuum and autoanalyze runs on a table's relations since a phase began, counting
/// those of partitions dropped meanwhile: a partitioned journal drops its oldest
/// partitions, and their counts leave the statistics views with them.
#[derive(Debug, Default)]
pub struct VacuumRuns {
    at_start: std::collections::HashMap<u32, (i64, i64)>,
    latest: std::collections::HashMap<u32, (i64, i64)>,
}

impl VacuumRuns {
    pub fn new(at_start: &[RelationRuns]) -> VacuumRuns {
        let at_start: std::collections::HashMap<_, _> = at_start
            .iter()
            .map(|&(relid, vacuums, analyzes)| (relid, (vacuums, analyzes)))
            .collect();
        VacuumRuns {
            latest: at_start.clone(),
            at_start,
        }
    }

    /// Records the counts read now; relations gone keep their last counts.
    pub fn observe(&mut self, now: &[RelationRuns]) {
        for &(relid, vacuums, analyzes) in now {
            self.latest.insert(relid, (vacuums, analyzes));
        }
    }

    /// Autovacuum and autoanalyze runs since the start, over every relation seen.
    pub fn since_start(&self) -> (i64, i64) {
        self.latest
            .iter()
            .fold((0, 0), |(vacuums, analyzes), (relid, &(v, a))| {
                let (v0, a0) = self.at_start.get(relid).copied().unwrap_or((0, 0));
                (vacuums + v - v0, analyzes + a - a0)
            })
    }
}

/// The cluster's WAL position and, on 14+, its full-page images so far.
async fn wal(db: &Client, has_stat_wal: bool) -> anyhow::Result<(u64, u64)> {
    let lsn: i64 = db
        .query_one("select (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint", &[])
        .await?
        .get(0);
    let fpi: i64 = match has_stat_wal {
        true => db
            .query_one("select wal_fpi from pg_stat_wal", &[])
            .await?
            .get(0),
        false => 0,
    };
    Ok((lsn as u64, fpi as u64))
}

/// The service's `changecast_journal_rows_pruned_total`, from its /metrics.
async fn pruned_rows(addr: SocketAddr) -> Option<u64> {
    let text = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut body = String::new();
        stream.read_to_string(&mut body)?;
        Ok(body)
    })
    .await
    .ok()?
    .ok()?;
    metric(&text, "changecast_journal_rows_pruned_total")
}

/// A counter's value in a Prometheus text exposition (chunked or not: the line is whole).
pub fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let value = rest.strip_prefix(' ')?;
        value.trim().parse::<f64>().ok().map(|v| v as u64)
    })
}

/// What the writers have done so far, read by the sampler while they write.
#[derive(Default)]
struct Progress {
    committed: AtomicU64,
    inserts: AtomicU64,
    updates: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Transaction latency since the last sample, and over the phase.
    latency: Mutex<(Histogram, Histogram)>,
}

impl Progress {
    fn take_interval(&self) -> Histogram {
        std::mem::take(&mut self.latency.lock().expect("latency lock").0)
    }
}

#[derive(Clone)]
struct Load {
    url: String,
    table: &'static str,
    writers: usize,
    rate: f64,
    update_share: f64,
    tenants: u64,
    duration: Duration,
}

/// Whether change `seq` is an UPDATE: a fixed pseudo-random choice, `share` of them.
fn is_update(seq: u64, share: f64) -> bool {
    let mixed = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    (mixed as f64 / (1u64 << 53) as f64) < share
}

/// Writes at `load.rate` (open loop, as `live`'s writers) until `load.duration` is over.
async fn write(load: Load, shared: Arc<Shared>, progress: Arc<Progress>) {
    let start = Instant::now();
    let end = start + load.duration;
    let interval = Duration::from_secs_f64(load.writers as f64 / load.rate);
    let next_seq = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for writer in 0..load.writers {
        let first = start + interval.mul_f64(writer as f64 / load.writers as f64);
        let (load, shared, progress, next_seq) = (
            load.clone(),
            shared.clone(),
            progress.clone(),
            next_seq.clone(),
        );
        tasks.push(tokio::spawn(async move {
            if let Err(error) =
                write_one(&load, &shared, &progress, &next_seq, first, interval, end).await
            {
                progress.failed.fetch_add(1, Ordering::Relaxed);
                progress
                    .first_error
                    .lock()
                    .expect("error lock")
                    .get_or_insert(format!("{error:#}"));
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

async fn write_one(
    load: &Load,
    shared: &Shared,
    progress: &Progress,
    next_seq: &AtomicU64,
    first: Instant,
    interval: Duration,
    end: Instant,
) -> anyhow::Result<()> {
    let db = service::connect(&load.url).await?;
    let insert = db
        .prepare(&format!(
            "insert into {} (tenant_id, title) values ($1, $2) returning id::text",
            load.table
        ))
        .await?;
    let update = db
        .prepare(&format!(
            "update {} set title = $2, updated_at = now() where id = cast($1::text as uuid)",
            load.table
        ))
        .await?;
    let tenants: Vec<String> = (0..load.tenants).map(|t| format!("t{t}")).collect();
    let mut recent: Vec<Vec<String>> = vec![Vec::new(); load.tenants as usize];
    let mut due = first;
    while due < end && Instant::now() < end {
        tokio::time::sleep_until(due).await;
        due += interval;
        let seq = next_seq.fetch_add(1, Ordering::Relaxed);
        let Some(slot) = shared.committed.get(seq as usize) else {
            break;
        };
        let tenant = (seq % load.tenants) as usize;
        let title = client::title(seq);
        let mine = &mut recent[tenant];
        let sent = std::time::Instant::now();
        let outcome = if is_update(seq, load.update_share) && !mine.is_empty() {
            let id = &mine[(seq / load.tenants) as usize % mine.len()];
            db.execute(&update, &[id, &title]).await.map(|_| false)
        } else {
            db.query_one(&insert, &[&tenants[tenant], &title])
                .await
                .map(|row| {
                    if mine.len() == RECENT_PER_TENANT {
                        mine.remove(0);
                    }
                    mine.push(row.get(0));
                    true
                })
        };
        let took = sent.elapsed();
        match outcome {
            Ok(inserted) => {
                slot.store(shared.now_ns().max(1), Ordering::Release);
                progress.committed.fetch_add(1, Ordering::Relaxed);
                let kind = if inserted {
                    &progress.inserts
                } else {
                    &progress.updates
                };
                kind.fetch_add(1, Ordering::Relaxed);
                let mut latency = progress.latency.lock().expect("latency lock");
                latency.0.record_ns(took.as_nanos() as u64);
                latency.1.record_ns(took.as_nanos() as u64);
            }
            Err(error) => {
                progress.failed.fetch_add(1, Ordering::Relaxed);
                progress
                    .first_error
                    .lock()
                    .expect("error lock")
                    .get_or_insert(format!("{error:?}"));
            }
        }
    }
    Ok(())
}

/// What a phase measured.
struct Phase {
    samples: Vec<Sample>,
    latency: Histogram,
    inserts: u64,
    updates: u64,
    failed: u64,
    first_error: Option<String>,
    elapsed: Duration,
    machine_cores: f64,
    /// Final per-partition lines (the journal's, in the watched phase).
    partitions: Vec<String>,
}

/// What differs between the phases.
struct Target<'a> {
    /// The table written.
    table: &'static str,
    /// The table whose size and vacuuming is sampled.
    measured: &'static str,
    /// The service, whose pruned-rows metric is read.
    service: Option<&'a Service>,
}

async fn run_phase(
    ctx: &Ctx,
    args: &SteadyArgs,
    shared: &Arc<Shared>,
    target: Target<'_>,
) -> anyhow::Result<Phase> {
    let db = service::connect(&ctx.database_url).await?;
    let has_stat_wal = db
        .query_one(
            "select current_setting('server_version_num')::int >= 140000",
            &[],
        )
        .await?
        .get::<_, bool>(0);
    let mut vacuum_runs = VacuumRuns::new(&table_stats(&db, target.measured).await?.runs);
    let base_wal = wal(&db, has_stat_wal).await?;
    let base_pruned = match target.service {
        Some(service) => pruned_rows(service.addr).await.unwrap_or(0),
        None => 0,
    };
    let progress = Arc::new(Progress::default());
    let load = Load {
        url: ctx.database_url.clone(),
        table: target.table,
        writers: args.writers,
        rate: args.rate,
        update_share: args.update_share,
        tenants: args.tenants,
        duration: args.duration,
    };
    let machine = MachineCpu::start();
    let started = Instant::now();
    let (w_shared, w_progress) = (shared.clone(), progress.clone());
    let mut writing = tokio::spawn(on_own_thread("steady-writers", move || {
        write(load, w_shared, w_progress)
    }));

    println!(
        "\n| t s | changes | WAL MB | WAL B/change (so far) | WAL B/change (interval) | FPI | {} MB | live rows (est.) | dead rows | autovacuum | autoanalyze | pruned | writer p99 ms (interval) |",
        target.measured
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut samples: Vec<Sample> = Vec::new();
    let mut next = started + args.sample;
    loop {
        let done = tokio::select! {
            _ = tokio::time::sleep_until(next) => false,
            _ = &mut writing => true,
        };
        next += args.sample;
        let stats = table_stats(&db, target.measured).await?;
        vacuum_runs.observe(&stats.runs);
        let (autovacuums, autoanalyzes) = vacuum_runs.since_start();
        let (lsn, fpi) = wal(&db, has_stat_wal).await?;
        let pruned = match target.service {
            Some(service) => pruned_rows(service.addr).await.map_or_else(
                || samples.last().map_or(0, |s| s.pruned),
                |p| p.saturating_sub(base_pruned),
            ),
            None => 0,
        };
        let interval = progress.take_interval();
        let sample = Sample {
            t: started.elapsed().as_secs_f64(),
            changes: progress.committed.load(Ordering::Relaxed),
            wal_bytes: lsn - base_wal.0,
            wal_fpi: fpi - base_wal.1,
            size: stats.size,
            live_rows: stats.live,
            dead_rows: stats.dead,
            autovacuums,
            autoanalyzes,
            pruned,
            writer_p99_ms: interval.quantile_ms(0.99).unwrap_or(f64::NAN),
        };
        let per_change = wal_per_change(samples.last().unwrap_or(&Sample::default()), &sample);
        println!(
            "| {:.0} | {} | {:.1} | {} | {} | {} | {:.2} | {} | {} | {} | {} | {} | {} |",
            sample.t,
            sample.changes,
            sample.wal_bytes as f64 / MIB,
            wal_per_change(&Sample::default(), &sample).map_or("–".into(), fmt_num),
            per_change.map_or("–".into(), fmt_num),
            sample.wal_fpi,
            sample.size as f64 / MIB,
            sample.live_rows,
            sample.dead_rows,
            sample.autovacuums,
            sample.autoanalyzes,
            sample.pruned,
            fmt_num(sample.writer_p99_ms)
        );
        let _ = std::io::stdout().flush();
        samples.push(sample);
        if done {
            break;
        }
    }
    let elapsed = started.elapsed();
    let machine_cores = machine.cores();
    let partitions = db
        .query(
            "select t.relid::regclass::text, pg_total_relation_size(t.relid),
                    coalesce(s.n_live_tup, 0), coalesce(s.n_dead_tup, 0),
                    coalesce(s.autovacuum_count, 0), coalesce(s.vacuum_count, 0),
                    coalesce(to_char(s.last_autovacuum, 'HH24:MI:SS'), '–')
               from (select relid, isleaf from pg_partition_tree($1::text::regclass)
                     union all select $1::text::regclass, true
                      where not exists (select from pg_partition_tree($1::text::regclass))) t
               left join pg_stat_user_tables s on s.relid = t.relid
              where t.isleaf",
            &[&target.measured],
        )
        .await?
        .iter()
        .map(|row| {
            format!(
                "{}: {:.2} MB, {} live, {} dead rows, autovacuum count {} (total), vacuum count {}, last autovacuum {}",
                row.get::<_, String>(0),
                row.get::<_, i64>(1) as f64 / MIB,
                row.get::<_, i64>(2),
                row.get::<_, i64>(3),
                row.get::<_, i64>(4),
                row.get::<_, i64>(5),
                row.get::<_, String>(6),
            )
        })
        .collect();
    let latency = progress.latency.lock().expect("latency lock").1.clone();
    let first_error = progress.first_error.lock().expect("error lock").clone();
    Ok(Phase {
        samples,
        latency,
        inserts: progress.inserts.load(Ordering::Relaxed),
        updates: progress.updates.load(Ordering::Relaxed),
        failed: progress.failed.load(Ordering::Relaxed),
        first_error,
        elapsed,
        machine_cores,
        partitions,
    })
}

fn load_averages() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}

/// Both phases and the comparison.
pub async fn run(ctx: &Ctx, args: &SteadyArgs) -> anyhow::Result<RunReport> {
    anyhow::ensure!(
        ctx.target.is_none(),
        "steady starts its own service with --retention: --target is not supported"
    );
    let mut report = RunReport::default();
    let db = service::connect(&ctx.database_url).await?;
    let mut settings = Vec::new();
    for name in [
        "autovacuum",
        "checkpoint_timeout",
        "max_wal_size",
        "full_page_writes",
        "wal_compression",
        "autovacuum_naptime",
        "autovacuum_vacuum_scale_factor",
        "autovacuum_vacuum_insert_scale_factor",
        "autovacuum_vacuum_cost_limit",
    ] {
        let value: String = db.query_one(&format!("show {name}"), &[]).await?.get(0);
        settings.push(format!("{name}={value}"));
    }
    if settings.iter().any(|s| s == "autovacuum=off") {
        report.note(
            "autovacuum is off on this cluster: dead journal rows stay until something \
             vacuums them, so the journal cannot stay flat; not a user's database's setting",
        );
    }
    let prune_every =
        changecast::journal::pruner::interval(Duration::from_secs(60), args.retention);
    println!("settings:   {}", settings.join(", "));
    println!(
        "load:       {} W/s for {:?} per phase, {:.0} % UPDATEs of a recent row of the same tenant, \
         the rest INSERTs; {} writers; retention {:?} (pruning every {prune_every:?}); \
         {} SSE subscribers over {} tenants",
        args.rate,
        args.duration,
        args.update_share * 100.0,
        args.writers,
        args.retention,
        args.subscribers,
        args.tenants
    );
    let rows = (args.rate * args.duration.as_secs_f64() * 1.3) as usize + 10_000;

    // Phase 1: the unwatched table, no service.
    service::reset(&ctx.database_url, None).await?;
    db.batch_execute("checkpoint").await?;
    println!(
        "\n## Phase 1: unwatched ({UNWATCHED}), load average {}",
        load_averages()
    );
    let shared = Shared::new(rows);
    let unwatched = run_phase(
        ctx,
        args,
        &shared,
        Target {
            table: UNWATCHED,
            measured: UNWATCHED,
            service: None,
        },
    )
    .await?;
    let unwatched_table = table_stats(&db, UNWATCHED).await?;

    // Phase 2: the watched table, a service pruning at the retention, subscribers.
    service::reset(&ctx.database_url, None).await?;
    db.batch_execute("checkpoint").await?;
    let env = [(
        "CHANGECAST_RETENTION",
        format!("{}ms", args.retention.as_millis()),
    )];
    let mut service = Service::start(&Launch {
        bin: &ctx.service_bin,
        database_url: &ctx.database_url,
        log: &ctx.service_log,
        env: &env,
    })
    .await?;
    let shared = Shared::new(rows);
    shared.measure_from.store(0, Ordering::Relaxed);
    let cancel = CancellationToken::new();
    let mut subscribers = Vec::new();
    for i in 0..args.subscribers {
        let tenant = i as u64 % args.tenants;
        let subscriber = Subscriber {
            addr: service.addr,
            transport: Transport::Sse,
            token: service.token(&format!("t{tenant}")),
            tenant,
            tenants: args.tenants,
            resume: None,
            until: None,
            max_txn_events: None,
        };
        subscribers.push(tokio::spawn(subscriber.run(shared.clone(), cancel.clone())));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while shared.ready.load(Ordering::Relaxed) < args.subscribers && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "\n## Phase 2: watched ({WATCHED}), journal {JOURNAL}, load average {}",
        load_averages()
    );
    let watched = run_phase(
        ctx,
        args,
        &shared,
        Target {
            table: WATCHED,
            measured: JOURNAL,
            service: Some(&service),
        },
    )
    .await;
    let expected = live::expected_deliveries(&shared, args.tenants, args.subscribers);
    live::drain(&shared, expected, args.drain).await;
    cancel.cancel();
    let mut trackers = Vec::new();
    for subscriber in subscribers {
        trackers.push(subscriber.await?);
    }
    service.stop().await;
    let watched = watched?;
    let watched_table = table_stats(&db, WATCHED).await?;
    println!("\nload average after: {}", load_averages());

    figures(
        &mut report,
        args,
        &unwatched,
        &watched,
        (&unwatched_table, &watched_table),
    );
    let mut delivered = Histogram::default();
    for tracker in &trackers {
        delivered.merge(&tracker.latency);
    }
    report.add(
        "delivery latency p99 (commit to subscriber)",
        "ms",
        delivered.quantile_ms(0.99).unwrap_or(f64::NAN),
    );
    live::completeness(&mut report, &shared, &trackers, args.tenants);
    for line in &watched.partitions {
        report.note(format!("journal partition {line}"));
    }
    Ok(report)
}

fn figures(
    report: &mut RunReport,
    args: &SteadyArgs,
    unwatched: &Phase,
    watched: &Phase,
    tables: (&TableStats, &TableStats),
) {
    for (name, phase) in [("unwatched", unwatched), ("watched", watched)] {
        let last = phase.samples.last().cloned().unwrap_or_default();
        let secs = phase.elapsed.as_secs_f64().max(1e-9);
        report.add(format!("{name}: changes"), "/s", last.changes as f64 / secs);
        report.add(
            format!("{name}: UPDATE share"),
            "%",
            100.0 * phase.updates as f64 / (phase.inserts + phase.updates).max(1) as f64,
        );
        report.add(
            format!("{name}: WAL per change"),
            "B",
            wal_per_change(&Sample::default(), &last).unwrap_or(f64::NAN),
        );
        report.add(
            format!("{name}: full-page images per 1000 changes"),
            "FPI",
            1000.0 * last.wal_fpi as f64 / last.changes.max(1) as f64,
        );
        for (q, at) in [("p50", 0.5), ("p99", 0.99), ("max", 1.0)] {
            report.add(
                format!("{name}: writer latency {q}"),
                "ms",
                phase.latency.quantile_ms(at).unwrap_or(f64::NAN),
            );
        }
        report.add(
            format!("{name}: machine busy"),
            "cores",
            phase.machine_cores,
        );
        if phase.failed > 0 {
            report.note(format!(
                "{name}: {} writes failed; first: {}",
                phase.failed,
                phase.first_error.clone().unwrap_or_default()
            ));
        }
        if (last.changes as f64 / secs) < 0.95 * args.rate {
            report.note(format!(
                "{name}: writers reached only {:.0} of {:.0} changes/s",
                last.changes as f64 / secs,
                args.rate
            ));
        }
    }
    let (unwatched_table, watched_table) = tables;
    report.add(
        "unwatched: table size at the end",
        "MB",
        unwatched_table.size as f64 / MIB,
    );
    report.add(
        "watched: table size at the end",
        "MB",
        watched_table.size as f64 / MIB,
    );
    report.add(
        "unwatched: table autovacuum / autoanalyze runs",
        "runs",
        unwatched.samples.last().map_or(0, |s| s.autovacuums) as f64,
    );
    report.add(
        "watched: table autovacuum runs",
        "runs",
        watched_table.autovacuums as f64,
    );
    if let (Some(u), Some(w)) = (unwatched.samples.last(), watched.samples.last()) {
        if let (Some(u), Some(w)) = (
            wal_per_change(&Sample::default(), u),
            wal_per_change(&Sample::default(), w),
        ) {
            report.add("WAL per change, watched − unwatched", "B", w - u);
            report.add("WAL per change, watched / unwatched", "x", w / u);
        }
    }

    // The journal: fill, plateau, flatness, pruning.
    let journal = &watched.samples;
    let last = journal.last().cloned().unwrap_or_default();
    report.add("journal autovacuum runs", "runs", last.autovacuums as f64);
    report.add("journal autoanalyze runs", "runs", last.autoanalyzes as f64);
    report.add("journal rows pruned", "rows", last.pruned as f64);
    report.add(
        "journal dead rows at the end (est.)",
        "rows",
        last.dead_rows as f64,
    );
    let Some((before, after)) = prune_split(journal) else {
        report
            .note("nothing was pruned while writing: run longer than the retention plus 1/8 of it");
        return;
    };
    let filled = &journal[before];
    let bytes_per_row = filled.size as f64 / filled.changes.max(1) as f64;
    report.add("journal first prune seen at", "s", journal[after].t);
    report.add(
        "journal size before the first prune",
        "MB",
        filled.size as f64 / MIB,
    );
    report.add("journal bytes per row (before pruning)", "B", bytes_per_row);
    // The rate the writers reached, not the one asked for: on a busy machine they fall
    // behind, and the journal holds what was written.
    let achieved = last.changes as f64 / last.t.max(1e-9);
    let expected = expected_plateau(achieved, args.retention, bytes_per_row);
    report.add(
        "journal expected plateau: achieved rate × retention × bytes/row",
        "MB",
        expected / MIB,
    );
    let from = plateau_from(args.retention).as_secs_f64();
    match Plateau::of(journal, from) {
        Some(plateau) => {
            report.add("journal plateau min", "MB", plateau.min as f64 / MIB);
            report.add("journal plateau max", "MB", plateau.max as f64 / MIB);
            report.add(
                "journal plateau mean / expected",
                "x",
                plateau.mean / expected,
            );
            report.add(
                "journal plateau (max − min) / min",
                "%",
                100.0 * plateau.spread(),
            );
            report.note(format!(
                "journal size past {from:.0} s ({} samples): {} (max − min within {:.0} %: {})",
                plateau.samples,
                if plateau.spread() <= args.flat_tolerance {
                    "FLAT"
                } else {
                    "NOT FLAT"
                },
                args.flat_tolerance * 100.0,
                fmt_num(100.0 * plateau.spread())
            ));
        }
        None => report.note(format!(
            "fewer than 2 samples past {from:.0} s: run longer to judge flatness"
        )),
    }
    if let Some(growth) = growth_over(journal, args.retention.as_secs_f64(), from) {
        report.add(
            "journal growth over the last retention",
            "%",
            100.0 * growth,
        );
    }
    // WAL of pruning: per change after the first prune minus before it, less the same
    // difference in the unwatched phase over the same sample times.
    let diff = |samples: &[Sample]| -> Option<f64> {
        let pre = wal_per_change(&Sample::default(), samples.get(before)?)?;
        let post = wal_per_change(samples.get(after)?, samples.last()?)?;
        Some(post - pre)
    };
    if let Some(watched_diff) = diff(journal) {
        report.add(
            "watched WAL per change, after − before first prune",
            "B",
            watched_diff,
        );
        match diff(&unwatched.samples) {
            Some(unwatched_diff) => {
                report.add(
                    "unwatched WAL per change, same windows, after − before",
                    "B",
                    unwatched_diff,
                );
                report.add(
                    "WAL per change attributable to pruning",
                    "B",
                    watched_diff - unwatched_diff,
                );
            }
            None => report.note("the unwatched phase has fewer samples: no pruning WAL baseline"),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::{Cli, Mode};

    fn sample(t: f64, changes: u64, wal_bytes: u64, size: u64, pruned: u64) -> Sample {
        Sample {
            t,
            changes,
            wal_bytes,
            size,
            pruned,
            ..Sample::default()
        }
    }

    fn steady(args: &[&str]) -> Result<SteadyArgs, clap::Error> {
        let cli = Cli::try_parse_from(["changecast-bench", "steady"].iter().chain(args))?;
        match cli.mode {
            Mode::Steady(args) => Ok(args),
            other => panic!("not steady: {other:?}"),
        }
    }

    #[test]
    fn defaults_are_the_half_hour_at_a_thousand_per_second() {
        let args = steady(&[]).unwrap();
        assert_eq!(args.rate, 1000.0);
        assert_eq!(args.duration, Duration::from_secs(30 * 60));
        assert_eq!(args.retention, Duration::from_secs(10 * 60));
        assert_eq!(args.update_share, 0.5);
        assert_eq!(args.subscribers, 10);
        assert_eq!(args.writers, 16);
        let args = steady(&["--duration", "6m", "--retention", "2m", "--rate", "500"]).unwrap();
        assert_eq!(args.duration, Duration::from_secs(360));
        assert_eq!(args.retention, Duration::from_secs(120));
        assert_eq!(args.rate, 500.0);
        assert!(steady(&["--retention", "0s"]).is_err());
        assert!(steady(&["--update-share", "1.5"]).is_err());
        assert!(steady(&["--rate", "-1"]).is_err());
    }

    #[test]
    fn wal_per_change_between_samples() {
        let a = sample(10.0, 1000, 500_000, 0, 0);
        let b = sample(20.0, 3000, 1_500_000, 0, 0);
        assert_eq!(wal_per_change(&a, &b), Some(500.0));
        assert_eq!(wal_per_change(&b, &b), None);
        assert_eq!(wal_per_change(&b, &a), None);
    }

    #[test]
    fn prune_split_is_the_last_sample_without_and_the_first_with_pruned_rows() {
        let samples = [
            sample(10.0, 1, 1, 1, 0),
            sample(20.0, 2, 2, 2, 0),
            sample(30.0, 3, 3, 3, 5),
            sample(40.0, 4, 4, 4, 9),
        ];
        assert_eq!(prune_split(&samples), Some((1, 2)));
        assert_eq!(prune_split(&samples[..2]), None);
        assert_eq!(prune_split(&samples[2..]), None);
    }

    #[test]
    fn plateau_and_its_spread_past_the_retention() {
        let retention = Duration::from_secs(80);
        assert_eq!(plateau_from(retention), Duration::from_secs(90));
        let samples = [
            sample(30.0, 0, 0, 10, 0),
            sample(60.0, 0, 0, 50, 0),
            sample(90.0, 0, 0, 100, 1),
            sample(120.0, 0, 0, 110, 2),
            sample(150.0, 0, 0, 105, 3),
        ];
        let plateau = Plateau::of(&samples, 90.0).unwrap();
        assert_eq!((plateau.min, plateau.max, plateau.samples), (100, 110, 3));
        assert_eq!(plateau.mean, 105.0);
        assert!((plateau.spread() - 0.1).abs() < 1e-12);
        assert_eq!(Plateau::of(&samples, 130.0), None);
        assert_eq!(growth_over(&samples, 60.0, 90.0), Some(0.05));
        assert_eq!(growth_over(&samples, 60.0, 100.0), None);
        assert_eq!(growth_over(&samples, 200.0, 0.0), None);
        // 1000 changes/s kept for 10 minutes at 500 bytes each.
        let expected = expected_plateau(1000.0, Duration::from_secs(600), 500.0);
        assert_eq!(expected, 300_000_000.0);
    }

    #[test]
    fn vacuum_runs_of_dropped_partitions_still_count() {
        let mut runs = VacuumRuns::new(&[(1, 3, 1), (2, 0, 0)]);
        runs.observe(&[(1, 5, 2), (2, 1, 0), (3, 2, 2)]);
        assert_eq!(runs.since_start(), (5, 3));
        // Partition 1 dropped, 4 created: 1's runs since the start stay counted.
        runs.observe(&[(2, 2, 1), (3, 2, 2), (4, 1, 0)]);
        assert_eq!(runs.since_start(), (7, 4));
    }

    #[test]
    fn update_share_is_kept() {
        let updates = (0..100_000u64).filter(|seq| is_update(*seq, 0.3)).count();
        assert!((29_000..31_000).contains(&updates), "{updates}");
        assert!(!(0..1000u64).any(|seq| is_update(seq, 0.0)));
        assert!((0..1000u64).all(|seq| is_update(seq, 1.0)));
    }

    #[test]
    fn pruned_rows_from_the_metrics_text() {
        let text = "# HELP changecast_journal_rows_pruned_total Rows.\n\
                    # TYPE changecast_journal_rows_pruned_total counter\n\
                    changecast_journal_rows_pruned_total 12345\n\
                    changecast_journal_rows_pruned_totalx 1\n";
        assert_eq!(
            metric(text, "changecast_journal_rows_pruned_total"),
            Some(12345)
        );
        assert_eq!(metric(text, "changecast_missing"), None);
    }
}
