//! Spans of the work subscribers ask for: a snapshot (from its request to the end of its
//! answer) and a journal replay (from its start to its end). One span each, recorded
//! when its guard is dropped, so every way out of the work ends it; not sampled, as
//! they are rare next to changes. Only the tenant id, types and counts are attributes:
//! never a token, a cursor or a row value.

use std::sync::Arc;
use std::time::Instant;

use super::{Span, Tracer, Traces, Value};
use crate::tenant::TenantId;

/// What a span under way has gathered.
struct Open {
    tracer: Arc<Tracer>,
    started: Instant,
    attributes: Vec<(&'static str, Value)>,
}

impl Open {
    fn new(tracer: &Arc<Tracer>, tenant: &TenantId) -> Box<Open> {
        Box::new(Open {
            tracer: tracer.clone(),
            started: Instant::now(),
            attributes: vec![("changecast.tenant", Value::from(tenant.as_str()))],
        })
    }

    fn record(&mut self, name: &'static str, kind: u8, error: Option<&'static str>) {
        let tracer = &self.tracer;
        tracer.record(Span {
            name,
            trace_id: tracer.trace_id(),
            span_id: tracer.next_id(),
            parent: None,
            kind,
            start_unix_nanos: tracer.clock.unix_nanos(self.started),
            end_unix_nanos: tracer.clock.unix_nanos(Instant::now()),
            attributes: std::mem::take(&mut self.attributes),
            error,
        });
    }
}

/// A `snapshot` span: types, limit, rows written, whether truncated.
pub struct SnapshotTrace {
    open: Option<Box<Open>>,
    rows: u64,
    answering: bool,
    truncated: Option<bool>,
}

/// A `replay` span: pages and entries read.
pub struct ReplayTrace {
    open: Option<Box<Open>>,
    pages: u64,
    entries: u64,
}

impl Traces {
    /// Starts tracing a snapshot of `types` for `tenant`, at most `limit` rows each.
    pub fn snapshot(&self, tenant: &TenantId, types: &[String], limit: usize) -> SnapshotTrace {
        let open = self.0.as_ref().map(|tracer| {
            let mut open = Open::new(tracer, tenant);
            open.attributes
                .push(("changecast.resource_types", Value::from(types.join(","))));
            open.attributes
                .push(("changecast.limit", Value::from(limit)));
            open
        });
        SnapshotTrace {
            open,
            rows: 0,
            answering: false,
            truncated: None,
        }
    }

    /// Starts tracing a journal replay for `tenant`.
    pub fn replay(&self, tenant: &TenantId) -> ReplayTrace {
        ReplayTrace {
            open: self.0.as_ref().map(|tracer| Open::new(tracer, tenant)),
            pages: 0,
            entries: 0,
        }
    }
}

impl SnapshotTrace {
    /// The answer has begun (its status is sent): only its body is left.
    pub fn answering(mut self) -> Self {
        self.answering = true;
        self
    }

    pub fn row(&mut self) {
        self.rows += 1;
    }

    /// The answer is complete.
    pub fn end(&mut self, truncated: bool) {
        self.truncated = Some(truncated);
    }
}

impl Drop for SnapshotTrace {
    fn drop(&mut self) {
        let Some(open) = &mut self.open else {
            return;
        };
        open.attributes
            .push(("changecast.rows", Value::from(self.rows)));
        let error = match (self.answering, self.truncated) {
            (false, _) => Some("refused or failed before the answer began"),
            (true, None) => Some("the answer was cut short"),
            (true, Some(truncated)) => {
                open.attributes
                    .push(("changecast.truncated", Value::from(truncated)));
                None
            }
        };
        open.record("snapshot", 2, error);
    }
}

impl ReplayTrace {
    /// A page of `entries` was read.
    pub fn page(&mut self, entries: usize) {
        self.pages += 1;
        self.entries += entries as u64;
    }
}

impl Drop for ReplayTrace {
    fn drop(&mut self) {
        let Some(open) = &mut self.open else {
            return;
        };
        open.attributes
            .push(("changecast.pages", Value::from(self.pages)));
        open.attributes
            .push(("changecast.entries", Value::from(self.entries)));
        open.record("replay", 1, None);
    }
}
