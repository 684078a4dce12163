//! Change traces, sampled and aggregated. A span per change per subscriber would cost
//! more than the delivery itself at a thousand subscribers, so a sampled change gets one
//! trace: a `journal.read` span for the read that found it, and under it one
//! `change.deliver` span from that read to the last socket write of the change, with the
//! number of writes and the longest delivery latency as attributes.
//!
//! The transports report writes into a fixed table of slots with atomics (no lock, no
//! allocation), and only for sampled entries, which they recognise from the id alone.
//! The exporter closes a change's span once it has been followed for [`FOLLOW_FOR`].

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Span, Tracer, Traces, Value};
use crate::journal::Entry;
use crate::sync::lock;

/// Sampled changes followed at once; one sampled while its slot is still taken is not
/// traced (counted as dropped).
const SLOTS: usize = 4096;
/// How long after its journal read a sampled change's writes are counted: long enough
/// for every connected subscriber to be written to, short enough for traces to arrive
/// while someone looks. A write after that is not in its span.
pub(super) const FOLLOW_FOR: Duration = Duration::from_secs(3);
const FREE: i64 = i64::MIN;

#[derive(Default)]
struct Slot {
    /// The journal id the slot follows, or [`FREE`]; set last, after the counters.
    id: AtomicI64,
    writes: AtomicU64,
    max_latency_nanos: AtomicU64,
    /// The last write, as an offset on the tracer's clock.
    last_write: AtomicU64,
}

/// The sampled changes being followed.
pub(super) struct InFlight {
    slots: Box<[Slot]>,
    /// In order of their reads, so the oldest close first.
    pending: Mutex<VecDeque<Pending>>,
}

struct Pending {
    id: i64,
    trace_id: [u8; 16],
    span_id: u64,
    read_span: u64,
    published: Instant,
    known_since: Instant,
    attributes: Vec<(&'static str, Value)>,
}

impl InFlight {
    pub(super) fn new() -> Self {
        let slots = (0..SLOTS)
            .map(|_| Slot {
                id: AtomicI64::new(FREE),
                ..Slot::default()
            })
            .collect();
        InFlight {
            slots,
            pending: Mutex::new(VecDeque::new()),
        }
    }

    fn slot(&self, id: i64) -> &Slot {
        &self.slots[(id as u64 % SLOTS as u64) as usize]
    }
}

impl Traces {
    /// When a journal read begins; `None` when tracing is off (nothing to time).
    pub fn clock(&self) -> Option<Instant> {
        self.0.as_ref().map(|_| Instant::now())
    }

    /// A journal read begun at `started` (a wake-up at `woke_at` led to it) found `page`,
    /// about to be published. Traced when the page holds a sampled entry.
    pub fn journal_read(&self, started: Option<Instant>, woke_at: Option<Instant>, page: &[Entry]) {
        if let (Some(tracer), Some(started)) = (&self.0, started) {
            tracer.journal_read(started, woke_at, page);
        }
    }

    /// A transport wrote journal entry `id`, known since `known_since`, to its socket.
    #[inline]
    pub fn delivered(&self, id: i64, known_since: Instant) {
        if let Some(tracer) = &self.0 {
            tracer.delivered(id, known_since);
        }
    }
}

impl Tracer {
    fn journal_read(&self, started: Instant, woke_at: Option<Instant>, page: &[Entry]) {
        let sampled = |entry: &&Entry| {
            matches!(entry, Entry::Change(_) | Entry::AppEvent(_)) && self.samples(entry.id())
        };
        let count = page.iter().filter(sampled).count();
        if count == 0 {
            return;
        }
        let now = Instant::now();
        let trace_id = self.trace_id();
        let read_span = self.next_id();
        let mut types = BTreeSet::new();
        for entry in page {
            if let Entry::Change(change) = entry {
                types.insert(change.resource_type.as_str());
            }
        }
        let mut attributes = vec![
            ("changecast.entries", Value::from(page.len())),
            ("changecast.sampled", Value::from(count)),
            (
                "changecast.resource_types",
                Value::from(types.into_iter().collect::<Vec<_>>().join(",")),
            ),
        ];
        if let Some(woke_at) = woke_at {
            let wait = started.saturating_duration_since(woke_at);
            attributes.push(("changecast.wait_us", Value::from(wait.as_micros() as u64)));
        }
        self.record(Span {
            name: "journal.read",
            trace_id,
            span_id: read_span,
            parent: None,
            kind: 1,
            start_unix_nanos: self.clock.unix_nanos(started),
            end_unix_nanos: self.clock.unix_nanos(now),
            attributes,
            error: None,
        });
        for entry in page.iter().filter(sampled) {
            self.follow(entry, trace_id, read_span, now);
        }
    }

    /// Starts counting the writes of `entry`, or drops its span when its slot is taken.
    fn follow(&self, entry: &Entry, trace_id: [u8; 16], read_span: u64, published: Instant) {
        let id = entry.id();
        let (known_since, mut attributes) = match entry {
            Entry::Change(change) => (
                change.known_since,
                vec![
                    (
                        "changecast.resource_type",
                        Value::from(change.resource_type.as_str()),
                    ),
                    ("changecast.event", Value::from(change.event.as_str())),
                ],
            ),
            Entry::AppEvent(event) => (
                event.known_since,
                vec![("changecast.topic", Value::from(event.topic.as_str()))],
            ),
            Entry::Resync(_) => return,
        };
        let slot = self.changes.slot(id);
        let mut pending = lock(&self.changes.pending);
        if slot.id.load(Ordering::Acquire) != FREE {
            drop(pending);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        slot.writes.store(0, Ordering::Relaxed);
        slot.max_latency_nanos.store(0, Ordering::Relaxed);
        slot.last_write.store(0, Ordering::Relaxed);
        slot.id.store(id, Ordering::Release);
        attributes.push(("changecast.tenant", Value::from(entry.tenant().as_str())));
        attributes.push(("changecast.entry_id", Value::from(id)));
        pending.push_back(Pending {
            id,
            trace_id,
            span_id: self.next_id(),
            read_span,
            published,
            known_since,
            attributes,
        });
    }

    #[inline]
    fn delivered(&self, id: i64, known_since: Instant) {
        if !self.samples(id) {
            return;
        }
        let slot = self.changes.slot(id);
        if slot.id.load(Ordering::Acquire) != id {
            return;
        }
        let now = Instant::now();
        let latency = now.saturating_duration_since(known_since).as_nanos() as u64;
        slot.writes.fetch_add(1, Ordering::Relaxed);
        slot.max_latency_nanos.fetch_max(latency, Ordering::Relaxed);
        slot.last_write
            .fetch_max(self.clock.offset(now), Ordering::Relaxed);
    }

    /// Ends the spans of the changes followed for [`FOLLOW_FOR`] (`all`: every one, at
    /// shutdown) and queues them.
    pub(super) fn close_changes(&self, all: bool) {
        loop {
            let mut pending = lock(&self.changes.pending);
            let due = pending
                .front()
                .is_some_and(|p| all || p.published.elapsed() >= FOLLOW_FOR);
            if !due {
                return;
            }
            let Some(change) = pending.pop_front() else {
                return;
            };
            let slot = self.changes.slot(change.id);
            let writes = slot.writes.load(Ordering::Relaxed);
            let max_latency = slot.max_latency_nanos.load(Ordering::Relaxed);
            let last_write = slot.last_write.load(Ordering::Relaxed);
            slot.id.store(FREE, Ordering::Release);
            drop(pending);
            let start = self.clock.unix_nanos(change.published);
            let end = if writes > 0 {
                self.clock.unix_from_offset(last_write).max(start)
            } else {
                start
            };
            let mut attributes = change.attributes;
            attributes.push(("changecast.subscribers", Value::from(writes)));
            attributes.push(("changecast.latency_max_us", Value::from(max_latency / 1000)));
            attributes.push((
                "changecast.known_before_read_us",
                Value::from(
                    change
                        .published
                        .saturating_duration_since(change.known_since)
                        .as_micros() as u64,
                ),
            ));
            self.record(Span {
                name: "change.deliver",
                trace_id: change.trace_id,
                span_id: change.span_id,
                parent: Some(change.read_span),
                kind: 1,
                start_unix_nanos: start,
                end_unix_nanos: end,
                attributes,
                error: None,
            });
        }
    }
}
