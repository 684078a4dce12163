//! Live statistics per tenant (API.md §10): events of the last 60 s by resource type or
//! topic, and when the last one happened. Counted as the hub publishes, so every
//! instance counts the journal's committed entries (not deliveries), whoever listens.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::journal::Entry;
use crate::selection::Bounds;
use crate::sync::lock;
use crate::tenant::TenantId;

/// The window `events_per_minute` covers, in one-second buckets.
const WINDOW_SECONDS: usize = 60;
/// A tenant without events for this long is forgotten (its `last_event_at` with it).
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);
/// How often forgotten tenants are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Activity {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    tenants: HashMap<TenantId, TenantActivity>,
    last_sweep: Option<Instant>,
}

struct TenantActivity {
    /// Apart, since a scope allows each by its own rules (and a topic may share a
    /// type's name).
    by_type: HashMap<String, Buckets>,
    by_topic: HashMap<String, Buckets>,
    last_event_at: String,
    last_seen: Instant,
}

/// Counts per second of the last minute: `stamps[i]` says which second `counts[i]` is of.
struct Buckets {
    stamps: [u64; WINDOW_SECONDS],
    counts: [u32; WINDOW_SECONDS],
}

impl Buckets {
    fn add(&mut self, second: u64) {
        let slot = (second % WINDOW_SECONDS as u64) as usize;
        if self.stamps[slot] != second {
            self.stamps[slot] = second;
            self.counts[slot] = 0;
        }
        self.counts[slot] = self.counts[slot].saturating_add(1);
    }

    fn last_minute(&self, now: u64) -> u64 {
        self.stamps
            .iter()
            .zip(self.counts)
            .filter(|(stamp, _)| now.saturating_sub(**stamp) < WINDOW_SECONDS as u64)
            .map(|(_, count)| u64::from(count))
            .sum()
    }
}

/// The `/v1/stats` object.
#[derive(Serialize)]
pub struct Report {
    pub tenant_id: String,
    pub subscribers: Subscribers,
    pub events_per_minute: BTreeMap<String, u64>,
    pub last_event_at: Option<String>,
    pub server_time: String,
}

/// Connected subscribers by transport label (`{"sse": 3, "ws": 1}`).
pub type Subscribers = BTreeMap<&'static str, usize>;

impl Activity {
    /// Counts a page of published entries (row changes and application events).
    pub fn record(&self, entries: &[Entry]) {
        let second = unix_seconds(SystemTime::now());
        let now = Instant::now();
        let mut state = lock(&self.state);
        for entry in entries {
            let (is_type, name, occurred_at) = match entry {
                Entry::Change(change) => (true, &change.resource_type, &change.occurred_at),
                Entry::AppEvent(event) => (false, &event.topic, &event.occurred_at),
                Entry::Resync(_) => continue,
            };
            // Keys are cloned only the first time a tenant or name is seen.
            if !state.tenants.contains_key(entry.tenant()) {
                let fresh = TenantActivity {
                    by_type: HashMap::new(),
                    by_topic: HashMap::new(),
                    last_event_at: String::new(),
                    last_seen: now,
                };
                state.tenants.insert(entry.tenant().clone(), fresh);
            }
            let tenant = state
                .tenants
                .get_mut(entry.tenant())
                .expect("BUG: inserted above");
            let by_name = if is_type {
                &mut tenant.by_type
            } else {
                &mut tenant.by_topic
            };
            if !by_name.contains_key(name) {
                let fresh = Buckets {
                    stamps: [0; WINDOW_SECONDS],
                    counts: [0; WINDOW_SECONDS],
                };
                by_name.insert(name.clone(), fresh);
            }
            by_name
                .get_mut(name)
                .expect("BUG: inserted above")
                .add(second);
            tenant.last_event_at.clone_from(occurred_at);
            tenant.last_seen = now;
        }
        if state
            .last_sweep
            .is_none_or(|at| now.duration_since(at) >= SWEEP_EVERY)
        {
            state.last_sweep = Some(now);
            state
                .tenants
                .retain(|_, t| now.duration_since(t.last_seen) < FORGET_AFTER);
            let minute_ago = second.saturating_sub(WINDOW_SECONDS as u64);
            for tenant in state.tenants.values_mut() {
                for by_name in [&mut tenant.by_type, &mut tenant.by_topic] {
                    by_name.retain(|_, buckets| buckets.stamps.iter().any(|s| *s > minute_ago));
                }
            }
        }
    }

    /// `tenant`'s report, with its connected subscribers as counted by the caller, as a
    /// holder of `scope` may see it: `events_per_minute` lists only the resource types
    /// and topics the scope allows (a scope's row filters do not narrow the counts).
    pub fn report(&self, tenant: &TenantId, subscribers: Subscribers, scope: &Bounds) -> Report {
        let now = SystemTime::now();
        let second = unix_seconds(now);
        let state = lock(&self.state);
        let activity = state.tenants.get(tenant);
        let mut events_per_minute: BTreeMap<String, u64> = BTreeMap::new();
        if let Some(activity) = activity {
            let types = activity
                .by_type
                .iter()
                .filter(|(name, _)| scope.allows_type(name));
            let topics = activity
                .by_topic
                .iter()
                .filter(|(name, _)| scope.allows_topic(name));
            for (name, buckets) in types.chain(topics) {
                let count = buckets.last_minute(second);
                if count > 0 {
                    *events_per_minute.entry(name.clone()).or_default() += count;
                }
            }
        }
        Report {
            tenant_id: tenant.as_str().to_owned(),
            subscribers,
            events_per_minute,
            last_event_at: activity.map(|a| a.last_event_at.clone()),
            server_time: rfc3339_seconds(now),
        }
    }
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// `2026-11-21T10:30:04Z` (UTC, whole seconds).
pub fn rfc3339_seconds(time: SystemTime) -> String {
    let seconds = unix_seconds(time);
    let (days, of_day) = (seconds / 86_400, seconds % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |s| rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_795_263_004), "2026-11-21T12:10:04Z");
    }

    #[test]
    fn buckets_count_the_last_minute_only() {
        let mut buckets = Buckets {
            stamps: [0; WINDOW_SECONDS],
            counts: [0; WINDOW_SECONDS],
        };
        buckets.add(1000);
        buckets.add(1000);
        buckets.add(1030);
        assert_eq!(buckets.last_minute(1030), 3);
        assert_eq!(buckets.last_minute(1059), 3);
        assert_eq!(buckets.last_minute(1060), 1, "second 1000 left the window");
        buckets.add(1060);
        assert_eq!(buckets.last_minute(1060), 2, "the slot of 1000 was reused");
    }
}
