//! A small BFGS minimiser with a backtracking line search, for the model fits.
//!
//! The fits minimise a smooth negative log-likelihood over log-parameters (so every
//! parameter stays positive) with analytic gradients: a few dozen iterations where
//! derivative-free simplex methods need hundreds of evaluations.

/// Where a minimisation ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Minimum {
    /// The minimising point.
    pub x: Vec<f64>,
    /// The objective there.
    pub value: f64,
    /// Iterations taken.
    pub iterations: usize,
    /// Objective evaluations taken.
    pub evaluations: usize,
    /// True when the gradient or the progress fell below tolerance.
    pub converged: bool,
}

/// Stopping rules.
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    /// Stop when every gradient component is below this.
    pub gradient: f64,
    /// Stop when an iteration improves the objective by less than this (relative).
    pub relative_change: f64,
    /// Give up after this many iterations.
    pub max_iterations: usize,
}

impl Default for Tolerance {
    fn default() -> Self {
        Self {
            gradient: 1e-7,
            relative_change: 1e-13,
            max_iterations: 500,
        }
    }
}

/// Minimises `objective`, which returns f(x) and writes ∇f(x) into its second argument.
/// A non-finite value means "outside the domain": the line search steps back.
pub fn bfgs(
    mut objective: impl FnMut(&[f64], &mut [f64]) -> f64,
    start: &[f64],
    tolerance: Tolerance,
) -> Minimum {
    let n = start.len();
    let mut x = start.to_vec();
    let mut gradient = vec![0.0; n];
    let mut value = objective(&x, &mut gradient);
    let mut evaluations = 1;
    // Inverse Hessian approximation, row-major, starting at the identity.
    let mut inverse_hessian = identity(n);
    let mut candidate = vec![0.0; n];
    let mut candidate_gradient = vec![0.0; n];
    let mut direction = vec![0.0; n];
    let mut stalls = 0;

    for iteration in 0..tolerance.max_iterations {
        if !value.is_finite() {
            return Minimum {
                x,
                value,
                iterations: iteration,
                evaluations,
                converged: false,
            };
        }
        if gradient.iter().all(|g| g.abs() < tolerance.gradient) {
            return Minimum {
                x,
                value,
                iterations: iteration,
                evaluations,
                converged: true,
            };
        }
        for (i, d) in direction.iter_mut().enumerate() {
            *d = -(0..n)
                .map(|j| inverse_hessian[i * n + j] * gradient[j])
                .sum::<f64>();
        }
        let mut slope = dot(&direction, &gradient);
        if slope >= 0.0 {
            // Not a descent direction (curvature information went bad): restart from steepest descent.
            inverse_hessian = identity(n);
            for (d, g) in direction.iter_mut().zip(&gradient) {
                *d = -g;
            }
            slope = -dot(&gradient, &gradient);
        }
        // Backtracking line search with the Armijo condition.
        let mut step = 1.0;
        let mut accepted = None;
        let longest = direction.iter().fold(0.0f64, |m, d| m.max(d.abs()));
        for _ in 0..60 {
            // A step whose predicted gain is below the objective's rounding, or that no
            // longer moves any coordinate, cannot show an improvement: at the optimum,
            // rounding noise in a sum over every customer fails Armijo at every length,
            // and halving sixty times would cost sixty evaluations.
            if step * longest < 1e-12 || step * slope.abs() < f64::EPSILON * value.abs() {
                break;
            }
            for i in 0..n {
                candidate[i] = x[i] + step * direction[i];
            }
            let candidate_value = objective(&candidate, &mut candidate_gradient);
            evaluations += 1;
            if candidate_value.is_finite() && candidate_value <= value + 1e-4 * step * slope {
                accepted = Some(candidate_value);
                break;
            }
            step *= 0.5;
        }
        let Some(new_value) = accepted else {
            // No step improves: as good as this precision allows.
            return Minimum {
                x,
                value,
                iterations: iteration,
                evaluations,
                converged: true,
            };
        };
        let s: Vec<f64> = (0..n).map(|i| candidate[i] - x[i]).collect();
        let y: Vec<f64> = (0..n)
            .map(|i| candidate_gradient[i] - gradient[i])
            .collect();
        let sy = dot(&s, &y);
        if sy > 1e-12 {
            update_inverse_hessian(&mut inverse_hessian, &s, &y, sy);
        }
        let improvement = value - new_value;
        x.copy_from_slice(&candidate);
        gradient.copy_from_slice(&candidate_gradient);
        value = new_value;
        if improvement.abs() <= tolerance.relative_change * value.abs().max(1.0) {
            stalls += 1;
            if stalls >= 3 {
                return Minimum {
                    x,
                    value,
                    iterations: iteration + 1,
                    evaluations,
                    converged: true,
                };
            }
        } else {
            stalls = 0;
        }
    }
    Minimum {
        x,
        value,
        iterations: tolerance.max_iterations,
        evaluations,
        converged: false,
    }
}

fn identity(n: usize) -> Vec<f64> {
    let mut m = vec![0.0; n * n];
    for i in 0..n {
        m[i * n + i] = 1.0;
    }
    m
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// H ← (I − ρ s yᵀ) H (I − ρ y sᵀ) + ρ s sᵀ, with ρ = 1 / (yᵀ s).
fn update_inverse_hessian(h: &mut [f64], s: &[f64], y: &[f64], sy: f64) {
    let n = s.len();
    let rho = 1.0 / sy;
    let hy: Vec<f64> = (0..n)
        .map(|i| (0..n).map(|j| h[i * n + j] * y[j]).sum())
        .collect();
    let yhy = dot(y, &hy);
    for i in 0..n {
        for j in 0..n {
            h[i * n + j] += rho * ((1.0 + rho * yhy) * s[i] * s[j] - hy[i] * s[j] - s[i] * hy[j]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_minimum_of_the_rosenbrock_valley() {
        let rosenbrock = |x: &[f64], g: &mut [f64]| {
            let (a, b) = (x[0], x[1]);
            g[0] = -2.0 * (1.0 - a) - 400.0 * a * (b - a * a);
            g[1] = 200.0 * (b - a * a);
            (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2)
        };
        let min = bfgs(rosenbrock, &[-1.2, 1.0], Tolerance::default());
        assert!(min.converged);
        assert!(
            (min.x[0] - 1.0).abs() < 1e-5 && (min.x[1] - 1.0).abs() < 1e-5,
            "{min:?}"
        );
    }

    #[test]
    fn steps_back_from_outside_the_domain() {
        // ln-barrier: undefined for x ≤ 0; minimum at x = 1.
        let f = |x: &[f64], g: &mut [f64]| {
            if x[0] <= 0.0 {
                return f64::NAN;
            }
            g[0] = 1.0 - 1.0 / x[0];
            x[0] - x[0].ln()
        };
        let min = bfgs(f, &[8.0], Tolerance::default());
        assert!((min.x[0] - 1.0).abs() < 1e-6, "{min:?}");
    }
}
