//! A log-linear latency histogram.

/// Log-linear histogram of nanosecond values, at most 1/64 relative error,
/// constant memory (a few thousand buckets), no allocation per record.
pub(crate) struct Histogram {
    counts: Vec<u64>,
    n: u64,
    max: u64,
}

impl Histogram {
    pub(crate) fn new() -> Self {
        Self {
            counts: vec![0; 64 * 60 + 128],
            n: 0,
            max: 0,
        }
    }

    pub(crate) fn record(&mut self, v: u64) {
        self.counts[Self::bucket(v)] += 1;
        self.n += 1;
        self.max = self.max.max(v);
    }

    pub(crate) fn max(&self) -> u64 {
        self.max
    }

    /// The value at percentile `p` (0 to 100), the upper bound of its bucket.
    pub(crate) fn percentile(&self, p: f64) -> u64 {
        if self.n == 0 {
            return 0;
        }
        let rank = ((p / 100.0) * self.n as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (b, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::bucket_upper(b).min(self.max);
            }
        }
        self.max
    }

    // Below 128 one bucket per value; above, 64 buckets per power of two.
    fn bucket(v: u64) -> usize {
        if v < 128 {
            v as usize
        } else {
            let msb = 63 - u64::from(v.leading_zeros());
            let shift = msb - 6;
            (64 * shift + (v >> shift)) as usize
        }
    }

    fn bucket_upper(b: usize) -> u64 {
        if b < 128 {
            b as u64
        } else {
            let shift = (b as u64 - 64) / 64;
            let top = b as u64 - 64 * shift;
            ((top + 1) << shift) - 1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Histogram;

    #[test]
    fn percentiles_are_within_one_sixty_fourth() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        for (p, want) in [(50.0, 50_000_000.0), (99.0, 99_000_000.0)] {
            let got = h.percentile(p) as f64;
            assert!(
                (got - want).abs() / want <= 1.0 / 64.0,
                "p{p}: {got} vs {want}"
            );
        }
        assert_eq!(h.percentile(100.0), h.max());
    }
}
