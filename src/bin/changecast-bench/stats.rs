//! Numbers: a latency histogram cheap enough to keep one per subscriber, and the
//! median (min–max) of a figure over several runs. No I/O here.

use std::fmt::Write as _;

/// Exact buckets below this many microseconds; above, 64 buckets per power of two.
const LINEAR_US: u64 = 1024;
const SUB_BUCKETS: u64 = 64;
const BUCKETS: usize = (LINEAR_US + 44 * SUB_BUCKETS) as usize;

/// Latencies in microseconds: exact below 1.024 ms, within 1.6 % above.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u32>,
    total: u64,
    max_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max_us: 0,
        }
    }
}

fn bucket(us: u64) -> usize {
    if us < LINEAR_US {
        return us as usize;
    }
    let exp = 63 - u64::from(us.leading_zeros()); // >= 10
    let sub = (us >> (exp - 6)) & (SUB_BUCKETS - 1);
    ((LINEAR_US + (exp - 10) * SUB_BUCKETS + sub) as usize).min(BUCKETS - 1)
}

/// The smallest value that falls into bucket `index`.
fn lower_bound(index: usize) -> u64 {
    let index = index as u64;
    if index < LINEAR_US {
        return index;
    }
    let exp = (index - LINEAR_US) / SUB_BUCKETS + 10;
    let sub = (index - LINEAR_US) % SUB_BUCKETS;
    (1 << exp) + (sub << (exp - 6))
}

impl Histogram {
    pub fn record_ns(&mut self, ns: u64) {
        let us = ns / 1000;
        self.counts[bucket(us)] += 1;
        self.total += 1;
        self.max_us = self.max_us.max(us);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max_us = self.max_us.max(other.max_us);
    }

    pub fn len(&self) -> u64 {
        self.total
    }

    /// The `q`-quantile (0..=1) in milliseconds, nearest rank; `None` when empty.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        if q >= 1.0 {
            return Some(self.max_us as f64 / 1000.0);
        }
        let rank = ((q * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (index, count) in self.counts.iter().enumerate() {
            seen += u64::from(*count);
            if seen >= rank {
                return Some(lower_bound(index).min(self.max_us) as f64 / 1000.0);
            }
        }
        Some(self.max_us as f64 / 1000.0)
    }
}

/// One figure of one run.
#[derive(Clone, Debug)]
pub struct Figure {
    pub name: String,
    pub unit: &'static str,
    pub value: f64,
}

/// What one run of a mode measured, plus remarks (bottlenecks, warnings).
#[derive(Default, Debug)]
pub struct RunReport {
    pub figures: Vec<Figure>,
    pub notes: Vec<String>,
}

impl RunReport {
    pub fn add(&mut self, name: impl Into<String>, unit: &'static str, value: f64) {
        self.figures.push(Figure {
            name: name.into(),
            unit,
            value,
        });
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }
}

/// Median, min and max of `values` (NaN-free); `None` when empty.
pub fn median_min_max(values: &[f64]) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    Some((median, sorted[0], sorted[n - 1]))
}

/// A number with as many decimals as it needs to be read at a glance.
pub fn fmt_num(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 1000.0 || (value == value.trunc() && magnitude < 1e15) {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// A Markdown table: every figure's median and min–max over the runs, then each run.
pub fn summary_table(runs: &[RunReport]) -> String {
    let mut names: Vec<(&str, &'static str)> = Vec::new();
    for run in runs {
        for figure in &run.figures {
            if !names.iter().any(|(n, _)| *n == figure.name) {
                names.push((&figure.name, figure.unit));
            }
        }
    }
    let mut out = String::new();
    let _ = write!(out, "| figure | unit | median | min–max |");
    for i in 1..=runs.len() {
        let _ = write!(out, " run {i} |");
    }
    out.push('\n');
    out.push_str("|---|---|---:|---:|");
    out.push_str(&"---:|".repeat(runs.len()));
    out.push('\n');
    for (name, unit) in names {
        let values: Vec<Option<f64>> = runs
            .iter()
            .map(|run| run.figures.iter().find(|f| f.name == name).map(|f| f.value))
            .collect();
        let present: Vec<f64> = values.iter().flatten().copied().collect();
        let Some((median, min, max)) = median_min_max(&present) else {
            continue;
        };
        let _ = write!(
            out,
            "| {name} | {unit} | {} | {}–{} |",
            fmt_num(median),
            fmt_num(min),
            fmt_num(max)
        );
        for value in values {
            let _ = write!(out, " {} |", value.map_or("–".into(), fmt_num));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_trip_within_their_precision() {
        for us in [
            0, 1, 999, 1023, 1024, 1500, 2047, 2048, 10_000, 123_456, 5_000_000,
        ] {
            let low = lower_bound(bucket(us));
            assert!(low <= us, "{us}: {low}");
            assert!((us - low) as f64 <= us as f64 / 64.0 + 1.0, "{us}: {low}");
        }
        for index in 0..BUCKETS - 1 {
            assert!(lower_bound(index) < lower_bound(index + 1));
            assert_eq!(bucket(lower_bound(index)), index);
        }
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let mut histogram = Histogram::default();
        assert_eq!(histogram.quantile_ms(0.5), None);
        for us in 1..=100u64 {
            histogram.record_ns(us * 1000);
        }
        assert_eq!(histogram.quantile_ms(0.5), Some(0.050));
        assert_eq!(histogram.quantile_ms(0.99), Some(0.099));
        assert_eq!(histogram.quantile_ms(1.0), Some(0.100));
        let mut other = Histogram::default();
        other.record_ns(7_000_000);
        histogram.merge(&other);
        assert_eq!(histogram.len(), 101);
        assert_eq!(histogram.quantile_ms(1.0), Some(7.0));
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median_min_max(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(median_min_max(&[4.0, 1.0, 2.0, 3.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(median_min_max(&[]), None);
    }

    #[test]
    fn table_lists_each_figure_once() {
        let mut a = RunReport::default();
        a.add("p50", "ms", 1.0);
        let mut b = RunReport::default();
        b.add("p50", "ms", 3.0);
        b.add("missing", "events", 0.0);
        let table = summary_table(&[a, b]);
        assert!(table.contains("| p50 | ms | 2 | 1–3 | 1 | 3 |"), "{table}");
        assert!(
            table.contains("| missing | events | 0 | 0–0 | – | 0 |"),
            "{table}"
        );
    }
}
