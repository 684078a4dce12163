//! Per-tenant fan-out of committed changes. Knows nothing about PostgreSQL.
//!
//! Each tenant with subscribers has one bounded broadcast channel, so publishing a
//! change costs one send to its own tenant's channel, whatever other tenants do, and a
//! subscriber that stops reading cannot grow memory: it lags, and recovers from the
//! journal (see `subscription`). Publishing a page and advancing the `Published`
//! boundary happen under one lock, so a new subscriber learns exactly which changes it
//! will receive live and which it must read from the journal. A tenant's channel is
//! dropped with its last subscriber (see [`Live`]), so tenants that come and go leave
//! nothing behind.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus::IntGauge;
use tokio::sync::{broadcast, watch};

use crate::journal::{Entry, Published};
use crate::sync::lock;
use crate::tenant::TenantId;

/// Entries larger than this (roughly, in bytes of JSON) are not fanned out themselves:
/// every tenant channel keeps its last `capacity` items whether read or not, and a few
/// multi-MB rows there would pin gigabytes. Subscribers read them from the journal.
pub const FAN_OUT_MAX_BYTES: usize = 64 * 1024;

/// What a tenant's fan-out carries.
#[derive(Clone, Debug)]
pub enum Fanned {
    Entry(Entry),
    /// An entry too large to fan out ([`FAN_OUT_MAX_BYTES`]): it is in the journal, and
    /// a subscriber it concerns catches up from there (as after a lag).
    InJournal(InJournal),
}

/// What a subscriber needs to know of an entry it must read from the journal.
#[derive(Clone, Debug)]
pub struct InJournal {
    pub xid: u64,
    /// The resource type of a row change or resync marker, the topic of an application event.
    pub name: String,
    pub app_event: bool,
    /// The row's id, for a row change (subscribers of other `ids` need not catch up).
    pub resource_id: Option<String>,
}

impl Fanned {
    fn of(entry: Entry) -> Fanned {
        if entry.size_hint() <= FAN_OUT_MAX_BYTES {
            return Fanned::Entry(entry);
        }
        let (name, app_event, resource_id) = match &entry {
            Entry::Change(change) => (
                change.resource_type.clone(),
                false,
                Some(change.resource_id.clone()),
            ),
            Entry::AppEvent(event) => (event.topic.clone(), true, None),
            Entry::Resync(marker) => (marker.resource_type.clone(), false, None),
        };
        Fanned::InJournal(InJournal {
            xid: entry.xid(),
            name,
            app_event,
            resource_id,
        })
    }
}

pub struct Hub {
    state: Mutex<State>,
    /// Changes a subscriber may fall behind its tenant's newest before it lags.
    capacity: usize,
    /// How many tenants have a channel (`changecast_tenant_channels`).
    channels: IntGauge,
    /// Counts the batches published in full: a subscriber that waits for a transaction
    /// to be complete (`max_txn_events`) wakes on it, whether or not the batch's last
    /// pages held anything of its tenant.
    batches: watch::Sender<u64>,
}

struct State {
    tenants: HashMap<TenantId, broadcast::Sender<Fanned>>,
    published: Published,
}

/// One subscriber's end of its tenant's fan-out; dropping it leaves the fan-out.
pub struct Live {
    // Field order matters: the receiver is dropped before `_member` looks whether it
    // was the tenant's last one.
    receiver: broadcast::Receiver<Fanned>,
    _member: Member,
}

impl Live {
    pub async fn recv(&mut self) -> Result<Fanned, broadcast::error::RecvError> {
        self.receiver.recv().await
    }

    /// The hub's boundary, and how many items sent before it this receiver has yet to
    /// receive: once it has, it holds every entry the boundary includes.
    pub fn boundary(&self) -> (Published, usize) {
        let state = lock(&self._member.hub.state);
        (state.published.clone(), self.receiver.len())
    }

    /// Changes whenever a batch has been published in full.
    pub fn batches(&self) -> watch::Receiver<u64> {
        self._member.hub.batches.subscribe()
    }
}

/// Removes its tenant's channel, when dropped after the tenant's last receiver.
struct Member {
    hub: Arc<Hub>,
    tenant: TenantId,
}

impl Drop for Member {
    fn drop(&mut self) {
        // Under the lock, as `subscribe` counts: a subscriber joining meanwhile either
        // came first (a receiver remains) or finds no channel and makes a new one.
        let mut state = lock(&self.hub.state);
        if state
            .tenants
            .get(&self.tenant)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            state.tenants.remove(&self.tenant);
            self.hub.channels.set(state.tenants.len() as i64);
        }
    }
}

impl Hub {
    pub fn new(published: Published, capacity: usize, channels: IntGauge) -> Self {
        channels.set(0);
        Hub {
            state: Mutex::new(State {
                tenants: HashMap::new(),
                published,
            }),
            capacity,
            channels,
            batches: watch::Sender::new(0),
        }
    }

    /// Joins `tenant`'s fan-out. Every change beyond the returned boundary will arrive on
    /// the receiver; every change within it is in the journal.
    pub fn subscribe(self: &Arc<Self>, tenant: &TenantId) -> (Live, Published) {
        let mut state = lock(&self.state);
        let receiver = match state.tenants.get(tenant) {
            Some(sender) => sender.subscribe(),
            None => {
                let (sender, receiver) = broadcast::channel(self.capacity);
                state.tenants.insert(tenant.clone(), sender);
                self.channels.set(state.tenants.len() as i64);
                receiver
            }
        };
        let live = Live {
            receiver,
            _member: Member {
                hub: self.clone(),
                tenant: tenant.clone(),
            },
        };
        (live, state.published.clone())
    }

    /// Hands one page of changes, in journal order, to their tenants' subscribers and
    /// moves the boundary to `published`. Returns how many subscriber deliveries it queued.
    pub fn publish(&self, changes: Vec<Entry>, published: Published) -> usize {
        let mut state = lock(&self.state);
        let mut queued = 0;
        for change in changes {
            let Some(sender) = state.tenants.get(change.tenant()) else {
                continue;
            };
            match sender.send(Fanned::of(change)) {
                Ok(receivers) => queued += receivers,
                // Unreachable while `Member` removes the channel with its last
                // receiver; harmless if a receiver ever escapes a `Live`.
                Err(broadcast::error::SendError(_)) => {
                    state
                        .tenants
                        .retain(|_, sender| sender.receiver_count() > 0);
                    self.channels.set(state.tenants.len() as i64);
                }
            }
        }
        let complete = published.is_complete();
        state.published = published;
        if complete {
            self.batches.send_modify(|n| *n = n.wrapping_add(1));
        }
        queued
    }

    /// How many of `entries`, from the first, their tenants' channels take before the
    /// slowest receiver of one of them would lag (all of them when none would).
    pub fn fits(&self, entries: &[Entry]) -> usize {
        let state = lock(&self.state);
        let mut room: HashMap<&TenantId, usize> = HashMap::new();
        for (n, entry) in entries.iter().enumerate() {
            let tenant = entry.tenant();
            let Some(sender) = state.tenants.get(tenant) else {
                continue;
            };
            // `len`: what the receiver furthest behind has yet to receive.
            let left = room
                .entry(tenant)
                .or_insert_with(|| self.capacity.saturating_sub(sender.len()));
            if *left == 0 {
                return n;
            }
            *left -= 1;
        }
        entries.len()
    }

    /// Ends every tenant's channel: each receiver gets `Closed` once it has read what
    /// was sent before, and its subscription catches up from the journal (see
    /// `subscription`). For when live delivery can no longer vouch for completeness.
    pub fn cut_off_everyone(&self) {
        let mut state = lock(&self.state);
        state.tenants.clear();
        self.channels.set(0);
    }

    pub fn published(&self) -> Published {
        lock(&self.state).published.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{PgSnapshot, Position};
    use std::collections::HashSet;

    fn hub() -> Arc<Hub> {
        let start: PgSnapshot = "10:10:".parse().unwrap();
        let gauge = IntGauge::new("channels", "test").unwrap();
        Arc::new(Hub::new(
            Published::complete(Position::of_snapshot(start)),
            8,
            gauge,
        ))
    }

    fn tenant(name: &str) -> TenantId {
        TenantId::new(name).unwrap()
    }

    fn channels(hub: &Hub) -> usize {
        let count = lock(&hub.state).tenants.len();
        assert_eq!(hub.channels.get(), count as i64, "gauge follows the map");
        count
    }

    #[test]
    fn a_tenant_channel_goes_with_its_last_subscriber() {
        let hub = hub();
        let (first, _) = hub.subscribe(&tenant("acme"));
        let (second, _) = hub.subscribe(&tenant("acme"));
        let (other, _) = hub.subscribe(&tenant("globex"));
        assert_eq!(channels(&hub), 2);
        drop(first);
        assert_eq!(channels(&hub), 2, "acme still has a subscriber");
        drop(second);
        assert_eq!(channels(&hub), 1);
        drop(other);
        assert_eq!(channels(&hub), 0);
    }

    #[test]
    fn fits_counts_the_room_left_by_each_tenants_slowest_receiver() {
        use crate::journal::{Change, EventKind};
        let hub = hub();
        let change = |xid: u64, name: &str| {
            let mut change = Change::for_test(EventKind::Created, "r1", r#"{"id": "r1"}"#, None);
            change.id = xid as i64;
            change.xid = xid;
            change.tenant = tenant(name);
            Entry::Change(Arc::new(change))
        };
        let (mut slow, _) = hub.subscribe(&tenant("acme"));
        let (mut fast, _) = hub.subscribe(&tenant("acme"));
        let page: Vec<Entry> = (0..6).map(|n| change(10 + n, "acme")).collect();
        let published = hub.published();
        hub.publish(page, published.clone());
        while fast.receiver.try_recv().is_ok() {}
        // Capacity 8, six unread by `slow`: two more of acme fit; other tenants' always.
        let next = vec![
            change(20, "globex"),
            change(21, "acme"),
            change(22, "acme"),
            change(23, "globex"),
            change(24, "acme"),
        ];
        assert_eq!(hub.fits(&next), 4);
        for _ in 0..3 {
            slow.receiver.try_recv().unwrap();
        }
        assert_eq!(hub.fits(&next), 5);
    }

    #[test]
    fn a_replaced_subscription_keeps_the_channel() {
        // As after a lag: the new receiver is taken before the old one is dropped.
        let hub = hub();
        let (old, _) = hub.subscribe(&tenant("acme"));
        let (new, _) = hub.subscribe(&tenant("acme"));
        drop(old);
        assert_eq!(channels(&hub), 1);
        drop(new);
        assert_eq!(channels(&hub), 0);
    }

    #[test]
    fn many_tenants_coming_and_going_concurrently_leave_nothing() {
        let hub = hub();
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let hub = &hub;
                scope.spawn(move || {
                    for i in 0..500 {
                        let name = format!("t{}", (i + thread) % 7);
                        let (a, _) = hub.subscribe(&tenant(&name));
                        let (b, _) = hub.subscribe(&tenant(&name));
                        // Every receiver alive has its tenant's channel.
                        assert!(lock(&hub.state).tenants.contains_key(&tenant(&name)));
                        drop(a);
                        drop(b);
                    }
                });
            }
        });
        assert_eq!(channels(&hub), 0);
    }

    /// Property tests: random interleavings of subscribes, leaves, selection changes,
    /// pages published over many tenants, reads (or none: a receiver falling more than
    /// the capacity behind), large entries and cut-offs. Each simulated subscriber does
    /// what `subscription` does with what the hub gives it: delivers what its
    /// [`Selection`] decides, and on `Lagged`, `Closed` or a followed `InJournal` marker
    /// rejoins and reads the journal up to the new boundary. The hub must make that
    /// exact: every subscriber ends with precisely its tenant's entries its selection
    /// takes, in order, each once — and along the way the hub's promises hold one by one
    /// (see the assertions in `World`).
    mod properties {
        use super::*;
        use crate::journal::{Change, EventKind, PgSnapshot};
        use crate::selection::{Decision, RowFilter, Selection};
        use proptest::prelude::*;
        use serde_json::json;
        use tokio::sync::broadcast::error::TryRecvError;

        const TENANTS: [&str; 4] = ["t0", "t1", "t2", "t3"];
        /// Small, so receivers that read late lag often.
        const CAPACITY: usize = 8;
        const FIRST_XID: u64 = 10;

        fn selections() -> Vec<Selection> {
            let rows = |filters: &[&str]| -> Vec<RowFilter> {
                filters
                    .iter()
                    .map(|f| RowFilter::parse(f).unwrap())
                    .collect()
            };
            vec![
                Selection::default(),
                Selection {
                    types: Some(vec!["ticket".into()]),
                    ..Selection::default()
                },
                Selection {
                    types: Some(vec!["agent".into()]),
                    events: Some(vec![EventKind::Created, EventKind::Deleted]),
                    ..Selection::default()
                },
                Selection {
                    rows: rows(&["state=eq.open"]),
                    ..Selection::default()
                },
                Selection {
                    ids: Some(vec!["r1".into(), "r2".into()]),
                    ..Selection::default()
                },
                Selection {
                    types: Some(vec!["ticket".into()]),
                    events: Some(vec![EventKind::Created, EventKind::Updated]),
                    rows: rows(&["state=neq.open"]),
                    ..Selection::default()
                },
            ]
        }

        /// One row change to publish.
        #[derive(Clone, Debug)]
        struct Row {
            tenant: usize,
            agent: bool,
            event: usize,
            resource: usize,
            open: bool,
            /// Over the fan-out's limit: it travels as an `InJournal` marker.
            large: bool,
        }

        #[derive(Clone, Debug)]
        enum Op {
            Subscribe {
                tenant: usize,
                selection: usize,
            },
            Leave(usize),
            /// A WebSocket `subscribe` replacing the filter, resuming from its position.
            Select {
                sub: usize,
                selection: usize,
            },
            Publish(Vec<Row>),
            /// The subscriber reads up to `max` items (what it does not read piles up).
            Read {
                sub: usize,
                max: usize,
            },
            CutOff,
        }

        fn row() -> impl Strategy<Value = Row> {
            (
                0..TENANTS.len(),
                any::<bool>(),
                0..3usize,
                0..4usize,
                any::<bool>(),
                prop::bool::weighted(0.04),
            )
                .prop_map(|(tenant, agent, event, resource, open, large)| Row {
                    tenant,
                    agent,
                    event,
                    resource,
                    open,
                    large,
                })
        }

        fn op() -> impl Strategy<Value = Op> {
            let selections = selections().len();
            prop_oneof![
                3 => (0..TENANTS.len(), 0..selections)
                    .prop_map(|(tenant, selection)| Op::Subscribe { tenant, selection }),
                1 => any::<usize>().prop_map(Op::Leave),
                1 => (any::<usize>(), 0..selections)
                    .prop_map(|(sub, selection)| Op::Select { sub, selection }),
                5 => prop::collection::vec(row(), 1..12).prop_map(Op::Publish),
                5 => (any::<usize>(), 1..24usize).prop_map(|(sub, max)| Op::Read { sub, max }),
                1 => Just(Op::CutOff),
            ]
        }

        fn entry(xid: u64, row: &Row) -> Entry {
            let event = EventKind::ALL[row.event];
            let id = format!("r{}", row.resource);
            let state = if row.open { "open" } else { "closed" };
            let pad = if row.large {
                "x".repeat(FAN_OUT_MAX_BYTES)
            } else {
                String::new()
            };
            let resource = json!({"id": id, "state": state, "pad": pad}).to_string();
            let old = (event == EventKind::Updated)
                .then(|| json!({"state": if row.open { "closed" } else { "open" }}).to_string());
            let mut change = Change::for_test(event, &id, &resource, old.as_deref());
            change.id = xid as i64;
            change.xid = xid;
            change.tenant = tenant(TENANTS[row.tenant]);
            change.resource_type = if row.agent { "agent" } else { "ticket" }.into();
            Entry::Change(Arc::new(change))
        }

        /// "Everything published below `xid`": the tailer's boundary after a page.
        fn boundary(xid: u64) -> Published {
            Published::complete(Position::of_snapshot(PgSnapshot {
                xmin: xid,
                xmax: xid,
                xip: Vec::new(),
            }))
        }

        struct Sub {
            tenant: usize,
            live: Option<Live>,
            selection: usize,
            /// Every entry of its tenant below this xid is accounted for: delivered, or
            /// not of its selection.
            cursor: u64,
            start: u64,
            /// The selection in force from each xid on.
            segments: Vec<(u64, usize)>,
            delivered: Vec<u64>,
            /// Cut-offs made before its receiver joined.
            joined_after_cuts: usize,
        }

        struct World {
            hub: Arc<Hub>,
            selections: Vec<Selection>,
            /// Everything published, in order: entry `xid` at `xid - FIRST_XID`.
            journal: Vec<Entry>,
            next: u64,
            cuts: usize,
            subs: Vec<Sub>,
        }

        impl World {
            fn new() -> World {
                let gauge = IntGauge::new("channels", "test").unwrap();
                World {
                    hub: Arc::new(Hub::new(boundary(FIRST_XID), CAPACITY, gauge)),
                    selections: selections(),
                    journal: Vec::new(),
                    next: FIRST_XID,
                    cuts: 0,
                    subs: Vec::new(),
                }
            }

            fn of_tenant(&self, t: usize, from: u64, to: u64) -> Vec<Entry> {
                self.journal
                    .iter()
                    .filter(|e| e.tenant().as_str() == TENANTS[t])
                    .filter(|e| (from..to).contains(&e.xid()))
                    .cloned()
                    .collect()
            }

            /// Joins the tenant's fan-out: the boundary is exactly what was published.
            fn join(&self, t: usize) -> (Live, u64) {
                let (live, upto) = self.hub.subscribe(&tenant(TENANTS[t]));
                assert_eq!(upto, self.hub.published());
                assert_eq!(
                    upto.settled().snapshot().xmax,
                    self.next,
                    "the boundary is what was published"
                );
                (live, upto.settled().snapshot().xmax)
            }

            fn account(&mut self, i: usize, entry: &Entry) {
                let sub = &mut self.subs[i];
                match self.selections[sub.selection].decide(entry) {
                    Decision::Send(_) => sub.delivered.push(entry.xid()),
                    Decision::Skip => {}
                    Decision::Resync { .. } => panic!("no truncations here"),
                }
                sub.cursor = entry.xid() + 1;
            }

            /// What `subscription` does after a lag, a cut-off or a large entry: rejoin
            /// (the new receiver first), then read the journal up to the new boundary.
            fn catch_up(&mut self, i: usize) {
                let (live, upto) = self.join(self.subs[i].tenant);
                let old = self.subs[i].live.replace(live);
                drop(old);
                self.subs[i].joined_after_cuts = self.cuts;
                let (t, cursor) = (self.subs[i].tenant, self.subs[i].cursor);
                for entry in self.of_tenant(t, cursor, upto) {
                    self.account(i, &entry);
                }
                self.subs[i].cursor = upto;
            }

            /// Without a lag, a receiver hands over every entry of its tenant, in order.
            fn check_next(&self, i: usize, xid: u64) {
                let sub = &self.subs[i];
                assert!(
                    xid >= sub.cursor,
                    "entry {xid} again (cursor {})",
                    sub.cursor
                );
                let skipped = self.of_tenant(sub.tenant, sub.cursor, xid);
                assert!(
                    skipped.is_empty(),
                    "entries {:?} skipped without a lag",
                    skipped.iter().map(Entry::xid).collect::<Vec<_>>()
                );
            }

            fn read(&mut self, i: usize, max: usize) {
                for _ in 0..max {
                    let next = self.subs[i].live.as_mut().unwrap().receiver.try_recv();
                    let t = self.subs[i].tenant;
                    match next {
                        Ok(Fanned::Entry(entry)) => {
                            assert_eq!(entry.tenant().as_str(), TENANTS[t], "another tenant's");
                            self.check_next(i, entry.xid());
                            self.account(i, &entry);
                        }
                        Ok(Fanned::InJournal(marker)) => {
                            let entry = self.journal[(marker.xid - FIRST_XID) as usize].clone();
                            assert_eq!(entry.tenant().as_str(), TENANTS[t], "another tenant's");
                            assert!(entry.size_hint() > FAN_OUT_MAX_BYTES);
                            self.check_next(i, marker.xid);
                            let selection = &self.selections[self.subs[i].selection];
                            let followed = selection.follows_type(&marker.name)
                                && selection.may_include_id(marker.resource_id.as_deref());
                            if followed {
                                self.catch_up(i);
                            } else {
                                // The marker alone must never skip what would be sent.
                                assert!(matches!(selection.decide(&entry), Decision::Skip));
                                self.account(i, &entry);
                            }
                        }
                        Err(TryRecvError::Empty) => return,
                        Err(TryRecvError::Lagged(_)) => {
                            let sub = &self.subs[i];
                            let behind = self.of_tenant(t, sub.cursor, self.next).len();
                            assert!(behind > CAPACITY, "lagged only {behind} behind");
                            self.catch_up(i);
                        }
                        Err(TryRecvError::Closed) => {
                            assert!(self.cuts > self.subs[i].joined_after_cuts, "closed");
                            self.catch_up(i);
                        }
                    }
                }
            }

            fn apply(&mut self, op: Op) {
                match op {
                    Op::Subscribe { tenant, selection } => {
                        let (live, upto) = self.join(tenant);
                        self.subs.push(Sub {
                            tenant,
                            live: Some(live),
                            selection,
                            cursor: upto,
                            start: upto,
                            segments: vec![(upto, selection)],
                            delivered: Vec::new(),
                            joined_after_cuts: self.cuts,
                        });
                    }
                    Op::Leave(i) if !self.subs.is_empty() => {
                        let i = i % self.subs.len();
                        self.subs.remove(i);
                    }
                    Op::Select { sub, selection } if !self.subs.is_empty() => {
                        // As `ws` does: the old subscription ends, the new one resumes from
                        // the connection's position (the last entry it accounted for).
                        let i = sub % self.subs.len();
                        drop(self.subs[i].live.take());
                        let cursor = self.subs[i].cursor;
                        self.subs[i].selection = selection;
                        self.subs[i].segments.push((cursor, selection));
                        self.catch_up(i);
                    }
                    Op::Publish(rows) => {
                        let page: Vec<Entry> = rows
                            .iter()
                            .enumerate()
                            .map(|(n, row)| entry(self.next + n as u64, row))
                            .collect();
                        self.next += page.len() as u64;
                        self.journal.extend(page.iter().cloned());
                        self.hub.publish(page, boundary(self.next));
                    }
                    Op::Read { sub, max } if !self.subs.is_empty() => {
                        self.read(sub % self.subs.len(), max);
                    }
                    Op::CutOff => {
                        self.hub.cut_off_everyone();
                        self.cuts += 1;
                    }
                    _ => {}
                }
                // A channel exists exactly for the tenants with a receiver that joined
                // since the last cut-off.
                let joined: HashSet<usize> = self
                    .subs
                    .iter()
                    .filter(|s| s.joined_after_cuts == self.cuts)
                    .map(|s| s.tenant)
                    .collect();
                assert_eq!(channels(&self.hub), joined.len());
            }

            /// Reads everything left; then each subscriber must hold exactly what its
            /// tenant published since it joined and its selections take, in order.
            fn finish(mut self) {
                for i in 0..self.subs.len() {
                    self.read(i, usize::MAX);
                    let sub = &self.subs[i];
                    assert!(
                        self.of_tenant(sub.tenant, sub.cursor, self.next).is_empty(),
                        "entries never reached a subscriber"
                    );
                    let expected: Vec<u64> = self
                        .of_tenant(sub.tenant, sub.start, self.next)
                        .iter()
                        .filter(|entry| {
                            let (_, selection) = sub
                                .segments
                                .iter()
                                .rev()
                                .find(|(from, _)| *from <= entry.xid())
                                .unwrap();
                            matches!(self.selections[*selection].decide(entry), Decision::Send(_))
                        })
                        .map(Entry::xid)
                        .collect();
                    assert_eq!(sub.delivered, expected);
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn every_subscriber_gets_exactly_its_tenants_selected_entries_in_order(
                ops in prop::collection::vec(op(), 1..120)
            ) {
                let mut world = World::new();
                for op in ops {
                    world.apply(op);
                }
                world.finish();
            }
        }
    }
}
