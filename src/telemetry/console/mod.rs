//! The console's own record (docs/operations.md#the-console): rates and latencies per
//! route and upstream ([`window`]), the last slow and failed requests with their
//! waterfalls, and the last failed backends. It needs no trace exporter.
//!
//! Recording costs a request a few unshared atomic adds ([`window`]); a lock is taken,
//! and memory allocated, only for what is kept: a slow or failed request, a failed
//! backend. Everything kept is bounded, and holds no header value, query or
//! credential: names, times, statuses, outcomes, hosts and causes.

pub mod trail;
pub mod window;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde::ser::Serializer;

use crate::base::error::Outcome;
use trail::AttemptEnd;

/// Requests kept of each kind.
pub const KEPT: usize = 50;
/// Failed backends kept.
pub const FAILURES: usize = 100;
/// Rows of a kept request's waterfall (its backends and their attempts).
pub const SPANS: usize = 64;

/// Which list a kept request is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Took longer than `[admin] slow`.
    Slow,
    /// Answered with a status ≥ 500, or with a failed optional backend (`partial`).
    Failed,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "slow" => Some(Kind::Slow),
            "failed" => Some(Kind::Failed),
            _ => None,
        }
    }
}

/// A kept request: its waterfall.
#[derive(Debug, Serialize)]
pub struct Kept {
    pub request_id: Box<str>,
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
    #[serde(serialize_with = "text")]
    pub route: Arc<str>,
    pub status: u16,
    /// An optional backend failed: the answer is partial.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
    #[serde(serialize_with = "ms")]
    pub duration_ms: Duration,
    pub backends: Vec<KeptBackend>,
    /// Rows left out past [`SPANS`].
    #[serde(skip_serializing_if = "is_zero")]
    pub spans_dropped: usize,
}

#[derive(Debug, Serialize)]
pub struct KeptBackend {
    #[serde(serialize_with = "text")]
    pub name: Arc<str>,
    #[serde(serialize_with = "text")]
    pub upstream: Arc<str>,
    #[serde(serialize_with = "ms")]
    pub start_ms: Duration,
    #[serde(serialize_with = "ms")]
    pub duration_ms: Duration,
    #[serde(serialize_with = "outcome")]
    pub outcome: Outcome,
    /// `hit` or `miss`, for a backend with `cache_ttl`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<&'static str>,
    /// Answered by sharing an identical call another request made.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub coalesced: bool,
    pub attempts: Vec<KeptAttempt>,
}

#[derive(Debug, Serialize)]
pub struct KeptAttempt {
    #[serde(serialize_with = "text")]
    pub host: Arc<str>,
    #[serde(serialize_with = "ms")]
    pub start_ms: Duration,
    #[serde(serialize_with = "ms")]
    pub duration_ms: Duration,
    #[serde(serialize_with = "attempt_end")]
    pub outcome: AttemptEnd,
    pub hedge: bool,
}

/// One failed backend, as its `backend failed` log line tells it.
#[derive(Debug, Serialize)]
pub struct FailedBackend {
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
    pub request_id: Box<str>,
    #[serde(serialize_with = "text")]
    pub route: Arc<str>,
    #[serde(serialize_with = "text")]
    pub backend: Arc<str>,
    #[serde(serialize_with = "text")]
    pub upstream: Arc<str>,
    #[serde(serialize_with = "outcome")]
    pub outcome: Outcome,
    pub cause: String,
}

/// A kept request as `/requests?kind=` lists it.
#[derive(Debug, Serialize)]
pub struct Listed<'a> {
    pub request_id: &'a str,
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
    pub route: &'a str,
    pub status: u16,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
    #[serde(serialize_with = "ms")]
    pub duration_ms: Duration,
}

/// The kept requests and failures of one server, across reloads.
#[derive(Default)]
pub struct Console {
    slow: Mutex<VecDeque<Arc<Kept>>>,
    failed: Mutex<VecDeque<Arc<Kept>>>,
    failures: Mutex<VecDeque<FailedBackend>>,
}

impl Console {
    pub fn keep(&self, kept: Kept, slow: bool, failed: bool) {
        let kept = Arc::new(kept);
        for (list, yes) in [(&self.slow, slow), (&self.failed, failed)] {
            if yes && let Ok(mut l) = list.lock() {
                if l.len() == KEPT {
                    l.pop_back();
                }
                l.push_front(kept.clone());
            }
        }
    }

    pub fn failure(&self, f: FailedBackend) {
        if let Ok(mut l) = self.failures.lock() {
            if l.len() == FAILURES {
                l.pop_back();
            }
            l.push_front(f);
        }
    }

    /// Newest first.
    pub fn requests(&self, kind: Kind) -> Vec<Arc<Kept>> {
        let list = match kind {
            Kind::Slow => &self.slow,
            Kind::Failed => &self.failed,
        };
        list.lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn request(&self, id: &str) -> Option<Arc<Kept>> {
        [&self.failed, &self.slow].into_iter().find_map(|list| {
            list.lock()
                .ok()?
                .iter()
                .find(|k| &*k.request_id == id)
                .cloned()
        })
    }

    /// The last failed backends, newest first, serialized as they are read.
    pub fn failures<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.failures.lock() {
            Ok(l) => s.collect_seq(l.iter()),
            Err(_) => s.collect_seq(std::iter::empty::<FailedBackend>()),
        }
    }
}

/// RFC 3339 UTC with milliseconds, as every log line's timestamp.
fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

/// Milliseconds with three decimals.
fn ms<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1_000_000.0).round() / 1000.0)
}

fn outcome<S: Serializer>(o: &Outcome, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(o.as_str())
}

fn attempt_end<S: Serializer>(o: &AttemptEnd, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(o.as_str())
}

fn text<S: Serializer>(t: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(t)
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(id: &str) -> Kept {
        Kept {
            request_id: id.into(),
            at: SystemTime::UNIX_EPOCH,
            route: Arc::from("r"),
            status: 502,
            partial: false,
            duration_ms: Duration::from_micros(1500),
            backends: Vec::new(),
            spans_dropped: 0,
        }
    }

    #[test]
    fn the_lists_are_bounded_and_newest_first() {
        let c = Console::default();
        for i in 0..KEPT + 5 {
            c.keep(kept(&i.to_string()), i % 2 == 0, true);
        }
        let failed = c.requests(Kind::Failed);
        assert_eq!(failed.len(), KEPT);
        assert_eq!(&*failed[0].request_id, (KEPT + 4).to_string());
        assert_eq!(
            c.requests(Kind::Slow).len(),
            (KEPT + 5).div_ceil(2).min(KEPT)
        );
        assert!(c.request("1").is_none(), "pushed out");
        assert!(c.request("54").is_some());
        let json = serde_json::to_value(&*failed[0]).unwrap();
        assert_eq!(json["duration_ms"], 1.5);
        assert_eq!(json["at"], "1970-01-01T00:00:00.000Z");
        for i in 0..FAILURES + 1 {
            c.failure(FailedBackend {
                at: SystemTime::UNIX_EPOCH,
                request_id: i.to_string().into(),
                route: Arc::from("r"),
                backend: Arc::from("b"),
                upstream: Arc::from("u"),
                outcome: Outcome::Timeout,
                cause: "timed out".into(),
            });
        }
        let v = c.failures(serde_json::value::Serializer).unwrap();
        assert_eq!(v.as_array().map(Vec::len), Some(FAILURES));
        assert_eq!(v[0]["request_id"], FAILURES.to_string());
        assert_eq!(v[0]["outcome"], "timeout");
    }
}
