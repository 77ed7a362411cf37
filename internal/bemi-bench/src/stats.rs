//! Summaries of repeated measurements: median with range.

/// The median and range of `values` (`NaN`s ignored), as `median [min–max]`.
pub(crate) fn summary(values: &[f64], decimals: usize) -> String {
    let mut sorted: Vec<f64> = values
        .iter()
        .copied()
        .filter(|value| !value.is_nan())
        .collect();
    if sorted.is_empty() {
        return "-".to_owned();
    }
    sorted.sort_by(f64::total_cmp);
    let median = if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
    };
    let (min, max) = (sorted[0], sorted[sorted.len() - 1]);
    if sorted.len() == 1 {
        format!("{median:.decimals$}")
    } else {
        format!("{median:.decimals$} [{min:.decimals$}–{max:.decimals$}]")
    }
}

/// A small deterministic generator (xorshift), so every run probes the same keys.
pub(crate) struct Probe(pub(crate) u64);

impl Probe {
    /// The next number below `below`.
    pub(crate) fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below.max(1)
    }
}

/// The `p`th percentile of `values` (sorted in place), in the values' unit.
pub(crate) fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let index = ((values.len() as f64 - 1.0) * p).round() as usize;
    values.get(index).copied().unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ranges() {
        assert_eq!(summary(&[3.0, 1.0, 2.0], 1), "2.0 [1.0–3.0]");
        assert_eq!(summary(&[4.0, 1.0, 2.0, 3.0], 0), "2 [1–4]");
        assert_eq!(summary(&[5.0], 2), "5.00");
        assert_eq!(summary(&[], 2), "-");
    }
}
