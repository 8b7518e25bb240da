//! BG/NBD (Fader, Hardie & Lee 2005) and MBG/NBD (Batislam, Denizel & Filiztekin 2007):
//! who is still alive, and how many purchases to expect.
//!
//! Both models see a customer as `(x, t_x, T)`: `x` repeat purchases (purchase days after
//! the first), the last at `t_x`, observed for `T`, all measured from the first purchase in
//! one time unit. BG/NBD lets a customer drop out only after a repeat purchase, so every
//! one-visit customer has P(alive) = 1; MBG/NBD also lets them drop out after the first,
//! which suits a business full of one-visit customers. The two share one likelihood with a
//! shift `s` (0 for BG, 1 for MBG), so one fitting routine serves both.

use crate::ModelError;
use crate::optimize::{Minimum, Tolerance, bfgs};
use crate::special::{digamma, hyp2f1, ln_gamma, log_add_exp};

/// Which of the two models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NbdModel {
    /// BG/NBD: dropout only after repeat purchases.
    BgNbd,
    /// MBG/NBD: dropout after any purchase, the first included.
    MbgNbd,
}

impl NbdModel {
    /// The shift `s` of the shared likelihood.
    fn shift(self) -> f64 {
        match self {
            Self::BgNbd => 0.0,
            Self::MbgNbd => 1.0,
        }
    }

    /// Whether a customer with `x` repeat purchases carries the "dropped out after the
    /// last purchase" term.
    fn has_dropout_term(self, x: f64) -> bool {
        self == Self::MbgNbd || x > 0.0
    }

    /// Stable name, as reported by the service ("bg_nbd", "mbg_nbd").
    pub fn key(self) -> &'static str {
        match self {
            Self::BgNbd => "bg_nbd",
            Self::MbgNbd => "mbg_nbd",
        }
    }
}

/// One customer's history in model form, in one time unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Repeat purchases: distinct purchase days after the first.
    pub x: u32,
    /// Time of the last purchase since the first (0 when `x` = 0).
    pub t_x: f64,
    /// Time observed since the first purchase.
    pub t: f64,
}

/// Population parameters: purchase rates ~ Gamma(r, α), dropout probabilities ~ Beta(a, b).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NbdParams {
    /// Gamma shape.
    pub r: f64,
    /// Gamma scale (in the time unit).
    pub alpha: f64,
    /// Beta a.
    pub a: f64,
    /// Beta b.
    pub b: f64,
}

/// Observations with identical rows merged, ready for repeated likelihood evaluations.
#[derive(Debug, Clone)]
pub struct NbdData {
    /// Distinct repeat counts.
    xs: Vec<f64>,
    /// Distinct times (t_x and T values), ascending.
    times: Vec<f64>,
    rows: Vec<Row>,
    customers: u64,
    /// Σ weight · x, for moving the log-likelihood between time scales.
    total_repeat_purchases: f64,
}

#[derive(Debug, Clone, Copy)]
struct Row {
    x: u32,
    t_x: u32,
    t: u32,
    weight: f64,
}

impl NbdData {
    /// Checks and compresses observations (identical `(x, t_x, T)` rows become one weighted row).
    pub fn new(observations: &[Observation]) -> Result<Self, ModelError> {
        let mut histories: Vec<(u32, u64, u64)> = Vec::with_capacity(observations.len());
        let mut total_repeat_purchases = 0.0;
        for (index, o) in observations.iter().enumerate() {
            if !(o.t.is_finite() && o.t_x.is_finite() && o.t_x >= 0.0 && o.t_x <= o.t) {
                return Err(ModelError::InvalidObservation {
                    index,
                    reason: "need 0 ≤ t_x ≤ T, both finite",
                });
            }
            // x = 0 has no last repeat purchase: t_x does not matter, so it must not split rows.
            let t_x = if o.x == 0 { 0.0 } else { o.t_x };
            histories.push((o.x, t_x.to_bits(), o.t.to_bits()));
            total_repeat_purchases += f64::from(o.x);
        }
        if histories.is_empty() {
            return Err(ModelError::NotEnoughData("no customers"));
        }
        // Sorting and counting runs beats a hash map here: a million customers make half
        // a million distinct rows, and the rows must come out sorted anyway.
        histories.sort_unstable();
        let mut keys: Vec<((u32, u64, u64), u64)> = Vec::new();
        for history in histories {
            match keys.last_mut() {
                Some((last, n)) if *last == history => *n += 1,
                _ => keys.push((history, 1)),
            }
        }
        // Non-negative floats order like their bit patterns.
        let mut time_bits: Vec<u64> = keys.iter().flat_map(|((_, tx, t), _)| [*tx, *t]).collect();
        time_bits.sort_unstable();
        time_bits.dedup();
        let mut x_values: Vec<u32> = keys.iter().map(|((x, _, _), _)| *x).collect();
        x_values.sort_unstable();
        x_values.dedup();
        let time_index = |bits: u64| time_bits.binary_search(&bits).unwrap_or(0) as u32;
        let x_index = |x: u32| x_values.binary_search(&x).unwrap_or(0) as u32;
        let rows = keys
            .iter()
            .map(|((x, tx, t), n)| Row {
                x: x_index(*x),
                t_x: time_index(*tx),
                t: time_index(*t),
                weight: *n as f64,
            })
            .collect();
        Ok(Self {
            xs: x_values.into_iter().map(f64::from).collect(),
            times: time_bits.into_iter().map(f64::from_bits).collect(),
            rows,
            customers: observations.len() as u64,
            total_repeat_purchases,
        })
    }

    /// Customers in the data.
    pub fn customers(&self) -> u64 {
        self.customers
    }

    /// Distinct rows after compression.
    pub fn distinct_rows(&self) -> usize {
        self.rows.len()
    }

    /// Log-likelihood of `params` (times in the data's own unit).
    pub fn log_likelihood(&self, model: NbdModel, params: NbdParams) -> f64 {
        let theta = [
            params.r.ln(),
            params.alpha.ln(),
            params.a.ln(),
            params.b.ln(),
        ];
        let mut gradient = [0.0; 4];
        let total: f64 = self.rows.iter().map(|r| r.weight).sum();
        -self.objective(model, &theta, 1.0, &mut gradient) * total
    }

    /// Mean negative log-likelihood per customer at log-parameters `theta`, on times
    /// multiplied by `scale`, with its gradient in `theta`.
    fn objective(&self, model: NbdModel, theta: &[f64], scale: f64, gradient: &mut [f64]) -> f64 {
        let [r, alpha, a, b] = [
            theta[0].exp(),
            theta[1].exp(),
            theta[2].exp(),
            theta[3].exp(),
        ];
        if ![r, alpha, a, b].iter().all(|v| v.is_finite() && *v > 0.0) {
            return f64::NAN;
        }
        let s = model.shift();
        let ln_alpha = alpha.ln();
        let ln_a = a.ln();
        let (ln_gamma_r, digamma_r) = (ln_gamma(r), digamma(r));
        let (ln_gamma_b, digamma_b) = (ln_gamma(b), digamma(b));
        let (ln_gamma_ab, digamma_ab) = (ln_gamma(a + b), digamma(a + b));

        // Per distinct time: ln(α + t) and 1 / (α + t).
        let ln_time: Vec<f64> = self
            .times
            .iter()
            .map(|t| (alpha + t * scale).ln())
            .collect();
        let inv_time: Vec<f64> = self
            .times
            .iter()
            .map(|t| 1.0 / (alpha + t * scale))
            .collect();
        // Per distinct x: everything that does not depend on the times.
        let per_x: Vec<PerX> = self
            .xs
            .iter()
            .map(|&x| {
                let dropout = model.has_dropout_term(x);
                let bx = b + x - 1.0 + s;
                PerX {
                    r_x: r + x,
                    base: ln_gamma(r + x) - ln_gamma_r
                        + r * ln_alpha
                        + ln_gamma_ab
                        + ln_gamma(b + x + s)
                        - ln_gamma_b
                        - ln_gamma(a + b + x + s),
                    d_r: digamma(r + x) - digamma_r + ln_alpha,
                    d_a: digamma_ab - digamma(a + b + x + s),
                    d_b: digamma_ab + digamma(b + x + s) - digamma_b - digamma(a + b + x + s),
                    dropout,
                    ln_ratio: if dropout { ln_a - bx.ln() } else { 0.0 },
                    inv_bx: if dropout { 1.0 / bx } else { 0.0 },
                }
            })
            .collect();

        let mut ll = 0.0;
        let mut total = 0.0;
        let mut g = [0.0f64; 4];
        for row in &self.rows {
            let px = &per_x[row.x as usize];
            let (ln_t, inv_t) = (ln_time[row.t as usize], inv_time[row.t as usize]);
            let a3 = -px.r_x * ln_t;
            let (row_ll, w3, w4, ln_tx, inv_tx) = if px.dropout {
                let (ln_tx, inv_tx) = (ln_time[row.t_x as usize], inv_time[row.t_x as usize]);
                let a4 = px.ln_ratio - px.r_x * ln_tx;
                let combined = log_add_exp(a3, a4);
                let w3 = (a3 - combined).exp();
                (px.base + combined, w3, 1.0 - w3, ln_tx, inv_tx)
            } else {
                (px.base + a3, 1.0, 0.0, 0.0, 0.0)
            };
            let w = row.weight;
            ll += w * row_ll;
            total += w;
            g[0] += w * (px.d_r - w3 * ln_t - w4 * ln_tx);
            g[1] += w * (r / alpha - px.r_x * (w3 * inv_t + w4 * inv_tx));
            g[2] += w * (px.d_a + w4 / a);
            g[3] += w * (px.d_b - w4 * px.inv_bx);
        }
        // d/dθ = θ-value · d/dparam, negated and averaged.
        for (i, value) in [r, alpha, a, b].into_iter().enumerate() {
            gradient[i] = -g[i] * value / total;
        }
        -ll / total
    }

    /// Fits the model by maximum likelihood.
    pub fn fit(&self, model: NbdModel) -> NbdFit {
        self.fit_from(model, None)
    }

    /// Fits the model by maximum likelihood, starting from `start` when given (a tenant's
    /// previous fit: parameters move little between recomputes, so the search takes a few
    /// iterations instead of dozens) and from all parameters 1 otherwise.
    pub fn fit_from(&self, model: NbdModel, start: Option<NbdParams>) -> NbdFit {
        // Fit on times scaled so the longest T is 10 (well-conditioned for any time unit),
        // then move α and the likelihood back.
        let max_t = self
            .times
            .last()
            .copied()
            .unwrap_or(1.0)
            .max(f64::MIN_POSITIVE);
        let scale = 10.0 / max_t;
        let Minimum {
            x: theta,
            value,
            iterations,
            converged,
            ..
        } = bfgs(
            |theta, gradient| self.objective(model, theta, scale, gradient),
            &start.map_or([0.0; 4], |p| p.log_start(scale)),
            Tolerance::default(),
        );
        let total: f64 = self.rows.iter().map(|r| r.weight).sum();
        let params = NbdParams {
            r: theta[0].exp(),
            alpha: theta[1].exp() / scale,
            a: theta[2].exp(),
            b: theta[3].exp(),
        };
        // Scaling times by s multiplies each customer's likelihood by s^(−x).
        let log_likelihood = -value * total + self.total_repeat_purchases * scale.ln();
        let repeat_customers: f64 = self.rows.iter().filter(|r| r.x > 0).map(|r| r.weight).sum();
        let problem = if repeat_customers < 2.0 {
            Some(crate::FitProblem::TooFewRepeatCustomers {
                customers: repeat_customers as u64,
            })
        } else {
            crate::fit_problem(
                converged,
                iterations as u32,
                value,
                &theta,
                &[params.r, params.alpha, params.a, params.b],
                &["r", "α", "a", "b"],
            )
        };
        NbdFit {
            model,
            params,
            log_likelihood,
            customers: self.customers,
            distinct_rows: self.rows.len() as u64,
            converged: problem.is_none(),
            problem,
            iterations: iterations as u32,
        }
    }
}

struct PerX {
    r_x: f64,
    base: f64,
    d_r: f64,
    d_a: f64,
    d_b: f64,
    dropout: bool,
    ln_ratio: f64,
    inv_bx: f64,
}

/// A fitted model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NbdFit {
    /// Which model.
    pub model: NbdModel,
    /// The parameters (α in the data's time unit).
    pub params: NbdParams,
    /// Maximised log-likelihood, in the data's time unit.
    pub log_likelihood: f64,
    /// Customers in the sample.
    pub customers: u64,
    /// Distinct rows after compression.
    pub distinct_rows: u64,
    /// True when the fit is to be trusted: the optimiser converged, the likelihood is
    /// finite and no parameter ran to the boundary.
    pub converged: bool,
    /// Why not, when `converged` is false.
    pub problem: Option<crate::FitProblem>,
    /// Optimiser iterations.
    pub iterations: u32,
}

impl NbdParams {
    /// The optimiser's coordinates of these parameters on times scaled by `scale`; a start
    /// that is not a valid point (non-positive, not finite) starts from all parameters 1.
    fn log_start(&self, scale: f64) -> [f64; 4] {
        let theta = [
            self.r.ln(),
            (self.alpha * scale).ln(),
            self.a.ln(),
            self.b.ln(),
        ];
        if theta.iter().all(|t| t.is_finite()) {
            theta
        } else {
            [0.0; 4]
        }
    }

    /// P(alive | x, t_x, T).
    pub fn p_alive(&self, model: NbdModel, o: Observation) -> f64 {
        let x = f64::from(o.x);
        if !model.has_dropout_term(x) {
            return 1.0;
        }
        let bx = self.b + x - 1.0 + model.shift();
        let ratio = ((self.alpha + o.t) / (self.alpha + o.t_x)).powf(self.r + x);
        1.0 / (1.0 + self.a / bx * ratio)
    }

    /// Expected purchases in the next `t` for a customer with history `o`
    /// (FHL 2005 eq. 10; for MBG/NBD, Batislam et al. 2007).
    pub fn conditional_expected_purchases(&self, model: NbdModel, t: f64, o: Observation) -> f64 {
        self.expected_purchases_if_alive(model, t, o) * self.p_alive(model, o)
    }

    /// The conditional expectation's numerator: expected purchases in the next `t` of a
    /// customer with history `o` who is alive now. Times P(alive) it is the conditional
    /// expectation; scoring computes P(alive) once for several horizons.
    pub fn expected_purchases_if_alive(&self, model: NbdModel, t: f64, o: Observation) -> f64 {
        let Self { r, alpha, a, b } = *self;
        let x = f64::from(o.x);
        let s = model.shift();
        let z = t / (alpha + o.t + t);
        let hyp = hyp2f1(r + x, b + x + s, a + b + x - 1.0 + s, z);
        (a + b + x - 1.0 + s) / (a - 1.0)
            * (1.0 - ((alpha + o.t) / (alpha + o.t + t)).powf(r + x) * hyp)
    }

    /// Expected purchases of a new customer in `(0, t]`, E[X(t)] (FHL 2005 eq. 9).
    pub fn expected_purchases(&self, model: NbdModel, t: f64) -> f64 {
        let Self { r, alpha, a, b } = *self;
        let z = t / (alpha + t);
        let decay = (alpha / (alpha + t)).powf(r);
        match model {
            NbdModel::BgNbd => {
                (a + b - 1.0) / (a - 1.0) * (1.0 - decay * hyp2f1(r, b, a + b - 1.0, z))
            }
            NbdModel::MbgNbd => b / (a - 1.0) * (1.0 - decay * hyp2f1(r, b + 1.0, a + b, z)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::{Rng, simulate_nbd};

    /// CDNOW, weeks: the parameters FHL (2005) report.
    const CDNOW: NbdParams = NbdParams {
        r: 0.243,
        alpha: 4.414,
        a: 0.793,
        b: 2.426,
    };

    #[test]
    fn conditional_expectation_matches_the_published_cdnow_example() {
        // FHL (2005): x = 2, t_x = 30.43, T = 38.86 → 1.226 purchases expected in 39 weeks.
        let o = Observation {
            x: 2,
            t_x: 30.43,
            t: 38.86,
        };
        let e = CDNOW.conditional_expected_purchases(NbdModel::BgNbd, 39.0, o);
        assert!((e - 1.226).abs() < 1e-3, "{e}");
    }

    #[test]
    fn p_alive_matches_the_formula_by_hand() {
        let o = Observation {
            x: 3,
            t_x: 20.0,
            t: 40.0,
        };
        let by_hand = 1.0
            / (1.0
                + 0.793 / (2.426 + 3.0 - 1.0) * ((4.414f64 + 40.0) / (4.414 + 20.0)).powf(3.243));
        assert!((CDNOW.p_alive(NbdModel::BgNbd, o) - by_hand).abs() < 1e-15);
        let by_hand_mbg =
            1.0 / (1.0 + 0.793 / (2.426 + 3.0) * ((4.414f64 + 40.0) / (4.414 + 20.0)).powf(3.243));
        assert!((CDNOW.p_alive(NbdModel::MbgNbd, o) - by_hand_mbg).abs() < 1e-15);
        // One-visit customers: always alive under BG/NBD, not under MBG/NBD.
        let one_visit = Observation {
            x: 0,
            t_x: 0.0,
            t: 50.0,
        };
        assert_eq!(CDNOW.p_alive(NbdModel::BgNbd, one_visit), 1.0);
        let by_hand_one_visit = 1.0 / (1.0 + 0.793 / 2.426 * (54.414f64 / 4.414).powf(0.243));
        assert!((CDNOW.p_alive(NbdModel::MbgNbd, one_visit) - by_hand_one_visit).abs() < 1e-15);
        assert!(by_hand_one_visit < 1.0);
        // Buying recently keeps a customer alive.
        let recent = Observation {
            x: 3,
            t_x: 39.0,
            t: 40.0,
        };
        assert!(CDNOW.p_alive(NbdModel::BgNbd, recent) > CDNOW.p_alive(NbdModel::BgNbd, o));
    }

    #[test]
    fn log_likelihood_matches_the_formula_by_hand() {
        let observations = [
            Observation {
                x: 0,
                t_x: 0.0,
                t: 30.0,
            },
            Observation {
                x: 2,
                t_x: 10.5,
                t: 30.0,
            },
            Observation {
                x: 2,
                t_x: 10.5,
                t: 30.0,
            },
        ];
        let data = NbdData::new(&observations).unwrap();
        assert_eq!(data.distinct_rows(), 2);
        let NbdParams { r, alpha, a, b } = CDNOW;
        let ln_b = |p: f64, q: f64| ln_gamma(p) + ln_gamma(q) - ln_gamma(p + q);
        // FHL (2005) eq. 6.
        let row = |x: f64, t_x: f64, t: f64| {
            let common = ln_gamma(r + x) - ln_gamma(r) + r * alpha.ln();
            let first = (ln_b(a, b + x) - ln_b(a, b)).exp() / (alpha + t).powf(r + x);
            let second = if x > 0.0 {
                (ln_b(a + 1.0, b + x - 1.0) - ln_b(a, b)).exp() / (alpha + t_x).powf(r + x)
            } else {
                0.0
            };
            common + (first + second).ln()
        };
        let by_hand = row(0.0, 0.0, 30.0) + 2.0 * row(2.0, 10.5, 30.0);
        let ll = data.log_likelihood(NbdModel::BgNbd, CDNOW);
        assert!((ll - by_hand).abs() < 1e-10, "{ll} vs {by_hand}");
    }

    #[test]
    fn analytic_gradient_matches_finite_differences() {
        let mut rng = Rng::new(7);
        let observations = simulate_nbd(&mut rng, NbdModel::BgNbd, CDNOW, 500, 20.0, 52.0);
        let data = NbdData::new(&observations).unwrap();
        for model in [NbdModel::BgNbd, NbdModel::MbgNbd] {
            let theta = [-1.2, 1.3, -0.3, 0.9];
            let mut gradient = [0.0; 4];
            data.objective(model, &theta, 0.2, &mut gradient);
            for i in 0..4 {
                let h = 1e-6;
                let mut plus = theta;
                let mut minus = theta;
                plus[i] += h;
                minus[i] -= h;
                let mut scratch = [0.0; 4];
                let numeric = (data.objective(model, &plus, 0.2, &mut scratch)
                    - data.objective(model, &minus, 0.2, &mut scratch))
                    / (2.0 * h);
                assert!(
                    (gradient[i] - numeric).abs() < 1e-6,
                    "{model:?} ∂{i}: {} vs {numeric}",
                    gradient[i]
                );
            }
        }
    }

    #[test]
    fn bg_nbd_fit_recovers_the_parameters_it_was_simulated_from() {
        let truth = NbdParams {
            r: 0.5,
            alpha: 6.0,
            a: 0.7,
            b: 2.5,
        };
        let mut rng = Rng::new(2005);
        let observations = simulate_nbd(&mut rng, NbdModel::BgNbd, truth, 40_000, 26.0, 78.0);
        let fit = NbdData::new(&observations).unwrap().fit(NbdModel::BgNbd);
        assert!(fit.converged, "{fit:?}");
        assert_recovered(fit.params, truth, 0.15);
    }

    #[test]
    fn mbg_nbd_fit_recovers_the_parameters_it_was_simulated_from() {
        let truth = NbdParams {
            r: 0.8,
            alpha: 10.0,
            a: 0.6,
            b: 3.0,
        };
        let mut rng = Rng::new(2007);
        let observations = simulate_nbd(&mut rng, NbdModel::MbgNbd, truth, 40_000, 26.0, 78.0);
        let data = NbdData::new(&observations).unwrap();
        let fit = data.fit(NbdModel::MbgNbd);
        assert!(fit.converged, "{fit:?}");
        assert_recovered(fit.params, truth, 0.15);
        // Data with one-visit dropout is better explained by MBG/NBD.
        let bg = data.fit(NbdModel::BgNbd);
        assert!(
            fit.log_likelihood > bg.log_likelihood,
            "{} vs {}",
            fit.log_likelihood,
            bg.log_likelihood
        );
    }

    #[test]
    fn the_fit_does_not_depend_on_the_time_unit() {
        let mut rng = Rng::new(11);
        let weeks = simulate_nbd(&mut rng, NbdModel::BgNbd, CDNOW, 5_000, 27.0, 39.0);
        let days: Vec<_> = weeks
            .iter()
            .map(|o| Observation {
                x: o.x,
                t_x: o.t_x * 7.0,
                t: o.t * 7.0,
            })
            .collect();
        let in_weeks = NbdData::new(&weeks).unwrap().fit(NbdModel::BgNbd);
        let in_days = NbdData::new(&days).unwrap().fit(NbdModel::BgNbd);
        assert!((in_weeks.params.alpha * 7.0 / in_days.params.alpha - 1.0).abs() < 1e-4);
        assert!((in_weeks.params.r / in_days.params.r - 1.0).abs() < 1e-4);
        // The likelihood moves by Σx·ln 7 between units; the fit reports each in its own unit.
        let total_x: f64 = weeks.iter().map(|o| f64::from(o.x)).sum();
        assert!(
            (in_weeks.log_likelihood - in_days.log_likelihood - total_x * 7f64.ln()).abs() < 1e-3
        );
    }

    #[test]
    fn expected_purchases_matches_a_monte_carlo_estimate() {
        // Mean repeat purchases of simulated new customers over t against E[X(t)].
        let mut rng = Rng::new(3);
        for model in [NbdModel::BgNbd, NbdModel::MbgNbd] {
            let t = 52.0;
            let observations = simulate_nbd(&mut rng, model, CDNOW, 200_000, t, t);
            let mean = observations.iter().map(|o| f64::from(o.x)).sum::<f64>() / 200_000.0;
            let expected = CDNOW.expected_purchases(model, t);
            assert!(
                (mean / expected - 1.0).abs() < 0.03,
                "{model:?}: {mean} vs {expected}"
            );
        }
    }

    #[test]
    fn bad_observations_are_refused() {
        let bad = [Observation {
            x: 1,
            t_x: 5.0,
            t: 4.0,
        }];
        assert!(NbdData::new(&bad).is_err());
        assert!(NbdData::new(&[]).is_err());
    }

    fn assert_recovered(got: NbdParams, truth: NbdParams, tolerance: f64) {
        for (name, g, t) in [
            ("r", got.r, truth.r),
            ("alpha", got.alpha, truth.alpha),
            ("a", got.a, truth.a),
            ("b", got.b, truth.b),
        ] {
            assert!(
                (g / t - 1.0).abs() < tolerance,
                "{name}: got {g}, truth {t} ({got:?})"
            );
        }
    }
}
