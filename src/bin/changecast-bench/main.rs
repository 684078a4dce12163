//! `changecast-bench`: load and measure a changecast service on demand, for the figures
//! and targets in BENCHMARKS.md. Starts the service as a child process (or targets a
//! running one), drives subscribers and writers, reads everyone's CPU and memory from
//! /proc, and prints each run and the median (min–max) over the runs as a Markdown table.
//!
//! Never part of `cargo test`: only the pure helpers have unit tests.

mod bulk;
mod capacity;
mod catchup;
mod client;
mod live;
mod memory;
mod node_bridge;
mod procfs;
mod service;
mod stats;
mod steady;
mod usage;
mod writer;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::builder::TypedValueParser as _;
use clap::{Args, Parser, Subcommand, ValueEnum};

use changecast::config::parse_duration;
use client::Transport;
use service::{Launch, Service};
use stats::RunReport;

#[derive(Parser, Debug)]
#[command(
    name = "changecast-bench",
    about = "Load and measure changecast: latency against a bare LISTEN client, completeness, \
             catch-up from the journal, CPU and memory of the service and PostgreSQL.",
    after_help = "Build both binaries first: cargo build --release --bins. \
                  Figures are per run and median (min–max) over --runs. See BENCHMARKS.md."
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Args, Debug)]
#[command(next_help_heading = "Common options")]
struct Common {
    /// PostgreSQL database for the service and the bench. Created when missing; the
    /// changecast migrations and sql/bench/setup.sql are applied; its benchmark tables and
    /// journal are emptied before every run (unless --target is given).
    #[arg(
        long,
        global = true,
        env = "CHANGECAST_BENCH_DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/changecast_bench"
    )]
    database_url: String,

    /// The changecast binary to start for each run. Default: `changecast` next to this
    /// binary (target/release/changecast after `cargo build --release --bins`).
    #[arg(long, global = true)]
    service_bin: Option<PathBuf>,

    /// Measure a service already running at this address (e.g. 127.0.0.1:8080) instead of
    /// starting one per run. The journal is then not emptied. Needs --jwt-secret.
    #[arg(long, global = true)]
    target: Option<SocketAddr>,

    /// With --target: the service's process id, so its CPU and RSS can be reported.
    #[arg(long, global = true, requires = "target")]
    target_pid: Option<u32>,

    /// With --target: the service's token secret (CHANGECAST_JWT_SECRET).
    #[arg(
        long,
        global = true,
        env = "CHANGECAST_JWT_SECRET",
        hide_env_values = true
    )]
    jwt_secret: Option<String>,

    /// How many times to repeat the measurement (each with a fresh service).
    #[arg(long, global = true, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,

    /// Give the emptied journal this many partitions before every run, as in the steady
    /// state (about 12: the first, 8 of rows within the retention, the one being
    /// written, one ahead and the DEFAULT one; see sql/bench/journal_partitions.sql).
    /// Without it the journal has the 2 partitions of a new installation: reads then
    /// cost less than they do where the service has run for a retention period.
    #[arg(long, global = true, value_parser = clap::value_parser!(u32).range(4..=100))]
    journal_partitions: Option<u32>,

    /// Where the started service's output goes (appended).
    #[arg(
        long,
        global = true,
        default_value = "target/changecast-bench-service.log"
    )]
    service_log: PathBuf,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Live delivery: S subscribers over T tenants, writers at W rows/s, in windows one
    /// after the other under the same load: the Node LISTEN→SSE bridge of
    /// benches/node-bridge (S subscribers of its own; needs `npm ci` there once), the bare
    /// LISTEN bridge alone (the row as NOTIFY payload), changecast on --transport, and
    /// changecast on WebSocket. Reports commit-to-receipt latency of each and of a bare
    /// LISTEN client on the same commits, deliveries/s, missing and duplicate events,
    /// the bridge's, the service's and PostgreSQL's CPU (per change, too) and memory.
    Live(LiveArgs),
    /// Replay: one subscriber comes back --behind changes behind; reports events/s until
    /// it has them all.
    Replay(ReplayArgs),
    /// Mass reconnect: --subscribers come back at once, each --behind changes of its
    /// tenant behind; reports when all were caught up.
    Reconnect(ReconnectArgs),
    /// Memory: the service's RSS growth per idle subscriber, per transport (a fresh
    /// service for each).
    IdleMemory(MemoryArgs),
    /// Reading from a hot standby: makes a primary and a `pg_basebackup -R` standby of
    /// its own (--database-url is not used) and, in one run, measures N instances reading
    /// the primary, then N reading the standby (for each N of --instances), each with its
    /// SSE subscribers, under the same writers: the CPU of each cluster's processes and of
    /// each instance, commit-to-receipt latency, missing events. --runs is not used.
    Capacity(capacity::CapacityArgs),
    /// Steady state: the same load for a long time on an unwatched table, then on a
    /// watched one with a service pruning at --retention. Reports the journal's size
    /// over time (flat past the retention?), WAL per change and what pruning adds,
    /// autovacuum runs, writer latency watched against unwatched. Use --runs 1.
    Steady(steady::SteadyArgs),
    /// Bulk: one transaction of --rows rows into the watched bench table with
    /// --subscribers of its tenant connected; reports COMMIT to first and last event and
    /// events/s per subscriber, missing and duplicate rows, the service's peak RSS and CPU,
    /// and the statement's cost against an unwatched copy.
    Bulk(BulkArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Transports {
    Sse,
    Ws,
    /// Every other subscriber SSE, the rest WebSocket.
    Mixed,
}

#[derive(Args, Debug)]
pub struct LiveArgs {
    /// Subscribers (S), spread evenly over the tenants.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    pub subscribers: usize,
    /// Tenants (T); every row goes to one tenant, in turn.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub tenants: u64,
    /// Rows committed per second over all writers (W); one row per transaction.
    #[arg(long, default_value_t = 1000.0, value_parser = parse_rate)]
    pub rate: f64,
    /// Writer connections sharing the rate.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64).map(|n| n as usize))]
    pub writers: usize,
    /// Subscriber transport.
    #[arg(long, value_enum, default_value_t = Transports::Sse)]
    pub transport: Transports,
    /// Measured window of each phase (e.g. 15s).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Writing before each measured window, not measured.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// After writing, the longest wait for the last deliveries before counting missing ones.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Skip the bare LISTEN bridge window (the row as NOTIFY payload, one LISTEN client).
    #[arg(long)]
    pub no_bridge: bool,
    /// Skip the Node LISTEN→SSE bridge window. Without node on PATH or without
    /// benches/node-bridge/node_modules (`npm ci` there), the window is skipped anyway,
    /// with a note saying so.
    #[arg(long)]
    pub no_node_bridge: bool,
    /// Where the Node bridge is (bridge.js and its node_modules). Default: benches/node-bridge
    /// of the source tree the bench was built from.
    #[arg(long)]
    pub node_bridge_dir: Option<PathBuf>,
    /// Skip the changecast WebSocket window that follows the SSE one (with --transport sse).
    #[arg(long)]
    pub no_ws_window: bool,
    /// Write changecast's windows without the bare LISTEN reference: each row's statement
    /// then NOTIFYs nothing of its own and no reference client listens, so "changecast:
    /// PostgreSQL CPU per change" is changecast's alone (with the reference, it includes
    /// the reference's NOTIFY and its listener's backend). Latency over bare LISTEN is
    /// then not reported for those windows.
    #[arg(long)]
    pub no_reference: bool,
    /// Give every subscriber a scope of its own (API.md §3c, in its token's `changecast`
    /// claim): a row filter on tickets, distinct per subscriber, that every written row
    /// passes, so deliveries stay those of an unscoped run and the difference is the
    /// cost of scopes. Compare with the same command without it. Only meaningful against
    /// a service that enforces scopes.
    #[arg(long)]
    pub scoped: bool,
    /// A second changecast binary (e.g. the build before a change), measured in the same
    /// run under the same load: a window of its own on --transport, before the first
    /// binary's windows in even runs and after them in odd ones (the machine's state
    /// drifts within minutes), each binary alone on the database. Adds its figures as
    /// `against: …` and the differences. Both binaries must accept the database's
    /// migrations.
    #[arg(long)]
    pub against: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// How many changes behind the subscriber is.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub behind: u64,
    /// Subscriber transport.
    #[arg(long, value_enum, default_value_t = Transport::Sse)]
    pub transport: Transport,
    /// Give up waiting after this long.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Args, Debug)]
pub struct ReconnectArgs {
    /// Subscribers reconnecting at once.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    pub subscribers: usize,
    /// Tenants the subscribers are spread over.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub tenants: u64,
    /// Changes of its tenant each subscriber's cursor is behind.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub behind: u64,
    /// Subscriber transport.
    #[arg(long, value_enum, default_value_t = Transport::Sse)]
    pub transport: Transport,
    /// Give up waiting after this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Args, Debug)]
pub struct BulkArgs {
    /// Rows of the one transaction.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub rows: u64,
    /// Subscribers, all of the rows' tenant.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    pub subscribers: usize,
    /// Subscriber transport.
    #[arg(long, value_enum, default_value_t = Transports::Sse)]
    pub transport: Transports,
    /// Subscribers ask for a `bulk_change` resync instead of more events than this from
    /// one transaction (API.md §5); each then waits for the resync, not for the rows.
    #[arg(long)]
    pub max_txn_events: Option<u64>,
    /// Give up waiting for the subscribers after this long.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Args, Debug)]
pub struct MemoryArgs {
    /// Idle subscribers per transport.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    pub subscribers: usize,
    /// Tenants the subscribers are spread over.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub tenants: u64,
    /// Transports to measure, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "sse,ws")]
    pub transport: Vec<Transport>,
    /// Wait after the last subscriber connected before reading RSS.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub settle: Duration,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a positive number of rows per second"
        )),
    }
}

/// What every mode needs: the database and how to get a service.
pub struct Ctx {
    pub database_url: String,
    service_bin: PathBuf,
    target: Option<(SocketAddr, Option<u32>, String)>,
    service_log: PathBuf,
    journal_partitions: Option<u32>,
}

impl Ctx {
    /// A service for one run: a fresh one on an emptied journal, or the targeted one.
    pub async fn service(&self) -> anyhow::Result<Service> {
        if let Some((addr, pid, secret)) = &self.target {
            return Service::targeted(*addr, *pid, secret);
        }
        self.service_from(&self.service_bin).await
    }

    /// Empties the benchmark tables and the journal, as before a service starts (not
    /// with --target: that service's journal is not emptied).
    pub async fn reset(&self) -> anyhow::Result<()> {
        if self.target.is_some() {
            return Ok(());
        }
        service::reset(&self.database_url, self.journal_partitions).await
    }

    /// The --target service's process, when given.
    pub fn target_pid(&self) -> Option<u32> {
        self.target.as_ref().and_then(|(_, pid, _)| *pid)
    }

    /// A fresh service of the binary `bin` on an emptied journal.
    pub async fn service_from(&self, bin: &std::path::Path) -> anyhow::Result<Service> {
        self.reset().await?;
        Service::start(&Launch {
            bin,
            database_url: &self.database_url,
            log: &self.service_log,
            env: &[],
        })
        .await
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("changecast-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let common = cli.common;
    let fd_limit = changecast::open_files::raise_to_hard_limit();
    let needed = match &cli.mode {
        Mode::Live(args) => args.subscribers,
        Mode::Reconnect(args) => args.subscribers,
        Mode::IdleMemory(args) => args.subscribers,
        Mode::Steady(args) => args.subscribers,
        Mode::Bulk(args) => args.subscribers,
        Mode::Replay(_) => 1,
        Mode::Capacity(args) => args.max_subscribers(),
    } as u64
        + 200;
    if fd_limit < needed {
        bail!(
            "{needed} file descriptors needed but the hard limit is {fd_limit}: raise it \
             (ulimit -Hn, or LimitNOFILE) or use fewer subscribers"
        );
    }
    let target = match common.target {
        Some(addr) => {
            let secret = common
                .jwt_secret
                .clone()
                .context("--target needs --jwt-secret (or CHANGECAST_JWT_SECRET)")?;
            Some((addr, common.target_pid, secret))
        }
        None => None,
    };
    let service_bin = common
        .service_bin
        .clone()
        .unwrap_or_else(service::default_service_bin);
    if target.is_none() && !service_bin.is_file() {
        bail!(
            "no service binary at {}: run `cargo build --release --bins` or pass --service-bin",
            service_bin.display()
        );
    }
    if let Some(dir) = common.service_log.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    if let Mode::Live(LiveArgs {
        against: Some(against),
        ..
    }) = &cli.mode
    {
        if target.is_some() {
            bail!("--against starts its own service: --target does not apply");
        }
        if !against.is_file() {
            bail!("no service binary at {} (--against)", against.display());
        }
    }
    if common.journal_partitions.is_some()
        && (target.is_some() || matches!(cli.mode, Mode::Capacity(_) | Mode::Steady(_)))
    {
        bail!(
            "--journal-partitions shapes the journal of the services the bench starts for \
             live, replay, reconnect, idle-memory and bulk: it does not apply with --target, \
             capacity or steady"
        );
    }
    if let Mode::Capacity(args) = &cli.mode {
        if target.is_some() {
            bail!("capacity starts its own instances: --target does not apply");
        }
        return capacity::run(&service_bin, &common.service_log, args).await;
    }
    let version = service::prepare_database(&common.database_url).await?;
    let ctx = Ctx {
        database_url: common.database_url.clone(),
        service_bin,
        target,
        service_log: common.service_log.clone(),
        journal_partitions: common.journal_partitions,
    };

    print_header(&ctx, &version, fd_limit).await?;
    let mut reports = Vec::new();
    for run in 1..=common.runs {
        let load = procfs::load_average().unwrap_or(0.0);
        let report = match &cli.mode {
            Mode::Live(args) => live::run(&ctx, args, run).await,
            Mode::Replay(args) => catchup::replay(&ctx, args).await,
            Mode::Reconnect(args) => catchup::reconnect(&ctx, args).await,
            Mode::IdleMemory(args) => memory::run(&ctx, args).await,
            Mode::Capacity(_) => unreachable!("capacity runs on its own clusters, above"),
            Mode::Steady(args) => steady::run(&ctx, args).await,
            Mode::Bulk(args) => bulk::run(&ctx, args).await,
        }
        .with_context(|| format!("run {run}"))?;
        print_run(run, load, &report);
        reports.push(report);
    }
    println!("\n## Summary over {} runs\n", reports.len());
    println!("{}", stats::summary_table(&reports));
    Ok(())
}

async fn print_header(ctx: &Ctx, version: &str, fd_limit: u64) -> anyhow::Result<()> {
    let client = service::connect(&ctx.database_url).await?;
    let mut settings = Vec::new();
    for name in ["synchronous_commit", "fsync", "shared_buffers"] {
        let value: String = client.query_one(&format!("show {name}"), &[]).await?.get(0);
        settings.push(format!("{name}={value}"));
    }
    let now: String = client
        .query_one("select to_char(now(), 'YYYY-MM-DD HH24:MI TZ')", &[])
        .await?
        .get(0);
    let args: Vec<String> = std::env::args().collect();
    println!("# changecast-bench — {now}\n");
    println!("command:    {}", args.join(" "));
    println!("machine:    {}", procfs::machine());
    println!("postgres:   {version}; {}", settings.join(", "));
    match &ctx.target {
        Some((addr, _, _)) => println!("service:    targeted at {addr}"),
        None => println!(
            "service:    {} (started per run, log {})",
            ctx.service_bin.display(),
            ctx.service_log.display()
        ),
    }
    println!("fd limit:   {fd_limit}");
    if let Some(partitions) = ctx.journal_partitions {
        println!("journal:    {partitions} partitions before every run, as in the steady state");
    }
    Ok(())
}

fn print_run(run: u32, load: f64, report: &RunReport) {
    println!("\n## Run {run} (load average before: {load:.2})\n");
    for figure in &report.figures {
        println!(
            "  {:<48} {:>12} {}",
            figure.name,
            stats::fmt_num(figure.value),
            figure.unit
        );
    }
    for note in &report.notes {
        println!("  NOTE: {note}");
    }
}
