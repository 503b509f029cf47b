//! Medians and ranges of repeated measurements.

/// The values one measurement took over the runs of a benchmark.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    values: Vec<f64>,
}

impl Samples {
    pub fn push(&mut self, value: f64) {
        self.values.push(value);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    /// The median; the mean of the two middle values for an even count.
    pub fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    pub fn min(&self) -> f64 {
        self.values.iter().copied().fold(f64::INFINITY, f64::min)
    }

    pub fn max(&self) -> f64 {
        self.values
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
    }

    /// The same runs, each value transformed (e.g. a time into a rate).
    pub fn map(&self, f: impl Fn(f64) -> f64) -> Samples {
        Samples {
            values: self.values.iter().map(|v| f(*v)).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Run-by-run differences `self[i] - other[i]`, paired like
    /// [`Samples::paired_ratio`].
    pub fn paired_diff(&self, other: &Samples) -> Samples {
        Samples {
            values: self
                .values
                .iter()
                .zip(&other.values)
                .map(|(a, b)| a - b)
                .collect(),
        }
    }

    /// Run-by-run ratios `self[i] / other[i]`. Both were measured in the same
    /// interleaved run, so a ratio cancels most of the machine's drift.
    pub fn paired_ratio(&self, other: &Samples) -> Samples {
        Samples {
            values: self
                .values
                .iter()
                .zip(&other.values)
                .map(|(a, b)| a / b)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(values: &[f64]) -> Samples {
        let mut s = Samples::default();
        values.iter().for_each(|v| s.push(*v));
        s
    }

    #[test]
    fn median_min_max() {
        assert_eq!(of(&[3.0, 1.0, 2.0]).median(), 2.0);
        assert_eq!(of(&[4.0, 1.0, 3.0, 2.0]).median(), 2.5);
        assert_eq!(of(&[4.0, 1.0, 3.0]).min(), 1.0);
        assert_eq!(of(&[4.0, 1.0, 3.0]).max(), 4.0);
        assert!(of(&[]).median().is_nan());
    }

    #[test]
    fn paired_ratios() {
        let r = of(&[2.0, 6.0]).paired_ratio(&of(&[1.0, 3.0]));
        assert_eq!(r.median(), 2.0);
        let d = of(&[2.0, 6.0]).paired_diff(&of(&[1.0, 3.0]));
        assert_eq!(d.median(), 2.0);
    }
}
