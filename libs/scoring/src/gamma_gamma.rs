//! The Gamma-Gamma spend model (Fader, Hardie & Lee 2005, "RFM and CLV"; Fader & Hardie
//! 2013 note): a customer's transaction values are Gamma(p, ν) around their own mean, and
//! ν varies across customers as Gamma(q, γ). Fitted on repeat customers (x ≥ 1) from their
//! number of repeat transactions and mean transaction value.

use crate::ModelError;
use crate::optimize::{Minimum, Tolerance, bfgs};
use crate::special::{digamma, ln_gamma};

/// One repeat customer's spend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpendObservation {
    /// Transactions the mean is taken over (≥ 1).
    pub x: u32,
    /// Mean transaction value (> 0).
    pub mean_value: f64,
}

/// Parameters p, q, γ.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GammaGammaParams {
    /// Shape of a customer's transaction values.
    pub p: f64,
    /// Shape of the spread of customers' scale.
    pub q: f64,
    /// Scale of the spread of customers' scale (in money units).
    pub gamma: f64,
}

/// A fitted spend model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GammaGammaFit {
    /// The parameters.
    pub params: GammaGammaParams,
    /// Maximised log-likelihood (in the data's money unit).
    pub log_likelihood: f64,
    /// Customers in the sample.
    pub customers: u64,
    /// True when the fit is to be trusted (converged, finite, no parameter at the boundary).
    pub converged: bool,
    /// Why not, when `converged` is false.
    pub problem: Option<crate::FitProblem>,
}

/// Spend data grouped by transaction count, ready for repeated likelihood evaluations.
#[derive(Debug, Clone)]
pub struct SpendData {
    /// Per distinct x: x, and the customers' (ln m, m).
    groups: Vec<(f64, Vec<(f64, f64)>)>,
    customers: u64,
    mean_value: f64,
}

impl SpendData {
    /// Checks and groups observations.
    pub fn new(observations: &[SpendObservation]) -> Result<Self, ModelError> {
        let mut by_x: std::collections::BTreeMap<u32, Vec<(f64, f64)>> = Default::default();
        let mut sum = 0.0;
        for (index, o) in observations.iter().enumerate() {
            if o.x == 0 || !(o.mean_value.is_finite() && o.mean_value > 0.0) {
                return Err(ModelError::InvalidObservation {
                    index,
                    reason: "need x ≥ 1 and a positive finite mean value",
                });
            }
            by_x.entry(o.x)
                .or_default()
                .push((o.mean_value.ln(), o.mean_value));
            sum += o.mean_value;
        }
        if observations.len() < 2 {
            return Err(ModelError::NotEnoughData("fewer than two repeat customers"));
        }
        Ok(Self {
            groups: by_x.into_iter().map(|(x, v)| (f64::from(x), v)).collect(),
            customers: observations.len() as u64,
            mean_value: sum / observations.len() as f64,
        })
    }

    /// Customers in the data.
    pub fn customers(&self) -> u64 {
        self.customers
    }

    /// Log-likelihood of `params`.
    pub fn log_likelihood(&self, params: GammaGammaParams) -> f64 {
        let theta = [params.p.ln(), params.q.ln(), params.gamma.ln()];
        let mut g = [0.0; 3];
        -self.objective(&theta, 1.0, &mut g) * self.customers as f64
    }

    /// Mean negative log-likelihood per customer at log-parameters, values multiplied by `scale`.
    fn objective(&self, theta: &[f64], scale: f64, gradient: &mut [f64]) -> f64 {
        let [p, q, v] = [theta[0].exp(), theta[1].exp(), theta[2].exp()];
        if ![p, q, v].iter().all(|t| t.is_finite() && *t > 0.0) {
            return f64::NAN;
        }
        let ln_scale = scale.ln();
        let (ln_gamma_q, digamma_q, ln_v) = (ln_gamma(q), digamma(q), v.ln());
        let mut ll = 0.0;
        let mut g = [0.0f64; 3];
        for (x, customers) in &self.groups {
            let px = p * x;
            let base = ln_gamma(px + q) - ln_gamma(px) - ln_gamma_q + q * ln_v + px * x.ln();
            let d_p0 = x * (digamma(px + q) - digamma(px) + x.ln());
            let d_q0 = digamma(px + q) - digamma_q + ln_v;
            for &(ln_m, m) in customers {
                let ln_m = ln_m + ln_scale;
                let xm_v = x * m * scale + v;
                let ln_xm_v = xm_v.ln();
                // FHL (2005) / Fader & Hardie (2013): the density of the mean of x values.
                ll += base + (px - 1.0) * ln_m - (px + q) * ln_xm_v;
                g[0] += d_p0 + x * ln_m - x * ln_xm_v;
                g[1] += d_q0 - ln_xm_v;
                g[2] += q / v - (px + q) / xm_v;
            }
        }
        let n = self.customers as f64;
        for (i, value) in [p, q, v].into_iter().enumerate() {
            gradient[i] = -g[i] * value / n;
        }
        -ll / n
    }

    /// Fits p, q, γ by maximum likelihood.
    pub fn fit(&self) -> GammaGammaFit {
        self.fit_from(None)
    }

    /// Fits p, q, γ, starting from `start` when given (a tenant's previous fit).
    pub fn fit_from(&self, start: Option<GammaGammaParams>) -> GammaGammaFit {
        // Values scaled to a mean of 1 (any currency, any minor unit), γ moved back after.
        let scale = 1.0 / self.mean_value;
        let Minimum {
            x: theta,
            value,
            converged,
            iterations,
            ..
        } = bfgs(
            |theta, g| self.objective(theta, scale, g),
            &start
                .map(|p| [p.p.ln(), p.q.ln(), (p.gamma * scale).ln()])
                .filter(|theta| theta.iter().all(|t| t.is_finite()))
                .unwrap_or([0.0; 3]),
            Tolerance::default(),
        );
        let params = GammaGammaParams {
            p: theta[0].exp(),
            q: theta[1].exp(),
            gamma: theta[2].exp() / scale,
        };
        // Scaling values by s multiplies each density by s^(−1).
        let log_likelihood = -value * self.customers as f64 + self.customers as f64 * scale.ln();
        let problem = crate::fit_problem(
            converged,
            iterations as u32,
            value,
            &theta,
            &[params.p, params.q, params.gamma],
            &["p", "q", "γ"],
        );
        GammaGammaFit {
            params,
            log_likelihood,
            customers: self.customers,
            converged: problem.is_none(),
            problem,
        }
    }
}

impl GammaGammaParams {
    /// Expected mean transaction value of a customer with `x` repeat transactions averaging
    /// `mean_value` (FHL 2005 eq. 5): a weighted mix of the population mean and their own.
    /// A customer with no repeat transactions gets the population mean. Needs q > 1.
    pub fn conditional_expected_value(&self, x: u32, mean_value: f64) -> f64 {
        let Self { p, q, gamma } = *self;
        let population_mean = p * gamma / (q - 1.0);
        if x == 0 {
            return population_mean;
        }
        let px = p * f64::from(x);
        let weight = px / (px + q - 1.0);
        (1.0 - weight) * population_mean + weight * mean_value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::{Rng, simulate_spend};

    #[test]
    fn fit_recovers_the_parameters_it_was_simulated_from() {
        // CDNOW's published estimates (FHL 2005): p = 6.25, q = 3.74, γ = 15.44.
        let truth = GammaGammaParams {
            p: 6.25,
            q: 3.74,
            gamma: 15.44,
        };
        let mut rng = Rng::new(42);
        let observations = simulate_spend(&mut rng, truth, 30_000, 1, 8);
        let fit = SpendData::new(&observations).unwrap().fit();
        assert!(fit.converged, "{fit:?}");
        for (name, g, t) in [
            ("p", fit.params.p, truth.p),
            ("q", fit.params.q, truth.q),
            ("γ", fit.params.gamma, truth.gamma),
        ] {
            assert!((g / t - 1.0).abs() < 0.1, "{name}: got {g}, truth {t}");
        }
    }

    #[test]
    fn the_fit_does_not_depend_on_the_money_unit() {
        let truth = GammaGammaParams {
            p: 4.0,
            q: 3.0,
            gamma: 20.0,
        };
        let mut rng = Rng::new(5);
        let roubles = simulate_spend(&mut rng, truth, 3_000, 1, 5);
        let kopecks: Vec<_> = roubles
            .iter()
            .map(|o| SpendObservation {
                x: o.x,
                mean_value: o.mean_value * 100.0,
            })
            .collect();
        let a = SpendData::new(&roubles).unwrap().fit();
        let b = SpendData::new(&kopecks).unwrap().fit();
        assert!((a.params.gamma * 100.0 / b.params.gamma - 1.0).abs() < 1e-4);
        assert!((a.params.p / b.params.p - 1.0).abs() < 1e-4);
        // ln-likelihood shifts by n·ln 100 between units.
        assert!((a.log_likelihood - b.log_likelihood - 3_000.0 * 100f64.ln()).abs() < 1e-3);
    }

    #[test]
    fn log_likelihood_and_expected_value_match_the_formulas_by_hand() {
        let params = GammaGammaParams {
            p: 6.25,
            q: 3.74,
            gamma: 15.44,
        };
        let data = SpendData::new(&[
            SpendObservation {
                x: 2,
                mean_value: 30.0,
            },
            SpendObservation {
                x: 5,
                mean_value: 12.5,
            },
        ])
        .unwrap();
        let row = |x: f64, m: f64| {
            let (p, q, v) = (params.p, params.q, params.gamma);
            ln_gamma(p * x + q) - ln_gamma(p * x) - ln_gamma(q)
                + q * v.ln()
                + (p * x - 1.0) * m.ln()
                + (p * x) * x.ln()
                - (p * x + q) * (x * m + v).ln()
        };
        let by_hand = row(2.0, 30.0) + row(5.0, 12.5);
        assert!((data.log_likelihood(params) - by_hand).abs() < 1e-10);
        // E[M | x, m̄] = (p(γ + x m̄)) / (p x + q − 1)
        let e = params.conditional_expected_value(2, 30.0);
        let by_hand = 6.25 * (15.44 + 2.0 * 30.0) / (6.25 * 2.0 + 3.74 - 1.0);
        assert!((e - by_hand).abs() < 1e-12);
        let population = params.conditional_expected_value(0, 0.0);
        assert!((population - 6.25 * 15.44 / 2.74).abs() < 1e-12);
    }

    #[test]
    fn bad_observations_are_refused() {
        assert!(
            SpendData::new(&[SpendObservation {
                x: 0,
                mean_value: 1.0
            }])
            .is_err()
        );
        assert!(
            SpendData::new(&[SpendObservation {
                x: 1,
                mean_value: -1.0
            }])
            .is_err()
        );
        assert!(
            SpendData::new(&[SpendObservation {
                x: 1,
                mean_value: 1.0
            }])
            .is_err()
        );
    }
}
