//! The attempts of one backend call, as the console's waterfall shows them: kept in
//! the call's result without allocating (a call makes a handful of attempts at most;
//! past [`MARKS`], the rest are only counted).

use std::time::Duration;

use tokio::time::Instant;

use crate::base::error::Outcome;

/// Attempts a trail holds.
pub const MARKS: usize = 6;

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptEnd {
    Done(Outcome),
    /// Dropped when the other attempt of its hedged round answered first.
    Cancelled,
}

impl AttemptEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptEnd::Done(o) => o.as_str(),
            AttemptEnd::Cancelled => "cancelled",
        }
    }
}

/// One attempt as it is read back: which of the upstream's `urls`, when it began,
/// how long it took, how it ended.
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    pub host: usize,
    pub start: Instant,
    pub took: Duration,
    pub end: AttemptEnd,
    pub hedge: bool,
}

impl Mark {
    pub fn new(host: usize, start: Instant, took: Duration, end: AttemptEnd, hedge: bool) -> Self {
        Mark {
            host,
            start,
            took,
            end,
            hedge,
        }
    }
}

/// An attempt as the trail holds it: 12 bytes, offsets in microseconds from the
/// trail's start (a call is bounded by its route's deadline). Small, because every
/// call's result carries the trail and is moved a few times.
#[derive(Clone, Copy, Debug)]
struct Packed {
    start_us: u32,
    took_us: u32,
    host: u16,
    end: AttemptEnd,
    hedge: bool,
}

const EMPTY: Packed = Packed {
    start_us: 0,
    took_us: 0,
    host: 0,
    end: AttemptEnd::Cancelled,
    hedge: false,
};

#[derive(Clone, Copy, Debug)]
pub struct Trail {
    /// When the call began: the first attempt's start, unless [`Trail::begin`] said.
    base: Option<Instant>,
    marks: [Packed; MARKS],
    len: u8,
    /// Attempts past [`MARKS`].
    pub more: u16,
}

impl Default for Trail {
    fn default() -> Self {
        Trail {
            base: None,
            marks: [EMPTY; MARKS],
            len: 0,
            more: 0,
        }
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

impl Trail {
    /// Sets where offsets count from, before attempts that may end out of order
    /// (a hedged round's).
    pub fn begin(&mut self, at: Instant) {
        self.base.get_or_insert(at);
    }

    pub fn push(&mut self, m: Mark) {
        let base = *self.base.get_or_insert(m.start);
        match self.marks.get_mut(usize::from(self.len)) {
            Some(slot) => {
                *slot = Packed {
                    start_us: micros(m.start.saturating_duration_since(base)),
                    took_us: micros(m.took),
                    host: u16::try_from(m.host).unwrap_or(u16::MAX),
                    end: m.end,
                    hedge: m.hedge,
                };
                self.len += 1;
            }
            None => self.more = self.more.saturating_add(1),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = Mark> + '_ {
        let base = self.base;
        self.marks[..usize::from(self.len)]
            .iter()
            .filter_map(move |p| {
                let start = base? + Duration::from_micros(u64::from(p.start_us));
                let host = if p.host == u16::MAX {
                    usize::MAX
                } else {
                    usize::from(p.host)
                };
                Some(Mark::new(
                    host,
                    start,
                    Duration::from_micros(u64::from(p.took_us)),
                    p.end,
                    p.hedge,
                ))
            })
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Attempts noted, those past [`MARKS`] included.
    pub fn len(&self) -> usize {
        usize::from(self.len) + usize::from(self.more)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trail_keeps_its_first_attempts_and_counts_the_rest() {
        let mut t = Trail::default();
        let now = Instant::now();
        for i in 0..MARKS + 3 {
            t.push(Mark::new(
                i,
                now,
                Duration::from_millis(1),
                AttemptEnd::Cancelled,
                false,
            ));
        }
        assert_eq!(t.iter().count(), MARKS);
        assert_eq!(t.more, 3);
        assert_eq!(t.iter().last().map(|m| m.host), Some(MARKS - 1));
        assert_eq!(t.len(), MARKS + 3);
        assert!(
            std::mem::size_of::<Trail>() <= 96,
            "{}",
            std::mem::size_of::<Trail>()
        );
        // Offsets count from `begin`, whatever order attempts end in.
        let mut t = Trail::default();
        t.begin(now);
        let later = now + Duration::from_millis(30);
        let won = AttemptEnd::Done(Outcome::Ok);
        t.push(Mark::new(1, later, Duration::from_millis(5), won, true));
        t.push(Mark::new(
            0,
            now,
            Duration::from_millis(35),
            AttemptEnd::Cancelled,
            false,
        ));
        let got: Vec<Mark> = t.iter().collect();
        assert_eq!((got[0].start, got[0].host, got[0].hedge), (later, 1, true));
        assert_eq!(
            (got[1].start, got[1].took),
            (now, Duration::from_millis(35))
        );
        assert_eq!(got[1].end.as_str(), "cancelled");
        assert_eq!(Trail::default().iter().count(), 0);
    }
}
