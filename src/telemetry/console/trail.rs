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

/// One attempt: which of the upstream's `urls`, when it began, how long it took.
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    pub start: Instant,
    /// Microseconds (an attempt is bounded by its route's deadline).
    pub took_us: u32,
    pub host: u16,
    pub end: AttemptEnd,
    pub hedge: bool,
}

impl Mark {
    pub fn new(host: usize, start: Instant, took: Duration, end: AttemptEnd, hedge: bool) -> Self {
        Mark {
            start,
            took_us: u32::try_from(took.as_micros()).unwrap_or(u32::MAX),
            host: u16::try_from(host).unwrap_or(u16::MAX),
            end,
            hedge,
        }
    }

    pub fn took(&self) -> Duration {
        Duration::from_micros(u64::from(self.took_us))
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Trail {
    marks: [Option<Mark>; MARKS],
    len: u8,
    /// Attempts past [`MARKS`].
    pub more: u16,
}

impl Trail {
    pub fn push(&mut self, m: Mark) {
        match self.marks.get_mut(usize::from(self.len)) {
            Some(slot) => {
                *slot = Some(m);
                self.len += 1;
            }
            None => self.more = self.more.saturating_add(1),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Mark> {
        self.marks.iter().flatten()
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
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
        assert_eq!(t.iter().last().map(|m| m.host), Some(MARKS as u16 - 1));
        assert!(
            std::mem::size_of::<Trail>() <= 200,
            "{}",
            std::mem::size_of::<Trail>()
        );
    }
}
