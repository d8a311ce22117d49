//! Bucket summaries: count, first and last step, and per element min, max, sum and last.
//!
//! Min and max order values by IEEE total order (NaN above +Inf, NaNs made canonical at
//! ingest), so a bucket that holds a NaN reports a NaN `max` and `mean` while `min` still
//! shows the finite floor. Summaries merge associatively, which is what lets one bucket of
//! 1,024 steps be built from four of 256, or from raw steps at the edges of a range.

use super::codec;

/// Pyramid levels: a level-`L` bucket covers `L` steps. Raw steps are the finest level (1).
pub const LEVELS: [u64; 8] = [16, 64, 256, 1024, 4096, 16384, 65536, 262144];

#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub first_step: u64,
    pub last_step: u64,
    pub min: Vec<f64>,
    pub max: Vec<f64>,
    pub sum: Vec<f64>,
    pub last: Vec<f64>,
}

impl Summary {
    pub fn of(step: u64, values: &[f64]) -> Self {
        Summary {
            count: 1,
            first_step: step,
            last_step: step,
            min: values.to_vec(),
            max: values.to_vec(),
            sum: values.to_vec(),
            last: values.to_vec(),
        }
    }

    pub fn width(&self) -> usize {
        self.min.len()
    }

    pub fn add(&mut self, step: u64, values: &[f64]) {
        self.merge_parts(1, step, step, values, values, values, values);
    }

    pub fn merge(&mut self, other: &Summary) {
        self.merge_parts(
            other.count,
            other.first_step,
            other.last_step,
            &other.min,
            &other.max,
            &other.sum,
            &other.last,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn merge_parts(
        &mut self,
        count: u64,
        first: u64,
        last_step: u64,
        min: &[f64],
        max: &[f64],
        sum: &[f64],
        last: &[f64],
    ) {
        // Vectors of another width cannot be merged; ingest refuses them before they get here.
        debug_assert_eq!(min.len(), self.width());
        for (a, b) in self.min.iter_mut().zip(min) {
            if b.total_cmp(a).is_lt() {
                *a = *b;
            }
        }
        for (a, b) in self.max.iter_mut().zip(max) {
            if b.total_cmp(a).is_gt() {
                *a = *b;
            }
        }
        for (a, b) in self.sum.iter_mut().zip(sum) {
            *a += *b;
        }
        if last_step >= self.last_step {
            self.last.copy_from_slice(last);
            self.last_step = last_step;
        }
        self.first_step = self.first_step.min(first);
        self.count += count;
    }

    pub fn mean(&self) -> impl Iterator<Item = f64> + '_ {
        let n = self.count as f64;
        self.sum.iter().map(move |s| s / n)
    }

    /// Layout: count, first_step, last_step as u64, then min, max, sum, last as f64 arrays.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + 32 * self.width());
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.first_step.to_le_bytes());
        out.extend_from_slice(&self.last_step.to_le_bytes());
        for part in [&self.min, &self.max, &self.sum, &self.last] {
            codec::put_f64s(&mut out, part);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let rest = bytes.get(24..)?;
        if rest.len() % 32 != 0 {
            return None;
        }
        let width = rest.len() / 32;
        let word = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap());
        let part = |i: usize| codec::get_f64s(&rest[i * width * 8..(i + 1) * width * 8]);
        Some(Summary {
            count: word(0),
            first_step: word(1),
            last_step: word(2),
            min: part(0),
            max: part(1),
            sum: part(2),
            last: part(3),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nan_in_a_bucket_shows_in_max_and_mean_but_not_min() {
        let mut s = Summary::of(0, &[1.0, 2.0]);
        s.add(1, &[f64::NAN, 0.5]);
        s.add(2, &[3.0, f64::INFINITY]);
        assert_eq!(s.min, vec![1.0, 0.5]);
        assert!(s.max[0].is_nan());
        assert_eq!(s.max[1], f64::INFINITY);
        let mean: Vec<f64> = s.mean().collect();
        assert!(mean[0].is_nan());
        assert_eq!(s.last, vec![3.0, f64::INFINITY]);
        assert_eq!((s.count, s.first_step, s.last_step), (3, 0, 2));
    }

    #[test]
    fn merging_out_of_order_keeps_the_last_of_the_latest_step() {
        let mut late = Summary::of(9, &[9.0]);
        late.merge(&Summary::of(3, &[3.0]));
        assert_eq!(late.last, vec![9.0]);
        assert_eq!(late.first_step, 3);
        assert_eq!(late.sum, vec![12.0]);
    }

    #[test]
    fn summaries_round_trip_through_bytes_bit_exactly() {
        let mut s = Summary::of(5, &[f64::NAN, -0.0, f64::NEG_INFINITY]);
        s.add(6, &[1.0, 2.0, 3.0]);
        let back = Summary::decode(&s.encode()).unwrap();
        assert_eq!(back.encode(), s.encode());
        assert!(Summary::decode(&[0u8; 23]).is_none());
    }
}
