//! Pure customer-base maths, no I/O: RFM scores, segment rule tables, purchase cycles and
//! lifecycle states, BG/NBD and MBG/NBD, Gamma-Gamma, CLV, and simulation from the models.
//! The hot path of segmentation; `score::score_tenant` scores a whole tenant.

pub mod gamma_gamma;
pub mod lifecycle;
pub mod nbd;
pub mod optimize;
pub mod rfm;
pub mod score;
pub mod segments;
pub mod simulate;
pub mod special;

/// Why a model could not be fitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// An observation is impossible.
    #[error("observation {index}: {reason}")]
    InvalidObservation {
        /// Its position in the input.
        index: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// Too little data to fit.
    #[error("not enough data: {0}")]
    NotEnoughData(&'static str),
}

/// Why a fitted model is not to be trusted (lifetimes raises `ConvergenceError` for the
/// same cases): scoring then falls back to the cycle rule (`score::cycle_rule`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FitProblem {
    /// The optimiser gave up before the gradient or the progress fell below tolerance.
    NotConverged {
        /// Iterations it took.
        iterations: u32,
    },
    /// Fewer than two customers made a repeat purchase: the purchase rate and the dropout
    /// cannot be told apart, and the likelihood runs to 1 as r runs to 0.
    TooFewRepeatCustomers {
        /// Customers with a repeat purchase.
        customers: u64,
    },
    /// The log-likelihood at the optimum is NaN or infinite.
    LikelihoodNotFinite,
    /// A parameter ran off towards 0 or infinity: the data cannot pin it down.
    AtBoundary {
        /// Its name (r, α, a, b, p, q, γ).
        parameter: &'static str,
        /// Where the optimiser left it.
        value: f64,
    },
}

impl std::fmt::Display for FitProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotConverged { iterations } => {
                write!(
                    f,
                    "the optimiser did not converge in {iterations} iterations"
                )
            }
            Self::TooFewRepeatCustomers { customers } => write!(
                f,
                "only {customers} customers made a repeat purchase: the model cannot be identified"
            ),
            Self::LikelihoodNotFinite => f.write_str("the log-likelihood is not finite"),
            Self::AtBoundary { parameter, value } => {
                write!(f, "parameter {parameter} ran to the boundary ({value:e})")
            }
        }
    }
}

/// Log-parameters (on the fit's own scale) beyond ±this are at the boundary: e^9.2 ≈ 10⁴
/// times the scale the data were normalised to, far outside any published fit.
const BOUNDARY_LOG: f64 = 9.2;

/// What is wrong with a fit that ended at log-parameters `theta` (fit scale), with
/// parameters `values` (reported scale) named `names`; `None` for a trustworthy fit.
pub(crate) fn fit_problem(
    converged: bool,
    iterations: u32,
    value: f64,
    theta: &[f64],
    values: &[f64],
    names: &[&'static str],
) -> Option<FitProblem> {
    if !value.is_finite() {
        return Some(FitProblem::LikelihoodNotFinite);
    }
    for ((t, v), name) in theta.iter().zip(values).zip(names) {
        if !t.is_finite() || t.abs() > BOUNDARY_LOG || !v.is_finite() || *v <= 0.0 {
            return Some(FitProblem::AtBoundary {
                parameter: name,
                value: *v,
            });
        }
    }
    (!converged).then_some(FitProblem::NotConverged { iterations })
}
