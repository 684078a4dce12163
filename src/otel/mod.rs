//! OpenTelemetry traces, exported over OTLP/HTTP as JSON: a change's way from the
//! journal read to the sockets (`changes.rs`), snapshots and replays (`requests.rs`),
//! and the exporter (`export.rs`). It decides nothing about delivery and must never slow
//! it: spans wait in a bounded queue, and a full queue drops them (counted).
//!
//! Off unless an endpoint is configured. Off, [`Traces`] is a `None`: every hook is one
//! branch, with no clock read, allocation or lock per event.

mod changes;
mod export;
mod requests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::config::TraceArgs;
use crate::sync::lock;

pub use export::Exporter;
pub use requests::{ReplayTrace, SnapshotTrace};

/// Spans waiting for the exporter; beyond, new ones are dropped (a slow or dead
/// collector must not grow memory).
const MAX_QUEUED_SPANS: usize = 4096;

/// What the service's parts trace with: cheap to clone, a `None` when tracing is off.
#[derive(Clone, Default)]
pub struct Traces(Option<Arc<Tracer>>);

impl Traces {
    /// Tracing off: nothing is recorded or sent.
    pub fn off() -> Self {
        Traces(None)
    }

    /// The traces `args` ask for, and the exporter that sends them (to be run until
    /// shutdown); off, and no exporter, when no endpoint is configured.
    pub fn from_config(args: &TraceArgs) -> anyhow::Result<(Traces, Option<Exporter>)> {
        let Some(endpoint) = export::Endpoint::from_config(args)? else {
            return Ok((Traces::off(), None));
        };
        let tracer = Arc::new(Tracer::new(args.trace_sample));
        let exporter = Exporter::new(tracer.clone(), endpoint, args)?;
        Ok((Traces(Some(tracer)), Some(exporter)))
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Spans dropped so far because the queue was full or an export failed.
    pub fn dropped(&self) -> u64 {
        self.0
            .as_ref()
            .map_or(0, |tracer| tracer.dropped.load(Ordering::Relaxed))
    }
}

/// The recording side: sampling, ids, the clock, the queue.
pub(crate) struct Tracer {
    /// An entry's change trace is sampled when `mix(id) <= threshold`; `None`: never.
    threshold: Option<u64>,
    ids: AtomicU64,
    clock: Clock,
    queue: Mutex<Vec<Span>>,
    dropped: AtomicU64,
    changes: changes::InFlight,
}

impl Tracer {
    fn new(sample: f64) -> Self {
        let mut seed = [0u8; 8];
        // Ids only need to be unique; a failed random source still gives a usable seed.
        let _ = getrandom::fill(&mut seed);
        let threshold = if sample <= 0.0 {
            None
        } else if sample >= 1.0 {
            Some(u64::MAX)
        } else {
            // The float-to-int cast saturates: exact enough for a ratio.
            Some((sample * u64::MAX as f64) as u64)
        };
        Tracer {
            threshold,
            ids: AtomicU64::new(u64::from_le_bytes(seed)),
            clock: Clock::now(),
            queue: Mutex::new(Vec::new()),
            dropped: AtomicU64::new(0),
            changes: changes::InFlight::new(),
        }
    }

    /// Whether journal entry `id`'s change trace is sampled. A function of the id alone,
    /// so every instance following one journal samples the same entries, and the
    /// transports can tell without asking anyone.
    fn samples(&self, id: i64) -> bool {
        self.threshold.is_some_and(|t| mix(id as u64) <= t)
    }

    /// A fresh non-zero 64-bit id (span ids; two make a trace id).
    fn next_id(&self) -> u64 {
        let id = mix(self.ids.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed));
        id.max(1)
    }

    fn trace_id(&self) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.next_id().to_be_bytes());
        id[8..].copy_from_slice(&self.next_id().to_be_bytes());
        id
    }

    /// Queues `span` for export, or drops it (counted) when the queue is full.
    fn record(&self, span: Span) {
        let mut queue = lock(&self.queue);
        if queue.len() < MAX_QUEUED_SPANS {
            queue.push(span);
        } else {
            drop(queue);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Everything queued so far.
    fn take_queued(&self) -> Vec<Span> {
        std::mem::take(&mut *lock(&self.queue))
    }
}

/// splitmix64's finaliser: spreads sequential journal ids (and counter values) evenly
/// over the 64-bit range.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Monotonic instants as Unix nanoseconds (what OTLP timestamps are).
struct Clock {
    at: Instant,
    unix_nanos: u64,
}

impl Clock {
    fn now() -> Self {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Clock {
            at: Instant::now(),
            unix_nanos: unix.as_nanos() as u64,
        }
    }

    fn unix_nanos(&self, instant: Instant) -> u64 {
        match instant.checked_duration_since(self.at) {
            Some(after) => self.unix_nanos + after.as_nanos() as u64,
            None => self
                .unix_nanos
                .saturating_sub(self.at.duration_since(instant).as_nanos() as u64),
        }
    }

    /// An [`offset`](Clock::offset) as Unix nanoseconds.
    fn unix_from_offset(&self, offset: u64) -> u64 {
        self.unix_nanos + offset
    }

    /// Nanoseconds from the clock's start to `instant` (0 before it).
    fn offset(&self, instant: Instant) -> u64 {
        instant.saturating_duration_since(self.at).as_nanos() as u64
    }
}

/// One finished span, as the exporter encodes it.
pub(crate) struct Span {
    name: &'static str,
    trace_id: [u8; 16],
    span_id: u64,
    parent: Option<u64>,
    /// OTLP `SpanKind`: 1 internal, 2 server.
    kind: u8,
    start_unix_nanos: u64,
    end_unix_nanos: u64,
    attributes: Vec<(&'static str, Value)>,
    /// Set when what the span covers failed or stopped short.
    error: Option<&'static str>,
}

pub(crate) enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl From<&str> for Value {
    fn from(text: &str) -> Self {
        Value::Str(text.to_owned())
    }
}

impl From<String> for Value {
    fn from(text: String) -> Self {
        Value::Str(text)
    }
}

impl From<usize> for Value {
    fn from(n: usize) -> Self {
        Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_follows_the_ratio_and_the_id_alone() {
        let tenth = Tracer::new(0.1);
        let sampled = (1..=100_000).filter(|&id| tenth.samples(id)).count();
        assert!((9_000..=11_000).contains(&sampled), "{sampled}");
        let again = Tracer::new(0.1);
        assert!((1..=1000).all(|id| tenth.samples(id) == again.samples(id)));
        assert!((1..=1000).all(|id| Tracer::new(1.0).samples(id)));
        assert!((1..=1000).all(|id| !Tracer::new(0.0).samples(id)));
    }

    #[test]
    fn ids_are_distinct_and_never_zero() {
        let tracer = Tracer::new(1.0);
        let ids: std::collections::HashSet<u64> = (0..10_000).map(|_| tracer.next_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(!ids.contains(&0));
    }

    #[test]
    fn the_queue_is_bounded() {
        let tracer = Tracer::new(1.0);
        for _ in 0..MAX_QUEUED_SPANS + 10 {
            tracer.record(Span {
                name: "x",
                trace_id: [1; 16],
                span_id: 1,
                parent: None,
                kind: 1,
                start_unix_nanos: 0,
                end_unix_nanos: 0,
                attributes: Vec::new(),
                error: None,
            });
        }
        assert_eq!(tracer.take_queued().len(), MAX_QUEUED_SPANS);
        assert_eq!(tracer.dropped.load(Ordering::Relaxed), 10);
    }
}
