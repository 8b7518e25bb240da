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
}
