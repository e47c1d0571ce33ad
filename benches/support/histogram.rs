//! A small log-linear latency histogram in microseconds: 32 buckets per
//! power of two (about 3 % resolution), cheap to record and to send between
//! processes as text.

/// Sub-buckets per power of two, as a power of two.
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Enough buckets for any `u64`.
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB as usize;

/// Counts of latencies, in microseconds.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self { counts: vec![0; BUCKETS], total: 0, max: 0 }
    }

    /// Records one latency.
    pub fn record(&mut self, micros: u64) {
        self.counts[index(micros)] += 1;
        self.total += 1;
        self.max = self.max.max(micros);
    }

    /// The largest recorded value, exactly.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0 to 1), as the upper edge of its bucket.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return upper_edge(i).min(self.max);
            }
        }
        self.max
    }

    /// Adds another histogram's counts to this one.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// Text form: `max;index:count,index:count,...` (non-empty buckets only).
    pub fn encode(&self) -> String {
        let buckets: Vec<String> = self
            .counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| format!("{i}:{c}"))
            .collect();
        format!("{};{}", self.max, buckets.join(","))
    }

    /// Reads the text form written by [`Histogram::encode`].
    pub fn decode(text: &str) -> Result<Self, String> {
        let bad = || format!("malformed histogram `{text}`");
        let (max, buckets) = text.split_once(';').ok_or_else(bad)?;
        let mut histogram = Histogram::new();
        histogram.max = max.parse().map_err(|_| bad())?;
        for pair in buckets.split(',').filter(|p| !p.is_empty()) {
            let (i, c) = pair.split_once(':').ok_or_else(bad)?;
            let i: usize = i.parse().map_err(|_| bad())?;
            let c: u64 = c.parse().map_err(|_| bad())?;
            *histogram.counts.get_mut(i).ok_or_else(bad)? += c;
            histogram.total += c;
        }
        Ok(histogram)
    }
}

/// The bucket of a value.
fn index(value: u64) -> usize {
    if value < SUB {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros();
    let shift = exponent - SUB_BITS;
    ((exponent - SUB_BITS + 1) as u64 * SUB + (value >> shift) - SUB) as usize
}

/// The largest value that falls in a bucket.
fn upper_edge(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB {
        return index;
    }
    let shift = (index / SUB - 1) as u32;
    let sub = index % SUB + SUB;
    ((sub + 1) << shift) - 1
}
