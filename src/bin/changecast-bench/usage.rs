//! CPU and memory of the three parties over a measured window: the service, PostgreSQL
//! (this database's backends and the cluster's own processes) and the bench itself;
//! and the verdict on who was the bottleneck.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::procfs::{self, CpuWindow, MachineCpu, SelfCpu};
use crate::service::{postgres_pids, Service};
use crate::stats::RunReport;

const MIB: f64 = 1024.0 * 1024.0;
/// How often PostgreSQL's processes are looked up and read during a window: a backend or
/// autovacuum worker that starts and ends within the window (a replay storm opens pool
/// connections, a bulk write wakes autovacuum) would otherwise be missed, and its CPU
/// reported as other processes'.
const PG_SAMPLE_EVERY: Duration = Duration::from_millis(100);

pub struct Window {
    service_pid: Option<u32>,
    service: Option<CpuWindow>,
    pg: CpuWindow,
    /// Stops the sampler when the window is finished or dropped (a run that fails midway).
    pg_sampler: (DropGuard, JoinHandle<anyhow::Result<PgSamples>>),
    me: SelfCpu,
    machine: MachineCpu,
}

/// What the sampler saw of PostgreSQL's processes over a window.
struct PgSamples {
    /// Every process seen, with its CPU time as last read.
    latest: HashMap<u32, u64>,
    /// Those alive at the end.
    alive: Vec<u32>,
    /// The backends of changecast's own connections (application names `changecast:…`):
    /// its tailer, doorbell and pool, as against the writers' and everything else.
    service_backends: HashSet<u32>,
}

#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub service_cores: Option<f64>,
    pub service_rss: Option<u64>,
    pub pg_cores: f64,
    /// The part of `pg_cores` spent by the backends of changecast's own connections.
    pub pg_service_cores: f64,
    pub pg_pss: u64,
    pub bench_cores: f64,
    /// Busy cores of the whole machine, including work that is none of the above.
    pub machine_cores: f64,
}

impl Window {
    /// Starts measuring; PostgreSQL's processes (the cluster's own and `database_url`'s
    /// backends) are followed over a connection of the window's own.
    /// `service_pid`: the service's process, when one runs and is known.
    pub async fn start(service_pid: Option<u32>, database_url: &str) -> anyhow::Result<Window> {
        let pg = crate::service::connect(database_url).await?;
        let pg_pids = postgres_pids(&pg).await?;
        let stop = CancellationToken::new();
        Ok(Window {
            service_pid,
            service: service_pid.map(|pid| CpuWindow::start(&[pid])),
            pg: CpuWindow::start(&pg_pids),
            pg_sampler: (
                stop.clone().drop_guard(),
                tokio::spawn(sample_postgres(pg, stop)),
            ),
            me: SelfCpu::start(),
            machine: MachineCpu::start(),
        })
    }

    pub async fn finish(self) -> anyhow::Result<Usage> {
        let (stop, sampler) = self.pg_sampler;
        drop(stop);
        let pg = sampler.await??;
        Ok(Usage {
            service_cores: self
                .service
                .as_ref()
                .zip(self.service_pid)
                .map(|(w, pid)| w.cores(&[pid])),
            service_rss: self.service_pid.and_then(procfs::rss),
            pg_cores: self.pg.cores_from(&pg.latest),
            pg_service_cores: self.pg.cores_from(
                &pg.latest
                    .iter()
                    .filter(|(pid, _)| pg.service_backends.contains(pid))
                    .map(|(pid, ticks)| (*pid, *ticks))
                    .collect(),
            ),
            pg_pss: pg.alive.iter().filter_map(|pid| procfs::pss(*pid)).sum(),
            bench_cores: self.me.cores(),
            machine_cores: self.machine.cores(),
        })
    }
}

/// Reads the CPU time of PostgreSQL's processes every [`PG_SAMPLE_EVERY`] until `stop`,
/// and once more then. The backend that answers these lookups is the bench's measuring,
/// not the service's work: it is left out.
async fn sample_postgres(pg: Client, stop: CancellationToken) -> anyhow::Result<PgSamples> {
    let own = pg
        .query_one("select pg_backend_pid()", &[])
        .await?
        .get::<_, i32>(0) as u32;
    let mut latest = HashMap::new();
    let mut alive = Vec::new();
    let mut service_backends = HashSet::new();
    let mut warned = false;
    loop {
        // A lookup that fails (a moment's overload) loses one sample, not the run.
        let looked_up = async {
            let pids = postgres_pids(&pg).await?;
            let service = service_backend_pids(&pg).await?;
            anyhow::Ok((pids, service))
        };
        match looked_up.await {
            Ok((pids, service)) => {
                alive = pids.into_iter().filter(|pid| *pid != own).collect();
                service_backends.extend(service);
            }
            Err(error) if !warned => {
                eprintln!("reading PostgreSQL's processes (figures may undercount): {error:#}");
                warned = true;
            }
            Err(_) => {}
        }
        for pid in &alive {
            if let Some(ticks) = procfs::cpu_ticks(&pid.to_string()) {
                latest.insert(*pid, ticks);
            }
        }
        if stop.is_cancelled() {
            return Ok(PgSamples {
                latest,
                alive,
                service_backends,
            });
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(PG_SAMPLE_EVERY) => {}
        }
    }
}

/// This database's backends of changecast's connections, by their application names.
async fn service_backend_pids(pg: &Client) -> anyhow::Result<Vec<u32>> {
    let rows = pg
        .query(
            "select pid from pg_stat_activity
              where datname = current_database() and application_name like 'changecast:%'",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get::<_, i32>(0) as u32).collect())
}

impl Usage {
    pub fn add_to(&self, report: &mut RunReport) {
        if let Some(cores) = self.service_cores {
            report.add("service CPU", "cores", cores);
        }
        if let Some(rss) = self.service_rss {
            report.add("service RSS", "MiB", rss as f64 / MIB);
        }
        report.add("PostgreSQL CPU", "cores", self.pg_cores);
        report.add(
            "PostgreSQL CPU of changecast's connections",
            "cores",
            self.pg_service_cores,
        );
        report.add("PostgreSQL PSS (sum)", "MiB", self.pg_pss as f64 / MIB);
        report.add("bench CPU", "cores", self.bench_cores);
        report.add("other processes' CPU", "cores", self.others());
    }

    /// CPU of processes that are neither the service, PostgreSQL nor the bench.
    pub fn others(&self) -> f64 {
        let ours = self.service_cores.unwrap_or(0.0) + self.pg_cores + self.bench_cores;
        (self.machine_cores - ours).max(0.0)
    }

    /// Says when the figures are bounded by the client or by the machine, not the service.
    pub fn judge(&self, report: &mut RunReport) {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let service = self.service_cores.unwrap_or(0.0);
        let total = self
            .machine_cores
            .max(service + self.pg_cores + self.bench_cores);
        if self.others() >= 0.25 {
            report.note(format!(
                "DISTURBED: other processes used {:.2} of {cores} cores during the window",
                self.others()
            ));
        }
        if self.bench_cores >= 0.85 * cores {
            report.note(format!(
                "CLIENT-BOUND: the bench used {:.2} of {cores} cores",
                self.bench_cores
            ));
        } else if total >= 0.9 * cores {
            let who = if self.bench_cores > service {
                "CLIENT-BOUND: the bench used more CPU than the service on a saturated machine"
            } else {
                "MACHINE-BOUND: all cores busy (latency includes waiting for a CPU)"
            };
            report.note(format!(
                "{who} — service {service:.2} + PostgreSQL {:.2} + bench {:.2} + others {:.2} of {cores} cores",
                self.pg_cores, self.bench_cores, self.others()
            ));
        }
    }
}

/// Waits until the service is idle (under 5 % of a core over 300 ms), at most 20 s:
/// so a measurement does not start while it still digests a previous step.
pub async fn settle(service: &Service) {
    let Some(pid) = service.pid else {
        tokio::time::sleep(Duration::from_secs(2)).await;
        return;
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        let window = CpuWindow::start(&[pid]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        if window.cores(&[pid]) < 0.05 {
            return;
        }
    }
}
