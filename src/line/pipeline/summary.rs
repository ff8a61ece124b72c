//! The run's summary: answer counts and latency percentiles, printed when a line session ends
//! and by `demo` and `soak`.

use std::collections::BTreeMap;

use crate::judge::inspect::Verdict;
use crate::line::protocol::Answer;

/// Counts and latency percentiles of a run (latencies kept in 1%-wide buckets, so memory
/// stays flat however long the line runs).
#[derive(Default, Debug)]
pub struct Summary {
    pub answers: u64,
    pub ok: u64,
    pub ng: u64,
    pub errors: u64,
    pub dropped_frames: u64,
    buckets: BTreeMap<i32, u64>,
    pub max_ms: f64,
}

impl Summary {
    pub(super) fn record(&mut self, a: &Answer) {
        self.answers += 1;
        match a.verdict {
            Verdict::Ok => self.ok += 1,
            Verdict::Ng => self.ng += 1,
            Verdict::Error => self.errors += 1,
        }
        if a.verdict != Verdict::Error {
            let t = a.latency_ms.total.max(1e-3);
            *self
                .buckets
                .entry((t.ln() / 1.01f64.ln()).floor() as i32)
                .or_default() += 1;
            self.max_ms = self.max_ms.max(t);
        }
    }

    /// Latency percentile (upper edge of its 1% bucket), NaN without answers.
    pub fn percentile(&self, p: f64) -> f64 {
        let total: u64 = self.buckets.values().sum();
        if total == 0 {
            return f64::NAN;
        }
        let rank = ((p * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (&b, &n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return 1.01f64.powi(b + 1).min(self.max_ms);
            }
        }
        self.max_ms
    }

    pub fn line(&self) -> String {
        format!(
            "{} answers: {} OK, {} NG, {} ERROR; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} frames dropped",
            self.answers,
            self.ok,
            self.ng,
            self.errors,
            self.percentile(0.5),
            self.percentile(0.99),
            self.max_ms,
            self.dropped_frames
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::line::protocol::{Latency, TriggerId};

    #[test]
    fn percentiles_from_buckets() {
        let mut s = Summary::default();
        for t in 1..=100 {
            s.record(&Answer {
                id: TriggerId::None,
                seq: t,
                verdict: Verdict::Ok,
                score: Some(0.0),
                threshold: 0.0,
                trigger_time: None,
                frame_time: None,
                frame: None,
                latency_ms: Latency {
                    total: t as f64,
                    ..Latency::default()
                },
                heatmap: None,
                error: None,
                model: None,
            });
        }
        assert!(
            (s.percentile(0.5) - 50.0).abs() / 50.0 < 0.02,
            "{}",
            s.percentile(0.5)
        );
        assert!((s.percentile(0.99) - 99.0).abs() / 99.0 < 0.02);
        assert_eq!(s.max_ms, 100.0);
    }
}
