//! Special functions the models need: ln Γ, digamma ψ, and the Gauss hypergeometric
//! function ₂F₁. Written here (not pulled in) because the fits call them millions of times
//! and the conditional expectations need ₂F₁ near z = 1, where a naive series is slow.

/// Lanczos coefficients (g = 7, n = 9): relative error below 1e-15 for positive x.
const LANCZOS_G: f64 = 7.0;
const LANCZOS: [f64; 9] = [
    0.999_999_999_999_809_9,
    676.520_368_121_885_1,
    -1_259.139_216_722_402_8,
    771.323_428_777_653_1,
    -176.615_029_162_140_6,
    12.507_343_278_686_905,
    -0.138_571_095_265_720_12,
    9.984_369_578_019_572e-6,
    1.505_632_735_149_311_6e-7,
];

/// ln Γ(x) for x > 0 (and ln |Γ(x)| below, by reflection). NaN for non-positive integers.
pub fn ln_gamma(x: f64) -> f64 {
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 − x) = π / sin(πx).
        let s = (std::f64::consts::PI * x).sin();
        if s == 0.0 {
            return f64::NAN;
        }
        return (std::f64::consts::PI / s.abs()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = LANCZOS[0];
    for (k, c) in LANCZOS.iter().enumerate().skip(1) {
        sum += c / (x + k as f64);
    }
    let t = x + LANCZOS_G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// ln B(a, b) = ln Γ(a) + ln Γ(b) − ln Γ(a + b).
pub fn ln_beta(a: f64, b: f64) -> f64 {
    ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
}

/// Digamma ψ(x) = d/dx ln Γ(x), for x > 0: recurrence up to x ≥ 10, then the asymptotic series.
pub fn digamma(mut x: f64) -> f64 {
    if x <= 0.0 || x.is_nan() {
        return f64::NAN;
    }
    let mut result = 0.0;
    while x < 10.0 {
        result -= 1.0 / x;
        x += 1.0;
    }
    let inv = 1.0 / x;
    let inv2 = inv * inv;
    result + x.ln()
        - 0.5 * inv
        - inv2
            * (1.0 / 12.0
                - inv2 * (1.0 / 120.0 - inv2 * (1.0 / 252.0 - inv2 * (1.0 / 240.0 - inv2 / 132.0))))
}

/// Most terms the ₂F₁ series may take before giving up (z within 1e-5 of 1 needs ~10⁶).
const HYP2F1_MAX_TERMS: usize = 2_000_000;

/// The Gauss hypergeometric function ₂F₁(a, b; c; z) for real z < 1.
///
/// For 0 ≤ z < 1 the power series Σ (a)ₙ(b)ₙ/(c)ₙ zⁿ/n! (after Euler's transformation when
/// that shortens it) is summed until a term no longer changes the sum, with compensated
/// summation so thousands of terms near z = 1 do not drift; for z < 0 the Pfaff
/// transformation maps to z/(z − 1) ∈ (0, 1). NaN when z ≥ 1,
/// when c is a non-positive integer, or when the series does not settle.
pub fn hyp2f1(a: f64, b: f64, c: f64, z: f64) -> f64 {
    if z >= 1.0 || z.is_nan() || (c <= 0.0 && c.fract() == 0.0) {
        return f64::NAN;
    }
    if z < 0.0 {
        // Pfaff: ₂F₁(a, b; c; z) = (1 − z)^(−a) ₂F₁(a, c − b; c; z / (z − 1)).
        return (1.0 - z).powf(-a) * hyp2f1_series(a, c - b, c, z / (z - 1.0));
    }
    // Euler: ₂F₁(a, b; c; z) = (1 − z)^(c − a − b) ₂F₁(c − a, c − b; c; z). In the models
    // c − a and c − b stay small while a and b grow with the purchase count, so the
    // transformed series settles in a handful of terms where the plain one takes hundreds.
    if ((c - a) * (c - b)).abs() < (a * b).abs() {
        return (1.0 - z).powf(c - a - b) * hyp2f1_series(c - a, c - b, c, z);
    }
    hyp2f1_series(a, b, c, z)
}

fn hyp2f1_series(a: f64, b: f64, c: f64, z: f64) -> f64 {
    let mut sum = 1.0;
    let mut compensation = 0.0;
    let mut term = 1.0;
    for n in 0..HYP2F1_MAX_TERMS {
        let n = n as f64;
        term *= (a + n) * (b + n) / ((c + n) * (n + 1.0)) * z;
        // Kahan summation.
        let y = term - compensation;
        let t = sum + y;
        compensation = (t - sum) - y;
        sum = t;
        if term == 0.0 || (term.abs() <= f64::EPSILON * sum.abs() * 0.5 && n > a.abs() + b.abs()) {
            return sum;
        }
        if !sum.is_finite() {
            return f64::NAN;
        }
    }
    f64::NAN
}

/// ln(eᵃ + eᵇ) without overflow.
#[inline]
pub fn log_add_exp(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    hi + (lo - hi).exp().ln_1p()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * b.abs().max(1.0)
    }

    #[test]
    fn ln_gamma_matches_factorials_and_half_integers() {
        let mut factorial = 1.0f64;
        for n in 1..30 {
            // Γ(n) = (n − 1)!
            assert!(close(ln_gamma(n as f64), factorial.ln(), 1e-13), "n = {n}");
            factorial *= n as f64;
        }
        // Γ(1/2) = √π, Γ(3/2) = √π / 2.
        let sqrt_pi = std::f64::consts::PI.sqrt();
        assert!(close(ln_gamma(0.5), sqrt_pi.ln(), 1e-14));
        assert!(close(ln_gamma(1.5), (sqrt_pi / 2.0).ln(), 1e-14));
        // Large argument: Stirling.
        let x = 1.0e6f64;
        let stirling =
            (x - 0.5) * x.ln() - x + 0.5 * (2.0 * std::f64::consts::PI).ln() + 1.0 / (12.0 * x);
        assert!(close(ln_gamma(x), stirling, 1e-14));
        assert!(ln_gamma(0.0).is_nan());
    }

    #[test]
    fn digamma_matches_known_values_and_the_derivative_of_ln_gamma() {
        const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;
        assert!(close(digamma(1.0), -EULER_GAMMA, 1e-13));
        assert!(close(digamma(0.5), -EULER_GAMMA - 2.0 * 2f64.ln(), 1e-13));
        for x in [0.1, 0.7, 3.3, 12.0, 250.0] {
            let h = 1e-5 * x;
            let numeric = (ln_gamma(x + h) - ln_gamma(x - h)) / (2.0 * h);
            assert!(close(digamma(x), numeric, 1e-7), "x = {x}");
        }
    }

    #[test]
    fn hyp2f1_matches_closed_forms_including_near_one() {
        for z in [0.0f64, 0.1, 0.5, 0.9, 0.99, 0.999, -0.5, -3.0] {
            // ₂F₁(1, 1; 2; z) = −ln(1 − z) / z
            let expected = if z == 0.0 { 1.0 } else { -(1.0 - z).ln() / z };
            assert!(close(hyp2f1(1.0, 1.0, 2.0, z), expected, 1e-12), "z = {z}");
            // ₂F₁(a, b; b; z) = (1 − z)^(−a)
            assert!(
                close(hyp2f1(2.5, 3.0, 3.0, z), (1.0 - z).powf(-2.5), 1e-11),
                "z = {z}"
            );
        }
        for x in [0.2f64, 0.6, 0.95] {
            // ₂F₁(1/2, 1/2; 3/2; x²) = arcsin(x) / x
            assert!(close(hyp2f1(0.5, 0.5, 1.5, x * x), x.asin() / x, 1e-12));
        }
        assert!(hyp2f1(1.0, 1.0, 2.0, 1.0).is_nan());
        assert!(hyp2f1(1.0, 1.0, -2.0, 0.5).is_nan());
    }

    #[test]
    fn log_add_exp_does_not_overflow() {
        assert!(close(
            log_add_exp(1000.0, 1000.0),
            1000.0 + 2f64.ln(),
            1e-15
        ));
        assert!(close(log_add_exp(0.0, f64::NEG_INFINITY), 0.0, 0.0));
        assert!(close(
            log_add_exp(-1.0, 2.0),
            (1f64.exp().recip() + 2f64.exp()).ln(),
            1e-15
        ));
    }
}
