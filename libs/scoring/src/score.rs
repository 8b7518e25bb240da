//! Scoring a whole tenant: RFM scores, segment, cycle and lifecycle state, P(alive),
//! expected purchases and CLV for every customer, in one pass over plain numbers.
//! This is segmentation's hot path; the service turns facts into [`CustomerInput`]s.

use crate::gamma_gamma::{GammaGammaFit, GammaGammaParams, SpendData, SpendObservation};
use crate::lifecycle::{Lifecycle, LifecyclePolicy, LifecycleState, Signals};
use crate::nbd::{NbdData, NbdFit, NbdModel, NbdParams, Observation};
use crate::rfm::{Better, Boundaries, quintile_scores};
use crate::segments::SegmentLookup;

/// Segment index given to customers who never bought (they have no RFM scores).
pub const PROSPECT_SEGMENT: u16 = u16::MAX;

/// Key of the prospects' segment.
pub const PROSPECT_SEGMENT_KEY: &str = "prospects";

/// One customer, as numbers measured back from the as-of time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CustomerInput {
    /// Distinct purchase days (0 for a prospect).
    pub purchase_days: u32,
    /// Days since the first purchase (whole days, so identical histories compress).
    pub days_since_first: f64,
    /// Days since the last purchase.
    pub days_since_last: f64,
    /// Total spent, minor units.
    pub total_spent: f64,
    /// Average check, minor units.
    pub average_check: f64,
    /// Mean spend of the repeat purchase days (every purchase day after the first; the
    /// orders of one day summed), minor units; 0 without repeat days. Gamma-Gamma's m̄.
    pub repeat_average_check: f64,
    /// Mean interval between purchase days, in days.
    pub mean_interval_days: f64,
    /// Days since the latest engagement; infinite if never.
    pub days_since_engagement: f64,
    /// Messages sent since the last open.
    pub consecutive_unopened: u32,
}

impl CustomerInput {
    /// The customer in BG/NBD form, in `time_unit_days` units.
    pub fn observation(&self, time_unit_days: f64) -> Observation {
        let t = self.days_since_first / time_unit_days;
        let x = self.purchase_days.saturating_sub(1);
        let t_x = if x == 0 {
            0.0
        } else {
            ((self.days_since_first - self.days_since_last) / time_unit_days).clamp(0.0, t)
        };
        Observation { x, t_x, t }
    }

    fn signals(&self) -> Signals {
        Signals {
            purchase_days: self.purchase_days,
            days_since_purchase: self.days_since_last,
            mean_interval_days: self.mean_interval_days,
            days_since_engagement: self.days_since_engagement,
            consecutive_unopened: self.consecutive_unopened,
        }
    }
}

/// Which value the M score ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MonetaryBasis {
    /// Total spent.
    #[default]
    Total,
    /// Average check.
    Average,
}

/// Which purchase model gives P(alive), expected purchases and CLV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModelChoice {
    /// The converged model with the higher log-likelihood.
    #[default]
    Auto,
    /// BG/NBD.
    BgNbd,
    /// MBG/NBD.
    MbgNbd,
}

/// Lowest purchase days for F = 2, 3, 4, 5 under the default rule: one purchase day is
/// F 1, two F 2, three F 3, four or five F 4, six or more F 5.
pub const DEFAULT_FREQUENCY_THRESHOLDS: [u32; 4] = [2, 3, 4, 6];

/// How the F score is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrequencyRule {
    /// By purchase days against fixed thresholds: F = 1 + the number of thresholds the
    /// customer's purchase days reach (ascending lowest counts for F 2–5). Counts are
    /// heavily tied (most customers of a shop buy once), so quintiles cannot separate them.
    PurchaseDays([u32; 4]),
    /// By quintiles within the tenant, as R and M.
    Quintiles,
}

impl Default for FrequencyRule {
    fn default() -> Self {
        Self::PurchaseDays(DEFAULT_FREQUENCY_THRESHOLDS)
    }
}

impl FrequencyRule {
    /// F for `purchase_days` under fixed thresholds (`None` for quintiles).
    pub fn fixed_score(self, purchase_days: u32) -> Option<u8> {
        match self {
            Self::PurchaseDays(thresholds) => {
                Some(1 + thresholds.iter().filter(|&&t| purchase_days >= t).count() as u8)
            }
            Self::Quintiles => None,
        }
    }
}

/// How a tenant is scored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoringPolicy {
    /// Cycle and lifecycle thresholds.
    pub lifecycle: LifecyclePolicy,
    /// The tenant's interval for customers without enough history of their own
    /// (configured, or from a niche preset); `None` takes the median of the tenant's regulars.
    pub tenant_cycle_days: Option<f64>,
    /// What M ranks.
    pub monetary: MonetaryBasis,
    /// Model time unit in days (1 = daily, 7 = weekly).
    pub time_unit_days: f64,
    /// CLV horizon in days.
    pub clv_horizon_days: f64,
    /// Annual discount rate for CLV.
    pub annual_discount_rate: f64,
    /// Which purchase model scores.
    pub model: ModelChoice,
    /// How F is given.
    pub frequency: FrequencyRule,
}

impl Default for ScoringPolicy {
    fn default() -> Self {
        Self {
            lifecycle: LifecyclePolicy::default(),
            tenant_cycle_days: None,
            monetary: MonetaryBasis::Total,
            time_unit_days: 1.0,
            clv_horizon_days: 365.0,
            annual_discount_rate: 0.10,
            model: ModelChoice::Auto,
            frequency: FrequencyRule::default(),
        }
    }
}

/// Interval used when a tenant has no regulars to learn from and nothing is configured.
pub const DEFAULT_CYCLE_DAYS: f64 = 90.0;

/// Where each fit starts: a tenant's previous converged parameters, or nothing (all
/// parameters 1).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FitStart {
    /// BG/NBD.
    pub bg_nbd: Option<NbdParams>,
    /// MBG/NBD.
    pub mbg_nbd: Option<NbdParams>,
    /// Gamma-Gamma.
    pub gamma_gamma: Option<GammaGammaParams>,
}

/// The fitted models of a tenant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TenantModels {
    /// BG/NBD fit.
    pub bg_nbd: NbdFit,
    /// MBG/NBD fit.
    pub mbg_nbd: NbdFit,
    /// Gamma-Gamma fit, when there were at least two repeat customers.
    pub gamma_gamma: Option<GammaGammaFit>,
}

impl TenantModels {
    /// Fits every model on the tenant's buyers.
    pub fn fit(inputs: &[CustomerInput], time_unit_days: f64) -> Option<Self> {
        Self::fit_from(inputs, time_unit_days, None)
    }

    /// Fits every model, each starting from `previous`'s parameters when they converged
    /// (the tenant's last fit in the same time unit): the same maxima, found in a few
    /// iterations when the data moved little.
    pub fn fit_from(
        inputs: &[CustomerInput],
        time_unit_days: f64,
        previous: Option<&FitStart>,
    ) -> Option<Self> {
        let observations: Vec<Observation> = inputs
            .iter()
            .filter(|c| c.purchase_days > 0)
            .map(|c| c.observation(time_unit_days))
            .collect();
        let data = NbdData::new(&observations).ok()?;
        // FHL 2005: x repeat purchase days and the mean spend of those days (the first
        // purchase day left out).
        let spend: Vec<SpendObservation> = inputs
            .iter()
            .filter(|c| c.purchase_days > 1 && c.repeat_average_check > 0.0)
            .map(|c| SpendObservation {
                x: c.purchase_days - 1,
                mean_value: c.repeat_average_check,
            })
            .collect();
        // The three fits are independent (0.45, 0.5 and 0.13 s at a million customers):
        // on threads of their own they take as long as the slowest, not the sum.
        let start = previous.copied().unwrap_or_default();
        let (bg_nbd, mbg_nbd, gamma_gamma) = std::thread::scope(|threads| {
            let bg = threads.spawn(|| data.fit_from(NbdModel::BgNbd, start.bg_nbd));
            let gamma_gamma = threads.spawn(|| {
                SpendData::new(&spend)
                    .ok()
                    .map(|d| d.fit_from(start.gamma_gamma))
            });
            let mbg = data.fit_from(NbdModel::MbgNbd, start.mbg_nbd);
            (bg.join(), mbg, gamma_gamma.join())
        });
        Some(Self {
            bg_nbd: bg_nbd.unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            mbg_nbd,
            gamma_gamma: gamma_gamma.unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
        })
    }

    /// The purchase model that scores under `choice`: a converged fit only. `None` when
    /// the chosen model (under `Auto`, both) did not converge: scoring then uses the cycle
    /// rule ([`cycle_rule`]).
    pub fn chosen(&self, choice: ModelChoice) -> Option<&NbdFit> {
        let trusted = |fit: &'_ NbdFit| fit.converged;
        match choice {
            ModelChoice::BgNbd => Some(&self.bg_nbd).filter(|f| trusted(f)),
            ModelChoice::MbgNbd => Some(&self.mbg_nbd).filter(|f| trusted(f)),
            ModelChoice::Auto => match (trusted(&self.bg_nbd), trusted(&self.mbg_nbd)) {
                (true, true) if self.mbg_nbd.log_likelihood > self.bg_nbd.log_likelihood => {
                    Some(&self.mbg_nbd)
                }
                (true, _) => Some(&self.bg_nbd),
                (false, true) => Some(&self.mbg_nbd),
                (false, false) => None,
            },
        }
    }

    /// Gamma-Gamma parameters usable for expected spend: a converged fit with q > 1.
    pub fn spend(&self) -> Option<GammaGammaParams> {
        self.gamma_gamma
            .filter(|f| f.converged)
            .map(|f| f.params)
            .filter(|p| p.q > 1.0)
    }
}

/// One customer's scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// R score 1–5 (0 for a prospect).
    pub r: u8,
    /// F score 1–5 (0 for a prospect).
    pub f: u8,
    /// M score 1–5 (0 for a prospect).
    pub m: u8,
    /// Segment index in the lookup, or [`PROSPECT_SEGMENT`].
    pub segment: u16,
    /// Cycle and state.
    pub lifecycle: Lifecycle,
    /// P(alive), 0–1.
    pub p_alive: f64,
    /// Expected purchases in the next 90 days.
    pub expected_purchases_90d: f64,
    /// CLV over the horizon, minor units.
    pub clv: f64,
}

/// The scores of a tenant, in input order.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantScores {
    /// One per input customer.
    pub scores: Vec<Score>,
    /// What the run scored by besides the models, to score more customers the same way.
    pub frozen: FrozenScoring,
}

/// The run-wide values a customer's scores depend on, besides the models.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrozenScoring {
    /// Where R, F (under quintiles) and M changed.
    pub boundaries: RfmBoundaries,
    /// The tenant interval used for customers without their own.
    pub tenant_cycle_days: f64,
}

/// The boundaries of a run's R, F and M scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RfmBoundaries {
    /// R (days since the last purchase, fewer is better).
    pub recency: Boundaries,
    /// F, when scored by quintiles; `None` under fixed thresholds.
    pub frequency: Option<Boundaries>,
    /// M.
    pub monetary: Boundaries,
}

/// Scores every customer. `models` from [`TenantModels::fit`]; without a converged purchase
/// model P(alive), expected purchases and CLV follow the cycle rule ([`cycle_rule`]).
pub fn score_tenant(
    inputs: &[CustomerInput],
    lookup: &SegmentLookup,
    policy: &ScoringPolicy,
    models: Option<&TenantModels>,
) -> TenantScores {
    let tenant_cycle_days = policy
        .tenant_cycle_days
        .unwrap_or_else(|| median_regular_interval(inputs, &policy.lifecycle));
    let ([r, f, m], boundaries) = rfm_scores(inputs, policy.monetary, policy.frequency);
    let pass = ScoringPass::new(lookup, policy, models, tenant_cycle_days, [&r, &f, &m]);
    TenantScores {
        scores: pass.score_all(inputs),
        frozen: FrozenScoring {
            boundaries,
            tenant_cycle_days,
        },
    }
}

/// Scores some customers as the run that gave `frozen` would have: its RFM boundaries and
/// tenant interval, and `models` (that run's fits). An incremental recompute scores the
/// customers whose facts changed this way, so they sit among the others as if the run
/// had seen their new facts.
pub fn score_against(
    inputs: &[CustomerInput],
    lookup: &SegmentLookup,
    policy: &ScoringPolicy,
    models: Option<&TenantModels>,
    frozen: &FrozenScoring,
) -> Vec<Score> {
    let [r, f, m] = rfm_scores_against(inputs, policy, &frozen.boundaries);
    ScoringPass::new(
        lookup,
        policy,
        models,
        frozen.tenant_cycle_days,
        [&r, &f, &m],
    )
    .score_all(inputs)
}

/// Below this many customers one thread scores faster than several start.
const PARALLEL_FROM: usize = 20_000;

/// Everything one customer's scores depend on besides their own input.
struct ScoringPass<'a> {
    lookup: &'a SegmentLookup,
    policy: &'a ScoringPolicy,
    tenant_cycle_days: f64,
    purchase_model: Option<(NbdModel, NbdParams)>,
    spend: Option<GammaGammaParams>,
    unit: f64,
    horizon: f64,
    discount: f64,
    r: &'a [u8],
    f: &'a [u8],
    m: &'a [u8],
}

impl<'a> ScoringPass<'a> {
    fn new(
        lookup: &'a SegmentLookup,
        policy: &'a ScoringPolicy,
        models: Option<&TenantModels>,
        tenant_cycle_days: f64,
        [r, f, m]: [&'a [u8]; 3],
    ) -> Self {
        let unit = policy.time_unit_days;
        Self {
            lookup,
            policy,
            tenant_cycle_days,
            purchase_model: models
                .and_then(|m| m.chosen(policy.model))
                .map(|fit| (fit.model, fit.params)),
            spend: models.and_then(TenantModels::spend),
            unit,
            horizon: policy.clv_horizon_days / unit,
            discount: continuous_discount(policy.annual_discount_rate, policy.clv_horizon_days),
            r,
            f,
            m,
        }
    }

    /// Scores every customer, split in consecutive parts over the cores.
    fn score_all(&self, inputs: &[CustomerInput]) -> Vec<Score> {
        let threads = if inputs.len() < PARALLEL_FROM {
            1
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
        };
        if threads == 1 {
            return self.score_part(inputs, 0);
        }
        let per_thread = inputs.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let parts: Vec<_> = inputs
                .chunks(per_thread)
                .enumerate()
                .map(|(k, part)| scope.spawn(move || self.score_part(part, k * per_thread)))
                .collect();
            let mut scores = Vec::with_capacity(inputs.len());
            for part in parts {
                scores.extend(
                    part.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                );
            }
            scores
        })
    }

    /// Scores `part`, whose first customer is input number `offset`.
    fn score_part(&self, part: &[CustomerInput], offset: usize) -> Vec<Score> {
        let mut expectations = ExpectationMemo::default();
        part.iter()
            .enumerate()
            .map(|(k, c)| self.score_one(c, offset + k, &mut expectations))
            .collect()
    }

    fn score_one(&self, c: &CustomerInput, i: usize, memo: &mut ExpectationMemo) -> Score {
        let policy = self.policy;
        let lifecycle = policy
            .lifecycle
            .classify(&c.signals(), self.tenant_cycle_days);
        if c.purchase_days == 0 {
            return Score {
                r: 0,
                f: 0,
                m: 0,
                segment: PROSPECT_SEGMENT,
                lifecycle,
                p_alive: 0.0,
                expected_purchases_90d: 0.0,
                clv: 0.0,
            };
        }
        let (r, f, m) = (self.r[i], self.f[i], self.m[i]);
        let segment = self.lookup.segment_of(r, f, m);
        let value = spend_value(c, self.spend);
        let (p_alive, expected_purchases_90d, clv) = match self.purchase_model {
            Some((model, params)) => {
                let o = c.observation(self.unit);
                let p_alive = params.p_alive(model, o);
                let (if_alive_90d, if_alive_horizon) = memo.get(o, || {
                    (
                        params.expected_purchases_if_alive(model, 90.0 / self.unit, o),
                        params.expected_purchases_if_alive(model, self.horizon, o),
                    )
                });
                let expected_90d = finite_or_zero(if_alive_90d * p_alive);
                let expected_horizon = finite_or_zero(if_alive_horizon * p_alive);
                (
                    p_alive,
                    expected_90d,
                    finite_or_zero(expected_horizon * value * self.discount).max(0.0),
                )
            }
            None => {
                let rule = cycle_rule(c.days_since_last, lifecycle.expected_cycle_days);
                (
                    rule.p_alive,
                    rule.expected_purchases(90.0),
                    (rule.expected_purchases(policy.clv_horizon_days) * value * self.discount)
                        .max(0.0),
                )
            }
        };
        Score {
            r,
            f,
            m,
            segment,
            lifecycle,
            p_alive,
            expected_purchases_90d,
            clv,
        }
    }
}

/// Expected purchases if alive, for 90 days and the CLV horizon, by (x, T): they do not
/// depend on t_x, and customers share few (x, T) pairs (whole days), so the two
/// hypergeometric series — most of a buyer's scoring — run once per pair, not per customer.
#[derive(Default)]
struct ExpectationMemo {
    values: std::collections::HashMap<(u32, u64), (f64, f64)>,
}

impl ExpectationMemo {
    fn get(&mut self, o: Observation, compute: impl FnOnce() -> (f64, f64)) -> (f64, f64) {
        *self
            .values
            .entry((o.x, o.t.to_bits()))
            .or_insert_with(compute)
    }
}

/// Expected spend per purchase: Gamma-Gamma's conditional expectation from the repeat
/// days when fitted, else the customer's own average check.
fn spend_value(c: &CustomerInput, spend: Option<GammaGammaParams>) -> f64 {
    match spend {
        Some(s) => s.conditional_expected_value(c.purchase_days - 1, c.repeat_average_check),
        None => c.average_check,
    }
}

/// The documented fallback when no purchase model can be trusted: a customer is surely
/// alive within their expected cycle, and beyond it the chance decays as
/// `e^(−overdue / cycle)` (one cycle overdue ≈ 0.37); while alive they buy once a cycle.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CycleRule {
    /// P(alive).
    pub p_alive: f64,
    /// The expected cycle in days.
    pub cycle_days: f64,
}

impl CycleRule {
    /// Expected purchases in the next `days`: P(alive) × days / cycle.
    pub fn expected_purchases(&self, days: f64) -> f64 {
        self.p_alive * days / self.cycle_days
    }
}

/// The cycle rule for a buyer `days_since_last` days after their last purchase.
pub fn cycle_rule(days_since_last: f64, cycle_days: f64) -> CycleRule {
    let cycle_days = if cycle_days.is_finite() && cycle_days > 0.0 {
        cycle_days
    } else {
        DEFAULT_CYCLE_DAYS
    };
    let overdue = (days_since_last - cycle_days).max(0.0);
    CycleRule {
        p_alive: (-overdue / cycle_days).exp(),
        cycle_days,
    }
}

fn finite_or_zero(v: f64) -> f64 {
    if v.is_finite() { v } else { 0.0 }
}

/// Mean discount factor over a horizon for purchases spread evenly across it, at a
/// continuously compounded equivalent of the annual rate: (1 − e^(−δH)) / (δH).
pub fn continuous_discount(annual_rate: f64, horizon_days: f64) -> f64 {
    let delta_h = (1.0 + annual_rate).ln() * horizon_days / 365.0;
    if delta_h.abs() < 1e-12 {
        1.0
    } else {
        (1.0 - (-delta_h).exp()) / delta_h
    }
}

/// Median own interval of the tenant's regulars, or [`DEFAULT_CYCLE_DAYS`] without any.
fn median_regular_interval(inputs: &[CustomerInput], policy: &LifecyclePolicy) -> f64 {
    let mut intervals: Vec<f64> = inputs
        .iter()
        .filter(|c| c.purchase_days > policy.min_own_intervals && c.mean_interval_days > 0.0)
        .map(|c| c.mean_interval_days)
        .collect();
    if intervals.is_empty() {
        return DEFAULT_CYCLE_DAYS;
    }
    let mid = intervals.len() / 2;
    let (_, median, _) = intervals.select_nth_unstable_by(mid, f64::total_cmp);
    *median
}

/// R, F, M scores of the buyers (prospects get 0), in input order, and the boundaries
/// they were given by. R and M by quintiles (fewer days since the last purchase, and more
/// money, score higher); F by `frequency`.
fn rfm_scores(
    inputs: &[CustomerInput],
    basis: MonetaryBasis,
    frequency: FrequencyRule,
) -> ([Vec<u8>; 3], RfmBoundaries) {
    let buyers: Vec<usize> = (0..inputs.len())
        .filter(|&i| inputs[i].purchase_days > 0)
        .collect();
    let column = |value: &dyn Fn(&CustomerInput) -> f64, better| {
        let values: Vec<f64> = buyers.iter().map(|&i| value(&inputs[i])).collect();
        let scores = quintile_scores(&values, better);
        let boundaries = Boundaries::of(&values, &scores, better);
        let mut all = vec![0u8; inputs.len()];
        for (&i, s) in buyers.iter().zip(scores) {
            all[i] = s;
        }
        (all, boundaries)
    };
    let (r, r_bounds) = column(&recency_value, Better::Lower);
    let (f, f_bounds) = match frequency {
        FrequencyRule::Quintiles => {
            let (f, bounds) = column(&frequency_value, Better::Higher);
            (f, Some(bounds))
        }
        FrequencyRule::PurchaseDays(_) => (
            inputs
                .iter()
                .map(|c| fixed_frequency(c, frequency))
                .collect(),
            None,
        ),
    };
    let (m, m_bounds) = column(&|c| monetary_value(c, basis), Better::Higher);
    (
        [r, f, m],
        RfmBoundaries {
            recency: r_bounds,
            frequency: f_bounds,
            monetary: m_bounds,
        },
    )
}

/// R, F, M of customers scored against an earlier run's boundaries.
fn rfm_scores_against(
    inputs: &[CustomerInput],
    policy: &ScoringPolicy,
    boundaries: &RfmBoundaries,
) -> [Vec<u8>; 3] {
    let score = |c: &CustomerInput, f: &dyn Fn(&CustomerInput) -> u8| {
        if c.purchase_days == 0 { 0 } else { f(c) }
    };
    let r = inputs
        .iter()
        .map(|c| score(c, &|c| boundaries.recency.score(recency_value(c))))
        .collect();
    let f = inputs
        .iter()
        .map(|c| match (policy.frequency, boundaries.frequency) {
            (FrequencyRule::Quintiles, Some(b)) => score(c, &|c| b.score(frequency_value(c))),
            (rule, _) => fixed_frequency(c, rule),
        })
        .collect();
    let m = inputs
        .iter()
        .map(|c| {
            score(c, &|c| {
                boundaries
                    .monetary
                    .score(monetary_value(c, policy.monetary))
            })
        })
        .collect();
    [r, f, m]
}

fn recency_value(c: &CustomerInput) -> f64 {
    c.days_since_last
}

fn frequency_value(c: &CustomerInput) -> f64 {
    f64::from(c.purchase_days)
}

fn monetary_value(c: &CustomerInput, basis: MonetaryBasis) -> f64 {
    match basis {
        MonetaryBasis::Total => c.total_spent,
        MonetaryBasis::Average => c.average_check,
    }
}

/// F under fixed thresholds (0 for a prospect; quintiles fall back to the default rule).
fn fixed_frequency(c: &CustomerInput, rule: FrequencyRule) -> u8 {
    if c.purchase_days == 0 {
        return 0;
    }
    rule.fixed_score(c.purchase_days)
        .or_else(|| FrequencyRule::default().fixed_score(c.purchase_days))
        .unwrap_or(0)
}

/// Whether a state counts as "inactive" for summaries.
pub fn is_inactive(state: LifecycleState) -> bool {
    matches!(
        state,
        LifecycleState::Sleeping | LifecycleState::NearlyLost | LifecycleState::Dead
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segments::RuleTable;
    use crate::simulate::{Rng, SimulatedCustomer};

    fn buyer(
        purchase_days: u32,
        days_since_first: f64,
        days_since_last: f64,
        total: f64,
    ) -> CustomerInput {
        CustomerInput {
            purchase_days,
            days_since_first,
            days_since_last,
            total_spent: total,
            average_check: total / f64::from(purchase_days.max(1)),
            repeat_average_check: if purchase_days > 1 {
                total / f64::from(purchase_days)
            } else {
                0.0
            },
            mean_interval_days: if purchase_days > 1 {
                (days_since_first - days_since_last) / f64::from(purchase_days - 1)
            } else {
                0.0
            },
            days_since_engagement: f64::INFINITY,
            consecutive_unopened: 0,
        }
    }

    /// A shop simulated from BG/NBD in days, with spend.
    pub(crate) fn simulated_shop(n: usize, seed: u64) -> Vec<CustomerInput> {
        let params = NbdParams {
            r: 0.6,
            alpha: 60.0,
            a: 0.8,
            b: 2.5,
        };
        let mut rng = Rng::new(seed);
        (0..n)
            .map(|_| {
                let age = (30 + rng.below(1000)) as f64;
                let customer = SimulatedCustomer::draw(&mut rng, params);
                let mut days = 1u32;
                let mut last = 0.0f64;
                customer.purchases(&mut rng, NbdModel::BgNbd, age, |t| {
                    days += 1;
                    last = t.floor();
                });
                let mut c = buyer(days, age, age - last, 0.0);
                c.total_spent = f64::from(days) * (1_000.0 + rng.below(4_000) as f64);
                c.average_check = c.total_spent / f64::from(days);
                c.repeat_average_check = if days > 1 { c.average_check } else { 0.0 };
                c
            })
            .collect()
    }

    #[test]
    fn every_customer_gets_one_segment_and_prospects_stay_outside_rfm() {
        let lookup = RuleTable::default_grid().compile().unwrap();
        let mut inputs = simulated_shop(2_000, 1);
        inputs.push(CustomerInput {
            purchase_days: 0,
            ..buyer(0, 0.0, 0.0, 0.0)
        });
        let models = TenantModels::fit(&inputs, 1.0).unwrap();
        let scored = score_tenant(&inputs, &lookup, &ScoringPolicy::default(), Some(&models));
        assert_eq!(scored.scores.len(), inputs.len());
        let prospect = scored.scores.last().unwrap();
        assert_eq!(
            (prospect.segment, prospect.r, prospect.lifecycle.state),
            (PROSPECT_SEGMENT, 0, LifecycleState::Prospect)
        );
        for s in &scored.scores[..2_000] {
            assert!((1..=5).contains(&s.r) && (1..=5).contains(&s.f) && (1..=5).contains(&s.m));
            assert!(usize::from(s.segment) < lookup.segments().len());
            assert!((0.0..=1.0).contains(&s.p_alive), "{s:?}");
            assert!(s.expected_purchases_90d >= 0.0 && s.clv >= 0.0, "{s:?}");
        }
    }

    #[test]
    fn scoring_against_a_runs_frozen_values_gives_that_runs_scores() {
        let lookup = RuleTable::default_grid().compile().unwrap();
        let inputs = simulated_shop(30_000, 5);
        let models = TenantModels::fit(&inputs, 1.0).unwrap();
        for frequency in [FrequencyRule::default(), FrequencyRule::Quintiles] {
            let policy = ScoringPolicy {
                frequency,
                ..ScoringPolicy::default()
            };
            let run = score_tenant(&inputs, &lookup, &policy, Some(&models));
            let again = score_against(&inputs, &lookup, &policy, Some(&models), &run.frozen);
            assert_eq!(again, run.scores);
            // A customer who just bought again scores as the run would have scored them.
            let mut changed = inputs[7];
            changed.purchase_days += 3;
            changed.days_since_last = 0.0;
            let alone = score_against(&[changed], &lookup, &policy, Some(&models), &run.frozen);
            let mut with_all = inputs.clone();
            with_all[7] = changed;
            let rescored = score_tenant(&with_all, &lookup, &policy, Some(&models));
            assert_eq!(alone[0].r, rescored.scores[7].r);
            assert_eq!(alone[0].f, rescored.scores[7].f);
            assert_eq!(alone[0].segment, rescored.scores[7].segment);
        }
    }

    #[test]
    fn a_recent_frequent_big_spender_is_a_champion_and_worth_more() {
        let lookup = RuleTable::default_grid().compile().unwrap();
        let mut inputs = simulated_shop(1_000, 2);
        inputs.push(buyer(40, 700.0, 1.0, 400_000.0));
        inputs.push(buyer(1, 700.0, 700.0, 1_000.0));
        let models = TenantModels::fit(&inputs, 1.0).unwrap();
        let scored = score_tenant(&inputs, &lookup, &ScoringPolicy::default(), Some(&models));
        let champion = scored.scores[1_000];
        let gone = scored.scores[1_001];
        assert_eq!(lookup.key(champion.segment), "champions");
        assert_eq!(lookup.key(gone.segment), "hibernating");
        assert!(
            champion.p_alive > 0.9 && champion.clv > 10.0 * gone.clv,
            "{champion:?} {gone:?}"
        );
        assert!(champion.expected_purchases_90d > 1.0);
    }

    #[test]
    fn the_tenant_interval_is_the_median_of_its_regulars_unless_configured() {
        let lookup = RuleTable::default_grid().compile().unwrap();
        let inputs = vec![
            buyer(3, 100.0, 0.0, 1.0),
            buyer(5, 200.0, 0.0, 1.0),
            buyer(4, 600.0, 0.0, 1.0),
            buyer(1, 5.0, 5.0, 1.0),
        ];
        // Intervals 50, 50, 200 → median 50.
        let scored = score_tenant(&inputs, &lookup, &ScoringPolicy::default(), None);
        assert_eq!(scored.frozen.tenant_cycle_days, 50.0);
        let configured = ScoringPolicy {
            tenant_cycle_days: Some(30.0),
            ..ScoringPolicy::default()
        };
        assert_eq!(
            score_tenant(&inputs, &lookup, &configured, None)
                .frozen
                .tenant_cycle_days,
            30.0
        );
        assert_eq!(
            score_tenant(&inputs[3..], &lookup, &ScoringPolicy::default(), None)
                .frozen
                .tenant_cycle_days,
            DEFAULT_CYCLE_DAYS
        );
    }

    #[test]
    fn discounting_is_one_at_zero_rate_and_below_one_otherwise() {
        assert_eq!(continuous_discount(0.0, 365.0), 1.0);
        let d = continuous_discount(0.10, 365.0);
        // ln 1.1 ≈ 0.0953: (1 − e^−0.0953) / 0.0953 ≈ 0.9538
        assert!((d - 0.953_8).abs() < 1e-4, "{d}");
    }

    #[test]
    fn frequency_thresholds_score_purchase_days_and_quintiles_stay_an_option() {
        let rule = FrequencyRule::default();
        let scores: Vec<u8> = [1, 2, 3, 4, 5, 6, 40]
            .iter()
            .map(|&d| rule.fixed_score(d).unwrap())
            .collect();
        assert_eq!(scores, vec![1, 2, 3, 4, 4, 5, 5]);
        // A shop where most customers bought once: one-time buyers are F 1, so the
        // segments of the low F columns (new, promising) fill up.
        let lookup = RuleTable::default_grid().compile().unwrap();
        let mut inputs: Vec<CustomerInput> = (0..80)
            .map(|i| buyer(1, 5.0 + f64::from(i), 5.0 + f64::from(i), 1_000.0))
            .collect();
        inputs.extend((0..20).map(|i| buyer(2 + i % 6, 400.0, 3.0 + f64::from(i), 9_000.0)));
        let scored = score_tenant(&inputs, &lookup, &ScoringPolicy::default(), None);
        assert!(scored.scores[..80].iter().all(|s| s.f == 1));
        let segments: std::collections::BTreeSet<&str> = scored
            .scores
            .iter()
            .map(|s| lookup.key(s.segment))
            .collect();
        assert!(
            segments.contains("new") && segments.contains("promising"),
            "{segments:?}"
        );
        let quintiles = ScoringPolicy {
            frequency: FrequencyRule::Quintiles,
            ..ScoringPolicy::default()
        };
        let by_quintile = score_tenant(&inputs, &lookup, &quintiles, None);
        // 80 % tied at one day: their mid-rank is the 40th percentile, F 3.
        assert!(by_quintile.scores[..80].iter().all(|s| s.f == 3));
    }

    #[test]
    fn without_a_converged_model_the_cycle_rule_scores() {
        // Nobody ever came back: the purchase models cannot be identified.
        let lookup = RuleTable::default_grid().compile().unwrap();
        let inputs: Vec<CustomerInput> = (0..500)
            .map(|i| buyer(1, f64::from(i % 300), f64::from(i % 300), 2_000.0))
            .collect();
        let models = TenantModels::fit(&inputs, 1.0).unwrap();
        let scored = score_tenant(&inputs, &lookup, &ScoringPolicy::default(), Some(&models));
        assert_eq!(models.chosen(ModelChoice::Auto), None, "{models:?}");
        assert_eq!(
            models.bg_nbd.problem,
            Some(crate::FitProblem::TooFewRepeatCustomers { customers: 0 })
        );
        // Whatever the fits did, a customer who bought five days ago is alive.
        let recent = scored.scores[5];
        assert!(recent.p_alive > 0.9, "{recent:?}");
        let rule = cycle_rule(5.0, 90.0);
        assert_eq!(rule.p_alive, 1.0);
        assert!((cycle_rule(180.0, 90.0).p_alive - (-1.0f64).exp()).abs() < 1e-12);
        assert!((rule.expected_purchases(90.0) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn the_policy_chooses_the_purchase_model() {
        let inputs = simulated_shop(3_000, 9);
        let models = TenantModels::fit(&inputs, 1.0).unwrap();
        assert_eq!(
            models.chosen(ModelChoice::BgNbd).map(|f| f.model),
            Some(NbdModel::BgNbd)
        );
        assert_eq!(
            models.chosen(ModelChoice::MbgNbd).map(|f| f.model),
            Some(NbdModel::MbgNbd)
        );
        let auto = models.chosen(ModelChoice::Auto).unwrap();
        let best = if models.mbg_nbd.log_likelihood > models.bg_nbd.log_likelihood {
            NbdModel::MbgNbd
        } else {
            NbdModel::BgNbd
        };
        assert_eq!(auto.model, best);
    }
}
