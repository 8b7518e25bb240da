//! RFM scores 1–5 by quintiles within a tenant.
//!
//! A customer's score comes from the mid-rank percentile of their value among all the
//! tenant's customers: `p = (below + equal / 2) / n`, score `⌊5p⌋ + 1`. So:
//! * ties always share a score, whatever order the customers come in (deterministic);
//! * with many distinct values each score holds about a fifth of the customers;
//! * a tiny tenant stays sane: one distinct value scores 3 for everybody (nobody is a
//!   champion or lost merely for being alone), two equal halves score 2 and 4.

/// Which end of a value is good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Larger is better (frequency, monetary).
    Higher,
    /// Smaller is better (recency in days).
    Lower,
}

/// Scores 1–5 for `values`, in input order. NaN ranks below every number.
pub fn quintile_scores(values: &[f64], better: Better) -> Vec<u8> {
    let n = values.len();
    if n == 0 {
        return Vec::new();
    }
    let mut keyed: Vec<(u64, u32)> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| (order_key(v), i as u32))
        .collect();
    radix_sort(&mut keyed);
    let mut scores = vec![0u8; n];
    let mut start = 0;
    while start < n {
        let key = keyed[start].0;
        let mut end = start + 1;
        while end < n && keyed[end].0 == key {
            end += 1;
        }
        // Twice the mid-rank, to stay in integers: 2·below + equal, over 2n.
        let twice_mid_rank = 2 * start + (end - start);
        let score = ((5 * twice_mid_rank) / (2 * n)).min(4) as u8 + 1;
        let score = match better {
            Better::Higher => score,
            Better::Lower => 6 - score,
        };
        for &(_, i) in &keyed[start..end] {
            scores[i as usize] = score;
        }
        start = end;
    }
    scores
}

/// Where a run's quintile scores changed, so a value scored later (an incremental
/// recompute) gets the score it would have had in that run: for each score 2–5 on the
/// "higher is better" scale, the lowest value that reached it. Exact for every value the
/// run saw; a new value between two runs' values takes the score of the values below it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Boundaries {
    /// Lowest value reaching raw score 2, 3, 4, 5 (`+∞` when none did).
    pub lowest: [f64; 4],
    /// Which end is good.
    pub better: Better,
}

impl Boundaries {
    /// The boundaries of `scores`, as [`quintile_scores`] gave them for `values`.
    pub fn of(values: &[f64], scores: &[u8], better: Better) -> Self {
        let mut lowest = [f64::INFINITY; 4];
        for (&v, &score) in values.iter().zip(scores) {
            let raw = match better {
                Better::Higher => score,
                Better::Lower => 6 - score,
            };
            for (k, low) in lowest.iter_mut().enumerate() {
                if usize::from(raw) >= k + 2 && order_key(v) < order_key(*low) {
                    *low = v;
                }
            }
        }
        Self { lowest, better }
    }

    /// The score of `value` against these boundaries.
    pub fn score(&self, value: f64) -> u8 {
        let key = order_key(value);
        let raw = 1 + self
            .lowest
            .iter()
            .filter(|&&low| key >= order_key(low))
            .count() as u8;
        match self.better {
            Better::Higher => raw,
            Better::Lower => 6 - raw,
        }
    }
}

/// A u64 that orders like the number: every NaN equal and below everything, −0 = +0.
fn order_key(v: f64) -> u64 {
    if v.is_nan() {
        return 0;
    }
    let bits = (v + 0.0).to_bits();
    // Positive: set the sign bit; negative: flip every bit. 0 stays free for NaN.
    let key = if bits >> 63 == 0 {
        bits | (1 << 63)
    } else {
        !bits
    };
    key.max(1)
}

/// LSD radix sort by key, one byte per pass, skipping bytes every key shares (the high
/// bytes of counts and money usually are): much faster than a comparison sort here, which
/// dominated scoring.
fn radix_sort(items: &mut Vec<(u64, u32)>) {
    let mut histograms = [[0usize; 256]; 8];
    for &(key, _) in items.iter() {
        for (byte, histogram) in histograms.iter_mut().enumerate() {
            histogram[((key >> (8 * byte)) & 0xFF) as usize] += 1;
        }
    }
    let mut buffer = vec![(0u64, 0u32); items.len()];
    for (byte, histogram) in histograms.iter().enumerate() {
        if histogram.contains(&items.len()) {
            continue;
        }
        let mut offsets = [0usize; 256];
        let mut sum = 0;
        for (offset, &count) in offsets.iter_mut().zip(histogram) {
            *offset = sum;
            sum += count;
        }
        for &item in items.iter() {
            let digit = ((item.0 >> (8 * byte)) & 0xFF) as usize;
            buffer[offsets[digit]] = item;
            offsets[digit] += 1;
        }
        std::mem::swap(items, &mut buffer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_distinct_values_fill_each_quintile_twice() {
        let values: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(
            quintile_scores(&values, Better::Higher),
            vec![1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
        );
        assert_eq!(
            quintile_scores(&values, Better::Lower),
            vec![5, 5, 4, 4, 3, 3, 2, 2, 1, 1]
        );
    }

    #[test]
    fn ties_share_a_score_whatever_the_input_order() {
        let values = [3.0, 1.0, 3.0, 2.0, 3.0, 5.0, 1.0];
        let scores = quintile_scores(&values, Better::Higher);
        assert_eq!(scores[0], scores[2]);
        assert_eq!(scores[0], scores[4]);
        assert_eq!(scores[1], scores[6]);
        let mut reversed = values;
        reversed.reverse();
        let mut again = quintile_scores(&reversed, Better::Higher);
        again.reverse();
        assert_eq!(scores, again);
    }

    #[test]
    fn a_tiny_tenant_stays_in_the_middle() {
        assert_eq!(quintile_scores(&[42.0], Better::Higher), vec![3]);
        assert_eq!(quintile_scores(&[7.0; 4], Better::Lower), vec![3; 4]);
        assert_eq!(
            quintile_scores(&[1.0, 1.0, 9.0, 9.0], Better::Higher),
            vec![2, 2, 4, 4]
        );
        assert!(quintile_scores(&[], Better::Higher).is_empty());
    }

    #[test]
    fn scores_never_decrease_with_a_better_value() {
        // A deterministic pseudo-random spread with many ties.
        let values: Vec<f64> = (0..1000u64).map(|i| ((i * 7919) % 97) as f64).collect();
        let scores = quintile_scores(&values, Better::Higher);
        for i in 0..values.len() {
            for j in 0..values.len() {
                if values[i] < values[j] {
                    assert!(scores[i] <= scores[j]);
                }
            }
        }
        // Quintiles: each score holds roughly a fifth.
        for s in 1..=5u8 {
            let share = scores.iter().filter(|&&x| x == s).count() as f64 / values.len() as f64;
            assert!((0.15..=0.25).contains(&share), "score {s} holds {share}");
        }
    }

    #[test]
    fn the_radix_order_matches_the_numeric_order() {
        let values = [
            3.5,
            -1.0,
            0.0,
            -0.0,
            1e300,
            -1e-300,
            f64::INFINITY,
            f64::NEG_INFINITY,
            2.0,
            f64::NAN,
        ];
        let mut keyed: Vec<(u64, u32)> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| (order_key(v), i as u32))
            .collect();
        radix_sort(&mut keyed);
        let sorted: Vec<f64> = keyed.iter().map(|&(_, i)| values[i as usize]).collect();
        assert!(sorted[0].is_nan());
        for pair in sorted[1..].windows(2) {
            assert!(pair[0] <= pair[1], "{sorted:?}");
        }
        assert_eq!(order_key(0.0), order_key(-0.0));
    }

    #[test]
    fn nan_ranks_below_every_number() {
        let scores = quintile_scores(&[f64::NAN, 1.0, 2.0, 3.0, 4.0], Better::Higher);
        assert_eq!(scores[0], 1);
        assert_eq!(scores[4], 5);
    }

    #[test]
    fn boundaries_give_every_seen_value_its_score() {
        let mut rng = 7u64;
        let mut values: Vec<f64> = (0..2_000)
            .map(|_| {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1);
                ((rng >> 33) % 90) as f64
            })
            .collect();
        values.extend([0.0, 0.0, 1e9]);
        for better in [Better::Higher, Better::Lower] {
            let scores = quintile_scores(&values, better);
            let boundaries = Boundaries::of(&values, &scores, better);
            for (v, s) in values.iter().zip(&scores) {
                assert_eq!(boundaries.score(*v), *s, "{v} {better:?}");
            }
            // A value past every seen one scores at the good or bad end.
            let (top, bottom) = (boundaries.score(2e9), boundaries.score(-1.0));
            assert_eq!(
                (top, bottom),
                if better == Better::Higher {
                    (5, 1)
                } else {
                    (1, 5)
                }
            );
        }
        // One distinct value: everybody 3, and so is a new value above or below.
        let same = [4.0; 10];
        let b = Boundaries::of(
            &same,
            &quintile_scores(&same, Better::Higher),
            Better::Higher,
        );
        assert_eq!((b.score(4.0), b.score(100.0)), (3, 3));
        assert_eq!(b.score(1.0), 1);
    }
}
