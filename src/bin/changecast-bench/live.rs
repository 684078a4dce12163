//! `live`: S subscribers over T tenants while writers commit W rows/s. Per run, up to
//! four windows under the same load, one after the other (the bridges' before the run's
//! changecast starts, so that it does not listen during theirs):
//! - the Node LISTEN→SSE bridge of benches/node-bridge (the row as NOTIFY payload, S
//!   subscribers of its own), with the bare LISTEN reference on the same commits;
//! - the bare LISTEN bridge alone (the row as NOTIFY payload, one LISTEN client), for
//!   PostgreSQL's CPU per change;
//! - changecast with S subscribers of `--transport`, and the bare LISTEN reference on
//!   the very same commits (unless `--no-reference`): latency, completeness and
//!   everyone's CPU and memory;
//! - changecast again with S WebSocket subscribers (when `--transport sse`);
//! - with `--against`, another changecast binary on `--transport`, alone on the
//!   database, before the first binary's windows in even runs and after them in odd
//!   ones.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::client::{Shared, Subscriber, Tracker, Transport};
use crate::node_bridge::{self, NodeBridge};
use crate::procfs::{self, CpuWindow};
use crate::service::Service;
use crate::stats::{Histogram, RunReport};
use crate::usage::{settle, Window};
use crate::writer::{self, Load, Table, Written};
use crate::{Ctx, LiveArgs, Transports};

/// Longest wait for subscribers to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(120);

/// Figures of the `--against` binary's window are named with this first.
const AGAINST: &str = "against: ";

pub async fn run(ctx: &Ctx, args: &LiveArgs, run: u32) -> anyhow::Result<RunReport> {
    let mut report = RunReport::default();
    let rows = (args.rate * (args.warmup + args.duration).as_secs_f64() * 1.2) as usize + 1000;

    // The bridges' windows come before this run's service starts: at every commit that
    // notified, PostgreSQL wakes each backend listening in the database, on whatever
    // channel, so a changecast listening meanwhile would spend PostgreSQL CPU on every
    // bridge notification, counted as the bridge's (a --target service listens anyway).
    ctx.reset().await?;
    if !args.no_node_bridge {
        let dir = args
            .node_bridge_dir
            .clone()
            .unwrap_or_else(node_bridge::default_dir);
        match node_bridge::unavailable(&dir) {
            Some(why) => {
                eprintln!("Node bridge window skipped: {why}");
                report.note(format!("Node bridge window skipped: {why}"));
            }
            None => measure_node_bridge(ctx, args, rows, &dir, &mut report).await?,
        }
    }

    if !args.no_bridge {
        let bridge = measure_bridge(ctx, args, rows).await?;
        report.add("bridge: bare LISTEN p50", "ms", q(&bridge.0, 0.5));
        report.add("bridge: bare LISTEN p99", "ms", q(&bridge.0, 0.99));
        report.add("bridge: PostgreSQL CPU per change", "µs", bridge.1);
    }

    let mut service = ctx.service().await?;
    let against_first = run.is_multiple_of(2);
    if let Some(bin) = args.against.as_deref().filter(|_| against_first) {
        service.stop().await;
        measure_against(ctx, args, rows, bin, &mut report).await?;
        service = ctx.service().await?;
    }
    measure_changecast(ctx, args, rows, &service, args.transport, "", &mut report).await?;
    if !args.no_ws_window && args.transport == Transports::Sse {
        settle(&service).await;
        measure_changecast(
            ctx,
            args,
            rows,
            &service,
            Transports::Ws,
            "WS: ",
            &mut report,
        )
        .await?;
    }
    service.stop().await;
    if let Some(bin) = args.against.as_deref().filter(|_| !against_first) {
        measure_against(ctx, args, rows, bin, &mut report).await?;
    }

    let figure = |name: &str| {
        report
            .figures
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.value)
    };
    let mut comparisons = Vec::new();
    for (reference, name) in [
        ("bridge: PostgreSQL CPU per change", "bridge"),
        ("Node bridge: PostgreSQL CPU per change", "Node bridge"),
    ] {
        if let (Some(cc), Some(other)) = (
            figure("changecast: PostgreSQL CPU per change"),
            figure(reference),
        ) {
            comparisons.push((
                format!("PostgreSQL CPU per change, changecast / {name}"),
                cc / other,
            ));
        }
    }
    if let (Some(cc), Some(other)) = (
        figure("changecast: PostgreSQL CPU per change"),
        figure(&format!("{AGAINST}changecast: PostgreSQL CPU per change")),
    ) {
        comparisons.push((
            "PostgreSQL CPU per change, changecast / against".to_owned(),
            cc / other,
        ));
    }
    for name in ["p50", "p99"] {
        if let (Some(cc), Some(other)) = (
            figure(&format!("changecast {name}")),
            figure(&format!("{AGAINST}changecast {name}")),
        ) {
            comparisons.push((format!("changecast {name} − against {name}"), cc - other));
        }
        if let (Some(cc), Some(node)) = (
            figure(&format!("changecast {name}")),
            figure(&format!("Node bridge {name}")),
        ) {
            comparisons.push((format!("changecast {name} − Node bridge {name}"), cc - node));
        }
    }
    for (name, value) in comparisons {
        let unit = if name.contains('/') { "x" } else { "ms" };
        report.add(name, unit, value);
    }
    Ok(report)
}

/// Subscribers `0..S` of changecast on `transport`, tenant `i % T` each.
fn changecast_subscribers(
    service: &Service,
    args: &LiveArgs,
    transport: Transports,
    shared: &Arc<Shared>,
    cancel: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<Tracker>> {
    (0..args.subscribers)
        .map(|i| {
            let tenant = i as u64 % args.tenants;
            let transport = match transport {
                Transports::Sse => Transport::Sse,
                Transports::Ws => Transport::Ws,
                Transports::Mixed if i % 2 == 0 => Transport::Sse,
                Transports::Mixed => Transport::Ws,
            };
            let subscriber = Subscriber {
                addr: service.addr,
                transport,
                token: match args.scoped {
                    true => service.scoped_token(&format!("t{tenant}"), scope_of(i)),
                    false => service.token(&format!("t{tenant}")),
                },
                tenant,
                tenants: args.tenants,
                resume: None,
                until: None,
                max_txn_events: None,
            };
            tokio::spawn(subscriber.run(shared.clone(), cancel.clone()))
        })
        .collect()
}

/// A changecast window: S subscribers on `transport`, writers into the watched table
/// with the bare LISTEN reference on the same commits (unless `--no-reference`). Its figures are named with
/// `prefix` first.
async fn measure_changecast(
    ctx: &Ctx,
    args: &LiveArgs,
    rows: usize,
    service: &Service,
    transport: Transports,
    prefix: &str,
    report: &mut RunReport,
) -> anyhow::Result<()> {
    let mut own = RunReport::default();
    let shared = Shared::new(rows);
    let cancel = CancellationToken::new();
    let subscribers = changecast_subscribers(service, args, transport, &shared, &cancel);
    if args.scoped {
        own.note(format!(
            "scoped: {} subscribers, each with a scope filter of its own (e.g. {})",
            args.subscribers,
            scope_of(0)
        ));
    }
    let connected = wait_ready(&shared, args.subscribers, &subscribers).await;
    if connected < args.subscribers {
        own.note(format!(
            "only {connected} of {} subscribers connected",
            args.subscribers
        ));
    }
    settle(service).await;

    let (table, reference) = if args.no_reference {
        (Table::WatchedAlone, None)
    } else {
        (Table::Watched, Some(writer::REFERENCE_CHANNEL))
    };
    let mut writing = Writing::start(ctx, args, &shared, table, reference, "bench-writers").await;
    let window = Window::start(service.pid, &ctx.database_url).await?;
    let started = tokio::time::Instant::now();
    let written = (&mut writing.written).await.context("the writers failed")?;
    let elapsed = started.elapsed();
    let usage = window.finish().await?;
    let measured_rows = writing.measured_rows();

    // Drain: until every subscriber has every committed row of its tenant, or no progress.
    let expected = expected_deliveries(&shared, args.tenants, args.subscribers);
    drain(&shared, expected, args.drain).await;
    let heard = writing.heard().await?;
    cancel.cancel();
    let mut trackers = Vec::with_capacity(subscribers.len());
    for subscriber in subscribers {
        trackers.push(subscriber.await?);
    }

    let mut latency = Histogram::default();
    for tracker in &trackers {
        latency.merge(&tracker.latency);
    }
    let window_s = elapsed.as_secs_f64();
    own.add("rows written", "rows/s", measured_rows as f64 / window_s);
    for (name, at) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)] {
        own.add(format!("changecast {name}"), "ms", q(&latency, at));
    }
    if !args.no_reference {
        for (name, at) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)] {
            own.add(format!("bare LISTEN {name}"), "ms", q(&heard.latency, at));
        }
        for (name, at) in [("p50", 0.5), ("p99", 0.99)] {
            own.add(
                format!("added over LISTEN {name}"),
                "ms",
                q(&latency, at) - q(&heard.latency, at),
            );
        }
    }
    own.add("deliveries", "/s", latency.len() as f64 / window_s);
    completeness(&mut own, &shared, &trackers, args.tenants);
    if args.no_reference {
        own.note("no bare LISTEN reference: the writers NOTIFY nothing of their own");
    } else {
        own.add(
            "bare LISTEN missing",
            "events",
            committed_count(&shared).saturating_sub(heard.received) as f64,
        );
    }
    usage.add_to(&mut own);
    if measured_rows > 0 {
        own.add(
            "changecast: PostgreSQL CPU per change",
            "µs",
            usage.pg_cores * window_s * 1e6 / measured_rows as f64,
        );
        own.add(
            "changecast's connections: PostgreSQL CPU per change",
            "µs",
            usage.pg_service_cores * window_s * 1e6 / measured_rows as f64,
        );
    }
    writes_note(&mut own, &written, args.rate);
    usage.judge(&mut own);
    merge(report, own, prefix);
    Ok(())
}

/// The `--against` binary's window: a service of its own, started on an emptied journal
/// (no other changecast running), measured as the first binary's on `--transport`.
async fn measure_against(
    ctx: &Ctx,
    args: &LiveArgs,
    rows: usize,
    bin: &std::path::Path,
    report: &mut RunReport,
) -> anyhow::Result<()> {
    let mut service = ctx
        .service_from(bin)
        .await
        .with_context(|| format!("starting {} (--against)", bin.display()))?;
    settle(&service).await;
    let measured =
        measure_changecast(ctx, args, rows, &service, args.transport, AGAINST, report).await;
    service.stop().await;
    measured
}

/// The Node bridge window: benches/node-bridge started, S subscribers of its own over
/// the same tenants, rows into `bench.bridge` (NOTIFY with the row) at the same rate,
/// the bare LISTEN reference on the same channel. Figures start with "Node bridge".
async fn measure_node_bridge(
    ctx: &Ctx,
    args: &LiveArgs,
    rows: usize,
    dir: &std::path::Path,
    report: &mut RunReport,
) -> anyhow::Result<()> {
    let mut own = RunReport::default();
    let mut bridge = NodeBridge::start(dir, &ctx.database_url, writer::BRIDGE_CHANNEL).await?;
    let shared = Shared::new(rows);
    let cancel = CancellationToken::new();
    let subscribers: Vec<_> = (0..args.subscribers)
        .map(|i| {
            let tenant = i as u64 % args.tenants;
            let subscriber = Subscriber {
                addr: bridge.addr,
                transport: Transport::Sse,
                token: String::new(),
                tenant,
                tenants: args.tenants,
                resume: None,
                until: None,
                max_txn_events: None,
            };
            tokio::spawn(subscriber.run_on_node_bridge(shared.clone(), cancel.clone()))
        })
        .collect();
    let connected = wait_ready(&shared, args.subscribers, &subscribers).await;
    if connected < args.subscribers {
        own.note(format!(
            "only {connected} of {} subscribers connected to the Node bridge",
            args.subscribers
        ));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut writing = Writing::start(
        ctx,
        args,
        &shared,
        Table::Bridge,
        Some(writer::BRIDGE_CHANNEL),
        "bench-node-bridge",
    )
    .await;
    let window = Window::start(ctx.target_pid(), &ctx.database_url).await?;
    let bridge_cpu = CpuWindow::start(&[bridge.pid]);
    let started = tokio::time::Instant::now();
    let written = (&mut writing.written)
        .await
        .context("the Node bridge writers failed")?;
    let elapsed = started.elapsed().as_secs_f64();
    let bridge_cores = bridge_cpu.cores(&[bridge.pid]);
    let bridge_rss = procfs::rss(bridge.pid);
    let usage = window.finish().await?;
    let measured_rows = writing.measured_rows();

    let expected = expected_deliveries(&shared, args.tenants, args.subscribers);
    drain(&shared, expected, args.drain).await;
    let heard = writing.heard().await?;
    cancel.cancel();
    let mut trackers = Vec::with_capacity(subscribers.len());
    for subscriber in subscribers {
        trackers.push(subscriber.await?);
    }
    bridge.stop();

    let mut latency = Histogram::default();
    for tracker in &trackers {
        latency.merge(&tracker.latency);
    }
    own.add("rows written", "rows/s", measured_rows as f64 / elapsed);
    for (name, at) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)] {
        report.add(format!("Node bridge {name}"), "ms", q(&latency, at));
    }
    for (name, at) in [("p50", 0.5), ("p99", 0.99)] {
        own.add(format!("bare LISTEN {name}"), "ms", q(&heard.latency, at));
    }
    own.add("deliveries", "/s", latency.len() as f64 / elapsed);
    completeness(&mut own, &shared, &trackers, args.tenants);
    own.add("CPU", "cores", bridge_cores);
    if let Some(rss) = bridge_rss {
        own.add("RSS", "MiB", rss as f64 / (1024.0 * 1024.0));
    }
    own.add("PostgreSQL CPU", "cores", usage.pg_cores);
    if measured_rows > 0 {
        own.add(
            "PostgreSQL CPU per change",
            "µs",
            usage.pg_cores * elapsed * 1e6 / measured_rows as f64,
        );
    }
    own.add("bench CPU", "cores", usage.bench_cores);
    own.add("other processes' CPU", "cores", usage.others());
    writes_note(&mut own, &written, args.rate);
    usage.judge(&mut own);
    merge(report, own, "Node bridge: ");
    Ok(())
}

/// Appends `from`'s figures and notes to `into`, each name and note after `prefix`.
fn merge(into: &mut RunReport, from: RunReport, prefix: &str) {
    for figure in from.figures {
        into.add(
            format!("{prefix}{}", figure.name),
            figure.unit,
            figure.value,
        );
    }
    for note in from.notes {
        into.note(format!("{prefix}{note}"));
    }
}

/// Subscriber `i`'s scope: its own filter, which every row the writers commit passes
/// (their titles are sequence numbers), so it changes the work, not the deliveries.
fn scope_of(i: usize) -> serde_json::Value {
    serde_json::json!({ "filter": { "ticket": [format!("title=neq.scope-{i}")] } })
}

/// The bridge window: rows into `bench.bridge` (NOTIFY with the row), one LISTEN client.
/// Returns its latency and PostgreSQL's CPU per change in microseconds.
async fn measure_bridge(
    ctx: &Ctx,
    args: &LiveArgs,
    rows: usize,
) -> anyhow::Result<(Histogram, f64)> {
    let shared = Shared::new(rows);
    let mut writing = Writing::start(
        ctx,
        args,
        &shared,
        Table::Bridge,
        Some(writer::BRIDGE_CHANNEL),
        "bench-bridge",
    )
    .await;
    let window = Window::start(ctx.target_pid(), &ctx.database_url).await?;
    let started = tokio::time::Instant::now();
    let written = (&mut writing.written)
        .await
        .context("the bridge writers failed")?;
    let elapsed = started.elapsed().as_secs_f64();
    let usage = window.finish().await?;
    let rows = writing.measured_rows().max(1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let heard = writing.heard().await?;
    if let Some(error) = written.first_error {
        eprintln!("bridge writers: {} failed, first: {error}", written.failed);
    }
    Ok((heard.latency, usage.pg_cores * elapsed * 1e6 / rows as f64))
}

/// Writers committing at the set rate into one table, and a bare LISTEN client hearing
/// the same commits on a channel (unless there is none), together on a thread of their
/// own (so the subscribers' work does not delay them).
pub struct Writing {
    /// What the writers did, once they are done.
    pub written: tokio::sync::oneshot::Receiver<Written>,
    next_seq: Arc<AtomicU64>,
    /// The first row written after the warm-up: the measured rows start here.
    from: u64,
    stop: CancellationToken,
    thread: tokio::task::JoinHandle<anyhow::Result<anyhow::Result<writer::Heard>>>,
}

impl Writing {
    /// Starts both, and returns once the listener listens and the warm-up is over.
    pub async fn start(
        ctx: &Ctx,
        args: &LiveArgs,
        shared: &Arc<Shared>,
        table: Table,
        channel: Option<&'static str>,
        thread_name: &'static str,
    ) -> Writing {
        let next_seq = Arc::new(AtomicU64::new(0));
        let load = Load {
            url: ctx.database_url.clone(),
            table,
            writers: args.writers,
            rate: args.rate,
            tenants: args.tenants,
            duration: args.warmup + args.duration,
        };
        let (listening, stop) = (CancellationToken::new(), CancellationToken::new());
        let (w_shared, w_seq, url) = (shared.clone(), next_seq.clone(), ctx.database_url.clone());
        let (l_listening, l_stop) = (listening.clone(), stop.clone());
        let (written_tx, written) = tokio::sync::oneshot::channel();
        let thread = tokio::spawn(writer::on_own_thread(thread_name, move || async move {
            let Some(channel) = channel else {
                l_listening.cancel();
                let _ = written_tx.send(writer::write(load, w_shared, w_seq).await);
                l_stop.cancelled().await;
                return Ok(writer::Heard::default());
            };
            let listener = tokio::spawn(writer::listen(
                url,
                channel,
                w_shared.clone(),
                l_listening.clone(),
                l_stop,
            ));
            l_listening.cancelled().await;
            let _ = written_tx.send(writer::write(load, w_shared, w_seq).await);
            listener.await?
        }));
        listening.cancelled().await;
        tokio::time::sleep(args.warmup).await;
        let from = next_seq.load(Ordering::Relaxed);
        shared.measure_from.store(from, Ordering::Relaxed);
        Writing {
            written,
            next_seq,
            from,
            stop,
            thread,
        }
    }

    /// Rows written since the warm-up.
    pub fn measured_rows(&self) -> u64 {
        self.next_seq
            .load(Ordering::Relaxed)
            .saturating_sub(self.from)
    }

    /// Stops the listener; what it heard.
    pub async fn heard(self) -> anyhow::Result<writer::Heard> {
        self.stop.cancel();
        self.thread.await??
    }
}

pub async fn wait_ready(
    shared: &Shared,
    want: usize,
    tasks: &[tokio::task::JoinHandle<Tracker>],
) -> usize {
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    loop {
        let ready = shared.ready.load(Ordering::Relaxed);
        let failed = tasks.iter().filter(|t| t.is_finished()).count();
        if ready >= want || ready + failed >= want || tokio::time::Instant::now() > deadline {
            return ready;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn committed_count(shared: &Shared) -> u64 {
    shared
        .committed
        .iter()
        .filter(|c| c.load(Ordering::Acquire) != 0)
        .count() as u64
}

pub fn expected_deliveries(shared: &Shared, tenants: u64, subscribers: usize) -> u64 {
    let mut per_tenant = vec![0u64; tenants as usize];
    for (seq, stamp) in shared.committed.iter().enumerate() {
        if stamp.load(Ordering::Acquire) != 0 {
            per_tenant[seq % tenants as usize] += 1;
        }
    }
    (0..subscribers)
        .map(|i| per_tenant[i % tenants as usize])
        .sum()
}

/// Waits until `expected` distinct deliveries, at most `limit`, or 3 s without progress.
pub async fn drain(shared: &Shared, expected: u64, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = (
        shared.received.load(Ordering::Relaxed),
        tokio::time::Instant::now(),
    );
    while tokio::time::Instant::now() < deadline {
        let received = shared.received.load(Ordering::Relaxed);
        if received >= expected {
            return;
        }
        if received != last.0 {
            last = (received, tokio::time::Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(3) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Missing and duplicate events per subscriber, resyncs, failed subscribers.
pub fn completeness(report: &mut RunReport, shared: &Shared, trackers: &[Tracker], tenants: u64) {
    let committed: Vec<u64> = shared
        .committed
        .iter()
        .enumerate()
        .filter(|(_, c)| c.load(Ordering::Acquire) != 0)
        .map(|(seq, _)| seq as u64)
        .collect();
    let (mut missing, mut worst, mut lacking, mut duplicates, mut resyncs, mut failed) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut first_error = None;
    for tracker in trackers {
        let lost = committed
            .iter()
            .filter(|seq| *seq % tenants == tracker.tenant && !tracker.has(**seq))
            .count() as u64;
        missing += lost;
        worst = worst.max(lost);
        lacking += u64::from(lost > 0);
        duplicates += tracker.duplicates;
        resyncs += tracker.resyncs;
        if let Some(error) = &tracker.error {
            failed += 1;
            first_error.get_or_insert(error.clone());
        }
    }
    report.add("missing (all subscribers)", "events", missing as f64);
    report.add("missing, worst subscriber", "events", worst as f64);
    report.add("subscribers missing any", "subscribers", lacking as f64);
    report.add("duplicates (all subscribers)", "events", duplicates as f64);
    report.add("resyncs", "events", resyncs as f64);
    if failed > 0 {
        report.add("subscribers failed", "subscribers", failed as f64);
        report.note(format!(
            "{failed} subscribers failed; first: {}",
            first_error.unwrap_or_default()
        ));
    }
}

pub fn q(histogram: &Histogram, at: f64) -> f64 {
    histogram.quantile_ms(at).unwrap_or(f64::NAN)
}

pub fn writes_note(report: &mut RunReport, written: &Written, rate: f64) {
    // Rows committed over the time writing took (writers behind schedule stop at the end).
    let achieved = written.committed as f64 / written.elapsed.as_secs_f64().max(1e-9);
    if achieved < 0.95 * rate {
        report.note(format!(
            "writers reached only {achieved:.0} of {rate:.0} rows/s (database or machine too slow)"
        ));
    }
    if let Some(error) = &written.first_error {
        report.note(format!("{} writes failed; first: {error}", written.failed));
    }
}
