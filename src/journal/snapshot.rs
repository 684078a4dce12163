//! `PgSnapshot`: PostgreSQL's `pg_snapshot` (`xmin:xmax:xip,...`) in Rust, so cursors
//! can carry one and live events can be checked against one without a query.

use std::fmt;
use std::str::FromStr;

/// Which transactions a snapshot sees as committed.
///
/// A transaction id `x` is visible when `x < xmin`, or when `x < xmax` and `x` is not in
/// `xip` (it was still running when the snapshot was taken). Same rule as
/// `pg_visible_in_snapshot`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgSnapshot {
    pub xmin: u64,
    pub xmax: u64,
    /// In-progress transaction ids, sorted, each in `xmin..xmax`.
    pub xip: Vec<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a pg_snapshot: {0:?}")]
pub struct SnapshotParseError(pub String);

impl PgSnapshot {
    pub fn sees(&self, xid: u64) -> bool {
        xid < self.xmin || (xid < self.xmax && self.xip.binary_search(&xid).is_err())
    }

    /// Whether this snapshot sees every transaction id below `horizon`.
    pub fn sees_all_below(&self, horizon: u64) -> bool {
        horizon <= self.xmin || (horizon <= self.xmax && self.xip.iter().all(|&x| x >= horizon))
    }

    /// The same snapshot, but treating `xid` as still running. A writer's snapshot does
    /// not list the writer itself, and its other rows must not count as seen.
    pub fn not_seeing(mut self, xid: u64) -> Self {
        if xid >= self.xmin && xid < self.xmax {
            if let Err(at) = self.xip.binary_search(&xid) {
                self.xip.insert(at, xid);
            }
        }
        self
    }

    /// A snapshot with at most `max_xip` running transactions that sees no more than
    /// `self`: it keeps the oldest `max_xip` and stops seeing anything from the next one
    /// on. Cursors stay short; a resume from one just replays a few more rows.
    pub fn bounded(mut self, max_xip: usize) -> Self {
        if self.xip.len() > max_xip {
            self.xmax = self.xip[max_xip];
            self.xip.truncate(max_xip);
        }
        self
    }

    fn is_valid(&self) -> bool {
        self.xmin <= self.xmax
            && self.xip.windows(2).all(|w| w[0] < w[1])
            && self.xip.iter().all(|x| (self.xmin..self.xmax).contains(x))
    }
}

impl fmt::Display for PgSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:", self.xmin, self.xmax)?;
        for (i, x) in self.xip.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{x}")?;
        }
        Ok(())
    }
}

impl FromStr for PgSnapshot {
    type Err = SnapshotParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || SnapshotParseError(s.to_owned());
        let mut parts = s.splitn(3, ':');
        let number = |part: Option<&str>| part.and_then(|p| p.parse::<u64>().ok()).ok_or_else(bad);
        let xmin = number(parts.next())?;
        let xmax = number(parts.next())?;
        let list = parts.next().ok_or_else(bad)?;
        let xip = if list.is_empty() {
            Vec::new()
        } else {
            list.split(',')
                .map(|x| x.parse::<u64>().map_err(|_| bad()))
                .collect::<Result<_, _>>()?
        };
        let snapshot = PgSnapshot { xmin, xmax, xip };
        if snapshot.is_valid() {
            Ok(snapshot)
        } else {
            Err(bad())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_postgres_format() {
        for text in ["10:20:", "10:20:12,15", "5:5:"] {
            assert_eq!(text.parse::<PgSnapshot>().unwrap().to_string(), text);
        }
        for text in [
            "",
            "10:20",
            "20:10:",
            "10:20:25",
            "10:20:15,12",
            "a:b:",
            "10:20:12,",
        ] {
            assert!(
                text.parse::<PgSnapshot>().is_err(),
                "{text} should not parse"
            );
        }
    }

    #[test]
    fn visibility_follows_pg_visible_in_snapshot() {
        let s: PgSnapshot = "10:20:12,15".parse().unwrap();
        assert!(s.sees(9));
        assert!(s.sees(10));
        assert!(!s.sees(12));
        assert!(s.sees(13));
        assert!(!s.sees(20));
        assert!(!s.clone().not_seeing(13).sees(13));
        assert!(
            s.clone().not_seeing(25).sees(9),
            "out-of-range xid changes nothing"
        );
    }

    #[test]
    fn sees_all_below_matches_sees() {
        let s: PgSnapshot = "10:20:12,15".parse().unwrap();
        for horizon in 0..30 {
            let expected = (0..horizon).all(|x| s.sees(x));
            assert_eq!(s.sees_all_below(horizon), expected, "horizon {horizon}");
        }
    }

    #[test]
    fn bounded_never_sees_more() {
        let s: PgSnapshot = "10:20:12,15".parse().unwrap();
        let b = s.clone().bounded(1);
        for x in 0..30 {
            assert!(
                !b.sees(x) || s.sees(x),
                "bounded sees {x} which the original does not"
            );
        }
        assert_eq!(s.clone().bounded(2), s);
    }
}
