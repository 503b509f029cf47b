//! Percentiles of latency samples.

use std::time::Duration;

/// Samples in milliseconds.
#[derive(Debug, Clone, Default)]
pub struct Dist {
    values: Vec<f64>,
    sorted: bool,
}

impl Dist {
    pub fn push_ms(&mut self, ms: f64) {
        self.values.push(ms);
        self.sorted = false;
    }

    pub fn push(&mut self, d: Duration) {
        self.push_ms(d.as_secs_f64() * 1e3);
    }

    fn sort(&mut self) {
        if !self.sorted {
            self.values.sort_by(f64::total_cmp);
            self.sorted = true;
        }
    }

    /// The nearest-rank percentile; NaN when empty.
    pub fn pct(&mut self, p: f64) -> f64 {
        self.sort();
        let n = self.values.len();
        if n == 0 {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        self.values[rank.clamp(1, n) - 1]
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// How many samples exceed `limit` (ms).
    pub fn count_above(&self, limit: f64) -> usize {
        self.values.iter().filter(|v| **v > limit).count()
    }

    pub fn max(&mut self) -> f64 {
        self.pct(100.0)
    }
}

/// Milliseconds, with precision that suits their size.
pub fn ms(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else if v.abs() < 1.0 {
        format!("{:.0} µs", v * 1e3)
    } else if v.abs() < 100.0 {
        format!("{v:.2} ms")
    } else {
        format!("{v:.0} ms")
    }
}

pub fn ratio(a: f64, b: f64) -> String {
    if a.is_nan() || b.is_nan() || b == 0.0 {
        "n/a".into()
    } else {
        format!("{:.1}×", a / b)
    }
}
