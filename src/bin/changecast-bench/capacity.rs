//! `capacity`: what reading the journal from a hot standby takes off the primary. Makes
//! a primary and a `pg_basebackup -R` standby of its own (clusters in a work folder, so
//! their processes are theirs alone), then in one run measures phases of N instances
//! that read the primary and N that read the standby (`CHANGECAST_READ_DATABASE_URL`),
//! each phase with S SSE subscribers per instance and the same writers: the CPU of every
//! process of each cluster (postmaster and its children, from /proc), of each instance,
//! commit-to-receipt latency and the ids every subscriber missed.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::builder::TypedValueParser as _;
use clap::Args;
use tokio_util::sync::CancellationToken;

use changecast::config::parse_duration;
use changecast::db::embedded::{find_bindir, Embedded, Options};

use crate::client::{Shared, Subscriber, Transport};
use crate::live::{self, Writing};
use crate::procfs::{self, CpuWindow, MachineCpu, SelfCpu};
use crate::service::{self, Launch, Service};
use crate::stats::{fmt_num, Histogram, RunReport};
use crate::usage::settle;
use crate::writer::{self, Table};
use crate::{Ctx, LiveArgs, Transports};

const DATABASE: &str = "changecast_capacity";
/// How often the clusters' processes are looked up and read during a window (a backend
/// that starts and ends within it still counts up to its last reading).
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

#[derive(Args, Debug)]
pub struct CapacityArgs {
    /// Instance counts to measure, each once reading the primary and once reading the
    /// standby; 0 measures the writers alone (the primary's cost without readers).
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,4")]
    pub instances: Vec<usize>,
    /// SSE subscribers per instance.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    pub subscribers: usize,
    /// Tenants; every row goes to one tenant, in turn, and each instance's subscribers
    /// are spread evenly over them (1,000 subscribers over 1,000 tenants: every change
    /// reaches one subscriber per instance).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub tenants: u64,
    /// Rows committed per second over all writers; one row per transaction.
    #[arg(long, default_value_t = 1000.0, value_parser = crate::parse_rate)]
    pub rate: f64,
    /// Writer connections sharing the rate.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64).map(|n| n as usize))]
    pub writers: usize,
    /// Measured window of each phase.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Writing before each measured window, not measured.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// After writing, the longest wait for the last deliveries before counting missing ones.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Folder for the two clusters (created, and removed at the end). Default: a new
    /// folder in the temporary directory. As root the clusters run as `postgres`, who
    /// must be able to enter it.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Run both clusters with `fsync=on` and `full_page_writes=on` (default: off, as the
    /// tests run their clusters: CPU is measured, not the disk).
    #[arg(long)]
    pub durable: bool,
}

impl CapacityArgs {
    /// The most subscribers connected at once.
    pub fn max_subscribers(&self) -> usize {
        self.subscribers * self.instances.iter().copied().max().unwrap_or(0)
    }
}

/// Where the instances of a phase read the journal.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Reads {
    Primary,
    Standby,
}

/// The primary and its standby, stopped and removed when dropped.
struct Clusters {
    primary: Option<Embedded>,
    standby: Option<Embedded>,
    dir: PathBuf,
    remove_dir: bool,
}

impl Clusters {
    fn primary_url(&self) -> String {
        format!(
            "{}/{DATABASE}",
            self.primary.as_ref().expect("running").base_url()
        )
    }

    fn standby_url(&self) -> String {
        format!(
            "{}/{DATABASE}",
            self.standby.as_ref().expect("running").base_url()
        )
    }
}

impl Drop for Clusters {
    fn drop(&mut self) {
        drop(self.standby.take());
        drop(self.primary.take());
        if self.remove_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub async fn run(
    service_bin: &Path,
    service_log: &Path,
    args: &CapacityArgs,
) -> anyhow::Result<()> {
    if args.instances.is_empty() {
        bail!("--instances names no instance count");
    }
    let load_start = loadavg();
    let (dir, remove_dir) = match &args.work_dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("changecast-capacity-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let mut clusters = Clusters {
        primary: None,
        standby: None,
        dir: dir.clone(),
        remove_dir,
    };
    let mut settings = vec![
        ("max_connections".to_owned(), "300".to_owned()),
        ("hot_standby_feedback".to_owned(), "on".to_owned()),
    ];
    if !args.durable {
        settings.push(("fsync".into(), "off".into()));
        settings.push(("full_page_writes".into(), "off".into()));
    }
    let mut primary_options = Options::new(dir.join("primary"));
    primary_options.settings = settings.clone();
    clusters.primary = Some(start_cluster(primary_options.clone()).await?);
    let primary_url = clusters.primary_url();
    let version = service::prepare_database(&primary_url).await?;

    let bindir = find_bindir()?;
    let standby_dir = dir.join("standby");
    let source = clusters.primary.as_ref().expect("started").url();
    {
        let (bindir, standby_dir) = (bindir.clone(), standby_dir.clone());
        tokio::task::spawn_blocking(move || pg_basebackup(&bindir, &source, &standby_dir))
            .await??;
    }
    let mut standby_options = primary_options;
    standby_options.data_dir = standby_dir;
    standby_options.existing_only = true;
    clusters.standby = Some(start_cluster(standby_options).await?);
    let standby_url = clusters.standby_url();
    let primary_pid = clusters.primary.as_ref().expect("started").pid();
    let standby_pid = clusters.standby.as_ref().expect("started").pid();

    print_header(args, &version, &load_start, &bindir).await?;
    let ctx = Ctx {
        database_url: primary_url.clone(),
        service_bin: service_bin.to_owned(),
        target: None,
        service_log: service_log.to_owned(),
        journal_partitions: None,
    };
    let pids = (primary_pid, standby_pid);
    let mut phases: Vec<(String, usize, RunReport)> = Vec::new();
    let mut seen_zero = false;
    for &n in &args.instances {
        let modes: &[Reads] = if n == 0 {
            if seen_zero {
                continue;
            }
            seen_zero = true;
            &[Reads::Primary]
        } else {
            &[Reads::Primary, Reads::Standby]
        };
        for &reads in modes {
            let label = match (n, reads) {
                (0, _) => "no instance (writers only)".to_owned(),
                (n, Reads::Primary) => format!("{n} reading the primary"),
                (n, Reads::Standby) => format!("{n} reading the standby"),
            };
            let report = phase(&ctx, args, n, reads, &standby_url, pids)
                .await
                .with_context(|| format!("phase: {label}"))?;
            print_phase(&label, &report);
            phases.push((label, n, report));
        }
    }
    print_summary(&phases);
    println!("\nload average at the end: {}", loadavg());

    tokio::task::spawn_blocking(move || drop(clusters)).await?;
    Ok(())
}

async fn start_cluster(options: Options) -> anyhow::Result<Embedded> {
    Ok(tokio::task::spawn_blocking(move || Embedded::start(&options)).await??)
}

/// One phase: `n` instances reading the journal where `reads` says, their subscribers,
/// the writers; everyone's CPU over the measured window.
async fn phase(
    ctx: &Ctx,
    args: &CapacityArgs,
    n: usize,
    reads: Reads,
    standby_url: &str,
    (primary_pid, standby_pid): (u32, u32),
) -> anyhow::Result<RunReport> {
    let mut report = RunReport::default();
    let load_before = loadavg();
    service::reset(&ctx.database_url, None).await?;
    let env: Vec<(&str, String)> = match reads {
        Reads::Primary => vec![],
        Reads::Standby => vec![("CHANGECAST_READ_DATABASE_URL", standby_url.to_owned())],
    };
    let mut services = Vec::with_capacity(n);
    for _ in 0..n {
        let launch = Launch {
            bin: &ctx.service_bin,
            database_url: &ctx.database_url,
            log: &ctx.service_log,
            env: &env,
        };
        services.push(Service::start(&launch).await?);
    }

    let live_args = LiveArgs {
        subscribers: args.subscribers * n,
        tenants: args.tenants,
        rate: args.rate,
        writers: args.writers,
        transport: Transports::Sse,
        duration: args.duration,
        warmup: args.warmup,
        drain: args.drain,
        no_bridge: true,
        no_node_bridge: true,
        node_bridge_dir: None,
        no_ws_window: true,
        no_reference: false,
        scoped: false,
        against: None,
    };
    let rows = (args.rate * (args.warmup + args.duration).as_secs_f64() * 1.2) as usize + 1000;
    let shared = Shared::new(rows);
    let cancel = CancellationToken::new();
    let total = args.subscribers * n;
    let mut subscribers = Vec::with_capacity(total);
    for (k, service) in services.iter().enumerate() {
        for i in 0..args.subscribers {
            let tenant = (k * args.subscribers + i) as u64 % args.tenants;
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
    }
    let connected = live::wait_ready(&shared, total, &subscribers).await;
    if connected < total {
        report.note(format!("only {connected} of {total} subscribers connected"));
    }
    for service in &services {
        settle(service).await;
    }

    let mut writing = Writing::start(
        ctx,
        &live_args,
        &shared,
        Table::Watched,
        Some(writer::REFERENCE_CHANNEL),
        "bench-writers",
    )
    .await;
    let service_pids: Vec<u32> = services.iter().filter_map(|s| s.pid).collect();
    let instance_cpu: Vec<CpuWindow> = service_pids
        .iter()
        .map(|pid| CpuWindow::start(&[*pid]))
        .collect();
    let clusters = ClusterSampler::start(&[primary_pid, standby_pid]);
    let machine = MachineCpu::start();
    let me = SelfCpu::start();
    let started = tokio::time::Instant::now();
    let written = (&mut writing.written).await.context("the writers failed")?;
    let elapsed = started.elapsed().as_secs_f64();
    let cluster_cores = clusters.finish();
    let machine_cores = machine.cores();
    let bench_cores = me.cores();
    let instance_cores: Vec<f64> = instance_cpu
        .iter()
        .zip(&service_pids)
        .map(|(window, pid)| window.cores(&[*pid]))
        .collect();
    let measured_rows = writing.measured_rows();

    let expected = live::expected_deliveries(&shared, args.tenants, total);
    live::drain(&shared, expected, args.drain).await;
    let heard = writing.heard().await?;
    let mut waits = Vec::new();
    if reads == Reads::Standby {
        for service in &services {
            waits.push(standby_wait(service.addr).await);
        }
    }
    cancel.cancel();
    let mut trackers = Vec::with_capacity(subscribers.len());
    for subscriber in subscribers {
        trackers.push(subscriber.await?);
    }
    for service in &mut services {
        service.stop().await;
    }

    report.add("instances", "", n as f64);
    report.add("subscribers (all instances)", "", total as f64);
    report.add("rows written", "rows/s", measured_rows as f64 / elapsed);
    report.add("primary CPU (all its processes)", "cores", cluster_cores[0]);
    report.add("standby CPU (all its processes)", "cores", cluster_cores[1]);
    let instances_sum: f64 = instance_cores.iter().sum();
    if n > 0 {
        report.add("instances' CPU, sum", "cores", instances_sum);
        for (k, cores) in instance_cores.iter().enumerate() {
            report.add(format!("instance {} CPU", k + 1), "cores", *cores);
        }
        let mut latency = Histogram::default();
        for tracker in &trackers {
            latency.merge(&tracker.latency);
        }
        report.add("deliveries", "/s", latency.len() as f64 / elapsed);
        for (name, at) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)] {
            report.add(format!("changecast {name}"), "ms", live::q(&latency, at));
        }
        live::completeness(&mut report, &shared, &trackers, args.tenants);
    }
    for (name, at) in [("p50", 0.5), ("p99", 0.99)] {
        report.add(
            format!("bare LISTEN {name}"),
            "ms",
            live::q(&heard.latency, at),
        );
    }
    if let Some((batches, seconds)) = waits
        .iter()
        .flatten()
        .copied()
        .reduce(|a, b| (a.0 + b.0, a.1 + b.1))
    {
        // Over the instances' lives (warm-up and drain included), every batch counted.
        report.add("batches read on the standby (all instances)", "", batches);
        if batches > 0.0 {
            report.add(
                "mean wait for the standby per batch",
                "ms",
                seconds * 1000.0 / batches,
            );
        }
    }
    report.add("bench CPU", "cores", bench_cores);
    report.add("machine busy", "cores", machine_cores);
    let ours = cluster_cores.iter().sum::<f64>() + instances_sum + bench_cores;
    let others = (machine_cores - ours).max(0.0);
    report.add("other processes' CPU", "cores", others);
    report.note(format!(
        "load average before: {load_before}; after: {}",
        loadavg()
    ));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    if others >= 0.25 {
        report.note(format!(
            "DISTURBED: other processes used {others:.2} of {cores} cores during the window"
        ));
    }
    if machine_cores >= 0.9 * cores {
        report.note(format!(
            "MACHINE-BOUND: {machine_cores:.2} of {cores} cores busy (latency includes waiting for a CPU)"
        ));
    }
    live::writes_note(&mut report, &written, args.rate);
    Ok(report)
}

/// The `changecast_standby_wait_seconds` histogram's count and sum from the instance's
/// `/metrics`, when it serves them there.
async fn standby_wait(addr: std::net::SocketAddr) -> Option<(f64, f64)> {
    let text = http_get(addr, "/metrics").await?;
    let value = |name: &str| {
        text.lines()
            .find(|line| line.starts_with(name) && line[name.len()..].starts_with([' ', '{']))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    Some((
        value("changecast_standby_wait_seconds_count")?,
        value("changecast_standby_wait_seconds_sum")?,
    ))
}

/// The body (with the head) of `GET path`, or `None` when nothing answered in time.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        Some(String::from_utf8_lossy(&raw).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), ask)
        .await
        .ok()?
}

/// The CPU of whole clusters over a window: each postmaster and its children, looked up
/// in /proc every [`SAMPLE_EVERY`] on a thread of its own.
struct ClusterSampler {
    windows: Vec<CpuWindow>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<HashMap<u32, u64>>>,
}

impl ClusterSampler {
    fn start(postmasters: &[u32]) -> ClusterSampler {
        let postmasters = postmasters.to_vec();
        let children = children_by_parent();
        let windows = postmasters
            .iter()
            .map(|pm| CpuWindow::start(&cluster_pids(*pm, &children)))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut latest = vec![HashMap::new(); postmasters.len()];
            loop {
                let done = flag.load(Ordering::Relaxed);
                let children = children_by_parent();
                for (pm, latest) in postmasters.iter().zip(&mut latest) {
                    for pid in cluster_pids(*pm, &children) {
                        if let Some(ticks) = procfs::cpu_ticks(&pid.to_string()) {
                            latest.insert(pid, ticks);
                        }
                    }
                }
                if done {
                    return latest;
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
        });
        ClusterSampler {
            windows,
            stop,
            thread,
        }
    }

    /// Cores used by each cluster, in the order the postmasters were given.
    fn finish(self) -> Vec<f64> {
        self.stop.store(true, Ordering::Relaxed);
        let latest = self.thread.join().unwrap_or_default();
        self.windows
            .iter()
            .zip(&latest)
            .map(|(window, latest)| window.cores_from(latest))
            .collect()
    }
}

/// Every process's children, from /proc.
fn children_by_parent() -> HashMap<u32, Vec<u32>> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return children;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(parent) = procfs::parent_pid(pid) {
            children.entry(parent).or_default().push(pid);
        }
    }
    children
}

/// A cluster's processes: its postmaster and the postmaster's children (every backend,
/// the WAL sender or receiver, the startup process, the auxiliary processes).
fn cluster_pids(postmaster: u32, children: &HashMap<u32, Vec<u32>>) -> Vec<u32> {
    let mut pids = vec![postmaster];
    pids.extend(children.get(&postmaster).into_iter().flatten().copied());
    pids
}

/// `pg_basebackup -R` of the server at `url` into `dir` (WAL streamed along), as the
/// `postgres` user when we are root, as the server itself runs.
fn pg_basebackup(bindir: &Path, url: &str, dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let program = bindir.join("pg_basebackup");
    if !program.is_file() {
        bail!(
            "no pg_basebackup in {}: the capacity run needs it to make the standby",
            bindir.display()
        );
    }
    std::fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let user = postgres_user();
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    }
    let mut command = std::process::Command::new(program);
    command
        .arg(format!("--dbname={url}"))
        .arg("-D")
        .arg(dir)
        .args(["-X", "stream", "-c", "fast", "-R"]);
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
    let out = command.output().context("running pg_basebackup")?;
    if !out.status.success() {
        bail!("pg_basebackup: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The `postgres` user's (uid, gid) when we are root (the servers then run as it).
fn postgres_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid cannot fail; getpwnam's result is read at once.
    unsafe {
        if libc::geteuid() != 0 {
            return None;
        }
        let user = libc::getpwnam(c"postgres".as_ptr());
        (!user.is_null()).then(|| ((*user).pw_uid, (*user).pw_gid))
    }
}

/// `/proc/loadavg`'s three load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}

async fn print_header(
    args: &CapacityArgs,
    version: &str,
    load: &str,
    bindir: &Path,
) -> anyhow::Result<()> {
    let command: Vec<String> = std::env::args().collect();
    println!("# changecast-bench capacity\n");
    println!("command:    {}", command.join(" "));
    println!("machine:    {} (nproc {})", procfs::machine(), nproc());
    println!("load avg:   {load} (before the clusters started)");
    println!(
        "postgres:   {version}; {}; a primary and a pg_basebackup -R hot standby of it, \
         clusters of this run's own ({})",
        if args.durable {
            "fsync=on, full_page_writes=on"
        } else {
            "fsync=off, full_page_writes=off"
        },
        bindir.display()
    );
    println!(
        "load:       {} rows/s over {} writers, {} tenants; {} SSE subscribers per instance; \
         {:?} measured after {:?} of warm-up",
        args.rate, args.writers, args.tenants, args.subscribers, args.duration, args.warmup
    );
    Ok(())
}

fn nproc() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

fn print_phase(label: &str, report: &RunReport) {
    println!("\n## {label}\n");
    for figure in &report.figures {
        println!(
            "  {:<48} {:>12} {}",
            figure.name,
            fmt_num(figure.value),
            figure.unit
        );
    }
    for note in &report.notes {
        println!("  NOTE: {note}");
    }
}

/// A table with a column per phase, then each phase's primary CPU above the writers-only
/// baseline, per instance.
fn print_summary(phases: &[(String, usize, RunReport)]) {
    println!("\n## Summary\n");
    let mut names: Vec<(&str, &str)> = Vec::new();
    for (_, _, report) in phases {
        for figure in &report.figures {
            if !names.iter().any(|(n, _)| *n == figure.name) {
                names.push((&figure.name, figure.unit));
            }
        }
    }
    print!("| figure | unit |");
    for (label, _, _) in phases {
        print!(" {label} |");
    }
    println!();
    println!("|---|---|{}", "---:|".repeat(phases.len()));
    for (name, unit) in &names {
        print!("| {name} | {unit} |");
        for (_, _, report) in phases {
            let value = report.figures.iter().find(|f| f.name == *name);
            print!(" {} |", value.map_or("–".into(), |f| fmt_num(f.value)));
        }
        println!();
    }
    let primary = |report: &RunReport| {
        report
            .figures
            .iter()
            .find(|f| f.name == "primary CPU (all its processes)")
            .map(|f| f.value)
    };
    if let Some(baseline) = phases
        .iter()
        .find(|(_, n, _)| *n == 0)
        .and_then(|(_, _, r)| primary(r))
    {
        println!(
            "\nPrimary CPU above the writers-only baseline ({baseline:.3} cores), per instance:\n"
        );
        for (label, n, report) in phases.iter().filter(|(_, n, _)| *n > 0) {
            if let Some(cores) = primary(report) {
                println!(
                    "  {label:<28} {:.3} cores in all, {:.3} per instance",
                    cores - baseline,
                    (cores - baseline) / *n as f64
                );
            }
        }
    }
    // What one more instance costs, without what any number of them costs once (the
    // doorbell's NOTIFY, for one): from the fewest instances to the most, per reading.
    for reads in ["reading the primary", "reading the standby"] {
        let mut points: Vec<(usize, f64)> = phases
            .iter()
            .filter(|(label, n, _)| *n > 0 && label.ends_with(reads))
            .filter_map(|(_, n, report)| Some((*n, primary(report)?)))
            .collect();
        points.sort_by_key(|(n, _)| *n);
        if let (Some(first), Some(last)) = (points.first(), points.last()) {
            if last.0 > first.0 {
                println!(
                    "\nPrimary CPU per added instance {reads}, {} to {} instances: {:.3} cores",
                    first.0,
                    last.0,
                    (last.1 - first.1) / (last.0 - first.0) as f64
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_is_its_postmaster_and_its_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("starting sleep");
        let me = std::process::id();
        let pids = cluster_pids(me, &children_by_parent());
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(pids[0], me);
        assert!(pids.contains(&child.id()), "{pids:?} lacks {}", child.id());
        assert!(!pids.contains(&procfs::parent_pid(me).unwrap()));
    }
}
