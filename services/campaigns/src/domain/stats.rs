//! Rates with 95 % confidence intervals: Wilson's score interval for a return rate, and
//! Newcombe's hybrid score interval for the difference of two (the uplift). Both behave at
//! small counts and rates near 0, where the textbook normal interval does not.

/// z for a two-sided 95 % interval.
const Z: f64 = 1.959_963_984_540_054;

/// A point estimate with its interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Interval {
    pub(crate) value: f64,
    pub(crate) low: f64,
    pub(crate) high: f64,
}

/// The rate `hits / n` with Wilson's 95 % interval; with no one measured, 0 in [0, 1].
pub(crate) fn wilson(hits: u64, n: u64) -> Interval {
    if n == 0 {
        return Interval {
            value: 0.0,
            low: 0.0,
            high: 1.0,
        };
    }
    let n = n as f64;
    let p = hits as f64 / n;
    let z2 = Z * Z;
    let denominator = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denominator;
    let half = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denominator;
    Interval {
        value: p,
        low: (centre - half).max(0.0),
        high: (centre + half).min(1.0),
    }
}

/// Treated rate minus holdout rate with Newcombe's 95 % interval (method 10).
pub(crate) fn uplift(treated: Interval, holdout: Interval) -> Interval {
    let d = treated.value - holdout.value;
    let low =
        d - ((treated.value - treated.low).powi(2) + (holdout.high - holdout.value).powi(2)).sqrt();
    let high =
        d + ((treated.high - treated.value).powi(2) + (holdout.value - holdout.low).powi(2)).sqrt();
    Interval {
        value: d,
        low: low.max(-1.0),
        high: high.min(1.0),
    }
}

/// A sum over the customers of one group: how many, the total, and the total of squares
/// (for the variance of the mean).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct GroupSum {
    pub(crate) n: u64,
    pub(crate) sum: f64,
    pub(crate) sum_of_squares: f64,
}

impl GroupSum {
    fn mean(&self) -> f64 {
        self.sum / self.n as f64
    }

    /// Variance of the mean: the sample variance over n.
    fn variance_of_mean(&self) -> f64 {
        if self.n < 2 {
            return 0.0;
        }
        let n = self.n as f64;
        let variance = ((self.sum_of_squares - self.sum * self.sum / n) / (n - 1.0)).max(0.0);
        variance / n
    }
}

/// What the treated brought beyond what they would have at the holdout's mean per
/// customer, `n_t (m_t − m_h)`, with the normal 95 % interval of the difference of means
/// scaled by `n_t`; `None` without a treated or a held-out customer.
pub(crate) fn incremental_total(treated: GroupSum, holdout: GroupSum) -> Option<Interval> {
    if treated.n == 0 || holdout.n == 0 {
        return None;
    }
    let n = treated.n as f64;
    let value = n * (treated.mean() - holdout.mean());
    let half = Z * n * (treated.variance_of_mean() + holdout.variance_of_mean()).sqrt();
    Some(Interval {
        value,
        low: value - half,
        high: value + half,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 5e-4
    }

    #[test]
    fn wilson_matches_the_published_example() {
        // Newcombe (1998), table I: 81/263 → 0.2553–0.3662.
        let i = wilson(81, 263);
        assert!(close(i.low, 0.2553) && close(i.high, 0.3662), "{i:?}");
        // 0/10 → 0–0.2775.
        let i = wilson(0, 10);
        assert!(close(i.low, 0.0) && close(i.high, 0.2775), "{i:?}");
    }

    #[test]
    fn newcombe_difference_matches_the_published_example() {
        // Newcombe (1998), difference example: 56/70 − 48/80 → 0.0524–0.3339.
        let d = uplift(wilson(56, 70), wilson(48, 80));
        assert!(close(d.value, 0.2), "{d:?}");
        assert!(close(d.low, 0.0524) && close(d.high, 0.3339), "{d:?}");
    }

    #[test]
    fn nobody_measured_means_no_information() {
        let d = uplift(wilson(0, 0), wilson(3, 10));
        assert!(d.low < 0.0 && d.high > 0.0);
    }

    #[test]
    fn incremental_revenue_is_the_treated_total_less_the_holdout_rate_and_has_an_interval() {
        // Treated: 4 customers spending 100, 0, 100, 0; holdout: 2 spending 50, 0.
        let treated = GroupSum {
            n: 4,
            sum: 200.0,
            sum_of_squares: 20_000.0,
        };
        let holdout = GroupSum {
            n: 2,
            sum: 50.0,
            sum_of_squares: 2_500.0,
        };
        let i = incremental_total(treated, holdout).unwrap();
        assert!(close(i.value, 4.0 * (50.0 - 25.0)));
        // Var of means: (3333.3 / 4) + (1250 / 2) = 833.3 + 625.
        let half = Z * 4.0 * (833.333_333 + 625.0f64).sqrt();
        assert!(close(i.low, 100.0 - half) && close(i.high, 100.0 + half));
        assert_eq!(incremental_total(treated, GroupSum::default()), None);
    }
}
