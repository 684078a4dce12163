//! Building and running the service: `App::build` connects, migrates and binds;
//! `App::run` serves until the shutdown token is cancelled.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::capture::{Publisher, Tailer};
use crate::config::{ReadFallback, ServeConfig};
use crate::db;
use crate::http::server::{self, ConnectionLimits};
use crate::hub::Hub;
use crate::journal::pruner::Pruner;
use crate::journal::{Journal, Published, ResyncReason};
use crate::metrics::Metrics;
use crate::otel::{Exporter, Traces};
use crate::resources::Catalog;
use crate::secret::Secret;
pub use crate::services::Services;
use crate::snapshot_limits::SnapshotLimits;
use crate::stats::Activity;
use crate::subscription::replay_gate::ReplayGate;
use crate::subscription::{Limits, Subscriptions};
use crate::supervise::supervise;

/// Connections the monitoring address takes at once: scrapers and probes, a handful.
const MONITORING_CONNECTIONS: usize = 64;

/// How long shutdown waits for subscribers and tasks to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub struct App {
    services: Arc<Services>,
    listener: TcpListener,
    /// `CHANGECAST_METRICS_LISTEN`, when set.
    monitoring: Option<TcpListener>,
    tailer: Arc<Tailer>,
    pruner: Arc<Pruner>,
    shutdown: CancellationToken,
    /// Every task the service spawns, so shutdown can wait for them.
    tracker: TaskTracker,
    /// Sends traces, when an OTLP endpoint is configured.
    exporter: Option<Exporter>,
}

impl App {
    /// Migrates the database at `config.database_url`, reads the journal's position and
    /// binds the port. `secret` signs and verifies subscriber tokens. Starting an
    /// embedded database is the caller's business (see `db::embedded`): by now the URL
    /// must be set.
    pub async fn build(
        config: ServeConfig,
        secret: &Secret,
        shutdown: CancellationToken,
    ) -> anyhow::Result<App> {
        // Refused before anything else happens: a weak secret or an unreadable key must
        // not serve one request. With an identity provider's keys, HS256 is accepted only
        // with a configured secret, never with one made up for this run.
        let mut rules = config.token_rules.rules();
        if let Some(path) = &config.policy {
            let policy = crate::auth::policy::Policy::load(path).map_err(anyhow::Error::msg)?;
            rules.policy = Some(Arc::new(policy));
        }
        let auth = Arc::new(match config.identity_provider.key_source() {
            None => Authenticator::new(secret, rules)?,
            Some(keys) => {
                Authenticator::with_public_keys(config.jwt_secret.as_ref(), rules, &keys).await?
            }
        });
        let (traces, exporter) = Traces::from_config(&config.traces)?;
        let database_url = config
            .database_url
            .clone()
            .context("App::build needs a database URL")?;
        let database_url = database_url.expose();
        // LISTEN, the doorbell and the migrations need sessions of their own; the pool
        // may go through a transaction-mode pooler.
        let session_url = match &config.listen_database_url {
            Some(url) => url.expose().to_owned(),
            None => database_url.to_owned(),
        };
        let listen = db::pg_config(&session_url, "changecast:listener")?;
        let pool_config = db::pg_config(database_url, "changecast:pool")?;
        tokio::time::timeout(
            db::START_CHECK_TIMEOUT,
            db::check_notifications(&listen, &pool_config),
        )
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "checking that the LISTEN connection receives notifications took over {}s: \
                 a pooler with no server connection free, or a database that does not respond \
                 (CHANGECAST_LISTEN_DATABASE_URL, DATABASE_URL)",
                db::START_CHECK_TIMEOUT.as_secs()
            )
        })??;
        db::migrate(&session_url).await?;
        let pool =
            db::connect_pool(database_url, config.pool_size, config.statement_timeout).await?;
        // Journal reads (live batches, replays, snapshots) go to the standby when one is
        // named; everything else stays on the primary.
        let read = match &config.read_database_url {
            Some(url) => {
                let url = url.expose();
                let read = db::standby::read_config(url, "changecast:standby-reader")?;
                db::standby::check_read_database(&listen, &read).await?;
                let read_pool =
                    db::standby::read_pool(url, config.pool_size, config.statement_timeout)?;
                Some((read, read_pool))
            }
            None => None,
        };
        let read_pool = read
            .as_ref()
            .map_or(&pool, |(_, read_pool)| read_pool)
            .clone();
        let (journal, resource_types) = {
            let client = pool.get().await.context("connecting to PostgreSQL")?;
            let journal = Journal::open(&client).await?;
            let journal = match &read {
                // Falling back to the primary, replay pages wait for a lagging
                // standby no longer than live batches do.
                Some(_) if config.read_fallback == ReadFallback::Primary => journal
                    .checked_against(pool.clone())
                    .standby_wait_within(config.read_max_lag),
                Some(_) => journal.checked_against(pool.clone()),
                None => journal,
            };
            (
                Arc::new(journal),
                crate::resources::resource_types(&**client).await?,
            )
        };
        // Where the tailer's first batch starts: the primary's present (positions are
        // the primary's snapshots, also when batches are read on a standby).
        let start = {
            let client = pool.get().await.context("connecting to PostgreSQL")?;
            Journal::current_position(&client).await?
        };
        // Live delivery starts now; anything older is for cursors to replay.
        let metrics = Arc::new(Metrics::new());
        // Every reason's series from the start, at 0: a rate over the first resync of a
        // reason then counts it, and dashboards show the series before anything happens.
        for reason in ResyncReason::ALL {
            metrics.resyncs.with_label_values(&[reason.as_str()]);
        }
        let activity = Arc::new(Activity::default());
        let hub = Arc::new(Hub::new(
            Published::complete(start),
            config.subscriber_buffer,
            metrics.tenant_channels.clone(),
        ));
        let (ready_tx, ready) = watch::channel(false);
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let monitoring = match config.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen for metrics on {addr}"))?,
            ),
            None => None,
        };
        let tailer = Arc::new(Tailer {
            pg: listen,
            read: read.map(|(read, _)| read),
            read_max_lag: config.read_max_lag,
            read_fall_back: config.read_fallback == ReadFallback::Primary,
            publisher: Publisher {
                journal: journal.clone(),
                hub: hub.clone(),
                activity: activity.clone(),
                metrics: metrics.clone(),
                traces: traces.clone(),
            },
            metrics: metrics.clone(),
            ready: ready_tx,
        });
        let pruner = Arc::new(Pruner {
            pool: pool.clone(),
            retention: config.retention,
            interval: config.prune_interval,
            metrics: metrics.clone(),
        });
        let replay_gate = ReplayGate::new(
            config.max_replays,
            config.max_replays_per_tenant,
            metrics.replays_running.clone(),
            metrics.replay_waits.clone(),
        );
        let tracker = TaskTracker::new();
        // Replays and snapshots read where live batches do.
        let subscriptions = Subscriptions::new(
            hub.clone(),
            journal.clone(),
            read_pool,
            metrics.clone(),
            replay_gate,
            Limits {
                max_subscribers: config.max_subscribers,
                max_subscribers_per_tenant: config.max_subscribers_per_tenant,
            },
            shutdown.clone(),
            tracker.clone(),
        );
        let subscriptions = Arc::new(subscriptions.traced(traces));
        let (max_snapshots, max_tenant_snapshots) = config.snapshot_limits();
        let snapshots = Arc::new(SnapshotLimits::new(max_snapshots, max_tenant_snapshots));
        let services = Arc::new(Services {
            auth,
            config,
            catalog: Arc::new(Catalog::new(pool, resource_types)),
            metrics,
            ready,
            subscriptions,
            activity,
            snapshots,
        });
        Ok(App {
            services,
            listener,
            monitoring,
            tailer,
            pruner,
            shutdown,
            tracker,
            exporter,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("BUG: a bound listener has an address")
    }

    /// Where `/metrics` is served when `CHANGECAST_METRICS_LISTEN` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.monitoring.as_ref().map(|listener| {
            listener
                .local_addr()
                .expect("BUG: a bound listener has an address")
        })
    }

    pub fn services(&self) -> &Arc<Services> {
        &self.services
    }

    /// Serves until shutdown, then gives subscribers a few seconds to be told.
    pub async fn run(self) -> anyhow::Result<()> {
        let App {
            services,
            listener,
            monitoring,
            tailer,
            pruner,
            shutdown,
            tracker,
            exporter,
        } = self;
        // Stopped after the servers, so the spans of the last requests go out too.
        let exported = CancellationToken::new();
        if let Some(exporter) = exporter {
            tracker.spawn(exporter.run(exported.clone()));
        }
        let supervised = Supervised {
            tracker: &tracker,
            shutdown: &shutdown,
            restarts: &services.metrics.task_restarts,
        };
        {
            let (run, token) = (tailer.clone(), shutdown.clone());
            let start = move || {
                let (tailer, shutdown) = (run.clone(), token.clone());
                async move { tailer.run(shutdown).await }
            };
            // Live delivery stopped: not ready until a restarted tailer has caught up.
            let on_failure = move || {
                tailer.ready.send_replace(false);
            };
            supervised.spawn("tailer", start, on_failure);
        }
        {
            let token = shutdown.clone();
            let start = move || {
                let (pruner, shutdown) = (pruner.clone(), token.clone());
                async move { pruner.run(shutdown).await }
            };
            supervised.spawn("pruner", start, || {});
        }
        let limits = ConnectionLimits {
            max_connections: services.config.max_connections,
            header_timeout: services.config.header_timeout,
            write_timeout: services.config.write_timeout,
        };
        let server = server::serve(
            listener,
            crate::http::routes(&services),
            limits,
            shutdown.clone(),
        );
        let monitoring = async {
            if let Some(listener) = monitoring {
                let limits = ConnectionLimits {
                    max_connections: MONITORING_CONNECTIONS,
                    ..limits
                };
                let routes = crate::http::monitoring_routes(&services);
                server::serve(listener, routes, limits, shutdown.clone()).await;
            }
        };
        let server = async { tokio::join!(server, monitoring) };
        // SSE bodies end when their subscriptions see the token; bound it anyway.
        tokio::select! {
            _ = server => {}
            _ = async { shutdown.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
                tracing::warn!("connections still open after the grace period; closing them");
            }
        }
        exported.cancel();
        tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("background tasks still running after the grace period");
        }
        Ok(())
    }
}

/// Where background tasks run: on the service's tracker until shutdown, their restarts
/// counted by task.
struct Supervised<'a> {
    tracker: &'a TaskTracker,
    shutdown: &'a CancellationToken,
    restarts: &'a prometheus::IntCounterVec,
}

impl Supervised<'_> {
    /// Runs a background task under supervision (see `supervise`): `start` makes one run
    /// of it, `on_failure` reports its absence.
    fn spawn<F, Fut>(&self, task: &'static str, start: F, on_failure: impl Fn() + Send + 'static)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(supervise(
            task,
            start,
            on_failure,
            self.restarts.with_label_values(&[task]),
            self.tracker.clone(),
            self.shutdown.clone(),
        ));
    }
}
