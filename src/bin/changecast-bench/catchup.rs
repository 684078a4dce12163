//! `replay` and `reconnect`: subscribers that come back with an old cursor and must be
//! caught up from the journal — one far behind, or many at once.

use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio_util::sync::CancellationToken;

use crate::client::{Shared, Subscriber, Tracker, Transport};
use crate::service::Service;
use crate::stats::RunReport;
use crate::usage::{settle, Window};
use crate::{Ctx, ReconnectArgs, ReplayArgs};

/// Rows per transaction when filling the journal.
const FILL_BATCH: u64 = 1000;

/// Who comes back, how far behind.
struct Plan {
    transport: Transport,
    subscribers: usize,
    tenants: u64,
    behind: u64,
    timeout: Duration,
}

/// A cursor for "now" of `tenant`: the id a fresh SSE stream starts with.
async fn cursor_now(service: &Service, tenant: u64, tenants: u64) -> anyhow::Result<String> {
    let subscriber = Subscriber {
        addr: service.addr,
        transport: Transport::Sse,
        token: service.token(&format!("t{tenant}")),
        tenant,
        tenants,
        resume: None,
        until: Some(0),
        max_txn_events: None,
    };
    let tracker = tokio::time::timeout(
        Duration::from_secs(10),
        subscriber.run(Shared::new(0), CancellationToken::new()),
    )
    .await
    .context("no cursor from the service within 10 s")?;
    match (tracker.cursor, tracker.error) {
        (Some(cursor), _) => Ok(cursor),
        (None, error) => bail!("no cursor from the service: {error:?}"),
    }
}

/// Commits `behind` rows for each tenant in `tenants` (row `k * tenants + t` for tenant t),
/// `FILL_BATCH` rows per transaction.
async fn fill(url: &str, tenants: u64, behind: u64) -> anyhow::Result<()> {
    let client = crate::service::connect(url).await?;
    let statement = client
        .prepare(
            "insert into public.tickets (tenant_id, title)
             select $1, 'bench~' || (g * $3 + $4) || '~' from generate_series($2::bigint, $5::bigint) g",
        )
        .await?;
    for tenant in 0..tenants {
        let name = format!("t{tenant}");
        let mut from = 0;
        while from < behind {
            let to = (from + FILL_BATCH).min(behind) - 1;
            let (from_i, tenants_i, tenant_i, to_i) =
                (from as i64, tenants as i64, tenant as i64, to as i64);
            client
                .execute(&statement, &[&name, &from_i, &tenants_i, &tenant_i, &to_i])
                .await
                .map_err(|e| anyhow::anyhow!("filling the journal: {e:?}"))?;
            from = to + 1;
        }
    }
    Ok(())
}

/// Sets a cursor per tenant, commits `behind` changes each, waits for the service to
/// digest them, then starts `subscribers` at once from those cursors; returns their
/// trackers and the span from their start until the last one had every change.
async fn catch_up(
    ctx: &Ctx,
    service: &Service,
    plan: Plan,
    report: &mut RunReport,
) -> anyhow::Result<Vec<Tracker>> {
    let Plan {
        transport,
        subscribers,
        tenants,
        behind,
        timeout,
    } = plan;
    let mut cursors = Vec::new();
    for tenant in 0..tenants {
        cursors.push(cursor_now(service, tenant, tenants).await?);
    }
    fill(&ctx.database_url, tenants, behind).await?;
    settle(service).await;

    let shared = Shared::new(0);
    let cancel = CancellationToken::new();
    let window = Window::start(service.pid, &ctx.database_url).await?;
    let started = shared.now_ns();
    let mut tasks = Vec::with_capacity(subscribers);
    for i in 0..subscribers {
        let tenant = i as u64 % tenants;
        let subscriber = Subscriber {
            addr: service.addr,
            transport,
            token: service.token(&format!("t{tenant}")),
            tenant,
            tenants,
            resume: Some(cursors[tenant as usize].clone()),
            until: Some(behind),
            max_txn_events: None,
        };
        tasks.push(tokio::spawn(subscriber.run(shared.clone(), cancel.clone())));
    }
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline && !tasks.iter().all(|t| t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let usage = window.finish().await?;
    cancel.cancel();
    let mut trackers = Vec::with_capacity(tasks.len());
    for task in tasks {
        trackers.push(task.await?);
    }
    let done: Vec<f64> = trackers
        .iter()
        .filter_map(|t| t.done_ns)
        .map(|ns| (ns - started) as f64 / 1e9)
        .collect();
    let caught_up = done.len();
    let last = done.iter().copied().fold(f64::NAN, f64::max);
    report.add("caught up", "subscribers", caught_up as f64);
    if caught_up == subscribers {
        report.add("all caught up after", "s", last);
    } else {
        report.note(format!(
            "only {caught_up} of {subscribers} subscribers were caught up within {timeout:?}"
        ));
    }
    let events: u64 = trackers.iter().map(|t| t.distinct).sum();
    report.add(
        "missing (all subscribers)",
        "events",
        (subscribers as u64 * behind).saturating_sub(events) as f64,
    );
    report.add(
        "duplicates (all subscribers)",
        "events",
        trackers.iter().map(|t| t.duplicates).sum::<u64>() as f64,
    );
    report.add(
        "resyncs",
        "events",
        trackers.iter().map(|t| t.resyncs).sum::<u64>() as f64,
    );
    let failed: Vec<&String> = trackers.iter().filter_map(|t| t.error.as_ref()).collect();
    if let Some(first) = failed.first() {
        report.add("subscribers failed", "subscribers", failed.len() as f64);
        report.note(format!(
            "{} subscribers failed; first: {first}",
            failed.len()
        ));
    }
    usage.add_to(report);
    usage.judge(report);
    Ok(trackers_with_span(trackers, started))
}

fn trackers_with_span(mut trackers: Vec<Tracker>, started: u64) -> Vec<Tracker> {
    for tracker in &mut trackers {
        tracker.started_ns = started;
    }
    trackers
}

/// `replay`: one subscriber `behind` changes behind its tenant.
pub async fn replay(ctx: &Ctx, args: &ReplayArgs) -> anyhow::Result<RunReport> {
    let mut report = RunReport::default();
    let mut service = ctx.service().await?;
    let trackers = catch_up(
        ctx,
        &service,
        Plan {
            transport: args.transport,
            subscribers: 1,
            tenants: 1,
            behind: args.behind,
            timeout: args.timeout,
        },
        &mut report,
    )
    .await;
    service.stop().await;
    let trackers = trackers?;
    if let Some(done) = trackers[0].done_ns {
        let seconds = (done - trackers[0].started_ns) as f64 / 1e9;
        report.add("replay rate", "events/s", args.behind as f64 / seconds);
    }
    Ok(report)
}

/// `reconnect`: many subscribers at once, each `behind` changes behind.
pub async fn reconnect(ctx: &Ctx, args: &ReconnectArgs) -> anyhow::Result<RunReport> {
    let mut report = RunReport::default();
    let mut service = ctx.service().await?;
    let trackers = catch_up(
        ctx,
        &service,
        Plan {
            transport: args.transport,
            subscribers: args.subscribers,
            tenants: args.tenants,
            behind: args.behind,
            timeout: args.timeout,
        },
        &mut report,
    )
    .await;
    service.stop().await;
    let trackers = trackers?;
    let mut spans: Vec<f64> = trackers
        .iter()
        .filter_map(|t| t.done_ns.map(|done| (done - t.started_ns) as f64 / 1e9))
        .collect();
    spans.sort_by(f64::total_cmp);
    if !spans.is_empty() {
        let at =
            |q: f64| spans[((spans.len() as f64 * q).ceil() as usize).clamp(1, spans.len()) - 1];
        report.add("caught up after, p50", "s", at(0.5));
        report.add("caught up after, p99", "s", at(0.99));
    }
    let total = (args.subscribers as u64 * args.behind) as f64;
    if let Some(last) = report
        .figures
        .iter()
        .find(|f| f.name == "all caught up after")
        .map(|f| f.value)
    {
        report.add("catch-up throughput", "events/s", total / last);
    }
    Ok(report)
}
