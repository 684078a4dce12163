//! `idle-memory`: how much the service's resident memory grows per idle subscriber.
//! One fresh service per transport, so one transport's freed memory does not hide the
//! other's growth.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::bail;
use tokio_util::sync::CancellationToken;

use crate::client::{Shared, Subscriber, Transport};
use crate::stats::RunReport;
use crate::usage::settle;
use crate::{Ctx, MemoryArgs};

/// Subscribers connecting at once (below the listen backlog).
const CONNECT_BATCH: usize = 500;
const BATCH_TIMEOUT: Duration = Duration::from_secs(60);
const KIB: f64 = 1024.0;

pub async fn run(ctx: &Ctx, args: &MemoryArgs) -> anyhow::Result<RunReport> {
    let mut report = RunReport::default();
    for transport in &args.transport {
        measure(ctx, args, *transport, &mut report).await?;
    }
    Ok(report)
}

async fn measure(
    ctx: &Ctx,
    args: &MemoryArgs,
    transport: Transport,
    report: &mut RunReport,
) -> anyhow::Result<()> {
    let mut service = ctx.service().await?;
    let Some(pid) = service.pid else {
        bail!("idle-memory needs the service's process: start it here or pass --target-pid");
    };
    settle(&service).await;
    let before = crate::procfs::rss(pid).unwrap_or(0);
    let shared = Shared::new(0);
    let cancel = CancellationToken::new();
    let mut tasks = Vec::with_capacity(args.subscribers);
    for i in 0..args.subscribers {
        let tenant = i as u64 % args.tenants;
        let subscriber = Subscriber {
            addr: service.addr,
            transport,
            token: service.token(&format!("t{tenant}")),
            tenant,
            tenants: args.tenants,
            resume: None,
            until: None,
            max_txn_events: None,
        };
        tasks.push(tokio::spawn(subscriber.run(shared.clone(), cancel.clone())));
        if tasks.len() % CONNECT_BATCH == 0 || tasks.len() == args.subscribers {
            let deadline = tokio::time::Instant::now() + BATCH_TIMEOUT;
            while shared.ready.load(Ordering::Relaxed)
                + tasks.iter().filter(|t| t.is_finished()).count()
                < tasks.len()
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    tokio::time::sleep(args.settle).await;
    let connected = shared.ready.load(Ordering::Relaxed);
    let after = crate::procfs::rss(pid).unwrap_or(0);
    cancel.cancel();
    let mut first_error = None;
    for task in tasks {
        if let Some(error) = task.await?.error {
            first_error.get_or_insert(error);
        }
    }
    service.stop().await;
    let name = transport.name();
    report.add(
        format!("{name}: connected"),
        "subscribers",
        connected as f64,
    );
    report.add(
        format!("{name}: service RSS idle"),
        "MiB",
        before as f64 / KIB / KIB,
    );
    report.add(
        format!("{name}: service RSS with subscribers"),
        "MiB",
        after as f64 / KIB / KIB,
    );
    if connected > 0 {
        report.add(
            format!("{name}: RSS growth per subscriber"),
            "KiB",
            after.saturating_sub(before) as f64 / KIB / connected as f64,
        );
    }
    if connected < args.subscribers {
        report.note(format!(
            "{name}: only {connected} of {} subscribers connected; first error: {}",
            args.subscribers,
            first_error.unwrap_or_default()
        ));
    }
    Ok(())
}
