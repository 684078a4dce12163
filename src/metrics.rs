//! Every Prometheus series of the service, registered at start so all names appear at 0
//! (those labelled by transport as soon as the transports are set up, see
//! [`Metrics::transport`]).

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Connected subscribers, by `transport`.
    pub subscribers: IntGaugeVec,
    /// Changes the tailer read from the journal.
    pub events_received: IntCounter,
    /// Changes written to subscribers, by `transport`.
    pub events_delivered: IntCounterVec,
    /// Subscribers that fell behind their tenant's fan-out and went back to the journal.
    pub subscribers_lagged: IntCounter,
    /// `resync` events sent, by `reason`.
    pub resyncs: IntCounterVec,
    /// Journal replays for subscribers (resume with a cursor, or lag recovery).
    pub replays: IntCounter,
    /// Replay pages read from the journal (pages shared by several subscribers count once).
    pub replay_pages_read: IntCounter,
    /// Times the tailer found the journal pruned past what it had published.
    pub journal_gaps: IntCounter,
    /// Replay pages reading the journal right now (bounded by CHANGECAST_MAX_REPLAYS).
    pub replays_running: IntGauge,
    /// Replay pages that had to wait for their turn.
    pub replay_waits: IntCounter,
    /// From the notification announcing a change (or, without one, reading it off the
    /// journal) to a transport writing it.
    pub delivery_latency: Histogram,
    /// Times the LISTEN connection was re-established after a loss.
    pub db_reconnects: IntCounter,
    /// Journal rows removed by retention.
    pub journal_rows_pruned: IntCounter,
    /// Bytes the journal takes (every partition, with its indexes and TOAST), as of the
    /// last pruning run.
    pub journal_bytes: IntGauge,
    /// Partitions of the journal (the DEFAULT one included), as of the last pruning run.
    pub journal_partitions: IntGauge,
    /// Background tasks restarted after they panicked or ended unexpectedly, by `task`
    /// (`tailer`, `pruner`).
    pub task_restarts: IntCounterVec,
    /// Tenants with a live fan-out channel (at least one subscriber).
    pub tenant_channels: IntGauge,
    /// Times the tailer saw the database's transaction ids go backwards (a restore, a
    /// failover to a standby that lagged): every live subscriber then caught up from
    /// its cursor.
    pub xid_rewinds: IntCounter,
    /// Attempts at starting the embedded PostgreSQL again after it died.
    pub embedded_restarts: IntCounter,
    /// 1 while the tailer drains the journal and writers skip their NOTIFY for it.
    pub draining: IntGauge,
    /// The id below which the tailer's last read skipped the journal's partitions.
    pub tail_id_floor: IntGauge,
    /// Times draining ended because writers kept queueing on the NOTIFY lock without our
    /// wake-ups (their own NOTIFYs hold it), so skipping ours only delayed delivery.
    pub drains_without_effect: IntCounter,
    /// With a read standby: bytes of WAL it had yet to replay to reach the primary's
    /// position at the tailer's last look (0 when caught up).
    pub standby_lag_bytes: IntGauge,
    pub standby_fallback: IntGauge,
    /// With a read standby: how long each batch waited for it to replay what the
    /// primary had written when the batch began.
    pub standby_waits: Histogram,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let metrics = Metrics {
            subscribers: IntGaugeVec::new(
                Opts::new(
                    "changecast_subscribers",
                    "Connected subscribers by transport",
                ),
                &["transport"],
            )
            .expect("BUG: metric definition"),
            events_received: IntCounter::new(
                "changecast_events_received_total",
                "Changes read from the database journal",
            )
            .expect("BUG: metric definition"),
            events_delivered: IntCounterVec::new(
                Opts::new(
                    "changecast_events_delivered_total",
                    "Changes written to subscribers",
                ),
                &["transport"],
            )
            .expect("BUG: metric definition"),
            subscribers_lagged: IntCounter::new(
                "changecast_subscribers_lagged_total",
                "Subscribers that fell behind live fan-out and caught up from the journal",
            )
            .expect("BUG: metric definition"),
            resyncs: IntCounterVec::new(
                Opts::new("changecast_resyncs_total", "resync events sent"),
                &["reason"],
            )
            .expect("BUG: metric definition"),
            replays: IntCounter::new(
                "changecast_replays_total",
                "Journal replays for resuming or lagging subscribers",
            )
            .expect("BUG: metric definition"),
            replay_pages_read: IntCounter::new(
                "changecast_replay_pages_read_total",
                "Replay pages read from the journal; subscribers replaying the same range share one read",
            )
            .expect("BUG: metric definition"),
            journal_gaps: IntCounter::new(
                "changecast_journal_gaps_total",
                "Times the journal was pruned past what this instance had published (every live subscriber then caught up from its cursor)",
            )
            .expect("BUG: metric definition"),
            replays_running: IntGauge::new(
                "changecast_replays_running",
                "Replay pages reading the journal right now",
            )
            .expect("BUG: metric definition"),
            replay_waits: IntCounter::new(
                "changecast_replay_waits_total",
                "Replay pages that waited for their turn (per-tenant or overall bound)",
            )
            .expect("BUG: metric definition"),
            delivery_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "changecast_delivery_latency_seconds",
                    "Time from the notification announcing a change (else its journal read) to writing it to a subscriber",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ]),
            )
            .expect("BUG: metric definition"),
            db_reconnects: IntCounter::new(
                "changecast_db_reconnects_total",
                "Re-established LISTEN connections after a loss",
            )
            .expect("BUG: metric definition"),
            journal_rows_pruned: IntCounter::new(
                "changecast_journal_rows_pruned_total",
                "Journal rows removed after the retention period",
            )
            .expect("BUG: metric definition"),
            journal_bytes: IntGauge::new(
                "changecast_journal_bytes",
                "Bytes the journal takes: every partition, with its indexes and TOAST (as of the last pruning run)",
            )
            .expect("BUG: metric definition"),
            journal_partitions: IntGauge::new(
                "changecast_journal_partitions",
                "Partitions of the journal, the DEFAULT one included (as of the last pruning run)",
            )
            .expect("BUG: metric definition"),
            task_restarts: IntCounterVec::new(
                Opts::new(
                    "changecast_task_restarts_total",
                    "Background tasks restarted after a panic or an unexpected end",
                ),
                &["task"],
            )
            .expect("BUG: metric definition"),
            tenant_channels: IntGauge::new(
                "changecast_tenant_channels",
                "Tenants with a live fan-out channel, i.e. with at least one subscriber",
            )
            .expect("BUG: metric definition"),
            xid_rewinds: IntCounter::new(
                "changecast_xid_rewinds_total",
                "Times the database's transaction ids went backwards under the tailer (restore, failover); every live subscriber then caught up from its cursor",
            )
            .expect("BUG: metric definition"),
            embedded_restarts: IntCounter::new(
                "changecast_embedded_postgres_restarts_total",
                "Attempts at starting the embedded PostgreSQL again after it died",
            )
            .expect("BUG: metric definition"),
            tail_id_floor: IntGauge::new(
                "changecast_tailer_id_floor",
                "The journal id below which the tailer's last read skipped the journal's partitions (0: it read them all)",
            )
            .expect("BUG: metric definition"),
            draining: IntGauge::new(
                "changecast_tailer_draining",
                "1 while the tailer drains the journal and writers skip their NOTIFY for it (writers were queueing on PostgreSQL's NOTIFY commit lock)",
            )
            .expect("BUG: metric definition"),
            drains_without_effect: IntCounter::new(
                "changecast_drains_without_effect_total",
                "Times draining was given up because writers kept queueing on the NOTIFY lock without changecast's wake-ups (other NOTIFYs in their transactions)",
            )
            .expect("BUG: metric definition"),
            standby_lag_bytes: IntGauge::new(
                "changecast_standby_lag_bytes",
                "With CHANGECAST_READ_DATABASE_URL: bytes of WAL the standby had yet to replay to reach the primary's position when the tailer last looked",
            )
            .expect("BUG: metric definition"),
            standby_fallback: IntGauge::new(
                "changecast_standby_fallback",
                "With CHANGECAST_READ_DATABASE_URL: 1 while the tailer reads the journal on the primary because the standby lags past CHANGECAST_READ_MAX_LAG (CHANGECAST_READ_FALLBACK=primary), else 0",
            )
            .expect("BUG: metric definition"),
            standby_waits: Histogram::with_opts(
                HistogramOpts::new(
                    "changecast_standby_wait_seconds",
                    "With CHANGECAST_READ_DATABASE_URL: time a batch waited for the standby to replay what the primary had written when it began",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 10.0,
                ]),
            )
            .expect("BUG: metric definition"),
            registry,
        };
        let collectors: [Box<dyn prometheus::core::Collector>; 25] = [
            Box::new(metrics.subscribers.clone()),
            Box::new(metrics.events_received.clone()),
            Box::new(metrics.events_delivered.clone()),
            Box::new(metrics.subscribers_lagged.clone()),
            Box::new(metrics.resyncs.clone()),
            Box::new(metrics.replays.clone()),
            Box::new(metrics.replay_pages_read.clone()),
            Box::new(metrics.journal_gaps.clone()),
            Box::new(metrics.replays_running.clone()),
            Box::new(metrics.replay_waits.clone()),
            Box::new(metrics.delivery_latency.clone()),
            Box::new(metrics.db_reconnects.clone()),
            Box::new(metrics.journal_rows_pruned.clone()),
            Box::new(metrics.journal_bytes.clone()),
            Box::new(metrics.journal_partitions.clone()),
            Box::new(metrics.task_restarts.clone()),
            Box::new(metrics.tenant_channels.clone()),
            Box::new(metrics.xid_rewinds.clone()),
            Box::new(metrics.embedded_restarts.clone()),
            Box::new(metrics.draining.clone()),
            Box::new(metrics.tail_id_floor.clone()),
            Box::new(metrics.drains_without_effect.clone()),
            Box::new(metrics.standby_lag_bytes.clone()),
            Box::new(metrics.standby_fallback.clone()),
            Box::new(metrics.standby_waits.clone()),
        ];
        for collector in collectors {
            metrics
                .registry
                .register(collector)
                .expect("BUG: duplicate metric");
        }
        for task in ["tailer", "pruner"] {
            metrics.task_restarts.with_label_values(&[task]);
        }
        metrics
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("BUG: encoding metrics to memory");
        String::from_utf8(out).expect("BUG: Prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// One transport's part of the series, its labelled children looked up once.
#[derive(Clone)]
pub struct TransportSeries {
    /// Its connected subscribers.
    pub subscribers: IntGauge,
    /// Changes it wrote.
    pub delivered: IntCounter,
    /// The service-wide delivery latency, which every transport's writes add to.
    pub delivery_latency: Histogram,
}

impl Metrics {
    /// The series of the transport labelled `label`, which appear (at 0) from this call on.
    pub fn transport(&self, label: &str) -> TransportSeries {
        TransportSeries {
            subscribers: self.subscribers.with_label_values(&[label]),
            delivered: self.events_delivered.with_label_values(&[label]),
            delivery_latency: self.delivery_latency.clone(),
        }
    }
}
